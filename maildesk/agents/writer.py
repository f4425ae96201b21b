"""Writes what the agent stage decided, inside the pipeline's one transaction.

Called from :class:`maildesk.pipeline.apply.Applier`: :func:`apply_agent_mail`
for agent replies, confirmations, notes, ratings; :func:`after_hold` when the
stage held a mail (quarantined) to tell the real agent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from maildesk.agents import stage as kinds
from maildesk.agents.actions import CommandRunner, Outcome
from maildesk.agents.commands import Command, parse_commands
from maildesk.agents.replies import (
    NotePassages,
    leaked_note,
    note_passages,
    private_addresses_out,
    queue_customer_reply,
    safe_attachments,
)
from maildesk.agents.stage import AgentMail
from maildesk.config import AgentSettings
from maildesk.db import queries
from maildesk.db.models import (
    Disposition,
    Event,
    HeldAgentMail,
    Intake,
    IntakeState,
    Message,
    MessageKind,
    Rating,
    Ticket,
    TicketStatus,
)
from maildesk.db.upsert import insert_row, savepoint
from maildesk.domain.author import MAX_SHOWN_ADDRESS, shorten
from maildesk.domain.quotes import strip_reply
from maildesk.domain.signing import RefPurpose
from maildesk.outbound.agent_notices import AgentNotices, marker_line, notify_after_customer_mail
from maildesk.outbound.compose import quoted_subject
from maildesk.outbound.notices import Notices
from maildesk.people import Directory
from maildesk.pipeline.context import MessageContext
from maildesk.pipeline.lookahead import Lookahead
from maildesk.pipeline.stages import reopenable
from maildesk.routing.assign_db import assign_ticket

if TYPE_CHECKING:
    from maildesk.pipeline.apply import Applier


def _event(
    applier: Applier,
    session: Session,
    intake: Intake,
    ticket: Ticket,
    message: Message | None,
    kind: str,
    reason: str,
    data: dict[str, Any],
) -> None:
    applier.event(session, kind, reason, intake=intake, ticket=ticket, message=message, data=data)


# The most of a held mail's note text its "reply to apply" request shows.
CONFIRM_NOTE_SHOWN = 2000


def _store(
    applier: Applier,
    session: Session,
    ctx: MessageContext,
    intake: Intake,
    ticket: Ticket,
    kind: MessageKind,
    text: str,
    *,
    keep_html: bool = False,
    proven: bool = True,
) -> Message:
    """The inbound mail as a message of ``kind``; its raw MIME stays linked unchanged."""
    html = ctx.message.html if keep_html else None
    message = applier.insert_inbound(session, ctx, intake, ticket, kind, text, html)
    # Signed for this ticket (an agent's or a rating address) or an authenticated agent;
    # not an unverified rating, which joined on its From.
    applier._remember_ids(session, ctx, ticket, proven=proven)
    for note in ctx.notes:
        _event(applier, session, intake, ticket, message, note.kind, note.reason, note.data)
    assert ctx.thread is not None
    _event(
        applier,
        session,
        intake,
        ticket,
        message,
        "threaded",
        ctx.thread.evidence,
        {"rule": str(ctx.thread.rule)},
    )
    return message


def apply_agent_mail(
    applier: Applier, session: Session, ctx: MessageContext, intake: Intake
) -> Ticket:
    mail: AgentMail = ctx.agent
    assert mail.ticket_id is not None
    # The stage may have found the ticket by a signed address alone (a mail without
    # In-Reply-To or a quote), which threading did not lock: decide on the row as it
    # is now, locked until this mail is applied, as another node may be applying the
    # same agent's other mail (a second "reply to apply") at the same moment.
    ticket = queries.locked_ticket(session, mail.ticket_id)
    notices = applier.notices
    directory = Directory.from_settings(applier.settings)
    agent = directory.agent(mail.agent) if mail.agent else None
    data = {"agent": mail.agent, "checks": list(mail.checks)}

    if mail.kind == kinds.RATING:
        _rating(applier, session, ctx, intake, ticket, mail)
    elif mail.kind == kinds.AUTO:
        message = _store(applier, session, ctx, intake, ticket, MessageKind.AUTO, ctx.message.text)
        _event(
            applier,
            session,
            intake,
            ticket,
            message,
            "agent_auto_reply",
            f"automated mail from agent {mail.agent}: stored, nothing applied or sent",
            data,
        )
    elif agent is None or notices is None:
        message = _store(
            applier, session, ctx, intake, ticket, MessageKind.INTERNAL_NOTE, ctx.message.text
        )
    else:
        turn = _AgentTurn(applier, session, ctx, intake, ticket, agent, notices, directory, mail)
        if mail.kind == kinds.CONFIRM_REQUEST:
            turn.confirm_request()
        elif mail.kind == kinds.CONFIRM:
            turn.confirm()
        else:
            turn.reply()

    ticket.updated_at = max(ticket.updated_at, applier.now)
    intake.state, intake.disposition = IntakeState.DONE, Disposition.THREADED
    intake.ticket_id = ticket.id
    intake.message_pk = session.scalar(
        select(Message.id).where(Message.dedupe_key == ctx.dedupe_key)
    )
    intake.processed_at, intake.claimed_by = applier.now, None
    applier.flush_events(session)
    return ticket


def _rating(
    applier: Applier,
    session: Session,
    ctx: MessageContext,
    intake: Intake,
    ticket: Ticket,
    mail: AgentMail,
) -> None:
    """A rating: recorded (an event only when the address did not verify), and any words
    the customer added told to the assignee (else the group) as a customer reply.

    A low score with words reopens a resolved ticket within the reopen window, as a
    reply would ("still broken"); a high one never does.
    """
    said = bool(mail.text) and (ctx.verdict is None or ctx.verdict.answerable)
    kind = MessageKind.CUSTOMER if said else MessageKind.AUTO
    message = _store(
        applier, session, ctx, intake, ticket, kind, ctx.message.text, proven=mail.verified
    )
    sender = ctx.message.from_.addr if ctx.message.from_ else ""
    data = {"score": mail.score, "contact": sender, "text": said}
    if mail.verified:
        session.add(
            Rating(
                ticket_id=ticket.id,
                score=mail.score or 0,
                contact=sender,
                message_pk=message.id,
                created_at=applier.now,
            )
        )
        reason = f"{sender or 'someone'} rated ticket #{ticket.number}: {mail.score}"
        _event(applier, session, intake, ticket, message, "rated", reason, data)
    else:
        reason = (
            f"{sender} rated ticket #{ticket.number}: {mail.score}, to a rating address whose "
            "signature does not verify (mistyped or expired): kept here, not counted"
        )
        _event(applier, session, intake, ticket, message, "rating_unverified", reason, data)
    if not said:
        return
    ticket.last_inbound_at = ctx.arrival
    assignee_before = ticket.assignee
    reopen = mail.low and reopenable(ticket, ctx.arrival, applier.settings)
    if reopen:
        ticket.status, ticket.resolved_at = TicketStatus.OPEN, None
        why = (
            f"customer rated {mail.score} of {applier.settings.agent_mail.rating_scores} with text"
        )
        _event(applier, session, intake, ticket, message, "reopened", why, data)
        if ctx.route is not None:
            # Reopened as a reply reopens it: back to its assignee if they are available
            # (on shift, not away, under their cap), else to whom the group gives it now.
            assign_ticket(
                session,
                ticket,
                settings=applier.settings,
                directory=ctx.route.directory,
                now=applier.now,
                record=lambda kind, reason, info: _event(
                    applier, session, intake, ticket, None, kind, reason, info
                ),
                reopened=True,
            )
    if applier.notices is not None:
        rated = {
            "score": mail.score,
            "of": applier.settings.agent_mail.rating_scores,
            "verified": mail.verified,
        }
        notify_after_customer_mail(
            session,
            applier.notices,
            ticket,
            message,
            created=False,
            reopened=reopen,
            assignee_before=assignee_before,
            written_at=ctx.arrival,
            extra={"rated": rated, "text": mail.text},
        )


def _clean_text(ctx: MessageContext, text: str, notices: Notices, ticket: Ticket) -> str:
    """The agent's new text: our marker first, then client quote headers, heuristics."""
    return strip_reply(text, ctx.message.html, marker=marker_line(notices, ticket)).text.strip()


