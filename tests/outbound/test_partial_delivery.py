"""A relay that takes a mail for some recipients and says "later" for others.

The mail counted as sent and the others never got it. Now the row stays
queued for just those recipients, and the same mail (same Message-ID) goes
to them on the retry.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy import select

from maildesk.app import App
from maildesk.config import OutboundSettings
from maildesk.db.models import Event, Outbox, OutboxState, Suppression
from maildesk.outbound.sender import OutboxSender, SmtpTransport
from tests.conftest import FrozenClock
from tests.daemon_harness import RelaySink
from tests.outbound.test_outbox_claims import queue


@dataclass
class GreylistingRelay(RelaySink):
    """Says 451 to the first RCPT for each address in ``later``, and 550 to ``never``."""

    later: set[str] = field(default_factory=set)
    never: set[str] = field(default_factory=set)

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if address in self.never:
            return "550 5.1.1 no such user"
        if address in self.later:
            self.later.discard(address)
            return "451 4.7.1 greylisted, try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"


@pytest.fixture
def greylisting_relay() -> Iterator[GreylistingRelay]:
    relay = GreylistingRelay().start()
    yield relay
    relay.stop()


def test_recipients_the_relay_defers_get_the_same_mail_on_the_retry(
    app: App, greylisting_relay: GreylistingRelay, clock: FrozenClock
) -> None:
    message_id = queue(app, "answer to all")
    with app.db.transaction() as session:
        [row] = session.scalars(select(Outbox)).all()
        row.recipients = ["alice@customer.test", "carol@customer.test", "gone@customer.test"]
    greylisting_relay.later = {"carol@customer.test"}
    greylisting_relay.never = {"gone@customer.test"}
    sender = _smtp_sender(app, greylisting_relay.port)

    first = sender.drain()
    assert (first.sent, first.retried) == (0, 1)
    with app.db.transaction() as session:
        [row] = session.scalars(select(Outbox)).all()
        assert row.state is OutboxState.QUEUED
        assert row.recipients == ["carol@customer.test"]  # alice has it; gone never will
        assert "451" in (row.last_error or "") and "550" in (row.last_error or "")

    clock.advance(hours=1)
    assert sender.drain().sent == 1
    received = [
        (mail.rcpt_tos, str(mail.message["Message-ID"])) for mail in greylisting_relay.received
    ]
    assert received == [
        (["alice@customer.test"], f"<{message_id}>"),
        (["carol@customer.test"], f"<{message_id}>"),
    ]


def test_a_recipient_refused_for_good_beside_one_deferred_is_recorded_and_suppressed_at_once(
    app: App, greylisting_relay: GreylistingRelay, clock: FrozenClock
) -> None:
    """451 for carol and 550 5.1.1 for gone@ in one delivery: carol is owed the mail,
    gone@ never gets it, and that is on the ticket (and gone@ suppressed) now, not
    lost when the retry to carol overwrites the row's last error."""
    sender = _carol_deferred_and_gone_refused(
        app, greylisting_relay, ["alice@customer.test", "carol@customer.test", "gone@customer.test"]
    )

    assert sender.drain().retried == 1
    with app.db.transaction() as session:
        [event] = session.scalars(select(Event).where(Event.kind == "outbound_failed")).all()
        assert event.data["recipients"] == ["gone@customer.test"]
        assert "550" in event.reason
    assert set(suppressed(app)) == {"gone@customer.test"}

    clock.advance(hours=1)
    assert sender.drain().sent == 1
    with app.db.transaction() as session:
        [row] = session.scalars(select(Outbox)).all()
        assert row.state is OutboxState.SENT
        failed = session.scalars(select(Event).where(Event.kind == "outbound_failed")).all()
        assert len(failed) == 1


def test_a_dead_recipient_beside_a_deferred_one_with_nobody_taken_is_recorded_at_once(
    app: App, greylisting_relay: GreylistingRelay, clock: FrozenClock
) -> None:
    """451 for carol, 550 5.1.1 for gone@, nobody taken: carol is tried again alone;
    gone@ is on the ticket and suppressed now, not retried until the give-up."""
    sender = _carol_deferred_and_gone_refused(
        app, greylisting_relay, ["carol@customer.test", "gone@customer.test"]
    )

    assert sender.drain().retried == 1
    with app.db.transaction() as session:
        [row] = session.scalars(select(Outbox)).all()
        assert row.recipients == ["carol@customer.test"]
        [event] = session.scalars(select(Event).where(Event.kind == "outbound_failed")).all()
        assert event.data["recipients"] == ["gone@customer.test"]
    assert set(suppressed(app)) == {"gone@customer.test"}
    clock.advance(hours=1)
    assert sender.drain().sent == 1
    assert [m.rcpt_tos for m in greylisting_relay.received] == [["carol@customer.test"]]


def _carol_deferred_and_gone_refused(
    app: App, relay: GreylistingRelay, recipients: list[str]
) -> OutboxSender:
    """One queued mail to ``recipients``; the relay says 451 for carol and 550 5.1.1 for
    gone@ (and takes the rest)."""
    queue(app, "an answer")
    with app.db.transaction() as session:
        [row] = session.scalars(select(Outbox)).all()
        row.recipients = recipients
    relay.later = {"carol@customer.test"}
    relay.never = {"gone@customer.test"}
    return _smtp_sender(app, relay.port)


