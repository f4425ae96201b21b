"""Breach and warning actions: notify people, raise priority, reassign, add watchers.

Runs inside the sweep's transaction, right after the ledger row was inserted,
so the outbox rows and ticket changes commit (or roll back) with it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from maildesk.config import AgentSettings, Settings
from maildesk.db.models import Event, Priority, Ticket, Watcher
from maildesk.db.upsert import insert_ignore
from maildesk.outbound.agent_notices import AgentNotices
from maildesk.outbound.compose import OutboundMail, Recipient
from maildesk.outbound.notices import Notices
from maildesk.outbound.templates import TemplateMissing
from maildesk.people import Directory
from maildesk.routing.assign_db import assign_ticket, event_recorder
from maildesk.sla.policy import TargetState
from maildesk.sla.settings import ESCALATES_TO, EscalationSettings, Level, NotifyWhom

_PRIORITIES = list(Priority)


@dataclass(frozen=True, slots=True)
class Escalation:
    """One ledger entry about to be acted on."""

    ticket: Ticket
    state: TargetState
    level: Level
    policy: str
    due_at: datetime
    late: bool


@dataclass(frozen=True, slots=True)
class _Person:
    address: str
    name: str
    agent: AgentSettings | None


def raised(priority: Priority) -> Priority:
    index = _PRIORITIES.index(priority)
    return _PRIORITIES[min(index + 1, len(_PRIORITIES) - 1)]


class EscalationActions:
    def __init__(
        self,
        settings: Settings,
        notices: Notices,
        directory: Callable[[], Directory],
        clock: Callable[[], datetime],
    ) -> None:
        self.settings = settings
        self.notices = notices
        self._directory = directory
        self.clock = clock

    @property
    def directory(self) -> Directory:
        return self._directory()

    def apply(self, session: Session, esc: Escalation, spec: EscalationSettings) -> list[str]:
        """Carry out ``spec`` for ``esc``; returns what was done, for the ledger and event."""
        ticket = esc.ticket
        done: list[str] = []
        # Who was responsible when it happened, and (after a reassignment) who is now.
        people = self._recipients(session, ticket, spec.notify)
        if spec.raise_priority:
            before = ticket.priority
            ticket.priority = raised(before)
            if ticket.priority != before:
                done.append(f"priority {before} -> {ticket.priority}")
        if spec.reassign_to_group is not None:
            group = spec.reassign_to_group
            if group == ESCALATES_TO:
                current = self.directory.group(ticket.group) if ticket.group else None
                group = current.escalates_to if current and current.escalates_to else ""
            if group and group != ticket.group:
                done.append(self._reassign(session, ticket, group, esc.policy, spec.notify, people))
        for agent in spec.add_watchers:
            insert_ignore(
                session,
                Watcher,
                {
                    "ticket_id": ticket.id,
                    "agent": agent,
                    "added_by": f"sla:{esc.policy}",
                    "created_at": self.clock(),
                },
                ["ticket_id", "agent"],
            )
            done.append(f"watcher {agent}")
        for address, person in self._recipients(session, ticket, spec.notify).items():
            people.setdefault(address, person)
        done += self._notify(session, esc, spec, list(people.values()))
        ticket.updated_at = max(ticket.updated_at, self.clock())
        session.add(
            Event(
                at=self.clock(),
                kind=f"sla_{esc.level}",
                reason=(
                    f"{esc.state.target} {esc.level} (policy {esc.policy}, due "
                    f"{esc.due_at:%Y-%m-%d %H:%M} UTC{', late' if esc.late else ''}): "
                    + ("; ".join(done) or "no action configured")
                ),
                ticket_id=ticket.id,
                data={
                    "target": str(esc.state.target),
                    "instance": esc.state.instance,
                    "level": str(esc.level),
                    "policy": esc.policy,
                    "due_at": esc.due_at.isoformat(),
                    "late": esc.late,
                    "actions": done,
                },
            )
        )
        return done

    def _reassign(
        self,
        session: Session,
        ticket: Ticket,
        group: str,
        policy: str,
        notify: tuple[NotifyWhom, ...],
        people: dict[str, _Person],
    ) -> str:
        """Move ``ticket`` to ``group`` and assign it there by the group's strategy.

        With nobody eligible it waits there (:mod:`maildesk.routing.waiting`).
        The new assignee is told unless the breach notice reaches them anyway.
        """
        done = f"reassigned {ticket.group or '-'} -> {group}"
        ticket.group, ticket.assignee = group, None
        now = self.clock()
        result = assign_ticket(
            session,
            ticket,
            settings=self.settings,
            directory=self.directory,
            now=now,
            record=event_recorder(session, ticket, now),
        )
        if result is None or result.agent is None:
            return done + " (nobody eligible there: waiting)"
        agent = self.directory.agent(result.agent)
        reached = {*people, *self._recipients(session, ticket, notify)}
        if agent is None or agent.addresses[0] not in reached:
            AgentNotices(self.notices, self.directory).assigned(
                session, ticket, None, f"sla:{policy}"
            )
        return done + f" (assigned to {result.agent})"

    def _people(self, session: Session, ticket: Ticket, whom: NotifyWhom) -> list[_Person]:
        d = self.directory
        names: list[str] = []
        if whom is NotifyWhom.ASSIGNEE and ticket.assignee:
            names = [ticket.assignee]
        elif whom is NotifyWhom.LEAD and ticket.group:
            group = d.group(ticket.group)
            names = [group.lead] if group and group.lead else []
        elif whom is NotifyWhom.WATCHERS:
            names = list(
                session.scalars(select(Watcher.agent).where(Watcher.ticket_id == ticket.id))
            )
        elif whom is NotifyWhom.GROUP and ticket.group:
            group = d.group(ticket.group)
            if group is not None and group.address:
                return [_Person(group.address, group.name, None)]
            names = [a.name for a in d.members(ticket.group)]
        people = []
        for name in names:
            agent = d.agent(name)
            if agent is not None:
                people.append(_Person(agent.addresses[0], agent.display_name or name, agent))
        return people

    def _recipients(
        self, session: Session, ticket: Ticket, notify: tuple[NotifyWhom, ...]
    ) -> dict[str, _Person]:
        seen: dict[str, _Person] = {}
        for whom in notify:
            for person in self._people(session, ticket, whom):
                seen.setdefault(person.address, person)
        return seen

    def _notify(
        self, session: Session, esc: Escalation, spec: EscalationSettings, seen: list[_Person]
    ) -> list[str]:
        template = spec.template or f"sla_{esc.level}"
        done = []
        for person in seen:
            try:
                done.append(self._queue(session, esc, template, person))
            except TemplateMissing as exc:
                done.append(f"not mailed to {person.address}: {exc}")
        if spec.notify and not seen:
            done.append(f"nobody to notify ({', '.join(spec.notify)})")
        return done

    def _variables(self, esc: Escalation, person: _Person) -> dict[str, Any]:
        t, s = esc.ticket, esc.state
        return {
            "ticket": {
                "number": t.number,
                "subject": t.subject,
                "status": str(t.status),
                "priority": str(t.priority),
                "category": t.category,
                "group": t.group,
                "assignee": t.assignee,
            },
            "sla": {
                "target": str(s.target).replace("_", " "),
                "level": str(esc.level),
                "policy": esc.policy,
                "due_at": f"{s.due_at:%Y-%m-%d %H:%M} UTC" if s.due_at else "",
                "at": f"{esc.due_at:%Y-%m-%d %H:%M} UTC",
                "elapsed_minutes": round(s.elapsed_minutes),
                "target_minutes": round(s.target_minutes),
                "late": esc.late,
            },
            "recipient": {"name": person.name, "email": person.address},
            "support": {
                "name": self.notices.from_name_for(t),
                "address": self.notices.support_address_for(t),
            },
        }

    def _queue(self, session: Session, esc: Escalation, template: str, person: _Person) -> str:
        rendered = self.notices.renderer.render(
            template, "agent", self._variables(esc, person), queue=esc.ticket.queue
        )
        mail = OutboundMail(
            purpose=f"sla_{esc.level}",
            ticket=esc.ticket,
            recipients=[Recipient(person.address, person.name)],
            rendered=rendered,
            support_address=self.notices.support_address_for(esc.ticket),
            auto_submitted="auto-generated",
            from_name=self.notices.from_name_for(esc.ticket),
            # "Reply to this mail": signed for the agent, so the reply counts as theirs.
            agent=person.agent.name if person.agent is not None else "",
        )
        row = self.notices.composer.queue(session, mail)
        now = self.clock()
        agent = person.agent
        if (
            self.settings.sla.hold_until_working_hours
            and agent is not None
            and not self.directory.on_shift(agent, now)
        ):
            row.next_attempt_at = self.directory.next_on_shift(agent, now)
            return f"mail to {person.address} held until {row.next_attempt_at:%Y-%m-%d %H:%M} UTC"
        return f"mail to {person.address}"
