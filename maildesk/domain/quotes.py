"""Strip quoted history from a reply: keep only the new text (issue 5, item 3).

Pure and total: ``strip_reply`` never raises, and a mail with new text above
(or, bottom-posted, below) its quote never comes back empty. Rules, in order,
first match wins:

1. ``marker``: our own reply-marker line (``REPLY_MARKER_TEMPLATE``), quoted
   or not. Everything from it down is the notification and is dropped, with
   the client's attribution just above it. Nothing below a marker is ever
   kept unless it is unquoted text after a ">"-quoted marker (bottom-posting),
   so a notification's text (ticket facts, internal notes) cannot leak.
2. ``client-header``: a client's header block in the text: Outlook
   "From: ... Sent: ..." (any of the languages below), "-----Original
   Message-----" separators, and an attribution line ("On ... wrote:")
   followed by a ">" quote.
3. ``html-structure``: the client's quote container in the HTML part: Gmail
   div.gmail_quote, Outlook div#divRplyFwdMsg / #appendonsend / a border-top
   header box, Apple Mail blockquote type=cite, Thunderbird moz-cite-prefix,
   Yahoo, Zimbra and Hotmail separators. The cut is mapped back onto the
   plain text when there is one.
4. ``heuristic``: an attribution line without a quote under it, a trailing
   ">" block, a "-- " signature delimiter.

Languages of attribution lines and header blocks: English, Russian,
Norwegian (and Danish/Swedish), Dutch, German, French, Spanish.

The agent's own signature ("-- " and below, "Sent from my iPhone") is cut as
well: it can carry the agent's private address and phone number, and the
customer-facing templates add the support sign-off.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Literal

Method = Literal["marker", "client-header", "html-structure", "heuristic", "none"]

# Recommended marker line for notifications: put it as the FIRST line of the
# notification body (text part, and a <p> of its own at the top of the HTML
# part), with ``{ref}`` the signed body marker (``Signer.body_marker``), and
# pass the exact rendered line as ``marker``. Whitespace, case and ">" quote
# prefixes are ignored when looking for it; a client that wraps it over two
# lines is still matched.
REPLY_MARKER_TEMPLATE = "-- reply above this line {ref} --"


@dataclass(frozen=True, slots=True)
class ReplyText:
    """The new part of a reply and which rule cut it."""

    text: str
    method: Method
    removed: bool


# -- patterns -----------------------------------------------------------------

# A body longer than this (in characters) is searched for our marker only and
# otherwise kept whole: new text above a megabyte of quote is no reply a person wrote.
MAX_STRIP_CHARS = 1_000_000

_QUOTE_PREFIX = re.compile(r"^(?:[ \t]*>)+[ \t]?")
_WS = re.compile(r"\s+")

# Attribution lines ("On <date>, <name> wrote:") per language. They may be
# wrapped over up to three lines, so they are tried on joined lines.
_VERB = (
    r"wrote|writes|has written|sent"  # en
    r"|написал\(?а?\)?|написала|пишет"  # ru
    r"|skrev|skriver"  # no, da, sv
    r"|schreef|het volgende geschreven|geschreven"  # nl
    r"|schrieb|hat geschrieben"  # de
    r"|a écrit|a ecrit|écrivait"  # fr
    r"|escribió|escribio|ha escrito"  # es
)
# Norwegian, Danish, Swedish, Dutch and German put the name after the verb:
# "Den <date> skrev <name>:", "Op <date> schreef <name>:", "Am <date> schrieb <name>:".
_VERB_FIRST = r"skrev|schreef|schrieb"
# The leading runs are possessive (``*+``): a verb starts with a letter, so what
# follows may never take back any of them, and backtracking into them made a
# 400-character line of "* * * ... :" cost 25 ms per try (a 40 KB body of such
# lines took 5 s to strip); now each try is linear in the line.
_ATTRIBUTION = re.compile(
    rf"^[\s>*_-]*+(?:.{{0,300}}?[\s,)>\"*])?(?:{_VERB})\s*:\s*\**\s*$"
    rf"|^[\s>*_-]*+.{{0,200}}?\b(?:{_VERB_FIRST})\b.{{0,200}}:\s*\**\s*$"
    # Zoho: "---- On <date> <name> wrote ----"
    rf"|^[\s>]*+-{{2,}}+\s*+.{{0,300}}?\b(?:{_VERB})\s*-{{2,}}\s*$",
    re.IGNORECASE,
)
# Gmail in Russian writes no verb: "пн, 2 апр. 2012 г. в 18:26, Имя <a@b>:";
# Mail.ru: "Понедельник, 2 апреля 2012, 14:20 +04:00 от Имя <a@b>:".
_ATTRIBUTION_NO_VERB = re.compile(
    r"^.{0,120}\d{4}\s*г\.?,?\s*(?:в\s*)?\d{1,2}:\d{2}.{0,200}:\s*$"
    r"|^.{0,120}\d{1,2}:\d{2}.{0,40}\bот\s.{0,200}@.{0,100}:\s*$",
    re.IGNORECASE,
)
# An attribution must look like one: a digit (date/time), an address, or a
# language's opening word. "The manual says:" is not one.
_ATTRIBUTION_EVIDENCE = re.compile(
    r"\d|@|^[\s>*_-]*(?:on|am|le|el|op|den|dne|il|em)\s|пользователь", re.IGNORECASE
)

_ATTRIBUTION_START = re.compile(
    r"^[\s>*_-]*(?:(?:on|am|le|el|op|den)\s|\d|пользователь|\w{2,4}\.?,?\s+\d)", re.IGNORECASE
)

# Outlook-style header blocks: field names per language.
_FROM = r"from|von|de|van|fra|från|от|отправитель"
_SENT = (
    r"sent|date|gesendet|datum|envoyé|envoye|enviado el|enviado|fecha|verzonden|"
    r"sendt|dato|skickat|отправлено|дата"
)
_TO = r"to|an|à|para|aan|til|till|кому"
_CC = r"cc|kopie|копия"
_SUBJECT = r"subject|betreff|objet|asunto|onderwerp|emne|ämne|тема"
_FIELD = re.compile(
    rf"^[\s>*]*(?P<name>{_FROM}|{_SENT}|{_TO}|{_CC}|{_SUBJECT})\s?\**\s?:\**(?:\s|$)",
    re.IGNORECASE,
)
_FIELD_KIND = {
    **dict.fromkeys(_FROM.split("|"), "from"),
    **dict.fromkeys(_SENT.split("|"), "sent"),
    **dict.fromkeys(_TO.split("|"), "to"),
    **dict.fromkeys(_CC.split("|"), "cc"),
    **dict.fromkeys(_SUBJECT.split("|"), "subject"),
}

_ORIGINAL_MESSAGE = re.compile(
    r"^[\s>]*-{2,}\s*(?:original message|ursprüngliche nachricht|originalnachricht|"
    r"message d'origine|mensaje original|oorspronkelijk bericht|origineel bericht|"
    r"opprinnelig melding|original meddelelse|ursprungligt meddelande|"
    r"исходное сообщение|оригинальное сообщение)\s*-{2,}\s*$",
    re.IGNORECASE,
)
_RULE_LINE = re.compile(r"^[\s>]*(?:_{10,}|-{10,}|={10,})\s*$")
_SIGNATURE = re.compile(r"^[ \t\u00a0]*--[ \t\u00a0]*$")
_MOBILE_SIGNATURE = re.compile(
    r"^\s*(?:sent from my|sent from (?:outlook|mail|yahoo)|get outlook for|"
    r"von meinem .{0,40} gesendet|gesendet von|envoyé de mon|envoye de mon|"
    r"enviado desde mi|verzonden (?:vanaf|met) mijn|sendt fra min|"
    r"отправлено с|отправлено из)\b.{0,60}$",
    re.IGNORECASE,
)


# -- public API -----------------------------------------------------------------


def strip_reply(text: str, html: str | None = None, *, marker: str | None = None) -> ReplyText:
    """The new text of a reply (``text``, or ``html`` when ``text`` is empty).

    ``text`` is the decoded text/plain body, ``html`` the text/html body if
    any, ``marker`` the exact marker line of the notification being answered.
    An empty ``.text`` with method "marker" means the agent wrote nothing
    above the marker: there is nothing to send to the customer.
    """
    try:
        return _strip(text if isinstance(text, str) else "", html, marker)
    except Exception:  # pragma: no cover - a last resort; the rules are meant not to raise
        body = text.strip() if isinstance(text, str) else ""
        return ReplyText(body, "none", False)


def own_words(text: str, html: str | None = None) -> str:
    """What the sender wrote themselves: ``strip_reply``'s new text, or "" when that is
    only a client's boilerplate ("Sent from my iPhone", a lone signature) or no words.

    For mail whose body is optional, such as a mail to a rating address.
    """
    kept = strip_reply(text, html).text
    lines = [line for line in kept.splitlines() if line.strip() and not _is_quoted(line)]
    for i, line in enumerate(lines):
        if _SIGNATURE.match(line):  # a signature with nothing above it
            lines = lines[:i]
            break
    if all(_MOBILE_SIGNATURE.match(line) or not _alnum(line) for line in lines):
        return ""
    return kept


def _strip(text: str, html: str | None, marker: str | None) -> ReplyText:
    body = text.replace("\r\n", "\n").replace("\r", "\n")
    html = html if isinstance(html, str) and html.strip() else None
    if not body.strip() and html is not None:
        body = html_to_text(html)
    lines = body.split("\n")
    if not body.strip():
        return ReplyText(body.strip(), "none", False)

    if marker and marker.strip():
        cut = _find_marker(lines, marker)
        if cut is not None:
            return _result(_after_marker(lines, cut), "marker")

    if len(body) > MAX_STRIP_CHARS:
        # Only the marker's cheap scan: the rules below cost up to ~1 µs a character.
        return ReplyText(body.strip(), "none", False)

    cut = _client_header(lines)
    if cut is not None:
        return _result(_cut_at(lines, cut), "client-header")

    if html is not None:
        new_html_text = _html_new_text(html)
        if new_html_text is not None:
            kept_html = _map_onto_text(lines, new_html_text)
            if _has_text(kept_html):  # else bottom-posted: the text rules may find it
                return _result(kept_html, "html-structure")

    kept = _heuristic(lines)
    if kept is not None:
        return _result(kept, "heuristic")
    return ReplyText(_join(lines), "none", False)


def _result(kept: list[str], method: Method) -> ReplyText:
    return ReplyText(_join(kept), method, True)


def _join(lines: Sequence[str]) -> str:
    return "\n".join(line.rstrip() for line in lines).strip()


# -- helpers ----------------------------------------------------------------------


def _unquote(line: str) -> str:
    return _QUOTE_PREFIX.sub("", line)


def _is_quoted(line: str) -> bool:
    return line.lstrip().startswith(">")


def _blank(line: str) -> bool:
    return not _unquote(line).strip()


def _squash(text: str) -> str:
    return _WS.sub("", text).casefold()


def _find_marker(lines: Sequence[str], marker: str) -> int | None:
    """The first line holding the marker, also when a client wrapped it over two lines."""
    want = _squash(marker)
    if not want:
        return None
    for i, line in enumerate(lines):
        here = _squash(_unquote(line))
        if want in here:
            return i
        if i + 1 < len(lines) and here:
            after = _squash(_unquote(lines[i + 1]))
            if want not in after and want in here + after:
                return i
    return None


def _after_marker(lines: Sequence[str], cut: int) -> list[str]:
    """The new text of a reply whose marker is on line ``cut``.

    The notification may itself be quoted in an older mail that this one quotes: an
    agent's reply to their own sent answer (a "PS"). That older mail is history as
    well, with its attribution or header block, which name the agent's private
    address and the reply address signed for them: a ">"-quoted marker is cut from
    the top of the quote it is in, and the text above from the first client header
    block or "Original Message" separator in it.
    """
    start = cut
    if _is_quoted(lines[cut]):
        while start > 0 and _is_quoted(lines[start - 1]):
            start -= 1
    above = list(lines[:start])
    older = next(
        (
            i
            for i in range(len(above))
            if _ORIGINAL_MESSAGE.match(above[i])
            or (_RULE_LINE.match(above[i]) and _header_block_at(above, i + 1))
            or _header_block_at(above, i)
        ),
        None,
    )
    head = _trim_tail(above[:older] if older is not None else above)
    if _has_text(head):
        return _drop_signature(head)
    if not _is_quoted(lines[cut]):
        return []
    # Bottom-posted under a ">"-quoted notification: keep only unquoted lines below it.
    below = [line for line in lines[cut + 1 :] if not _is_quoted(line)]
    return _drop_signature(_trim_tail(below))


def _has_text(lines: Sequence[str]) -> bool:
    return any(line.strip() for line in lines)


def _attribution_at(lines: Sequence[str], i: int) -> int:
    """How many lines (1-3) an attribution starting at ``i`` spans, 0 if none.

    A wrapped attribution found from ``i`` that also starts at ``i + 1`` starts
    there: the line before it is new text ("Hello" above a quote).
    """
    span = _attribution_span(lines, i)
    if span > 1 and 0 < _attribution_span(lines, i + 1) < span:
        first, second = _unquote(lines[i]), _unquote(lines[i + 1])
        if not _ATTRIBUTION_EVIDENCE.search(first) or _ATTRIBUTION_START.match(second):
            return 0
    return span


def _attribution_span(lines: Sequence[str], i: int) -> int:
    if i >= len(lines):
        return 0
    if _is_quoted(lines[i]) and i > 0 and _is_quoted(lines[i - 1]):
        return 0  # inside a quote: an older reply's attribution
    first = lines[i].strip()
    if not first:
        return 0
    joined = ""
    for span in range(1, 4):
        if i + span > len(lines):
            break
        part = _unquote(lines[i + span - 1]).strip()
        if not part and span > 1:
            break
        joined = f"{joined} {part}".strip()
        if len(joined) > 400:
            break
        if not joined.rstrip(" \t*").endswith((":", "--")):
            continue  # cheap test first: every attribution ends in a colon (Zoho: dashes)
        if (
            _ATTRIBUTION.match(joined) and _ATTRIBUTION_EVIDENCE.search(joined)
        ) or _ATTRIBUTION_NO_VERB.match(joined):
            return span
    return 0


def _header_block_at(lines: Sequence[str], i: int) -> int:
    """Lines of an Outlook-style header block starting at ``i`` (0 if none)."""
    kinds: list[str] = []
    j = i
    while j < len(lines) and len(kinds) < 8:
        match = _FIELD.match(lines[j])
        if match is None:
            # Outlook wraps a long To: line; allow one continuation line.
            if kinds and j + 1 < len(lines) and _FIELD.match(lines[j + 1]) and lines[j].strip():
                j += 1
                continue
            break
        kinds.append(_FIELD_KIND.get(match.group("name").casefold(), ""))
        j += 1
    if "from" in kinds[:2] and "sent" in kinds and ({"to", "subject"} & set(kinds)):
        return j - i
    if len(set(kinds)) >= 3 and "from" in kinds and "subject" in kinds:
        return j - i
    return 0


def _quote_follows(lines: Sequence[str], j: int) -> bool:
    while j < len(lines) and not lines[j].strip():
        j += 1
    return j < len(lines) and _is_quoted(lines[j])


def _client_header(lines: Sequence[str]) -> int | None:
    """First line of a client's reply header: a separator, header block, or quoted attribution."""
    for i, line in enumerate(lines):
        if _ORIGINAL_MESSAGE.match(line):
            return i
        if _is_quoted(line) and i > 0 and _is_quoted(lines[i - 1]):
            continue
        if _RULE_LINE.match(line) and i + 1 < len(lines) and _header_block_at(lines, i + 1):
            return i
        if _header_block_at(lines, i):
            return i
        span = _attribution_at(lines, i)
        if span and _quote_follows(lines, i + span):
            return i
    return None


