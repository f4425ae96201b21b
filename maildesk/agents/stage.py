"""The agent stage (after thread): agent mail, ratings and internal-address notes.

Reads only. It decides what kind of mail this is for issue 5 and records it
in ``ctx.agent``; the writer (:mod:`maildesk.agents.writer`) acts on it from
the pipeline's one writer. Mail that claims to be an agent's but is not
proven so ends here with a quarantine :class:`Stop` (held for review).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session

from maildesk.agents.commands import Parsed, parse_commands
from maildesk.agents.trust import (
    AuthCheck,
    Verdict,
    agent_refs,
    check_auth,
    dkim_domain,
    judge,
    signed_locals,
)
from maildesk.config import AgentSettings, Settings
from maildesk.db import queries
from maildesk.db.models import Ticket
from maildesk.domain.quotes import own_words
from maildesk.domain.signing import RefPurpose, claimed_reply_local_part
from maildesk.domain.subject import find_ticket_numbers
from maildesk.people import Directory
from maildesk.pipeline.context import MessageContext, Stop, StopKind, ThreadDecision, ThreadRule
from maildesk.pipeline.spam import spam_posing_as_an_agent

if TYPE_CHECKING:
    from maildesk.pipeline.stages import StageDeps

REPLY = "reply"  # verified agent reply: commands, answer to the customer
CONFIRM = "confirm"  # verified "reply to apply" for held commands
CONFIRM_REQUEST = "confirm_request"  # an agent's new mail with commands: ask first
RATING = "rating"  # a customer's mail to a signed rating address
INTERNAL = "internal"  # mail to an internal address: a note
AUTO = "auto"  # an automated reply (out of office) to an agent notification
HELD = "held"  # claims to be an agent's but is not proven: quarantined


@dataclass(frozen=True)
class AgentMail:
    kind: str
    ticket_id: int | None
    agent: str | None = None
    reason: str = ""
    checks: tuple[str, ...] = ()
    score: int | None = None
    held_id: int | None = None
    commands: tuple[str, ...] = field(default=())
    # Ratings: the customer's own words (no quote, signature or boilerplate), whether the
    # address's signature verified, and whether the score is in the low half of the scale.
    text: str = ""
    verified: bool = True
    low: bool = False


def _auth(ctx: MessageContext, all_settings: Settings, agent: AgentSettings) -> AuthCheck:
    settings = all_settings.agent_mail
    domain = agent.addresses[0].rpartition("@")[2]
    sender = ctx.message.from_.addr if ctx.message.from_ else ""
    if sender in agent.addresses:
        domain = sender.rpartition("@")[2]
    return check_auth(settings, ctx.message, domain, lambda: dkim_domain(ctx.raw))


def _confirm_request(
    ticket_id: int, agent: str, where: str, parsed: Parsed, checked: AuthCheck
) -> AgentMail:
    """Commands held until the agent confirms them by replying to a mail signed for them.

    The factors that passed are kept as for a note without commands: the note's author
    is shown unverified only where nothing but its From vouches for it.
    """
    return AgentMail(
        CONFIRM_REQUEST,
        ticket_id,
        agent,
        f"commands in {where}: confirmation requested",
        ("from", *checked.passed),
        commands=tuple(c.line for c in parsed.commands),
    )


def agent_stage(ctx: MessageContext, session: Session, deps: StageDeps) -> Stop | None:
    if ctx.forced or ctx.thread is None:
        return None  # released by ops: processed as the customer mail it looks like
    settings = deps.settings
    msg = ctx.message
    directory = Directory.from_settings(settings)
    sender = msg.from_.addr if msg.from_ else ""
    sender_agent = directory.agent_by_address(sender) if sender else None
    recipients = [*ctx.envelope_to, *(a.addr for a in (*msg.to, *msg.cc))]

    _rating(ctx, session, deps, recipients)
    if ctx.agent is not None:
        return None

    verdict: Verdict | None = None
    if settings.agents:
        refs = agent_refs(
            msg, ctx.envelope_to, settings.support_addresses, deps.signer, settings.agents
        )
        verdict = judge(
            refs, sender, sender_agent, lambda a: _auth(ctx, settings, a), directory.agent
        )
    thread = ctx.thread
    joins = thread.ticket_id is not None or thread.link_to is not None
    internal = set(settings.agent_mail.internal_addresses) & {r.lower() for r in recipients}

    if verdict is None:
        if sender_agent is None:
            return None  # customer mail
        checked = _auth(ctx, settings, sender_agent)
        parsed = parse_commands(msg.text)
        replying = thread.rule not in (ThreadRule.SUBJECT_TAG, ThreadRule.NEW_TICKET)
        joins_by_from = bool(internal) and thread.ticket_id is not None
        tagged = bool(parsed.commands) and not replying
        if (joins_by_from or tagged) and checked.ok and not checked.passed:
            # Only the From says it is an agent's: a stranger's spam is spam, not a note
            # on a ticket nor a request to the agent to confirm its commands.
            why = f"only its From, {sender}, says it is agent {sender_agent.name}'s"
            if (spam := spam_posing_as_an_agent(ctx, settings, why)) is not None:
                return spam
        if internal and thread.ticket_id is not None and checked.ok:
            if parsed.commands:
                # A note needs no more than the From; commands do (From alone proves
                # nothing, and the internal address may be only a Cc header): the note
                # is kept, the commands wait for the agent's signed "reply to apply".
                ctx.agent = _confirm_request(
                    thread.ticket_id,
                    sender_agent.name,
                    "a mail to the internal address",
                    parsed,
                    checked,
                )
                return None
            ctx.agent = AgentMail(
                INTERNAL,
                thread.ticket_id,
                sender_agent.name,
                f"sent by {sender} to the internal address {sorted(internal)[0]}",
                ("from", *checked.passed),
            )
            return None
        ticket = _tagged_ticket(ctx, session, deps)
        if parsed.commands and ticket is not None and checked.ok and not replying:
            ctx.agent = _confirm_request(
                ticket.id, sender_agent.name, "a new mail", parsed, checked
            )
            ctx.thread = ThreadDecision(
                ThreadRule.SUBJECT_TAG,
                ticket.id,
                f"agent {sender_agent.name} names #{ticket.number}",
            )
            return None
        if joins:
            return _hold(
                ctx,
                settings,
                thread.ticket_id or thread.link_to,
                sender_agent.name,
                f"mail from agent address {sender} without a reply address signed for "
                "that agent and ticket (From alone proves nothing)",
            )
        if checked.ok and checked.passed:
            ctx.authenticated_agent = f"{sender_agent.name} ({', '.join(checked.passed)} passed)"
        return None  # an agent writing to support like anyone else: a new ticket

    ticket = _by_number(session, ctx, verdict.ticket) if verdict.ticket is not None else None
    if not verdict.trusted:
        return _hold(ctx, settings, ticket.id if ticket else None, verdict.agent, verdict.reason)
    if ticket is None:
        unknown = f"names ticket #{verdict.ticket}, which is unknown"
        return _hold(ctx, settings, None, verdict.agent, unknown)
    assert verdict.ref is not None
    evidence = f"agent mail: {verdict.reason} ({', '.join(verdict.checks)} passed)"
    ctx.thread = ThreadDecision(ThreadRule.SIGNED_REFERENCE, ticket.id, evidence)
    if ctx.verdict is not None and not ctx.verdict.answerable:
        ctx.agent = AgentMail(AUTO, ticket.id, verdict.agent, "automated mail", verdict.checks)
    elif verdict.ref.purpose == RefPurpose.CONFIRM:
        held = int(verdict.ref.extra[0]) if verdict.ref.extra else None
        ctx.agent = AgentMail(
            CONFIRM, ticket.id, verdict.agent, verdict.reason, verdict.checks, held_id=held
        )
    else:
        # A reply to a mail about the agent's own mail (a result, a held-mail warning)
        # is no answer to the customer: "that was not me" must not reach them.
        kept = internal or verdict.ref.purpose == RefPurpose.NOTE
        kind = INTERNAL if kept else REPLY
        ctx.agent = AgentMail(kind, ticket.id, verdict.agent, verdict.reason, verdict.checks)
    return None


def _hold(
    ctx: MessageContext, settings: Settings, ticket_id: int | None, agent: str | None, reason: str
) -> Stop:
    """Hold a mail that claims to be an agent's and is not proven so; the real agent is
    told (a forgery, or their own mail failing its checks). Unless the filter calls it
    spam: a stranger's spam sent to a forged reply address warns nobody."""
    spam = spam_posing_as_an_agent(ctx, settings, f"not held as agent mail: {reason}")
    if spam is not None:
        return spam
    ctx.agent = AgentMail(HELD, ticket_id, agent, reason)
    return Stop(StopKind.QUARANTINE, f"held agent mail: {reason}")


