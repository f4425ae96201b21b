"""Over-long addresses and values, delivered through our real SMTP listener.

An address longer than RFC 5321 allows (64 octets before the @, 254 in all) is
no mailbox: nothing is ever sent to it, it is never stored cut short (its first
320 characters may be somebody else's address: ``aaa…@victim.test``), and the
ticket says why. A database refusing a row puts only that message in
quarantine, with a short reason that repeats neither the SQL nor the mail's
text. On SQLite and on PostgreSQL alike, and the next mail is processed.
"""

from __future__ import annotations

import json
import smtplib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import select, text

from maildesk.app import App
from maildesk.cli import main
from maildesk.config import ListenerSettings
from maildesk.db.models import Contact, Disposition, Event, Intake, IntakeState
from tests.agents.agenthelp import agent_app, client_reply, reply_address, to
from tests.conftest import FrozenClock, write_cli_config
from tests.daemon_harness import RelaySink, free_port
from tests.intake.test_smtp_listener import start
from tests.mailfactory import make_mail

# 337 characters; its first 320 are "aaa…a@victim.test", somebody else's address.
VICTIM = "victim.test"
OVERLONG = "a" * (320 - len("@" + VICTIM)) + f"@{VICTIM}.attacker.example"
ALICE = "alice@customer.test"


@pytest.fixture
def relay() -> Iterator[RelaySink]:
    sink = RelaySink()
    sink.start()
    yield sink
    sink.stop()


@pytest.fixture
def desk(tmp_path: Path, database_url: str, clock: FrozenClock, relay: RelaySink) -> App:
    """The agents' app, its outbox sent to ``relay`` over SMTP."""
    return agent_app(
        tmp_path, database_url, clock, outbound={"transport": "smtp", "relay_port": relay.port}
    )


def by_smtp(app: App, *mails: tuple[str, bytes]) -> None:
    """Hand each (envelope sender, message) to our real SMTP listener, then run the
    worker and the sender as the daemon does."""
    port = free_port()
    controller: Any = start(app, ListenerSettings(protocol="smtp", port=port))
    try:
        with smtplib.SMTP("127.0.0.1", port) as client:
            for mail_from, raw in mails:
                client.sendmail(mail_from, ["support@example.com"], raw)
    finally:
        controller.stop()
    app.worker().drain()
    app.sender().drain()


def recipients(relay: RelaySink) -> list[str]:
    return [rcpt for mail in relay.received for rcpt in mail.rcpt_tos]


def intakes(app: App) -> list[Intake]:
    with app.db.transaction() as session:
        rows = list(session.scalars(select(Intake).order_by(Intake.id)))
        session.expunge_all()
        return rows


def reasons(app: App, intake_id: int) -> dict[str, list[str]]:
    """The events of one stored mail (and of its ticket) by kind: what `explain` shows."""
    with app.db.transaction() as session:
        row = session.get(Intake, intake_id)
        assert row is not None
        query = select(Event).where(
            (Event.intake_id == intake_id)
            | ((Event.ticket_id == row.ticket_id) & Event.ticket_id.is_not(None))
        )
        found: dict[str, list[str]] = {}
        for event in session.scalars(query.order_by(Event.id)):
            found.setdefault(event.kind, []).append(event.reason)
        return found


def contacts(app: App) -> list[str]:
    with app.db.transaction() as session:
        return list(session.scalars(select(Contact.email)))


def test_an_overlong_from_gets_no_mail_and_its_ticket_says_why(desk: App, relay: RelaySink) -> None:
    by_smtp(
        desk,
        ("eve@attacker.example", make_mail(sender=f"Eve <{OVERLONG}>", message_id="e1@x.test")),
        (ALICE, make_mail(sender=f"Alice <{ALICE}>", message_id="a1@x.test")),
    )
    overlong, following = intakes(desk)
    # The mail is not lost: a ticket the agents can read, not a quarantined DataError.
    assert (overlong.state, overlong.disposition) == (IntakeState.DONE, Disposition.CREATED)
    # Nothing went to the address nor to its first 320 characters (someone else's).
    assert [r for r in recipients(relay) if VICTIM in r] == []
    assert [c for c in contacts(desk) if VICTIM in c] == []
    said = reasons(desk, overlong.id)
    [skipped] = said["ack_skipped"]
    assert "From address" in skipped and "337 characters long" in skipped, skipped
    assert "more than the 254 RFC 5321 allows: no mail can be delivered to it" in skipped
    assert said["address_unusable"] == [skipped.removeprefix("not answered: ")]
    # And the daemon went on: the next customer has her ticket and acknowledgement.
    assert following.disposition is Disposition.CREATED
    assert ALICE in recipients(relay)


