"""Two nodes draining one outbox never send a mail twice, however slow the relay.

A claim older than the claim timeout counts as abandoned, so another node may
take the row. A node that is still delivering (a large mail, a slow relay)
keeps its claim fresh; a row that waited in its batch and was taken over
meanwhile is left to the node that took it.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from maildesk.app import App
from maildesk.config import OutboundSettings
from maildesk.db.models import Outbox, OutboxState
from maildesk.intake.store import put_blob
from maildesk.outbound.sender import DrainResult, OutboxSender, SmtpTransport
from tests.conftest import FrozenClock
from tests.daemon_harness import RelaySink
from tests.mailfactory import make_mail

CLAIM_TIMEOUT = timedelta(seconds=1)  # renewed every 0.25 s of real time while delivering


@dataclass
class HoldingRelay(RelaySink):
    """A real relay that leaves the DATA of a mail with "slow" in its subject
    unanswered until the test lets it go: a delivery that takes as long as
    the test likes."""

    holding: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if b"Subject: slow" in envelope.original_content:
            self.holding.set()
            while not self.release.is_set():
                await asyncio.sleep(0.05)
        return await super().handle_DATA(server, session, envelope)


@pytest.fixture
def holding_relay() -> Any:
    relay = HoldingRelay().start()
    yield relay
    relay.release.set()
    relay.stop()


def queue(app: App, subject: str) -> str:
    message_id = f"{subject.replace(' ', '-')}@example.com"
    raw = make_mail(
        sender="support@example.com",
        to="alice@customer.test",
        subject=subject,
        message_id=message_id,
    ).replace(b"\n", b"\r\n")
    now = app.clock()
    with app.db.transaction() as session:
        session.add(
            Outbox(
                created_at=now,
                purpose="ack",
                message_id=message_id,
                envelope_from="support@example.com",
                recipients=["alice@customer.test"],
                recipient_key="alice@customer.test",
                raw_sha256=put_blob(session, raw),
                next_attempt_at=now,
            )
        )
    return message_id


def node(app: App, relay: RelaySink, name: str) -> OutboxSender:
    settings = OutboundSettings(transport="smtp", relay_port=relay.port)
    return OutboxSender(
        app.db,
        SmtpTransport(settings, password=""),
        settings,
        app.clock,
        name,
        claim_timeout=CLAIM_TIMEOUT,
    )


def received_ids(relay: RelaySink) -> list[str]:
    return sorted(str(mail.message["Message-ID"]).strip("<>") for mail in relay.received)


def test_a_slow_delivery_keeps_its_claim_and_rows_taken_over_are_not_sent_twice(
    app: App, holding_relay: HoldingRelay, clock: FrozenClock
) -> None:
    slow = queue(app, "slow large mail")
    waiting = [queue(app, "first waiting"), queue(app, "second waiting")]
    first, second = node(app, holding_relay, "node-a"), node(app, holding_relay, "node-b")

    results: list[DrainResult] = []
    draining = threading.Thread(target=lambda: results.append(first.drain()))
    draining.start()  # claims all three, and is held delivering the first
    assert holding_relay.holding.wait(10)

    # Long past the claim timeout by the database's clock, while node-a still delivers.
    clock.advance(minutes=30)
    threading.Event().wait(0.6)  # node-a's renewal comes within 0.25 s
    taken = second.drain()
    assert taken.sent == 2  # the two that waited behind the slow one, not the slow one itself

    holding_relay.release.set()
    draining.join(timeout=20)
    assert not draining.is_alive()
    assert [r.sent for r in results] == [1]  # the slow one; the other two were left to node-b

    assert received_ids(holding_relay) == sorted([slow, *waiting])  # each exactly once
    with app.db.transaction() as session:
        rows = session.scalars(select(Outbox)).all()
        assert {row.state for row in rows} == {OutboxState.SENT}
        assert all(row.attempts == 1 and row.claimed_by is None for row in rows)
