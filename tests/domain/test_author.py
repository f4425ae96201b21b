"""Who wrote a mail (maildesk.domain.author): table tests of the pure helpers."""

from __future__ import annotations

import pytest

from maildesk.domain.author import customer_address, list_author, shown_sender
from maildesk.domain.message import ParsedMessage
from maildesk.pipeline.parse import parse_message
from tests.mailfactory import make_mail

LIST_HEADERS = {"List-Id": "<users.lists.example>", "List-Post": "<mailto:users@lists.example>"}


def parsed(sender: str, **headers: str) -> ParsedMessage:
    return parse_message(make_mail(sender=sender, headers=headers))


@pytest.mark.parametrize(
    ("sender", "headers", "author"),
    [
        # Mailman munge_from: the author is the Reply-To.
        (
            "Alice via Users <users@lists.example>",
            {**LIST_HEADERS, "Reply-To": "a@c.test"},
            "a@c.test",
        ),
        # Google Groups: X-Original-From first.
        (
            "'Alice' via Users <users@lists.example>",
            {**LIST_HEADERS, "X-Original-From": "Alice <a@c.test>", "Reply-To": "x@c.test"},
            "a@c.test",
        ),
        # Reply-To back to the list (reply_goes_to_list), no X-Original-From: unknown.
        ("Users <users@lists.example>", {**LIST_HEADERS, "Reply-To": "users@lists.example"}, None),
        # A list that does not rewrite From: the From is the author.
        ("Alice <a@c.test>", {**LIST_HEADERS, "Reply-To": "users@lists.example"}, None),
        # No list headers: Reply-To never decides who the customer is.
        ("Alice <a@c.test>", {"Reply-To": "mallory@evil.test"}, None),
        # List headers naming another list than the From: not a rewrite.
        ("Boss <boss@c.test>", {**LIST_HEADERS, "Reply-To": "mallory@evil.test"}, None),
        # Two Reply-To addresses: ambiguous, the From stays.
        (
            "Users <users@lists.example>",
            {**LIST_HEADERS, "Reply-To": "a@c.test, b@c.test"},
            None,
        ),
    ],
)
def test_list_author(sender: str, headers: dict[str, str], author: str | None) -> None:
    msg = parsed(sender, **headers)
    found = list_author(msg)
    assert (found.addr if found else None) == author
    customer = customer_address(msg)
    assert customer is not None
    assert msg.from_ is not None
    assert customer.addr == (author or msg.from_.addr)


@pytest.mark.parametrize(
    ("name", "addr", "shown"),
    [
        ("Alice", "a@c.test", "Alice <a@c.test>"),
        ("", "a@c.test", "<a@c.test>"),
        ("support@bank.example", "evil@x.test", "<evil@x.test>"),
        ("Bank <support@bank.example>", "evil@x.test", "<evil@x.test>"),
        ("a@c.test", "a@c.test", "<a@c.test>"),
        ("Alice", "", "Alice"),
        # A right-to-left override would show the address after it reversed.
        ("Alice \u202e", "moc.evil@x.test", "Alice <moc.evil@x.test>"),
        ("\u2067Bob\u2069 \u202d", "b@c.test", "Bob <b@c.test>"),
        ("Alice", "a\u202e@c.test", "Alice <a\ufffd@c.test>"),
        ("\u05e9\u05dc\u05d5\u05dd", "s@c.test", "\u05e9\u05dc\u05d5\u05dd <s@c.test>"),
    ],
)
def test_shown_sender(name: str, addr: str, shown: str) -> None:
    assert shown_sender(name, addr) == shown
