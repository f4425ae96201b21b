"""Mail to agents (MAIL-RULES §5): notifications, command results, held-mail warnings.

Every mail here goes to one agent and carries a Reply-To sub-address and a
Message-ID signed for that agent and ticket, so the agent's reply can be
trusted as theirs. The first body line is the reply marker, so quote
stripping cuts the whole notification (with its internal notes) from an
answer. Internal notes appear only here, in mail to agents.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime, timedelta
from email.errors import HeaderParseError
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, aliased

from maildesk.config import AgentSettings
from maildesk.db import queries
from maildesk.db.models import (
    Contact,
    Event,
    HeldAgentMail,
    Message,
    MessageKind,
    Outbox,
    Ticket,
    TicketStatus,
    Watcher,
)
from maildesk.domain.author import shown_sender
from maildesk.domain.quotes import REPLY_MARKER_TEMPLATE
from maildesk.outbound.compose import OutboundMail, Recipient
from maildesk.outbound.notices import Notices
from maildesk.outbound.templates import TemplateMissing
from maildesk.people import Directory

TEXT_LIMIT = 8000
NOTES_SHOWN = 5
UNCONFIRMED_AUTHOR = " (unverified: kept on its From alone)"
# Notices about where a ticket stands: one held for the agent's shift is not sent
# once an agent answered the customer or the ticket was resolved, closed or
# merged meanwhile (a command's result or a held-mail warning always is).
# Notices about work to do, which a colleague's answer or a resolution overtakes. Not
# "assigned": the ticket is still the agent's, whoever answered meanwhile.
OVERTAKEN_KINDS = frozenset(
    {"new_ticket", "customer_reply", "escalated", "sla_warning", "sla_breach"}
)


def marker_line(notices: Notices, ticket: Ticket) -> str:
    assert ticket.number is not None
    return REPLY_MARKER_TEMPLATE.format(ref=notices.composer.signer.body_marker(ticket.number))


class AgentNotices:
    def __init__(self, notices: Notices, directory: Directory) -> None:
        self.notices = notices
        self.directory = directory

    @property
    def now(self) -> datetime:
        return self.notices.clock()

    # -- who ---------------------------------------------------------------

    def _watchers(self, session: Session, ticket: Ticket) -> list[str]:
        return list(session.scalars(select(Watcher.agent).where(Watcher.ticket_id == ticket.id)))

    def _agents(self, names: Sequence[str | None], pref: str | None) -> list[AgentSettings]:
        """The present agents of ``names``, each once, who want ``pref`` notices (None: any)."""
        out: dict[str, AgentSettings] = {}
        for name in names:
            agent = self.directory.agent(name) if name else None
            if agent is None or (pref is not None and not getattr(agent.notify, pref)):
                continue
            if self.directory.is_absent(agent, self.now):
                continue
            out.setdefault(agent.name, agent)
        return list(out.values())

    def _group_members(self, ticket: Ticket) -> list[str]:
        """The ticket's group; for a ticket of no group (or one no longer configured),
        every agent: it waits for any of them (:func:`maildesk.routing.assign.all_agents`)."""
        if ticket.group and self.directory.group(ticket.group) is not None:
            return [a.name for a in self.directory.members(ticket.group)]
        return [a.name for a in self.directory.without_group()]

    def _first_or_group(self, ticket: Ticket, *names: str | None) -> list[str]:
        """The first of ``names`` a notice can reach, else the ticket's group.

        The group stands in for people nobody can reach: one who left the
        config or is away.
        """
        reachable = next((name for name in names if self._reachable(name)), None)
        return [reachable] if reachable else self._group_members(ticket)

    # -- what ----------------------------------------------------------------

    def _reachable(self, name: str | None) -> bool:
        """An agent of the config who is not away: someone a notice can reach now or soon."""
        agent = self.directory.agent(name) if name else None
        return agent is not None and not self.directory.is_absent(agent, self.now)

    def after_customer_mail(
        self,
        session: Session,
        ticket: Ticket,
        message: Message,
        *,
        created: bool,
        reopened: bool,
        assignee_before: str | None,
        told: Collection[str] = (),
        extra: dict[str, Any] | None = None,
    ) -> None:
        """Tell the assignee (else the group) and the watchers, each agent once.

        ``told``: agents already mailed about this customer mail (an escalation
        notice to the new group), who get nothing more.
        ``extra``: more for a reply's notice (a rating's score, the text to show).
        """
        if not self.directory.agents or ticket.possible_spam:
            return
        skip = set(told)
        if not created and ticket.assignee != assignee_before:
            skip |= self.assigned(
                session,
                ticket,
                assignee_before,
                "maildesk (routing)",
                message,
                skip=skip,
                extra=extra,
            )
        names = [*self._first_or_group(ticket, ticket.assignee), *self._watchers(session, ticket)]
        event = "new_ticket" if created else "customer_reply"
        more = dict(extra or {}) if created else {"reopened": reopened, **(extra or {})}
        for agent in self._agents(names, event):
            if agent.name not in skip:
                self.send(session, ticket, agent, event, message, more)

    def assigned(
        self,
        session: Session,
        ticket: Ticket,
        before: str | None,
        by: str,
        message: Message | None = None,
        *,
        skip: Collection[str] = (),
        extra: dict[str, Any] | None = None,
    ) -> set[str]:
        """Tell the new assignee (and the previous one) about an assignment change.

        Returns the names of the agents mailed; those in ``skip`` are not. ``extra``:
        more for the notice (a rating's words, shown as the customer's text).
        """
        told: set[str] = set()
        for name, to_you in ((ticket.assignee, True), (before, False)):
            for agent in self._agents([name], "assignment"):
                if agent.name in skip or agent.name in told:
                    continue
                more = {
                    **(extra or {}),
                    "assignment": {"to_you": to_you, "agent": ticket.assignee, "by": by},
                }
                if self.send(session, ticket, agent, "assigned", message, more):
                    told.add(agent.name)
        return told

    def delivery_failed(
        self, session: Session, ticket: Ticket, author: str, failure: dict[str, Any]
    ) -> list[str]:
        """Tell the author of a mail that was not delivered (else the assignee, else the
        group, whatever their preferences); returns whom.

        Held for a shift like any notice about work to do, never dropped for it:
        ``delivery_failed`` is none of :data:`OVERTAKEN_KINDS`.
        """
        names = self._first_or_group(ticket, author, ticket.assignee)
        extra = {"failure": {**failure, "to_author": len(names) == 1 and names[0] == author}}
        return [
            agent.name
            for agent in self._agents(names, None)
            if self.send(session, ticket, agent, "delivery_failed", None, extra)
        ]

    def escalated(self, session: Session, ticket: Ticket, group: str, why: str) -> set[str]:
        """Tell every present member of the group a ticket was escalated to; returns whom."""
        members = [a.name for a in self.directory.members(group)]
        extra = {"escalation": {"group": group, "why": why}}
        return {
            agent.name
            for agent in self._agents(members, "new_ticket")
            if self.send(session, ticket, agent, "escalated", None, extra)
        }

    # -- how -----------------------------------------------------------------

    def notes(self, session: Session, ticket: Ticket) -> list[dict[str, str]]:
        """The ticket's last notes, each with its author as far as it is known.

        A note kept on its From alone (mail to the internal address, or an agent's
        new mail with commands, with no signed reference and no DKIM/SPF/DMARC
        pass) may be anyone's: its author is shown unconfirmed until the agent
        confirms that mail by a signed reply, so a forged "note from Bob" is not
        taken for Bob's word.
        """
        rows = session.scalars(
            select(Message)
            .where(Message.ticket_id == ticket.id, Message.kind == MessageKind.INTERNAL_NOTE)
            .order_by(Message.id.desc())
            .limit(NOTES_SHOWN)
        ).all()
        unconfirmed = _from_only_notes(session, [r.id for r in rows])
        return [
            {
                "by": (r.from_name or r.from_addr)
                + (UNCONFIRMED_AUTHOR if r.id in unconfirmed else ""),
                "at": f"{r.created_at:%Y-%m-%d %H:%M} UTC",
                "text": r.text_body.strip()[:TEXT_LIMIT],
            }
            for r in reversed(rows)
        ]

    def variables(
        self, session: Session, ticket: Ticket, agent: AgentSettings, message: Message | None
    ) -> dict[str, Any]:
        customer = ticket.requester or Contact(email="", name="")
        base = self.notices.variables(ticket, customer)
        base["ticket"].update(
            {"group": ticket.group, "assignee": ticket.assignee, "tags": list(ticket.tags or [])}
        )
        if message is None:
            message = queries.last_customer_message(session, ticket)
        # Who wrote this mail, which need not be the requester (a Cc participant, the
        # customer's second address): agents act on what a mail asks, so they are told
        # the address it came from, and a name that looks like an address is not shown.
        requester = shown_sender(customer.name, customer.email)
        sender = shown_sender(message.from_name, message.from_addr) if message else requester
        return {
            **base,
            "requester": requester,
            "sender": sender,
            "reply_to": [],
            "marker": marker_line(self.notices, ticket),
            "recipient": {"name": agent.display_name or agent.name, "agent": agent.name},
            "text": (message.text_body if message is not None else "")[:TEXT_LIMIT],
            "notes": self.notes(session, ticket),
        }

    def send(
        self,
        session: Session,
        ticket: Ticket,
        agent: AgentSettings,
        event: str,
        message: Message | None = None,
        extra: dict[str, Any] | None = None,
        *,
        reply_purpose: str = "",
        reply_extra: tuple[str, ...] = (),
        hold: bool = True,
    ) -> bool:
        """Render ``<event>.agent`` for ``agent`` and queue it; False (with an event) if not.

        ``hold``: an agent off shift gets it when their shift starts. Not for an
        answer to the agent's own mail: they are at it now, off shift or not.
        """
        notices = self.notices
        try:
            variables = {**self.variables(session, ticket, agent, message), **(extra or {})}
            rendered = notices.renderer.render(event, "agent", variables, queue=ticket.queue)
            mail = OutboundMail(
                purpose=event,
                ticket=ticket,
                recipients=[Recipient(agent.addresses[0], agent.display_name)],
                rendered=rendered,
                support_address=notices.support_address_for(ticket),
                in_reply_to=None,
                auto_submitted="auto-generated",
                from_name=notices.from_name_for(ticket),
                agent=agent.name,
                reply_purpose=reply_purpose,
                reply_extra=reply_extra,
            )
            row = notices.composer.queue(session, mail)
        except (TemplateMissing, ValueError, TypeError, HeaderParseError) as exc:
            self._event(session, ticket, f"{event}_skipped", f"to {agent.name}: {exc}")
            return False
        if hold and not self.directory.on_shift(agent, self.now):
            row.next_attempt_at = max(
                row.next_attempt_at, self.directory.next_on_shift(agent, self.now)
            )
        self._event(
            session,
            ticket,
            f"{event}_queued",
            f"{event} notice queued to agent {agent.name}",
            outbox=row.id,
            agent=agent.name,
        )
        return True

    def _event(self, session: Session, ticket: Ticket, kind: str, reason: str, **data: Any) -> None:
        session.add(Event(at=self.now, kind=kind, reason=reason, ticket_id=ticket.id, data=data))


def notify_after_customer_mail(
    session: Session,
    notices: Notices,
    ticket: Ticket,
    message: Message,
    *,
    created: bool,
    reopened: bool,
    assignee_before: str | None,
    written_at: datetime,
    told: Collection[str] = (),
    extra: dict[str, Any] | None = None,
) -> None:
    """The pipeline's hook: notify agents of a customer's mail (not of old imported mail)."""
    settings = notices.settings
    if not settings.agents:
        return
    max_age = timedelta(hours=settings.acknowledgements.max_age_hours)
    if notices.clock() - written_at > max_age:
        return
    AgentNotices(notices, Directory.from_settings(settings)).after_customer_mail(
        session,
        ticket,
        message,
        created=created,
        reopened=reopened,
        assignee_before=assignee_before,
        told=told,
        extra=extra,
    )


class EscalationNotifier:
    """The ``notify`` for :func:`maildesk.routing.escalate.escalate`: mail the new group.

    Cheap to make (the pipeline makes one for every routed reply); the
    directory is built only when a ticket is really escalated. ``told`` keeps
    whom it mailed, so the notice about the same customer mail skips them.
    """

    def __init__(self, notices: Notices) -> None:
        self.notices = notices
        self.told: set[str] = set()

    def __call__(self, session: Session, ticket: Ticket, group: str, why: str) -> None:
        directory = Directory.from_settings(self.notices.settings)
        self.told |= AgentNotices(self.notices, directory).escalated(session, ticket, group, why)


def overtaken(session: Session, row: Outbox) -> str | None:
    """Why a notice held for an agent's shift is not worth sending now, or None.

    Held: due later than it was queued, and not tried yet. Overtaken: since it
    was queued an agent answered the customer, or the ticket was resolved,
    closed or merged away. One query, and only for a held notice.
    """
    if (
        row.purpose not in OVERTAKEN_KINDS
        or row.ticket_id is None
        or row.attempts
        or row.next_attempt_at <= row.created_at
    ):
        return None
    after = (
        Message.id > row.message_pk
        if row.message_pk is not None
        else Message.created_at > row.created_at
    )
    answered_by = (
        select(func.coalesce(func.nullif(Message.from_name, ""), Message.from_addr))
        .where(Message.ticket_id == row.ticket_id, Message.kind == MessageKind.AGENT_REPLY, after)
        .order_by(Message.id)
        .limit(1)
        .scalar_subquery()
    )
    target = aliased(Ticket)
    found = session.execute(
        select(Ticket.status, Ticket.resolved_at, Ticket.closed_at, target.number, answered_by)
        .outerjoin(target, target.id == Ticket.merged_into_id)
        .where(Ticket.id == row.ticket_id)
    ).one_or_none()
    if found is None:
        return None
    status, resolved_at, closed_at, merged_into, by = found
    since = [f"{by} answered"] if by else []
    if merged_into is not None:
        since.append(f"it was merged into #{merged_into}")
    elif status is TicketStatus.RESOLVED and resolved_at and resolved_at > row.created_at:
        since.append("it was resolved")
    elif status is TicketStatus.CLOSED and closed_at and closed_at > row.created_at:
        since.append("it was closed")
    if not since:
        return None
    to = ", ".join(row.recipients)
    return (
        f"{row.purpose} notice held for {to} until {row.next_attempt_at:%Y-%m-%d %H:%M} UTC; "
        f"meanwhile {' and '.join(since)}: not sent"
    )


def _from_only_notes(session: Session, message_ids: list[int]) -> set[int]:
    """Those of the note ``message_ids`` kept on their From alone and not confirmed since."""
    if not message_ids:
        return set()
    kept = session.execute(
        select(Event.message_pk, Event.intake_id, Event.data).where(
            Event.message_pk.in_(message_ids),
            Event.kind.in_(("internal_note", "agent_confirm_requested")),
        )
    ).all()
    from_only = {
        pk: intake
        for pk, intake, data in kept
        if not set((data or {}).get("checks") or ()) - {"from"}
    }
    if not from_only:
        return set()
    confirmed = set(
        session.scalars(
            select(HeldAgentMail.intake_id).where(
                HeldAgentMail.intake_id.in_([i for i in from_only.values() if i is not None]),
                HeldAgentMail.state == "applied",
            )
        )
    )
    return {pk for pk, intake in from_only.items() if intake not in confirmed}
