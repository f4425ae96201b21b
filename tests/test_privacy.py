"""Erasure on request and retention: `maildesk privacy forget|purge` and the daily job.

A customer's history is made through the real pipeline (their mail, an
agent's internal note and answer, a merge, their rating, a bounce of our mail,
their unparsable mail in quarantine), then erased through the real CLI. The
proof is a scan of every text, JSON and bytes column of every table for the
address and for a word only their mail contained.
"""

from __future__ import annotations

import base64
import email
import email.policy
import hashlib
import json
import shutil
import smtplib
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import LargeBinary, event, func, select

from maildesk.app import App
from maildesk.config import OutboundSettings
from maildesk.db.database import Database
from maildesk.db.models import (
    Base,
    Blob,
    Event,
    Intake,
    IntakeState,
    Message,
    Outbox,
    OutboxState,
    Rating,
    Suppression,
    Ticket,
    TicketStatus,
)
from maildesk.intake.store import Envelope
from maildesk.outbound.sender import MaildirTransport, OutboxSender, SmtpTransport
from maildesk.privacy.erase import erase_ticket, lock_tickets
from maildesk.privacy.forget import ERASED_EVENT, address_hash
from maildesk.privacy.jobs import apply_retention
from maildesk.privacy.match import Person
from maildesk.privacy.retention import purge
from maildesk.spam.jobs import send_digest
from maildesk.tickets import change_status
from tests.agents.agenthelp import agent_app, client_reply, reply_address, to
from tests.conftest import FrozenClock, private_pg_database, write_cli_config
from tests.daemon_harness import DaemonProcess, RelaySink, maildesk_env
from tests.mailfactory import deliver, make_mail, reply_to
from tests.outbound.test_bounces import dsn
from tests.pipeline.test_hostile_mail import nested_multipart

ALICE = "alice@customer.test"  # asks to be forgotten
DAVE = "dave@other.test"  # another customer
BOB = "bob@agents.test"  # the agent
SECRET_WORD = "quetzalcoatl7"  # in Alice's mails only
DAVE_WORD = "brontosaurus9"  # in Dave's mail only
SHARED = b"%PDF-1.4 the printer manual both customers attached\n" * 20


@pytest.fixture
def app(tmp_path: Path, database_url: str, clock: FrozenClock) -> Iterator[App]:
    application = agent_app(tmp_path, database_url, clock)
    yield application
    application.db.dispose()


def cli(app: App, tmp_path: Path, *args: str) -> Result:
    config = write_cli_config(
        tmp_path / "cli.toml",
        tmp_path / "cli-data",
        app.settings.effective_database_url,
        secret="test-secret",
    )
    return CliRunner().invoke(main_command(), ["--config", str(config), *args])


def main_command() -> Any:
    from maildesk.cli import main

    return main


def with_manual(sender: str, subject: str, body: str, message_id: str) -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, "support@example.com", subject
    msg["Message-ID"] = f"<{message_id}>"
    msg["Date"] = format_datetime(__import__("datetime").datetime(2026, 3, 2, 8, 0).astimezone())
    msg.set_content(body)
    msg.add_attachment(SHARED, maintype="application", subtype="pdf", filename="manual.pdf")
    return msg.as_bytes()


def alice_history(app: App, *, bounce: bool = True) -> None:
    """Everything a customer leaves behind, made the way it happens."""
    deliver(
        app,
        with_manual(
            f"Alice Customer <{ALICE}>",
            "Printer on fire",
            f"My printer is on fire. Codeword {SECRET_WORD}.\n",
            "a1@customer.test",
        ),
    )
    deliver(
        app,
        with_manual(
            f"Dave Other <{DAVE}>",
            "Scanner jammed",
            f"The scanner is jammed, {DAVE_WORD}.\n",
            "d1@other.test",
        ),
        mail_from=DAVE,
    )
    # Alice opens a second ticket about the same thing; bob merges it into the first.
    deliver(
        app,
        make_mail(
            message_id="a2@customer.test",
            subject="Still burning",
            body=f"Still burning, {SECRET_WORD} again.\n",
        ),
    )
    notice = to(app, BOB, "new_ticket")[0]
    assert notice.text.count(SECRET_WORD)

    def agent(body: str) -> None:
        deliver(
            app,
            client_reply(notice, body),
            rcpt=(reply_address(notice),),
            mail_from=BOB,
        )

    agent(f"#note\nAlice said {SECRET_WORD} on the phone; VIP.\n")
    agent("#merge 3\n\nSame fire.\n")
    agent("#status resolved\n\nUnplug it, Alice.\n")
    resolved = to(app, ALICE, "resolved")[0]
    rating = next(
        line.split(": ", 1)[1].strip()
        for line in resolved.text.splitlines()
        if line.strip().startswith("5:")
    )
    deliver(
        app,
        make_mail(
            to=rating,
            subject="Re: " + str(resolved.msg["Subject"]),
            in_reply_to=str(resolved.msg["Message-ID"]).strip("<>"),
            body=f"Great help, {SECRET_WORD}!\n",
        ),
        rcpt=(rating,),
    )
    # Our acknowledgement to her bounced: her address goes on the suppression list.
    with app.db.transaction() as session:
        ack = session.scalars(
            select(Outbox).where(Outbox.purpose == "ack", Outbox.recipient_key == ALICE)
        ).first()
        assert ack is not None
        verp = ack.envelope_from
    if bounce:
        deliver(app, dsn(verp, [ALICE]), rcpt=(verp,), mail_from="")
    # Mail of hers nothing could parse waits in quarantine.
    broken = nested_multipart(1000, f"{SECRET_WORD}\r\n".encode()).replace(
        b"From: Eve <eve@hostile.test>", f"From: Alice <{ALICE}>".encode()
    )
    deliver(app, broken)
    with app.db.transaction() as session:
        assert session.scalar(select(func.count()).select_from(Rating)) == 1
        assert session.scalar(select(func.count()).select_from(Suppression)) == int(bounce)
        assert session.scalar(
            select(func.count()).select_from(Intake).where(Intake.state == IntakeState.QUARANTINED)
        )
        queued = session.scalars(
            select(Outbox).where(Outbox.state == OutboxState.QUEUED, Outbox.recipient_key == ALICE)
        ).all()
        assert queued  # her answer is still waiting to be sent


