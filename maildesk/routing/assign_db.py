"""Assignment against the database: gather the inputs of :func:`assign.choose`, record the result.

Every assignment (or the reason there is none) is an ``assigned`` event with
the rule and reason in its data. The round-robin cursor per group lives in
``routing_state``; the open counts are counted, not cached, so they include
tickets assigned earlier in the same transaction (the session autoflushes).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from maildesk.config import Settings
from maildesk.db.models import Event, RoutingState, Ticket, TicketStatus
from maildesk.db.upsert import insert_ignore
from maildesk.people import Directory
from maildesk.routing.assign import Assignment, choose

OPEN_STATUSES = (TicketStatus.NEW, TicketStatus.OPEN, TicketStatus.PENDING)
Record = Callable[[str, str, dict[str, Any]], None]


def event_recorder(session: Session, ticket: Ticket, now: datetime) -> Record:
    """Events written straight to the session (outside the pipeline's buffered writer)."""

    def record(kind: str, reason: str, data: dict[str, Any]) -> None:
        session.add(Event(at=now, kind=kind, reason=reason, ticket_id=ticket.id, data=data))

    return record


def open_counts(session: Session, names: list[str]) -> dict[str, int]:
    if not names:
        return {}
    rows = session.execute(
        select(Ticket.assignee, func.count(Ticket.id))
        .where(
            Ticket.assignee.in_(names),
            Ticket.status.in_(OPEN_STATUSES),
            Ticket.merged_into_id.is_(None),
        )
        .group_by(Ticket.assignee)
    ).all()
    return {name: int(count) for name, count in rows if name}


def lock_group(session: Session, group: str, now: datetime) -> None:
    """Hold the group's ``routing_state`` row until commit: one assignment per group at a time.

    Two nodes assigning in the same group would otherwise both read the same
    round-robin cursor and open counts and give both tickets to one agent. On
    PostgreSQL the row lock orders them (the second reads what the first
    committed); SQLite's write transaction already does.
    """
    row = {"group_name": group, "last_agent": None, "updated_at": now}
    insert_ignore(session, RoutingState, row, ["group_name"])
    session.execute(
        select(RoutingState.id).where(RoutingState.group_name == group).with_for_update()
    )


def last_round_robin(session: Session, group: str) -> str | None:
    return session.scalar(select(RoutingState.last_agent).where(RoutingState.group_name == group))


def remember_round_robin(session: Session, group: str, agent: str, now: datetime) -> None:
    row = session.scalars(select(RoutingState).where(RoutingState.group_name == group)).first()
    if row is None:
        session.add(RoutingState(group_name=group, last_agent=agent, updated_at=now))
    else:
        row.last_agent, row.updated_at = agent, now


def last_assignee(session: Session, ticket: Ticket) -> str | None:
    """Who had the ticket last: its assignee, else the last ``assigned`` event's agent."""
    if ticket.assignee:
        return ticket.assignee
    events = session.scalars(
        select(Event.data)
        .where(Event.ticket_id == ticket.id, Event.kind == "assigned")
        .order_by(Event.id.desc())
        .limit(20)
    ).all()
    return next((str(d["agent"]) for d in events if d and d.get("agent")), None)


def previous_agent_of_requester(session: Session, ticket: Ticket) -> str | None:
    """The assignee of the requester's most recent other ticket (for sticky groups)."""
    if ticket.requester_id is None:
        return None
    return session.scalar(
        select(Ticket.assignee)
        .where(
            Ticket.requester_id == ticket.requester_id,
            Ticket.id != ticket.id,
            Ticket.assignee.is_not(None),
        )
        .order_by(Ticket.id.desc())
        .limit(1)
    )


def group_for(settings: Settings, ticket: Ticket) -> str | None:
    """The ticket's group, else its queue's group, else the default group."""
    routing = settings.routing
    if ticket.group:
        return ticket.group
    if ticket.queue and ticket.queue in routing.queue_groups:
        return routing.queue_groups[ticket.queue]
    return routing.default_group


def assign_ticket(
    session: Session,
    ticket: Ticket,
    *,
    settings: Settings,
    directory: Directory,
    now: datetime,
    record: Record,
    reopened: bool = False,
) -> Assignment | None:
    """Assign ``ticket`` within its group; None when it has no group (nothing recorded)."""
    group_name = group_for(settings, ticket)
    group = directory.group(group_name) if group_name else None
    if group is None:
        fallback = settings.routing.default_responsible.get(ticket.queue or "")
        if fallback is None:
            return None
        result = Assignment(
            fallback,
            f"queue {ticket.queue} has no group: default responsible",
            "default_responsible",
        )
    else:
        ticket.group = group.name
        lock_group(session, group.name, now)
        members = directory.members(group.name)
        previous, why = None, ""
        if reopened:
            previous, why = last_assignee(session, ticket), "reopened"
        elif group.sticky:
            previous, why = previous_agent_of_requester(session, ticket), "sticky customer"
        result = choose(
            group,
            members,
            open_counts=open_counts(session, [m.name for m in members]),
            on_shift=lambda agent: directory.on_shift(agent, now),
            last_assigned=last_round_robin(session, group.name),
            category=ticket.category,
            previous=previous,
            previous_why=why,
            default_responsible=group.default_responsible
            or settings.routing.default_responsible.get(ticket.queue or ""),
        )
        if result.agent is not None and result.rule in ("round_robin", "least_open", "skill"):
            remember_round_robin(session, group.name, result.agent, now)
    ticket.assignee = result.agent
    record(
        "assigned",
        result.reason if result.agent is None else f"assigned to {result.agent}: {result.reason}",
        {"agent": result.agent, "group": ticket.group, "rule": result.rule},
    )
    return result
