"""Stored mail as a reader sees it: the forms an erasure searches for an address.

Mail names a person where its bytes do not spell the address: in a base64
part (a forwarded mail, a text attachment), in quoted-printable broken by a
soft line break or written ``=40``, in an RFC 2047 encoded word
(``Cc: =?utf-8?b?...?=``). The bytes are not parsed as MIME (quarantined mail
is often what no parser takes): quoted-printable and encoded words are undone
wherever they occur, base64 in each body whose header says so, which shows at
least what a mail client shows. Each only in mail that names it
(:data:`MARKERS`), so that a pre-filter on the markers never misses what is
found here.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Iterator

from maildesk.domain.rawheader import decode_header_text

# How mail says a transfer encoding is used, as lower() writes it (SQL or Python).
ENCODED_WORD = b"=?"
BASE64 = b"base64"
QUOTED_PRINTABLE = b"quoted-printable"
MARKERS = (ENCODED_WORD, BASE64, QUOTED_PRINTABLE)

# A run of encoded words (the space or fold between two is no text); ``[^?]`` keeps
# a search over a long hostile line linear.
_WORD = rb"=\?[^?\s]{1,64}\?[bBqQ]\?[^?\r\n]*\?="
_WORDS = re.compile(_WORD + rb"(?:\s*" + _WORD + rb")*")
# A body that may be base64: whole lines of the alphabet after a blank line (a
# boundary or a blank line ends them). It is, when the header before that blank
# line names the encoding. Both are searched in the lower-cased mail (lower()
# keeps offsets); each stretch between blank lines is read once, so hostile mail
# costs time in proportion to its size.
_BODY_AFTER_BLANK_LINE = re.compile(rb"\n\r?\n((?:[a-z0-9+/=]+[ \t]*(?:\r?\n|\Z))+)")
_BASE64_FIELD = re.compile(rb"content-transfer-encoding[ \t]*:\s*\"?base64\b")
_NOT_BASE64 = re.compile(rb"[^A-Za-z0-9+/]")
# A base64 part inside a base64 part (a forward of a forward) is decoded this deep.
MAX_DEPTH = 3


def readable_forms(data: bytes, depth: int = 0) -> Iterator[bytes]:
    """``data`` as stored, then with each transfer encoding it names undone.

    Encoded words come back as UTF-8. Lazy: a caller that finds what it looks
    for in the first form decodes nothing more.
    """
    yield data
    lowered = data.lower()
    if ENCODED_WORD in data:
        yield _WORDS.sub(_decoded_words, data)
    if QUOTED_PRINTABLE in lowered:
        yield binascii.a2b_qp(data)
    if BASE64 in lowered and depth < MAX_DEPTH:
        for body in _base64_bodies(data, lowered):
            yield from readable_forms(body, depth + 1)


def _base64_bodies(data: bytes, lowered: bytes) -> Iterator[bytes]:
    """Each body of ``data`` its header says is base64, decoded."""
    # The header of a body starts after the blank line before it, which is not before
    # the previous body's: searched back only that far, or many bodies cost their
    # number times the mail's size.
    previous = 0
    for body in _BODY_AFTER_BLANK_LINE.finditer(lowered):
        end = body.start() + 1  # the header's last line break
        start = max(
            lowered.rfind(b"\n\n", previous, end), lowered.rfind(b"\n\r\n", previous, end), previous
        )
        previous = body.start()
        if _BASE64_FIELD.search(lowered, start, end):
            yield _base64(data[body.start(1) : body.end(1)])


def _decoded_words(match: re.Match[bytes]) -> bytes:
    text = decode_header_text(match.group().decode("ascii", "surrogateescape"))
    return text.encode("utf-8", "surrogateescape")


def _base64(block: bytes) -> bytes:
    """The body decoded, padding or no padding; a cut-off body up to the cut."""
    letters = _NOT_BASE64.sub(b"", block)
    if len(letters) % 4 == 1:  # a letter too many for any byte
        letters = letters[:-1]
    return binascii.a2b_base64(letters + b"=" * (-len(letters) % 4))
