"""An agent's mail whose command fails only while it is applied does nothing by halves.

Validation (``CommandRunner.problems``) cannot tell everything: a ``#merge``
of a ticket merged into another one meanwhile (earlier, or by another node
between validation and apply), a canned answer that renders for the ticket as
it was but not once the commands before it changed it, or that breaks with a
runtime error. Before the fix the commands before such a one stayed applied
(the ticket resolved, the customer told) and the answer went out without what
the agent meant to say; a canned answer raising an error quarantined the mail
and the agent heard nothing. Now none of the mail is applied, nothing is sent
to the customer, the mail is kept on the ticket and the agent is told what to
correct, as for a command that fails validation.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from maildesk.agents.actions import CommandRunner
from maildesk.app import App
from maildesk.db.models import HeldAgentMail, Intake, IntakeState, Message, Ticket, TicketStatus
from maildesk.outbound.templates import SHIPPED_TEMPLATES
from maildesk.routing.categorize import CategoryModel
from maildesk.routing.models import CATEGORY_MODEL_NAME, ModelSlot
from maildesk.shared_models import held_version, pull, shared_version
from tests.agents.agenthelp import (
    Sent,
    agent_app,
    client_reply,
    events_of_kind,
    in_thread,
    plain_mail,
    reply_address,
    ticket_number,
    to,
)
from tests.conftest import FrozenClock
from tests.mailfactory import deliver, make_mail

ALICE = "alice@customer.test"
BOB = "bob@agents.test"
REFUSED = "Nothing of your mail was applied and nothing was sent to the customer"
ANSWERS = {
    # Renders for a ticket of normal priority; its urgent branch names a missing variable.
    "outage": (
        '{% if ticket.priority == "urgent" %}Our on-call engineer {{ oncall.name }} is on it.'
        "{% else %}We will look into it.{% endif %}\n"
    ),
    # A runtime error (TypeError: the ticket has no category), not a template error.
    "refund": 'Your refund of {{ "%.2f" | format(ticket.category) }} EUR is on its way.\n',
}


def _templates(tmp_path: Path) -> Path:
    directory = tmp_path / "templates"
    shutil.copytree(SHIPPED_TEMPLATES, directory, dirs_exist_ok=True)
    for name, text in ANSWERS.items():
        (directory / "answers" / f"{name}.txt.j2").write_text(text)
    return directory


def _app(tmp_path: Path, database_url: str, clock: FrozenClock) -> App:
    return agent_app(
        tmp_path,
        database_url,
        clock,
        agent_mail={"trusted_authserv_ids": ["mx.example.com"]},
        templates_dir=_templates(tmp_path),
    )


@pytest.fixture
def app(tmp_path: Path, database_url: str, clock: FrozenClock) -> Iterator[App]:
    application = _app(tmp_path, database_url, clock)
    yield application
    application.db.dispose()


@pytest.fixture
def nodes(tmp_path: Path, database_url: str, clock: FrozenClock) -> Iterator[tuple[App, App]]:
    apps = _app(tmp_path, database_url, clock), _app(tmp_path, database_url, clock)
    yield apps
    for application in apps:
        application.db.dispose()


def _ticket(app: App, number: int) -> Sent:
    """Alice's ticket ``number`` (a new subject each) and bob's notice of it."""
    deliver(app, make_mail(message_id=f"t{number}@customer.test", subject=f"Problem {number}"))
    [notice] = [s for s in to(app, BOB, "new_ticket") if f"#{number}]" in s.msg["Subject"]]
    return notice


def _bob_mail(notice: Sent, body: str) -> Callable[[App], None]:
    raw = client_reply(notice, body)
    return lambda app: deliver(app, raw, rcpt=(reply_address(notice),), mail_from=BOB)


def _from_bob(app: App, notice: Sent, body: str) -> None:
    _bob_mail(notice, body)(app)


def _to_alice(app: App, number: int) -> list[str]:
    """The purposes of the mail that went to Alice about ticket ``number``."""
    return [s.purpose for s in to(app, ALICE) if f"#{number}]" in s.msg["Subject"]]


def _kept(app: App, number: int) -> list[str]:
    """Bob's mail kept on ticket ``number``."""
    with app.db.transaction() as session:
        ticket = session.scalars(select(Ticket).where(Ticket.number == number)).one()
        query = select(Message.text_body).where(
            Message.ticket_id == ticket.id, Message.from_addr == BOB
        )
        return [text or "" for text in session.scalars(query)]


def _report(app: App) -> str:
    return " ".join(to(app, BOB, "agent_result")[-1].text.split())


def _merged_into(app: App, number: int) -> int | None:
    merged = ticket_number(app, number).merged_into_id
    if merged is None:
        return None
    with app.db.transaction() as session:
        return session.scalar(select(Ticket.number).where(Ticket.id == merged))


def _assert_refused(app: App, number: int, failed: str, words: str) -> None:
    """Bob's mail on ticket ``number`` applied nothing, sent nothing, is kept, and he knows."""
    ticket = ticket_number(app, number)
    assert ticket.status is TicketStatus.NEW and ticket.priority == "normal"
    assert _to_alice(app, number) == ["ack"]  # no answer, no resolution mail
    assert any(words in text for text in _kept(app, number))
    report = _report(app)
    assert f"NOT applied: {failed}" in report
    assert "applied: #status" not in report.replace("NOT applied", "")
    assert REFUSED in report
    [refused] = events_of_kind(app, "agent_mail_refused")
    assert ticket_number(app, number).id == refused.ticket_id