def rows_containing(app: App | Database, *needles: str) -> list[str]:
    """Every table.column (with the row's key) whose value contains one of ``needles``."""
    db = app.db if isinstance(app, App) else app
    wanted = [n.lower() for n in needles]
    found = []
    with db.transaction() as session:
        for table in Base.metadata.sorted_tables:
            for row in session.execute(select(table)).mappings():
                for column in table.columns:
                    value = row[column.name]
                    if value is None or isinstance(value, (int, float, bool)):
                        continue
                    if isinstance(column.type, LargeBinary) or isinstance(value, bytes):
                        text = bytes(value).decode("latin-1").lower()
                    elif isinstance(value, str):
                        text = value.lower()
                    else:
                        text = json.dumps(value, default=str).lower()
                    for needle in wanted:
                        if needle in text:
                            key = next(iter(row.values()))
                            found.append(f"{table.name}.{column.name}[{key}]: {needle}")
    return found


def counts(app: App) -> dict[str, int]:
    with app.db.transaction() as session:
        return {
            table.name: session.scalar(select(func.count()).select_from(table)) or 0
            for table in Base.metadata.sorted_tables
        }


def test_forget_leaves_nothing_of_the_customer_and_everything_of_others(
    app: App, tmp_path: Path
) -> None:
    alice_history(app)
    assert rows_containing(app, ALICE, SECRET_WORD)  # the scan sees her before
    messages_before = counts(app)["messages"]

    result = cli(app, tmp_path, "privacy", "forget", ALICE, "--yes", "--by", "dpo")

    assert result.exit_code == 0, result.output
    assert rows_containing(app, ALICE, SECRET_WORD) == []
    # Dave's ticket, his mail and the attachment both of them sent are whole.
    assert rows_containing(app, DAVE, DAVE_WORD)
    with app.db.transaction() as session:
        [ticket] = session.scalars(select(Ticket)).all()
        assert ticket.requester is not None and ticket.requester.email == DAVE
        [message] = [m for m in ticket.messages if m.from_addr == DAVE]
        assert DAVE_WORD in message.text_body
        [attachment] = message.attachments
        blob = session.get(Blob, attachment.sha256)
        assert blob is not None and bytes(blob.data) == SHARED
        raw = session.get(Blob, message.raw_sha256)
        assert raw is not None and DAVE_WORD.encode() in bytes(raw.data)
        # One audit line, with a salted hash and not the address.
        [audit] = session.scalars(select(Event).where(Event.kind == ERASED_EVENT)).all()
        assert audit.data["address_hash"] == address_hash(ALICE, audit.data["salt"])
        assert audit.data["by"] == "dpo"
        erased = messages_before - len(ticket.messages)
        assert (audit.data["tickets"], audit.data["messages"]) == (2, erased)
        assert ALICE not in audit.reason
    exported = cli(app, tmp_path, "export")
    assert exported.exit_code == 0
    assert ALICE not in exported.output and SECRET_WORD not in exported.output
    assert DAVE in exported.output
    # A later request for the same address is recognised, and finds nothing left.
    again = cli(app, tmp_path, "privacy", "forget", ALICE.upper(), "--dry-run")
    assert "tickets 0, messages 0" in again.output
    assert "erased before on" in again.output


def test_nothing_queued_to_the_customer_is_sent_after_forget(
    app: App, tmp_path: Path, relay: RelaySink
) -> None:
    alice_history(app)
    assert cli(app, tmp_path, "privacy", "forget", ALICE, "--yes").exit_code == 0

    settings = OutboundSettings(transport="smtp", relay_port=relay.port)
    OutboxSender(app.db, SmtpTransport(settings, password=""), settings, app.clock, "n1").drain()

    recipients = {r for mail in relay.received for r in mail.rcpt_tos}
    assert ALICE not in recipients
    assert DAVE in recipients  # the sender itself works
    assert all(SECRET_WORD.encode() not in mail.raw for mail in relay.received)


class ErasingOnSend:
    """The relay, and an erasure of Alice that lands while her mail is being delivered."""

    def __init__(self, inner: SmtpTransport, erase: Any) -> None:
        self.inner, self.erase, self.erased = inner, erase, False

    def send(self, envelope_from: str, recipients: list[str], raw: bytes) -> None:
        if ALICE in recipients and not self.erased:
            self.erased = True
            self.erase()
        self.inner.send(envelope_from, recipients, raw)


def test_an_erasure_during_a_delivery_does_not_stop_the_sender(
    app: App, tmp_path: Path, relay: RelaySink
) -> None:
    """The row of the mail in flight is gone when the sender records the delivery."""
    alice_history(app, bounce=False)
    settings = OutboundSettings(transport="smtp", relay_port=relay.port)
    transport = ErasingOnSend(
        SmtpTransport(settings, password=""),
        lambda: cli(app, tmp_path, "privacy", "forget", ALICE, "--yes"),
    )
    sender = OutboxSender(app.db, transport, settings, app.clock, "n1")

    result = sender.drain(limit=100)

    assert transport.erased
    # The one in flight went out; nothing else of hers, and the rest of the batch did.
    assert sum(ALICE in mail.rcpt_tos for mail in relay.received) == 1
    assert any(DAVE in mail.rcpt_tos for mail in relay.received)
    assert result.sent == len(relay.received) - 1
    assert rows_containing(app, ALICE, SECRET_WORD) == []


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)  # SQLite: one writer
def test_an_erasure_between_reading_a_row_and_its_bytes_sends_no_empty_mail(
    app: App, tmp_path: Path, relay: RelaySink
) -> None:
    """On PostgreSQL each statement sees what is committed when it runs: an erasure
    that commits after the sender read the outbox row and before it read the mail's
    bytes left it with no bytes, and it sent an empty mail to the customer."""
    alice_history(app, bounce=False)
    settings = OutboundSettings(transport="smtp", relay_port=relay.port)
    sender = OutboxSender(app.db, SmtpTransport(settings, password=""), settings, app.clock, "n1")
    erased: list[int] = []

    def erase_before_the_bytes_are_read(
        _conn: Any, _cursor: Any, statement: str, *_args: Any
    ) -> None:
        if not erased and statement.lstrip().startswith("SELECT") and "FROM blobs" in statement:
            erased.append(cli(app, tmp_path, "privacy", "forget", ALICE, "--yes").exit_code)

    event.listen(app.db.engine, "before_cursor_execute", erase_before_the_bytes_are_read)
    try:
        sender.drain(limit=100)
    finally:
        event.remove(app.db.engine, "before_cursor_execute", erase_before_the_bytes_are_read)
    assert erased == [0]
    assert relay.received, "the rest of the batch went out"
    for mail in relay.received:
        assert mail.message["Message-ID"] and len(mail.raw) > 200, mail.raw[:200]
    assert rows_containing(app, ALICE, SECRET_WORD) == []