def _cut_at(lines: Sequence[str], cut: int) -> list[str]:
    """Lines above ``cut``; for a bottom-post (nothing above) the text under the quote."""
    head = _drop_signature(_trim_tail(list(lines[:cut])))
    if _has_text(head):
        return head
    rest = list(lines[cut:])
    skip = _attribution_at(rest, 0) or _header_block_at(rest, 0) or 1
    j = skip
    while j < len(rest) and (_is_quoted(rest[j]) or not rest[j].strip()):
        j += 1
    below = rest[j:]
    if not _has_text(below):
        return []
    # The answer may end in another quote or a signature (no recursion: a long
    # chain of quotes must not exhaust the stack).
    for k in range(1, len(below)):
        if (
            _ORIGINAL_MESSAGE.match(below[k])
            or _attribution_at(below, k)
            or _header_block_at(below, k)
        ):
            below = below[:k]
            break
    end = len(below)
    while end > 0 and (_is_quoted(below[end - 1]) or not below[end - 1].strip()):
        end -= 1
    return _drop_signature(_trim_tail(below[:end]))


def _trim_tail(lines: list[str]) -> list[str]:
    """Drop what a client puts above a quote: blanks, an attribution, rules, a header block."""
    changed = True
    while changed and lines:
        changed = False
        while lines and _blank(lines[-1]):
            lines.pop()
            changed = True
        if not lines:
            break
        if _RULE_LINE.match(lines[-1]) or _ORIGINAL_MESSAGE.match(lines[-1]):
            lines.pop()
            changed = True
            continue
        for span in (1, 2, 3):
            start = len(lines) - span
            if start >= 0 and _attribution_at(lines, start) == span:
                del lines[start:]
                changed = True
                break
        if changed:
            continue
        for start in range(max(0, len(lines) - 8), len(lines)):
            if _header_block_at(lines, start) == len(lines) - start:
                del lines[start:]
                changed = True
                break
    return lines


