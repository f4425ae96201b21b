"""Pure functions on the raw bytes of a message's header, and charset decoding.

Everything here works on bytes as received and never raises: identifiers
(Message-ID, In-Reply-To, References) are read from the raw header because
the standard library truncates or rejects some real ones, and text decoding
falls back through supersets and lossless single-byte codecs so that no
byte is dropped silently.
"""

from __future__ import annotations

import binascii
import codecs
import functools
import hashlib
import re
from collections.abc import Iterator

_LINE_END = re.compile(rb"\r\n|\r|\n")
# The header block: an optional mbox "From " line, then lines that are
# fields (RFC 5322 name: printable ASCII except colon) or continuations.
_HEADER_LINES = re.compile(
    rb"(?:From [^\r\n]*(?:\r\n|\r|\n))?"
    rb"(?:(?:[!-9;-~]+[ \t]*:|[ \t])[^\r\n]*(?:\r\n|\r|\n|\Z))*"
)
# One field with its continuation lines, starting at a line start.
_FIELD = re.compile(
    rb"(?:(?<=\n)|(?<=\r)|\A)([!-9;-~]+)[ \t]*:([^\r\n]*(?:(?:\r\n|\r|\n)[ \t][^\r\n]*)*)"
)
_ANGLE_ID = re.compile(r"<([^<>]*)>")
_WHITESPACE = re.compile(r"\s+")
_ID_TOKEN_PUNCT = ",;\"'()"
# The text before a ``<...>`` of an attribution's author: "from", then a name, with no
# "of" (the date that follows the author) and no comment between.
_ATTRIBUTION = re.compile(r"\bfrom\s+(?:(?!\bof\b)[^<>()])*$", re.IGNORECASE)
_ATTRIBUTION_ROOM = 200  # of the text before a token: a name is shorter (and the search linear)
_POSSESSIVE = ("'s", "\u2019s")

# Charset names mail clients use that Python does not know, mapped to what
# they mean in practice. None means "no real charset": guess from the bytes.
_CHARSET_ALIASES: dict[str, str | None] = {
    "unknown-8bit": None,
    "unknown": None,
    "x-unknown": None,
    "x-user-defined": None,
    "default": None,
    "default_charset": None,
    "charset": None,
    "iso-8859-8-i": "iso8859-8",
    "iso-8859-8-e": "iso8859-8",
    "iso-8859-6-i": "iso8859-6",
    "x-mac-roman": "mac-roman",
    "x-sjis": "cp932",
    "x-gbk": "gb18030",
    "x-euc-jp": "euc_jp",
    "x-euc-tw": "big5",
    "windows-874": "cp874",
    "ks_c_5601": "cp949",
}

# Codecs whose real-world use is a superset: try the superset first (it
# decodes every valid byte string of the declared charset identically).
_SUPERSETS: dict[str, tuple[str, ...]] = {
    "gb2312": ("gb18030",),
    "gbk": ("gb18030",),
    "euc_kr": ("cp949",),
    "shift_jis": ("cp932",),
    "euc_jp": ("euc_jis_2004",),
    "big5": ("big5hkscs",),
    "tis-620": ("cp874",),
    "iso8859-1": ("cp1252",),
    "iso8859-9": ("cp1254",),
    "ascii": ("utf-8", "cp1252"),
}
# ISO-2022-JP as Windows writes it (CP50220/CP50221): the JIS X 0208 code space with
# the NEC special characters (row 13: ① Ⅰ ㈱ №) and the NEC-selected IBM extensions,
# which Python's iso2022_jp codecs refuse. Its two-byte characters are read through
# cp932, which holds the same repertoire in the Shift_JIS arrangement.
WINDOWS_ISO2022_JP = "maildesk-cp50220"
# Tried after the declared codec fails (not before: they decode differently).
_ALTERNATES: dict[str, tuple[str, ...]] = {
    "iso2022_jp": ("iso2022_jp_ext", "iso2022_jp_2", WINDOWS_ISO2022_JP, "cp932"),
    "iso2022_kr": ("cp949",),
}
# Stateful 7-bit codecs: text in them is ASCII bytes with escape sequences, which
# every ASCII-compatible codec "decodes" as those escapes, ESC and all.
_ESCAPE_CODECS = frozenset({"iso2022_jp", "iso2022_kr"})
_MULTIBYTE = frozenset(
    {
        "gb2312",
        "gbk",
        "gb18030",
        "euc_kr",
        "cp949",
        "shift_jis",
        "cp932",
        "euc_jp",
        "euc_jis_2004",
        "big5",
        "big5hkscs",
        "iso2022_jp",
        "iso2022_kr",
        "hz",
    }
)
# Never fail on any byte: the last resort when nothing declared fits.
_LOSSLESS_TAIL: tuple[str, ...] = ("cp1252", "latin-1")

