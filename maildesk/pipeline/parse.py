"""The parse stage: raw bytes -> :class:`ParsedMessage`, or a :class:`ParseError`.

MIME structure comes from the standard library (``email.message_from_bytes``
with the compat32 policy — the same parse mail-parser runs internally);
addresses and dates go through mail-parser's recovering parsers; HTML-only
mail is turned into text with inscriptis. We do not build a full
``mailparser.MailParser``: ~40 % of its time goes to Received-header
analysis we never read, and its body extraction would have to be redone
anyway (7-bit ISO-2022-JP bodies come back undecoded, nested messages are
merged into the text, attachments are re-encoded to base64).

Message-IDs and references are read from the raw header
(:mod:`maildesk.domain.rawheader`). Hostile input is bounded twice: header
fields with thousands of parameters (which make the standard library's
parameter parser quadratic) are trimmed in a copy before parsing and a defect
is recorded, and the whole parse runs under a :class:`Deadline`. The structure
is bounded as well: nesting (:data:`MAX_PARSE_DEPTH`, else a ParseError naming
it) and the attachments extracted (:data:`MAX_ATTACHMENTS`); what a limit leaves
out is listed in ``ParsedMessage.cuts`` and noted as a ``parse`` event.
"""

from __future__ import annotations

import binascii
import dataclasses
import email
import email.feedparser
import email.parser
import email.utils
import enum
import functools
import itertools
import mimetypes
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import Message
from email.policy import compat32
from typing import Any

from inscriptis import get_text
from mailparser.dates import parse_mail_date
from mailparser.utils import get_addresses

from maildesk.domain.address import MAX_UNUSABLE_NOTES, dsn_address, elided, overlong_address
from maildesk.domain.message import Address, DeliveryStatus, ParsedAttachment, ParsedMessage
from maildesk.domain.rawheader import (
    decode_header_text,
    decode_text,
    message_id_from_value,
    parse_msgid_list,
    raw_header_index,
    split_header_block,
    unescape_header,
)
from maildesk.pipeline.deadline import DeadlineExceeded, deadline

MAX_PARAMETERS = 64  # per Content-Type / Content-Disposition field
MAX_DEPTH = 40  # MIME nesting we descend into
# MIME nesting (multipart and message/* levels) the parser builds at all: deeper
# mail is quarantined with this limit as the reason. The standard library's
# parser recurses once per level (it failed with RecursionError near 450, how
# near depending on the caller's stack) and checked every line against every
# enclosing boundary: 400 levels of 100,000 lines (a 330 KB mail) took 3.3 s.
MAX_PARSE_DEPTH = 150
# Attachments extracted from one mail. Each becomes a row and a blob in apply's
# transaction: 100,000 one-byte parts (a 5 MB mail) held the write lock for 11 s
# on SQLite and 29 s on PostgreSQL. The rest stay in the raw mail (a defect says so).
MAX_ATTACHMENTS = 1_000
MAX_DEFECTS = 50
# HTML handed to inscriptis, in characters: lxml's tree costs ~50 bytes of
# memory per byte of markup (a 20 MB body of tags took 1.1 GB), and the
# text of an HTML-only ticket needs no more than its first megabyte.
MAX_HTML_TO_TEXT = 1_000_000

_PARAM_FIELD = re.compile(rb"(?im)^(content-(?:type|disposition))[ \t]*:")
_FIELD_END = re.compile(rb"(?:\r\n|\r|\n)(?![ \t])")
_STATUS_CODE = re.compile(r"\b[245]\.\d{1,3}\.\d{1,3}\b")
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
_LINE_ENDS = re.compile(r"\r\n?")
_ADDRESS_FIELDS = ("from", "to", "cc", "reply-to")
# Address field values remembered, per process, and the longest one remembered
# (in characters): bounded memory whatever the mail.
ADDRESS_CACHE_SIZE = 4096
MAX_CACHED_ADDRESS_FIELD = 2048


