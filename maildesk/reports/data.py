"""Report figures, computed from stored facts (messages, status events, tickets).

SLA figures re-evaluate each ticket's timeline with its policy as of ``now``
(they do not depend on the sweep having run). Times are business minutes the
target's clock ran (pauses excluded). Percentiles use the nearest-rank
method: the smallest value with at least p % of the values at or below it.
Tickets count for the period they were created in ``[start, end)``.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Date, func, select
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session, load_only
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from maildesk.config import Settings
from maildesk.db.models import Event, Message, MessageKind, Rating, Ticket, TicketStatus
from maildesk.people import Directory
from maildesk.sla.calendar import BusinessCalendar
from maildesk.sla.facts import CHUNK, TicketHistory, among, load_histories
from maildesk.sla.policy import SlaEvaluation, TargetStatus, evaluate
from maildesk.sla.select import select_policy

PERCENTILES = (50, 75, 90, 95)
SECTIONS = ("sla", "agents", "categories", "volume")
OPEN = (TicketStatus.NEW, TicketStatus.OPEN, TicketStatus.PENDING)
FRT_BUCKETS = (30, 60, 120, 240, 480, 960, 1920)  # upper bounds in business minutes


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def percentiles(values: Sequence[float]) -> dict[str, float | None]:
    return {f"p{p}": percentile(values, p) for p in PERCENTILES}


@dataclass
class Evaluated:
    ticket: Ticket
    policy: str | None
    evaluation: SlaEvaluation | None


@dataclass
class ReportData:
    start: datetime
    end: datetime
    now: datetime
    sla: dict[str, Any] = field(default_factory=dict)
    agents: list[dict[str, Any]] = field(default_factory=list)
    categories: list[dict[str, Any]] = field(default_factory=list)
    volume: dict[str, Any] = field(default_factory=dict)


def _evaluate_all(
    histories: Sequence[TicketHistory],
    settings: Settings,
    calendars: Mapping[str, BusinessCalendar],
    now: datetime,
) -> list[Evaluated]:
    out = []
    for h in histories:
        selection = select_policy(settings.sla, h.facts)
        if selection is None or h.ticket.created_at > now:
            out.append(Evaluated(h.ticket, None, None))
            continue
        evaluation = evaluate(selection.policy, h.events, now, calendars)
        out.append(Evaluated(h.ticket, selection.policy.name, evaluation))
    return out


def _week(day: datetime) -> str:
    iso = day.isocalendar()
    return f"{iso.year}-W{iso.week:02d}"


def sla_figures(
    in_period: Sequence[Evaluated], live: Sequence[Evaluated], now: datetime
) -> dict[str, Any]:
    frt: list[float] = []
    resolution: list[float] = []
    per_policy: dict[str, dict[str, Any]] = {}
    breaches_per_week: Counter[str] = Counter()
    for item in in_period:
        if item.evaluation is None or item.policy is None:
            continue
        stats = per_policy.setdefault(
            item.policy,
            {"policy": item.policy, "tickets": 0, "targets": 0, "breached": 0, "_f": [], "_r": []},
        )
        stats["tickets"] += 1
        ev = item.evaluation
        if ev.first_response and ev.first_response.status is TargetStatus.SATISFIED:
            frt.append(ev.first_response.elapsed_minutes)
            stats["_f"].append(ev.first_response.elapsed_minutes)
        if ev.resolution and ev.resolution.status is TargetStatus.SATISFIED:
            resolution.append(ev.resolution.elapsed_minutes)
            stats["_r"].append(ev.resolution.elapsed_minutes)
        for state in ev.states():
            stats["targets"] += 1
            if state.breached:
                stats["breached"] += 1
                due = state.due_at or state.started_at
                breaches_per_week[_week(due)] += 1
    for stats in per_policy.values():
        stats["breach_rate"] = stats["breached"] / stats["targets"] if stats["targets"] else 0.0
        f, r = stats.pop("_f"), stats.pop("_r")
        stats.update({f"frt_{k}": v for k, v in percentiles(f).items()})
        stats.update({f"resolution_{k}": v for k, v in percentiles(r).items()})
    overdue = []
    for item in live:
        if item.evaluation is None:
            continue
        for state in item.evaluation.states():
            if state.status is not TargetStatus.SATISFIED and state.breached:
                overdue.append(
                    {
                        "number": item.ticket.number,
                        "subject": item.ticket.subject,
                        "policy": item.policy,
                        "target": str(state.target),
                        "due_at": state.due_at.isoformat() if state.due_at else None,
                        "over_minutes": round(state.elapsed_minutes - state.target_minutes, 1),
                        "assignee": item.ticket.assignee,
                    }
                )
    overdue.sort(key=lambda o: (o["due_at"] or "", o["number"] or 0))
    histogram = Counter(_bucket(v) for v in frt)
    labels = [f"<={b}" for b in FRT_BUCKETS] + [f">{FRT_BUCKETS[-1]}"]
    return {
        "first_response_minutes": {"count": len(frt), **percentiles(frt)},
        "resolution_minutes": {"count": len(resolution), **percentiles(resolution)},
        "policies": sorted(per_policy.values(), key=lambda s: s["policy"]),
        "backlog": sum(1 for item in live if item.ticket.status in OPEN),
        "overdue": overdue,
        "frt_distribution": [{"bucket": label, "tickets": histogram[label]} for label in labels],
        "breaches_per_week": [
            {"week": w, "breaches": n} for w, n in sorted(breaches_per_week.items())
        ],
    }


def _bucket(minutes: float) -> str:
    for bound in FRT_BUCKETS:
        if minutes <= bound:
            return f"<={bound}"
    return f">{FRT_BUCKETS[-1]}"


def agent_figures(
    session: Session, directory: Directory, start: datetime, end: datetime
) -> list[dict[str, Any]]:
    load: Counter[str] = Counter()
    for assignee, count in session.execute(
        select(Ticket.assignee, func.count())
        .where(_live(), Ticket.assignee.is_not(None))
        .group_by(Ticket.assignee)
    ):
        if assignee:
            load[assignee] += count
    replies: Counter[str] = Counter()
    replied_tickets: dict[str, set[int]] = defaultdict(set)
    for sender, ticket_id, count in session.execute(
        select(Message.from_addr, Message.ticket_id, func.count())
        .where(
            Message.kind == MessageKind.AGENT_REPLY,
            Message.created_at >= start,
            Message.created_at < end,
        )
        .group_by(Message.from_addr, Message.ticket_id)
    ):
        agent = directory.agent_by_address(sender)
        name = agent.name if agent else sender
        replies[name] += count
        replied_tickets[name].add(ticket_id)
    resolved = resolutions(session, directory, start, end)
    names = sorted(set(directory.agents) | set(load) | set(replies) | set(resolved))
    return [
        {
            "agent": name,
            "open_assigned": load[name],
            "replies": replies[name],
            "tickets_answered": len(replied_tickets[name]),
            "resolved": resolved[name],
        }
        for name in names
    ]


def resolutions(
    session: Session, directory: Directory, start: datetime, end: datetime
) -> Counter[str]:
    """Tickets each agent resolved in ``[start, end)``, counted once per agent.

    From the status events, not ``tickets.resolved_at``: a ticket resolved,
    reopened and resolved again by a colleague counts in both weeks, for
    whoever resolved it each time. An agent's command credits that agent;
    any other resolution (the clock, the CLI) the assignee of the time,
    which events before it was recorded lack: for those, today's assignee.
    """
    rows = session.execute(
        select(Event.ticket_id, Event.data).where(
            Event.kind == "status",
            Event.at >= start,
            Event.at < end,
            Event.ticket_id.is_not(None),
        )
    )
    credited: set[tuple[str, int]] = set()
    unrecorded: list[int] = []  # resolved by no agent, the assignee of the time not recorded
    for ticket_id, data in rows:
        if not isinstance(data, dict) or data.get("to") != TicketStatus.RESOLVED:
            continue
        actor = str(data.get("actor") or "")
        agent = actor.removeprefix("agent:") if actor.startswith("agent:") else ""
        if agent not in directory.agents:
            if "assignee" not in data:
                unrecorded.append(ticket_id)
                continue
            agent = str(data["assignee"] or "")
        if agent:
            credited.add((agent, ticket_id))
    for offset in range(0, len(unrecorded), CHUNK):
        for ticket_id, assignee_now in session.execute(
            select(Ticket.id, Ticket.assignee).where(
                among(Ticket.id, unrecorded[offset : offset + CHUNK])
            )
        ):
            if assignee_now:
                credited.add((assignee_now, ticket_id))
    return Counter(agent for agent, _ticket in credited)


class _UtcDay(FunctionElement[date]):
    """The UTC day of a stored instant (SQLite keeps instants as UTC text)."""

    type = Date()
    name = "utc_day"
    inherit_cache = True


@compiles(_UtcDay, "postgresql")
def _utc_day_postgresql(element: _UtcDay, compiler: SQLCompiler, **kw: Any) -> str:
    return f"CAST(timezone('UTC', {compiler.process(element.clauses, **kw)}) AS DATE)"


@compiles(_UtcDay)
def _utc_day_sqlite(element: _UtcDay, compiler: SQLCompiler, **kw: Any) -> str:
    return f"date({compiler.process(element.clauses, **kw)})"


def _created_in(start: datetime, end: datetime) -> ColumnElement[bool]:
    """Tickets created in ``[start, end)``, merged ones left out."""
    return (
        (Ticket.created_at >= start) & (Ticket.created_at < end) & Ticket.merged_into_id.is_(None)
    )


def _live() -> ColumnElement[bool]:
    return Ticket.status.in_(OPEN) & Ticket.merged_into_id.is_(None)


# What SLA evaluation and the overdue list read of a ticket (not its JSON columns).
_SLA_COLUMNS = load_only(
    Ticket.id,
    Ticket.number,
    Ticket.subject,
    Ticket.status,
    Ticket.priority,
    Ticket.category,
    Ticket.queue,
    Ticket.requester_id,
    Ticket.assignee,
    Ticket.created_at,
    Ticket.merged_into_id,
    Ticket.sla_policy,
    Ticket.organisation,
)


def sla_section(
    session: Session,
    settings: Settings,
    directory: Directory,
    calendars: Mapping[str, BusinessCalendar],
    start: datetime,
    end: datetime,
    now: datetime,
) -> dict[str, Any]:
    """SLA figures of the tickets created in the period and of the open ones; a ticket
    in both (created lately, still open) is evaluated once."""
    created = list(
        session.scalars(
            select(Ticket).options(_SLA_COLUMNS).where(_created_in(start, end)).order_by(Ticket.id)
        )
    )
    live_tickets = list(
        session.scalars(select(Ticket).options(_SLA_COLUMNS).where(_live()).order_by(Ticket.id))
    )
    unique = sorted({t.id: t for t in (*created, *live_tickets)}.values(), key=lambda t: t.id)
    histories = load_histories(session, unique, directory)
    evaluated = {e.ticket.id: e for e in _evaluate_all(histories, settings, calendars, now)}
    in_period = [evaluated[t.id] for t in created]
    sla = sla_figures(in_period, [evaluated[t.id] for t in live_tickets], now)
    sla["tickets"] = len(created)
    sla["without_policy"] = sum(1 for e in in_period if e.policy is None)
    return sla


@dataclass
class CreatedCounts:
    """Tickets created in the period, counted by UTC day, category and first mailbox."""

    tickets: int = 0
    per_day: Counter[date] = field(default_factory=Counter)
    per_category: Counter[str] = field(default_factory=Counter)
    per_mailbox: Counter[str] = field(default_factory=Counter)


def created_counts(session: Session, start: datetime, end: datetime) -> CreatedCounts:
    created = select(
        _UtcDay(Ticket.created_at).label("day"),
        Ticket.category.label("category"),
        Ticket.support_addresses[0].as_string().label("mailbox"),
    ).where(_created_in(start, end))
    inner = created.subquery()
    counts = CreatedCounts()
    for day, category, mailbox, count in session.execute(
        select(inner.c.day, inner.c.category, inner.c.mailbox, func.count()).group_by(
            inner.c.day, inner.c.category, inner.c.mailbox
        )
    ):
        counts.tickets += count
        counts.per_day[day] += count
        counts.per_category[category or "(none)"] += count
        counts.per_mailbox["-" if mailbox is None else mailbox] += count
    return counts


def _days(start: datetime, end: datetime) -> Iterable[date]:
    """Each UTC day ``[start, end)`` touches."""
    day: date = start.date()
    while day < end.date() or (day == end.date() and end.time() != datetime.min.time()):
        yield day
        day += timedelta(days=1)


def collect(
    session: Session,
    settings: Settings,
    directory: Directory,
    calendars: Mapping[str, BusinessCalendar],
    start: datetime,
    end: datetime,
    now: datetime,
    sections: Collection[str] = SECTIONS,
) -> ReportData:
    """The figures of the named :data:`SECTIONS` (the others are left empty)."""
    data = ReportData(start, end, now)
    if "sla" in sections:
        data.sla = sla_section(session, settings, directory, calendars, start, end, now)
    if "agents" in sections:
        data.agents = agent_figures(session, directory, start, end)
    if "categories" in sections or "volume" in sections:
        counts = created_counts(session, start, end)
        data.categories = [
            {"category": c, "tickets": n} for c, n in sorted(counts.per_category.items())
        ]
        if "volume" in sections:
            data.volume = {
                "tickets": counts.tickets,
                "per_day": [
                    {"day": day.isoformat(), "tickets": counts.per_day[day]}
                    for day in _days(start, end)
                ],
                "per_mailbox": [
                    {"mailbox": m, "tickets": n} for m, n in sorted(counts.per_mailbox.items())
                ],
                "ratings": rating_figures(session, start, end),
            }
    return data


def rating_figures(session: Session, start: datetime, end: datetime) -> dict[str, Any]:
    """Customers' ratings sent in ``[start, end)``; a ticket rated twice counts its last rating."""
    last: dict[int, int] = {}
    for ticket_id, score in session.execute(
        select(Rating.ticket_id, Rating.score)
        .where(Rating.created_at >= start, Rating.created_at < end)
        .order_by(Rating.created_at, Rating.id)
    ):
        last[ticket_id] = score
    per_score = Counter(last.values())
    return {
        "tickets_rated": len(last),
        "average": round(sum(last.values()) / len(last), 2) if last else None,
        "per_score": [{"score": s, "tickets": n} for s, n in sorted(per_score.items())],
    }