def _drop_signature(lines: list[str]) -> list[str]:
    """Cut at a "-- " delimiter and drop trailing "Sent from my phone" lines (never to nothing)."""
    for i, line in enumerate(lines):
        if _SIGNATURE.match(line) and _has_text(lines[:i]):
            lines = lines[:i]
            break
    while lines and (not lines[-1].strip() or _MOBILE_SIGNATURE.match(lines[-1])):
        if _MOBILE_SIGNATURE.match(lines[-1]) and not _has_text(lines[:-1]):
            break
        lines = lines[:-1]
    return lines


def _heuristic(lines: Sequence[str]) -> list[str] | None:
    """Cut at an attribution line, a trailing quote block, or a signature; None if nothing."""
    for i in range(len(lines)):
        if _attribution_at(lines, i):
            return _cut_at(lines, i)
    # A trailing ">" block.
    end = len(lines)
    j = end
    while j > 0 and (_is_quoted(lines[j - 1]) or not lines[j - 1].strip()):
        j -= 1
    if any(_is_quoted(line) for line in lines[j:]) and _has_text(lines[:j]):
        return _drop_signature(_trim_tail(list(lines[:j])))
    # A leading ">" block with an answer below it (bottom-posting).
    k = 0
    while k < end and (_is_quoted(lines[k]) or not lines[k].strip()):
        k += 1
    if k and any(_is_quoted(line) for line in lines[:k]) and _has_text(lines[k:]):
        return _drop_signature(list(lines[k:]))
    kept = _drop_signature(list(lines))
    if _join(kept) != _join(lines):
        return kept
    return None


