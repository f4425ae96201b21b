"""The parsed form of one inbound message, as every pipeline stage sees it.

Produced by :func:`maildesk.pipeline.parse.parse_message` from raw bytes.
Pure data: no parser objects, no database rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

# Put first on the header-only copy the IMAP poller stores of a message over
# its size limit; the pipeline quarantines such a copy with this reason.
TRUNCATED_HEADER = "X-Maildesk-Truncated"
# Likewise first on the placeholder stored for a message the server failed to deliver.
UNFETCHABLE_HEADER = "X-Maildesk-Unfetchable"


@dataclass(frozen=True, slots=True)
class Address:
    """One mailbox: ``addr`` is lower-cased ``local@domain`` (may be empty if unparsable)."""

    addr: str
    name: str = ""


@dataclass(frozen=True, slots=True)
class ParsedAttachment:
    """An attachment or inline part.

    ``filename`` is the decoded name the sender gave, for display only: it is
    never used as a path. ``content`` is the decoded payload.
    """

    filename: str
    content_type: str
    content: bytes
    content_id: str | None = None
    inline: bool = False
    charset: str | None = None  # of a text part, as its sender labelled it


@dataclass(frozen=True, slots=True)
class DeliveryStatus:
    """One per-recipient block of a multipart/report; delivery-status part."""

    final_recipient: str
    action: str  # failed / delayed / delivered / relayed / expanded (lower-case)
    status: str  # e.g. "5.1.1"
    diagnostic: str = ""
    # The address as the sender gave it, before a forward or alias rewrote it to
    # ``final_recipient`` (RFC 3464 Original-Recipient; "" when not reported).
    original_recipient: str = ""


@dataclass(frozen=True, slots=True)
class ParsedMessage:
    """Everything the pipeline needs from one message.

    Header values are decoded (RFC 2047, 8-bit as UTF-8 with a latin-1
    fallback) so they never raise; ``headers`` keeps every header in order.
    Message-IDs are stored without angle brackets and never truncated.
    """

    message_id: str | None
    in_reply_to: tuple[str, ...]
    references: tuple[str, ...]
    subject: str
    from_: Address | None
    to: tuple[Address, ...]
    cc: tuple[Address, ...]
    reply_to: tuple[Address, ...]
    date: datetime | None  # timezone-aware (UTC) when the Date header parsed
    text: str  # always set when the message has any text or HTML body
    html: str | None
    attachments: tuple[ParsedAttachment, ...]
    headers: tuple[tuple[str, str], ...]
    content_type: str  # top-level, lower-case, e.g. "multipart/report"
    thread_index: str | None = None  # raw Thread-Index header value
    delivery_status: tuple[DeliveryStatus, ...] = ()
    returned_headers: tuple[tuple[str, str], ...] = ()  # headers of the bounced original
    defects: tuple[str, ...] = field(default=())  # parser complaints, for the record
    # What the parse left out of this form (over a limit); the raw mail still has it.
    cuts: tuple[str, ...] = field(default=())
    # Addresses of From and Reply-To left out as no mailbox (longer than RFC 5321
    # allows), each with why: mail is never sent to them, nor are they stored. To and
    # Cc keep theirs, as written (they say where the mail went); a Cc of that kind
    # never becomes a participant (see the pipeline's apply).
    unusable_addresses: tuple[str, ...] = field(default=())
    # Header values by lower-case name: the guard asks for dozens of headers per message.
    _by_name: dict[str, list[str]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_name: dict[str, list[str]] = {}
        for key, value in self.headers:
            by_name.setdefault(key.lower(), []).append(value)
        object.__setattr__(self, "_by_name", by_name)

    def header(self, name: str) -> str | None:
        """First value of header ``name`` (case-insensitive), or None."""
        values = self._by_name.get(name.lower())
        return values[0] if values else None

    def header_all(self, name: str) -> list[str]:
        return list(self._by_name.get(name.lower(), ()))
