"""Ticket changes that more than one entry point makes (CLI, agent commands, SLA)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from maildesk.db.models import Event, Ticket, TicketStatus
from maildesk.outbound.notices import Notices


def change_status(
    session: Session,
    ticket: Ticket,
    status: TicketStatus,
    now: datetime,
    notices: Notices | None,
    *,
    actor: str,
) -> bool:
    """Set the status, record it, and queue the resolution notice; False if unchanged."""
    if ticket.status == status:
        return False
    before = ticket.status
    ticket.status = status
    ticket.updated_at = now
    if status is TicketStatus.RESOLVED:
        ticket.resolved_at = now
    elif status is TicketStatus.CLOSED:
        ticket.closed_at = now
    else:
        ticket.resolved_at = ticket.closed_at = None
    session.add(
        Event(
            at=now,
            kind="status",
            reason=f"{before} -> {status} by {actor}",
            ticket_id=ticket.id,
            data={"from": str(before), "to": str(status), "actor": actor},
        )
    )
    if status is TicketStatus.RESOLVED and notices is not None:
        notices.resolved(session, ticket)
    return True