def _data(mail: AgentMail) -> dict[str, Any]:
    return {"agent": mail.agent, "checks": list(mail.checks), "why": mail.reason}


class _NotApplied(Exception):
    """A command failed as it was applied: the savepoint undoes the ones before it."""

    def __init__(self, failed: list[str]) -> None:
        super().__init__("; ".join(failed))
        self.failed = failed


@dataclass
class _AgentTurn:
    """One verified agent mail being written: a reply, a confirmation request, a confirmation."""

    applier: Applier
    session: Session
    ctx: MessageContext
    intake: Intake
    ticket: Ticket
    agent: AgentSettings
    notices: Notices
    directory: Directory
    mail: AgentMail

    def store(self, kind: MessageKind, text: str) -> Message:
        return _store(self.applier, self.session, self.ctx, self.intake, self.ticket, kind, text)

    def event(self, message: Message, kind: str, reason: str, data: dict[str, Any]) -> None:
        _event(self.applier, self.session, self.intake, self.ticket, message, kind, reason, data)

    def runner(self, checks: Sequence[str]) -> CommandRunner:
        return CommandRunner(
            self.session,
            self.ticket,
            self.agent,
            directory=self.directory,
            notices=self.notices,
            now=self.applier.now,
            checks=checks,
            intake_id=self.intake.id,
        )

    def apply_all(self, commands: Sequence[Command], checks: Sequence[str]) -> Outcome | list[str]:
        """The commands applied, all of them, or none: then ``"<line> (<why>)"`` for each
        that cannot be.

        Validated first, which writes nothing; then applied in a savepoint that is
        rolled back whole if one fails only as it is applied (a #merge of a ticket
        another node merged meanwhile, a canned answer that does not render for the
        ticket as the commands before it left it, an escalation past the top): the
        agent gets all of what they asked or none of it, never the half before it.
        """
        runner = self.runner(checks)
        problems = runner.problems(commands)
        if problems:
            return problems
        try:
            with savepoint(self.session):
                out = runner.run(commands)
                if out.failed:
                    raise _NotApplied(out.failed)
        except _NotApplied as exc:
            if (lookahead := Lookahead.of(self.session)) is not None:
                lookahead.invalidate()  # it may hold what was rolled back (a merge)
            return exc.failed
        self.ctx.commands_applied += len(out.applied)
        return out

    def tell_agent(self, template: str, extra: dict[str, Any], **reply: Any) -> None:
        """Answer the agent's own mail: now, not held for their shift (they are at it).

        A reply to such a mail stays internal (``n``), unless ``reply_purpose`` says else.
        """
        reply.setdefault("reply_purpose", RefPurpose.NOTE)
        AgentNotices(self.notices, self.directory).send(
            self.session, self.ticket, self.agent, template, extra=extra, hold=False, **reply
        )

    def result_mail(
        self, out: Outcome, sent: Sequence[str], note: bool, *, refused: bool = False
    ) -> None:
        extra = {
            "applied": out.applied,
            "failed": out.failed,
            "sent": list(sent),
            "note": note,
            "refused": refused,
        }
        self.tell_agent("agent_result", extra)

    def after_commands(self, out: Outcome) -> None:
        """What the commands imply once the answer is queued: resolution mail, assignment mail."""
        session, ticket = self.session, self.ticket
        if out.resolved and ticket.status is TicketStatus.RESOLVED:
            self.notices.resolved(session, ticket, author=self.agent.name)
        agent_notices = AgentNotices(self.notices, self.directory)
        if out.escalated is not None:  # the new group hears of it, the assignee among them
            agent_notices.escalated(session, ticket, *out.escalated)
        elif out.assignment_changed:
            agent_notices.assigned(session, ticket, out.assignee_before, f"agent {self.agent.name}")

    def reply(self) -> None:
        """Commands, then the answer to the customer (or an internal note)."""
        mail, ticket, agent = self.mail, self.ticket, self.agent
        parsed = parse_commands(self.ctx.message.text)
        out = self.apply_all(parsed.commands, mail.checks)
        if not isinstance(out, Outcome):
            self.refuse(out)
            return
        text = _clean_text(self.ctx, parsed.text, self.notices, ticket)
        answer = "\n\n".join([*out.inserted, text]).strip()
        is_note = out.note or mail.kind == kinds.INTERNAL
        send = bool(answer) and not is_note and not out.spam
        if send:
            support = self.notices.support_address_for(ticket)
            answer, replaced = private_addresses_out(
                answer, self.applier.settings, self.directory, support
            )
            for address in replaced:
                out.failed.append(
                    f"{address} replaced by {support} in your answer: an agent's own address "
                    "or one signed for an agent never reaches the customer"
                )
        notes = note_passages(self.session, ticket) if send else NotePassages()
        if send and (leak := leaked_note(notes, answer)) is not None:
            send = False
            out.failed.append(f"reply NOT sent: it contains the internal note text {leak!r}")
        kind = MessageKind.AGENT_REPLY if send else MessageKind.INTERNAL_NOTE
        message = self.store(kind, answer if send else (text or answer))
        sent = None
        if send:
            attachments, dropped = safe_attachments(
                notes,
                self.ctx.message.attachments,
                self.notices.composer.loop_token,
            )
            for name in dropped:
                out.failed.append(f"attachment {name!r} NOT sent: it is our mail or holds a note")
            sent = queue_customer_reply(
                self.session,
                self.notices,
                self.directory,
                ticket,
                agent,
                answer,
                attachments,
            )
            if sent is None:
                out.failed.append("reply NOT sent: the ticket has no customer address to send to")
        if sent is not None:
            if ticket.status is TicketStatus.NEW:
                ticket.status = TicketStatus.OPEN
            self.event(
                message,
                "agent_reply",
                f"agent {agent.name} answered; sent to {', '.join(sent.recipients)}",
                {**_data(mail), "outbox": sent.outbox_id, "recipients": list(sent.recipients)},
            )
        else:
            self.event(
                message,
                "internal_note",
                f"agent {agent.name} wrote an internal note; nothing sent to the customer",
                _data(mail),
            )
        self.after_commands(out)
        if parsed.commands or (send and sent is None) or out.failed:
            self.result_mail(out, sent.recipients if sent else (), is_note)

    def refuse(self, problems: Sequence[str]) -> None:
        """A mail with commands that cannot be applied (as written, or as things are now):
        none of it is.

        What the agent meant is unsure (``#note text`` or ``#notes`` was meant to keep
        the text internal; ``#assign nobdy`` to hand the ticket over before the
        answer promises it), so no command is applied and nothing is sent to the
        customer; the agent is told what to correct before sending it again. The
        whole mail, its command lines too, is kept on the ticket as neither an answer
        nor a note: a note's text is never sent, and the corrected answer sent again
        must not be held back as one.
        """
        text = _clean_text(self.ctx, self.ctx.message.text, self.notices, self.ticket)
        self.refused(self.store(MessageKind.AUTO, text), problems, {})

    def refused(self, message: Message, problems: Sequence[str], data: dict[str, Any]) -> None:
        """Audit a refused mail (kept as ``message``) and tell the agent what to correct."""
        self.ctx.commands_failed += len(problems)
        self.event(
            message,
            "agent_mail_refused",
            f"agent {self.agent.name}'s mail not applied, nothing sent: {'; '.join(problems)}",
            {**_data(self.mail), **data, "problems": list(problems)},
        )
        self.result_mail(Outcome(failed=list(problems)), (), True, refused=True)

    def confirm_request(self) -> None:
        """Commands in a mail not signed for the agent (a new mail, or one to the internal
        address): the text is kept as a note, the commands wait for a signed reply."""
        mail, agent = self.mail, self.agent
        parsed = parse_commands(self.ctx.message.text)
        text = _clean_text(self.ctx, parsed.text, self.notices, self.ticket)
        message = self.store(MessageKind.INTERNAL_NOTE, text)
        held = insert_row(
            self.session,
            HeldAgentMail,
            ticket_id=self.ticket.id,
            agent=agent.name,
            intake_id=self.intake.id,
            commands=list(mail.commands),
            state="pending",
            created_at=self.applier.now,
        )
        self.event(
            message,
            "agent_confirm_requested",
            f"agent {agent.name} sent commands in a mail not signed for them: "
            f"confirmation requested (held {held.id})",
            {**_data(mail), "held": held.id, "commands": list(mail.commands)},
        )
        extra = {
            "commands": list(mail.commands),
            "expires_hours": self.applier.settings.agent_mail.confirm_hours,
            # What confirming vouches for as well: the text kept as a note in the agent's
            # name (a forger's, if the agent did not write it).
            "note": shorten(text.strip(), CONFIRM_NOTE_SHOWN),
        }
        self.tell_agent(
            "agent_confirm", extra, reply_purpose=RefPurpose.CONFIRM, reply_extra=(str(held.id),)
        )

    def confirm(self) -> None:
        """The agent's signed "reply to apply": the held commands run now, if still valid."""
        mail, now = self.mail, self.applier.now
        message = self.store(MessageKind.AUTO, "")
        held = (
            # Locked (after the ticket) and re-read: its state decides whether they run.
            self.session.get(
                HeldAgentMail, mail.held_id, with_for_update=True, populate_existing=True
            )
            if mail.held_id is not None
            else None
        )
        expiry = timedelta(hours=self.applier.settings.agent_mail.confirm_hours)
        problem = None
        if held is None or held.ticket_id != self.ticket.id or held.agent != self.agent.name:
            problem = "no such held mail for this agent and ticket"
        elif held.state != "pending":
            problem = f"already {held.state}"
        elif now - held.created_at > expiry:
            held.state, held.decided_at = "expired", now
            problem = "the confirmation request has expired"
        if problem is not None or held is None:
            self.event(message, "agent_confirm_failed", str(problem), _data(mail))
            self.result_mail(Outcome(failed=[f"confirmation not applied: {problem}"]), (), True)
            return
        commands = parse_commands("\n".join(held.commands)).commands
        out = self.apply_all(commands, [*mail.checks, "confirmed"])
        if not isinstance(out, Outcome):
            held.state, held.decided_at = "refused", now
            self.refused(message, out, {"held": held.id})
            return
        held.state, held.decided_at = "applied", now
        self.event(
            message,
            "agent_confirmed",
            f"agent {self.agent.name} confirmed held commands {held.id}",
            {**_data(mail), "held": held.id},
        )
        self.after_commands(out)
        self.result_mail(out, (), True)


