"""Builds outbound mail (MAIL-RULES §4) and queues it in the caller's transaction.

Every mail we generate has our signed Message-ID (stored for threading),
In-Reply-To/References to what it answers, the ticket tag in the subject, a
signed Reply-To that leads back to the ticket, the signed body marker,
``Auto-Submitted`` and our loop header. Values that came from mail (names,
subjects) are folded to one line, so they cannot add headers.
"""

from __future__ import annotations

import secrets
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from email.errors import HeaderParseError
from email.headerregistry import Address as HeaderAddress
from email.headerregistry import HeaderRegistry
from email.message import EmailMessage
from email.policy import SMTP, Policy
from email.utils import format_datetime
from typing import NamedTuple

from sqlalchemy.orm import Session

from maildesk.config import Settings
from maildesk.db.models import (
    Direction,
    IdOrigin,
    KnownMessageId,
    Message,
    MessageKind,
    Outbox,
    OutboxState,
    Ticket,
)
from maildesk.domain.address import ascii_domain, elided, mailbox_key, overlong_address
from maildesk.domain.author import shorten
from maildesk.domain.signing import RefPurpose, Signer
from maildesk.domain.subject import add_ticket_tag, one_reply_prefix
from maildesk.intake.store import put_blob
from maildesk.outbound.templates import Rendered

LOOP_HEADER = "X-Maildesk-Loop"
# How our mail is written: CR LF, and bodies in 7 bits (quoted-printable or base64),
# so that any relay takes it as it is, with or without 8BITMIME (RFC 6152).
WIRE_POLICY = SMTP.clone(cte_type="7bit")
# Mail to or from an address with a local part beyond ASCII (RFC 6531/6532): its
# header fields in UTF-8 as they are (an encoded-word may not stand in an address),
# bodies still in 7 bits. Only sent with SMTPUTF8 (maildesk.outbound.sender).
WIRE_UTF8_POLICY = WIRE_POLICY.clone(utf8=True)
MAX_REFERENCES = 20
# The longest line RFC 5322 allows, without its CR LF.
MAX_LINE_OCTETS = 998
# The most of a mail's subject that mail we write repeats: as much as a ticket keeps
# of it (maildesk.pipeline.apply), never the whole of a header block the parser took.
MAX_QUOTED_SUBJECT = 2000


# The email package's reading of a header value, as it reads ours when we write them.
_HEADERS = HeaderRegistry()
# How many RFC 2047 layers one_line takes off a value before it gives up decoding.
MAX_ENCODED_LAYERS = 8


def _folded(value: str) -> str:
    return " ".join("".join(ch if ch >= " " or ch == "\t" else " " for ch in value).split())


def one_line(value: str) -> str:
    """Fold any line breaks and control characters out of a header value.

    What the email package would decode in it is decoded and folded first: an
    RFC 2047 encoded-word in the text (a subject or name the sender encoded twice,
    its inner layer holding a CR LF) is decoded again when the text becomes a header
    of our mail, and Python before 3.11.10 and 3.12.5 writes that line break as it
    is (CVE-2024-6923): a ``Bcc:`` or a body of the sender's choosing in our mail.
    """
    text = _folded(value)
    for _ in range(MAX_ENCODED_LAYERS):
        if "=?" not in text:
            return text
        decoded = _folded(str(_HEADERS("Subject", text)))
        if decoded == text:
            return text
        text = decoded
    return text.replace("=?", "= ?")  # still encoded: written as plain text, not decoded


def quoted_subject(subject: str) -> str:
    """A mail's subject as mail we write repeats it: one line, cut at :data:`MAX_QUOTED_SUBJECT`.

    Whoever sends the mail chooses its subject, up to the parser's limit for a
    whole header block (256 kB); a notice that quoted all of it would be a
    quarter megabyte, to our own agents or to an address the sender forged.
    """
    return shorten(one_line(subject), MAX_QUOTED_SUBJECT)