def test_a_reply_threaded_while_its_ticket_is_erased_opens_a_new_ticket(app: App) -> None:
    """The worker waits for the erasure's lock, then finds the ticket gone: the reply is
    a new ticket, not quarantined and not a message on a ticket half deleted."""
    first = make_mail(message_id="r1@customer.test", body=f"First, {SECRET_WORD}.\n")
    deliver(app, first)
    app.intake().store(
        reply_to(first, message_id="r2@customer.test", body="Any news?\n"),
        Envelope(source="smtp", mail_from=ALICE, rcpt_to=("support@example.com",)),
    )
    outcome: list[Any] = []
    worker = threading.Thread(target=lambda: outcome.append(app.worker().drain()))
    with app.db.transaction() as session:
        ticket_id = session.scalars(select(Ticket.id)).one()
        lock_tickets(session, [ticket_id])
        session.execute(select(Ticket.number).where(Ticket.id == ticket_id).with_for_update())
        worker.start()
        time.sleep(1.5)  # the worker found the ticket by the reply's In-Reply-To, and waits
        assert worker.is_alive()
        assert erase_ticket(session, ticket_id) is not None
    worker.join(60)

    assert outcome and outcome[0].as_dict().get("quarantined", 0) == 0, outcome
    with app.db.transaction() as session:
        [ticket] = session.scalars(select(Ticket)).all()
        assert ticket.id != ticket_id
        assert [m.text_body for m in ticket.messages if m.direction == "inbound"] == ["Any news?\n"]
    assert rows_containing(app, SECRET_WORD) == []


def test_a_late_reply_to_an_erased_ticket_never_lands_on_a_strangers_ticket(
    app: App, tmp_path: Path
) -> None:
    """Our mails carry the ticket number, signed; the number of an erased ticket is
    never given to a new one (SQLite reused the highest deleted id before 0011)."""
    deliver(app, make_mail(message_id="late1@customer.test", body=f"{SECRET_WORD}\n"))
    ack = to(app, ALICE, "ack")[0]
    assert cli(app, tmp_path, "privacy", "forget", ALICE, "--yes").exit_code == 0
    deliver(
        app,
        make_mail(sender=f"Dave <{DAVE}>", message_id="late2@other.test", subject="Mine"),
        mail_from=DAVE,
    )
    # Alice answers the acknowledgement still in her inbox.
    deliver(
        app,
        make_mail(
            message_id="late3@customer.test",
            subject="Re: " + str(ack.msg["Subject"]),
            in_reply_to=str(ack.msg["Message-ID"]).strip("<>"),
            body="One more thing.\n",
        ),
    )

    with app.db.transaction() as session:
        for ticket in session.scalars(select(Ticket)):
            senders = {m.from_addr for m in ticket.messages if m.direction == "inbound"}
            assert len(senders) == 1, (ticket.number, senders)
        numbers = set(session.scalars(select(Ticket.number)))
    assert 1 not in numbers


def test_forget_without_yes_changes_nothing(app: App, tmp_path: Path) -> None:
    alice_history(app)
    before = counts(app)

    dry = cli(app, tmp_path, "privacy", "forget", ALICE, "--dry-run")
    plain = cli(app, tmp_path, "privacy", "forget", ALICE)  # no terminal, no --yes

    assert dry.exit_code == 0 and plain.exit_code == 0
    assert "tickets 2," in dry.output and "outbox" in dry.output
    assert "nothing erased" in plain.output
    assert counts(app) == before


def test_the_count_first_is_what_the_erasure_then_deletes(app: App, tmp_path: Path) -> None:
    """Ops confirm an erasure on its counts: they must be what then goes, not a subset
    (the mail and notices of her tickets were left out of "intake" and "outbox")."""
    alice_history(app)

    dry = json.loads(cli(app, tmp_path, "privacy", "forget", ALICE, "--json").stdout)
    done = json.loads(cli(app, tmp_path, "privacy", "forget", ALICE, "--yes", "--json").stdout)

    assert done["intake"] > 0 and done["outbox"] > 0
    for key in ("tickets", "messages", "intake", "outbox", "ratings", "suppressions"):
        assert dry[key] == done[key], (key, dry, done)


def test_a_cc_participant_is_taken_off_a_ticket_someone_else_asked(
    app: App, tmp_path: Path, relay: RelaySink
) -> None:
    """Dave's ticket stays his; what Alice wrote on it, and her part in it, go."""
    first = make_mail(
        sender=f"Dave Other <{DAVE}>",
        message_id="d1@other.test",
        subject="Shared printer",
        body=f"Our printer, {DAVE_WORD}.\n",
        cc=ALICE,
    )
    deliver(app, first, mail_from=DAVE)
    deliver(
        app,
        reply_to(first, message_id="a1@customer.test", body=f"Me too, {SECRET_WORD}.\n"),
    )
    assert rows_containing(app, SECRET_WORD)
    # Bob answers both; the relay refuses the answer for good (an event names them).
    notice = to(app, BOB, "new_ticket")[0]
    deliver(app, client_reply(notice, "Restart it."), rcpt=(reply_address(notice),), mail_from=BOB)
    relay.reply = "554 5.7.1 refused"
    settings = OutboundSettings(transport="smtp", relay_port=relay.port)
    OutboxSender(app.db, SmtpTransport(settings, password=""), settings, app.clock, "n1").drain()
    assert any(ALICE in row for row in rows_containing(app, ALICE) if row.startswith("events"))

    assert cli(app, tmp_path, "privacy", "forget", ALICE, "--yes").exit_code == 0

    assert rows_containing(app, SECRET_WORD) == []
    # The address is left only in the Cc header of Dave's own mail: his record.
    left = rows_containing(app, ALICE)
    with app.db.transaction() as session:
        [ticket] = session.scalars(select(Ticket)).all()
        assert {m.from_addr for m in ticket.messages} == {DAVE, BOB, "support@example.com"}
        [message] = [m for m in ticket.messages if m.from_addr == DAVE]
        assert message.cc_addrs == []
        assert {p.contact.email for p in _participants(session, ticket.id)} == {DAVE}
        dave_raw = message.raw_sha256
    assert left == [f"blobs.data[{dave_raw}]: {ALICE}"]


