"""Which tickets are late now, from the due times the sweep stored."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, exists, select
from sqlalchemy.orm import Session

from maildesk.db.models import SLA_LIVE_STATUSES, SlaTargetRow, Ticket
from maildesk.db.queries import OPEN_STATUSES


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


def _late_at(now: datetime) -> ColumnElement[bool]:
    # Spelled as ix_sla_targets_live_due's predicate, so the planner uses it.
    return SlaTargetRow.status.in_(SLA_LIVE_STATUSES) & (SlaTargetRow.due_at <= now)


def is_overdue(now: datetime) -> ColumnElement[bool]:
    """A condition on tickets: still open, and one of its targets is past due and unmet.

    A resolved ticket owes nothing: a first response it never got stays a paused
    target (it runs again if the ticket is reopened), but is no one's work now.
    """
    return Ticket.status.in_(OPEN_STATUSES) & exists().where(
        SlaTargetRow.ticket_id == Ticket.id, _late_at(now)
    )


def overdue(
    session: Session, now: datetime, ticket_ids: Collection[int] | None = None
) -> dict[int, Late]:
    """Open ticket id -> its earliest missed, still unmet target (of ``ticket_ids`` when given)."""
    stmt = (
        select(SlaTargetRow.ticket_id, SlaTargetRow.target, SlaTargetRow.due_at)
        .join(Ticket, Ticket.id == SlaTargetRow.ticket_id)
        .where(_late_at(now), Ticket.status.in_(OPEN_STATUSES))
        .order_by(SlaTargetRow.due_at)
    )
    if ticket_ids is not None:
        if not ticket_ids:
            return {}
        stmt = stmt.where(SlaTargetRow.ticket_id.in_(list(ticket_ids)))
    found: dict[int, Late] = {}
    for ticket_id, target, due_at in session.execute(stmt):
        if due_at is not None:
            found.setdefault(ticket_id, Late(target, due_at))
    return found