def test_merge_of_a_ticket_merged_meanwhile_applies_nothing_and_sends_nothing(app: App) -> None:
    _ticket(app, 1)
    second, third = _ticket(app, 2), _ticket(app, 3)
    _from_bob(app, second, "#merge 1\n")
    assert _merged_into(app, 1) == 2

    _from_bob(app, third, "#status resolved\n#merge 1\n\nHello Alice, all settled in one place.\n")

    _assert_refused(
        app, 3, "#merge 1 (#1 is already merged into another ticket)", "all settled in one place"
    )
    assert _merged_into(app, 1) == 2
    assert [e.data["command"] for e in events_of_kind(app, "agent_command")] == ["merge"]

    # Corrected and sent again, all of it applies.
    _from_bob(app, third, "#status resolved\n#merge 2\n\nHello Alice, all settled in one place.\n")
    assert ticket_number(app, 3).status is TicketStatus.RESOLVED
    assert _merged_into(app, 2) == 3
    assert _to_alice(app, 3) == ["ack", "agent_reply", "resolved"]


def test_canned_answer_that_fails_after_an_earlier_command_sends_nothing(app: App) -> None:
    notice = _ticket(app, 1)

    _from_bob(app, notice, "#priority urgent\n#template outage\n\nMore news within the hour.\n")

    _assert_refused(app, 1, "#template outage (canned answer 'outage' does not render", "More news")
    assert not events_of_kind(app, "agent_command")


def test_canned_answer_with_a_runtime_error_is_refused_not_quarantined(app: App) -> None:
    notice = _ticket(app, 1)

    _from_bob(app, notice, "#status resolved\n#template refund\n\nSorry for the trouble.\n")

    with app.db.transaction() as session:
        states = list(session.scalars(select(Intake.state).order_by(Intake.id)))
    assert IntakeState.QUARANTINED not in states
    _assert_refused(
        app,
        1,
        "#template refund (canned answer 'refund' does not render: must be real number",
        "Sorry for the trouble",
    )


def test_confirmed_held_commands_apply_all_or_nothing(app: App) -> None:
    _ticket(app, 1)
    second = _ticket(app, 2)
    _ticket(app, 3)
    # Bob's new mail naming ticket #3: its commands wait for his "reply to apply".
    held = plain_mail(
        "Bob Agent <bob@agents.test>",
        "support@example.com",
        "[Support #3] done",
        "#status resolved\n#merge 1\n",
    )
    deliver(app, held, mail_from=BOB)
    [request] = to(app, BOB, "agent_confirm")
    _from_bob(app, second, "#merge 1\n")  # meanwhile

    _from_bob(app, request, "ok\n")

    ticket = ticket_number(app, 3)
    assert ticket.status is TicketStatus.NEW
    assert _to_alice(app, 3) == ["ack"]
    report = _report(app)
    assert "NOT applied: #merge 1 (#1 is already merged into another ticket)" in report
    assert REFUSED in report
    with app.db.transaction() as session:
        assert list(session.scalars(select(HeldAgentMail.state))) == ["refused"]


def test_a_correction_undone_with_its_mail_is_not_in_the_nodes_model(
    app: App, tmp_path: Path
) -> None:
    """``#category`` teaches the category model (a file, published in the database)
    before the ``#merge`` after it fails and the savepoint undoes the mail. This node's
    copy must be the database's again: not believe it holds a version the database never
    got, and so keep its undone lesson and never take another node's."""
    _ticket(app, 1)
    second, third = _ticket(app, 2), _ticket(app, 3)
    _from_bob(app, second, "#merge 1\n")

    _from_bob(app, third, "#category printing\n#merge 1\n\nAll settled in one place.\n")

    assert ticket_number(app, 3).category is None
    assert not events_of_kind(app, "category_corrected")
    path = app.settings.data_dir / CATEGORY_MODEL_NAME
    assert held_version(path) == shared_version(app.db, "category")
    # Another node learns a correction of its own; this node takes it, and only it.
    other = ModelSlot("category", tmp_path / "other" / CATEGORY_MODEL_NAME)
    assert other.path is not None
    other.path.parent.mkdir()
    with app.db.transaction() as session:
        other.learn("the vpn drops every hour", "network", session=session, node="other")
    pull(app.db, path, "category")
    assert CategoryModel.load(path).labels == ("network",)


def test_merge_another_node_makes_between_validation_and_apply(
    nodes: tuple[App, App], database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Node 1 has validated bob's ``#status resolved`` + ``#merge 1`` on #3; node 2 then
    merges #1 into #2. On PostgreSQL node 2 wins and node 1's mail must do nothing; on
    SQLite node 2 waits for node 1, and its own mail is the one that does nothing."""
    app, other_node = nodes
    _ticket(app, 1)
    second, third = _ticket(app, 2), _ticket(app, 3)
    first = _bob_mail(third, "#status resolved\n#merge 1\n\nAll settled in one place.\n")
    meanwhile = _bob_mail(second, "#merge 1\n")

    original = CommandRunner.run
    main = threading.current_thread()
    finish: list[Callable[[], None]] = []

    def paused(self: CommandRunner, commands: Any) -> Any:
        if threading.current_thread() is main and not finish:
            finish.append(in_thread(lambda: meanwhile(other_node)))
        return original(self, commands)

    monkeypatch.setattr(CommandRunner, "run", paused)
    first(app)
    assert finish, "the other node never ran"
    finish[0]()

    if database_url.startswith("postgresql"):  # node 2 first: bob's mail on #3 did nothing
        assert _merged_into(app, 1) == 2
        _assert_refused(
            app, 3, "#merge 1 (#1 is already merged into another ticket)", "All settled"
        )
    else:
        assert _merged_into(app, 1) == 3
        assert ticket_number(app, 3).status is TicketStatus.RESOLVED
        [refused] = events_of_kind(app, "agent_mail_refused")
        assert refused.ticket_id == ticket_number(app, 2).id
