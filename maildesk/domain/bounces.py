"""What a bounce says: which mail of ours it returns, and which of its recipients are gone.

Read from a delivery-status part (RFC 3464) where there is one, else from the
words of a text bounce (qmail, Exim's text form, old Sendmail, Exchange and
Notes notices). Only the recipients of the mail of ours that the bounce
returns may be suppressed (the caller passes them): anyone can write a bounce.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from maildesk.domain.address import address_key, address_spellings
from maildesk.domain.message import DeliveryStatus, ParsedMessage

_ANGLE_ID_RE = re.compile(r"<([^<>\s]+)>")
# How much of what a report says about one recipient is kept.
SAID_CHARS = 200


def _bare_address(text: str) -> str:
    value = text.strip()
    if value.lower().startswith("rfc822;"):
        value = value[len("rfc822;") :]
    elif ";" in value:
        # Another address type ("x400;", "utf-8;"): the address follows the semicolon.
        value = value.split(";", 1)[1]
    return value.strip().strip("<>").strip().lower()


def _ids(values: Iterable[str]) -> list[str]:
    ids: list[str] = []
    for value in values:
        bracketed = _ANGLE_ID_RE.findall(value)
        ids.extend(bracketed or [t for t in value.split() if "@" in t])
    return ids


def bounced_message_ids(msg: ParsedMessage) -> tuple[str, ...]:
    """Message-IDs of the returned original (its Message-ID, then In-Reply-To, References).

    A text bounce (qmail, Exim) quotes the original in its body: its Message-ID is read there.
    """
    found: list[str] = []
    returned = msg.returned_headers or _quoted_headers(msg)
    for name in ("message-id", "in-reply-to", "references"):
        values = [value for key, value in returned if key.lower() == name]
        for mid in _ids(values):
            if mid not in found:
                found.append(mid)
    return tuple(found)


# -- bounces without a delivery-status part (qmail, Exim's text, old Sendmail, Notes) --

# The line where a text bounce starts quoting the returned message.
_RETURNED_COPY_RE = re.compile(
    r"^[ \t]*[-=*_]*[ \t]*(?:"
    r"this is a copy of|below this line is a copy|(?:a )?copy of the (?:original )?message|"
    r"(?:original|unsent|returned|undelivered|rejected) message|returned mail|"
    r"(?:the )?(?:original )?message headers? (?:is )?follow|headers? of the original|"
    r"the (?:header of the )?original message (?:is )?follow"
    r")",
    re.IGNORECASE | re.MULTILINE,
)
# A header of the returned message, written flush left into the text.
_RETURNED_HEADER_RE = re.compile(
    r"^(?:return-path|received|message-id|dkim-signature|x-original-to|delivered-to|mime-version)"
    r"[ \t]*:",
    re.IGNORECASE | re.MULTILINE,
)
# A line naming the returned message's people ("  To: alice, bob" in an Exchange NDR):
# everyone the mail went to, not who failed.
_PEOPLE_LINE_RE = re.compile(
    r"^[ \t>]*(?:to|cc|bcc|from|sender|reply-to|resent-to|resent-cc|sent|subject|date)[ \t]*:.*$",
    re.IGNORECASE | re.MULTILINE,
)
# The report says the address itself is gone (RFC 3463 5.1.1, 5.1.2, 5.1.10, in words).
_DEAD_ADDRESS_RE = re.compile(
    r"(?<![\d.])5\.1\.(?:1|2|10)(?![\d.])|"
    r"user unknown|unknown user|addressee unknown|no such (?:user|mailbox|recipient|address)|"
    r"unknown (?:recipient|mailbox|address|local[- ]?part)|"
    r"(?:user|mailbox|recipient|address|account)\b[^\n]{0,40}\b(?:does not|doesn't) exist|"
    r"recipient (?:name )?(?:is )?not (?:recognized|found)|invalid (?:recipient|mailbox)|"
    r"no mailbox here by that name|unrouteable address|host or domain name not found",
    re.IGNORECASE,
)
# A delay warning, or a failure the report calls temporary: not a dead address.
_NOT_YET_RE = re.compile(
    r"(?<![\d.])4\.\d{1,3}\.\d{1,3}(?![\d.])|\bdelayed\b|\bdeferred\b|not yet been delivered|"
    r"will (?:keep|continue) trying|still trying",
    re.IGNORECASE,
)


def _own_words(text: str) -> str:
    """A text bounce's own words: its text up to the quoted copy of the returned message."""
    cut = len(text)
    for pattern in (_RETURNED_COPY_RE, _RETURNED_HEADER_RE):
        found = pattern.search(text)
        if found is not None:
            cut = min(cut, found.start())
    return text[:cut]


def _report_text(text: str) -> str:
    """The bounce's own words, without lines that list the returned message's people."""
    return _PEOPLE_LINE_RE.sub("", _own_words(text)).lower()


def _mentions(text: str, address: str) -> list[int]:
    """Where ``address`` stands in ``text`` as a whole address (not inside a longer one)."""
    pattern = rf"(?<![\w.+-]){re.escape(address)}(?![\w-]|\.\w)"
    return [m.start() for m in re.finditer(pattern, text)]


def text_dead_recipients(msg: ParsedMessage, mailed: Iterable[str]) -> tuple[str, ...]:
    """Which of ``mailed`` a bounce without a delivery-status part says do not exist.

    Only addresses named in the bounce's own words (not in its copy of the
    returned mail, nor in a "To:" line about it), and only where the words that
    follow each one, up to the next of ``mailed``, say the address is dead: a
    full mailbox, a policy refusal or a delay leaves the address alone.
    """
    if msg.delivery_status:
        return ()
    return _words_dead(msg, mailed)


