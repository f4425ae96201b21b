"""Parsing agents' commands: a table of what agents type and what maildesk makes of it."""

from __future__ import annotations

import pytest

from maildesk.agents.commands import parse_commands


@pytest.mark.parametrize(
    ("text", "commands", "rest"),
    [
        ("#status resolved\n\nThanks!\n", [("status", "resolved", None)], "Thanks!\n"),
        (
            "\n#STATUS Pending\n#priority URGENT\nHi\n",
            [("status", "pending", None), ("priority", "urgent", None)],
            "Hi\n",
        ),
        (
            "#assign me\n#watch\n#note\nsecret\n",
            [("assign", "me", None), ("watch", "", None), ("note", "", None)],
            "secret\n",
        ),
        ("#cc <Dave@Customer.test>\nx\n", [("cc", "dave@customer.test", None)], "x\n"),
        ("#merge #42\n", [("merge", "42", None)], ""),
        ("#template thanks\n", [("template", "thanks", None)], ""),
        ("#category Billing & Invoices\n", [("category", "Billing & Invoices", None)], ""),
        ("Hello\n#status resolved\n", [], "Hello\n#status resolved\n"),  # not at the top
        ("#1 in the queue\n", [], "#1 in the queue\n"),  # not a command name
        # A no-break space between command and argument, as some clients type it: the
        # line is still a command, and the note after it is not sent to the customer.
        (
            "#status\u00a0resolved\n#note\nsecret\n",
            [("status", "resolved", None), ("note", "", None)],
            "secret\n",
        ),
        # What an input method or a client makes of the number sign, and a colon after
        # the name: still commands, so the note after them is not sent to the customer.
        ("\uff03note\nsecret\n", [("note", "", None)], "secret\n"),
        ("\ufe5fnote\nsecret\n", [("note", "", None)], "secret\n"),
        ("\u200b#note\nsecret\n", [("note", "", None)], "secret\n"),
        ("\u200f#note\nsecret\n", [("note", "", None)], "secret\n"),
        ("#note:\nsecret\n", [("note", "", None)], "secret\n"),
        ("#Status: Resolved\nThanks\n", [("status", "resolved", None)], "Thanks\n"),
    ],
)
def test_parse(text: str, commands: list[tuple[str, str, None]], rest: str) -> None:
    parsed = parse_commands(text)
    assert [(c.name, c.arg, c.error) for c in parsed.commands] == commands
    assert parsed.text == rest


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ("#status maybe", "status must be one of open, pending, resolved, closed"),
        ("#status new", "status must be one of open, pending, resolved, closed"),
        ("#priority asap", "priority must be one of low, normal, high, urgent"),
        ("#assign", "#assign needs an argument"),
        ("#note now", "#note takes no argument"),
        ("#note: legal says no", "#note takes no argument"),
        ("#note. legal says no", "#note takes no argument"),
        ("#notes", "unknown command #notes"),
        ("#cc not-an-address", "not a mail address: 'not-an-address'"),
        ("#cc a@b.test\r\nBcc: x@y.test", None),  # a line break ends the command: no injection
        ("#merge abc", "not a ticket number"),
        ("#template ../../etc/passwd", "not a template name"),
        ("#frobnicate", "unknown command #frobnicate"),
    ],
)
def test_invalid_commands_say_why(line: str, error: str | None) -> None:
    command = parse_commands(line + "\n").commands[0]
    assert command.error == error
