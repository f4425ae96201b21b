"""Outlook's ``Thread-Index`` header (MAIL-RULES §2 rule 5).

The value is base64 of a 22-byte conversation header (a reserved byte, part of
a FILETIME and a GUID) followed by one 5-byte block per reply or forward. Every
message of one conversation shares the first 22 bytes, so they are the key.
Outlook often sends no References, which makes this the only thread evidence.
"""

from __future__ import annotations

import base64
import binascii
import html
import re

HEADER_BYTES = 22
CHILD_BLOCK_BYTES = 5
# Longest value we look at; a real one is a few hundred characters at most.
_MAX_CHARS = 4096
_BASE64_RE = re.compile(r"[A-Za-z0-9+/]*")
# Damage seen in real mail: quoted-printable "=3D" left in the header, "&#43;" for "+".
_QP_EQUALS_RE = re.compile(r"=3d", re.IGNORECASE)
_URL_SAFE = str.maketrans("-_", "+/")


def decode_thread_index(value: str) -> bytes | None:
    """The decoded bytes of a Thread-Index value, or None if it is not base64.

    Tolerant of folding whitespace, missing or quoted-printable-mangled padding,
    HTML entities and the URL-safe alphabet. Never raises.
    """
    text = value[:_MAX_CHARS]
    if "&" in text:
        text = html.unescape(text)
    text = "".join(_QP_EQUALS_RE.sub("=", text).split())
    text = text.translate(_URL_SAFE).rstrip("=")
    if not _BASE64_RE.fullmatch(text):
        return None
    if len(text) % 4 == 1:
        # A lone trailing character carries no whole byte (2 or 3 carry 1 or 2).
        text = text[:-1]
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None


def conversation_key(value: str) -> str | None:
    """A stable key (lower-case hex of the 22-byte header) for the conversation.

    None when the value is not base64 or shorter than the conversation header.
    A reply's Thread-Index (header plus 5-byte blocks) gives its root's key.
    """
    decoded = decode_thread_index(value)
    if decoded is None or len(decoded) < HEADER_BYTES:
        return None
    return decoded[:HEADER_BYTES].hex()
