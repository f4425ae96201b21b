"""Subject lines: the normalised form for threading and our ticket tag.

``normalize_subject`` serves MAIL-RULES §2 rule 6 (same sender, same normalised
subject); the tag functions serve rule 4 (``[<tag> #<number>]``).
"""

from __future__ import annotations

import re
import unicodedata

# Reply/forward prefixes as mail clients write them, in many languages. They are
# matched only when a colon follows (ASCII or full-width), so a subject that merely
# starts with such a word ("Resume attached", "TRaining") is left alone.
_PREFIX_WORDS = (
    # English, international
    "re",
    "fwd",
    "fw",
    "fwds",
    # German
    "aw",
    "wg",
    "antwort",
    # Scandinavian
    "sv",
    "vs",
    "vb",
    "vl",
    "fs",
    "vid",
    # Dutch
    "antw",
    "doorst",
    # French, Portuguese, Spanish, Italian
    "ref",
    "réf",
    "re\u0301f",  # the same with a combining accent
    "rép",
    "tr",
    "enc",
    "res",
    "rv",
    "rif",
    "r",
    "i",
    # Polish, Czech, Slovak
    "odp",
    "pd",
    "přep",
    "odpověď",
    # Turkish, Hungarian, Finnish, Estonian, Latvian
    "ynt",
    "ilt",
    "i\u0307lt",  # Outlook's "İLT:" casefolded: the dotted capital I becomes i + U+0307
    "vá",
    "továbbítás",
    "vs",
    "vl",
    "atb",
    "pārs",
    # Russian, Ukrainian, Bulgarian
    "ответ",
    "отв",
    "пересл",
    "переслать",
    "відп",
    "пер",
    # Greek, Hebrew, Arabic
    "απ",
    "σχετ",
    "πρθ",
    "השב",
    "הועבר",
    "رد",
    "إعادة توجيه",
    # Chinese, Japanese, Korean
    "回复",
    "回覆",
    "答复",
    "答覆",
    "转发",
    "轉寄",
    "转寄",
    "返信",
    "転送",
    "회신",
    "전달",
)

_COUNTER = r"(?:\s*(?:\[\s*\d{1,6}\s*\]|\(\s*\d{1,6}\s*\)|\^\s*\d{1,6}))?"
_PREFIX = (
    "(?:"
    + "|".join(re.escape(w) for w in sorted(set(_PREFIX_WORDS), key=len, reverse=True))
    + ")"
    + _COUNTER
    + r"\s*\.?\s*[:：]"
)
# A bracketed tag: a list name "[users]" or a ticket tag "[Support #12]".
_TAG = r"\[[^\[\]]*\]"
# Every leading prefix and tag in one pass (linear even for "Re: Re: Re: ..." by the thousand).
_LEADING_RE = re.compile(r"(?:\s*(?:" + _PREFIX + "|" + _TAG + "))+", re.IGNORECASE)
_PREFIX_RE = re.compile(_PREFIX, re.IGNORECASE)
# Trailing "(fwd)" as old Pine/Unix mailers append it, or a ticket tag "[Support #12]" as
# some clients move it to the end; matched on the collapsed tail only.
_TRAILING_FWD_RE = re.compile(r"\(\s?fwd\s?\)$", re.IGNORECASE)
_TRAILING_TICKET_TAG_RE = re.compile(r"\[[^\[\]#]{1,60}#\s*[0-9]{1,18}\s*\]$")
_TAIL = 16
_TAG_TAIL = 90
# Characters that end a line somewhere (str.splitlines): never allowed in a header value.
_LINE_BREAKS_RE = re.compile(r"[\r\n\v\f\x1c\x1d\x1e\x85\u2028\u2029]+")


def _collapse(text: str) -> str:
    return " ".join(text.split())


def _strip_trailing_fwd(text: str) -> str:
    end = len(text)
    while True:
        match = _TRAILING_FWD_RE.search(text, max(0, end - _TAIL), end)
        match = match or _TRAILING_TICKET_TAG_RE.search(text, max(0, end - _TAG_TAIL), end)
        if match is None:
            break
        end = match.start()
        while end > 0 and text[end - 1].isspace():
            end -= 1
    return text[:end]


def _fold(text: str) -> str:
    """Compatibility-normalised and casefolded: a CJK client's full-width "Ｒｅ：" and
    "［Support ＃12］" become "re:" and "[support #12]"."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())


def normalize_subject(subject: str) -> str:
    """The subject without reply/forward prefixes, list or ticket tags (leading, or a
    ticket tag at the end), ``(fwd)``.

    Whitespace is collapsed and the result is NFKC-normalised and casefolded, so two
    mails of one conversation compare equal. Idempotent; never raises.
    """
    text = _collapse(_fold(subject))
    while True:
        match = _LEADING_RE.match(text)
        stripped = text[match.end() :] if match else text
        stripped = _strip_trailing_fwd(stripped).strip()
        if stripped == text:
            return text
        text = stripped


def one_reply_prefix(subject: str) -> str:
    """``subject`` with a leading run of two or more reply/forward prefixes cut to its first.

    Bracketed tags inside that run go with it: "Re: Re: [Support #7] AW: Invoice"
    becomes "Re: Invoice". A subject with one prefix at most is left as it is.
    """
    match = _LEADING_RE.match(subject)
    if match is None:
        return subject
    prefixes = _PREFIX_RE.findall(subject, 0, match.end())
    if len(prefixes) < 2:
        return subject
    rest = subject[match.end() :].strip()
    first = " ".join(prefixes[0].split())
    return f"{first} {rest}" if rest else first


def format_ticket_tag(tag: str, number: int) -> str:
    """``[<tag> #<number>]``; the number must not be negative."""
    if number < 0:
        raise ValueError(f"ticket number must not be negative: {number}")
    return f"[{tag} #{number}]"


def _tag_pattern(tag: str) -> re.Pattern[str]:
    # Any run of whitespace in the configured tag matches any run in the subject.
    words = [re.escape(w) for w in tag.split()]
    body = r"\s+".join(words)
    return re.compile(r"\[\s*" + body + r"\s*#\s*([0-9]{1,18})\s*\]", re.IGNORECASE)


def find_ticket_numbers(subject: str, tag: str) -> list[int]:
    """All numbers of our tag in ``subject``, in order of appearance, without duplicates."""
    numbers: list[int] = []
    for match in _tag_pattern(_fold(tag)).finditer(_fold(subject)):
        number = int(match.group(1))
        if number not in numbers:
            numbers.append(number)
    return numbers


def add_ticket_tag(subject: str, tag: str, number: int) -> str:
    """Prefix our tag unless this ticket's tag is already in the subject.

    Line breaks are replaced by spaces so the result is safe as a header value.
    """
    clean = _LINE_BREAKS_RE.sub(" ", subject).strip()
    if number in find_ticket_numbers(clean, tag):
        return clean
    label = format_ticket_tag(_LINE_BREAKS_RE.sub(" ", tag).strip(), number)
    return f"{label} {clean}" if clean else label
