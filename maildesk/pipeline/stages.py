"""The reading stages: parse -> guard -> dedupe -> thread.

Each stage takes the context and a read-only session, fills in what it
decided, and records why. None of them writes; :mod:`apply` does.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from maildesk.agents.stage import agent_stage
from maildesk.config import PipelineSettings, Settings
from maildesk.db import queries
from maildesk.db.models import IdOrigin, MessageKind, Outbox, Ticket, TicketStatus
from maildesk.domain.address import address_key, overlong_address
from maildesk.domain.author import customer_address
from maildesk.domain.autodetect import AutoKind, classify
from maildesk.domain.bounces import bounced_message_ids
from maildesk.domain.message import (
    TRUNCATED_HEADER,
    UNFETCHABLE_HEADER,
    Address,
    ParsedMessage,
)
from maildesk.domain.rawheader import (
    body_hash,
    bounded_key,
    extract_message_id,
    raw_header_values,
)
from maildesk.domain.signing import RefPurpose, SignedRef, Signer
from maildesk.domain.subject import find_ticket_numbers, normalize_subject
from maildesk.domain.threadindex import conversation_key
from maildesk.pipeline.context import (
    HUMAN_KINDS,
    MessageContext,
    Stop,
    StopKind,
    ThreadDecision,
    ThreadRule,
)
from maildesk.pipeline.lookahead import Lookahead
from maildesk.pipeline.parse import ParseError, parse_message
from maildesk.pipeline.spam import spam_stage
from maildesk.routing.router import Router, route_stage

LOOP_HEADER = "X-Maildesk-Loop"
# The Received line a listener puts above a message it accepted within its own
# max_message_bytes (HELO word <= 255 bytes, a peer address, a date).
TRACE_ROOM = 512
NEW_LINKED = ": new ticket, linked"


@dataclass(frozen=True)
class StageDeps:
    settings: Settings
    signer: Signer
    clock: Callable[[], datetime]
    router: Router | None = None  # rules and models for the route stage (issue 7)


Stage = Callable[[MessageContext, Session, StageDeps], Stop | None]


def parse_stage(ctx: MessageContext, limits: PipelineSettings) -> Stop | None:
    """Runs outside any transaction (or in a child process): parsing may take up to the bound."""
    room = TRACE_ROOM if ctx.source in ("smtp", "lmtp") else 0
    if len(ctx.raw) > limits.max_message_bytes + room and not ctx.forced:
        return Stop(
            StopKind.QUARANTINE,
            f"message of {len(ctx.raw)} bytes exceeds max_message_bytes={limits.max_message_bytes}",
        )
    for header, why in (
        (TRUNCATED_HEADER, "too large to fetch from IMAP"),
        (UNFETCHABLE_HEADER, "cannot fetch from IMAP"),
    ):
        if ctx.source == "imap" and ctx.raw.startswith(header.encode() + b":") and not ctx.forced:
            # The IMAP poller stored only the headers of a message over its size
            # limit, or a placeholder for one the server failed to deliver; it puts
            # this note first, so a sender cannot forge it further down.
            note = raw_header_values(ctx.raw, header)[0]
            return Stop(StopKind.QUARANTINE, f"{why}: {note}")
    try:
        ctx.parsed = parse_message(ctx.raw, time_limit=limits.parse_time_limit_seconds)
    except ParseError as exc:
        if not ctx.forced:
            return Stop(StopKind.QUARANTINE, f"cannot parse: {exc.reason}")
        ctx.parsed = fallback_message(ctx.raw)
        ctx.note("parse", f"released by ops although it cannot be parsed: {exc.reason}")
    for cut in ctx.parsed.cuts:
        ctx.note("parse", f"not all of the mail was read: {cut}")
    for why in ctx.parsed.unusable_addresses:
        ctx.note("address_unusable", why)
    ctx.arrived_at = arrival_time(ctx.parsed.date, ctx.source, ctx.received_at)
    return None


def fallback_message(raw: bytes) -> ParsedMessage:
    """A minimal message from raw headers, for mail ops released from quarantine."""
    subject = (raw_header_values(raw, "Subject") or [""])[0]
    sender = (raw_header_values(raw, "From") or [""])[0]
    addr = sender.split("<")[-1].rstrip(">").strip().lower() if "@" in sender else ""
    if overlong_address(addr) is not None:  # no mailbox: nothing may be sent to it
        addr = ""
    return ParsedMessage(
        message_id=extract_message_id(raw),
        in_reply_to=(),
        references=(),
        subject=subject,
        from_=Address(addr) if addr else None,
        to=(),
        cc=(),
        reply_to=(),
        date=None,
        text=raw.decode("utf-8", "replace")[:100_000],
        html=None,
        attachments=(),
        headers=(),
        content_type="text/plain",
        defects=("unparsable; released by ops",),
    )


def guard_stage(ctx: MessageContext, _session: Session, deps: StageDeps) -> Stop | None:
    verdict = classify(
        ctx.message,
        envelope_sender=ctx.envelope_from,
        own_addresses=deps.settings.own_addresses,
        loop_header=LOOP_HEADER,
    )
    ctx.verdict = verdict
    ctx.note("guard", f"{verdict.kind}: " + ("; ".join(verdict.reasons) or "no automation signal"))
    return None


def synthetic_message_id(msg: ParsedMessage, body_digest: str) -> str:
    """A stable id for mail without Message-ID: the same mail gets the same id."""
    sender = msg.from_.addr if msg.from_ else ""
    date = msg.date.isoformat() if msg.date else ""
    basis = "\0".join((sender, date, msg.subject, body_digest)).encode("utf-8", "replace")
    return f"{hashlib.sha256(basis).hexdigest()[:40]}@synthetic.maildesk.invalid"


def _stored_message(session: Session, key: str) -> queries.StoredMessage | None:
    lookahead = Lookahead.of(session)
    if lookahead is not None and lookahead.covers_message(key):
        return lookahead.message(key)
    return queries.message_by_dedupe_key(session, key)


_AGENT_KINDS = (MessageKind.AGENT_REPLY, MessageKind.INTERNAL_NOTE)


def _same_agent_mail(existing: queries.StoredMessage, msg: ParsedMessage) -> bool:
    """An agent's mail again under its Message-ID, its body changed on the way (a list's
    footer, a gateway re-encoding it): the same reply, whose commands and answer must
    not apply twice. Agents' clients do not reuse ids; a web form's reuse (different
    mail under one id) comes from customers and stays apart."""
    sender = (msg.from_.addr if msg.from_ else "").lower()
    return existing.kind in _AGENT_KINDS and bool(sender) and existing.from_addr.lower() == sender


def _from_a_list(msg: ParsedMessage) -> bool:
    return bool(msg.header_all("List-Id") or msg.header_all("List-Post"))


def _list_copy(existing: queries.StoredMessage, msg: ParsedMessage) -> bool:
    """A customer's mail and a list's copy of it, in either order (support is subscribed
    to a list she Cc'd): her Message-ID, the list's footer changing the body, the list
    perhaps rewriting From. MAIL-RULES §1: the same message, stored once; the later
    copy's raw bytes stay on its intake row as a duplicate of the message."""
    if existing.kind is not MessageKind.CUSTOMER or not existing.from_addr:
        return False
    stored_from = address_key(existing.from_addr)
    author = customer_address(msg)
    if author is None:
        return False
    if _from_a_list(msg):  # the list's copy second
        return address_key(author.addr) == stored_from
    if existing.auto_kind != AutoKind.LIST:
        return False
    # Her own copy second: the list's copy came From her, or From the list she wrote to.
    written_to = (author, *msg.to, *msg.cc)
    return stored_from in {address_key(a.addr) for a in written_to if a.addr}


def dedupe_stage(ctx: MessageContext, session: Session, _deps: StageDeps) -> Stop | None:
    msg = ctx.message
    if ctx.body_hash is None:
        ctx.body_hash = body_hash(ctx.raw)
    digest = ctx.body_hash
    key = bounded_key(msg.message_id or synthetic_message_id(msg, digest))
    existing = _stored_message(session, key)
    if existing is not None and existing.body_hash != digest:
        if _same_agent_mail(existing, msg):
            return Stop(
                StopKind.DUPLICATE,
                f"Message-ID {key}: the agent's mail again, its body changed on the way",
                duplicate_of_message=existing.id,
                duplicate_of_ticket=existing.ticket_id,
            )
        if _list_copy(existing, msg):
            return Stop(
                StopKind.DUPLICATE,
                f"Message-ID {key}: the customer's mail and a mailing list's copy of it "
                "(the list changed the body)",
                duplicate_of_message=existing.id,
                duplicate_of_ticket=existing.ticket_id,
                acknowledge_late=_her_copy_after_the_lists(ctx, session, existing),
            )
        ctx.note(
            "message_id_collision",
            f"Message-ID {key} already belongs to a different message; kept apart",
            other_message=existing.id,
        )
        key = bounded_key(f"{key}#{digest[:16]}")
        existing = _stored_message(session, key)
    ctx.dedupe_key = key
    if existing is not None:
        # A list that left her mail as it was (no footer): its copy, first, is this very
        # content, and her own copy is still owed the acknowledgement the list's was not.
        late = _list_copy(existing, msg) and _her_copy_after_the_lists(ctx, session, existing)
        return Stop(
            StopKind.DUPLICATE,
            f"Message-ID {key} with the same content is already stored"
            + ("; her own copy after a mailing list's" if late else ""),
            duplicate_of_message=existing.id,
            duplicate_of_ticket=existing.ticket_id,
            acknowledge_late=late,
        )
    return copy_of_quarantined(ctx, session)


def _her_copy_after_the_lists(
    ctx: MessageContext, session: Session, existing: queries.StoredMessage
) -> bool:
    """Her own copy of a mail whose list's copy started the ticket, unacknowledged
    because list mail never is (MAIL-RULES §3): her copy is mail we answer, and gets
    the acknowledgement it would have had first. Once, and only to her (the requester
    a list's copy named must be her); decided with the ticket locked, and after any
    other copy of the mail (the runner locks the conversation of its Message-ID).
    """
    msg = ctx.message
    if _from_a_list(msg) or existing.auto_kind != AutoKind.LIST:
        return False
    if ctx.verdict is None or not ctx.verdict.answerable:
        return False
    author = customer_address(msg)
    requester = queries.locked_ticket(session, existing.ticket_id).requester
    if author is None or requester is None:
        return False
    if address_key(requester.email) != address_key(author.addr):
        return False
    return queries.unacknowledged_start(session, existing.ticket_id, existing.id)


def acknowledged_as_first(ctx: MessageContext, session: Session, deps: StageDeps) -> Stop | None:
    """Her copy after the list's (:func:`_her_copy_after_the_lists`): what the stages
    after dedupe decide for the mail that starts a ticket, for its acknowledgement:
    the spam filter's verdict (a quarantine returned: no acknowledgement) and the
    route, whose rules may suppress the acknowledgement or choose its template."""
    ctx.thread = ThreadDecision(
        ThreadRule.NEW_TICKET, None, "her own copy after the list's: decided as if first"
    )
    held = spam_stage(ctx, session, deps)
    if held is None:
        route_stage(ctx, session, deps)
    return held


def copy_of_quarantined(ctx: MessageContext, session: Session) -> Stop | None:
    """A re-delivered copy of quarantined bytes is a duplicate, not a second chance.

    (An MTA retry, or the same import run again after a parse timeout.) Releasing
    or retrying from quarantine sets ``forced`` and skips this.
    """
    held = None if ctx.forced else _quarantined_copy(session, ctx)
    if held is None:
        return None
    return Stop(
        StopKind.DUPLICATE,
        f"the same bytes are already in quarantine as intake {held} "
        f"(`maildesk quarantine retry {held}` processes them)",
    )


def _quarantined_copy(session: Session, ctx: MessageContext) -> int | None:
    if not ctx.raw_sha256:
        return None
    lookahead = Lookahead.of(session)
    if lookahead is not None:
        try:
            return lookahead.quarantined_copy(ctx.raw_sha256, ctx.intake_id)
        except KeyError:
            pass
    return queries.quarantined_copies(session, [ctx.raw_sha256], ctx.intake_id).get(ctx.raw_sha256)


def arrival_time(date: datetime | None, source: str, received_at: datetime) -> datetime:
    """When the message counts as arrived for the threading windows.

    Live mail uses the time we received it. A file import (historical mail)
    uses its Date header when that is plausible, so old threads keep their shape.
    """
    if source == "file" and date is not None and date <= received_at:
        return date
    return received_at


def thread_stage(ctx: MessageContext, session: Session, deps: StageDeps) -> Stop | None:
    ctx.thread = decide_thread(ctx, session, deps)
    if ctx.verdict is not None and ctx.verdict.kind is AutoKind.BOUNCE:
        rows = bounced_mail(ctx, session, deps)
        ctx.bounced_outbox = tuple(dict.fromkeys(row.id for row in rows))
        addresses = (a.lower() for row in rows for a in queries.outbox_recipients(session, row))
        ctx.bounced_to = tuple(dict.fromkeys(addresses))
    return None


def bounced_mail(ctx: MessageContext, session: Session, deps: StageDeps) -> list[Outbox]:
    """The outbox rows of the mail of ours that this bounce returns.

    Only our signed VERP return path or one of our Message-IDs in the returned
    headers proves a bounce is about our mail: a delivery report anyone may
    write, and one naming nothing of ours must not suppress anybody.
    """
    rows: list[Outbox] = []
    for local in _signed_locals(ctx, deps):
        signed = deps.signer.parse_reply_local_part(local)
        if signed is not None and signed.purpose == RefPurpose.BOUNCE:
            row = session.get(Outbox, int(signed.extra[0]))
            # The row must still be that ticket's: an id freed by an erasure may be
            # another customer's mail now (SQLite gives the highest free id again).
            if row is not None and _ticket_number(session, row.ticket_id) == signed.ticket:
                rows.append(row)
    ids = list(bounced_message_ids(ctx.message))
    if ids:
        rows.extend(session.scalars(select(Outbox).where(Outbox.message_id.in_(ids))))
    return rows


def _ticket_number(session: Session, ticket_id: int | None) -> int | None:
    if ticket_id is None:
        return None
    return session.scalar(select(Ticket.number).where(Ticket.id == ticket_id))


def decide_thread(ctx: MessageContext, session: Session, deps: StageDeps) -> ThreadDecision:
    found = find_conversation(ctx, session, deps)
    if found.ticket_id is None:
        return found
    # The SLA sweep closes resolved and resolves pending tickets, agents and the
    # CLI change the status and merge tickets away (on other nodes too): decide on
    # the row as it is now, locked until this message is applied.
    first = queries.locked_ticket(session, found.ticket_id)
    ticket = queries.surviving_ticket(session, first, lock=True)
    if ticket is not first:  # merged since it was found: the survivor holds it now
        found = replace(
            found, ticket_id=ticket.id, evidence=f"{found.evidence}; merged into #{ticket.number}"
        )
    _pin(ctx, ticket)
    decision = lifecycle(ctx, ticket, found, deps)
    # The customer answers the ended ticket's mails again (they are still in the
    # inbox): the follow-up opened by the first such answer holds the conversation
    # now, as a merged ticket's survivor does; not one new ticket per answer.
    seen = {ticket.id}
    for _ in range(queries.MAX_MERGE_HOPS):
        if decision.link_kind != queries.FOLLOW_UP_OF or decision.link_to is None:
            break
        follow_up = _follow_up(session, ctx, decision.link_to)
        if follow_up is None or follow_up.id in seen:
            break
        seen.add(follow_up.id)
        ended = decision.evidence.removesuffix(NEW_LINKED)
        found = replace(
            found,
            ticket_id=follow_up.id,
            evidence=f"{ended}: its follow-up #{follow_up.number} goes on",
            merge_candidate=None,  # as for the new ticket it stands for
        )
        decision = lifecycle(ctx, follow_up, found, deps)
    return decision


def _follow_up(session: Session, ctx: MessageContext, ticket_id: int) -> Ticket | None:
    """The newest follow-up of an ended ticket, as it is now, locked until applied."""
    newest = queries.newest_follow_up(session, ticket_id)
    if newest is None:
        return None
    first = queries.locked_ticket(session, newest)
    return _pin(ctx, queries.surviving_ticket(session, first, lock=True))


def _sender(msg: ParsedMessage) -> str:
    """The customer the mail is from (a list's rewritten From is not the customer)."""
    author = customer_address(msg)
    return author.addr if author else ""


def find_conversation(ctx: MessageContext, session: Session, deps: StageDeps) -> ThreadDecision:
    """MAIL-RULES §2 rules 2-7 in order; the first match wins."""
    msg = ctx.message
    own = msg.message_id
    refs = [r for r in dict.fromkeys([*msg.in_reply_to, *reversed(msg.references)]) if r != own]

    # Our own id may be known already: a reply that arrived before this parent.
    candidates = [*refs, own] if own else refs
    lookahead = Lookahead.of(session)
    prefetched = lookahead.known_ids(candidates) if lookahead is not None else None
    known = prefetched if prefetched is not None else queries.known_ids(session, candidates)
    # Only an id seen in a reply's References: an id a message we stored or sent already
    # has is a collision (dedupe kept the mails apart), never a key to its ticket.
    mine = known.get(own) if own else None
    referenced = (IdOrigin.REFERENCED, IdOrigin.UNPROVEN_REFERENCED)
    waiting = mine if mine is not None and mine.origin in referenced else None
    ctx.own_id_was_referenced = waiting is not None
    hit = queries.first_known_reference(session, candidates if waiting else refs, known)
    if hit is not None:
        mid, row = hit
        ticket = _live(session, ctx, row.ticket_id)
        if ticket is not None:
            return ThreadDecision(
                ThreadRule.REFERENCES,
                ticket.id,
                f"In-Reply-To/References names <{mid}> ({row.origin}) of ticket #{ticket.number}",
                # A reply to this message arrived first and started its own ticket:
                # this message joins the two conversations (see apply's merge check).
                merge_candidate=(
                    waiting.ticket_id if waiting and waiting.ticket_id != ticket.id else None
                ),
                proven_by_reference=row.origin
                not in (IdOrigin.UNPROVEN, IdOrigin.UNPROVEN_REFERENCED),
            )

    bounce = bounce_conversation(ctx, session, deps)
    if bounce is not None:
        return bounce

    found = _signed_address_ticket(ctx, session, deps, RefPurpose.TICKET)
    if found is not None:
        local, _signed, ticket = found
        return ThreadDecision(
            ThreadRule.SIGNED_REFERENCE,
            ticket.id,
            f"addressed to our signed reply address {local}@ for ticket #{ticket.number}",
        )

    for ref in refs:
        signed = deps.signer.parse_outbound_message_id(ref)
        if signed is not None:
            ticket = _by_number(session, ctx, signed.ticket)
            if ticket is not None:
                return ThreadDecision(
                    ThreadRule.SIGNED_REFERENCE,
                    ticket.id,
                    f"References name our signed Message-ID <{ref}> for ticket #{signed.ticket}",
                )

    marker = deps.signer.find_body_marker(msg.text)
    if marker is not None:
        ticket = _by_number(session, ctx, marker)
        if ticket is not None:
            return ThreadDecision(
                ThreadRule.BODY_MARKER, ticket.id, f"signed body marker for ticket #{marker}"
            )

    stranger_of: Ticket | None = None
    sender = _sender(msg)
    for number in find_ticket_numbers(msg.subject, deps.settings.threading.ticket_tag):
        ticket = _by_number(session, ctx, number)
        if ticket is None:
            continue
        if sender and queries.is_participant(session, ticket, sender):
            return ThreadDecision(
                ThreadRule.SUBJECT_TAG,
                ticket.id,
                f"subject tag #{number} and {sender} is a participant of it",
            )
        stranger_of = stranger_of or ticket

    if msg.thread_index:
        key = conversation_key(msg.thread_index)
        ticket = _pin(ctx, queries.ticket_by_conversation(session, key)) if key else None
        if ticket is not None:
            ticket = queries.surviving_ticket(session, ticket)
            return ThreadDecision(
                ThreadRule.THREAD_INDEX,
                ticket.id,
                f"Outlook Thread-Index conversation {key} belongs to ticket #{ticket.number}",
            )

    window = deps.settings.threading.subject_window_days
    normalized = normalize_subject(msg.subject)
    if sender and normalized and window > 0:
        since = ctx.arrival - timedelta(days=window)
        ticket = _pin(ctx, _open_ticket_by_sender_subject(session, sender, normalized, since))
        if ticket is not None:
            return ThreadDecision(
                ThreadRule.SENDER_SUBJECT,
                ticket.id,
                f"same sender {sender} and subject {normalized!r} as open ticket "
                f"#{ticket.number} within {window:g} days",
            )
        ticket = _pin(ctx, queries.open_ticket_by_our_subject(session, sender, normalized, since))
        if ticket is not None:
            return ThreadDecision(
                ThreadRule.SENDER_SUBJECT,
                ticket.id,
                f"subject {normalized!r} of our mail to {sender} on open ticket "
                f"#{ticket.number} within {window:g} days",
            )

    if stranger_of is not None and deps.settings.threading.link_strangers:
        return ThreadDecision(
            ThreadRule.NEW_TICKET,
            None,
            f"subject names ticket #{stranger_of.number} but {sender or 'the sender'} is not "
            "a participant of it: new ticket, linked",
            link_to=stranger_of.id,
            link_kind="quoted_by_stranger",
        )
    return ThreadDecision(ThreadRule.NEW_TICKET, None, "no rule matched: new ticket")


# References kept for the conversation lock: the root and the nearest ancestors,
# which every well-formed reply in the thread shares with the mail it answers.
LOCKED_REFERENCES = 3


def conversation_keys(ctx: MessageContext) -> set[str]:
    """What :func:`find_conversation` and dedupe look this message up by.

    Two nodes deciding two mails of one conversation at the same moment (a
    reply and its parent, one mail on two nodes) must decide one after the
    other, each seeing what the other wrote: the runner locks these keys
    (PostgreSQL advisory locks) before the stages read.
    """
    msg = ctx.message
    refs = msg.references
    if len(refs) > 2 * LOCKED_REFERENCES:
        refs = (*refs[:LOCKED_REFERENCES], *refs[-LOCKED_REFERENCES:])
    keys = {f"id:{mid}" for mid in (msg.message_id, *msg.in_reply_to, *refs) if mid}
    sender, normalized = _sender(msg), normalize_subject(msg.subject)
    if sender and normalized:  # either spelling of the sender's domain: one mailbox
        keys.add(f"subject:{address_key(sender)}\0{normalized}")
    if msg.thread_index and (key := conversation_key(msg.thread_index)):
        keys.add(f"thread-index:{key}")
    return keys


def _open_ticket_by_sender_subject(
    session: Session, sender: str, normalized: str, since: datetime
) -> Ticket | None:
    lookahead = Lookahead.of(session)
    if lookahead is not None and lookahead.covers_sender(sender, since):
        return lookahead.open_ticket_by_sender_subject(session, sender, normalized, since)
    return queries.open_ticket_by_sender_subject(session, sender, normalized, since)


def _signed_locals(ctx: MessageContext, deps: StageDeps) -> list[str]:
    """Local parts of our own domains' sub-addresses this mail was sent to."""
    msg = ctx.message
    addresses = [*ctx.envelope_to, *(a.addr for a in (*msg.to, *msg.cc))]
    own_bases = {a.split("@", 1)[0] for a in deps.settings.support_addresses}
    locals_ = []
    for address in dict.fromkeys(a.lower() for a in addresses):
        local = address.rpartition("@")[0]
        if "+" in local and local.split("+", 1)[0] in own_bases:
            locals_.append(local)
    return locals_


def _signed_address_ticket(
    ctx: MessageContext, session: Session, deps: StageDeps, purpose: RefPurpose
) -> tuple[str, SignedRef, Ticket] | None:
    """The ticket named by a signed sub-address of ours this mail was sent to."""
    for local in _signed_locals(ctx, deps):
        signed = deps.signer.parse_reply_local_part(local)
        if signed is not None and signed.purpose == purpose:
            ticket = _by_number(session, ctx, signed.ticket)
            if ticket is not None:
                return local, signed, ticket
    return None


def bounce_conversation(
    ctx: MessageContext, session: Session, deps: StageDeps
) -> ThreadDecision | None:
    """A bounce joins the ticket of the mail that bounced: VERP first, then returned headers."""
    if ctx.verdict is None or ctx.verdict.kind is not AutoKind.BOUNCE:
        return None
    found = _signed_address_ticket(ctx, session, deps, RefPurpose.BOUNCE)
    if found is not None:
        _local, signed, bounced = found
        return ThreadDecision(
            ThreadRule.SIGNED_REFERENCE,
            bounced.id,
            f"bounce to our VERP address for outbox {signed.extra[0]} of ticket #{bounced.number}",
        )
    hit = queries.first_known_reference(session, list(bounced_message_ids(ctx.message)))
    if hit is not None:
        ticket = _live(session, ctx, hit[1].ticket_id)
        if ticket is not None:
            return ThreadDecision(
                ThreadRule.REFERENCES,
                ticket.id,
                f"bounce returns the headers of <{hit[0]}> of ticket #{ticket.number}",
            )
    return None


def reopenable(ticket: Ticket, at: datetime, settings: Settings) -> bool:
    """Whether a customer's mail at ``at`` reopens ``ticket``: resolved, within the window."""
    window = timedelta(days=settings.threading.reopen_window_days)
    resolved_at = ticket.resolved_at or ticket.updated_at
    return ticket.status == TicketStatus.RESOLVED and at - resolved_at <= window


def lifecycle(
    ctx: MessageContext, ticket: Ticket, found: ThreadDecision, deps: StageDeps
) -> ThreadDecision:
    """Reopen a resolved ticket inside the window; otherwise a linked follow-up ticket.

    Automated mail (an auto-reply, a bounce) only joins the ticket. A list post is a
    person's mail, though never acknowledged: a customer's answer that reaches us
    through a mailing list reopens or follows up like any other reply.
    """
    automated = ctx.verdict is not None and ctx.verdict.kind not in HUMAN_KINDS
    if ticket.status not in (TicketStatus.RESOLVED, TicketStatus.CLOSED) or automated:
        return found
    if reopenable(ticket, ctx.arrival, deps.settings):
        return ThreadDecision(
            found.rule, ticket.id, found.evidence + "; reopens the resolved ticket", reopen=True
        )
    why = "closed" if ticket.status == TicketStatus.CLOSED else "resolved outside the reopen window"
    return ThreadDecision(
        found.rule,
        None,
        found.evidence + f"; ticket #{ticket.number} is {why}{NEW_LINKED}",
        link_to=ticket.id,
        link_kind=queries.FOLLOW_UP_OF,
    )


def _pin(ctx: MessageContext, ticket: Ticket | None) -> Ticket | None:
    if ticket is not None:
        ctx.tickets[ticket.id] = ticket
    return ticket


def _by_number(session: Session, ctx: MessageContext, number: int) -> Ticket | None:
    ticket = queries.ticket_by_number(session, number)
    return _pin(ctx, queries.surviving_ticket(session, ticket)) if ticket else None


def _live(session: Session, ctx: MessageContext, ticket_id: int) -> Ticket | None:
    ticket = session.get(Ticket, ticket_id)
    return _pin(ctx, queries.surviving_ticket(session, ticket)) if ticket else None


DB_STAGES: tuple[tuple[str, Stage], ...] = (
    ("guard", guard_stage),
    ("dedupe", dedupe_stage),
    ("thread", thread_stage),
    # Issue 5: agent mail (signed and authenticated), ratings, internal notes.
    ("agent", agent_stage),
    # After thread, not before: mail that joins an existing ticket is exempt.
    ("spam", spam_stage),
    ("route", route_stage),
)