def test_her_ticket_merged_into_someone_elses_leaves_his_ticket_standing(
    app: App, tmp_path: Path
) -> None:
    deliver(
        app,
        make_mail(sender=f"Dave <{DAVE}>", message_id="m1@other.test", body=f"{DAVE_WORD}\n"),
        mail_from=DAVE,
    )
    deliver(app, make_mail(message_id="m2@customer.test", body=f"Same, {SECRET_WORD}.\n"))
    notice = to(app, BOB, "new_ticket")[0]  # Dave's ticket #1
    deliver(app, client_reply(notice, "#merge 2\n"), rcpt=(reply_address(notice),), mail_from=BOB)
    with app.db.transaction() as session:
        assert session.scalars(select(Ticket.merged_into_id).where(Ticket.number == 2)).one()

    assert cli(app, tmp_path, "privacy", "forget", ALICE, "--yes").exit_code == 0

    assert rows_containing(app, SECRET_WORD) == []
    with app.db.transaction() as session:
        [ticket] = session.scalars(select(Ticket)).all()
        assert ticket.number == 1 and ticket.requester is not None
        assert ticket.requester.email == DAVE
        assert any(DAVE_WORD in m.text_body for m in ticket.messages)


def _participants(session: Any, ticket_id: int) -> list[Any]:
    from maildesk.db.models import Participant

    return list(session.scalars(select(Participant).where(Participant.ticket_id == ticket_id)))


def _close(app: App, number: int, status: TicketStatus) -> None:
    with app.db.transaction() as session:
        ticket = session.scalars(select(Ticket).where(Ticket.number == number)).one()
        change_status(session, ticket, status, app.clock(), None, actor="test")


def test_retention_deletes_only_tickets_closed_longer_ago(
    tmp_path: Path, database_url: str, clock: FrozenClock
) -> None:
    app = agent_app(tmp_path, database_url, clock, retention={"closed_ticket_days": 30})
    try:
        for n, word in enumerate(["oldclosed", "oldresolved", "recent", "open", "merged"]):
            deliver(
                app,
                with_manual(f"C{n} <c{n}@customers.test>", word, f"{word}\n", f"{word}@x.test"),
                mail_from=f"c{n}@customers.test",
            )
        with app.db.transaction() as session:
            target, source = (
                session.scalars(select(Ticket).where(Ticket.number == n)).one() for n in (1, 5)
            )
            from maildesk.tickets import merge_tickets

            assert merge_tickets(session, source, target, clock(), reason="test")
        _close(app, 1, TicketStatus.CLOSED)
        _close(app, 2, TicketStatus.RESOLVED)
        clock.advance(days=20)
        _close(app, 3, TicketStatus.CLOSED)
        clock.advance(days=11)  # #1 and #2 done 31 days ago, #3 11 days ago

        dry = cli(app, tmp_path, "privacy", "purge", "--older-than", "100000", "--dry-run")
        assert "would delete 0 tickets" in dry.output
        assert apply_retention(app) == 3  # #1 with #5 merged into it, and #2

        with app.db.transaction() as session:
            left = sorted(session.scalars(select(Ticket.number)))
            assert left == [3, 4]
            words = " ".join(session.scalars(select(Message.text_body)))
            assert "oldclosed" not in words and "merged" not in words
            assert "recent" in words and "open" in words
            # The manual all of them attached is still there for #3 and #4.
            assert session.scalar(select(func.count()).select_from(Blob).where(Blob.size > 0))
            [audit] = session.scalars(select(Event).where(Event.kind == "retention_purged"))
            assert audit.data["tickets"] == 3
        assert (
            rows_containing(app, "c0@customers.test", "c1@customers.test", "c4@customers.test")
            == []
        )
        assert apply_retention(app) == 0
    finally:
        app.db.dispose()


def test_purge_from_the_command_line_keeps_open_tickets(app: App, tmp_path: Path) -> None:
    deliver(app, make_mail(message_id="x1@customer.test", subject="one"))
    deliver(app, make_mail(message_id="x2@customer.test", subject="two"))
    _close(app, 1, TicketStatus.CLOSED)  # closed on the test clock, months before now

    dry = cli(app, tmp_path, "privacy", "purge", "--older-than", "30", "--dry-run")
    assert "would delete 1 tickets" in dry.output
    assert counts(app)["tickets"] == 2
    done = cli(app, tmp_path, "privacy", "purge", "--older-than", "30")

    assert done.exit_code == 0, done.output
    with app.db.transaction() as session:
        assert list(session.scalars(select(Ticket.number))) == [2]


def test_purge_older_than_beyond_the_calendar_is_a_usage_error(app: App, tmp_path: Path) -> None:
    deliver(app, make_mail(message_id="x1@customer.test", subject="one"))
    _close(app, 1, TicketStatus.CLOSED)
    for dry_run in (["--dry-run"], []):
        result = cli(app, tmp_path, "privacy", "purge", "--older-than", "1000000", *dry_run)
        assert result.exit_code == 2, result.output
        assert "--older-than" in result.output and "1000000" in result.output
        assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)
    assert counts(app)["tickets"] == 1


def test_retention_days_are_validated_like_the_rest_of_the_config(tmp_path: Path) -> None:
    config = write_cli_config(
        tmp_path / "bad.toml",
        tmp_path / "data",
        f"sqlite:///{tmp_path}/x.sqlite3",
        extra="[retention]\nclosed_ticket_days = -1\n",
    )
    result = CliRunner().invoke(main_command(), ["--config", str(config), "db", "status"])
    assert result.exit_code == 78
    assert "bad.toml" in result.output and "retention.closed_ticket_days" in result.output


@dataclass
class Node(DaemonProcess):
    database_url: str = ""

    def write_config(self) -> None:
        super().write_config()
        top = f'database_url = "{self.database_url}"\n'
        self.config_path.write_text(top + self.config_path.read_text(encoding="utf-8"))


@pytest.fixture(params=["sqlite", "postgresql"])
def daemon_db(
    request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path
) -> Iterator[str]:
    if request.param == "sqlite":
        path = tmp_path / "daemon.sqlite3"
        shutil.copy(sqlite_template, path)
        yield f"sqlite:///{path}"
        return
    with private_pg_database("maildesk_privacy") as url:
        yield url


