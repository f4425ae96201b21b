"""Signed tokens with the installation secret (MAIL-RULES §2 rules 2-3, §5 trust).

Tokens are truncated HMAC-SHA256 in lower-case base32 without padding: they
survive in local-parts, Message-IDs and subjects, and mail systems that
upper- or lower-case them do no harm. Secrets rotate: the first one signs,
every one verifies, so mail signed before a rotation still threads.

Each kind of token signs its own context word first ("mid", "local",
"marker"), so a token cut from one place never verifies in another.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

MIN_SIG_LENGTH = 8
MAX_SIG_LENGTH = 52  # all of SHA-256's 256 bits in base32
DEFAULT_SIG_LENGTH = 12  # 60 bits
MAX_TICKET_DIGITS = 18

_SIG_RE = re.compile(r"[a-z2-7]+", re.ASCII)
_WORD_RE = re.compile(r"[a-z][a-z0-9]{0,15}", re.ASCII)
_EXTRA_RE = re.compile(r"[a-z0-9]{1,32}", re.ASCII)
_NONCE_RE = re.compile(r"[a-z0-9_-]{1,64}", re.ASCII)
_TICKET_RE = re.compile(rf"(?:0|[1-9][0-9]{{0,{MAX_TICKET_DIGITS - 1}}})", re.ASCII)
_MARKER_RE = re.compile(
    rf"\[\s*ref\s*:\s*md-([0-9]{{1,{MAX_TICKET_DIGITS}}})"
    rf"-([a-z2-7]{{{MIN_SIG_LENGTH},{MAX_SIG_LENGTH}}})\s*\]",
    re.ASCII | re.IGNORECASE,
)
_MID_PREFIX = "md"


class RefPurpose(StrEnum):
    """What a signed reply address or Message-ID is for."""

    TICKET = "t"  # a customer reply to the ticket
    AGENT = "a"  # an agent's reply (signed for that agent)
    # An agent's reply kept internal (signed for that agent): to a mail about the agent's
    # own mail (a command's result, a held-mail warning), which is no customer's to read.
    NOTE = "n"
    RATE = "rate"  # a rating: extra = (score,)
    BOUNCE = "bounce"  # a VERP return path: extra = (outbox id,)
    CONFIRM = "c"  # an agent confirms held commands: extra = (held mail id,); agent-bound


# How our Message-IDs of mail to agents start (``md.<purpose>.``): never in customer mail.
AGENT_MESSAGE_ID_PREFIXES = (f"md.{RefPurpose.AGENT}.", f"md.{RefPurpose.NOTE}.")

# How many extra fields a purpose carries; unknown purposes carry none.
_EXTRA_COUNT: dict[str, int] = {RefPurpose.RATE: 1, RefPurpose.BOUNCE: 1, RefPurpose.CONFIRM: 1}


@dataclass(frozen=True, slots=True)
class SignedRef:
    """A verified reference: what it is for, which ticket, and the purpose's extra fields."""

    purpose: str
    ticket: int
    extra: tuple[str, ...] = ()


def _encode_fields(fields: Sequence[str]) -> bytes:
    """Length-prefixed, so ("ab", "c") and ("a", "bc") sign differently."""
    out = bytearray()
    for field in fields:
        data = field.encode("utf-8", "surrogatepass")
        out += b"%d:" % len(data)
        out += data
    return bytes(out)


def _parse_ticket(text: str) -> int | None:
    return int(text) if _TICKET_RE.fullmatch(text) else None


