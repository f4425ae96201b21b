"""A notice held for an agent's next shift is not sent once the ticket has moved on.

A customer writes at 22:00; Bob, whose shift starts at 09:00, gets his notice
then. If Carol answered the customer overnight, or the ticket was resolved or
merged away, Bob's "new ticket, status new" would be stale and invite a second
answer: it is dropped, and the ticket says why. A notice nobody overtook goes
out at the start of his shift as before.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from maildesk.app import App
from maildesk.config import OutboundSettings
from maildesk.db.models import Outbox, OutboxState, Ticket
from maildesk.outbound.sender import OutboxSender, SmtpTransport
from maildesk.tickets import merge_tickets
from tests.agents.agenthelp import (
    client_reply,
    events_of_kind,
    reply_address,
    ticket_number,
    to,
)
from tests.conftest import FrozenClock, make_settings
from tests.daemon_harness import RelaySink
from tests.mailfactory import deliver, make_mail

ALICE = "alice@customer.test"
BOB = "bob@agents.test"
CAROL = "carol@agents.test"
FIRST = "first@customer.test"
MONDAY_EVENING = datetime(2026, 3, 2, 22, 0, tzinfo=UTC)
TUESDAY_MORNING = datetime(2026, 3, 3, 9, 0, tzinfo=UTC)

AGENTS = [
    {  # L1 is Bob alone, and he works days
        "name": "bob",
        "display_name": "Bob Agent",
        "addresses": [BOB],
        "groups": ["L1"],
        "hours": {"mon": "09:00-17:00", "tue": "09:00-17:00"},
    },
    {"name": "carol", "display_name": "Carol Agent", "addresses": [CAROL], "groups": ["L2"]},
]


def _app(tmp_path: Path, database_url: str, clock: FrozenClock) -> App:
    rules = tmp_path / "rules"
    rules.mkdir(exist_ok=True)
    (rules / "10-watch.toml").write_text(  # Carol, on call, follows printer tickets
        '[[rule]]\nname = "printers"\nwhen = { subject_regex = "printer" }\n'
        'then = { watchers = ["carol"] }\n'
    )
    settings = make_settings(
        tmp_path,
        database_url,
        agents=AGENTS,
        groups=[{"name": "L1"}, {"name": "L2"}],
        routing={"default_group": "L1", "rules_dir": str(rules)},
    )
    return App.build(settings, clock=clock)


def _drain(app: App, relay: RelaySink) -> None:
    """The outbox sender, as the daemon runs it, to a real SMTP relay."""
    settings = OutboundSettings(transport="smtp", relay_port=relay.port)
    OutboxSender(app.db, SmtpTransport(settings, password=""), settings, app.clock, "n1").drain()


def _received_by(relay: RelaySink, address: str) -> list[bytes]:
    return [mail.raw for mail in relay.received if address in mail.rcpt_tos]


def _bobs_notice(app: App) -> Outbox:
    """Bob's notice of ticket #1."""
    with app.db.transaction() as session:
        row = session.scalars(
            select(Outbox)
            .join(Ticket, Ticket.id == Outbox.ticket_id)
            .where(Ticket.number == 1, Outbox.purpose == "new_ticket", Outbox.recipient_key == BOB)
        ).one()
        session.expunge(row)
        return row


def _bob_got_it(relay: RelaySink, row: Outbox) -> bool:
    return any(row.message_id.encode() in raw for raw in _received_by(relay, BOB))


def _a_mail_at_night_for_bob(app: App, relay: RelaySink, clock: FrozenClock) -> None:
    clock.now = MONDAY_EVENING
    deliver(app, make_mail(message_id=FIRST))
    held = _bobs_notice(app)
    assert held.next_attempt_at == TUESDAY_MORNING  # held for his shift
    _drain(app, relay)  # the customer's acknowledgement and Carol's notice go now
    assert _received_by(relay, ALICE) and _received_by(relay, CAROL)
    assert not _received_by(relay, BOB)


def _carol_writes(app: App, clock: FrozenClock, body: str) -> None:
    clock.now = MONDAY_EVENING.replace(hour=23)
    [notice] = to(app, CAROL, "new_ticket")
    raw = client_reply(notice, body, sender="Carol Agent <carol@agents.test>")
    deliver(app, raw, rcpt=(reply_address(notice),), mail_from=CAROL)


