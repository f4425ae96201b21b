"""The stable JSON shapes of tickets, messages and quarantine entries (see README)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from maildesk.db.models import (
    Contact,
    Event,
    Intake,
    Message,
    Outbox,
    Participant,
    Ticket,
    TicketLink,
)

SCHEMA_VERSION = 1


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def message_json(message: Message) -> dict[str, Any]:
    return {
        "message_id": message.header_message_id or message.dedupe_key,
        "direction": str(message.direction),
        "kind": str(message.kind),
        "from": message.from_addr,
        "from_name": message.from_name,
        "to": list(message.to_addrs or []),
        "cc": list(message.cc_addrs or []),
        "subject": message.subject,
        "date": iso(message.date),
        "received_at": iso(message.created_at),
        "auto": message.auto_kind,
        "body": message.text_body,
        "html": message.html_body,
        "raw_sha256": message.raw_sha256,
        "attachments": [
            {
                "filename": part.filename,
                "content_type": part.content_type,
                "size": part.size,
                "sha256": part.sha256,
                "inline": part.inline,
                "content_id": part.content_id,
            }
            for part in message.attachments
        ],
    }


def ticket_summary_json(ticket: Ticket) -> dict[str, Any]:
    return {
        "number": ticket.number,
        "subject": ticket.subject,
        "status": str(ticket.status),
        "priority": str(ticket.priority),
        "category": ticket.category,
        "queue": ticket.queue,
        "requester": ticket.requester.email if ticket.requester else None,
        "assignee": ticket.assignee,
        "created_at": iso(ticket.created_at),
        "updated_at": iso(ticket.updated_at),
    }


def ticket_json(session: Session, ticket: Ticket, *, with_events: bool = False) -> dict[str, Any]:
    data = ticket_summary_json(ticket)
    participants = session.execute(
        select(Contact.email, Participant.role)
        .join(Participant, Participant.contact_id == Contact.id)
        .where(Participant.ticket_id == ticket.id)
        .order_by(Participant.id)
    ).all()
    links = session.scalars(select(TicketLink).where(TicketLink.ticket_id == ticket.id)).all()
    linked = {link.other_ticket_id: link.kind for link in links}
    numbers = {t.id: t.number for t in session.scalars(select(Ticket).where(Ticket.id.in_(linked)))}
    merged = session.get(Ticket, ticket.merged_into_id) if ticket.merged_into_id else None
    data.update(
        {
            "resolved_at": iso(ticket.resolved_at),
            "closed_at": iso(ticket.closed_at),
            "merged_into": merged.number if merged else None,
            "support_addresses": list(ticket.support_addresses or []),
            "participants": [{"email": email, "role": str(role)} for email, role in participants],
            "links": [
                {"ticket": numbers.get(other), "kind": kind} for other, kind in linked.items()
            ],
            "messages": [message_json(m) for m in ticket.messages],
        }
    )
    if with_events:
        events = session.scalars(
            select(Event).where(Event.ticket_id == ticket.id).order_by(Event.id)
        )
        data["events"] = [event_json(e) for e in events]
    return data


def event_json(event: Event) -> dict[str, Any]:
    return {
        "at": iso(event.at),
        "kind": event.kind,
        "reason": event.reason,
        "data": event.data or {},
    }


def intake_json(row: Intake) -> dict[str, Any]:
    return {
        "id": row.id,
        "received_at": iso(row.received_at),
        "source": row.source,
        "source_ref": row.source_ref,
        "envelope_from": row.envelope_from,
        "envelope_to": list(row.envelope_to or []),
        "message_id": row.header_message_id,
        "size": row.size,
        "state": str(row.state),
        "reason": row.quarantine_reason,
        "attempts": row.attempts,
        "raw_sha256": row.raw_sha256,
    }


def outbox_json(row: Outbox) -> dict[str, Any]:
    return {
        "id": row.id,
        "created_at": iso(row.created_at),
        "purpose": row.purpose,
        "message_id": row.message_id,
        "recipients": list(row.recipients or []),
        "state": str(row.state),
        "attempts": row.attempts,
        "next_attempt_at": iso(row.next_attempt_at),
        "sent_at": iso(row.sent_at),
        "last_error": row.last_error,
    }