def test_an_overlong_cc_never_receives_the_agents_answer(desk: App, relay: RelaySink) -> None:
    cc = f"Eve <{OVERLONG}>, Carl <carl@customer.test>"
    by_smtp(desk, (ALICE, make_mail(sender=f"Alice <{ALICE}>", cc=cc, message_id="c1@x.test")))
    [intake] = intakes(desk)
    assert intake.disposition is Disposition.CREATED, intake.quarantine_reason
    [notice] = to(desk, "bob@agents.test", "new_ticket")
    bob = client_reply(notice, "We have ordered a new printer.")
    by_smtp(desk, ("bob@agents.test", bob))
    answers = [m for m in relay.received if "carl@customer.test" in m.rcpt_tos]
    assert answers, "the answer goes to the requester and the Cc that is an address"
    assert [r for r in recipients(relay) if VICTIM in r] == []
    assert [c for c in contacts(desk) if VICTIM in c] == []
    said = reasons(desk, intake.id)["address_unusable"]
    assert len(said) == 1 and said[0].startswith("Cc address aaa") and "254" in said[0]
    assert reply_address(notice)  # the agent's reply went to the ticket's signed address


def test_an_overlong_list_author_is_not_made_the_requester(desk: App, relay: RelaySink) -> None:
    """A list that rewrote its From names the author in X-Original-From: too long, no one."""
    headers = {
        "X-Original-From": f"Eve <{OVERLONG}>",
        "List-Id": "Users <users.lists.example>",
        "List-Post": "<mailto:users@lists.example>",
    }
    raw = make_mail(
        sender="Eve via Users <users@lists.example>", message_id="l1@x.test", headers=headers
    )
    by_smtp(desk, ("users-bounces@lists.example", raw), (ALICE, make_mail(message_id="a2@x.test")))
    overlong, following = intakes(desk)
    assert overlong.state is IntakeState.DONE, overlong.quarantine_reason
    assert [r for r in recipients(relay) if VICTIM in r] == []
    assert [c for c in contacts(desk) if VICTIM in c] == []
    assert following.disposition is Disposition.CREATED


REFUSE = "refuse-me"
SECRET = "my card number is 4111 1111 1111 1111"


def refuse_messages_with(app: App, marker: str, constraint: bool = False) -> None:
    """Make the database refuse a message row whose subject has ``marker``: a failure
    nobody foresaw (as a value too long for its column was), the same on both; with
    ``constraint``, as a broken constraint (an IntegrityError, as a race also raises)."""
    with app.db.transaction() as session:
        if app.db.is_sqlite:
            # zeroblob over SQLite's length limit: "string or blob too big" (a DataError);
            # RAISE(ABORT) is a constraint failure.
            refusal = (
                "SELECT RAISE(ABORT, 'CHECK constraint failed: messages_subject')"
                if constraint
                else "SELECT zeroblob(2000000000)"
            )
            session.execute(
                text(
                    "CREATE TRIGGER refuse BEFORE INSERT ON messages "
                    f"WHEN NEW.subject LIKE '%{marker}%' "
                    f"BEGIN {refusal}; END"
                )
            )
        else:
            refusal = (
                "'new row violates check constraint \"messages_subject\"' USING ERRCODE = '23514'"
                if constraint
                else "'value too long for type character varying(320)' USING ERRCODE = '22001'"
            )
            session.execute(
                text(
                    "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                    f"IF NEW.subject LIKE '%{marker}%' THEN RAISE EXCEPTION {refusal}; "
                    "END IF; RETURN NEW; END $$"
                )
            )
            session.execute(
                text(
                    "CREATE TRIGGER refuse BEFORE INSERT ON messages "
                    "FOR EACH ROW EXECUTE FUNCTION refuse()"
                )
            )


def drop_refusal(app: App) -> None:
    with app.db.transaction() as session:
        session.execute(text("DROP TRIGGER refuse" + ("" if app.db.is_sqlite else " ON messages")))
        if not app.db.is_sqlite:
            session.execute(text("DROP FUNCTION refuse()"))


@pytest.fixture
def refusing_desk(desk: App) -> Iterator[App]:
    refuse_messages_with(desk, REFUSE)
    yield desk
    drop_refusal(desk)