_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?(.*?)\?=", re.DOTALL)
_FOLD = re.compile(r"\r?\n|\r")


def split_header_block(raw: bytes) -> tuple[bytes, bytes]:
    """Split ``raw`` into (header block, body).

    The header block ends at the first empty line (CRLF, LF or CR-only), or
    at the first line that is neither a header field nor a continuation
    (a message without the blank separator line). The separator itself
    belongs to neither part.
    """
    match = _HEADER_LINES.match(raw)
    end = match.end() if match else 0
    blank = _LINE_END.match(raw, end)
    if blank is not None:
        return raw[:end], raw[blank.end() :]
    return raw[:end], raw[end:]


def decode_raw_text(data: bytes) -> str:
    """Decode header bytes as UTF-8, or latin-1 when they are not UTF-8."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def iter_raw_headers(raw_or_block: bytes) -> Iterator[tuple[str, str]]:
    """Yield (name, unfolded value) for each header field, in order.

    Values are decoded with :func:`decode_raw_text`; RFC 2047 is not decoded.
    """
    block, _ = split_header_block(raw_or_block)
    for match in _FIELD.finditer(block):
        value = match.group(2)
        if b"\r" in value or b"\n" in value:
            value = _LINE_END.sub(b"", value)
        yield decode_raw_text(match.group(1)), decode_raw_text(value).strip()


def raw_header_index(raw_or_block: bytes) -> dict[str, list[str]]:
    """All header values by lower-cased name, in order (one pass)."""
    index: dict[str, list[str]] = {}
    for name, value in iter_raw_headers(raw_or_block):
        index.setdefault(name.lower(), []).append(value)
    return index


def raw_header_values(raw_or_block: bytes, name: str) -> list[str]:
    """Unfolded values of header ``name`` (case-insensitive) as found in the raw bytes."""
    lname = name.lower()
    return [value for key, value in iter_raw_headers(raw_or_block) if key.lower() == lname]


def message_id_from_value(value: str) -> str | None:
    """The id in one Message-ID header value, without angle brackets, or None."""
    text = value.strip()
    if text.startswith("<"):
        last = text.rfind(">")
        inner = text[1:last] if last > 0 else text[1:]
        # "<a@x> <b@y>": two ids in one header, keep the first.
        split = re.search(r">\s*<", inner)
        if split is not None:
            inner = inner[: split.start()]
    else:
        match = _ANGLE_ID.search(text)
        inner = match.group(1) if match else text
    inner = _WHITESPACE.sub("", inner)
    return inner or None


# The longest Message-ID (or key made of one) our columns hold: RFC 5322's line length.
MAX_ID_KEY = 998


def bounded_key(key: str) -> str:
    """``key`` if it fits :data:`MAX_ID_KEY`, else its start and a hash of the whole of it.

    Two ids that differ only past the limit stay two keys: an id cut short would be
    another message's.
    """
    if len(key) <= MAX_ID_KEY:
        return key
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:40]
    return key[: MAX_ID_KEY - 41] + "#" + digest


def extract_message_id(raw: bytes) -> str | None:
    """The first non-empty Message-ID of ``raw``, read from the raw header.

    Kept whole (colons, quotes and brackets inside are part of the id);
    whitespace is removed because folding can split an id across lines.
    """
    for value in raw_header_values(raw, "Message-ID"):
        msgid = message_id_from_value(value)
        if msgid is not None:
            return msgid
    return None


def parse_msgid_list(value: str) -> list[str]:
    """Message-IDs named in an In-Reply-To or References value, in order, once each.

    ``<...>`` tokens when there are any; otherwise bare whitespace-separated
    tokens that contain ``@`` (some clients omit the brackets). The parent's
    author that an old-style attribution names is no Message-ID and is left
    out: ``Message from Hal <hal@x> of "date" <id>`` (MH, nmh, exmh),
    ``hal@x's message of "date"`` (Gnus), ``; from hal@x on date`` (Mutt).
    Taken as an id, it would join every reply to any mail of that author.
    """
    tokens: list[str] = []
    end = 0
    for match in _ANGLE_ID.finditer(value):
        before, end = value[end : match.start()], match.end()
        if not _ATTRIBUTION.search(before[-_ATTRIBUTION_ROOM:]):
            tokens.append(_WHITESPACE.sub("", match.group(1)))
    if not tokens and "<" not in value:
        words = value.split()
        tokens = [
            word.strip(_ID_TOKEN_PUNCT)
            for i, word in enumerate(words)
            if "@" in word
            and not word.rstrip(_ID_TOKEN_PUNCT).lower().endswith(_POSSESSIVE)
            and not (i and words[i - 1].lower() == "from")
        ]
    seen: set[str] = set()
    result: list[str] = []
    for tok in tokens:
        if tok and tok not in seen:
            seen.add(tok)
            result.append(tok)
    return result


def content_hash(raw: bytes) -> str:
    """sha256 hex digest of the exact bytes."""
    return hashlib.sha256(raw).hexdigest()


def body_hash(raw: bytes) -> str:
    """sha256 hex digest of the body, line endings normalised to LF.

    Trailing line ends are ignored too: relays add or drop a final newline,
    and the same mail delivered twice must hash the same.
    """
    _, body = split_header_block(raw)
    normalised = body.replace(b"\r\n", b"\n").replace(b"\r", b"\n").rstrip(b"\n")
    return hashlib.sha256(normalised).hexdigest()


@functools.lru_cache(maxsize=512)
def _lookup_codec(charset: str | None) -> str | None:
    """Python codec name for a charset label, or None when unknown / not text."""
    if not charset:
        return None
    label = charset.strip().strip("\"'").strip().lower().split("*", 1)[0]
    if label in _CHARSET_ALIASES:
        alias = _CHARSET_ALIASES[label]
        if alias is None:
            return None
        label = alias
    for candidate in (label, label.removeprefix("x-"), label.removesuffix("-i")):
        try:
            info = codecs.lookup(candidate)
        except (LookupError, ValueError):
            continue
        if getattr(info, "_is_text_encoding", True):
            return info.name
    return None


@functools.lru_cache(maxsize=512)
def _codec_chain(charset: str | None, hint: str | None) -> tuple[tuple[str, ...], str | None]:
    """Codecs to try in order, and the codec for a final lossy decode (or None)."""
    declared = _lookup_codec(charset)
    chain: list[str] = []
    if declared is not None:
        chain.extend(_SUPERSETS.get(declared, ()))
        chain.append(declared)
        chain.extend(_ALTERNATES.get(declared, ()))
    chain.append("utf-8")
    hinted = _lookup_codec(hint)
    if hinted is not None:
        chain.append(hinted)
    lossy: str | None = None
    if declared in _MULTIBYTE:
        lossy = declared
    else:
        chain.extend(_LOSSLESS_TAIL)
    ordered = tuple(dict.fromkeys(chain))
    return ordered, lossy


def decode_text(data: bytes, charset: str | None, hint: str | None = None) -> tuple[str, bool]:
    """Decode ``data`` labelled ``charset``; returns (text, exact).

    ``exact`` is False when the label did not fit and a fallback was used
    (``hint`` — e.g. the message's own charset — is tried after UTF-8).
    Bytes are replaced only when a declared multi-byte charset cannot decode
    them; single-byte fallbacks keep every byte.
    """
    chain, lossy = _codec_chain(charset, hint)
    declared = _lookup_codec(charset)
    escaped = declared in _ESCAPE_CODECS and b"\x1b" in data and data.isascii()
    for codec in chain:
        if escaped and codec not in _ESCAPE_READERS:
            break  # an ASCII-compatible codec would keep the escape sequences as text
        try:
            text = _windows_iso2022_jp(data) if codec == WINDOWS_ISO2022_JP else data.decode(codec)
        except (UnicodeError, LookupError):
            continue
        if codec == "utf-7":  # can yield lone surrogates, which are not text
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                continue
        exact = (
            codec in (declared, WINDOWS_ISO2022_JP)
            or codec in _SUPERSETS.get(declared or "", ())
            or (data.isascii() and not escaped)
        )
        return text, exact
    if lossy is not None:
        return data.decode(lossy, "replace"), False
    return data.decode("utf-8", "replace"), False


_ESCAPE_READERS = frozenset({"iso2022_jp", "iso2022_jp_ext", "iso2022_jp_2", "iso2022_kr"}) | {
    WINDOWS_ISO2022_JP
}
_JIS_SINGLE = {b"(B": 0, b"(J": 0, b"(I": 1}  # ASCII, JIS-Roman, half-width katakana
_JIS_DOUBLE = (b"$@", b"$B")  # JIS C 6226 and JIS X 0208


def _windows_iso2022_jp(data: bytes) -> str:
    """``data`` in ISO-2022-JP as Windows writes it (CP50220), or UnicodeDecodeError.

    Each JIS X 0208 pair is moved to its Shift_JIS position and the whole read as
    cp932; an escape sequence to any other character set is refused.
    """
    out = bytearray()
    mode = 0  # 0 ASCII, 1 half-width katakana, 2 two-byte
    i, size = 0, len(data)
    while i < size:
        byte = data[i]
        if byte == 0x1B:
            sequence = data[i + 1 : i + 3]
            if sequence in _JIS_DOUBLE:
                mode = 2
            elif sequence in _JIS_SINGLE:
                mode = _JIS_SINGLE[sequence]
            else:
                raise UnicodeDecodeError("cp50220", data, i, i + 3, "unsupported escape")
            i += 3
        elif byte in (0x0A, 0x0D) or mode == 0 or byte < 0x21:
            out.append(byte)
            i += 1
        elif mode == 1:
            if byte > 0x5F:
                raise UnicodeDecodeError("cp50220", data, i, i + 1, "not half-width katakana")
            out.append(byte + 0x80)
            i += 1
        else:
            second = data[i + 1] if i + 1 < size else 0
            if not (0x21 <= byte <= 0x7E and 0x21 <= second <= 0x7E):
                raise UnicodeDecodeError("cp50220", data, i, i + 2, "not a JIS X 0208 pair")
            lead = (byte + 1) // 2 + 0x70
            out.append(lead + 0x40 if lead >= 0xA0 else lead)
            if byte % 2:
                out.append(second + (0x20 if second >= 0x60 else 0x1F))
            else:
                out.append(second + 0x7E)
            i += 2
    return out.decode("cp932")


def _decode_word(charset: str, encoding: str, payload: str) -> bytes | None:
    try:
        if encoding in "bB":
            data = _WHITESPACE.sub("", payload).encode("ascii", "ignore").rstrip(b"=")
            decoded = binascii.a2b_base64(data + b"=" * (-len(data) % 4))
            return decoded if decoded or not data else None  # all junk: not base64
        return binascii.a2b_qp(payload.encode("utf-8", "surrogateescape"), header=True)
    except (binascii.Error, ValueError):
        return None


def unescape_header(value: str, hint: str | None = None) -> str:
    """Unfold a header value and decode its raw 8-bit bytes; RFC 2047 is left alone.

    ``value`` may carry raw 8-bit bytes as surrogate escapes (the form the
    standard library's compat32 parser gives); they are decoded as UTF-8,
    else ``hint`` (e.g. the message's declared charset), else cp1252/latin-1.
    """
    if not value.isascii():
        try:
            raw = value.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            raw = value.encode("utf-8", "replace")
        value = decode_text(raw, None, hint)[0]
    if "\n" in value or "\r" in value:
        value = _FOLD.sub("", value)
    return value.strip()


def decode_header_text(value: str, hint: str | None = None) -> str:
    """Decode one header value to text: 8-bit bytes, RFC 2047 words, folding.

    8-bit bytes are handled by :func:`unescape_header`. Encoded words are decoded tolerantly:
    missing base64 padding, spaces inside Q words, multi-byte characters split
    across adjacent words, and unknown charsets all decode; a word that
    cannot be decoded stays as written.
    """
    value = unescape_header(value, hint)
    if "=?" not in value:
        return value
    out: list[str] = []
    pending: list[bytes] = []
    pending_charset = ""
    pos = 0

    def flush() -> None:
        nonlocal pending, pending_charset
        if pending:
            out.append(decode_text(b"".join(pending), pending_charset, hint)[0])
        pending = []
        pending_charset = ""

    for match in _ENCODED_WORD.finditer(value):
        gap = value[pos : match.start()]
        charset, encoding, payload = match.group(1), match.group(2), match.group(3)
        decoded = _decode_word(charset, encoding, payload)
        if decoded is None:
            flush()
            out.append(gap + match.group(0))
            pos = match.end()
            continue
        charset = charset.split("*", 1)[0].lower()
        if gap.strip(" \t") or not pending:
            # Text between words is kept; whitespace between two words is not.
            flush()
            out.append(gap)
        elif pending and charset != pending_charset:
            flush()
        pending.append(decoded)
        pending_charset = charset
        pos = match.end()
    flush()
    out.append(value[pos:])
    return "".join(out).strip()
