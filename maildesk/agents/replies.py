"""An agent's answer, sent to the customer side from the support address.

Recipients are the requester and (``agent_mail.reply_to_cc``) the customer-side
Cc participants, never an agent or one of our own addresses. The mail is
threaded on the customer's conversation: In-Reply-To their last message,
References only ids the customer has seen (no agent's Message-ID, no id of a
mail to an agent). Before anything is queued, the text is checked against
the ticket's internal notes: a reply that would carry a note is not sent.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from maildesk.agents.trust import signed_for_an_agent
from maildesk.config import AgentSettings, Settings
from maildesk.db import queries
from maildesk.db.models import (
    Contact,
    Message,
    MessageKind,
    Participant,
    ParticipantRole,
    Suppression,
    Ticket,
)
from maildesk.domain.address import elided
from maildesk.domain.message import ParsedAttachment
from maildesk.domain.rawheader import decode_text
from maildesk.outbound.compose import (
    OutboundAttachment,
    OutboundMail,
    Recipient,
    addressable,
    one_line,
    wire_address,
)
from maildesk.outbound.notices import Notices
from maildesk.people import Directory

MIN_LEAK_CHARS = 24
_WS = re.compile(r"\s+")
_PARAGRAPH = re.compile(r"\n\s*\n")
_QUOTE_PREFIX = re.compile(r"^(?:[ \t]*>)+")
_SAFE_TYPE = re.compile(r"^[a-z0-9][a-z0-9.+-]*/[a-z0-9][a-z0-9.+-]*$")
# Anything in a text that reads as a mail address (RFC 5322's atext, any letter). The
# parts are bounded as RFC 5321 bounds them, so a long run of letters costs a linear
# scan, not one scan per start position.
_ADDRESS = re.compile(r"[\w.!#$%&'*+/=?^`{|}~-]{1,64}@[\w-]{1,63}(?:\.[\w-]{1,63}){1,16}")


@dataclass(frozen=True, slots=True)
class Sent:
    recipients: tuple[str, ...]
    outbox_id: int


def _squash(text: str) -> str:
    return _WS.sub(" ", text).strip().lower()


@dataclass(frozen=True, slots=True)
class NotePassages:
    """A ticket's internal notes as ``leaked_note`` looks for them in an answer.

    ``passages``: each note whole and by paragraph, looked for anywhere. ``lines``: each
    note line on its own, looked for only in what the answer quotes, where an agent
    answering inline keeps one line of a note's paragraph. A line written afresh is
    not compared: a note's one-line signature or greeting is in every answer too.
    """

    passages: tuple[str, ...] = ()
    lines: tuple[str, ...] = ()


def note_passages(session: Session, ticket: Ticket) -> NotePassages:
    """The ticket's internal notes, as :class:`NotePassages`."""
    notes = [
        note or ""
        for note in session.scalars(
            select(Message.text_body).where(
                Message.ticket_id == ticket.id, Message.kind == MessageKind.INTERNAL_NOTE
            )
        )
    ]
    passages = (_squash(part) for note in notes for part in [note, *_PARAGRAPH.split(note)])
    lines = (_squash(line) for note in notes for line in note.splitlines())
    return NotePassages(_long_enough(passages), _long_enough(lines))


def _long_enough(passages: Iterable[str]) -> tuple[str, ...]:
    return tuple(p for p in dict.fromkeys(passages) if len(p) >= MIN_LEAK_CHARS)


def leaked_note(notes: NotePassages, text: str) -> str | None:
    """The first note passage that ``text`` contains (its start, for the log), or None.

    Also when ``text`` quotes it: ">" prefixes are looked through, as a note of
    several lines comes back with one in front of each line.
    """
    lines = text.splitlines()
    unquoted = [_QUOTE_PREFIX.sub("", line) for line in lines]
    haystacks = [h for h in dict.fromkeys((_squash(text), _squash("\n".join(unquoted)))) if h]
    quoted = {_squash(bare) for line, bare in zip(lines, unquoted, strict=True) if bare != line}
    found = (p for p in notes.passages if any(p in h for h in haystacks))
    return next(found, None) or next((line for line in notes.lines if line in quoted), None)


def private_addresses_out(
    text: str, settings: Settings, directory: Directory, support: str
) -> tuple[str, list[str]]:
    """``text`` with every agent's address, and every reply address of ours signed for an
    agent, replaced by ``support``; and the addresses replaced.

    The customer never sees an agent's own address (an Outlook or Apple Mail signature
    has no "-- " line that would cut it), nor an address signed for an agent, with
    which anyone who writes an agent's From answers as that agent.
    """
    found: list[str] = []

    def private(match: re.Match[str]) -> str:
        address = match.group(0)
        signed = signed_for_an_agent(address, settings.support_addresses)
        if not signed and not directory.is_agent_address(address):
            return address
        found.append(address)
        return support

    return _ADDRESS.sub(private, text), list(dict.fromkeys(found))