class ParseError(Exception):
    """The message cannot be parsed; ``reason`` says why, for the quarantine."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ParseTimeout(ParseError):
    """Parsing took longer than the time limit."""


class _TooDeep(Exception):
    """The MIME structure nests deeper than :data:`MAX_PARSE_DEPTH`."""


# Not in typeshed: the feed parser's line buffer, whose readline we make cheaper.
_BufferedSubFile: Any = getattr(email.feedparser, "BufferedSubFile")  # noqa: B009


class _SubFile(_BufferedSubFile):
    """The parser's line buffer, checking a line against the boundaries only if it can match.

    Every matcher the standard library pushes (a multipart boundary, ``--...``, or
    the blank line between delivery-status blocks) needs a line starting with
    ``-``, CR or LF; any other line is body text at once, whatever the nesting.
    """

    def readline(self) -> str | object:
        if self._lines and self._lines[0][:1] not in _EOF_STARTS:
            line: str = self._lines.popleft()
            return line
        result: str | object = super().readline()
        return result


_EOF_STARTS = frozenset({"-", "\r", "\n", ""})


class _BoundedParser(email.feedparser.FeedParser):
    """The standard library's feed parser (compat32), refusing nesting beyond a limit."""

    def __init__(self) -> None:
        super().__init__(policy=compat32)
        self._input = _SubFile()

    def _new_message(self) -> None:
        # The stack holds the message being parsed and each one enclosing it.
        if len(self._msgstack) >= MAX_PARSE_DEPTH:  # type: ignore[attr-defined]
            raise _TooDeep
        super()._new_message()  # type: ignore[misc]


_FEED_CHARS = 1 << 16


def _stdlib_parse(data: bytes) -> Message:
    """``email.message_from_bytes(data)``, in bounded depth and memory.

    ``message_from_bytes`` reads the text through an ``io.StringIO``, which holds
    four bytes per character: a 10 MB mail cost 40 MB there alone.
    """
    text = data.decode("ascii", "surrogateescape")
    parser = _BoundedParser()
    for start in range(0, len(text), _FEED_CHARS):
        parser.feed(text[start : start + _FEED_CHARS])
    return parser.close()


class MediaType(enum.StrEnum):
    """Content types the parse stage treats specially."""

    TEXT_PLAIN = "text/plain"
    TEXT_HTML = "text/html"
    REPORT = "multipart/report"
    DELIVERY_STATUS = "message/delivery-status"
    GLOBAL_DELIVERY_STATUS = "message/global-delivery-status"  # RFC 6533: fields in UTF-8
    RFC822_HEADERS = "text/rfc822-headers"
    TNEF = "application/ms-tnef"
    RFC822 = "message/rfc822"
    GLOBAL = "message/global"
    GLOBAL_HEADERS = "message/global-headers"  # RFC 6533: a returned header in UTF-8
    MESSAGE_HEADERS = "message/rfc822-headers"  # not registered, but MTAs send it


_MESSAGE_TYPES = frozenset({MediaType.RFC822, MediaType.GLOBAL})
_REPORT_TYPES = frozenset({MediaType.DELIVERY_STATUS, MediaType.GLOBAL_DELIVERY_STATUS})
_HEADERS_TYPES = frozenset({MediaType.MESSAGE_HEADERS, MediaType.GLOBAL_HEADERS})
# Transfer encodings the standard library does not undo in a message/* part it parsed
# as a nested message (RFC 6532 s. 3.5 allows them for message/global and its kin).
_ENCODINGS = frozenset({"base64", "quoted-printable"})


class Disposition(enum.StrEnum):
    INLINE = "inline"
    ATTACHMENT = "attachment"


def parse_message(
    raw: bytes, *, time_limit: float = 10.0, max_header_bytes: int = 256 * 1024
) -> ParsedMessage:
    """Parse one message. Raises only :class:`ParseError` (or :class:`ParseTimeout`)."""
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise ParseError(f"expected bytes, got {type(raw).__name__}")
    data = bytes(raw)
    if not data.strip():
        raise ParseError("empty message")
    try:
        with deadline(time_limit):
            return _without_nul(_parse(data, max_header_bytes))
    except DeadlineExceeded as exc:
        raise ParseTimeout(f"parsing took longer than the {time_limit:g} s time limit") from exc
    except ParseError:
        raise
    except (RecursionError, _TooDeep) as exc:
        raise ParseError(
            f"MIME structure nested deeper than {MAX_PARSE_DEPTH} levels (MAX_PARSE_DEPTH)"
        ) from exc
    except Exception as exc:
        raise ParseError(f"parser failed: {type(exc).__name__}: {exc}"[:300]) from exc


