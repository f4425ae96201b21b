"""Apply an agent's parsed commands to a ticket, in order, each audited.

Only commands that parsed cleanly and make sense for this ticket are applied;
every other one is reported back with the reason. Every applied command is an
``agent_command`` event naming the agent and the trust checks that passed.

:meth:`CommandRunner.problems` tells, before anything is applied, which
commands cannot be applied as written (a typo, an unknown agent, queue,
canned answer or ticket): the writer then applies none of the mail and sends
nothing, rather than doing half of what the agent asked. A command that fails
only as it is applied (a ticket merged meanwhile) is in :attr:`Outcome.failed`,
and the writer undoes the commands before it (:mod:`maildesk.agents.writer`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from jinja2 import FileSystemLoader, StrictUndefined, TemplateNotFound
from jinja2.sandbox import SandboxedEnvironment
from sqlalchemy import Table, select
from sqlalchemy.orm import Session

from maildesk.agents.commands import Command
from maildesk.config import AgentSettings
from maildesk.db import queries
from maildesk.db.models import (
    Contact,
    Direction,
    Event,
    Intake,
    Message,
    MessageKind,
    Participant,
    ParticipantRole,
    Priority,
    Ticket,
    TicketStatus,
    Watcher,
)
from maildesk.db.upsert import insert_ignore, upsert_contact
from maildesk.outbound.notices import Notices
from maildesk.people import Directory
from maildesk.routing.assign_db import assign_ticket
from maildesk.routing.escalate import EscalationError, escalate
from maildesk.routing.feedback import correct_category, move_queue
from maildesk.tickets import change_status, merge_tickets

CONTACTS: Table = Contact.__table__  # type: ignore[assignment]


@dataclass
class Outcome:
    applied: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    note: bool = False
    spam: bool = False
    resolved: bool = False
    inserted: list[str] = field(default_factory=list)  # #template texts, in order
    assignee_before: str | None = None
    assignment_changed: bool = False
    escalated: tuple[str, str] | None = None  # (new group, why) of the last #escalate


class CommandRunner:
    def __init__(
        self,
        session: Session,
        ticket: Ticket,
        agent: AgentSettings,
        *,
        directory: Directory,
        notices: Notices,
        now: datetime,
        checks: Sequence[str],
        intake_id: int | None,
    ) -> None:
        self.session = session
        self.ticket = ticket
        self.agent = agent
        self.directory = directory
        self.notices = notices
        self.now = now
        self.checks = list(checks)
        self.intake_id = intake_id

    def run(self, commands: Sequence[Command]) -> Outcome:
        out = Outcome(assignee_before=self.ticket.assignee)
        for command in commands:
            error = command.error or self._apply(command, out)
            if error is None:
                out.applied.append(command.line)
                self._event("agent_command", f"{command.line} by {self.agent.name}", command)
            else:
                out.failed.append(f"{command.line} ({error})")
                self._event(
                    "agent_command_failed",
                    f"{command.line} by {self.agent.name} not applied: {error}",
                    command,
                )
        out.assignment_changed = self.ticket.assignee != out.assignee_before
        return out

    def problems(self, commands: Sequence[Command]) -> list[str]:
        """``"<line> (<why>)"`` for each command that cannot be applied as written.

        Read-only, and only what does not depend on the commands before it: a
        syntax error, or a name (agent, group, queue, canned answer, ticket)
        that does not exist. What only applying can tell (an escalation past
        the top, a merge another node made first) shows in :meth:`run`'s
        ``failed``, and the writer then undoes the whole mail.
        """
        out = []
        for command in commands:
            error = command.error or self._problem(command)
            if error is not None:
                out.append(f"{command.line} ({error})")
        return out

    def _problem(self, command: Command) -> str | None:
        name, arg = command.name, command.arg
        if name == "assign":
            who = self.agent.name if arg.lower() == "me" else arg
            if self.directory.agent(who) is None and self.directory.group(who) is None:
                return f"no agent or group named {arg!r}"
        elif name == "queue":
            return self._unknown_queue(arg)
        elif name == "escalate" and arg and self.directory.group(arg) is None:
            return f"unknown group {arg!r}"
        elif name == "cc" and self.notices.settings.is_own_address(arg):
            # A sub-address (support+sales@, a signed reply address) or an internal
            # address is ours too: never a customer-side participant.
            return "that is one of our own addresses"
        elif name == "merge":
            return self._merge_target(arg)[1]
        elif name == "template":
            return self._render_template(arg)[1]
        return None

    def _unknown_queue(self, arg: str) -> str | None:
        """Why ``arg`` names no queue (listing the known ones), or None."""
        settings = self.notices.settings
        known = {
            *settings.routing.queue_groups,
            *settings.routing.default_responsible,
            *(a.queue for a in settings.address if a.queue),
        }
        if arg in known:
            return None
        listed = f" (known: {', '.join(sorted(known))})" if known else ""
        return f"no queue named {arg!r}{listed}"

    def _merge_target(self, arg: str) -> tuple[Ticket | None, str | None]:
        """The ticket ``#merge arg`` names, or None and why it cannot be merged here."""
        other = queries.ticket_by_number(self.session, int(arg))
        if other is None:
            return None, f"no ticket #{arg}"
        if other.id == self.ticket.id:
            return None, "cannot merge a ticket into itself"
        return other, None

    def _event(self, kind: str, reason: str, command: Command) -> None:
        data = {"command": command.name, "arg": command.arg, "agent": self.agent.name}
        self._record(kind, reason, {**data, "checks": self.checks})

    def _apply(self, command: Command, out: Outcome) -> str | None:
        handler = getattr(self, f"_do_{command.name}")
        result: str | None = handler(command.arg, out)
        return result

    # -- one method per command: None when applied, else why not ----------------

    def _do_status(self, arg: str, out: Outcome) -> str | None:
        status = TicketStatus(arg)
        if change_status(self.session, self.ticket, status, self.now, None, actor=self._actor):
            out.resolved = status is TicketStatus.RESOLVED
        return None

    def _do_assign(self, arg: str, out: Outcome) -> str | None:
        name = self.agent.name if arg.lower() == "me" else arg
        if self.directory.agent(name) is not None:
            self.ticket.assignee = name
            return None
        if self.directory.group(name) is not None:
            # The group's strategy picks an agent now if one is eligible, as for a new
            # ticket; else the ticket waits for one (maildesk.routing.waiting).
            self.ticket.group, self.ticket.assignee = name, None
            assign_ticket(
                self.session,
                self.ticket,
                settings=self.notices.settings,
                directory=self.directory,
                now=self.now,
                record=self._record,
            )
            return None
        return f"no agent or group named {arg!r}"

    def _do_priority(self, arg: str, out: Outcome) -> str | None:
        self.ticket.priority = Priority(arg)
        return None

    @property
    def _actor(self) -> str:
        return f"agent:{self.agent.name}"

    def _record(self, kind: str, reason: str, data: dict[str, Any]) -> None:
        self.session.add(
            Event(
                at=self.now,
                kind=kind,
                reason=reason,
                ticket_id=self.ticket.id,
                intake_id=self.intake_id,
                data=data,
            )
        )

    def _do_category(self, arg: str, out: Outcome) -> str | None:
        """A correction: the category model learns it (``routing.learn_corrections``)."""
        settings = self.notices.settings
        correct_category(
            self.session,
            self.ticket,
            arg,
            actor=self._actor,
            settings=settings,
            now=self.now,
            record=self._record,
        )
        return None

    def _do_queue(self, arg: str, out: Outcome) -> str | None:
        """Move to another queue: its group takes the ticket, the queue model learns."""
        settings = self.notices.settings
        if (unknown := self._unknown_queue(arg)) is not None:
            return unknown
        if arg == self.ticket.queue:
            return None  # already as asked: nothing to do, and no reason to hold the answer
        move_queue(
            self.session,
            self.ticket,
            arg,
            actor=self._actor,
            settings=settings,
            directory=self.directory,
            now=self.now,
            record=self._record,
        )
        return None

    def _do_escalate(self, arg: str, out: Outcome) -> str | None:
        """Up a tier (the group's ``escalates_to``) or to the named group; the group is told."""
        before = self.ticket.group
        if arg and arg == before:
            return None  # already with that group: as asked
        try:
            group = escalate(
                self.session,
                self.ticket,
                arg or None,
                actor=self._actor,
                settings=self.notices.settings,
                directory=self.directory,
                now=self.now,
                record=self._record,
            )
        except EscalationError as exc:
            return str(exc)
        out.escalated = (
            group,
            f"escalated by {self.agent.name} from {before or 'no group'} to {group}",
        )
        return None

    def _do_note(self, arg: str, out: Outcome) -> str | None:
        out.note = True
        return None

    def _do_watch(self, arg: str, out: Outcome) -> str | None:
        self._watch(self.agent.name)
        return None

    def _watch(self, name: str) -> None:
        insert_ignore(
            self.session,
            Watcher,
            {
                "ticket_id": self.ticket.id,
                "agent": name,
                "added_by": self._actor,
                "created_at": self.now,
            },
            ["ticket_id", "agent"],
        )

    def _do_cc(self, arg: str, out: Outcome) -> str | None:
        """A customer-side address joins the conversation; an agent's address, the watchers."""
        settings = self.notices.settings
        if settings.is_own_address(arg):
            return "that is one of our own addresses"
        colleague = self.directory.agent_by_address(arg)
        if colleague is not None:
            self._watch(colleague.name)
            return None
        contact = upsert_contact(self.session, CONTACTS, arg, "", self.now)
        insert_ignore(
            self.session,
            Participant,
            {"ticket_id": self.ticket.id, "contact_id": contact, "role": ParticipantRole.CC.value},
            ["ticket_id", "contact_id"],
        )
        return None

    def _do_merge(self, arg: str, out: Outcome) -> str | None:
        other, problem = self._merge_target(arg)
        if other is None:
            return problem
        reason = f"#merge by agent {self.agent.name}"
        if not merge_tickets(self.session, other, self.ticket, self.now, reason=reason):
            # Decided on the locked rows: another node's merge may have come first.
            merged = other if other.merged_into_id is not None else self.ticket
            which = f"#{arg}" if merged is other else "this ticket"
            return f"{which} is already merged into another ticket"
        return None

    def _do_spam(self, arg: str, out: Outcome) -> str | None:
        out.spam = True
        return self._feedback("spam")

    def _do_ham(self, arg: str, out: Outcome) -> str | None:
        return self._feedback("ham")

    def _feedback(self, label: str) -> str | None:
        first = self.session.scalars(
            select(Message)
            .where(
                Message.ticket_id == self.ticket.id,
                Message.direction == Direction.INBOUND,
                Message.kind == MessageKind.CUSTOMER,
            )
            .order_by(Message.id)
            .limit(1)
        ).first()
        if first is None:
            return "the ticket has no customer mail to judge"
        try:
            from maildesk.spam.feedback import SpamLabel, record_feedback, settle_ticket
        except ImportError:  # pragma: no cover - the spam feedback module is optional
            return None  # the agent_command event is the record
        record_feedback(
            self.session,
            message_pk=first.id,
            label=label,
            source="agent",
            actor=self.agent.name,
            now=self.now,
        )
        intake = self.session.scalars(
            select(Intake).where(Intake.message_pk == first.id).limit(1)
        ).first()
        if intake is not None:
            actor = f"agent:{self.agent.name}"
            notices = self.notices  # #ham sends what the flag held back, as `spam mark ham` does
            settle_ticket(self.session, intake, SpamLabel(label), notices, self.now, actor=actor)
        return None

    def _do_template(self, arg: str, out: Outcome) -> str | None:
        text, error = self._render_template(arg)
        if text is None:
            return error
        out.inserted.append(text.strip("\n"))
        return None

    def _render_template(self, arg: str) -> tuple[str | None, str | None]:
        """The canned answer ``arg`` rendered for this ticket, or None and why not."""
        customer = self.ticket.requester or Contact(email="", name="")
        variables: dict[str, Any] = self.notices.variables(self.ticket, customer)
        variables["agent"] = {"name": self.agent.name, "display_name": self.agent.display_name}
        directory = self.notices.renderer.directory / "answers"
        env = SandboxedEnvironment(
            loader=FileSystemLoader(str(directory)),
            undefined=StrictUndefined,
            autoescape=False,
            keep_trailing_newline=True,
        )
        try:
            return env.get_template(f"{arg}.txt.j2").render(variables), None
        except TemplateNotFound:
            return None, f"no canned answer {arg!r} in {directory}"
        except Exception as exc:  # the canned answer's own code failed, not ours
            # A syntax error, a misspelt variable, or a runtime error of its own (a number
            # format given None): the agent is told, the mail is not quarantined unread.
            return None, f"canned answer {arg!r} does not render: {exc}"