class Signer:
    """Signs with the first secret, verifies with any of them.

    ``retired`` secrets (``[[retired_secrets]]``) verify only until their time,
    by ``clock`` at each verification: a daemon started during the grace period
    must stop accepting them when it ends, not at its next restart.
    """

    def __init__(
        self,
        secrets: Sequence[bytes],
        *,
        retired: Sequence[tuple[bytes, datetime]] = (),
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        keys = tuple(secrets)
        if not keys:
            raise ValueError("at least one secret is required")
        if any(not key for key in (*keys, *(key for key, _until in retired))):
            raise ValueError("secrets must not be empty")
        self._keys = keys
        self._retired = tuple(retired)
        self._clock = clock or (lambda: datetime.now(UTC))

    def __repr__(self) -> str:
        return f"Signer(<{len(self._keys) + len(self._retired)} secret(s)>)"

    def _verifying_keys(self) -> tuple[bytes, ...]:
        if not self._retired:
            return self._keys
        now = self._clock()
        return self._keys + tuple(key for key, until in self._retired if until > now)

    @staticmethod
    def _token(key: bytes, fields: Sequence[str], length: int) -> str:
        digest = hmac.new(key, _encode_fields(fields), hashlib.sha256).digest()
        return base64.b32encode(digest).decode("ascii").rstrip("=").lower()[:length]

    # -- generic tokens --------------------------------------------------------

    def sign(self, *fields: str, length: int = DEFAULT_SIG_LENGTH) -> str:
        """A token of ``length`` base32 characters over ``fields``."""
        if not MIN_SIG_LENGTH <= length <= MAX_SIG_LENGTH:
            raise ValueError(f"length must be {MIN_SIG_LENGTH}..{MAX_SIG_LENGTH}, not {length}")
        return self._token(self._keys[0], fields, length)

    def verify(self, sig: str, *fields: str) -> bool:
        """True if ``sig`` (any case) was made by ``sign`` over ``fields`` with any secret."""
        if not sig.isascii():
            return False
        token = sig.lower()
        if not MIN_SIG_LENGTH <= len(token) <= MAX_SIG_LENGTH or not _SIG_RE.fullmatch(token):
            return False
        valid = False
        for key in self._verifying_keys():
            # Check every key: the time taken does not tell which one matched.
            valid |= hmac.compare_digest(self._token(key, fields, len(token)), token)
        return valid

    # -- Message-IDs -----------------------------------------------------------

    def outbound_message_id(
        self,
        ticket: int,
        domain: str,
        *,
        nonce: str,
        purpose: str = RefPurpose.TICKET,
        agent: str = "",
    ) -> str:
        """``md.<purpose>.<ticket>.<nonce>.<sig>@<domain>``, without angle brackets.

        ``agent`` is signed but not written: the id verifies only for that agent.
        """
        purpose, nonce = purpose.lower(), nonce.lower()
        _check_ticket(ticket)
        if not _WORD_RE.fullmatch(purpose):
            raise ValueError(f"purpose must be a short lower-case word: {purpose!r}")
        if not _NONCE_RE.fullmatch(nonce):
            raise ValueError(f"nonce must be 1-64 of [a-z0-9_-]: {nonce!r}")
        if not domain or any(c in domain for c in "<>@ \t\r\n"):
            raise ValueError(f"not a usable domain: {domain!r}")
        sig = self.sign("mid", purpose, str(ticket), nonce, agent)
        return f"{_MID_PREFIX}.{purpose}.{ticket}.{nonce}.{sig}@{domain}"

    def parse_outbound_message_id(self, mid: str, *, agent: str = "") -> SignedRef | None:
        """The ticket and purpose of one of our Message-IDs, or None if not ours or forged."""
        local, at, _domain = mid.strip().strip("<>").rpartition("@")
        if not at or not local.isascii():
            return None
        parts = local.lower().split(".")
        if len(parts) != 5 or parts[0] != _MID_PREFIX:
            return None
        _prefix, purpose, ticket_text, nonce, sig = parts
        ticket = _parse_ticket(ticket_text)
        if ticket is None or not _WORD_RE.fullmatch(purpose) or not _NONCE_RE.fullmatch(nonce):
            return None
        if not self.verify(sig, "mid", purpose, ticket_text, nonce, agent):
            return None
        return SignedRef(purpose, ticket)

    # -- body marker -----------------------------------------------------------

    def body_marker(self, ticket: int) -> str:
        """``[ref:md-<ticket>-<sig>]`` for the footer of every outbound mail."""
        _check_ticket(ticket)
        return f"[ref:md-{ticket}-{self.sign('marker', str(ticket))}]"

    def find_body_marker(self, text: str) -> int | None:
        """The ticket of the last validly signed marker in ``text`` (quoted or not)."""
        found: int | None = None
        for match in _MARKER_RE.finditer(text):
            ticket_text, sig = match.group(1), match.group(2)
            ticket = _parse_ticket(ticket_text)
            if ticket is not None and self.verify(sig, "marker", ticket_text):
                found = ticket
        return found

    # -- reply addresses -------------------------------------------------------

    def reply_local_part(
        self,
        base: str,
        purpose: str,
        ticket: int,
        agent: str = "",
        *,
        extra: Sequence[str] = (),
        delimiter: str = "+",
    ) -> str:
        """``<base>+<purpose>-<ticket>[-<extra>...]-<sig>``, e.g. ``support+t-123-<sig>``.

        ``rate`` carries the score and ``bounce`` the outbox id in ``extra``.
        ``agent`` is signed but not written.
        """
        purpose = purpose.lower()
        fields = tuple(e.lower() for e in extra)
        _check_ticket(ticket)
        if not _WORD_RE.fullmatch(purpose):
            raise ValueError(f"purpose must be a short lower-case word: {purpose!r}")
        if len(fields) != _EXTRA_COUNT.get(purpose, 0):
            raise ValueError(f"purpose {purpose!r} takes {_EXTRA_COUNT.get(purpose, 0)} extra")
        if any(not _EXTRA_RE.fullmatch(e) for e in fields):
            raise ValueError(f"extra fields must be 1-32 of [a-z0-9]: {extra!r}")
        if not base or any(c in base for c in '@<> \t\r\n"') or delimiter in base:
            raise ValueError(f"not a usable local-part base: {base!r}")
        sig = self.sign("local", purpose, str(ticket), *fields, agent)
        return delimiter.join([base, "-".join([purpose, str(ticket), *fields, sig])])

    def parse_reply_local_part(
        self, local: str, *, agent: str = "", delimiter: str = "+"
    ) -> SignedRef | None:
        """The verified reference in a local-part made by ``reply_local_part``, or None."""
        claimed = claimed_reply_local_part(local, delimiter=delimiter)
        if claimed is None:
            return None
        ref, sig = claimed
        if not self.verify(sig, "local", ref.purpose, str(ref.ticket), *ref.extra, agent):
            return None
        return ref


def claimed_reply_local_part(local: str, *, delimiter: str = "+") -> tuple[SignedRef, str] | None:
    """What a local-part shaped like ``reply_local_part``'s claims, and its signature.

    NOT verified: for telling a mistyped or expired address (a rating address
    whose signature no secret verifies) from one that is not ours at all.
    """
    _base, sep, tail = local.strip().rpartition(delimiter)
    if not sep or not tail.isascii():
        return None
    parts = tail.lower().split("-")
    if len(parts) < 3:
        return None
    purpose, ticket_text, *fields, sig = parts
    ticket = _parse_ticket(ticket_text)
    if ticket is None or not _WORD_RE.fullmatch(purpose):
        return None
    if len(fields) != _EXTRA_COUNT.get(purpose, 0):
        return None
    if any(not _EXTRA_RE.fullmatch(e) for e in fields):
        return None
    return SignedRef(purpose, ticket, tuple(fields)), sig


def _check_ticket(ticket: int) -> None:
    if not 0 <= ticket < 10**MAX_TICKET_DIGITS:
        raise ValueError(f"ticket number out of range: {ticket}")