def _parse(raw: bytes, max_header_bytes: int) -> ParsedMessage:
    header_block, _ = split_header_block(raw)
    if len(header_block) > max_header_bytes:
        raise ParseError(
            f"header block is {len(header_block)} bytes, over the {max_header_bytes}-byte limit"
        )
    defects: list[str] = []
    to_parse = _trim_parameters(raw, defects)
    msg = _stdlib_parse(to_parse)
    hint = _safe_charset(msg)
    raw_index = raw_header_index(header_block)
    headers = tuple((name, decode_header_text(str(value), hint)) for name, value in msg.raw_items())
    if not headers and not raw_index:  # text, or bytes, that never were a mail
        raise ParseError("not a mail message: no header field (From:, Subject: ...) at its start")
    walker = _PartWalker(hint=hint)
    walker.walk(msg, depth=0, in_report=False)
    defects.extend(walker.defects)
    cuts = list(walker.cuts)
    if walker.skipped_attachments:
        cuts.append(
            f"{walker.skipped_attachments} attachments over the limit of {MAX_ATTACHMENTS} "
            "(MAX_ATTACHMENTS) not extracted; they are in the raw mail"
        )
    text = "\n\n".join(walker.plain) if walker.plain else ""
    html = "\n\n".join(walker.html) if walker.html else None
    if not text.strip():
        text = _html_to_text(html, defects, cuts) if html else "\n\n".join(walker.other_text)
    address_values = _address_values(msg, hint)
    unusable: list[str] = []
    date, date_defect = _parse_date(msg, hint)
    if date_defect:
        defects.append(date_defect)
    return ParsedMessage(
        message_id=_first_message_id(raw_index.get("message-id", [])),
        in_reply_to=tuple(parse_msgid_list(" ".join(raw_index.get("in-reply-to", [])))),
        references=tuple(parse_msgid_list(" ".join(raw_index.get("references", [])))),
        subject=_first(headers, "subject") or "",
        from_=_from_address(address_values.get("from", [])[:1], defects, unusable),
        to=_addresses(address_values.get("to", []), defects),
        cc=_addresses(address_values.get("cc", []), defects),
        reply_to=_reply_addresses(address_values.get("reply-to", []), defects, unusable),
        date=date,
        text=text,
        html=html,
        attachments=tuple(walker.attachments),
        headers=headers,
        content_type=msg.get_content_type(),
        thread_index=next(iter(raw_index.get("thread-index", [])), None),
        delivery_status=tuple(walker.delivery_status),
        returned_headers=walker.returned_headers,
        defects=tuple(dict.fromkeys([*cuts, *defects]))[:MAX_DEFECTS],
        cuts=tuple(dict.fromkeys(cuts)),
        unusable_addresses=_bounded_list(unusable),
    )


def _bounded_list(notes: list[str]) -> tuple[str, ...]:
    """At most :data:`MAX_UNUSABLE_NOTES` notes, then how many more there were."""
    notes = list(dict.fromkeys(notes))
    if len(notes) <= MAX_UNUSABLE_NOTES:
        return tuple(notes)
    more = len(notes) - MAX_UNUSABLE_NOTES
    return (*notes[:MAX_UNUSABLE_NOTES], f"and {more} more address(es) left out for that reason")


def _without_nul(value: Any) -> Any:
    """``value`` (a parsed message, or any of its parts) with NUL in its text as U+FFFD.

    A raw NUL in a header or quoted-printable ``=00`` decodes to NUL, which
    PostgreSQL's text and JSON columns refuse: the message was quarantined
    there, and a ticket on SQLite. Attachment bytes are left as they are.
    What holds no NUL is returned as it is (the same object).
    """
    if isinstance(value, str):
        return value.replace("\0", "\ufffd") if "\0" in value else value
    if isinstance(value, tuple):
        # Strings, or pairs of strings (the headers): one check for all of them.
        if "\0" not in _joined(value):
            return value
        items = [_without_nul(item) for item in value]
        return tuple(items) if any(a is not b for a, b in zip(items, value, strict=True)) else value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {}
        for spec in dataclasses.fields(value):
            if spec.init:
                old = getattr(value, spec.name)
                new = _without_nul(old)
                if new is not old:
                    changes[spec.name] = new
        return dataclasses.replace(value, **changes) if changes else value
    return value


def _joined(values: tuple[Any, ...]) -> str:
    """The text of a tuple of strings or of string pairs, joined; NUL for anything else."""
    try:
        return "".join(values)
    except TypeError:
        pass
    try:
        return "".join(itertools.chain.from_iterable(values))
    except TypeError:
        return "\0"  # not text alone: look at each item


