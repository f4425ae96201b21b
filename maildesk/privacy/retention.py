"""Retention: tickets closed (or resolved and left so) long ago are deleted
(``retention.closed_ticket_days``, ``maildesk privacy purge``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from maildesk.db.database import Database
from maildesk.db.models import (
    Event,
    Message,
    Ticket,
    TicketStatus,
)
from maildesk.privacy.erase import (
    Counts,
    erase_ticket,
    in_retried_transaction,
    lock_tickets,
    ticket_family,
)

log = logging.getLogger("maildesk.privacy")
PURGED_EVENT = "retention_purged"


def expired_tickets(
    session: Session, cutoff: datetime, among: list[int] | None = None
) -> list[int]:
    """Tickets closed, or resolved and left so, before ``cutoff`` (merged ones go with theirs)."""
    stmt = (
        select(Ticket.id)
        .where(
            Ticket.merged_into_id.is_(None),
            or_(
                (Ticket.status == TicketStatus.CLOSED)
                & (func.coalesce(Ticket.closed_at, Ticket.updated_at) < cutoff),
                (Ticket.status == TicketStatus.RESOLVED)
                & (func.coalesce(Ticket.resolved_at, Ticket.updated_at) < cutoff),
            ),
            Ticket.updated_at < cutoff,
        )
        .order_by(Ticket.id)
    )
    if among is not None:
        stmt = stmt.where(Ticket.id.in_(among))
    return list(session.scalars(stmt))


def purge(
    db: Database,
    older_than_days: float,
    *,
    now: Callable[[], datetime],
    actor: str,
    should_stop: Callable[[], bool] = lambda: False,
) -> Counts:
    """Delete tickets closed more than ``older_than_days`` ago; safe on several nodes at once.

    Each ticket is deleted in its own transaction, re-checked once locked (a
    reply may have reopened it); a ticket another node is deleting is skipped.
    """
    total = Counts()
    if older_than_days <= 0:
        return total
    cutoff = now() - timedelta(days=older_than_days)
    with db.transaction() as session:
        candidates = expired_tickets(session, cutoff)
    for ticket_id in candidates:
        if should_stop():
            break

        def one(session: Session, ticket_id: int = ticket_id) -> Counts | None:
            if not lock_tickets(session, [ticket_id], skip_locked=True):
                return None
            if not expired_tickets(session, cutoff, [ticket_id]):  # reopened meanwhile
                return None
            return erase_ticket(session, ticket_id, skip_locked=True)

        done = in_retried_transaction(db, one)
        if done is not None:
            total.add(done)
    if total.tickets:

        def audit(session: Session) -> None:
            session.add(
                Event(
                    at=now(),
                    kind=PURGED_EVENT,
                    reason=(
                        f"retention by {actor}: {total.tickets} tickets closed over "
                        f"{older_than_days:g} days, {total.messages} messages deleted"
                    ),
                    data={
                        "by": actor,
                        "days": older_than_days,
                        **total.as_dict(),
                        "numbers": total.numbers,
                    },
                )
            )

        in_retried_transaction(db, audit)
        log.info(
            "retention: %d tickets closed over %g days deleted (%d messages)",
            total.tickets,
            older_than_days,
            total.messages,
        )
    return total


def dry_purge(db: Database, older_than_days: float, now: datetime) -> Counts:
    """What :func:`purge` would delete now."""
    counts = Counts()
    if older_than_days <= 0:
        return counts
    with db.transaction() as session:
        for ticket_id in expired_tickets(session, now - timedelta(days=older_than_days)):
            family = ticket_family(session, ticket_id)
            counts.tickets += len(family)
            counts.messages += (
                session.scalar(
                    select(func.count()).select_from(Message).where(Message.ticket_id.in_(family))
                )
                or 0
            )
    return counts