def _merge_into_a_new_ticket(app: App, clock: FrozenClock) -> None:
    clock.now = MONDAY_EVENING.replace(hour=23)
    deliver(app, make_mail(message_id="second@customer.test", subject="Still no printing"))
    with app.db.transaction() as session:
        first, second = session.scalars(select(Ticket).order_by(Ticket.number)).all()
        assert merge_tickets(session, first, second, clock(), reason="same printer")


@pytest.mark.parametrize(
    ("meanwhile", "why"),
    [
        ("answered", "meanwhile Carol Agent answered: not sent"),
        ("answered and resolved", "meanwhile Carol Agent answered and it was resolved: not sent"),
        ("resolved", "meanwhile it was resolved: not sent"),
        ("merged", "meanwhile it was merged into #2: not sent"),
    ],
)
def test_a_held_notice_the_ticket_overtook_overnight_is_not_sent_at_the_shift_start(
    tmp_path: Path,
    database_url: str,
    clock: FrozenClock,
    relay: RelaySink,
    meanwhile: str,
    why: str,
) -> None:
    app = _app(tmp_path, database_url, clock)
    try:
        _a_mail_at_night_for_bob(app, relay, clock)
        if meanwhile == "answered":
            _carol_writes(app, clock, "Hello Alice,\n\nunplug it and plug it in again.\n")
        elif meanwhile == "answered and resolved":
            _carol_writes(app, clock, "#status resolved\n\nHello Alice,\n\nunplug it.\n")
        elif meanwhile == "resolved":  # a command alone: no answer to the customer
            _carol_writes(app, clock, "#status resolved\n")
        else:
            _merge_into_a_new_ticket(app, clock)
        _drain(app, relay)
        if meanwhile.startswith("answered"):  # Alice has Carol's answer
            assert any(b"unplug it" in raw for raw in _received_by(relay, ALICE))

        clock.now = TUESDAY_MORNING
        _drain(app, relay)

        row = _bobs_notice(app)
        assert not _bob_got_it(relay, row)  # no stale "New ticket #1 ... status new"
        assert row.state is OutboxState.DROPPED
        assert row.sent_at is None
        assert row.last_error is not None and row.last_error.endswith(why)
        [event] = events_of_kind(app, "notice_dropped")
        assert event.ticket_id == row.ticket_id
        assert event.reason == (
            f"new_ticket notice held for {BOB} until 2026-03-03 09:00 UTC; {why}"
        )
        with app.db.transaction() as session:  # nothing left behind in the queue
            assert not session.scalars(
                select(Outbox.id).where(Outbox.state == OutboxState.QUEUED)
            ).all()
    finally:
        app.db.dispose()


def test_a_held_notice_for_a_ticket_nobody_touched_goes_out_at_the_shift_start(
    tmp_path: Path, database_url: str, clock: FrozenClock, relay: RelaySink
) -> None:
    app = _app(tmp_path, database_url, clock)
    try:
        _a_mail_at_night_for_bob(app, relay, clock)
        clock.now = MONDAY_EVENING.replace(hour=23, minute=30)
        _drain(app, relay)
        assert not _received_by(relay, BOB)  # still held

        clock.now = TUESDAY_MORNING
        _drain(app, relay)

        [raw] = _received_by(relay, BOB)
        assert b"my printer is on fire" in raw
        row = _bobs_notice(app)
        assert _bob_got_it(relay, row)
        assert row.state is OutboxState.SENT
        assert row.sent_at == TUESDAY_MORNING
        assert not events_of_kind(app, "notice_dropped")
        assert ticket_number(app).status == "new"
    finally:
        app.db.dispose()


def test_a_notice_that_was_not_held_is_sent_whatever_happened_since(
    tmp_path: Path, database_url: str, clock: FrozenClock, relay: RelaySink
) -> None:
    """Queued for now (Bob on shift) but sent late, say after a relay outage: still sent."""
    app = _app(tmp_path, database_url, clock)
    try:
        clock.now = datetime(2026, 3, 2, 16, 0, tzinfo=UTC)  # bob is at work
        deliver(app, make_mail(message_id=FIRST))
        assert _bobs_notice(app).next_attempt_at == clock()
        _carol_writes(app, clock, "#status resolved\n\nHello Alice,\n\nunplug it.\n")

        _drain(app, relay)

        row = _bobs_notice(app)
        assert _bob_got_it(relay, row)
        assert row.state is OutboxState.SENT
        assert not events_of_kind(app, "notice_dropped")
    finally:
        app.db.dispose()