def _trim_parameters(raw: bytes, defects: list[str]) -> bytes:
    """Copy of ``raw`` with absurd Content-Type/-Disposition parameter lists cut down.

    The standard library's parameter parser is quadratic: one 14 KB field of
    ~7,000 empty parameters costs it seconds. Empty parameters are dropped
    and at most :data:`MAX_PARAMETERS` are kept; a defect is recorded.
    """
    if raw.count(b";") <= MAX_PARAMETERS:
        return raw
    pieces: list[bytes] = []
    pos = 0
    for match in _PARAM_FIELD.finditer(raw):
        if match.start() < pos:
            continue
        end_match = _FIELD_END.search(raw, match.end())
        end = end_match.start() if end_match else len(raw)
        value = raw[match.end() : end]
        if value.count(b";") <= MAX_PARAMETERS:
            continue
        segments = value.split(b";")
        params = [seg.strip() for seg in segments[1:] if seg.strip()]
        kept = params[:MAX_PARAMETERS]
        name = match.group(1).decode("ascii")
        defects.append(f"{name} field with {len(segments) - 1} parameters trimmed to {len(kept)}")
        rebuilt = b"; ".join([segments[0].strip(), *kept])
        pieces.append(raw[pos : match.start()])
        pieces.append(match.group(1) + b": " + rebuilt)
        pos = end
    if not pieces:
        return raw
    pieces.append(raw[pos:])
    return b"".join(pieces)


# A charset label as it may be passed on in our own mail's header parameter.
_CHARSET_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:+-]{0,39}$")


def _text_charset(part: Message, ctype: str) -> str | None:
    """The charset a text attachment's sender labelled it with, if it is a plain label."""
    charset = _safe_charset(part) if ctype.startswith("text/") else None
    return charset if charset and _CHARSET_LABEL.match(charset) else None


def _safe_charset(part: Message) -> str | None:
    try:
        return part.get_content_charset()
    except Exception:  # a malformed RFC 2231 charset parameter
        return None


def _first(headers: tuple[tuple[str, str], ...], name: str) -> str | None:
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


def _first_message_id(values: list[str]) -> str | None:
    for value in values:
        msgid = message_id_from_value(value)
        if msgid is not None:
            return msgid
    return None


def _address_values(msg: Message, hint: str | None) -> dict[str, list[str]]:
    """Address header values, unfolded and 8-bit-decoded but RFC 2047 intact.

    Encoded words are left for mail-parser's address parser, which decodes
    display names where the syntax allows it.
    """
    values: dict[str, list[str]] = {}
    for name, value in msg.raw_items():
        lname = name.lower()
        if lname in _ADDRESS_FIELDS:
            values.setdefault(lname, []).append(unescape_header(str(value), hint))
    return values


def _parse_addresses(values: list[str], defects: list[str]) -> list[Address]:
    result: list[Address] = []
    for value in values:
        if not value.strip():
            continue
        if len(value) <= MAX_CACHED_ADDRESS_FIELD:
            addresses, unparsable = _address_field_cached(value)
        else:
            addresses, unparsable = _address_field(value)
        if unparsable:
            defects.append("address field unparsable by mail-parser")
        result.extend(addresses)
    return result


def _address_field(value: str) -> tuple[tuple[Address, ...], bool]:
    """The addresses of one field value, and whether mail-parser failed on it (pure)."""
    unparsable = False
    try:
        pairs = get_addresses(value, decode_names=True)
    except Exception:
        unparsable = True
        pairs = email.utils.getaddresses([value])
    result = []
    for name, addr in pairs:
        addr = _CONTROL_CHARS.sub("", addr).strip().lower()
        name = _CONTROL_CHARS.sub("", decode_header_text(name)).strip().strip('"')
        if addr or name:
            result.append(Address(addr=addr, name=name))
    return tuple(result), unparsable


# The same field value comes again and again (To: the support address, a list's
# From and Reply-To); mail-parser's recovering address parser was a sixth of the
# parse stage's time on the SpamAssassin corpus, where 65 % of the values repeat.
# A parse is pure, so a repeat takes the remembered result.
_address_field_cached = functools.lru_cache(maxsize=ADDRESS_CACHE_SIZE)(_address_field)


def _unusable(address: Address, field_name: str, unusable: list[str]) -> bool:
    """Whether ``address`` is no mailbox (see :func:`overlong_address`); if so, says why."""
    why = overlong_address(address.addr)
    if why is not None:
        unusable.append(f"{field_name} address {elided(address.addr)} left out: {why}")
    return why is not None


