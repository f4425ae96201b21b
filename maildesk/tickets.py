"""Ticket changes that more than one entry point makes (CLI, agent commands, SLA)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from maildesk.db import queries
from maildesk.db.models import (
    Conversation,
    Event,
    Intake,
    KnownMessageId,
    Message,
    Participant,
    Ticket,
    TicketLink,
    TicketStatus,
)
from maildesk.db.upsert import insert_ignore
from maildesk.outbound.notices import Notices
from maildesk.pipeline.lookahead import Lookahead
from maildesk.sla.merge import exchange_starts, renumber_escalations


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
            # The assignee of the time: reports credit a resolution nobody
            # in particular made (the clock, the CLI) to them.
            data={
                "from": str(before),
                "to": str(status),
                "actor": actor,
                "assignee": ticket.assignee,
            },
        )
    )
    if status is TicketStatus.RESOLVED and notices is not None:
        notices.resolved(session, ticket)
    return True


def merge_tickets(
    session: Session, source: Ticket, target: Ticket, now: datetime, *, reason: str
) -> bool:
    """Merge ``source`` into ``target``: its messages, ids and people move over.

    The source ticket stays as a closed stub with ``merged_into`` set, so
    anything that still names it (a ticket number in a subject) is forwarded.
    False, and nothing done, when either was merged into another ticket already.
    """
    if source.id == target.id:
        return False
    # Both rows locked (in id order, against a crossing merge) and re-read: a reply
    # being threaded onto the source holds it until its message is stored, and is
    # moved with the others; one threaded after this waits and follows the merge.
    for ticket in sorted((source, target), key=lambda t: t.id):
        queries.locked_ticket(session, ticket.id)
    if source.merged_into_id is not None or target.merged_into_id is not None:
        return False
    if (lookahead := Lookahead.of(session)) is not None:
        lookahead.merged(source, target)
    session.flush()
    exchanges = exchange_starts(session, target, now)
    session.execute(
        update(Message).where(Message.ticket_id == source.id).values(ticket_id=target.id)
    )
    renumber_escalations(session, target.id, exchanges, exchange_starts(session, target, now))
    session.execute(
        update(KnownMessageId)
        .where(KnownMessageId.ticket_id == source.id)
        .values(ticket_id=target.id)
    )
    session.execute(
        update(Conversation).where(Conversation.ticket_id == source.id).values(ticket_id=target.id)
    )
    session.execute(update(Intake).where(Intake.ticket_id == source.id).values(ticket_id=target.id))
    for contact_id, role in session.execute(
        select(Participant.contact_id, Participant.role).where(Participant.ticket_id == source.id)
    ).all():
        insert_ignore(
            session,
            Participant,
            {"ticket_id": target.id, "contact_id": contact_id, "role": str(role)},
            ["ticket_id", "contact_id"],
        )
    session.add(
        TicketLink(
            ticket_id=source.id, other_ticket_id=target.id, kind="merged_into", created_at=now
        )
    )
    source.merged_into_id = target.id
    source.status, source.closed_at, source.updated_at = TicketStatus.CLOSED, now, now
    target.updated_at = max(target.updated_at, source.updated_at)
    for ticket, text in (
        (source, f"merged into #{target.number}: {reason}"),
        (target, f"#{source.number} merged in: {reason}"),
    ):
        session.add(
            Event(
                at=now,
                kind="merged",
                reason=text,
                ticket_id=ticket.id,
                data={"from": source.number},
            )
        )
    session.expire(source, ["messages"])
    session.expire(target, ["messages"])
    return True
