"""Ticket timelines rebuilt from stored messages and status events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import select

from maildesk.db.models import MessageKind, Ticket, TicketStatus
from maildesk.sla.facts import StatusFact, timeline
from maildesk.sla.policy import (
    AgentReply,
    CustomerMessage,
    StatusChanged,
    TicketCreated,
    TicketReopened,
    TicketResolved,
)
from maildesk.tickets import change_status
from tests.conftest import FrozenClock
from tests.mailfactory import deliver, make_mail, reply_to
from tests.sla.slahelp import berlin, sla_app, sweeper, target_row

T0 = datetime(2026, 3, 2, 10, tzinfo=UTC)


def at(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


def test_timeline_orders_messages_and_status_changes_and_ignores_notes() -> None:
    events = timeline(
        T0,
        [
            (at(0), MessageKind.CUSTOMER),
            (at(5), MessageKind.INTERNAL_NOTE),
            (at(10), MessageKind.AGENT_REPLY),
            (at(50), MessageKind.CUSTOMER),
        ],
        [
            StatusFact(1, at(20), "status", "new -> pending by bob", {"to": "pending"}),
            # The pipeline's own event names the new status only in its reason.
            StatusFact(2, at(50), "status", "customer replied to a pending ticket: open", {}),
            StatusFact(3, at(60), "status", "open -> resolved by bob", {"to": "resolved"}),
            StatusFact(4, at(70), "status", "resolved -> closed by x", {"to": "closed"}),
            StatusFact(5, at(80), "reopened", "customer replied within the window", {}),
        ],
    )
    assert events == [
        TicketCreated(T0),
        CustomerMessage(at(0)),
        AgentReply(at(10)),
        StatusChanged(at(20), "pending"),
        CustomerMessage(at(50)),
        StatusChanged(at(50), "open"),
        TicketResolved(at(60)),
        TicketReopened(at(80)),
        StatusChanged(at(80), "open"),
    ]


def test_a_customer_reply_to_a_pending_ticket_restarts_its_clock(
    tmp_path: Path, database_url: str, clock: FrozenClock
) -> None:
    app = sla_app(tmp_path, database_url, clock)
    first = make_mail(subject="Broken")
    clock.now = berlin(2026, 3, 9, 10, 0)
    deliver(app, first)
    clock.now = berlin(2026, 3, 9, 11, 0)
    with app.db.transaction() as session:
        t = session.scalars(select(Ticket)).one()
        change_status(session, t, TicketStatus.PENDING, clock.now, None, actor="bob")
        pending_id = t.id
    sweeper(app).run()
    assert target_row(app, pending_id, "resolution").status == "paused"
    clock.now = berlin(2026, 3, 9, 15, 0)
    deliver(app, reply_to(first, body="Here is the log you asked for.\n"))
    sweeper(app).run()
    row = target_row(app, pending_id, "resolution")
    # 1 h used before the pause; 23 h left from Monday 15:00: 4 h Mon, 9 h Tue, 9 h Wed, 1 h Thu.
    assert (row.status, row.due_at) == ("running", berlin(2026, 3, 12, 11, 0))
