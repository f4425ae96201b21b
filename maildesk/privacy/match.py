"""How an erasure finds one person's address in stored rows, however it was written.

One mailbox has more than one spelling: case, and an internationalised domain
in U-labels (``anna@bücher.example``) or A-labels (``anna@xn--bcher-kva.example``).
Rows keep what the mail said, so the SQL filters here look for every spelling,
and the exact test in Python compares :func:`mailbox_key` (one rule for both:
:func:`maildesk.domain.address.address_key`). Stored mail is searched as a
reader sees it (:mod:`maildesk.privacy.readable`): decoded, in any case.

A SQL filter that picks the candidates for an exact test here (``in_*``,
``local_part_in``) never misses what that test finds: it may only be wider.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from sqlalchemy import LargeBinary, Text, cast, false, func, or_, true

from maildesk.domain.address import address_key, address_spellings
from maildesk.domain.rawheader import decode_text
from maildesk.privacy.readable import MARKERS, readable_forms

# Where a written address ends: a spelling inside a longer address is not it
# (``ann@x.test`` in ``joann@x.test`` or ``ann@x.test.example``). Before it no
# character of a local part (RFC 5322 atext, the dot, anything beyond ASCII),
# unless that is the end of a quoted-printable or URL escape (``=3Cann@x.test``);
# after it no character that continues the domain. In text, a byte no charset
# decoded is a surrogate escape (U+DC80-U+DCFF), as beyond ASCII as in bytes.
_BEFORE = r"(?:(?<=[=%][0-9A-Fa-f]{2})|(?<![\w!#$%&'*+/=?^`{|}~.\-\udc80-\udcff]))"
_AFTER = r"(?![\w\-\udc80-\udcff]|\.\w)"
_BEFORE_BYTES = rb"(?:(?<=[=%][0-9A-Fa-f]{2})|(?<![A-Za-z0-9_!#$%&'*+/=?^`{|}~.\-\x80-\xff]))"
_AFTER_BYTES = rb"(?![A-Za-z0-9_\-\x80-\xff]|\.[A-Za-z0-9_\x80-\xff])"


def mention_re(spellings: Collection[str]) -> re.Pattern[str]:
    """Where text names one of ``spellings`` as a whole address, case ignored."""
    either = "|".join(re.escape(s) for s in spellings)
    return re.compile(f"{_BEFORE}(?:{either}){_AFTER}", re.IGNORECASE)


def mention_bytes_re(spellings: Collection[str]) -> re.Pattern[bytes]:
    """As :func:`mention_re` for raw mail: ASCII case ignored, as ``bytes.lower()`` does."""
    either = b"|".join(re.escape(s.encode()) for s in spellings)
    return re.compile(_BEFORE_BYTES + b"(?:" + either + b")" + _AFTER_BYTES, re.IGNORECASE)


def mailbox_key(address: str) -> str:
    """What a requested or a stored address is compared as (angle brackets off)."""
    return address_key(address.strip().removeprefix("<").removesuffix(">"))


@dataclass(frozen=True)
class Person:
    """One address to erase: its key and the spellings stored rows may hold."""

    key: str
    spellings: tuple[str, ...]

    @classmethod
    def of(cls, address: str) -> Person:
        key = mailbox_key(address)
        return cls(key, address_spellings(key))

    @cached_property
    def _mention(self) -> re.Pattern[str]:
        return mention_re(self.spellings)

    def named_in(self, text: str | None) -> bool:
        """The exact test on text: it names this mailbox as a whole address."""
        return bool(text) and self._mention.search(text or "") is not None

    def scrub(self, text: str, replacement: str) -> str:
        """``text`` with each whole mention of this mailbox replaced."""
        return self._mention.sub(replacement, text)

    def owns(self, stored: str | None) -> bool:
        """The exact test: ``stored`` is this mailbox, however it is written."""
        return bool(stored) and mailbox_key(stored or "") == self.key

    # -- SQL filters (lower() folds ASCII only, as Python's bytes.lower() does) --------
    def is_(self, column: Any) -> Any:
        """A text column that holds just the address (as intake stores it: lower case)."""
        return func.lower(column).in_(self.spellings)

    def in_text(self, column: Any) -> Any:
        return or_(*(func.lower(column).contains(s, autoescape=True) for s in self.spellings))

    def in_json(self, column: Any) -> Any:
        """A pre-filter on a JSON column (its text escapes what is beyond ASCII)."""
        needles = {n for s in self.spellings for n in (s, json.dumps(s)[1:-1])}
        text = func.lower(cast(column, Text))
        return or_(*(text.contains(n, autoescape=True) for n in sorted(needles)))

    def local_part_in(self, column: Any) -> Any:
        """A pre-filter on an address column kept as written (an envelope): its local part.

        Wider than :meth:`owns` (any domain, any case of the domain); beyond
        ASCII, where SQL cannot fold case as Python does, everything.
        """
        local = self.key.rpartition("@")[0]
        if not local.isascii():
            return true()
        return func.lower(column).contains(f"{local}@", autoescape=True)

    def in_bytes(self, column: Any, dialect: str) -> Any:
        """A pre-filter on raw mail: the bytes hold a spelling or name an encoding.

        Never misses what :meth:`mail_names` finds: a spelling in ASCII case
        ignored; one beyond ASCII, whose case neither SQLite nor bytes fold, by
        its longest ASCII part; an encoded address by the encoding's marker.
        PostgreSQL has no lower() for bytea: its ``escape`` text form is searched
        (high and NUL bytes as ``\\nnn``), which may find a few more (a needle
        starting inside an escape).
        """
        needles = sorted({*self._needles, *MARKERS})
        if dialect == "sqlite":
            lowered = cast(func.lower(column), LargeBinary)
            return or_(false(), *(func.instr(lowered, n) > 0 for n in needles))
        escaped = func.lower(func.encode(column, "escape"))
        return or_(false(), *(func.strpos(escaped, _escape(n)) > 0 for n in needles))

    @cached_property
    def _mention_bytes(self) -> re.Pattern[bytes]:
        return mention_bytes_re(self.spellings)

    @cached_property
    def _mention_beyond_ascii(self) -> re.Pattern[str] | None:
        """The spellings beyond ASCII, any case (``MÜLLER@`` is ``müller@``)."""
        wide = [s for s in self.spellings if not s.isascii()]
        return mention_re(wide) if wide else None

    def mail_names(self, data: bytes) -> bool:
        """The exact test on stored mail: a reader of it finds this mailbox as a whole
        address, in the bytes or where they are decoded (base64, quoted-printable,
        RFC 2047), in any case."""
        return any(self._form_names(form) for form in readable_forms(data))

    @cached_property
    def _needles(self) -> tuple[bytes, ...]:
        """What a form naming this mailbox holds in lower case (:meth:`in_bytes` looks
        for them too): each spelling, or of one beyond ASCII its longest ASCII part."""
        return tuple(sorted({_ascii_part(s).encode() for s in self.spellings}))

    def _form_names(self, form: bytes) -> bool:
        lowered = form.lower()
        if not any(needle in lowered for needle in self._needles):
            return False  # no regex over mail that cannot name them (most of it)
        if self._mention_bytes.search(form) is not None:
            return True
        wide = self._mention_beyond_ascii
        if wide is None or form.isascii():
            return False
        return any(wide.search(text) is not None for text in _as_text(form))


def _ascii_part(spelling: str) -> str:
    """``spelling`` if ASCII, else its longest ASCII part (``ller@example.test``)."""
    if spelling.isascii():
        return spelling
    return max(re.findall(r"[\x00-\x7f]+", spelling), key=len, default="")


def _as_text(data: bytes) -> tuple[str, ...]:
    """``data`` as UTF-8; unless it all is, also as Windows-1252 (Latin-1): one mail
    may hold both (a UTF-8 header over a Latin-1 body)."""
    try:
        return (data.decode("utf-8"),)
    except UnicodeDecodeError:
        return (data.decode("utf-8", "surrogateescape"), decode_text(data, "windows-1252")[0])


def _escape(data: bytes) -> str:
    """``data`` as PostgreSQL's ``encode(data, 'escape')`` writes it."""
    return "".join(
        "\\\\" if b == 0x5C else f"\\{b:03o}" if b == 0 or b >= 0x80 else chr(b) for b in data
    )
