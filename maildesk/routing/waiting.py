"""Tickets waiting for an agent: assigned once one becomes eligible (a scheduler job).

A new ticket that found nobody eligible in its group (everyone off shift or
at their cap) and no default responsible is left unassigned; agents work
only from their mail, so nobody would pick it up. Every
``routing.waiting_interval_seconds`` this job gives such tickets, oldest
first, to the agents eligible now, by the same rules as a new ticket (shift,
cap, sticky, skill, the group's rotation), and tells each agent as any
assignment does.

Waiting means: the ticket's last ``assigned`` event left it without an agent
(rule ``none``) and it still has none; new or open (not pending, resolved or
closed); not merged, not possible spam; in a group whose strategy is not
``none``, or in no group (none, or one no longer configured): those wait for
any agent (:func:`maildesk.routing.assign.all_agents`). A ticket nobody was
ever asked to take (automated mail) or one an agent or rule assigned does not
wait.

Each group's tickets are assigned in one transaction that holds the
assignment lock (:func:`assign_db.lock_group`: one assigner at a time on
PostgreSQL, so two nodes never both count an agent below their cap) and
locks the tickets it takes ``FOR NO KEY UPDATE SKIP LOCKED`` (a ticket a
mail or an agent is changing right now waits for the next run). The open
counts are counted afresh for every ticket (the same count serves the choice
and the "why now" of its event), so the cap holds across the batch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from apscheduler.schedulers.base import BaseScheduler
from sqlalchemy import ColumnElement, Select, func, or_, select
from sqlalchemy.orm import Session

from maildesk.config import AgentSettings, GroupSettings, Settings
from maildesk.db.database import Database
from maildesk.db.models import Event, Ticket, TicketStatus
from maildesk.outbound.agent_notices import AgentNotices
from maildesk.outbound.notices import Notices
from maildesk.people import Directory
from maildesk.routing.assign import Strategy, all_agents, cap_of, is_all_agents
from maildesk.routing.assign_db import choose_in_group, lock_group

if TYPE_CHECKING:
    from maildesk.app import App

log = logging.getLogger("maildesk.routing")

WAITING_STATUSES = (TicketStatus.NEW, TicketStatus.OPEN)
BATCH = 200  # tickets per group and run; the rest wait for the next run


@dataclass(frozen=True)
class Assigned:
    number: int
    agent: str
    reason: str


def waiting_groups(directory: Directory) -> list[GroupSettings]:
    """The groups that assign by themselves (strategy other than ``none``), then the
    pool of the tickets with no group (:meth:`Directory.without_group`), when it has anyone."""
    groups = [g for g in directory.groups.values() if g.strategy != Strategy.NONE]
    return [*groups, all_agents()] if directory.without_group() else groups


def _in_group(group: GroupSettings, directory: Directory) -> ColumnElement[bool]:
    if not is_all_agents(group):
        return Ticket.group == group.name
    # No group, or one taken out of the config: nobody else gives these out.
    return or_(Ticket.group.is_(None), Ticket.group.not_in(list(directory.groups)))


def _waiting_query(
    group: GroupSettings, directory: Directory, limit: int
) -> Select[Ticket, datetime, Any]:
    last_assigned = (
        select(func.max(Event.id))
        .where(Event.ticket_id == Ticket.id, Event.kind == "assigned")
        .correlate(Ticket)
        .scalar_subquery()
    )
    return (
        select(Ticket, Event.at, Event.data)
        .join(Event, Event.id == last_assigned)
        .where(
            _in_group(group, directory),
            Ticket.assignee.is_(None),
            Ticket.status.in_(WAITING_STATUSES),
            Ticket.merged_into_id.is_(None),
            Ticket.possible_spam.is_(False),
            Event.data["rule"].as_string() == "none",
        )
        .order_by(Ticket.id)
        .limit(limit)
    )


def _why_now(
    agent: AgentSettings | None,
    group: GroupSettings,
    since: datetime,
    directory: Directory,
    counts: dict[str, int],
) -> str:
    """What changed for ``agent`` since the ticket started waiting."""
    if agent is None:
        return "now available"
    if not directory.on_shift(agent, since):
        return f"{agent.name} came on shift"
    cap = cap_of(agent, group)
    if cap is not None:
        return f"{agent.name} is below their cap now ({counts.get(agent.name, 0)}/{cap})"
    return f"{agent.name} is available now"


def assign_waiting_in_group(
    session: Session,
    group: GroupSettings,
    *,
    settings: Settings,
    directory: Directory,
    notices: Notices,
    now: datetime,
    limit: int = BATCH,
) -> list[Assigned]:
    """Assign the group's waiting tickets, oldest first, while someone is eligible."""
    if session.execute(_waiting_query(group, directory, 1)).first() is None:
        return []  # the usual case: nothing waits, no lock taken
    lock_group(session, group.name, now)
    rows = session.execute(
        _waiting_query(group, directory, limit).with_for_update(
            of=Ticket, skip_locked=True, key_share=True
        )
    ).all()
    told = AgentNotices(notices, directory)
    done: list[Assigned] = []
    for ticket, since, data in rows:
        since = since if since.tzinfo else since.replace(tzinfo=UTC)
        # A reopened ticket that found its last assignee away goes back to them if
        # they are the one available now, as it would have when it reopened.
        result, counts = choose_in_group(
            session,
            ticket,
            group,
            settings=settings,
            directory=directory,
            now=now,
            reopened=bool(data and data.get("reopened")),
        )
        if result.agent is None:
            break  # nobody eligible: no later ticket of this group finds anyone either
        ticket.assignee = result.agent
        waited = f"waiting since {since:%Y-%m-%d %H:%M} UTC"
        if result.rule == "default_responsible":  # one configured since: their shift is moot
            reason = f"assigned to {result.agent}: {waited}; {result.reason}"
        else:
            why = _why_now(directory.agent(result.agent), group, since, directory, counts)
            reason = f"assigned to {result.agent}: {waited}; {why}: {result.reason}"
        session.add(
            Event(
                at=now,
                kind="assigned",
                reason=reason,
                ticket_id=ticket.id,
                data={
                    "agent": result.agent,
                    "group": ticket.group,
                    "rule": result.rule,
                    "waiting_since": since.isoformat(),
                },
            )
        )
        session.flush()  # the next ticket's open counts include this one
        told.assigned(session, ticket, None, f"maildesk: {waited}")
        assert ticket.number is not None
        done.append(Assigned(ticket.number, result.agent, reason))
        log.info("ticket #%s %s", ticket.number, reason)
    return done


