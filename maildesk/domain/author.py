"""Who wrote a customer's mail: the address a ticket belongs to and answers go to.

The From, with one exception: a mailing list that rewrites From to its own
address for DMARC (Mailman's ``dmarc_moderation_action = munge_from``,
Google Groups: ``"Alice via Users" <users@lists.example>``) puts the author in
``X-Original-From`` or ``Reply-To``. Taking the From there would make the list
the requester: every member's mail with the same subject would join one
ticket, and an agent's answer would go to the whole list.

Reply-To is otherwise never who the customer is (anyone can write one under a
forged From, and the agent's answer may hold account data): see the README,
"Who the customer is".
"""

from __future__ import annotations

import email.utils
import re

from maildesk.domain.address import overlong_address
from maildesk.domain.message import Address, ParsedMessage

_MAILTO = re.compile(r"<\s*mailto:([^>?\s]+)", re.IGNORECASE)
_LIST_ID = re.compile(r"<\s*([^<>\s]+)\s*>\s*$")


def _list_addresses(msg: ParsedMessage) -> set[str]:
    """The list's own posting address(es) and the address its List-Id names."""
    found: set[str] = set()
    for value in msg.header_all("List-Post"):
        found.update(m.group(1).strip().lower() for m in _MAILTO.finditer(value))
    for value in msg.header_all("List-Id")[:1]:
        match = _LIST_ID.search(value.strip())
        list_id = (match.group(1) if match else value.strip()).lower()
        # RFC 2919: list-label.list-id-namespace, Mailman's users.lists.example
        # for users@lists.example.
        label, _, namespace = list_id.partition(".")
        if label and namespace:
            found.add(f"{label}@{namespace}")
    return found


def _first_address(values: list[str]) -> Address | None:
    """The first mailbox named; an address longer than RFC 5321 allows is none."""
    for name, addr in email.utils.getaddresses(values):
        addr = addr.strip().lower()
        if "@" in addr and overlong_address(addr) is None:
            return Address(addr=addr, name=name.strip())
    return None


def list_author(msg: ParsedMessage) -> Address | None:
    """The author of a list mail whose From the list rewrote to its own address, or None."""
    sender = msg.from_
    if sender is None or not sender.addr:
        return None
    lists = _list_addresses(msg)
    if sender.addr.lower() not in lists:
        return None
    original = _first_address(msg.header_all("X-Original-From")[:1])
    if original is not None and original.addr not in lists:
        return original
    others = [a for a in msg.reply_to if a.addr and a.addr.lower() not in lists]
    if len(others) == 1:
        return others[0]
    return None


def customer_address(msg: ParsedMessage) -> Address | None:
    """The customer a mail is from: its From, or the author of a list-rewritten From."""
    return list_author(msg) or msg.from_


# The most of a display name (and of an address) agents are shown; a sender chooses
# both, up to the parser's limit for a whole header block (256 kB).
MAX_SHOWN_NAME = 200
MAX_SHOWN_ADDRESS = 320  # RFC 5321's longest path, with room to spare


def shorten(text: str, limit: int) -> str:
    """``text`` if it has at most ``limit`` characters, else its start and "…" in ``limit``."""
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "\u2026"


# Unicode's explicit direction controls (embeddings, overrides, isolates, marks). In a
# name they turn what follows around on screen ("Trojan Source"): a right-to-left
# override makes ``<moc.evil@x>`` read as another address. Plain right-to-left text
# needs none of them.
_BIDI_CONTROLS = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
_DROP_BIDI = str.maketrans(dict.fromkeys(_BIDI_CONTROLS, ""))
_MARK_BIDI = str.maketrans(dict.fromkeys(_BIDI_CONTROLS, "\ufffd"))


def shown_sender(name: str, addr: str) -> str:
    """``Name <addr>`` as agents are shown it: the address always, a name only where it
    cannot pass for another address (``"support@bank.example" <evil@x>`` is shown
    ``<evil@x>``). Both are bounded: every notice about the mail repeats them. A
    direction control is dropped from the name, and shown as \ufffd in an address
    (where it is part of what was written)."""
    name = name.translate(_DROP_BIDI)
    name = " ".join(name.replace("<", " ").replace(">", " ").split()).strip('"')
    name = shorten(name, MAX_SHOWN_NAME)
    addr = shorten(addr.translate(_MARK_BIDI), MAX_SHOWN_ADDRESS)
    if not addr:
        return name or "(no address)"
    if not name or "@" in name or name.lower() == addr.lower():
        return f"<{addr}>"
    return f"{name} <{addr}>"