def _rating(ctx: MessageContext, session: Session, deps: StageDeps, recipients: list[str]) -> None:
    """A mail to a rating address: the rating, and any words the customer added.

    A rating address whose signature does not verify (mistyped, or signed with a
    secret retired since) still counts as one when the ticket it names exists and
    the sender is a participant of it (the trust of a subject tag, rule 4): kept on
    that ticket as an unverified rating, not a new ticket. Otherwise the mail is
    what it looks like, a customer's mail to support.
    """
    top = deps.settings.agent_mail.rating_scores
    sender = ctx.message.from_.addr if ctx.message.from_ else ""
    unverified: tuple[str, Ticket, int] | None = None
    for local in signed_locals(recipients, deps.settings.support_addresses):
        claimed = claimed_reply_local_part(local)
        if claimed is None or claimed[0].purpose != RefPurpose.RATE:
            continue
        ref = claimed[0]
        score = int(ref.extra[0]) if ref.extra[0].isdigit() and len(ref.extra[0]) < 3 else 0
        if not 1 <= score <= top:
            continue
        ticket = _by_number(session, ctx, ref.ticket)
        if ticket is None:
            continue
        if deps.signer.parse_reply_local_part(local) is None:
            if unverified is None and sender and queries.is_participant(session, ticket, sender):
                unverified = (local, ticket, score)
            continue
        _rated(ctx, ticket, score, top, True)
        ctx.thread = ThreadDecision(
            ThreadRule.SIGNED_REFERENCE,
            ticket.id,
            f"addressed to our signed rating address {local}@ for ticket #{ticket.number}",
        )
        return
    if unverified is not None:
        local, ticket, score = unverified
        _rated(ctx, ticket, score, top, False)
        ctx.thread = ThreadDecision(
            ThreadRule.SUBJECT_TAG,
            ticket.id,
            f"addressed to rating address {local}@ whose signature does not verify; it names "
            f"ticket #{ticket.number} and {sender} is a participant of it",
        )


def _rated(ctx: MessageContext, ticket: Ticket, score: int, top: int, verified: bool) -> None:
    words = own_words(ctx.message.text, ctx.message.html)
    how = "" if verified else " (unverified)"
    ctx.agent = AgentMail(
        RATING,
        ticket.id,
        None,
        f"rating {score}{how} for #{ticket.number}" + (" with text" if words else ""),
        score=score,
        text=words,
        verified=verified,
        low=2 * score <= top,
    )


def _tagged_ticket(ctx: MessageContext, session: Session, deps: StageDeps) -> Ticket | None:
    for number in find_ticket_numbers(ctx.message.subject, deps.settings.threading.ticket_tag):
        ticket = _by_number(session, ctx, number)
        if ticket is not None:
            return ticket
    return None


def _by_number(session: Session, ctx: MessageContext, number: int) -> Ticket | None:
    ticket = queries.ticket_by_number(session, number)
    if ticket is None:
        return None
    ticket = queries.surviving_ticket(session, ticket)
    if ticket is not None:
        ctx.tickets[ticket.id] = ticket
    return ticket