class MessageIdsHeader(str):
    """In-Reply-To or References as we write them: ``<id>`` tokens, folded only between ids.

    The email package folds any header token too long for a 78-character line
    into RFC 2047 encoded-words, so an Outlook-length Message-ID went out as
    ``=?utf-8?q?=3CDB9PR...?=``: no mail client matches that to the customer's
    mail, and our answer fell out of their conversation. An id is never split
    or encoded; one that cannot be written as it is (not printable ASCII, or
    longer than a line may be) is left out.
    """

    name: str

    def __new__(cls, name: str, ids: Sequence[str]) -> MessageIdsHeader:
        room = MAX_LINE_OCTETS - len(name) - 4  # "Name: <" ... ">"
        usable = [i for i in ids if _writable_id(i) and len(i) <= room]
        header = super().__new__(cls, " ".join(f"<{i}>" for i in usable))
        header.name = name
        return header

    def fold(self, *, policy: Policy) -> str:
        limit = policy.max_line_length or MAX_LINE_OCTETS
        lines = [f"{self.name}:"]
        for token in self.split():
            if len(lines[-1]) + 1 + len(token) > limit and lines[-1] != f"{self.name}:":
                lines.append("")
            lines[-1] += " " + token
        return policy.linesep.join(lines) + policy.linesep


def _writable_id(message_id: str) -> bool:
    return bool(message_id) and all("!" <= ch <= "~" and ch not in "<>" for ch in message_id)


def wire_address(address: str) -> str | None:
    """``address`` as it goes on the wire, or None when it is no address we can write.

    A domain beyond ASCII (``kunde@bücher.example``) goes out as its IDNA
    A-labels (``kunde@xn--bcher-kva.example``), which every mail system reads
    as the same domain, so such mail needs nothing of the relay. A local part
    beyond ASCII (``jörg@example.de``) has no ASCII form: it is kept as it is
    (RFC 6531), and the mail goes out with SMTPUTF8 (see :func:`needs_smtputf8`).
    An address longer than RFC 5321 allows is no mailbox: None, and nothing is sent.
    """
    local, _, domain = address.rpartition("@")
    if not local or not domain or overlong_address(address) is not None:
        return None
    wire_domain = ascii_domain(domain)
    if wire_domain is None:
        return None
    if not local.isascii() and not _utf8_local_part(local):
        return None
    # The syntax is RFC 5321's with any UTF-8 character as a letter (RFC 6531 s. 3.3):
    # checked on a stand-in with an ASCII letter for each of them.
    stand_in = "".join(ch if ch.isascii() else "x" for ch in local)
    try:
        HeaderAddress(addr_spec=f"{stand_in}@{wire_domain}")
    except (ValueError, TypeError, HeaderParseError):  # HeaderDefect is a ValueError
        return None
    wire = f"{local}@{wire_domain}"
    return wire if overlong_address(wire) is None else None


def _utf8_local_part(local: str) -> bool:
    """No controls, unpaired surrogates, private or unassigned code points, or spaces."""
    return all(
        ch.isascii() or unicodedata.category(ch) not in {"Cc", "Cs", "Co", "Cn", "Zs", "Zl", "Zp"}
        for ch in local
    )


def needs_smtputf8(address: str) -> bool:
    """Whether mail to or from ``address`` (as :func:`wire_address` gives it) needs SMTPUTF8."""
    return not address.isascii()


def addressable(address: str) -> bool:
    """Whether ``address`` can be written into a To header we send (see :func:`wire_address`)."""
    return wire_address(address) is not None


def header_address(name: str, address: str) -> HeaderAddress:
    """An address for a header we write, its local part beyond ASCII as it is (RFC 6532)."""
    if address.isascii():
        return HeaderAddress(name, addr_spec=address)
    local, _, domain = address.rpartition("@")
    return HeaderAddress(name, username=local, domain=domain)


def split_address(address: str) -> tuple[str, str]:
    local, _, domain = address.rpartition("@")
    return local, domain


@dataclass(frozen=True)
class Recipient:
    addr: str
    name: str = ""


