"""Commands at the top of an agent's mail (MAIL-RULES §5): parsing only, pure.

One command per line, each starting with ``#``, before any other text; blank
lines between them are allowed. The first line that is not a command ends the
block. Only the command lines are removed from the text the customer gets.
A line such as ``#1 in the queue`` is not a command (names are words).

A line is read as the agent meant it, not only as they should have typed it:
a full-width or small number sign (what a CJK input method types), invisible
format characters a client puts in front (zero-width space, direction marks)
and a colon after the name (``#note:``) still make it a command line. A line
that looks like a command but is not a valid one (``#note text``, ``#notes``)
is kept in the block with its error: it never falls through into the text the
customer gets.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from maildesk.db.models import Priority, TicketStatus
from maildesk.domain.address import overlong_address
from maildesk.domain.author import shorten

MAX_COMMANDS = 20
# The longest command line that can be well-formed ("#cc" and an address of RFC 5321's
# longest). A longer line is an error, and only its start is kept: the line is echoed
# in the agent's confirmation request and result mail, and in the audit events, and
# the mail it came from may be anyone's with an agent's From.
MAX_LINE = 400
# Any white space but a line end separates a command from its argument (a no-break
# space is what some clients put there), and a punctuation mark may end the name
# ("#note:"). A name is a word, so "#1 in the queue" is no command.
_LINE = re.compile(r"^#([A-Za-z][A-Za-z0-9_-]{1,15})(?![\w])[^\S\n]*[:.,;!]?[^\S\n]*(.*?)[^\S\n]*$")
_NAME = re.compile(r"^[A-Za-z0-9][\w.\-]{0,119}$")
_CATEGORY = re.compile(r"^[\w][\w .&/\-]{0,119}$")
_TEMPLATE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_ADDRESS = re.compile(r"^[^@\s<>,;:\"()\[\]\\]{1,64}@[A-Za-z0-9.-]{1,253}\.[A-Za-z]{2,}$")
_TICKET = re.compile(r"^#?([0-9]{1,18})$")

KNOWN = (
    "status",
    "assign",
    "priority",
    "category",
    "note",
    "cc",
    "watch",
    "merge",
    "spam",
    "ham",
    "template",
    "escalate",
    "queue",
)
NO_ARGUMENT = ("note", "watch", "spam", "ham")
OPTIONAL_ARGUMENT = ("escalate",)  # #escalate: to the group's escalates_to


@dataclass(frozen=True, slots=True)
class Command:
    """One command line; ``error`` says why it cannot be applied (None: well-formed)."""

    name: str
    arg: str
    line: str
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Parsed:
    commands: tuple[Command, ...]
    text: str  # the mail's text without the command lines

    @property
    def names(self) -> set[str]:
        return {c.name for c in self.commands if c.error is None}


def parse_commands(text: str) -> Parsed:
    """Split ``text`` into the leading command block and the rest."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    commands: list[Command] = []
    i = 0
    while i < len(lines) and len(commands) < MAX_COMMANDS:
        line = command_line(lines[i])
        if not line:
            i += 1
            continue
        match = _LINE.match(line)
        if match is None:
            break
        name = match.group(1).lower()
        if len(line) > MAX_LINE:
            cut = shorten(line, MAX_LINE)
            commands.append(Command(name, "", cut, f"longer than {MAX_LINE} characters"))
        else:
            commands.append(check(name, (match.group(2) or "").strip(), line))
        i += 1
    if not commands:
        return Parsed((), text)
    rest = "\n".join(lines[i:]).strip("\n")
    return Parsed(tuple(commands), rest + ("\n" if rest else ""))


def command_line(line: str) -> str:
    """``line`` as a command would be read: format characters (BOM, zero-width space,
    direction marks) in front dropped and compatibility forms folded (NFKC), so a
    full-width ``\uff03`` or small ``\ufe5f`` number sign is ``#`` and a no-break space a
    space. Only for telling and reading commands; the text the customer gets is untouched.
    """
    start = 0
    stripped = line.strip()
    while start < len(stripped) and unicodedata.category(stripped[start]) == "Cf":
        start += 1
    return unicodedata.normalize("NFKC", stripped[start:]).strip()


def check(name: str, arg: str, line: str) -> Command:
    """Validate the syntax of one command (whether it can be applied is decided later)."""

    def bad(reason: str) -> Command:
        return Command(name, arg, line, reason)

    if name not in KNOWN:
        return bad(f"unknown command #{name}")
    if name in NO_ARGUMENT:
        return bad(f"#{name} takes no argument") if arg else Command(name, "", line)
    if name in OPTIONAL_ARGUMENT and not arg:
        return Command(name, "", line)
    if not arg:
        return bad(f"#{name} needs an argument")
    value = arg.lower()
    if name == "status":
        allowed = [s.value for s in TicketStatus if s is not TicketStatus.NEW]
        if value not in allowed:
            return bad(f"status must be one of {', '.join(allowed)}")
        return Command(name, value, line)
    if name == "priority":
        allowed = [p.value for p in Priority]
        if value not in allowed:
            return bad(f"priority must be one of {', '.join(allowed)}")
        return Command(name, value, line)
    if name in ("assign", "escalate"):
        return Command(name, arg, line) if _NAME.match(arg) else bad("not an agent or group name")
    if name == "queue":
        return Command(name, arg, line) if _NAME.match(arg) else bad("not a queue name")
    if name == "category":
        return Command(name, arg, line) if _CATEGORY.match(arg) else bad("not a category name")
    if name == "cc":
        address = arg.strip("<>")
        if not _ADDRESS.match(address):
            return bad(f"not a mail address: {arg!r}")
        if (overlong := overlong_address(address)) is not None:
            return bad(overlong)
        return Command(name, address.lower(), line)
    if name == "merge":
        match = _TICKET.match(arg)
        return Command(name, match.group(1), line) if match else bad("not a ticket number")
    if name == "template":
        return Command(name, value, line) if _TEMPLATE.match(value) else bad("not a template name")
    raise AssertionError(name)  # pragma: no cover
