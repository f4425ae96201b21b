"""Which tickets are late now, from the due times the sweep stored."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from maildesk.db.models import SlaTargetRow

_LIVE = ("running", "paused")


@dataclass(frozen=True, slots=True)
class Late:
    target: str
    due_at: datetime

    def as_json(self) -> dict[str, str]:
        return {"target": self.target, "due_at": self.due_at.isoformat()}

    def describe(self, now: datetime) -> str:
        minutes = int((now - self.due_at).total_seconds() // 60)
        hours, minutes = divmod(minutes, 60)
        what = self.target.replace("_", " ")
        return f"{what} late since {self.due_at:%Y-%m-%d %H:%M} UTC ({hours}h{minutes:02d})"


def overdue(session: Session, now: datetime) -> dict[int, Late]:
    """Ticket id -> its earliest missed, still unmet target."""
    rows = session.execute(
        select(SlaTargetRow.ticket_id, SlaTargetRow.target, SlaTargetRow.due_at)
        .where(SlaTargetRow.status.in_(_LIVE), SlaTargetRow.due_at <= now)
        .order_by(SlaTargetRow.due_at)
    )
    found: dict[int, Late] = {}
    for ticket_id, target, due_at in rows:
        if due_at is not None:
            found.setdefault(ticket_id, Late(target, due_at))
    return found