class OutboundAttachment(NamedTuple):
    """A file that goes out as it came in: its name is display text only."""

    filename: str
    content_type: str
    data: bytes
    content_id: str | None = None  # set for an inline part the HTML refers to
    charset: str | None = None  # of a text file, so the reader's client decodes it right


@dataclass(frozen=True)
class OutboundMail:
    """One mail to queue: what to say, to whom, in answer to what."""

    purpose: str  # template event: ack, resolved, ...
    ticket: Ticket
    recipients: Sequence[Recipient]
    rendered: Rendered
    support_address: str
    in_reply_to: str | None = None
    references: Sequence[str] = ()
    kind: MessageKind = MessageKind.AUTO
    auto_submitted: str = "auto-replied"
    from_name: str = ""  # display name; empty: outbound.from_name
    # Issue 5: a mail to one agent gets a Reply-To and Message-ID signed for that
    # agent (``agent``).
    agent: str = ""
    reply_purpose: str = ""  # default: "a" for an agent, else "t"
    reply_extra: tuple[str, ...] = ()
    attachments: Sequence[OutboundAttachment] = ()
    # The agent whose answer or command a mail to the customer side is: told if
    # it is not delivered (maildesk.outbound.delivery_failed). None: nobody's.
    author: str | None = None


def message_id_purpose(mail: OutboundMail) -> str:
    """What a reply that names this mail only by its Message-ID (In-Reply-To) is.

    Mail to an agent: an answer to the customer (``a``), unless replies to it
    are to stay internal, as its Reply-To says (``n``); a confirmation request
    too, whose confirmation needs its signed address. Other mail: ``t``.
    """
    if not mail.agent:
        return RefPurpose.TICKET
    if mail.reply_purpose in (RefPurpose.NOTE, RefPurpose.CONFIRM):
        return RefPurpose.NOTE
    return RefPurpose.AGENT