class WaitingNotAssigned(RuntimeError):
    """Some group's waiting tickets could not be assigned in this run (logged above)."""


class WaitingAssigner:
    """The scheduler job: one transaction per group."""

    def __init__(
        self,
        db: Database,
        settings: Settings,
        notices: Notices,
        directory: Callable[[], Directory],
        clock: Callable[[], datetime],
    ) -> None:
        self.db = db
        self.settings = settings
        self.notices = notices
        self._directory = directory
        self.clock = clock

    @classmethod
    def for_app(cls, app: App) -> WaitingAssigner:
        return cls(app.db, app.settings, app.notices(), lambda: app.directory, app.clock)

    def run(self) -> list[Assigned]:
        directory = self._directory()
        done: list[Assigned] = []
        failed: list[str] = []
        for group in waiting_groups(directory):
            try:
                with self.db.transaction() as session:
                    done += assign_waiting_in_group(
                        session,
                        group,
                        settings=self.settings,
                        directory=directory,
                        notices=self.notices,
                        now=self.clock(),
                    )
            except Exception:  # one group's failure must not keep the others waiting
                log.exception("waiting tickets of group %s not assigned this time", group.name)
                failed.append(group.name)
        if failed:  # the run did not succeed: the scheduler (and the metrics) see it
            raise WaitingNotAssigned(f"waiting tickets of {', '.join(failed)} not assigned")
        return done


def add_waiting_assignment(scheduler: BaseScheduler, app: App) -> WaitingAssigner | None:
    """Schedule the job; None when routing is off or nobody assigns by themselves."""
    routing = app.settings.routing
    if not routing.enabled:
        return None
    if not app.directory.agents:
        log.warning(
            "no agents are configured: new tickets are assigned to nobody and no agent is told"
        )
    if not waiting_groups(app.directory):
        return None
    assigner = WaitingAssigner.for_app(app)
    scheduler.add_job(
        assigner.run,
        "interval",
        seconds=routing.waiting_interval_seconds,
        id="waiting-assignment",
        max_instances=1,
        coalesce=True,
        next_run_time=datetime.now(UTC),  # tickets that came in while the daemon was down
    )
    return assigner