def _words_dead(msg: ParsedMessage, mailed: Iterable[str]) -> tuple[str, ...]:
    """:func:`text_dead_recipients`, whatever parts the bounce has."""
    if _NOT_YET_RE.search(msg.subject):
        return ()
    report = _report_text(msg.text)
    wanted = [a.lower() for a in dict.fromkeys(mailed) if a]
    # Where the report names each address, in any of its spellings (an IDN domain
    # in U-labels where we mailed its A-labels, or the other way round).
    where = {
        address: sorted(p for form in address_spellings(address) for p in _mentions(report, form))
        for address in wanted
    }
    starts = sorted(pos for positions in where.values() for pos in positions)
    dead: list[str] = []
    for address in wanted:
        own = set(where[address])
        for pos in where[address]:
            later = [s for s in starts if s > pos and s not in own]
            said = report[pos : later[0] if later else len(report)]
            if _DEAD_ADDRESS_RE.search(said) and not _NOT_YET_RE.search(said):
                dead.append(address)
                break
    return tuple(dead)


# RFC 3463 statuses that say the address itself is dead (as for our relay's answers in
# maildesk.outbound.suppression); "x.0.0" is generic and its diagnostic decides.
_DEAD_STATUS_RE = re.compile(r"^5\.1\.(?:1|2|10)$")
_GENERIC_STATUS_RE = re.compile(r"^5\.0\.0$|^5$|^$")


def _dead_address_reported(status: DeliveryStatus) -> bool:
    """Whether a failed delivery-status block says the address does not exist.

    A full mailbox (5.2.2), a policy or spam refusal (5.7.x) or a relay giving up
    (4.4.7) is a failure of that one mail, not of the address.
    """
    code = status.status.strip()
    if _DEAD_STATUS_RE.match(code):
        return True
    return bool(_GENERIC_STATUS_RE.match(code)) and bool(_DEAD_ADDRESS_RE.search(status.diagnostic))


@dataclass(frozen=True, slots=True)
class Undeliverable:
    """What a bounce says about the recipients of the mail of ours it returns."""

    dead: tuple[str, ...] = ()  # ours, and the report says the address does not exist
    failed: tuple[str, ...] = ()  # ours, failed for another reason ("addr: 5.2.2 ...")
    strangers: tuple[str, ...] = ()  # named as failed, but no recipient of our mail
    # What the report says of the dead and failed ("addr: 5.1.1 smtp; 550 ..."), or
    # a text bounce's own words: for the people told (maildesk.outbound.delivery_failed).
    # Words to show, not part of the verdict: left out of comparisons.
    said: tuple[str, ...] = field(default=(), compare=False)

    @property
    def undelivered(self) -> tuple[str, ...]:
        """Every recipient of ours the report says did not get the mail, dead or not."""
        return (*self.dead, *(f.split(":", 1)[0] for f in self.failed))


def undeliverable(msg: ParsedMessage, mailed: Iterable[str]) -> Undeliverable:
    """Read a bounce against ``mailed``, the recipients of the mail of ours it returns.

    A delivery-status part names the address we mailed as its Original-Recipient
    when a forward or alias rewrote the Final-Recipient, and may write its domain
    in U-labels where we mailed the A-labels (or the other way round): an address
    counts as ours in either form, and is reported as we mailed it. A text
    bounce counts only for what :func:`text_dead_recipients` finds; so does a
    report whose failed recipients are none of ours (an address it garbled, or an
    alias target without an Original-Recipient) for what its own words say.
    """
    ours = {address_key(a): a.lower() for a in mailed}
    if not msg.delivery_status:
        return _by_words(msg, ours.values())
    dead: list[str] = []
    failed: list[str] = []
    strangers: list[str] = []
    said: list[str] = []
    for status in msg.delivery_status:
        if status.action.strip().lower() != "failed":
            continue
        final = _bare_address(status.final_recipient)
        named = (final, _bare_address(status.original_recipient))
        hit = next((ours[address_key(a)] for a in named if a and address_key(a) in ours), None)
        if hit is None:
            strangers.append(final)
            continue
        line = f"{hit}: {status.status} {status.diagnostic}".strip()[:SAID_CHARS]
        said.append(line)
        if _dead_address_reported(status):
            dead.append(hit)
        else:
            failed.append(line)
    unique = dict.fromkeys
    if strangers and not dead and not failed:
        return replace(
            _by_words(msg, ours.values()), strangers=tuple(a for a in unique(strangers) if a)
        )
    return Undeliverable(
        dead=tuple(unique(dead)),
        failed=tuple(f for f in unique(failed) if f.split(":", 1)[0] not in dead),
        strangers=tuple(a for a in unique(strangers) if a and a not in dead),
        said=tuple(unique(said)),
    )


def _by_words(msg: ParsedMessage, mailed: Iterable[str]) -> Undeliverable:
    """What the bounce's own words say of ``mailed``: only who is dead, and those words."""
    dead = _words_dead(msg, mailed)
    words = " ".join(_own_words(msg.text).split())[:SAID_CHARS]
    return Undeliverable(dead=dead, said=(words,) if dead and words else ())


_QUOTED_ID_RE = re.compile(r"^message-id[ \t]*:[ \t]*(?:\n[ \t]+)?(<[^<>\s]+>)", re.I | re.M)


def _quoted_headers(msg: ParsedMessage) -> tuple[tuple[str, str], ...]:
    """The Message-ID of the original a text bounce quotes below its own words."""
    if msg.delivery_status:
        return ()
    copy = _RETURNED_COPY_RE.search(msg.text)
    header = _RETURNED_HEADER_RE.search(msg.text)
    starts = [m.start() for m in (copy, header) if m is not None]
    if not starts:
        return ()
    return tuple(("Message-ID", mid) for mid in _QUOTED_ID_RE.findall(msg.text, min(starts)))
