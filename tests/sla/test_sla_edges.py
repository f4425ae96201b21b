"""SLA edge cases: breaches that show only when the office opens again.

Calendar: Mon–Fri 10:00–19:00 Europe/Berlin (see slahelp). Fri 6 March 2026.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from sqlalchemy import select

from maildesk.db.models import SlaEscalation
from maildesk.sla.calendar import BusinessCalendar, CalendarConfig
from tests.conftest import FrozenClock
from tests.sla.slahelp import OFFICE, berlin, new_ticket, sla_app, sweeper, target_row

CAL = BusinessCalendar(CalendarConfig.model_validate(OFFICE))


def test_breach_due_at_closing_time_fired_on_opening_is_not_late(
    tmp_path: Path, database_url: str, clock: FrozenClock
) -> None:
    app = sla_app(tmp_path, database_url, clock)
    # 4 business hours from Friday 15:00: due exactly at closing time.
    ticket = new_ticket(app, clock, berlin(2026, 3, 6, 15, 0))
    due = CAL.add_business_minutes(berlin(2026, 3, 6, 15, 0), 240)
    assert due == berlin(2026, 3, 6, 19, 0)
    # The daemon runs all weekend, sweeping every minute around the edges.
    fired = []
    for at in (
        berlin(2026, 3, 6, 18, 13),  # warning (3 h 12 used at 18:12)
        due,
        due + timedelta(minutes=1),
        berlin(2026, 3, 7, 12, 0),
        berlin(2026, 3, 9, 9, 59),
        CAL.next_open(due) + timedelta(minutes=1),  # the breach shows now
        CAL.next_open(due) + timedelta(minutes=2),
    ):
        clock.now = at
        fired.append(sweeper(app).run().fired)
    assert fired == [1, 0, 0, 0, 0, 1, 0]
    assert target_row(app, ticket.id, "first_response").breached
    with app.db.transaction() as session:
        ledger = {e.level: (e.due_at, e.late) for e in session.scalars(select(SlaEscalation))}
    # Fired a minute after it could first fire: on time, not a catch-up after downtime.
    assert ledger == {
        "warning": (berlin(2026, 3, 6, 18, 12), False),
        "breach": (due, False),
    }