def safe_attachments(
    passages: NotePassages, parts: Sequence[ParsedAttachment], loop_token: str
) -> tuple[list[ParsedAttachment], list[str]]:
    """The agent's attachments that may go to the customer, and the names of those that may not.

    An attachment that is (or contains) one of our own mails -- a notification
    with its internal notes and signed agent references, attached by the
    agent's client -- or that carries a note's text stays on the ticket only.
    """
    keep: list[ParsedAttachment] = []
    dropped: list[str] = []
    for part in parts:
        text, _exact = decode_text(part.content, part.charset)
        if loop_token in text or leaked_note(passages, text) is not None:
            dropped.append(part.filename)
        else:
            keep.append(part)
    return keep, dropped


def customer_recipients(
    session: Session, ticket: Ticket, notices: Notices, directory: Directory
) -> list[Recipient]:
    """Requester first, then Cc participants; agents, own and suppressed addresses left out."""
    roles = [ParticipantRole.REQUESTER, ParticipantRole.CC]
    if not notices.settings.agent_mail.reply_to_cc:
        roles = [ParticipantRole.REQUESTER]
    rows = session.execute(
        select(Contact.email, Contact.name, Participant.role)
        .join(Participant, Participant.contact_id == Contact.id)
        .where(Participant.ticket_id == ticket.id, Participant.role.in_(roles))
        .order_by(Participant.id)
    ).all()
    people: dict[str, Recipient] = {}
    if ticket.requester is not None:
        people[ticket.requester.email] = Recipient(ticket.requester.email, ticket.requester.name)
    for email, name, _role in rows:
        people.setdefault(email, Recipient(email, name))
    now = notices.clock()
    # Bounces suppress the address as it went on the wire (an IDN domain in A-labels);
    # a contact may be known by its U-labels.
    wire = {addr: (wire_address(addr) or addr).lower() for addr in people}
    suppressed = set(
        session.scalars(
            select(Suppression.address).where(
                Suppression.address.in_({*people, *wire.values()}), Suppression.until > now
            )
        )
    )
    settings = notices.settings
    return [
        r
        for r in people.values()
        if "@" in r.addr
        and addressable(r.addr)
        and not settings.is_own_address(r.addr)
        and not {r.addr, wire[r.addr]} & suppressed
        and not directory.is_agent_address(r.addr)
    ]


def carried_attachments(parts: Sequence[ParsedAttachment]) -> list[OutboundAttachment]:
    """The agent's attachments as the composer takes them; names are display text only."""
    out = []
    for part in parts:
        # Bounded keeping both ends: a name cut short would lose its extension.
        name = elided(one_line(part.filename).replace("/", "_").replace("\\", "_"), 200)
        ctype = part.content_type.lower()
        if not _SAFE_TYPE.match(ctype) or ctype.split("/")[0] in ("message", "multipart"):
            ctype = "application/octet-stream"
        charset = part.charset if ctype.startswith("text/") else None
        cid = part.content_id if part.inline else None
        out.append(OutboundAttachment(name, ctype, part.content, cid, charset))
    return out


def queue_customer_reply(
    session: Session,
    notices: Notices,
    directory: Directory,
    ticket: Ticket,
    agent: AgentSettings,
    text: str,
    attachments: Sequence[ParsedAttachment] = (),
) -> Sent | None:
    """Queue the agent's answer to the customer side; None if there is nobody to send to."""
    recipients = customer_recipients(session, ticket, notices, directory)
    if not recipients:
        return None
    customer = ticket.requester or Contact(email=recipients[0].addr, name=recipients[0].name)
    variables = notices.variables(ticket, customer)
    variables["reply"] = text
    variables["agent"] = {"display_name": agent.display_name}
    support = notices.support_address_for(ticket)
    defaults = notices.settings.address_defaults(support)
    rendered = notices.renderer.render(
        "agent_reply",
        "customer",
        variables,
        queue=ticket.queue,
        language=defaults.language if defaults else None,
    )
    answers = queries.last_customer_message(session, ticket)
    mail = OutboundMail(
        purpose="agent_reply",
        ticket=ticket,
        recipients=recipients,
        rendered=rendered,
        support_address=support,
        in_reply_to=answers.header_message_id if answers else None,
        references=notices._references(session, answers) if answers else (),
        auto_submitted="no",
        from_name=notices.from_name_for(ticket),
        attachments=carried_attachments(attachments),
        author=agent.name,
    )
    row = notices.composer.queue(session, mail)
    return Sent(tuple(r.addr for r in recipients), row.id)