def _addresses(values: list[str], defects: list[str]) -> tuple[Address, ...]:
    return tuple(a for a in _parse_addresses(values, defects) if a.addr)


def _reply_addresses(
    values: list[str], defects: list[str], unusable: list[str]
) -> tuple[Address, ...]:
    """Reply-To: where a reply would go, so an address no mail can reach is left out."""
    return tuple(a for a in _addresses(values, defects) if not _unusable(a, "Reply-To", unusable))


def _from_address(values: list[str], defects: list[str], unusable: list[str]) -> Address | None:
    """The sender; an Address with empty ``addr`` when the field is garbage or its
    address no mailbox (longer than RFC 5321 allows: nothing may be sent to it)."""
    found = _parse_addresses(values, defects)
    for address in found:
        if address.addr:
            if _unusable(address, "From", unusable):
                return Address(addr="", name=address.name)
            return address
    if values and values[0].strip():
        defects.append("from field has no usable address")
        return Address(addr="", name=decode_header_text(values[0])[:200])
    return None


def _parse_date(msg: Message, hint: str | None) -> tuple[datetime | None, str | None]:
    value = msg.get("date")
    if value is None:
        return None, None
    text = unescape_header(str(value), hint)
    result = parse_mail_date(text)
    if result.value is not None:
        return result.value.astimezone(UTC), None
    try:
        parsed = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None, "date field unparsable"
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC), None


def _html_to_text(html: str, defects: list[str], cuts: list[str]) -> str:
    if len(html) > MAX_HTML_TO_TEXT:
        cuts.append(
            f"html body of {len(html)} characters; text taken from its first {MAX_HTML_TO_TEXT}"
        )
        html = html[:MAX_HTML_TO_TEXT]
    try:
        return get_text(html).strip()
    except Exception as exc:  # inscriptis/lxml refusing odd markup
        defects.append(f"html to text failed: {type(exc).__name__}")
        return re.sub(r"<[^>]*>", " ", html)


def _line_ends(text: str) -> str:
    return _LINE_ENDS.sub("\n", text) if "\r" in text else text


def _message_bytes(part: Message) -> bytes:
    """Bytes of a nested message, serialised without refolding its headers."""
    inner = part.get_payload(0) if part.is_multipart() else None
    target = inner if isinstance(inner, Message) else part
    try:
        return target.as_bytes(policy=target.policy.clone(max_line_length=0))
    except Exception:
        try:
            return target.as_string(policy=target.policy.clone(max_line_length=0)).encode(
                "utf-8", "surrogateescape"
            )
        except Exception:
            return b""


def _message_content(part: Message) -> bytes:
    """The content of a message/* part, transfer-decoded.

    The standard library parses a message/* part (but delivery-status) as a nested
    message and leaves a base64 or quoted-printable body as it came: its nested
    "message" is then the encoded text, which is decoded here.
    """
    data = _message_bytes(part)
    cte = str(part.get("content-transfer-encoding", "")).strip().lower()
    if cte not in _ENCODINGS:
        return data
    holder = Message()
    holder["Content-Transfer-Encoding"] = cte
    holder.set_payload(data.strip().decode("ascii", "surrogateescape"))
    decoded = holder.get_payload(decode=True)
    return decoded if isinstance(decoded, bytes) else data


def _payload_bytes(part: Message) -> bytes:
    """Decoded payload of a leaf part; the serialised blocks of a delivery-status part,
    the transfer-decoded content of a global one."""
    if part.get_content_type() == MediaType.GLOBAL_DELIVERY_STATUS:
        return _message_content(part)
    data: Any = _base64_payload(part)
    if data is None:
        data = part.get_payload(decode=True)
    if isinstance(data, bytes):
        return data
    payload = part.get_payload()
    if isinstance(payload, list):
        return b"\n".join(
            block.as_bytes(policy=block.policy.clone(max_line_length=0))
            for block in payload
            if isinstance(block, Message)
        )
    return b""


