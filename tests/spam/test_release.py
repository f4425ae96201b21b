"""After the verdict: releasing spam, correcting a verdict, and what mail that makes.

Releasing held spam or marking a possible-spam ticket ham gives the ticket what
a new ticket gets (the customer's acknowledgement, the agents' notice) once,
however late and however often the verdict changes. The commands run as ops
run them, on the test's clock.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from maildesk.app import App
from maildesk.cli import main
from maildesk.db.models import Blob, Intake, Outbox, Ticket
from tests.conftest import FrozenClock, make_settings
from tests.mailfactory import deliver, make_mail, reply_to

AGENTS = [{"name": "bob", "addresses": ["bob@agents.test"], "groups": ["L1"]}]
AGENTS_TOML = """
[[agents]]
name = "bob"
addresses = ["bob@agents.test"]
groups = ["L1"]

[[groups]]
name = "L1"

[routing]
default_group = "L1"
rules_dir = "{rules}"
"""
EVERYTHING_IS_SPAM = {"unsure_at": 0.0, "spam_at": 0.0}
EVERYTHING_IS_UNSURE = {"unsure_at": 0.0, "spam_at": 1.0}
EVERYTHING_IS_HAM = {"unsure_at": 1.0, "spam_at": 1.0}


def desk(
    tmp_path: Path, database_url: str, clock: FrozenClock, spam: dict[str, float], **more: Any
) -> App:
    """The daemon's side: agents in group L1, the filter as strict as ``spam`` says."""
    rules = tmp_path / "rules"
    rules.mkdir(exist_ok=True)
    settings = make_settings(
        tmp_path,
        database_url,
        agents=AGENTS,
        groups=[{"name": "L1"}],
        routing={"default_group": "L1", "rules_dir": str(rules)},
        spam=spam,
        **more,
    )
    return App.build(settings, clock=clock)


def ops(
    app: App, tmp_path: Path, clock: FrozenClock, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., str]:
    """``maildesk ...`` as ops run it on the same installation, on the test's clock."""
    config = tmp_path / "maildesk.toml"
    templates = app.settings.templates_dir  # None: the shipped ones
    spam = app.settings.spam
    config.write_text(
        f'data_dir = "{tmp_path / "cli-data"}"\n'
        f'database_url = "{app.settings.database_url}"\n'
        + (f'templates_dir = "{templates}"\n' if templates is not None else "")
        + 'support_addresses = ["support@example.com"]\n'
        'installation_secret = "test-secret"\n'
        + AGENTS_TOML.format(rules=tmp_path / "rules")
        + f"[spam]\nunsure_at = {spam.unsure_at}\nspam_at = {spam.spam_at}\n"  # the daemon's
    )
    build = App.build.__func__  # type: ignore[attr-defined]
    monkeypatch.setattr(
        App, "build", classmethod(lambda cls, settings: build(cls, settings, clock))
    )

    def run(*args: str) -> str:
        result = CliRunner().invoke(main, ["--config", str(config), *args])
        assert result.exit_code == 0, result.output
        return result.output

    return run


def mail_out(app: App) -> list[tuple[str, list[str]]]:
    with app.db.transaction() as session:
        rows = session.execute(select(Outbox.purpose, Outbox.recipients).order_by(Outbox.id))
        return [(purpose, list(recipients)) for purpose, recipients in rows]


def held(app: App) -> int:
    with app.db.transaction() as session:
        return session.scalars(select(Intake.id).where(Intake.state == "quarantined")).one()


def tickets(app: App) -> list[Ticket]:
    with app.db.transaction() as session:
        return list(session.scalars(select(Ticket).order_by(Ticket.id)))


ANNOUNCED = [("ack", ["alice@customer.test"]), ("new_ticket", ["bob@agents.test"])]