def after_hold(applier: Applier, session: Session, ctx: MessageContext, intake: Intake) -> None:
    """A held mail: audit it on the ticket and tell the real agent (or the assignee)."""
    mail: AgentMail | None = ctx.agent
    if mail is None or mail.kind != kinds.HELD or mail.ticket_id is None:
        return
    ticket = ctx.tickets.get(mail.ticket_id) or session.get(Ticket, mail.ticket_id)
    if ticket is None:
        return
    msg = ctx.message
    sender = msg.from_.addr if msg.from_ else ""
    session.add(
        Event(
            at=applier.now,
            kind="agent_mail_held",
            reason=f"held (intake {intake.id}): {mail.reason}",
            ticket_id=ticket.id,
            intake_id=intake.id,
            data={"agent": mail.agent, "sender": sender, "reason": mail.reason},
        )
    )
    notices = applier.notices
    if notices is None:
        return
    directory = Directory.from_settings(applier.settings)
    agent = directory.agent(mail.agent or "") or directory.agent(ticket.assignee or "")
    if agent is None:
        return
    # Whoever forged the mail chose its From and Subject: the notice shows them bounded.
    held = {
        "reason": mail.reason,
        "sender": shorten(sender, MAX_SHOWN_ADDRESS),
        "subject": quoted_subject(msg.subject),
        "intake": intake.id,
    }
    # The warning is about a mail in the agent's name, which may be an attacker's: a reply
    # to it ("that was not me") is kept as an internal note, never sent to the customer.
    AgentNotices(notices, directory).send(
        session, ticket, agent, "agent_held", extra={"held": held}, reply_purpose=RefPurpose.NOTE
    )