# -- HTML ---------------------------------------------------------------------------


def html_to_text(html: str) -> str:
    """Plain text of an HTML part (inscriptis), '' if it cannot be read."""
    try:
        from inscriptis import get_text

        return str(get_text(html))
    except Exception:
        return re.sub(r"<[^>]*>", " ", html)


_BORDER_TOP = re.compile(r"border-top\s*:\s*solid", re.IGNORECASE)
# Containers after which everything is quoted history (Outlook, Hotmail, Zimbra):
# the quoted body follows them as siblings, not inside.
_REST_IDS = {"divrplyfwdmsg", "appendonsend", "stopspelling", "zwchr", "olk_src_body_section"}
# Containers that hold the quote (and the attribution) inside them.
_ENCLOSING_CLASSES = {
    "gmail_quote",
    "gmail_quote_container",
    "gmail_attr",
    "moz-cite-prefix",
    "yahoo_quoted",
    "protonmail_quote",
}
_VOID_TAGS = {"br", "hr", "img", "meta", "link", "input", "wbr", "col", "area", "base", "source"}


class _QuoteFinder(HTMLParser):
    """Source ranges of the quote containers of an HTML reply.

    ``ranges`` holds (start, end) offsets of top-level enclosing containers;
    ``rest`` the offset from which everything is quoted, if any.
    """

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self._line_starts = [0]
        for i, ch in enumerate(html):
            if ch == "\n":
                self._line_starts.append(i + 1)
        self.ranges: list[tuple[int, int]] = []
        self.rest: int | None = None
        self._open: tuple[str, int, int] | None = None  # tag, start offset, depth

    def _offset(self) -> int:
        line, col = self.getpos()
        return self._line_starts[line - 1] + col

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self.rest is not None:
            return
        if self._open is not None:
            open_tag, start, depth = self._open
            if tag == open_tag and tag not in _VOID_TAGS:
                self._open = (open_tag, start, depth + 1)
            return
        values = {name.lower(): (value or "") for name, value in attrs}
        classes = set(values.get("class", "").lower().split())
        if values.get("id", "").lower() in _REST_IDS or (
            tag == "div" and _BORDER_TOP.search(values.get("style", ""))
        ):
            self.rest = self._offset()
        elif (classes & _ENCLOSING_CLASSES) or (
            tag == "blockquote" and values.get("type", "").lower() == "cite"
        ):
            if tag in _VOID_TAGS:
                return
            self._open = (tag, self._offset(), 1)

    def handle_endtag(self, tag: str) -> None:
        if self._open is None or tag != self._open[0]:
            return
        open_tag, start, depth = self._open
        if depth > 1:
            self._open = (open_tag, start, depth - 1)
            return
        self._open = None
        self.ranges.append((start, self._offset()))

    def finish(self, length: int) -> None:
        if self._open is not None:  # never closed: quoted to the end
            self.ranges.append((self._open[1], length))
            self._open = None


