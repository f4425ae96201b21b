"""SLA after a merge or a resolution without a reply: what is counted late, and
that a breach already sent is not sent again."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from sqlalchemy import select

from maildesk.db.figures import read_figures
from maildesk.db.models import Outbox, SlaTargetRow, Ticket, TicketStatus
from maildesk.sla.overdue import is_overdue, overdue
from maildesk.tickets import merge_tickets
from tests.conftest import FrozenClock
from tests.sla.slahelp import (
    agent_reply,
    berlin,
    customer_message,
    new_ticket,
    set_status,
    sla_app,
    sweeper,
)


def test_a_merged_away_ticket_is_not_counted_past_due(
    tmp_path: Path, database_url: str, clock: FrozenClock
) -> None:
    app = sla_app(tmp_path, database_url, clock)
    kept = new_ticket(app, clock, berlin(2026, 3, 9, 10, 0), subject="Printer")
    gone = new_ticket(app, clock, berlin(2026, 3, 9, 10, 5), subject="Printer again")
    clock.now = berlin(2026, 3, 9, 15, 0)  # both past their 4 h first response
    sweeper(app).run()
    with app.db.engine.connect() as conn:
        assert read_figures(conn, clock.now).tickets_past_sla_due == 2
    agent_reply(app, kept.id, berlin(2026, 3, 9, 15, 1))
    clock.now = berlin(2026, 3, 9, 15, 2)
    with app.db.transaction() as session:
        merge_tickets(
            session,
            session.get_one(Ticket, gone.id),
            session.get_one(Ticket, kept.id),
            clock.now,
            reason="test",
        )
    clock.now += timedelta(minutes=1)
    sweeper(app).run()
    with app.db.engine.connect() as conn:
        assert read_figures(conn, clock.now).tickets_past_sla_due == 0
    with app.db.transaction() as session:
        live = session.scalars(
            select(SlaTargetRow.status).where(SlaTargetRow.ticket_id == gone.id)
        ).all()
    assert all(status not in ("running", "paused") for status in live)


NEXT_RESPONSE_SLA = {
    "default_policy": "standard",
    "policies": [
        {
            "name": "standard",
            "warning_share": None,
            "first_response": {"minutes": 60, "calendar": "office"},
            "next_response": {"minutes": 60, "calendar": "office"},
            "breach": {"notify": ["assignee"], "targets": ["next_response"]},
        }
    ],
}


def test_merging_a_ticket_in_does_not_breach_an_exchange_a_second_time(
    tmp_path: Path, database_url: str, clock: FrozenClock
) -> None:
    app = sla_app(tmp_path, database_url, clock, NEXT_RESPONSE_SLA)
    kept = new_ticket(app, clock, berlin(2026, 3, 9, 10, 0), subject="Printer")
    other = new_ticket(app, clock, berlin(2026, 3, 9, 10, 20), subject="Printer again")
    with app.db.transaction() as session:
        for t in (kept, other):
            session.get_one(Ticket, t.id).assignee = "bob"
    agent_reply(app, kept.id, berlin(2026, 3, 9, 10, 10))
    agent_reply(app, other.id, berlin(2026, 3, 9, 10, 30))
    # The customer answers on the kept ticket at 11:00: due 12:00, breached, fired once.
    customer_message(app, kept.id, berlin(2026, 3, 9, 11, 0))
    clock.now = berlin(2026, 3, 9, 12, 5)
    assert sweeper(app).run().fired == 1
    # The other ticket (a customer mail and a reply after the kept one began) is merged in.
    with app.db.transaction() as session:
        assert merge_tickets(
            session,
            session.get_one(Ticket, other.id),
            session.get_one(Ticket, kept.id),
            clock.now,
            reason="test",
        )
    clock.now = berlin(2026, 3, 9, 12, 10)
    # The exchange of 11:00 is still the one unanswered, and its breach was sent.
    assert sweeper(app).run().fired == 0
    with app.db.transaction() as session:
        breaches = session.scalars(
            select(Outbox.purpose).where(Outbox.purpose == "sla_breach")
        ).all()
    assert len(breaches) == 1


def test_a_ticket_resolved_without_a_reply_is_not_listed_late(
    tmp_path: Path, database_url: str, clock: FrozenClock
) -> None:
    app = sla_app(tmp_path, database_url, clock)
    thanks = new_ticket(app, clock, berlin(2026, 3, 9, 10, 0), subject="Thanks, works now")
    clock.now = berlin(2026, 3, 9, 15, 0)  # past its 4 h first response
    sweeper(app).run()
    with app.db.transaction() as session:
        assert list(overdue(session, clock.now)) == [thanks.id]
    set_status(app, thanks.id, TicketStatus.RESOLVED)
    clock.now = berlin(2026, 3, 9, 15, 5)
    sweeper(app).run()
    with app.db.transaction() as session:
        # Nothing is owed on a resolved ticket: the report's overdue list leaves it out too.
        assert overdue(session, clock.now) == {}
        assert session.scalars(select(Ticket.id).where(is_overdue(clock.now))).all() == []
    with app.db.engine.connect() as conn:
        assert read_figures(conn, clock.now).tickets_past_sla_due == 0