@pytest.mark.slow
def test_forget_while_the_daemon_takes_mail_from_both_customers(
    tmp_path: Path, relay: RelaySink, daemon_db: str
) -> None:
    """Erasures beside a running daemon: no crash, no deadlock, no ticket left half there."""
    node = Node(tmp_path, relay_port=relay.port, database_url=daemon_db).start()
    db = Database(daemon_db)
    try:
        mails = []
        for n in range(30):
            alice = n % 2 == 0
            sender = f"Alice <{ALICE}>" if alice else f"Dave <{DAVE}>"
            word = SECRET_WORD if alice else DAVE_WORD
            mails.append(
                (
                    ALICE if alice else DAVE,
                    make_mail(
                        sender=sender,
                        message_id=f"race{n}@x.test",
                        subject=f"Case {n // 4}",  # a few replies thread onto one ticket
                        body=f"Mail {n}, {word}.\n",
                    ),
                )
            )
        erasures: list[subprocess.CompletedProcess[str]] = []

        def erase() -> None:
            erasures.append(
                subprocess.run(
                    [sys.executable, "-m", "maildesk", "--config", str(node.config_path),
                     "privacy", "forget", ALICE, "--yes"],
                    capture_output=True, text=True, timeout=120, cwd=tmp_path,
                    env=maildesk_env(), check=False,
                )
            )  # fmt: skip

        with smtplib.SMTP("127.0.0.1", node.smtp_port) as client:
            for n, (envelope, raw) in enumerate(mails):
                client.sendmail(envelope, ["support@example.com"], raw)
                if n % 10 == 9:
                    threading.Thread(target=erase).start()
                    time.sleep(0.3)

        def settled() -> bool:
            with db.transaction() as session:
                busy = session.scalar(
                    select(func.count())
                    .select_from(Intake)
                    .where(Intake.state.in_([IntakeState.PENDING, IntakeState.PROCESSING]))
                )
                queued = session.scalar(
                    select(func.count())
                    .select_from(Outbox)
                    .where(Outbox.state == OutboxState.QUEUED)
                )
            return busy == 0 and queued == 0 and len(erasures) == 3

        deadline = time.monotonic() + 90
        while not settled():
            assert time.monotonic() < deadline, node.log()[-3000:]
            time.sleep(0.3)
        erase()  # what she sent meanwhile opened new tickets: the last request takes them

        assert [e.returncode for e in erasures] == [0, 0, 0, 0], [e.stderr for e in erasures]
        assert node.proc is not None and node.proc.poll() is None, node.log()[-3000:]
        assert "Traceback" not in node.log(), node.log()[-3000:]
        assert rows_containing(db, ALICE, SECRET_WORD) == []
        with db.transaction() as session:
            dave = session.scalars(
                select(Message.text_body).where(func.lower(Message.from_addr) == DAVE)
            ).all()
            assert len(dave) == 15  # every one of his mails, on his tickets
            # Every ticket left is whole: it has the customer mail it was opened by.
            for ticket in session.scalars(select(Ticket)):
                assert any(m.direction == "inbound" for m in ticket.messages)
        assert node.terminate() == 0
    finally:
        db.dispose()
        if node.proc is not None and node.proc.poll() is None:
            node.kill()


def test_retention_is_a_daily_job_only_when_configured(
    tmp_path: Path, database_url: str, clock: FrozenClock
) -> None:
    from apscheduler.schedulers.background import BackgroundScheduler

    from maildesk.privacy.jobs import add_retention

    for days, expected in ((0, None), (30, 86400.0)):
        app = agent_app(tmp_path, database_url, clock, retention={"closed_ticket_days": days})
        scheduler = BackgroundScheduler(timezone="UTC")
        add_retention(scheduler, app)
        job = scheduler.get_job("retention")
        seconds = job.trigger.interval.total_seconds() if job is not None else None
        assert seconds == expected
        app.db.dispose()


def test_two_nodes_purging_at_once_delete_each_ticket_once(app: App) -> None:
    for n in range(8):
        deliver(app, make_mail(message_id=f"p{n}@customer.test", subject=f"case {n}"))
        _close(app, n + 1, TicketStatus.CLOSED)
    app.clock.advance(days=40)  # type: ignore[attr-defined]
    results: list[Any] = []
    errors: list[BaseException] = []

    def node(name: str) -> None:
        try:
            results.append(purge(app.db, 30, now=app.clock, actor=name))
        except BaseException as exc:
            errors.append(exc)

    nodes = [threading.Thread(target=node, args=(f"n{i}",)) for i in range(2)]
    for thread in nodes:
        thread.start()
    for thread in nodes:
        thread.join(60)

    assert errors == []
    assert sum(r.tickets for r in results) == 8
    assert counts(app)["tickets"] == 0


# -- the daily spam digest ---------------------------------------------------------
SPAMMER = "x@spam.test"


