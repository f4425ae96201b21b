"""Ticket timelines for SLA evaluation, read from stored facts.

The pipeline is not asked to keep SLA state: a ticket's timeline is rebuilt
from its messages (customer mail, public agent replies; internal notes never
count) and its status events (``status`` with ``data.to``, ``reopened``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, bindparam, select
from sqlalchemy.orm import QueryableAttribute, Session

from maildesk.db.models import Contact, Event, Message, MessageKind, Ticket, TicketStatus
from maildesk.people import Directory
from maildesk.sla.policy import (
    AgentReply,
    CustomerMessage,
    StatusChanged,
    TicketCreated,
    TicketEvent,
    TicketReopened,
    TicketResolved,
)
from maildesk.sla.select import TicketFacts

_STATUS_KINDS = ("status", "reopened")
# Tickets per query: a year's report reads more tickets than one statement should name.
CHUNK = 1000
_ENDED = (TicketStatus.RESOLVED.value, TicketStatus.CLOSED.value)
_STATUS_VALUES = frozenset(s.value for s in TicketStatus)


@dataclass(frozen=True, slots=True)
class StatusFact:
    id: int
    at: datetime
    kind: str
    reason: str
    data: dict[str, Any]

    def new_status(self) -> str | None:
        """The status the ticket moved to (older events name it only in the reason)."""
        if self.kind == "reopened":
            return TicketStatus.OPEN.value
        to = (self.data or {}).get("to")
        if isinstance(to, str):
            return to
        last = self.reason.rsplit(":", 1)[-1].strip()
        return last if last in _STATUS_VALUES else None


def timeline(
    created_at: datetime,
    messages: Sequence[tuple[datetime, MessageKind]],
    statuses: Sequence[StatusFact],
) -> list[TicketEvent]:
    """Pure: the SLA events of one ticket, in time order (ties: messages first)."""
    items: list[tuple[datetime, int, TicketEvent]] = []
    for at, kind in messages:
        if kind is MessageKind.AGENT_REPLY:
            items.append((at, 0, AgentReply(at)))
        elif kind is MessageKind.CUSTOMER:
            items.append((at, 0, CustomerMessage(at)))
    ended = False
    for fact in sorted(statuses, key=lambda f: (f.at, f.id)):
        status = fact.new_status()
        if status is None:
            continue
        if status in _ENDED:
            if not ended:
                items.append((fact.at, 1, TicketResolved(fact.at)))
            ended = True
        elif ended:
            items.append((fact.at, 1, TicketReopened(fact.at)))
            items.append((fact.at, 1, StatusChanged(fact.at, status)))
            ended = False
        else:
            items.append((fact.at, 1, StatusChanged(fact.at, status)))
    items.sort(key=lambda item: (item[0], item[1]))
    return [TicketCreated(created_at), *(event for _, _, event in items if event.at >= created_at)]


@dataclass(frozen=True, slots=True)
class TicketHistory:
    ticket: Ticket
    events: list[TicketEvent]
    statuses: list[StatusFact]
    facts: TicketFacts


def load_histories(
    session: Session, tickets: Sequence[Ticket], directory: Directory
) -> list[TicketHistory]:
    """Timelines and selection facts of ``tickets``, in three queries per :data:`CHUNK`."""
    histories = []
    for offset in range(0, len(tickets), CHUNK):
        histories += _load_chunk(session, tickets[offset : offset + CHUNK], directory)
    return histories


def among(column: QueryableAttribute[Any], ids: Collection[int]) -> ColumnElement[bool]:
    """``column IN (...)`` with the ids written into the statement: the driver parses a
    thousand placeholders in more time than the query takes to run."""
    return column.in_(bindparam(None, sorted(ids), expanding=True, literal_execute=True))


def _load_chunk(
    session: Session, tickets: Sequence[Ticket], directory: Directory
) -> list[TicketHistory]:
    ids = [t.id for t in tickets]
    if not ids:
        return []
    messages: dict[int, list[tuple[datetime, MessageKind]]] = defaultdict(list)
    for ticket_id, at, kind in session.execute(
        select(Message.ticket_id, Message.created_at, Message.kind)
        .where(
            among(Message.ticket_id, ids),
            Message.kind.in_((MessageKind.CUSTOMER, MessageKind.AGENT_REPLY)),
        )
        .order_by(Message.id)
    ):
        messages[ticket_id].append((at, MessageKind(kind)))
    statuses: dict[int, list[StatusFact]] = defaultdict(list)
    for row in session.execute(
        select(Event.ticket_id, Event.id, Event.at, Event.kind, Event.reason, Event.data)
        .where(among(Event.ticket_id, ids), Event.kind.in_(_STATUS_KINDS))
        .order_by(Event.id)
    ):
        statuses[row.ticket_id].append(StatusFact(row.id, row.at, row.kind, row.reason, row.data))
    requesters = dict(
        session.execute(
            select(Contact.id, Contact.email).where(
                among(Contact.id, {t.requester_id for t in tickets if t.requester_id is not None})
            )
        ).all()
    )
    histories = []
    for ticket in tickets:
        requester = requesters.get(ticket.requester_id) if ticket.requester_id else None
        facts = ticket_facts(ticket, requester, directory)
        events = timeline(ticket.created_at, messages[ticket.id], statuses[ticket.id])
        histories.append(TicketHistory(ticket, events, statuses[ticket.id], facts))
    return histories


def ticket_facts(ticket: Ticket, requester: str | None, directory: Directory) -> TicketFacts:
    org = None
    if ticket.organisation:
        org = next((o for o in directory.organisations if o.name == ticket.organisation), None)
    if org is None and requester:
        org = directory.organisation_for(requester)
    return TicketFacts(
        explicit_policy=ticket.sla_policy,
        requester=requester.lower() if requester else None,
        organisation=org.name if org else ticket.organisation,
        tier=org.tier if org else None,
        organisation_policy=org.sla_policy if org else None,
        priority=str(ticket.priority),
        category=ticket.category,
        queue=ticket.queue,
        subject=ticket.subject or "",
    )