def test_spam_released_from_the_next_mornings_digest_is_acknowledged_and_announced(
    tmp_path: Path, database_url: str, clock: FrozenClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The digest lists a day's spam once, the next morning: most releases come a day
    or more after the mail arrived. The time it sat in quarantine was ours, not an
    old mailbox being imported: the customer still gets their acknowledgement and
    the agents their notice. (It used to be skipped as "older than 1 day".)"""
    app = desk(tmp_path, database_url, clock, EVERYTHING_IS_SPAM)
    try:
        deliver(app, make_mail(message_id="fp@customer.test", subject="Invoice question"))
        assert mail_out(app) == []
        clock.advance(hours=26)  # the digest at 07:00, ops read it after their coffee
        assert "created 1" in ops(app, tmp_path, clock, monkeypatch)(
            "quarantine", "release", str(held(app))
        )
        assert mail_out(app) == ANNOUNCED
    finally:
        app.db.dispose()


def test_a_possible_spam_ticket_marked_ham_reaches_the_agents_once(
    tmp_path: Path, database_url: str, clock: FrozenClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Held back while flagged, the agents' new-ticket notice goes when it is released
    (it used to go never: the ticket waited unseen until someone looked), and a
    spam verdict corrected back to ham does not send it, or the acknowledgement, again."""
    app = desk(tmp_path, database_url, clock, EVERYTHING_IS_UNSURE)
    try:
        deliver(app, make_mail(message_id="maybe@customer.test", subject="Invoice question"))
        [ticket] = tickets(app)
        assert ticket.possible_spam and mail_out(app) == []
        run = ops(app, tmp_path, clock, monkeypatch)
        assert "released" in run("spam", "mark", "ham", "maybe@customer.test")
        assert mail_out(app) == ANNOUNCED

        assert "closed as spam" in run("spam", "mark", "spam", "maybe@customer.test")
        assert "learned 1" in run("spam", "mark", "ham", "maybe@customer.test")  # a correction
        assert mail_out(app) == ANNOUNCED
    finally:
        app.db.dispose()


def test_a_spam_verdict_corrected_to_ham_does_not_acknowledge_the_ticket_again(
    tmp_path: Path, database_url: str, clock: FrozenClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ham ticket, acknowledged when it came in, is marked spam by mistake and then
    ham again. The customer used to get a second "we received your request"."""
    app = desk(tmp_path, database_url, clock, EVERYTHING_IS_HAM)
    try:
        deliver(app, make_mail(message_id="real@customer.test", subject="Invoice question"))
        assert mail_out(app) == ANNOUNCED
        run = ops(app, tmp_path, clock, monkeypatch)
        assert "closed as spam" in run("spam", "mark", "spam", "real@customer.test")
        assert "learned 1" in run("spam", "mark", "ham", "real@customer.test")
        assert mail_out(app) == ANNOUNCED
    finally:
        app.db.dispose()


def test_releasing_held_spam_releases_the_possible_spam_follow_up_it_joins(
    tmp_path: Path, database_url: str, clock: FrozenClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The customer's first mail is held as spam; their "did you get my mail?" an hour
    later is only unsure, a flagged ticket. Ops release the first mail from the digest:
    it joins that ticket by its References, and the conversation is ham now. The
    ticket used to stay flagged, unacknowledged, unknown to the agents."""
    strict = desk(tmp_path, database_url, clock, EVERYTHING_IS_SPAM)
    first = make_mail(message_id="first@customer.test", subject="Invoice question")
    try:
        deliver(strict, first)
    finally:
        strict.db.dispose()
    app = desk(tmp_path, database_url, clock, EVERYTHING_IS_UNSURE)
    try:
        clock.advance(hours=1)
        deliver(app, reply_to(first, message_id="again@customer.test", body="Any news?\n"))
        [ticket] = tickets(app)
        assert ticket.possible_spam and mail_out(app) == []

        clock.advance(hours=20)
        out = ops(app, tmp_path, clock, monkeypatch)("quarantine", "release", str(held(app)))
        assert "threaded 1" in out
        [ticket] = tickets(app)
        assert not ticket.possible_spam
        assert mail_out(app) == ANNOUNCED
    finally:
        app.db.dispose()


LIST_MAIL = {"List-Id": "<users.lists.test>", "Precedence": "list"}


@pytest.mark.parametrize(
    "spam", [EVERYTHING_IS_HAM, EVERYTHING_IS_UNSURE], ids=["never-flagged", "marked-ham"]
)
def test_a_lists_mail_marked_ham_reaches_the_agents_as_it_would_have_unflagged(
    tmp_path: Path,
    database_url: str,
    clock: FrozenClock,
    monkeypatch: pytest.MonkeyPatch,
    spam: dict[str, float],
) -> None:
    """A list's mail is never acknowledged, but the agents hear of its ticket (it is a
    person's mail, only not answered automatically). Flagged possible spam and then
    marked ham, it must reach them too, not wait unseen."""
    app = desk(tmp_path, database_url, clock, spam)
    try:
        deliver(app, make_mail(message_id="list@customer.test", headers=LIST_MAIL))
        if spam is EVERYTHING_IS_UNSURE:
            assert tickets(app)[0].possible_spam and mail_out(app) == []
            run = ops(app, tmp_path, clock, monkeypatch)
            assert "released" in run("spam", "mark", "ham", "list@customer.test")
        assert mail_out(app) == [("new_ticket", ["bob@agents.test"])]
    finally:
        app.db.dispose()


RULES = """
[[rule]]
name = "billing"
when = { subject_keywords = ["invoice"] }
then = { ack_template = "ack_billing" }

[[rule]]
name = "campaigns-quiet"
when = { header = { name = "X-Campaign", regex = "." } }
then = { ack = false }
"""


def test_a_released_ticket_gets_the_acknowledgement_its_routing_rules_chose(
    tmp_path: Path, database_url: str, clock: FrozenClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Flagged possible spam, then marked ham: the acknowledgement held back is the one
    the routing rules chose when the mail came in (their template), and mail a rule
    says never to acknowledge stays unacknowledged. A release used to send the
    generic acknowledgement to both."""
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "10-main.toml").write_text(RULES, encoding="utf-8")
    templates = tmp_path / "templates"
    templates.mkdir()
    for item in (Path(__file__).resolve().parents[2] / "templates").iterdir():
        if item.is_file():
            (templates / item.name).write_bytes(item.read_bytes())
    (templates / "ack_billing.customer.txt.j2").write_text(
        "Subject: Billing got your mail\n\nThe billing team has ticket {{ ticket.number }}.\n"
    )
    app = desk(tmp_path, database_url, clock, EVERYTHING_IS_UNSURE, templates_dir=templates)
    try:
        deliver(app, make_mail(message_id="bill@customer.test", subject="Invoice question"))
        quiet = make_mail(
            message_id="news@customer.test",
            sender="bob@customer.test",
            subject="Our newsletter",
            headers={"X-Campaign": "7"},
        )
        deliver(app, quiet, mail_from="bob@customer.test")
        assert [t.possible_spam for t in tickets(app)] == [True, True] and mail_out(app) == []

        run = ops(app, tmp_path, clock, monkeypatch)
        assert "released" in run("spam", "mark", "ham", "bill@customer.test")
        assert "released" in run("spam", "mark", "ham", "news@customer.test")

        assert mail_out(app) == [
            *ANNOUNCED,
            ("new_ticket", ["bob@agents.test"]),  # the quiet one: the agents, not bob
        ]
        with app.db.transaction() as session:
            ack = session.scalars(select(Outbox).where(Outbox.purpose == "ack")).one()
            blob = session.get(Blob, ack.raw_sha256)
            assert blob is not None and b"The billing team has ticket 1" in bytes(blob.data)
    finally:
        app.db.dispose()