def _digest_texts(app: App) -> dict[str, str]:
    """The text of each stored spam digest, by its outbox state."""
    with app.db.transaction() as session:
        rows = session.execute(
            select(Outbox.state, Blob.data)
            .join(Blob, Blob.sha256 == Outbox.raw_sha256)
            .where(Outbox.purpose == "spam_digest")
        ).all()
    texts = {}
    for state, data in rows:
        parsed = email.message_from_bytes(bytes(data), policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        texts[str(state)] = parsed.get_content()
    return texts


def test_forget_takes_her_out_of_the_spam_digests_and_leaves_the_other_senders(
    tmp_path: Path, database_url: str, clock: FrozenClock
) -> None:
    """A digest lists many senders: her entries go from the one sent (our copy) and the
    one still queued (what goes out); everyone else's stay, and the day keeps its digest."""
    spam = {"unsure_at": 0.0, "spam_at": 0.0, "digest_to": "postmaster@example.com"}
    app = agent_app(tmp_path, database_url, clock, spam={**spam, "digest_at": "07:00"})
    sent_dir = tmp_path / "sent"

    def drain() -> None:
        transport = MaildirTransport(sent_dir)
        OutboxSender(app.db, transport, app.settings.outbound, clock, "n1").drain()

    try:
        for day, (hers, theirs) in enumerate([("Cheap", "Glück watches"), ("More", "Pills")]):
            deliver(app, make_mail(subject=f"{hers} {SECRET_WORD}", message_id=f"s{day}@c.test"))
            deliver(
                app,
                make_mail(sender=f"Spammer <{SPAMMER}>", subject=theirs, message_id=f"x{day}@s.t"),
                mail_from=SPAMMER,
            )
            clock.advance(days=1)
            assert send_digest(app)
            if day == 0:
                drain()  # the first day's digest went out; the second's waits
        before = _digest_texts(app)
        assert set(before) == {"sent", "queued"}
        assert all(ALICE in text and SECRET_WORD in text for text in before.values())

        result = cli(app, tmp_path, "privacy", "forget", ALICE, "--yes")

        assert result.exit_code == 0, result.output
        assert rows_containing(app, ALICE, SECRET_WORD) == []
        after = _digest_texts(app)
        assert "Glück watches" in after["sent"] and "Pills" in after["queued"]
        assert all(SPAMMER in text for text in after.values())
        assert not send_digest(app)  # the day's digest is still recorded: no second one
        drain()
        sent = [p.read_bytes() for p in sent_dir.rglob("*") if p.is_file()]
        [second] = [raw for raw in sent if b"Pills" in raw]  # went out without her
        assert len(sent) == 2 and SPAMMER.encode() in second
        assert ALICE.encode() not in second and SECRET_WORD.encode() not in second
    finally:
        app.db.dispose()


# -- one address, two spellings of its domain ----------------------------------------
ANNA_U = "Anna@Bücher.example"
ANNA_A = "anna@xn--bcher-kva.example"
ANNA_WORD = "zeppelin42"


def _raw_from(sender: str, subject: str, message_id: str, body: str) -> bytes:
    """A mail as its client wrote it, an internationalised domain in UTF-8 if so written."""
    return (
        f"From: Anna <{sender}>\r\nTo: support@example.com\r\nSubject: {subject}\r\n"
        f"Message-ID: <{message_id}>\r\nDate: Mon, 2 Mar 2026 08:00:00 +0000\r\n"
        f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Transfer-Encoding: 8bit\r\n\r\n{body}"
    ).encode()


@pytest.mark.parametrize(
    ("written", "requested"),
    [(ANNA_A, ANNA_U), (ANNA_U, ANNA_A)],
    ids=["mail-in-a-labels", "mail-in-u-labels"],
)
def test_forget_finds_her_under_either_spelling_of_her_domain(
    app: App, tmp_path: Path, written: str, requested: str
) -> None:
    """`Anna@Bücher.example` and `anna@xn--bcher-kva.example` are one mailbox: a request
    in one spelling erases what came in the other, and is recognised in the other."""
    deliver(
        app,
        _raw_from(written, "Order lost", "n1@buecher.test", f"Order {ANNA_WORD} lost.\n"),
        mail_from=written,
    )
    # Her unparsable mail in quarantine, relayed: only its bytes name her.
    broken = nested_multipart(1000, f"{ANNA_WORD}\r\n".encode()).replace(
        b"From: Eve <eve@hostile.test>", f"From: Anna <{written}>".encode()
    )
    deliver(app, broken, mail_from="bounces@relay.test")
    spellings = (ANNA_U.lower(), ANNA_A)
    assert rows_containing(app, ANNA_WORD)

    result = cli(app, tmp_path, "privacy", "forget", requested, "--yes")

    assert result.exit_code == 0, result.output
    assert "tickets 1" in result.output
    assert rows_containing(app, *spellings, ANNA_WORD) == []
    with app.db.transaction() as session:
        [audit] = session.scalars(select(Event).where(Event.kind == ERASED_EVENT)).all()
        salt = audit.data["salt"]
        assert audit.data["address_hash"] == address_hash(written, salt)
        assert address_hash(ANNA_U, salt) == address_hash(ANNA_A, salt)
    again = cli(app, tmp_path, "privacy", "forget", written, "--dry-run")
    assert "tickets 0, messages 0" in again.output
    assert "erased before on" in again.output


def test_forget_yes_json_says_when_the_address_was_erased_before(app: App, tmp_path: Path) -> None:
    """README: asked again for the same address, `forget` says when it was erased before;
    a script erasing with --yes --json is told too, not only one that counts first."""
    first = cli(app, tmp_path, "privacy", "forget", ALICE, "--yes", "--json")
    assert first.exit_code == 0, first.output
    assert json.loads(first.stdout)["previously_erased"] == []
    again = cli(app, tmp_path, "privacy", "forget", ALICE.upper(), "--yes", "--json")
    assert again.exit_code == 0, again.output
    done = json.loads(again.stdout)
    assert done["dry_run"] is False and len(done["previously_erased"]) == 1


def test_an_erasure_recorded_under_the_old_key_is_still_recognised(
    app: App, tmp_path: Path
) -> None:
    """Audit events written before the key took A-labels hashed the address as asked,
    lower-cased (``anna@bücher.example``): a request in either spelling still finds them."""
    salt = "0123456789abcdef"
    old_hash = hashlib.sha256(f"{salt}:{ANNA_U.lower()}".encode()).hexdigest()
    with app.db.transaction() as session:
        session.add(
            Event(
                at=app.clock(),
                kind=ERASED_EVENT,
                reason="erased",
                data={"address_hash": old_hash, "salt": salt},
            )
        )
    for spelling in (ANNA_U, ANNA_A):
        again = cli(app, tmp_path, "privacy", "forget", spelling, "--dry-run")
        assert "erased before on" in again.output, spelling
    assert "erased before on" not in cli(app, tmp_path, "privacy", "forget", ALICE).output


# -- an address inside another -------------------------------------------------------
JOANN = "joann@customer.test"  # not the one asking: her address ends in "ann@customer.test"
JOANN_WORD = "pterodactyl3"


def test_forget_leaves_the_mail_of_an_address_that_merely_ends_in_hers(
    tmp_path: Path, database_url: str, clock: FrozenClock
) -> None:
    """Erasing ann@customer.test must not take joann@customer.test's quarantined mail,
    nor her entries in the spam digest: her address only contains the other's."""
    spam = {"unsure_at": 0.0, "spam_at": 0.0, "digest_to": "postmaster@example.com"}
    app = agent_app(tmp_path, database_url, clock, spam={**spam, "digest_at": "07:00"})
    try:
        deliver(
            app,
            make_mail(
                sender=f"Jo Ann <{JOANN}>", subject=f"Hi {JOANN_WORD}", message_id="j1@c.test"
            ),
            mail_from=JOANN,
        )
        clock.advance(days=1)
        assert send_digest(app)
        assert rows_containing(app, JOANN_WORD)
        assert all(JOANN in text for text in _digest_texts(app).values())

        result = cli(app, tmp_path, "privacy", "forget", "ann@customer.test", "--yes")

        assert result.exit_code == 0, result.output
        assert rows_containing(app, JOANN_WORD), "joann's quarantined mail was erased"
        [digest] = _digest_texts(app).values()
        assert JOANN in digest and "(erased)" not in digest
    finally:
        app.db.dispose()


@pytest.mark.parametrize(
    ("raw", "hers"),
    [
        (b"From: Ann <ann@customer.test>\r\n", True),
        (b"To: ANN@Customer.Test, bob@x.test\r\n", True),
        (b"write to ann@customer.test.\r\n", True),
        (b'href=3D"mailto:ann@customer.test?subject=3Dhi"', True),
        (b"Ann =3Cann@customer.test=3E wrote:", True),
        (b"From: Jo Ann <joann@customer.test>\r\n", False),
        (b"From: <jo.ann@customer.test>\r\n", False),
        (b"From: <jo+ann@customer.test>\r\n", False),
        (b"From: <ann@customer.test.example>\r\n", False),
        (b"From: <ann@customer.testing>\r\n", False),
    ],
)
def test_her_address_is_found_in_raw_mail_only_as_a_whole_address(raw: bytes, hers: bool) -> None:
    """Quarantined mail is erased for the bytes that name her: written any way she is,
    never because another's address ends or begins with hers."""
    from maildesk.privacy.match import Person

    person = Person.of("Ann@customer.test")
    assert person.mail_names(raw) is hers
    assert person.named_in(raw.decode()) is hers


QP = b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
B64 = b"Content-Transfer-Encoding: base64\r\n\r\n"


@pytest.mark.parametrize(
    ("address", "raw", "hers"),
    [
        ("ann@customer.test", QP + b"write to ann@custo=\r\nmer.test", True),
        ("ann@customer.test", QP + b"write to ann=40customer.test", True),
        ("ann@customer.test", b"no encoding named: ann@custo=\r\nmer.test", False),
        ("ann@customer.test", B64 + base64.encodebytes(b"Fwd: <ANN@customer.test>"), True),
        ("ann@customer.test", B64 + base64.b64encode(b"Fwd: ann@customer.test").rstrip(b"="), True),
        ("ann@customer.test", B64 + base64.encodebytes(b"Fwd: <joann@customer.test>"), False),
        ("ann@customer.test", b"Cc: =?utf-8?B?QW5uIDxhbm5AY3VzdG9tZXIudGVzdD4=?=\r\n", True),
        ("ann@customer.test", b"Cc: =?utf-8?q?ann=40custo?=\r\n =?utf-8?q?mer.test?=\r\n", True),
        ("ann@customer.test", b"Cc: =?utf-8?q?jo?=ann@customer.test\r\n", False),
        ("müller@example.test", "Cc: Jörg <MÜLLER@Example.test>\r\n".encode(), True),
        ("müller@example.test", "Cc: <MÜLLER@Example.test>\r\n".encode("latin-1"), True),
        ("müller@example.test", QP + b"M=C3=9CLLER@example.test", True),
        ("müller@example.test", "Cc: <jmüller@example.test>\r\n".encode(), False),
    ],
)
def test_her_address_is_found_where_a_reader_sees_it(address: str, raw: bytes, hers: bool) -> None:
    """Behind a transfer encoding the mail names, or in a case beyond ASCII, her address
    is hers as a mail client shows it; the pre-filter on the bytes lets such mail through."""
    from maildesk.privacy.match import Person
    from maildesk.privacy.readable import MARKERS

    person = Person.of(address)
    assert person.mail_names(raw) is hers
    if hers:  # what SQL's lower() (ASCII only) finds: a needle of in_bytes
        lowered = raw.lower()
        assert any(marker in lowered for marker in MARKERS) or b"ller@example.test" in lowered


def test_forget_leaves_the_mail_to_an_address_that_merely_ends_in_hers_on_her_ticket(
    app: App, tmp_path: Path
) -> None:
    """Ann was Cc'd on Jo Ann's ticket: erasing Ann takes Ann off it, and leaves the
    acknowledgement and notices of Jo Ann's mail (to and naming joann@) where they are."""
    deliver(
        app,
        make_mail(
            sender=f"Jo Ann <{JOANN}>",
            message_id="j2@customer.test",
            subject="Printer",
            body=f"Our printer, {JOANN_WORD}.\n",
            cc="ann@customer.test",
        ),
        mail_from=JOANN,
    )

    def generated() -> list[tuple[int, list[str]]]:
        with app.db.transaction() as session:
            rows = session.scalars(select(Message).where(Message.from_addr != JOANN)).all()
            return sorted((m.id, m.to_addrs) for m in rows if "ann@customer.test" not in m.to_addrs)

    before = generated()
    assert any(JOANN in to_addrs for _id, to_addrs in before), before  # her acknowledgement

    assert cli(app, tmp_path, "privacy", "forget", "ann@customer.test", "--yes").exit_code == 0

    assert generated() == before


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)  # SQLite: one writer
def test_a_digest_rewritten_between_reading_its_row_and_its_bytes_goes_out_next_drain(
    tmp_path: Path, database_url: str, clock: FrozenClock
) -> None:
    """An erasure that rewrites the queued spam digest after the sender read its row and
    before it read its bytes leaves the old bytes gone: the digest (now without her) must
    go out at the next drain, not wait for the sender's claim to run out."""
    spam = {"unsure_at": 0.0, "spam_at": 0.0, "digest_to": "postmaster@example.com"}
    app = agent_app(tmp_path, database_url, clock, spam={**spam, "digest_at": "07:00"})
    sent_dir = tmp_path / "sent"
    sender = OutboxSender(app.db, MaildirTransport(sent_dir), app.settings.outbound, clock, "n1")
    erased: list[int] = []

    def erase_before_the_bytes_are_read(
        _conn: Any, _cursor: Any, statement: str, *_args: Any
    ) -> None:
        if not erased and statement.lstrip().startswith("SELECT") and "FROM blobs" in statement:
            erased.append(cli(app, tmp_path, "privacy", "forget", ALICE, "--yes").exit_code)

    try:
        deliver(app, make_mail(subject=f"Cheap {SECRET_WORD}", message_id="s0@c.test"))
        deliver(
            app,
            make_mail(sender=f"Spammer <{SPAMMER}>", subject="Pills", message_id="x0@s.t"),
            mail_from=SPAMMER,
        )
        clock.advance(days=1)
        assert send_digest(app)
        event.listen(app.db.engine, "before_cursor_execute", erase_before_the_bytes_are_read)
        try:
            sender.drain()
        finally:
            event.remove(app.db.engine, "before_cursor_execute", erase_before_the_bytes_are_read)
        assert erased == [0]
        sender.drain()  # a minute later, say
        sent = [p.read_bytes() for p in sent_dir.rglob("*") if p.is_file()]
        assert len(sent) == 1, "the digest waits for the sender's own claim to run out"
        assert b"Pills" in sent[0] and SECRET_WORD.encode() not in sent[0]
    finally:
        app.db.dispose()