def test_a_refused_row_quarantines_with_a_short_reason_without_sql_or_text(
    refusing_desk: App, relay: RelaySink
) -> None:
    desk = refusing_desk
    refused = make_mail(subject=f"{REFUSE} {SECRET}", body=f"{SECRET}\n", message_id="r1@x.test")
    by_smtp(desk, (ALICE, refused), (ALICE, make_mail(message_id="a3@x.test", subject="later")))
    held, following = intakes(desk)
    assert held.state is IntakeState.QUARANTINED
    reason = held.quarantine_reason or ""
    assert reason.startswith("processing failed: DataError ("), reason
    for leaked in ("[SQL", "INSERT", "parameters", SECRET, "4111"):
        assert leaked not in reason, f"{leaked!r} in the quarantine reason: {reason}"
    assert len(reason) <= 250 and "\n" not in reason, reason
    assert reasons(desk, held.id)["quarantined"] == [reason]
    # The daemon went on with the next mail.
    assert following.disposition is Disposition.CREATED
    assert ALICE in recipients(relay)


def test_a_constraint_broken_twice_is_no_race_and_the_reason_says_what_broke(
    desk: App, relay: RelaySink
) -> None:
    """An IntegrityError is first taken for another node's write at the same moment and
    decided again; failing twice, the quarantine reason names what the database said."""
    refuse_messages_with(desk, REFUSE, constraint=True)
    try:
        refused = make_mail(subject=f"{REFUSE} {SECRET}", message_id="c1@x.test")
        by_smtp(desk, (ALICE, refused), (ALICE, make_mail(message_id="c2@x.test")))
    finally:
        drop_refusal(desk)
    held, following = intakes(desk)
    assert held.state is IntakeState.QUARANTINED
    reason = held.quarantine_reason or ""
    assert reason.startswith("conflicting concurrent writes twice: IntegrityError ("), reason
    assert "IntegrityError" in reason and "messages_subject" in reason, reason
    assert SECRET not in reason and "INSERT" not in reason, reason
    assert following.disposition is Disposition.CREATED


def with_folded_message_id(raw: bytes, message_id: str) -> bytes:
    """``raw`` with its Message-ID replaced by ``message_id``, folded as a client folds
    a long one (the id is read back whole, its folding white space removed)."""
    head, _, body = raw.partition(b"\n\n")
    lines = [line for line in head.split(b"\n") if not line.lower().startswith(b"message-id:")]
    folded = "\r\n ".join(message_id[i : i + 500] for i in range(0, len(message_id), 500))
    lines.append(f"Message-ID: <{folded}>".encode())
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def test_message_ids_alike_for_their_first_998_characters_stay_two(
    desk: App, relay: RelaySink, tmp_path: Path, database_url: str
) -> None:
    """A Message-ID longer than its column is kept apart by a hash of the whole id, not
    cut into the id of another message: `maildesk explain` finds each by its own."""
    stem = "x" * 1100
    first, second = f"{stem}.one@customer.test", f"{stem}.two@customer.test"
    by_smtp(
        desk,
        (ALICE, with_folded_message_id(make_mail(subject="first"), first)),
        (ALICE, with_folded_message_id(make_mail(subject="second", sender="b@c.test"), second)),
    )
    config = write_cli_config(tmp_path / "maildesk.toml", tmp_path / "data", database_url)
    for n, message_id in enumerate((first, second), start=1):
        shown = CliRunner().invoke(
            main, ["--config", str(config), "explain", f"<{message_id}>", "--json"]
        )
        assert shown.exit_code == 0, shown.output
        [found] = json.loads(shown.output)
        assert found["id"] == n and found["disposition"] == "created", found


def test_an_agents_cc_of_an_overlong_address_is_refused_with_the_reason(
    desk: App, relay: RelaySink
) -> None:
    """``#cc`` takes what its pattern calls an address, up to 389 characters: past RFC
    5321's 254 it is no mailbox, and the agent's answer must not go to it. A command
    that cannot be applied stops the whole mail: the agent is told why."""
    long_cc = "c" * 64 + "@" + ".".join(["d" * 63] * 3 + ["d" * 61]) + "." + "e" * 70
    by_smtp(desk, (ALICE, make_mail(sender=f"Alice <{ALICE}>", message_id="k1@x.test")))
    [notice] = to(desk, "bob@agents.test", "new_ticket")
    bob = client_reply(notice, f"#cc {long_cc}\n\nWe are on it.")
    by_smtp(desk, ("bob@agents.test", bob))
    bob_mail, *_ = intakes(desk)[1:]
    assert bob_mail.state is IntakeState.DONE, bob_mail.quarantine_reason
    assert long_cc not in recipients(relay) and long_cc not in contacts(desk)
    sent_to = [r for m in relay.received[1:] for r in m.rcpt_tos]
    assert ALICE not in sent_to and "bob@agents.test" in sent_to
    [refused] = reasons(desk, bob_mail.id)["agent_mail_refused"]
    assert "the address is 389 characters long, more than the 254 RFC 5321 allows" in refused
