"""Spam features: pure tokenization of a ParsedMessage, hashed into a fixed space.

Tokens follow the bogofilter/spamprobe tradition (case kept plus case-folded
copies, header-prefixed, URL pieces, money/number shapes, punctuation runs),
the relay names of the whole Received chain (``rcvd:``, as bogofilter reads
them), a few header *shapes*, and hashed character 4-grams of three short
fields (subject, sender, Message-ID local part; see
:func:`field_char_ngram_indices`). Features fall in two groups, content and
header, each L2-normalised on its own (see :class:`FeatureExtractor`).
Deliberately **not** used, because they describe how a corpus was collected
rather than the mail itself: recipient addresses (To/Cc/Delivered-To and
recipient words in other headers; only the recipient *count* and whether they
are hidden), Received timestamps and ``for <recipient>`` clauses, X-Spam-* and
other filter verdicts (unless configured as trusted), mailbox bookkeeping
headers (Status, X-UID, ...).
"""

from __future__ import annotations

import html as html_lib
import math
import re
import unicodedata
import zlib
from dataclasses import dataclass
from itertools import chain, pairwise
from typing import NamedTuple
from urllib.parse import urlsplit

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

from maildesk.domain.authresults import trusted_results
from maildesk.domain.message import ParsedMessage

FEATURE_VERSION = 8  # bump whenever tokens change: old weights mean nothing
# Versions whose weights still mean the same. Version 5 stopped producing some
# of version 3's tokens (receiver-side headers, dates in header values, the hop
# count, Return-Path's presence) and gave the corrected hop-shape tests new
# names; every token both produce means the same, so a live model learned with
# version 3 keeps what it learned. Version 6 only adds the field character
# n-grams, switched by ``field_char_ngrams``: a model saved without that key
# was learned without them and goes on scoring exactly as it did. Version 7
# adds tokens to text that is not all ASCII (Han and kana bigrams, the words as
# shown, flags for look-alike letters and invisible characters), for which an
# older model has no weight, and counts the subject's words as words of the
# text too, switched by ``subject_words`` (absent: off, as the model learned).
# Version 8 adds whether the sender's domain names the origin-side relays
# (``sender_origin``) and whether the links go to it (``link_sender``), and no
# longer reads our listener's own name as a relay word (``skip_our_relay_name``);
# each switch absent: off.
COMPATIBLE_FEATURE_VERSIONS = frozenset({3, 5, 6, 7, FEATURE_VERSION})

# Words (a letter first), money ($ £ € then digits) and numbers. Written as one
# character class followed by a look-behind on which kind it was, not as three
# alternatives: a pattern that starts with one class lets the regex engine skip
# spaces and punctuation in C, about 20 % faster with the same matches.
_WORD_PATTERN = (
    r"[\w$£€](?:(?<=[^\W\d_])[\w'\-.$]{0,40}[\w$%!]"
    r"|(?<=[$£€])\s?\d[\d,.]*"
    r"|(?<=\d)[\d,.:/\-]*[\d%]?)"
)
_WORD = re.compile(_WORD_PATTERN)
# The same pattern for ASCII-only text (most mail), a quarter faster: on ASCII
# characters the ASCII classes match what the Unicode ones do, once \s also
# takes the separators \x1c-\x1f that Unicode counts as white space.
_WORD_ASCII = re.compile(_WORD_PATTERN.replace(r"\s", r"[\s\x1c-\x1f]"), re.ASCII)
_NUMBER_START = frozenset("0123456789$£€")
# A subject is read this far (the corpus's longest is 737 characters): a
# hostile megabyte of subject costs no more than a long one.
MAX_SUBJECT_CHARS = 1_000
_NINES = str.maketrans("0123456789", "9999999999")
_PUNCT_RUN = re.compile(r"[!?$*%#]{2,}")
# Both run on lower-cased text: a case-sensitive scan is three times faster, and
# every token made from a link is lower-cased anyway.
_URL = re.compile(r"(?:https?://|www\.)[^\s<>\"'()\[\]{}]+")
_HREF = re.compile(r"""(?:href|src)\s*=\s*["']?([^"'\s>]+)""")
_TAG = re.compile(r"<\s*(/?)([a-zA-Z][a-zA-Z0-9]*)([^>]*)>", re.DOTALL)
_STRIP_BLOCKS = re.compile(r"<(script|style)[^>]*>.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
_ANY_TAG = re.compile(r"<[^>]*>")
_IPV4 = re.compile(r"^\d{1,3}(?:\.\d{1,3}){3}$")
_BRACKET_IP = re.compile(r"\[(\d{1,3}(?:\.\d{1,3}){3})\]")
_DYNAMIC = re.compile(r"dsl|dial|cable|pool|dhcp|ppp|dyn|\d+[-.]\d+[-.]\d+", re.IGNORECASE)
_LOCAL_HOP = re.compile(r"localhost|127\.0\.0\.1", re.IGNORECASE)
_DIGIT = re.compile(r"\d")
_ALPHA_RUN = re.compile(r"[a-z]+")
_MAILER_WORD = re.compile(r"[A-Za-z][A-Za-z\-]+|\d+")
# Invisible format characters (soft hyphen, zero-width space and joiners, bidi
# controls, word joiner, BOM, tag characters): put inside a word, they split it
# for a tokenizer while a mail client shows it whole ("Vi\u200bagra"). Listed,
# not read from ``unicodedata`` at run time, so that the tokens do not change
# with Python's Unicode version.
_INVISIBLE_CHARS = (
    "\u00ad\u061c\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u206f"
    "\ufeff\ufff9-\ufffb\U0001d173-\U0001d17a\U000e0001\U000e0020-\U000e007f"
)
_INVISIBLE = re.compile(f"[{_INVISIBLE_CHARS}]")
# What a disguised word is written with: the invisible characters, and letters
# that NFKC turns into plain ones (ligatures, half- and full-width forms, circled
# and mathematical letters). A no-break space or an ellipsis, which NFKC also
# changes, is no disguise and costs no second look.
_DISGUISE = re.compile(
    f"[{_INVISIBLE_CHARS}\ufb00-\ufb06\uff00-\uffef\u2460-\u24ff"
    "\U0001d400-\U0001d7ff\U0001f130-\U0001f189]"
)
# A Latin letter next to a Cyrillic or Greek one inside a word: a look-alike
# spelling ("Pаypal" with a Cyrillic a), which no honest text needs.
_MIXED_SCRIPT = re.compile(
    r"[A-Za-z][\u0370-\u03ff\u0400-\u04ff]|[\u0370-\u03ff\u0400-\u04ff][A-Za-z]"
)
# Han and kana: written without spaces, so a word token would be a whole
# phrase; character bigrams are the usual tokens for them.
_CJK_RUN = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]{2,}")


