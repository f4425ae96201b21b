"""Address helpers shared by intake, the pipeline and the outbox."""

from __future__ import annotations

import re
import unicodedata

import idna

# RFC 5321 s. 4.5.3.1: the most a local part, a domain and a whole path may hold, in
# octets (RFC 6531: of UTF-8). A path of 256 is the address in angle brackets: 254.
MAX_LOCAL_PART = 64
MAX_DOMAIN = 255
MAX_ADDRESS = 254
# The most such addresses of one message its record names one by one (a Cc may hold
# thousands); the rest are counted.
MAX_UNUSABLE_NOTES = 5


def base_address(address: str) -> str:
    """``Support+t-12-abc@Example.com`` -> ``support@example.com``: the address without its tag."""
    local, _, domain = address.strip().strip("<>").rpartition("@")
    return f"{local.split('+', 1)[0]}@{domain}".lower()


def ascii_domain(domain: str) -> str | None:
    """``domain`` in IDNA A-labels (``bücher.example`` -> ``xn--bcher-kva.example``),
    an ASCII domain as it is; None when it is no domain IDNA can write."""
    if domain.isascii():
        return domain
    try:
        return idna.encode(domain, uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError):  # UnicodeError: a label over 63 octets
        return None


def _octets(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def overlong_address(address: str) -> str | None:
    """Why ``address`` is longer than RFC 5321 lets an address be, in plain words, or None.

    Such an address is no mailbox anyone can deliver to: nothing is ever sent to it,
    and it is never stored cut short (its first 320 characters may be someone else's).
    """
    local, at, domain = address.rpartition("@")
    if not at:
        local, domain = "", address
    for what, part, limit in (
        ("the address", address, MAX_ADDRESS),
        ("its part before the @", local, MAX_LOCAL_PART),
        ("its domain", domain, MAX_DOMAIN),
    ):
        size = _octets(part)
        if size > limit:
            unit = "characters" if part.isascii() else "bytes (UTF-8)"
            return (
                f"{what} is {size} {unit} long, more than the {limit} RFC 5321 allows: "
                "no mail can be delivered to it"
            )
    return None


def elided(address: str, limit: int = 80) -> str:
    """``address`` in at most ``limit`` characters, keeping both ends (so its domain, or
    a file name's extension, shows)."""
    if len(address) <= limit:
        return address
    tail = (limit - 1) * 2 // 3
    return address[: limit - 1 - tail] + "\u2026" + address[-tail:]


def address_key(address: str) -> str:
    """The form two addresses are compared in: lower case, NFC, the domain in A-labels.

    A bounce may name ``jörg@bücher.example`` where we mailed the A-labels
    (``jörg@xn--bcher-kva.example``) and the other way round: one mailbox. A
    local part beyond ASCII (RFC 6531) has no other form and is only normalised.
    """
    local, at, domain = unicodedata.normalize("NFC", address.strip()).rpartition("@")
    if not at:
        return domain.lower()
    return f"{local.lower()}@{(ascii_domain(domain) or domain).lower()}"


_QUOTED_PAIR = re.compile(r"\\(.)")


def unquoted_local(local: str) -> str:
    """A quoted local part as the characters it stands for (RFC 5321 s. 4.1.2):
    ``"alice"`` and ``alice`` are one mailbox, and so are ``"a\\lice"`` and ``alice``."""
    if len(local) >= 2 and local.startswith('"') and local.endswith('"'):
        return _QUOTED_PAIR.sub(r"\1", local[1:-1])
    return local


def plain_mailbox(address: str) -> str:
    """``address`` in lower case with a quoted local part unquoted: the form the
    suppression list keeps (``"alice"@example.org`` is ``alice@example.org``)."""
    local, at, domain = address.strip().rpartition("@")
    return f"{unquoted_local(local)}@{domain}".lower() if at else domain.lower()


def mailbox_key(address: str) -> str:
    """The mailbox ``address`` reaches, however it is written, for the per-sender limits:
    :func:`address_key` (case, Unicode form, the domain in A-labels), a quoted local
    part unquoted, and without a ``+tag`` (``"Alice+x"@Customer.test`` ->
    ``alice@customer.test``). Never an address to mail: a key to count under."""
    local, at, domain = address_key(address.strip().strip("<>")).rpartition("@")
    if not at:
        return domain
    local = unquoted_local(local)
    base = local.split("+", 1)[0]
    return f"{base or local}@{domain}"


def address_spellings(address: str) -> tuple[str, ...]:
    """The ways one mailbox is written in mail: its :func:`address_key` first, then, for
    an internationalised domain, the same in U-labels (``jörg@bücher.example``)."""
    key = address_key(address)
    local, at, domain = key.rpartition("@")
    if not at or "xn--" not in domain:
        return (key,)
    try:
        unicode = idna.decode(domain)
    except (idna.IDNAError, UnicodeError):  # an A-label that is none: only as written
        return (key,)
    return (key,) if unicode == domain else (key, f"{local}@{unicode}")


def mailbox_spellings(address: str) -> tuple[str, ...]:
    """Every form a contact of this mailbox may be stored under: the address as written
    (lower case, as contacts are kept), then its :func:`address_spellings`. One
    customer's clients may write their domain in U-labels or in A-labels."""
    return tuple(dict.fromkeys((address.lower(), *address_spellings(address))))


# RFC 6533 s. 3: EmbeddedUnicodeChar, "\x{" HEXPOINT "}" (taken in any case, as Postfix does).
_EMBEDDED_CHAR = re.compile(r"\\x\{([0-9A-Fa-f]{1,6})\}")
# RFC 3461 s. 4: xtext's hexchar, "+" and two upper-case hex digits.
_XTEXT_RUN = re.compile(r"(?:\+[0-9A-F]{2})+")


def _embedded_char(match: re.Match[str]) -> str:
    point = int(match.group(1), 16)
    if point > 0x10FFFF or 0xD800 <= point <= 0xDFFF or unicodedata.category(chr(point)) == "Cc":
        return match.group(0)  # no character, or a control no address holds: kept as written
    return chr(point)


def _xtext_char(match: re.Match[str]) -> str:
    """A run of ``+HH``, decoded where it is what xtext must encode (``+``, ``=``, space,
    the octets of UTF-8 text); else kept: ``+AB`` may be a tag, and no address holds
    a control character."""
    try:
        text = bytes.fromhex(match.group(0).replace("+", "")).decode("utf-8")
    except UnicodeDecodeError:
        return match.group(0)
    if all(ch in "+= " or (not ch.isascii() and unicodedata.category(ch) != "Cc") for ch in text):
        return text
    return match.group(0)


def dsn_address(value: str) -> str:
    """The address of a delivery-status field value (``type; address``), decoded.

    ``utf-8`` (RFC 6533 s. 3): UTF-8 as it is and ``\\x{HEX}`` escapes (the
    utf-8-addr-xtext and utf-8-addr-unitext forms); ``rfc822``: xtext's ``+HH``
    (RFC 3461 s. 4: an Original-Recipient repeats the ORCPT, which is xtext).
    Other types are left as written, and so is whatever is malformed: a bad
    report is still stored and read as far as it goes.
    """
    kind, semicolon, rest = value.partition(";")
    if not semicolon:
        kind, rest = "", kind
    kind = kind.strip().lower()
    address = rest.strip()
    if kind == "utf-8":
        address = _EMBEDDED_CHAR.sub(_embedded_char, address)
    elif kind == "rfc822":
        address = _XTEXT_RUN.sub(_xtext_char, address)
    return address.strip().strip("<>").strip()
