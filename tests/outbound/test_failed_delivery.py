"""A mail that is never delivered is said so on its ticket, not only in a log line.

An agent who answered (or a customer's acknowledgement) and whose mail the relay
refused for good, or deferred until the outbox gave up, otherwise sees a ticket
that looks answered: ``tickets show --json`` listed the answer and nothing else.
"""

from __future__ import annotations

import pytest
from sqlalchemy import select

from maildesk.app import App
from maildesk.db import queries
from maildesk.db.models import Outbox, OutboxState
from tests.conftest import FrozenClock
from tests.daemon_harness import RelaySink
from tests.mailfactory import deliver, make_mail
from tests.outbound.test_bounces import drain_to


def failures(app: App) -> list[str]:
    with app.db.transaction() as session:
        ticket = queries.ticket_by_number(session, 1)
        assert ticket is not None
        events = queries.events_for_ticket(session, ticket.id)
        return [e.reason for e in events if e.kind == "outbound_failed"]


@pytest.mark.parametrize("reply", ["550 5.7.1 relaying denied", "451 4.3.0 try again later"])
def test_a_mail_the_relay_never_takes_is_recorded_on_its_ticket(
    app: App, relay: RelaySink, clock: FrozenClock, reply: str
) -> None:
    deliver(app, make_mail(message_id="q@customer.test"))
    relay.reply = reply
    hours = app.settings.outbound.give_up_after_hours
    for _ in range(3):
        drain_to(app, relay)
        clock.advance(hours=hours / 2 + 1)
    with app.db.transaction() as session:
        [row] = session.scalars(select(Outbox)).all()
        assert row.state is OutboxState.FAILED
    [reason] = failures(app)
    assert "alice@customer.test" in reason and reply.split()[0] in reason