class Composer:
    def __init__(self, settings: Settings, signer: Signer, clock: Callable[[], datetime]) -> None:
        self.settings = settings
        self.signer = signer
        self.clock = clock

    @property
    def loop_token(self) -> str:
        """Identifies this installation in our loop header without revealing the secret."""
        return self.signer.sign("loop", length=16)

    def build(self, mail: OutboundMail, message_id: str) -> EmailMessage:
        ticket = mail.ticket
        assert ticket.number is not None
        tag = self.settings.threading.ticket_tag
        local, domain = split_address(mail.support_address)
        wire = [(r, wire_address(r.addr)) for r in mail.recipients]
        unaddressable = [r.addr for r, address in wire if address is None]
        if unaddressable:  # not an address at all: send nothing
            shown = ", ".join(elided(a) for a in unaddressable[:5])
            raise ValueError(f"not an address we can write: {shown}")
        utf8 = any(needs_smtputf8(a or "") for _r, a in wire)
        msg = EmailMessage(policy=WIRE_UTF8_POLICY if utf8 else WIRE_POLICY)
        msg["From"] = HeaderAddress(
            one_line(mail.from_name or self.settings.outbound.from_name),
            addr_spec=mail.support_address,
        )
        msg["To"] = [header_address(one_line(r.name), a or "") for r, a in wire]
        reply_local = self.signer.reply_local_part(
            local,
            mail.reply_purpose or (RefPurpose.AGENT if mail.agent else RefPurpose.TICKET),
            ticket.number,
            mail.agent,
            extra=mail.reply_extra,
        )
        msg["Reply-To"] = HeaderAddress(
            one_line(mail.from_name or self.settings.outbound.from_name),
            addr_spec=f"{reply_local}@{domain}",
        )
        # "Re: " before a subject that was itself a reply must not make "Re: Re: ...".
        subject = one_reply_prefix(one_line(mail.rendered.subject))
        msg["Subject"] = add_ticket_tag(subject, tag, ticket.number)
        msg["Date"] = format_datetime(self.clock())
        msg["Message-ID"] = f"<{message_id}>"
        in_reply_to = MessageIdsHeader("In-Reply-To", [mail.in_reply_to or ""])
        if in_reply_to:
            msg["In-Reply-To"] = in_reply_to
        refs = [r for r in dict.fromkeys([*mail.references, mail.in_reply_to or ""]) if r]
        references = MessageIdsHeader("References", refs[-MAX_REFERENCES:])
        if references:
            msg["References"] = references
        msg["Auto-Submitted"] = mail.auto_submitted
        msg["X-Auto-Response-Suppress"] = "All"
        msg[LOOP_HEADER] = self.loop_token
        marker = self.signer.body_marker(ticket.number)
        msg.set_content(mail.rendered.text.rstrip("\n") + f"\n\n{marker}\n")
        if mail.rendered.html is not None:
            footer = f'<p style="color:#999;font-size:smaller">{marker}</p>'
            html = mail.rendered.html
            html = (
                html.replace("</body>", footer + "</body>") if "</body>" in html else html + footer
            )
            msg.add_alternative(html, subtype="html")
        for part in mail.attachments:
            maintype, _, subtype = part.content_type.partition("/")
            msg.add_attachment(
                part.data,
                maintype=maintype or "application",
                subtype=subtype or "octet-stream",
                filename=one_line(part.filename) or None,
                cid=f"<{one_line(part.content_id)}>" if part.content_id else None,
                params={"charset": part.charset} if part.charset else None,
            )
        return msg

    def queue(self, session: Session, mail: OutboundMail) -> Outbox:
        """Write the outbound Message, its id for threading and the outbox row.

        Recipients are kept as they go on the wire (IDNA domains), so the
        envelope, the To header and a bounce's Final-Recipient all agree. The
        stored bytes are what goes on the wire: 7-bit, or for a recipient with a
        local part beyond ASCII, header fields in UTF-8 (sent with SMTPUTF8).
        """
        recipients = [Recipient(wire_address(r.addr) or r.addr, r.name) for r in mail.recipients]
        mail = replace(mail, recipients=recipients)
        ticket = mail.ticket
        assert ticket.number is not None
        now = self.clock()
        _local, domain = split_address(mail.support_address)
        message_id = self.signer.outbound_message_id(
            ticket.number,
            domain or self.settings.mail_domain,
            nonce=secrets.token_hex(6),
            purpose=message_id_purpose(mail),
            agent=mail.agent,
        )
        mime = self.build(mail, message_id)
        raw = mime.as_bytes()
        digest = put_blob(session, raw)
        message = Message(
            ticket_id=ticket.id,
            dedupe_key=message_id,
            header_message_id=message_id,
            direction=Direction.OUTBOUND,
            kind=mail.kind,
            from_addr=mail.support_address,
            from_name=mail.from_name or self.settings.outbound.from_name,
            to_addrs=[r.addr for r in mail.recipients],
            cc_addrs=[],
            subject=str(mime["Subject"]),
            date=now,
            text_body=mail.rendered.text,
            html_body=mail.rendered.html,
            raw_sha256=digest,
            created_at=now,
        )
        session.add(message)
        session.add(
            KnownMessageId(message_id=message_id, ticket_id=ticket.id, origin=IdOrigin.OUTBOUND)
        )
        session.flush()
        row = Outbox(
            created_at=now,
            ticket_id=ticket.id,
            message_pk=message.id,
            purpose=mail.purpose,
            message_id=message_id,
            envelope_from="",
            recipients=[r.addr for r in mail.recipients],
            # The per-sender limits count by mailbox: "alice"@, Alice+x@ and alice@ are one.
            recipient_key=mailbox_key(mail.recipients[0].addr) if mail.recipients else "",
            raw_sha256=digest,
            state=OutboxState.QUEUED,
            next_attempt_at=now,
            author=mail.author,
        )
        session.add(row)
        session.flush()
        # VERP: a bounce to this envelope sender names exactly this mail.
        local, domain = split_address(mail.support_address)
        verp = self.signer.reply_local_part(local, "bounce", ticket.number, extra=(str(row.id),))
        row.envelope_from = f"{verp}@{domain}"
        return row