def _smtp_sender(app: App, port: int) -> OutboxSender:
    settings = OutboundSettings(transport="smtp", relay_port=port)
    return OutboxSender(app.db, SmtpTransport(settings, password=""), settings, app.clock, "node-a")


def _to_alice_and_a_dead_address(app: App, relay: GreylistingRelay) -> OutboxSender:
    """One queued answer to alice and gone@, which the relay refuses with 550 5.1.1."""
    queue(app, "answer to all")
    with app.db.transaction() as session:
        [row] = session.scalars(select(Outbox)).all()
        row.recipients = ["alice@customer.test", "gone@customer.test"]
    relay.never = {"gone@customer.test"}
    return _smtp_sender(app, relay.port)


def test_recipients_the_relay_refuses_for_good_are_recorded_when_the_others_get_it(
    app: App, greylisting_relay: GreylistingRelay
) -> None:
    """The mail went, so it counts as sent; but who never got it, and why, is on record."""
    sender = _to_alice_and_a_dead_address(app, greylisting_relay)

    assert sender.drain().sent == 1
    assert [mail.rcpt_tos for mail in greylisting_relay.received] == [["alice@customer.test"]]
    with app.db.transaction() as session:
        [row] = session.scalars(select(Outbox)).all()
        assert row.state is OutboxState.SENT
        assert "gone@customer.test" in (row.last_error or "") and "550" in (row.last_error or "")
        [event] = session.scalars(select(Event).where(Event.kind == "outbound_failed")).all()
        assert event.data["recipients"] == ["gone@customer.test"]


def suppressed(app: App) -> dict[str, str]:
    with app.db.transaction() as session:
        return {s.address: s.reason for s in session.scalars(select(Suppression))}


def test_an_address_our_relay_says_does_not_exist_is_suppressed_and_not_mailed_again(
    app: App, greylisting_relay: GreylistingRelay
) -> None:
    """550 5.1.1 from our own relay is a hard bounce no stranger could forge."""
    sender = _to_alice_and_a_dead_address(app, greylisting_relay)
    assert sender.drain().sent == 1
    assert set(suppressed(app)) == {"gone@customer.test"}

    # The next mail to both goes to alice alone.
    queue(app, "second answer")
    with app.db.transaction() as session:
        row = session.scalars(select(Outbox).order_by(Outbox.id.desc())).first()
        assert row is not None
        row.recipients = ["alice@customer.test", "gone@customer.test"]
    assert sender.drain().sent == 1
    assert [m.rcpt_tos for m in greylisting_relay.received][-1] == ["alice@customer.test"]


@dataclass
class MisconfiguredRelay(RelaySink):
    """Refuses every recipient for a reason that is ours, not the address's."""

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        return "554 5.7.1 relay access denied"


def test_a_relay_refusing_us_for_its_own_reasons_suppresses_nobody(app: App) -> None:
    relay = MisconfiguredRelay().start()
    try:
        queue(app, "answer")
        assert _smtp_sender(app, relay.port).drain().failed == 1
    finally:
        relay.stop()
    assert suppressed(app) == {}


@dataclass
class CountingDeferringRelay(RelaySink):
    """Says 451 to every RCPT while ``defer`` is set, and counts the attempts."""

    defer: bool = True
    attempts: int = 0

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        self.attempts += 1
        if self.defer:
            return "451 4.3.0 try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"


def test_a_temporary_failure_is_retried_after_a_wait_that_grows(
    app: App, clock: FrozenClock
) -> None:
    """MAIL-RULES §4: retry with backoff. A relay saying "later" is not asked again at
    once (that would hammer it each drain), and each wait is longer than the last."""
    relay = CountingDeferringRelay().start()
    try:
        message_id = queue(app, "deferred answer")
        settings = OutboundSettings(
            transport="smtp", relay_port=relay.port, retry_base_seconds=30, retry_max_seconds=3600
        )
        sender = OutboxSender(
            app.db, SmtpTransport(settings, password=""), settings, app.clock, "node-a"
        )
        waits = []
        for _ in range(4):
            before = relay.attempts
            assert sender.drain().retried == 1
            assert relay.attempts == before + 1
            with app.db.transaction() as session:
                [row] = session.scalars(select(Outbox)).all()
                assert row.state is OutboxState.QUEUED and "451" in (row.last_error or "")
                wait = row.next_attempt_at - clock()
            waits.append(wait.total_seconds())
            clock.advance(seconds=wait.total_seconds() - 1)
            sender.drain()  # a second early: the relay is left alone
            assert relay.attempts == before + 1
            clock.advance(seconds=1)
        assert waits == [30, 60, 120, 240]
        relay.defer = False
        assert sender.drain().sent == 1
        assert [str(mail.message["Message-ID"]) for mail in relay.received] == [f"<{message_id}>"]
    finally:
        relay.stop()