def _html_new_text(html: str) -> str | None:
    """Text of the HTML without its quote containers, None if it has none."""
    finder = _QuoteFinder(html)
    try:
        finder.feed(html)
        finder.close()
    except Exception:
        return None
    finder.finish(len(html))
    if finder.rest is None and not finder.ranges:
        return None
    limit = finder.rest if finder.rest is not None else len(html)
    pieces: list[str] = []
    pos = 0
    for start, stop in finder.ranges:
        if start >= limit:
            break
        pieces.append(html[pos:start])
        end_tag = html.find(">", stop)
        pos = len(html) if end_tag < 0 else end_tag + 1
    if pos < limit:
        pieces.append(html[pos:limit])
    return html_to_text("".join(pieces))


def _alnum(text: str) -> str:
    return "".join(ch for ch in text.casefold() if ch.isalnum())


def _map_onto_text(lines: Sequence[str], new_text: str) -> list[str]:
    """The plain-text lines that hold ``new_text`` (the HTML's new part)."""
    target = _alnum(new_text)
    if not target:
        return []
    acc = ""
    for i, line in enumerate(lines):
        acc += _alnum(line)
        if len(acc) >= len(target):
            if acc.startswith(target):
                return _drop_signature(_trim_tail(list(lines[: i + 1])))
            break
    return _drop_signature(new_text.split("\n"))
