"""Agents' corrections as feedback for the learned models.

``#category NAME`` (:func:`correct_category`) and moving a ticket to another
queue (:func:`move_queue`) change the ticket, record an event, and teach the
model the ticket's text with the new label (when ``routing.learn_corrections``
is on). The model file is saved atomically; the route stage reloads it when
it changes, so the next similar ticket benefits.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from maildesk.config import Settings
from maildesk.db.models import Direction, Event, Message, Ticket
from maildesk.people import Directory
from maildesk.routing.assign_db import Record, assign_ticket, event_recorder
from maildesk.routing.models import ModelSlot, model_slots
from maildesk.shared_models import PublishConflict

log = logging.getLogger("maildesk.routing")


def learn(
    text: str,
    label: str,
    *,
    settings: Settings,
    field: str = "category",
    slots: dict[str, ModelSlot] | None = None,
    session: Session | None = None,
    now: datetime | None = None,
) -> str | None:
    """Teach the ``field`` model that ``text`` is ``label``; returns the new model version.

    None when learning is off or no model is configured for the field. With
    ``session`` the corrected model is published to every node in that
    transaction.
    """
    if not settings.routing.learn_corrections:
        return None
    slot = (slots or model_slots(settings)).get(field)
    if slot is None:
        return None
    return slot.learn(text, label, session=session, node=settings.effective_node_name, now=now)


def ticket_text(session: Session, ticket: Ticket) -> str:
    """Subject and first customer message: what the route stage saw."""
    body = session.scalar(
        select(Message.text_body)
        .where(Message.ticket_id == ticket.id, Message.direction == Direction.INBOUND)
        .order_by(Message.id)
        .limit(1)
    )
    return f"{ticket.subject}\n{body or ''}"


def correct_category(
    session: Session,
    ticket: Ticket,
    label: str,
    *,
    actor: str,
    settings: Settings,
    now: datetime,
    slots: dict[str, ModelSlot] | None = None,
    record: Record | None = None,
) -> str | None:
    """An agent's ``#category``: set it, record it, learn from it. Returns the model version."""
    record = record or event_recorder(session, ticket, now)
    return _relabel(
        session, ticket, "category", "category_corrected", label, actor, settings, slots, record
    )


def move_queue(
    session: Session,
    ticket: Ticket,
    queue: str,
    *,
    actor: str,
    settings: Settings,
    directory: Directory,
    now: datetime,
    slots: dict[str, ModelSlot] | None = None,
    record: Record | None = None,
) -> str | None:
    """Reassign a ticket to another queue: the queue's group takes it; the queue model learns."""
    record = record or event_recorder(session, ticket, now)
    version = _relabel(
        session, ticket, "queue", "queue_changed", queue, actor, settings, slots, record
    )
    group = settings.routing.queue_groups.get(queue)
    if group is not None and group != ticket.group:
        ticket.group, ticket.assignee = group, None
        assign_ticket(
            session, ticket, settings=settings, directory=directory, now=now, record=record
        )
    return version


def _relabel(
    session: Session,
    ticket: Ticket,
    field: str,
    kind: str,
    label: str,
    actor: str,
    settings: Settings,
    slots: dict[str, ModelSlot] | None,
    record: Record,
) -> str | None:
    """Set the ticket's ``field`` to ``label``, learn it once, record event ``kind``."""
    previous = getattr(ticket, field)
    setattr(ticket, field, label)
    version = None
    if not _taught(session, ticket, kind, label):
        version = _learn_safely(session, ticket, label, field, settings, slots)
    data: dict[str, Any] = {"from": previous, "to": label, "actor": actor, "learned": version}
    record(kind, f"{actor}: {field} {previous} -> {label}", data)
    return version


def _taught(session: Session, ticket: Ticket, kind: str, label: str) -> bool:
    """Whether the model already learned this ticket's text as ``label``.

    The same correction twice (two agents, a repeated ``#category``) is one
    lesson: learning the same text again would weigh one ticket as many. A
    different label is a correction of the correction and is learned.
    """
    rows = session.scalars(
        select(Event.data).where(Event.ticket_id == ticket.id, Event.kind == kind)
    ).all()
    taught = [d for d in rows if isinstance(d, dict) and d.get("learned")]
    return bool(taught) and taught[-1].get("to") == label


def _learn_safely(
    session: Session,
    ticket: Ticket,
    label: str,
    field: str,
    settings: Settings,
    slots: dict[str, ModelSlot] | None,
) -> str | None:
    """A model that cannot be written must not undo the agent's change: log it."""
    try:
        return learn(
            ticket_text(session, ticket),
            label,
            settings=settings,
            field=field,
            slots=slots,
            session=session,
        )
    except (OSError, ValueError, PublishConflict) as exc:
        log.error("ticket=%s %s correction not learned: %s", ticket.id, field, exc)
        return None
