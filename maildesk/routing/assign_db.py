"""Assignment against the database: gather the inputs of :func:`assign.choose`, record the result.

Every assignment (or the reason there is none) is an ``assigned`` event with
the rule and reason in its data. The round-robin cursor per group lives in
``routing_state``; the open counts are counted, not cached, so they include
tickets assigned earlier in the same transaction (the session autoflushes).
Open means new, open or pending; a merged ticket, one the spam filter was
unsure of (held from the agents until released) and the ticket being
assigned itself (a reopened one still names its assignee) do not count.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from maildesk.config import AgentSettings, GroupSettings, Settings
from maildesk.db.models import Event, RoutingState, Ticket, TicketStatus
from maildesk.db.upsert import insert_ignore
from maildesk.people import Directory
from maildesk.routing.assign import Assignment, all_agents, choose, is_all_agents

OPEN_STATUSES = (TicketStatus.NEW, TicketStatus.OPEN, TicketStatus.PENDING)
Record = Callable[[str, str, dict[str, Any]], None]
# Two-key advisory lock ("mdas", 0) held by the transaction that assigns (PostgreSQL).
ASSIGNMENT_LOCK_SPACE = 0x6D646173
_LOCK_ASSIGNMENT = text("SELECT pg_advisory_xact_lock(:space, 0)")


def event_recorder(session: Session, ticket: Ticket, now: datetime) -> Record:
    """Events written straight to the session (outside the pipeline's buffered writer)."""

    def record(kind: str, reason: str, data: dict[str, Any]) -> None:
        session.add(Event(at=now, kind=kind, reason=reason, ticket_id=ticket.id, data=data))

    return record


def open_counts(
    session: Session, names: list[str], *, besides: int | None = None
) -> dict[str, int]:
    """Open tickets per agent of ``names``, not counting the ticket ``besides``."""
    if not names:
        return {}
    query = (
        select(Ticket.assignee, func.count(Ticket.id))
        .where(
            Ticket.assignee.in_(names),
            Ticket.status.in_(OPEN_STATUSES),
            Ticket.merged_into_id.is_(None),
            Ticket.possible_spam.is_(False),
        )
        .group_by(Ticket.assignee)
    )
    if besides is not None:
        query = query.where(Ticket.id != besides)
    rows = session.execute(query).all()
    return {name: int(count) for name, count in rows if name}


def lock_group(session: Session, group: str, now: datetime) -> None:
    """Take turns with every other assignment until commit; make sure the group's cursor row exists.

    Two nodes assigning in the same group would otherwise both read the same
    round-robin cursor and open counts and give both tickets to one agent.
    The cap is per agent, and an agent may work in several groups, so a lock
    per group is not enough: two nodes assigning in L1 and L2 at once would
    both count an agent of both below the cap. On PostgreSQL one transaction
    at a time assigns (an advisory lock, taken before the cursor row is
    written, so the two never wait on each other crosswise; one lock for all
    groups also keeps a batch assigning in L1 then L2 from deadlocking with
    one doing L2 then L1); the second reads what the first committed.
    SQLite's write transaction already does.
    """
    bind = session.get_bind()
    if bind.dialect.name == "postgresql":
        session.execute(_LOCK_ASSIGNMENT, {"space": ASSIGNMENT_LOCK_SPACE})
    row = {"group_name": group, "last_agent": None, "updated_at": now}
    insert_ignore(session, RoutingState, row, ["group_name"])


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


def previous_agent_of_requester(session: Session, ticket: Ticket, members: list[str]) -> str | None:
    """The assignee of the requester's most recent other ticket with one of ``members``.

    For sticky groups: the customer's agent in this group. Their latest ticket
    may have gone to another group (a rule, an escalation); its agent does not
    work here and must not hide the one who does.
    """
    if ticket.requester_id is None or not members:
        return None
    return session.scalar(
        select(Ticket.assignee)
        .where(
            Ticket.requester_id == ticket.requester_id,
            Ticket.id != ticket.id,
            Ticket.assignee.in_(members),
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


ROTATION_RULES = ("round_robin", "least_open", "skill")


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
    """Assign ``ticket`` within its group, else among all agents.

    None when it has no group and there is nobody to assign it to: no default
    responsible for its queue and no agents at all (nothing recorded).
    """
    group_name = group_for(settings, ticket)
    group = directory.group(group_name) if group_name else None
    fallback = settings.routing.default_responsible.get(ticket.queue or "")
    if group is None and fallback is not None:
        result = Assignment(
            fallback,
            f"queue {ticket.queue} has no group: default responsible",
            "default_responsible",
        )
    elif group is None and not directory.without_group():
        return None
    else:
        if group is None:
            group = all_agents()  # the ticket keeps no group
        else:
            ticket.group = group.name
        lock_group(session, group.name, now)
        result, _ = choose_in_group(
            session,
            ticket,
            group,
            settings=settings,
            directory=directory,
            now=now,
            reopened=reopened,
        )
    ticket.assignee = result.agent
    record(
        "assigned",
        result.reason if result.agent is None else f"assigned to {result.agent}: {result.reason}",
        {"agent": result.agent, "group": ticket.group, "rule": result.rule}
        | ({"reopened": True} if reopened else {}),
    )
    return result


def pool_of(directory: Directory, group: GroupSettings) -> tuple[AgentSettings, ...]:
    """The agents who take ``group``'s tickets: its members, or all for :func:`all_agents`."""
    if is_all_agents(group):
        return directory.without_group()
    return directory.members(group.name)


def choose_in_group(
    session: Session,
    ticket: Ticket,
    group: GroupSettings,
    *,
    settings: Settings,
    directory: Directory,
    now: datetime,
    reopened: bool = False,
) -> tuple[Assignment, dict[str, int]]:
    """The agent of ``group`` for ``ticket`` now; the caller holds :func:`lock_group`.

    Also returns the open counts the choice was made on (the agents', this
    ticket not counted). Moves the group's round-robin cursor when the
    rotation chose; leaves the ticket itself to the caller.
    """
    members = pool_of(directory, group)
    names = [m.name for m in members]
    previous, why, outsider = None, "", None
    if reopened:
        previous, why = last_assignee(session, ticket), "reopened"
        if previous is not None and previous == ticket.assignee and previous not in names:
            # Still with someone of another group (``#assign`` by hand): back to them.
            # Not one it was escalated away from (its assignee was cleared then).
            outsider = directory.agent(previous)
    elif group.sticky:
        previous, why = previous_agent_of_requester(session, ticket, names), "sticky customer"
    counted = [*names, outsider.name] if outsider is not None else names
    counts = open_counts(session, counted, besides=ticket.id)
    result = choose(
        group,
        members,
        open_counts=counts,
        on_shift=lambda agent: directory.on_shift(agent, now),
        last_assigned=last_round_robin(session, group.name),
        category=ticket.category,
        previous=previous,
        previous_why=why,
        previous_agent=outsider,
        default_responsible=group.default_responsible
        or settings.routing.default_responsible.get(ticket.queue or ""),
    )
    if result.agent is not None and result.rule in ROTATION_RULES:
        remember_round_robin(session, group.name, result.agent, now)
    return result, counts