def _base64_payload(part: Message) -> bytes | None:
    """A base64 leaf's bytes in one pass, or None to leave it to the standard library.

    ``get_payload(decode=True)`` splits the text into lines and joins them again
    first: three copies of a big attachment where one does. With whole quads
    the standard library's result is this one (strict, else lenient, decoding).
    """
    payload = part._payload  # type: ignore[attr-defined]
    cte = str(part.get("content-transfer-encoding", "")).lower()  # as get_payload reads it
    if cte != "base64" or not isinstance(payload, str) or part.is_multipart():
        return None
    if (len(payload) - payload.count("\n") - payload.count("\r")) % 4:
        return None  # the standard library pads, or keeps the text: its result, not ours
    try:
        return binascii.a2b_base64(payload.encode("ascii", "surrogateescape"))
    except (binascii.Error, ValueError, UnicodeError):
        return None  # bad padding and the like: the standard library's repairs


def _header_pairs(msg: Message, hint: str | None) -> tuple[tuple[str, str], ...]:
    return tuple((name, decode_header_text(str(value), hint)) for name, value in msg.raw_items())


def _dsn_field(block: Message, name: str) -> str:
    value = block.get(name)
    if value is None:
        return ""
    text = unescape_header(str(value))
    return " ".join(text.split())


def _dsn_blocks(part: Message, defects: list[str]) -> list[Message]:
    """The field blocks of a delivery-status part, however it was encoded.

    A global one (RFC 6533) is in UTF-8; its blocks are read from its content, which
    the standard library parsed as one nested message.
    """
    payload = part.get_payload()
    if part.get_content_type() == MediaType.GLOBAL_DELIVERY_STATUS:
        text, exact = decode_text(_message_content(part), "utf-8")
        if not exact:
            defects.append(f"{MediaType.GLOBAL_DELIVERY_STATUS} part: not UTF-8")
        return _field_blocks(text)
    if isinstance(payload, list) and not part.get("content-transfer-encoding", "").strip():
        return [block for block in payload if isinstance(block, Message)]
    data = part.get_payload(decode=True)
    if not isinstance(data, bytes):
        return [block for block in payload if isinstance(block, Message)]
    return _field_blocks(decode_text(data, None)[0])


def _field_blocks(text: str) -> list[Message]:
    chunks = re.split(r"\n\s*\n", _line_ends(text))
    return [email.message_from_string(chunk) for chunk in chunks if chunk.strip()]