# -- her address as a reader sees it, not as the bytes spell it ----------------------
MUELLER = "müller@example.test"
SPAM = {"unsure_at": 0.0, "spam_at": 0.0, "digest_to": "postmaster@example.com"}


def _spam(headers: str, body: bytes, message_id: str, *, encoding: str = "7bit") -> bytes:
    """A spammer's mail (quarantined) that names her only where a reader decodes it."""
    return (
        f"From: Spammer <{SPAMMER}>\r\nTo: support@example.com\r\n{headers}"
        f"Subject: Fwd: invoice\r\nMessage-ID: <{message_id}>\r\n"
        "Date: Mon, 2 Mar 2026 08:00:00 +0000\r\nMIME-Version: 1.0\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: {encoding}\r\n\r\n"
    ).encode() + body


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


# Mail of a spammer (quarantined) naming one of them only where a reader decodes it.
ENCODED = {
    "base64-body": (
        ALICE,
        _spam(
            "",
            base64.encodebytes(
                f"---------- Forwarded message ---------\nFrom: Alice <{ALICE}>\n"
                "Please pay the attached invoice.\n".encode()
            ),
            "b64@spam.test",
            encoding="base64",
        ),
    ),
    "quoted-printable-soft-break": (
        ALICE,
        _spam(
            "",
            b"Forwarded from Alice <alice@custo=\r\nmer.test>, pay now.\r\n",
            "qp@spam.test",
            encoding="quoted-printable",
        ),
    ),
    "encoded-word-cc": (
        ALICE,
        _spam(f"Cc: =?utf-8?b?{_b64(ALICE)}?=\r\n", b"Pay.\r\n", "ew@spam.test"),
    ),
    "encoded-display-name": (
        ALICE,
        _spam(
            f"Cc: =?utf-8?b?{_b64(f'Alice <{ALICE}>')}?= <x2@spam.test>\r\n",
            b"Pay.\r\n",
            "dn@spam.test",
        ),
    ),
    "non-ascii-upper-case": (
        MUELLER,
        _spam("Cc: Jörg <MÜLLER@Example.test>\r\n", b"Pay.\r\n", "up@spam.test", encoding="8bit"),
    ),
}