@dataclass(frozen=True, slots=True)
class FeatureConfig:
    """What goes into the feature vector. Stored with every model (JSON-able)."""

    n_features_log2: int = 20
    body_bigrams: bool = True
    lowercase_copies: bool = True
    html_tags: bool = True
    header_signals: bool = True
    all_headers: bool = True
    char_ngrams: int = 0
    field_char_ngrams: int = 4  # char n-grams of subject, sender and Message-ID local part; 0 = off
    subject_words: bool = True  # the subject's words also count as words of the text
    sender_origin: bool = True  # whether the sender's domain names the origin-side relays
    skip_our_relay_name: bool = True  # our listener's "by maildesk" is no relay word
    link_sender: bool = True  # whether the links go to the sender's own domain
    max_body_chars: int = 12_000
    received_hosts: bool = True
    received_chain: bool = True
    recipient_shape: bool = True
    header_weight: float = 0.7  # L2 norm of the header group relative to the body group
    own_domains: tuple[str, ...] = ()
    # Verdicts of our own MTA (spam.trusted_verdict_headers, set by the
    # installation whatever the model file says): the topmost such header, and
    # for Authentication-Results only the one by our authserv-id.
    trusted_verdict_headers: tuple[str, ...] = ()  # e.g. ("X-Spam-Flag", "Authentication-Results")
    trusted_authserv_ids: tuple[str, ...] = ()
    version: int = FEATURE_VERSION

    @property
    def n_features(self) -> int:
        return 1 << self.n_features_log2

    def to_json(self) -> dict[str, object]:
        return {
            "n_features_log2": self.n_features_log2,
            "body_bigrams": self.body_bigrams,
            "lowercase_copies": self.lowercase_copies,
            "html_tags": self.html_tags,
            "header_signals": self.header_signals,
            "all_headers": self.all_headers,
            "char_ngrams": self.char_ngrams,
            "field_char_ngrams": self.field_char_ngrams,
            "subject_words": self.subject_words,
            "sender_origin": self.sender_origin,
            "skip_our_relay_name": self.skip_our_relay_name,
            "link_sender": self.link_sender,
            "max_body_chars": self.max_body_chars,
            "received_hosts": self.received_hosts,
            "received_chain": self.received_chain,
            "recipient_shape": self.recipient_shape,
            "header_weight": self.header_weight,
            "own_domains": list(self.own_domains),
            "trusted_verdict_headers": list(self.trusted_verdict_headers),
            "trusted_authserv_ids": list(self.trusted_authserv_ids),
            "version": self.version,
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> FeatureConfig:
        def _int(key: str, default: int) -> int:
            value = data.get(key, default)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"feature config {key!r} must be an integer")
            return value

        def _bool(key: str, default: bool) -> bool:
            value = data.get(key, default)
            if not isinstance(value, bool):
                raise ValueError(f"feature config {key!r} must be a boolean")
            return value

        def _strs(key: str) -> tuple[str, ...]:
            value = data.get(key, [])
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"feature config {key!r} must be a list of strings")
            return tuple(value)

        if _int("version", FEATURE_VERSION) not in COMPATIBLE_FEATURE_VERSIONS:
            raise ValueError("model was trained with another feature version")
        header_weight = data.get("header_weight", 0.7)
        if isinstance(header_weight, bool) or not isinstance(header_weight, int | float):
            raise ValueError("feature config 'header_weight' must be a number")
        if not 0.0 < float(header_weight) <= 10.0:
            raise ValueError("feature config header_weight out of range (0, 10]")
        field_grams = _int("field_char_ngrams", 0)  # absent: learned before version 6
        if not 0 <= field_grams <= 8:
            raise ValueError("feature config field_char_ngrams out of range 0..8")
        log2 = _int("n_features_log2", 20)
        if not 10 <= log2 <= 24:
            raise ValueError("feature config n_features_log2 out of range 10..24")
        return cls(
            n_features_log2=log2,
            body_bigrams=_bool("body_bigrams", True),
            lowercase_copies=_bool("lowercase_copies", True),
            html_tags=_bool("html_tags", True),
            header_signals=_bool("header_signals", True),
            all_headers=_bool("all_headers", True),
            char_ngrams=_int("char_ngrams", 0),
            field_char_ngrams=field_grams,
            subject_words=_bool("subject_words", False),  # absent: learned before version 7
            sender_origin=_bool("sender_origin", False),  # absent: learned before version 8
            skip_our_relay_name=_bool("skip_our_relay_name", False),  # the same
            link_sender=_bool("link_sender", False),  # the same
            max_body_chars=_int("max_body_chars", 12_000),
            received_hosts=_bool("received_hosts", True),
            received_chain=_bool("received_chain", True),
            recipient_shape=_bool("recipient_shape", True),
            header_weight=float(header_weight),
            own_domains=_strs("own_domains"),
            trusted_verdict_headers=_strs("trusted_verdict_headers"),
            trusted_authserv_ids=_strs("trusted_authserv_ids"),
        )