@dataclass
class _PartWalker:
    """Collects bodies, attachments and report data from a MIME tree."""

    hint: str | None
    plain: list[str] = field(default_factory=list)
    html: list[str] = field(default_factory=list)
    other_text: list[str] = field(default_factory=list)
    attachments: list[ParsedAttachment] = field(default_factory=list)
    delivery_status: list[DeliveryStatus] = field(default_factory=list)
    returned_headers: tuple[tuple[str, str], ...] = ()
    defects: list[str] = field(default_factory=list)
    cuts: list[str] = field(default_factory=list)
    skipped_attachments: int = 0

    def walk(self, part: Message, *, depth: int, in_report: bool) -> None:
        if depth > MAX_DEPTH:
            self.cuts.append(f"MIME nesting deeper than {MAX_DEPTH}; inner parts skipped")
            return
        self.defects.extend(type(defect).__name__ for defect in part.defects)
        ctype = part.get_content_type()
        if ctype in _REPORT_TYPES:
            self._delivery_status(part)
            self._attachment(part, ctype, f"{part.get_content_subtype()}.txt")
        elif part.get_content_maintype() == "message":
            self._nested_message(part, ctype, in_report)
        elif part.get_content_maintype() == "multipart" and not part.is_multipart():
            # Boundary never found: the standard library leaves the body as text.
            self.defects.append(f"{ctype} without parts; body kept as text")
            text = self._decode_text_part(part, ctype)
            if text.strip():
                self.plain.append(text)
        elif part.is_multipart():
            in_report = in_report or ctype == MediaType.REPORT
            for sub in part.get_payload():
                if isinstance(sub, Message):
                    self.walk(sub, depth=depth + 1, in_report=in_report)
        else:
            self._leaf(part, ctype, depth, in_report)

    def _filename(self, part: Message) -> str:
        try:
            raw_name = part.get_filename()
        except Exception:
            self.defects.append("unreadable filename parameter")
            return ""
        if not raw_name:
            return ""
        return _CONTROL_CHARS.sub("", decode_header_text(str(raw_name), self.hint)).strip()

    def _leaf(self, part: Message, ctype: str, depth: int, in_report: bool) -> None:
        disposition = part.get_content_disposition()
        filename = self._filename(part)
        is_body_type = ctype in (MediaType.TEXT_PLAIN, MediaType.TEXT_HTML)
        if is_body_type and disposition != Disposition.ATTACHMENT and (not filename or depth == 0):
            text = self._decode_text_part(part, ctype)
            (self.plain if ctype == MediaType.TEXT_PLAIN else self.html).append(text)
            return
        if in_report and ctype == MediaType.RFC822_HEADERS and not self.returned_headers:
            data = part.get_payload(decode=True)
            if isinstance(data, bytes):
                headers_msg = email.parser.BytesHeaderParser().parsebytes(data)
                self.returned_headers = _header_pairs(headers_msg, self.hint)
        elif part.get_content_maintype() == "text" and not filename and not is_body_type:
            self.other_text.append(self._decode_text_part(part, ctype))
        self._attachment(part, ctype, filename or _default_name(ctype, len(self.attachments)))

    def _decode_text_part(self, part: Message, ctype: str) -> str:
        data = part.get_payload(decode=True)
        if not isinstance(data, bytes):
            return ""
        charset = _safe_charset(part)
        text, exact = decode_text(data, charset)
        if not exact:
            self.defects.append(
                f"{ctype} part: charset {charset!r} did not fit the bytes"
                if charset
                else f"{ctype} part: 8-bit bytes without a charset"
            )
        return _line_ends(text)

    def _room(self) -> bool:
        """Whether another attachment may be extracted (else it is counted as skipped)."""
        if len(self.attachments) < MAX_ATTACHMENTS:
            return True
        self.skipped_attachments += 1
        return False

    def _attachment(self, part: Message, ctype: str, filename: str) -> None:
        if not self._room():
            return
        content = _payload_bytes(part)
        cid_raw = part.get("content-id")
        cid = str(cid_raw).strip().strip("<>").strip() if cid_raw is not None else ""
        disposition = part.get_content_disposition()
        inline = disposition == Disposition.INLINE or (disposition is None and bool(cid))
        self.attachments.append(
            ParsedAttachment(
                filename=filename,
                content_type=ctype,
                content=content,
                content_id=cid or None,
                inline=inline,
                charset=_text_charset(part, ctype),
            )
        )

    def _nested_message(self, part: Message, ctype: str, in_report: bool) -> None:
        """A forwarded or returned message: kept whole as an attachment, text not merged."""
        if not self._room():
            return
        is_message = ctype in _MESSAGE_TYPES
        filename = self._filename(part) or (
            "forwarded.eml" if is_message else f"{part.get_content_subtype()}.txt"
        )
        inner = part.get_payload(0) if part.is_multipart() else None
        returned = in_report and (is_message or ctype in _HEADERS_TYPES)
        if returned and not self.returned_headers and isinstance(inner, Message):
            if str(part.get("content-transfer-encoding", "")).strip().lower() in _ENCODINGS:
                inner = email.parser.BytesHeaderParser().parsebytes(_message_content(part))
            self.returned_headers = _header_pairs(inner, self.hint)
        cid_raw = part.get("content-id")
        cid = str(cid_raw).strip().strip("<>").strip() if cid_raw is not None else ""
        self.attachments.append(
            ParsedAttachment(
                filename=filename,
                content_type=ctype,
                content=_message_bytes(part),
                content_id=cid or None,
                inline=part.get_content_disposition() == Disposition.INLINE,
            )
        )

    def _delivery_status(self, part: Message) -> None:
        for block in _dsn_blocks(part, self.defects):
            original = _dsn_field(block, "original-recipient")
            recipient = _dsn_field(block, "final-recipient") or original
            if not recipient:
                continue
            status = _dsn_field(block, "status")
            code = _STATUS_CODE.search(status)
            diagnostic = _dsn_field(block, "diagnostic-code")
            self.delivery_status.append(
                DeliveryStatus(
                    final_recipient=dsn_address(recipient),
                    action=_dsn_field(block, "action").lower(),
                    status=code.group(0) if code else status,
                    diagnostic=diagnostic.split(";", 1)[-1].strip()
                    if ";" in diagnostic
                    else diagnostic,
                    original_recipient=dsn_address(original) if original else "",
                )
            )


def _default_name(ctype: str, index: int) -> str:
    """A display name for an attachment the sender did not name."""
    if ctype == MediaType.TNEF:
        return "winmail.dat"
    ext = mimetypes.guess_extension(ctype, strict=False) or ".bin"
    return f"part-{index + 1}{ext}"
