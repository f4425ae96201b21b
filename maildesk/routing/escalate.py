"""Escalation: move a ticket up a tier (L1 -> L2 -> L3) and hand it to the new group.

Called by the ``escalate`` rule action and by the agents' ``#escalate [group]``
command. The ticket leaves its assignee, joins the new group, is assigned
within it by the group's strategy, and the move is an ``escalated`` event. The
caller passes ``notify`` to tell the new group (the pipeline and the agents'
command runner pass :class:`maildesk.outbound.agent_notices.EscalationNotifier`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from sqlalchemy.orm import Session

from maildesk.config import Settings
from maildesk.db.models import Ticket
from maildesk.people import Directory
from maildesk.routing.assign_db import Record, assign_ticket, event_recorder, group_for

log = logging.getLogger("maildesk.routing")
# (session, ticket, new group, why): tells the new group about the ticket.
Notify = Callable[[Session, Ticket, str, str], None]


class EscalationError(ValueError):
    """The ticket cannot be escalated (already at the top, unknown group)."""


def target_group(directory: Directory, current: str | None, to_group: str | None) -> str:
    if to_group is not None:
        group = directory.group(to_group)
        if group is None:
            raise EscalationError(f"unknown group {to_group!r}")
        if current is not None and to_group == current:
            raise EscalationError(f"the ticket is already with {to_group}")
        return group.name
    if current is None:
        raise EscalationError("the ticket has no group to escalate from: name one")
    group = directory.group(current)
    if group is None or group.escalates_to is None:
        raise EscalationError(f"group {current} has no higher tier (escalates_to)")
    return group.escalates_to


def escalate(
    session: Session,
    ticket: Ticket,
    to_group: str | None = None,
    *,
    actor: str,
    settings: Settings,
    directory: Directory,
    now: datetime,
    record: Record | None = None,
    reason: str = "",
    notify: Notify | None = None,
) -> str:
    """Escalate ``ticket`` to ``to_group`` (default: its group's ``escalates_to``).

    Returns the new group. Raises :class:`EscalationError` when there is none.
    """
    record = record or event_recorder(session, ticket, now)
    current = group_for(settings, ticket)
    new_group = target_group(directory, current, to_group)
    previous = ticket.assignee
    ticket.group, ticket.assignee = new_group, None
    why = f"escalated by {actor} from {current or 'no group'} to {new_group}"
    record(
        "escalated",
        why + (f": {reason}" if reason else ""),
        {"from": current, "to": new_group, "actor": actor, "previous_assignee": previous},
    )
    assign_ticket(session, ticket, settings=settings, directory=directory, now=now, record=record)
    if notify is not None:
        notify(session, ticket, new_group, why)
    return new_group