class _Sink:
    """Collects tokens; duplicates are removed once at the end (cheaper than per add)."""

    __slots__ = ("add", "extend", "items")

    def __init__(self) -> None:
        self.items: list[str] = []
        self.add = self.items.append
        self.extend = self.items.extend

    def distinct(self) -> list[str]:
        return list(dict.fromkeys(self.items))


def _word_tokens(text: str, prefix: str, config: FeatureConfig, sink: _Sink) -> list[str]:
    """Word, money and number tokens of ``text``; returns the lowered words for bigrams.

    The hot spot of scoring: one C-level ``findall`` pass and list comprehensions,
    no per-token Python branching. Text that is not all ASCII also gives the
    tokens of :func:`_beyond_ascii_tokens`, and its words as shown.
    """
    if text.isascii():
        found = _WORD_ASCII.findall(text)
    else:
        found = _WORD.findall(text)
        found.extend(_beyond_ascii_tokens(text, prefix, sink))
    words = [w for w in found if w[0] not in _NUMBER_START]
    if len(words) != len(found):
        sink.extend(
            [
                prefix + "num:" + n.rstrip(".,:/-").translate(_NINES)[:12]
                for n in found
                if n[0] in _NUMBER_START
            ]
        )
    short = [w for w in words if len(w) <= 24]
    sink.extend([prefix + w for w in short] if prefix else short)
    if len(short) != len(words):
        sink.extend([prefix + "long:" + str(min(len(w) // 8, 8)) for w in words if len(w) > 24])
    lowered = list(map(str.lower, short))
    if config.lowercase_copies:
        sink.extend([prefix + w for w in lowered] if prefix else lowered)
    if "!!" in text or "??" in text or "$$" in text or "**" in text or "%%" in text or "##" in text:
        sink.extend([prefix + "punct:" + run[:4] for run in _PUNCT_RUN.findall(text)])
    return lowered


def _western(text: str) -> bool:
    """True if ``text`` is all Windows-1252: Latin letters with accents, curly quotes,
    dashes, no-break spaces (a test at C speed; most text beyond ASCII passes it)."""
    try:
        text.encode("cp1252")
    except UnicodeEncodeError:
        return False
    return True


def _beyond_ascii_tokens(text: str, prefix: str, sink: _Sink) -> list[str]:
    """Tokens that only text beyond ASCII has; returns its words as a reader sees them.

    Full-width and mathematical letters, ligatures and invisible characters
    disguise a word from a tokenizer but not from a reader. When the text has
    any of them, its words as shown (NFKC, invisible characters dropped) are
    returned, to be tokens beside the words as written: the shown word carries
    what the model knows of the plain word, the written one what it learned of
    the disguise (measured: MODEL_CARD.md, feature version 7). Look-alike
    letters from another script cannot be undone without guessing; they are
    flagged. Han and kana are written without spaces, so the word pattern takes
    a whole phrase as one token (or only its length, past 24 characters) and two
    mails about the same thing share none; their character bigrams they share.
    """
    if _western(text) and "\u00ad" not in text:
        return []  # no CJK, Cyrillic, Greek, or disguise but the soft hyphen
    if _MIXED_SCRIPT.search(text):
        sink.add(prefix + "script:mixed")
    for run in _CJK_RUN.findall(text):
        sink.extend([prefix + "cjk:" + run[i : i + 2] for i in range(len(run) - 1)])
    if not _DISGUISE.search(text):
        return []
    shown, hidden = _INVISIBLE.subn("", unicodedata.normalize("NFKC", text))
    if hidden:
        sink.add(prefix + "script:invisible")
    return _WORD.findall(shown)


def _domain_suffixes(host: str) -> list[str]:
    """``a.b.example.co.uk`` -> the last 2, 3 and 4 labels (the registrable-ish parts)."""
    labels = host.lower().strip(".").split(".")
    if "" in labels:  # "a..b": empty labels do not count
        labels = [label for label in labels if label]
    out: list[str] = []
    for n in (1, 2, 3):
        if len(labels) >= n:
            out.append(".".join(labels[-n:]))
    return out


def _url_tokens(url: str, sink: _Sink) -> str:
    """Tokens of one link, which :func:`token_groups` found in lower-cased text; its host."""
    if url.startswith("www."):
        url = "http://" + url
    try:
        scheme, host, port, userinfo, path, query = _link_parts(url)
    except ValueError:
        sink.add("url:unparsable")
        return ""
    sink.add("url:scheme:" + scheme)
    if not host:
        sink.add("url:nohost")
        return ""
    if _IPV4.match(host):
        sink.add("url:ip")
    else:
        for suffix in _domain_suffixes(host):
            sink.add("url:" + suffix)
    if port is not None:
        sink.add("url:port")
    if userinfo:
        sink.add("url:userinfo")
    for piece in _ALPHA_RUN.findall(path):
        if 2 <= len(piece) <= 20:
            sink.add("urlp:" + piece)
    if query:
        sink.add("url:query")
    return host


# A plain http(s) link: a host without user, port, IPv6 brackets or zone, then the
# path up to the query or fragment, and the query up to the fragment.
_PLAIN_LINK = re.compile(r"(https?)://([^/?#@:%\[\]]*)(?=[/?#]|$)([^?#]*)(?:\?([^#]*))?")


def _link_parts(url: str) -> tuple[str, str, int | None, bool, str, str]:
    """(scheme, host or "", port, whether the netloc has an "@", path, query) of
    ``url``, as :func:`urllib.parse.urlsplit` reads them; ValueError if it cannot.

    Most links are plain http(s) ones written in printable ASCII, which one match
    splits (a link's tokens cost a third of what they did through urlsplit);
    anything else goes to urlsplit.
    """
    plain = _PLAIN_LINK.match(url) if url.isascii() and url.isprintable() else None
    if plain is not None:
        scheme, netloc, path, query = plain.groups()
        return scheme, netloc.lower(), None, False, path, query or ""
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port  # port: ValueError if not a number
    return parts.scheme, host, port, "@" in parts.netloc, parts.path, parts.query


def _link_sender_token(hosts: list[str], sender: str) -> str:
    """Whether the links go to the sender's own domain: all of them, some, or none.

    A newsletter links to its own site, a made-up sender's mail to somewhere
    else. Compared, not learned site by site, so it speaks for senders never
    seen before. A look-alike host (``paypal.com.example.net``) is not the
    sender's.
    """
    own = sum(1 for host in hosts if _is_senders(host, sender))
    return "url:sender:" + ("all" if own == len(hosts) else "some" if own else "none")


def _is_senders(host: str, sender: str) -> bool:
    """``host`` is the sender's domain or a name under it (not a look-alike that
    merely contains it, such as ``paypal.com.example.net`` or ``notpaypal.com``)."""
    return bool(sender) and (host == sender or host.endswith("." + sender))


def html_to_text(html: str) -> str:
    """Cheap tag stripper (speed matters more than layout here)."""
    html = _STRIP_BLOCKS.sub(" ", _COMMENT.sub(" ", html))
    return html_lib.unescape(_ANY_TAG.sub(" ", html))


# (what to look for in a tag's lower-cased attributes, the token suffix it adds)
_STYLE_ATTRS = tuple(
    (attr + "=", ":" + attr)
    for attr in ("color", "size", "face", "bgcolor", "width", "height", "align")
)


def _html_tokens(html: str, sink: _Sink) -> None:
    for closing, name, attrs in _TAG.findall(html):
        if closing:
            continue
        tag = "tag:" + name.lower()
        sink.add(tag)
        if "=" in attrs:
            lattrs = attrs.lower()
            sink.extend([tag + suffix for needle, suffix in _STYLE_ATTRS if needle in lattrs])
    if "&#" in html:
        sink.add("html:numeric-entity")


def _domain_of(addr: str) -> str:
    return addr.rpartition("@")[2].lower().strip(".>")


def _local_shape(addr: str) -> str:
    local = addr.rpartition("@")[0]
    has_digit = any(map(str.isdigit, local))
    bucket = "short" if len(local) < 5 else "long" if len(local) > 15 else "mid"
    return f"{bucket}:{'digits' if has_digit else 'alpha'}"


def _reverse_name(paren: str) -> str:
    """The reverse DNS name in a hop's ``(name [ip])`` part, or "" if none is given.

    The bracketed address is not part of it: read as a name, every address
    looked "dynamic" (digit-dot-digit) and unlike the HELO name.
    """
    name = _BRACKET_IP.sub(" ", paren).split(maxsplit=1)
    if not name or _IPV4.match(name[0].strip("[]")) or name[0] in ("unknown", "local"):
        return ""
    return name[0].strip("[]")


def _sender_domain(domain: str) -> str:
    """The part of a sender's domain that its own relays share: the last two labels,
    or three under a two-letter country code with a short second level (co.uk)."""
    labels = [label for label in domain.split(".") if label]
    keep = 3 if len(labels) >= 3 and len(labels[-1]) == 2 and len(labels[-2]) <= 3 else 2
    return ".".join(labels[-keep:]) if len(labels) >= 2 else ""


def _is_local_hop(hop: str) -> bool:
    """``_LOCAL_HOP.search(hop)``, by two substring tests when ``hop`` is ASCII
    (case-insensitive matching also finds "localhoſt" and the Kelvin sign)."""
    if hop.isascii():
        lower = hop.lower()
        return "localhost" in lower or "127.0.0.1" in lower
    return _LOCAL_HOP.search(hop) is not None


def _received_tokens(
    msg: ParsedMessage, config: FeatureConfig, sink: _Sink, from_domain: str = ""
) -> None:
    """Shape (and, if configured, relay names) of the two origin-side hops.

    Only the oldest two hops are read: they describe where the mail came from.
    The newer hops are the receiving side's own infrastructure (a collection
    artefact); local hops are skipped as well. For the same reason the number
    of hops is not a feature: each installation adds its own (none for mail
    sent straight to our listener, one behind Postfix, more via a provider).
    """
    hops = [h for h in msg.header_all("Received") if not _is_local_hop(h[:120])]
    if config.sender_origin and hops:
        # Mail from a domain's own servers names the domain in its first hops;
        # a made-up sender on a stranger's relay does not. Compared, not learned
        # token by token, so it speaks for senders never seen before.
        sender = _sender_domain(from_domain)
        text = " ".join(hops[-2:])[:800].lower()
        own = sender in text and any(  # a name that is or ends with it holds it
            _is_senders(name.rstrip("."), sender) for name in _RCVD_WORD.findall(text)
        )
        sink.add("from:origin:" + ("own" if own else "other"))
    for depth, hop in enumerate(reversed(hops[-2:])):
        lhop = " ".join(hop.split()).lower()
        tag = f"rcvd{depth}:"
        if not lhop.startswith("from"):
            sink.add(tag + "nofrom")
        helo = lhop[5:].split(" ", 1)[0] if lhop.startswith("from ") else ""
        if _IPV4.match(helo.strip("[]")):
            sink.add(tag + "helo-ip")
        elif helo and "." not in helo:
            sink.add(tag + "helo-bare")
        if "unknown" in lhop[:80]:
            sink.add(tag + "unknown")
        paren = lhop.split("(", 1)[1].split(")", 1)[0] if "(" in lhop else ""
        rdns = _reverse_name(paren)
        if _DYNAMIC.search(rdns):
            sink.add(tag + "rdns-dynamic")
        if helo and rdns and helo.strip("[]") not in rdns:
            sink.add(tag + "helo-not-rdns")
        ip = _BRACKET_IP.search(lhop)
        if not ip:
            sink.add(tag + "no-ip")
        elif config.received_hosts:
            octets = ip.group(1).split(".")
            sink.add("rcvdip:" + ".".join(octets[:2]))
            sink.add("rcvdip:" + ".".join(octets[:3]))
        if config.received_hosts:
            for host in {helo.strip("[]"), rdns}:
                if host and "." in host and not _IPV4.match(host):
                    for suffix in _domain_suffixes(host)[1:]:
                        sink.add("rcvdhost:" + suffix)
        for proto in ("esmtp", "smtp", "http", "qmqp", "lmtp"):
            if f"with {proto}" in lhop:
                sink.add(tag + "with:" + proto)
                break


# "for <recipient>", any case, as a word of its own. Spelled with the F first and
# the word boundary as a look-behind, not as ``\bfor`` with IGNORECASE: a pattern
# that starts with a character class is scanned for in C, four times faster here.
# (Case-insensitive f, o and r match nothing but F, O and R, even in Unicode.)
_RCVD_FOR = re.compile(r"[Ff](?<!\w[Ff])[Oo][Rr]\s+<?[^\s;>]*>?")
_RCVD_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9.\-_]{2,60}")
_RCVD_STOP = frozenset({"from", "by", "with", "id", "for", "via", "envelope-from"})
# Our SMTP listener's Received line says "by maildesk": on every mail it takes,
# so it tells nothing about one, but a seed whose support requests came through
# the listener would learn it as a word of ham.
OUR_RELAY_NAME = "maildesk"
_RCVD_STOP_AND_OURS = _RCVD_STOP | {OUR_RELAY_NAME}


def _received_chain_tokens(msg: ParsedMessage, config: FeatureConfig, sink: _Sink) -> None:
    """bogofilter-style ``rcvd:`` words of every hop: relay names, IPs, software.

    The timestamp (after the last ``;``) and the ``for <recipient>`` clause are
    dropped: they describe when and to whom a corpus was collected, not the mail.
    """
    kept = []
    for hop in msg.header_all("Received")[:10]:
        before, semicolon, _ = hop[:400].rpartition(";")
        kept.append(before + " " if semicolon else hop[:400])
    # One pass over all hops: neither pattern reaches across the ";" between them.
    text = _RCVD_FOR.sub(" ", ";".join(kept))
    words = {w.strip(".-") for w in _RCVD_WORD.findall(text)}
    stop = _RCVD_STOP_AND_OURS if config.skip_our_relay_name else _RCVD_STOP
    sink.extend(["rcvd:" + w for w in words if w and not w.isdigit() and w.lower() not in stop])


def _header_tokens(msg: ParsedMessage, config: FeatureConfig, sink: _Sink) -> None:
    sender = msg.from_.addr if msg.from_ else ""
    if sender:
        from_domain = _domain_of(sender)
        for suffix in _domain_suffixes(from_domain):
            sink.add("from:" + suffix)
        sink.add("from:local:" + _local_shape(sender))
        if msg.from_ and msg.from_.name:
            for word in _MAILER_WORD.findall(msg.from_.name)[:6]:
                sink.add("fromname:" + word)
        else:
            sink.add("from:noname")
    else:
        from_domain = ""
        sink.add("from:missing")
    for reply in msg.reply_to[:2]:
        reply_domain = _domain_of(reply.addr)
        sink.add("replyto:" + reply_domain)
        if reply.addr != sender:
            sink.add("replyto:differs")
        if reply_domain != from_domain:
            sink.add("replyto:otherdomain")
    if config.own_domains:
        own = {d.lower() for d in config.own_domains}
        if from_domain in own:
            sink.add("from:own")
    msgid = msg.message_id or ""
    if not msgid:
        sink.add("mid:missing")
    else:
        host = msgid.rpartition("@")[2].lower()
        if not host or host == msgid.lower():
            sink.add("mid:nohost")
        elif _IPV4.match(host):
            sink.add("mid:ip")
        else:
            for suffix in _domain_suffixes(host)[:2]:
                sink.add("mid:" + suffix)
            if from_domain and not host.endswith(from_domain.split(".", 1)[-1]):
                sink.add("mid:foreign")
        sink.add("mid:shape:" + _DIGIT.sub("9", msgid.rpartition("@")[0])[:6])
    for name in ("X-Mailer", "User-Agent"):
        value = msg.header(name)
        if value:
            for word in _MAILER_WORD.findall(value)[:4]:
                sink.add(f"{name.lower()}:{word}")
    if msg.header("Date") is None:
        sink.add("date:missing")
    sink.add("ct:" + msg.content_type)
    for lkey in ("content-type", "content-transfer-encoding"):
        for value in msg.header_all(lkey):
            lvalue = value.lower()
            if "charset=" in lvalue:
                charset = lvalue.split("charset=", 1)[1].strip("\"' ").split(";")[0]
                sink.add("charset:" + charset.strip("\"' ")[:20])
            if lkey == "content-transfer-encoding":
                sink.add("cte:" + lvalue.strip()[:20])
    if msg.html is not None and not msg.text.strip():
        sink.add("body:html-only")
    elif msg.html is not None:
        sink.add("body:html")
    for att in msg.attachments[:10]:
        sink.add("att:" + att.content_type.lower())
        ext = att.filename.rpartition(".")[2].lower() if "." in att.filename else ""
        if ext and len(ext) <= 5:
            sink.add("att:ext:" + ext)
    _received_tokens(msg, config, sink, from_domain)
    if config.received_chain:
        _received_chain_tokens(msg, config, sink)
    if config.recipient_shape:
        _recipient_shape_tokens(msg, sink)


def _recipient_shape_tokens(msg: ParsedMessage, sink: _Sink) -> None:
    """How many recipients and whether they are hidden; never who they are."""
    sink.add("rc:n:" + str(min(len(msg.to) + len(msg.cc), 5)))
    to = (msg.header("To") or "").lower()
    if not to:
        sink.add("rc:to-missing")
    elif "undisclosed" in to or "recipients" in to:
        sink.add("rc:undisclosed")
    if msg.from_ and any(a.addr == msg.from_.addr for a in msg.to):
        sink.add("rc:to-is-from")


def _verdict_tokens(msg: ParsedMessage, config: FeatureConfig, sink: _Sink) -> None:
    """Our own MTA's verdicts, from the headers the installation named as trusted.

    Anyone can put such headers in a mail: an Authentication-Results counts
    only when it carries our MTA's authserv-id (the topmost one that does),
    any other header only in its topmost copy, the one our MTA added last.
    """
    for name in config.trusted_verdict_headers:
        lname = name.lower()
        if lname == "authentication-results":
            results = trusted_results(msg.header_all(name), config.trusted_authserv_ids)
            sink.extend(f"verdict:{method}:{result}" for method, result, _domain in results)
            continue
        values = msg.header_all(name)
        if not values:
            continue
        lvalue = values[0].lower()
        try:
            score = float(lvalue.split()[0])
            sink.add(f"verdict:{lname}:{max(-5, min(int(score), 15))}")
        except (ValueError, IndexError, OverflowError):
            sink.add(f"verdict:{lname}:{lvalue.strip()[:12]}")


_DATE_WORDS = frozenset(
    {
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
        "mon", "tue", "wed", "thu", "fri", "sat", "sun",
    }
)  # fmt: skip

# Headers that describe the collection (recipient, collector's MTA and delivery
# agent, other filters' verdicts) or are unique ids/timestamps: never tokenized
# generically. Receiver-side headers such as Exim's Delivery-date and Envelope-to
# are on every message of one installation and on none of another's.
_SKIP_HEADERS = frozenset(
    {
        "to", "cc", "bcc", "delivered-to", "x-original-to", "envelope-to", "apparently-to",
        "x-apparently-to", "received", "date", "message-id", "in-reply-to", "references",
        "subject", "from", "reply-to", "content-type", "content-transfer-encoding",
        "x-mailer", "user-agent", "status", "x-status", "x-keywords", "x-uid", "lines",
        "content-length", "x-uidl", "x-imap", "x-egroups-return", "x-mailman-approved-at",
        "delivery-date", "x-delivery-agent",
    }
)  # fmt: skip
# Added at final delivery where the installation has such a step (Dovecot's
# LDA does, our SMTP listener does not): the envelope sender in it is signal,
# that it is there at all is the installation's.
_WORDS_ONLY_HEADERS = frozenset({"return-path"})
_SKIP_PREFIXES = (
    "x-spam", "x-virus", "x-razor", "x-pyzor", "x-dspam", "x-bogosity", "x-mailscanner",
)  # fmt: skip


def _recipient_words(msg: ParsedMessage) -> set[str]:
    words: set[str] = set()
    rcpts = [a.addr for a in (*msg.to, *msg.cc)]
    rcpts.extend(msg.header_all("Delivered-To"))
    rcpts.extend(msg.header_all("X-Original-To"))
    for addr in rcpts:
        words.update(_MAILER_WORD.findall(addr.lower()))
    return words


def _generic_header_tokens(msg: ParsedMessage, sink: _Sink) -> None:
    """bogofilter-style ``name:word`` tokens of the headers not skipped above.

    Recipient words and date words are left out: a month or weekday in a
    timestamp header says when mail arrived, and a model that learned "May" from
    one collection would lean every May's mail towards spam.
    """
    skip_words = _recipient_words(msg) | _DATE_WORDS
    for key, value in msg.headers[:80]:
        lkey = key.lower()
        if lkey in _SKIP_HEADERS or lkey.startswith(_SKIP_PREFIXES):
            continue
        if lkey not in _WORDS_ONLY_HEADERS:
            sink.add("h:" + lkey)
        prefix = "h:" + lkey + ":"
        sink.extend(
            [
                prefix + word
                for word in _MAILER_WORD.findall(value[:300])[:20]
                if not word.isdigit() and word.lower() not in skip_words
            ]
        )
    if msg.header("References") or msg.header("In-Reply-To"):
        sink.add("h:is-reply")


def _char_ngram_indices(text: str, n: int, mask: int) -> NDArray[np.int64]:
    """Hashed byte n-grams (Sculley-style), vectorised: no Python loop per n-gram."""
    data = np.frombuffer(text.encode("utf-8", "replace")[:3000], dtype=np.uint8)
    if data.size < n:
        return np.zeros(0, dtype=np.int64)
    return _hash_ngrams(data, n, np.zeros(data.size - n + 1, dtype=np.uint64), mask)


def _hash_ngrams(
    data: NDArray[np.uint8], n: int, seeds: NDArray[np.uint64], mask: int
) -> NDArray[np.int64]:
    """Hashed index of each of the ``seeds.size`` n-grams starting in ``data``.

    ``seeds`` holds each n-gram's starting value (zeros, or a salt per field).
    In-place steps on one array and numpy scalars made once: on arrays this
    short the cost is the number of numpy calls, not the arithmetic.
    """
    size = seeds.size
    wide = data.astype(np.uint64)  # once, not once per position
    acc = seeds * _FNV_PRIME
    acc += wide[:size]
    for k in range(1, n):
        acc *= _FNV_PRIME
        acc += wide[k : size + k]
    acc ^= acc >> _SHIFT_29
    acc *= _MIX
    acc ^= acc >> _SHIFT_32
    acc &= np.uint64(mask)
    return acc.view(np.int64)  # below 2**63 after the mask: the same values


_FNV_PRIME = np.uint64(1099511628211)
_MIX = np.uint64(0xBF58476D1CE4E5B9)
_SHIFT_29, _SHIFT_32 = np.uint64(29), np.uint64(32)
_FIELD_SALTS = np.array([0x5B1EC7, 0x5E4DE2, 0x3E55A6E], dtype=np.uint64)  # subject, sender, id


def field_char_ngram_indices(
    msg: ParsedMessage, config: FeatureConfig
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """(content, header) hashed char n-grams of three short fields, lower-cased.

    Subject and sender (display name and address) go with the content group,
    the Message-ID local part with the header group; each field hashes apart.
    n-grams of these short strings carry what word tokens miss: obfuscated or
    foreign-script subjects, machine-made sender names and the id formats of
    bulk-mail software, and they generalise from a handful of examples
    (measured: MODEL_CARD.md).
    """
    subject, sender, message_id = _field_char_ngrams(msg, config)
    return np.concatenate((subject, sender)), message_id


def _field_char_ngrams(
    msg: ParsedMessage, config: FeatureConfig
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
    """:func:`field_char_ngram_indices` per field (subject, sender, Message-ID), as
    views of one vectorised pass over the three fields joined: an n-gram that
    runs from one field into the next is left out of both."""
    n, mask = config.field_char_ngrams, config.n_features - 1
    empty = np.zeros(0, dtype=np.int64)
    if n <= 0:
        return empty, empty, empty
    sender = ((msg.from_.name or "") + " " + msg.from_.addr) if msg.from_ else ""
    fields = (
        " ".join((msg.subject or "").lower().split()).encode("utf-8", "replace")[:300],
        sender.lower().encode("utf-8", "replace")[:300],
        (msg.message_id or "").rpartition("@")[0].lower().encode("utf-8", "replace")[:300],
    )
    joined = b"".join(fields)
    starts = len(joined) - n + 1
    if starts <= 0:
        return empty, empty, empty
    lengths = [len(f) for f in fields]
    data = np.frombuffer(joined, dtype=np.uint8)
    hashed = _hash_ngrams(data, n, np.repeat(_FIELD_SALTS, lengths)[:starts], mask)
    second, third = lengths[0], lengths[0] + lengths[1]  # where each field starts
    return (
        hashed[: max(second - n + 1, 0)],
        hashed[second : max(third - n + 1, second)],
        hashed[third:],
    )


def token_groups(msg: ParsedMessage, config: FeatureConfig) -> tuple[list[str], list[str]]:
    """(content tokens, header tokens) of ``msg``, with repeats (pure; never raises).

    Repeats are left in: hashing drops them (a set, before the CRC-32).

    Content: subject words (prefixed, and case-folded as words of the text too),
    body words and bigrams, URLs, HTML tags. Header: sender,
    relays, ids, mailer, MIME structure, generic header words.
    """
    sink = _Sink()
    subject_words = _word_tokens((msg.subject or "")[:MAX_SUBJECT_CHARS], "s:", config, sink)
    if not subject_words:
        sink.add("s:empty")
    if config.subject_words:  # "viagra" in a subject is the evidence it is in a body
        sink.extend(subject_words)
    body = msg.text or ""
    html = msg.html or ""
    if html and not body.strip():
        body = html_to_text(html[: config.max_body_chars])
    body = body[: config.max_body_chars]
    words = _word_tokens(body, "", config, sink)
    if config.body_bigrams:
        sink.extend([f"b:{a} {b}" for a, b in pairwise(words)])
    urls = _URL.findall(body.lower())
    if html:
        clipped = html[: config.max_body_chars]
        urls.extend(_HREF.findall(clipped.lower()))
        if config.html_tags:
            _html_tokens(clipped, sink)
    # A repeated link adds no new token.
    hosts = [_url_tokens(url, sink) for url in dict.fromkeys(urls[:50])]
    sink.add("url:count:" + str(min(len(urls), 10)))
    hosts = [host for host in hosts if host]  # a link without a host goes nowhere
    if config.link_sender and hosts and msg.from_ is not None:
        sink.add(_link_sender_token(hosts, _sender_domain(_domain_of(msg.from_.addr))))
    head = _Sink()
    if config.header_signals:
        _header_tokens(msg, config, head)
    if config.all_headers:
        _generic_header_tokens(msg, head)
    if config.trusted_verdict_headers:
        _verdict_tokens(msg, config, head)
    return sink.items, head.items


def tokens(msg: ParsedMessage, config: FeatureConfig) -> list[str]:
    """All distinct feature tokens of ``msg``, content first."""
    content, head = token_groups(msg, config)
    return list(dict.fromkeys([*content, *head]))


def _hash_distinct(groups: list[set[str]], mask: int) -> NDArray[np.int64]:
    """CRC-32 indices of the tokens of all ``groups``, group after group, in one pass
    (unsorted; colliding tokens repeat an index). Sets: a body repeats half its
    tokens, and dropping them costs less than hashing them."""
    count = sum(map(len, groups))
    # One encode of all the tokens joined, instead of one per token. A token that
    # holds the separator (only in hostile mail) adds a part: then one at a time.
    encoded = "\0".join(chain.from_iterable(groups)).encode("utf-8", "replace").split(b"\0")
    if len(encoded) != count:
        encoded = [token.encode("utf-8", "replace") for token in chain.from_iterable(groups)]
    hashed = np.fromiter(map(zlib.crc32, encoded), np.int64, count)
    hashed &= mask
    return hashed


def token_index(token: str, n_features: int) -> int:
    """The index one token hashes to (what :func:`_hash_distinct` computes for many at once)."""
    return zlib.crc32(token.encode("utf-8", "replace")) & (n_features - 1)


def _distinct(*parts: NDArray[np.int64]) -> NDArray[np.int64]:
    """Sorted distinct values of the concatenated ``parts`` (one part is sorted in place)."""
    merged = np.concatenate(parts) if len(parts) > 1 else parts[0]
    merged.sort()
    return merged[_first_of_runs(merged)]


def _first_of_runs(values: NDArray[np.int64]) -> NDArray[np.bool_]:
    """True where sorted ``values`` differ from the value before (always at the first)."""
    first = np.empty(values.size, dtype=np.bool_)
    first[:1] = True
    np.not_equal(values[1:], values[:-1], out=first[1:])
    return first


class MessageFeatures(NamedTuple):
    """One message's feature vector, and which of its features are word tokens."""

    indices: NDArray[np.int64]  # sorted, distinct
    values: NDArray[np.float64]
    counted: NDArray[np.int64]  # sorted distinct token indices: what token statistics count


class FeatureExtractor:
    """Message -> sorted distinct hashed indices and their values.

    Binary features, L2-normalised per group: the content group has norm 1 and
    the header group norm ``header_weight``, so a long newsletter's thousand
    words cannot drown the few header tokens that say who sent it.
    Hashing is CRC-32 of the UTF-8 token (stable across processes and platforms,
    unlike ``hash()``), masked to ``n_features``; collisions merge features.

    Character n-grams are for the discriminative learner only
    (:attr:`MessageFeatures.counted` leaves them out): they overlap, so dozens
    of them repeat one piece of evidence, and the token statistics' Fisher
    combining, which treats features as independent, would count it dozens of
    times (measured: a plain request's indicator went from 0.08 to 0.50).
    """

    def __init__(self, config: FeatureConfig) -> None:
        self.config = config
        self._mask = config.n_features - 1

    def extract(self, msg: ParsedMessage) -> MessageFeatures:
        """The feature vector of ``msg``, with the word-token indices apart."""
        config = self.config
        content, head = token_groups(msg, config)
        head_set = set(head)
        # Both groups hashed in one pass, the header group's tokens first.
        hashed = _hash_distinct([head_set, set(content)], self._mask)
        head_parts, body_parts = [hashed[: len(head_set)]], [hashed[len(head_set) :]]
        if config.field_char_ngrams:
            subject_grams, sender_grams, id_grams = _field_char_ngrams(msg, config)
            body_parts += (subject_grams, sender_grams)
            head_parts.append(id_grams)
        if config.char_ngrams:
            text = (msg.subject or "") + " " + (msg.text or msg.html or "")
            body_parts.append(_char_ngram_indices(text, config.char_ngrams, self._mask))
        # One sort for both groups: key = 2 * index + group (header 0, body 1). The
        # distinct keys give each group's size; the first key of each index says
        # whether the header group has it.
        keys = np.concatenate(head_parts + body_parts)
        keys <<= 1
        keys[sum(part.size for part in head_parts) :] |= 1
        keys = _distinct(keys)
        counted = _distinct(hashed)  # after the keys: it sorts ``hashed`` in place
        in_body = keys & 1
        body_size = int(np.count_nonzero(in_body))
        head_value = config.header_weight / math.sqrt(max(keys.size - body_size, 1))
        body_value = 1.0 / math.sqrt(max(body_size, 1))
        keys >>= 1
        first = _first_of_runs(keys)
        # An index in both groups (a hash collision) takes the header group's value.
        return MessageFeatures(
            keys[first], np.where(in_body[first], body_value, head_value), counted
        )

    def indices(self, msg: ParsedMessage) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
        """Distinct feature indices of ``msg`` (sorted) and the value of each."""
        features = self.extract(msg)
        return features.indices, features.values

    def row(self, idx: NDArray[np.int64], values: NDArray[np.float64]) -> sp.csr_matrix:
        indptr = np.array([0, idx.size])
        return sp.csr_matrix((values, idx, indptr), shape=(1, self.config.n_features))

    def transform(self, messages: list[ParsedMessage]) -> sp.csr_matrix:
        """Rows for many messages (used by batch training)."""
        rows = [self.row(*self.indices(m)) for m in messages]
        if not rows:
            return sp.csr_matrix((0, self.config.n_features))
        return sp.vstack(rows, format="csr")