def _readers_view(raw: bytes) -> str:
    """What a mail client shows of ``raw``: every header decoded, every part's text."""
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    shown = []
    for part in parsed.walk():
        shown += [str(value) for value in part.values()]
        if not part.is_multipart():
            payload = part.get_payload(decode=True)
            charset = part.get_content_charset() or "utf-8"
            shown.append(bytes(payload or b"").decode(charset, "replace"))
    return "\n".join(shown).lower()


def readable_in_blobs(app: App, address: str) -> list[str]:
    """The Message-IDs of the stored mail (quarantine, tickets, attachments) in which
    a reader finds ``address``."""
    with app.db.transaction() as session:
        blobs = session.scalars(select(Blob.data)).all()
    return sorted(
        str(email.message_from_bytes(bytes(data)).get("Message-ID", "?"))
        for data in blobs
        if address in _readers_view(bytes(data))
    )


def test_forget_erases_quarantined_mail_that_names_her_only_in_encoded_form(
    tmp_path: Path, database_url: str, clock: FrozenClock
) -> None:
    """A forward in base64, a quoted-printable line broken inside her address, an RFC 2047
    header, her address in another case beyond ASCII: a reader of the quarantined mail
    sees her address, so her erasure takes it; the spammer's other mail stays."""
    app = agent_app(tmp_path, database_url, clock, spam=SPAM)
    try:
        for _person, raw in ENCODED.values():
            deliver(app, raw, mail_from=SPAMMER)
        deliver(app, _spam("", b"Nobody named here.\r\n", "other@spam.test"), mail_from=SPAMMER)
        with app.db.transaction() as session:
            held = session.scalar(
                select(func.count()).where(Intake.state == IntakeState.QUARANTINED)
            )
        assert held == len(ENCODED) + 1

        for person in (ALICE, MUELLER):
            theirs = [name for name, (who, _raw) in ENCODED.items() if who == person]
            assert len(readable_in_blobs(app, person)) == len(theirs)  # the reader sees them

            result = cli(app, tmp_path, "privacy", "forget", person, "--yes")

            assert result.exit_code == 0, result.output
            assert readable_in_blobs(app, person) == [], theirs
            assert f"intake {len(theirs)}," in result.output
        assert rows_containing(app, "Nobody named here")
    finally:
        app.db.dispose()


def test_forget_reads_a_quarantined_mail_of_many_short_paragraphs_in_linear_time(
    tmp_path: Path, database_url: str, clock: FrozenClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mail naming base64 whose text is many one-word paragraphs (a list, a spammer's
    filler): each looked like a base64 body, and the search for the header before it
    went back to the mail's start each time. 240 KB took 5-8 s; 5 MB, hours, and her
    erasure never finished. She is named after them, in a base64 part. A guard against
    that hang, not a speed test: 480 KB takes about 0.2 s now and 20-30 s the old way,
    so the bound sits far from both."""
    app = agent_app(tmp_path, database_url, clock, spam=SPAM)
    try:
        forward = f"--B\r\nContent-Transfer-Encoding: base64\r\n\r\n{_b64(f'To: {ALICE}')}\r\n"
        body = b"\r\n\r\nok\r\n" * 60_000 + forward.encode()
        deliver(app, _spam("", body, "filler@spam.test", encoding="base64"), mail_from=SPAMMER)
        reading: list[float] = []
        original = Person.mail_names

        def timed(self: Person, data: bytes) -> bool:
            start = time.perf_counter()
            try:
                return original(self, data)
            finally:
                reading.append(time.perf_counter() - start)

        monkeypatch.setattr(Person, "mail_names", timed)

        result = cli(app, tmp_path, "privacy", "forget", ALICE, "--yes")

        assert result.exit_code == 0, result.output
        assert "intake 1," in result.output
        assert reading and sum(reading) < 8.0, f"{sum(reading):.1f} s to read the mail"
    finally:
        app.db.dispose()
