"""Addresses as delivery reports write them (RFC 3461, 3464, 6533), and comparing them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from maildesk.domain.address import (
    address_key,
    address_spellings,
    dsn_address,
    elided,
    overlong_address,
)

# (field value as the report writes it, the address it names)
DSN_ADDRESSES = [
    ("rfc822; alice@customer.test", "alice@customer.test"),
    ("RFC822;<Alice@Customer.test>", "Alice@Customer.test"),
    ("alice@customer.test", "alice@customer.test"),  # no type at all
    # RFC 6533 s. 3: utf-8-address, raw UTF-8 (Postfix with smtputf8_enable)
    ("utf-8; jörg@example.de", "jörg@example.de"),
    ("UTF-8;<jörg@example.de>", "jörg@example.de"),
    # utf-8-addr-xtext: every non-ASCII character escaped (a 7-bit report)
    ("utf-8; j\\x{F6}rg@example.de", "jörg@example.de"),
    ("utf-8; j\\x{f6}rg@b\\x{FC}cher.example", "jörg@bücher.example"),  # lower case: Postfix
    ("utf-8; \\x{5F20}\\x{4E09}@\\x{4F8B}\\x{3048}.example", "张三@例え.example"),
    ("utf-8; kunde\\x{2B}desk@example.de", "kunde+desk@example.de"),  # "+" must be escaped
    ("utf-8; \\x{1F408}@example.org", "\U0001f408@example.org"),  # 5 digits
    # utf-8-addr-unitext: UTF-8 as it is, only the xtext specials escaped
    ("utf-8; jörg\\x{3D}x@example.de", "jörg=x@example.de"),
    # rfc822 with xtext, as an Original-Recipient repeats the ORCPT (RFC 3461 s. 4)
    ("rfc822;alice+2Btickets@customer.test", "alice+tickets@customer.test"),
    ("rfc822; a+3Db@customer.test", "a=b@customer.test"),
    ("rfc822; j+C3+B6rg@example.de", "jörg@example.de"),  # UTF-8 octets, xtext-encoded
    # ... but a "+" tag that is no xtext stays as it is
    ("rfc822; alice+tickets@customer.test", "alice+tickets@customer.test"),
    ("rfc822; bob+AB@customer.test", "bob+AB@customer.test"),  # 0xAB alone is no UTF-8
    ("rfc822; bob+41@customer.test", "bob+41@customer.test"),  # "A" needs no encoding
    ("x400; /S=zzzzz/OU=example/", "/S=zzzzz/OU=example/"),
    # malformed escapes are kept as written
    ("utf-8; j\\x{D800}rg@example.de", "j\\x{D800}rg@example.de"),  # a surrogate
    ("utf-8; j\\x{110000}rg@example.de", "j\\x{110000}rg@example.de"),  # beyond Unicode
    ("utf-8; j\\x{0A}rg@example.de", "j\\x{0A}rg@example.de"),  # a control
    ("utf-8; j\\x{}rg@example.de", "j\\x{}rg@example.de"),
    ("utf-8; j\\x{F6rg@example.de", "j\\x{F6rg@example.de"),
    ("utf-8; j\\x{GG}rg@example.de", "j\\x{GG}rg@example.de"),
    ("rfc822; j+0Arg@example.de", "j+0Arg@example.de"),
    ("", ""),
    ("utf-8;", ""),
]


@pytest.mark.parametrize(("value", "address"), DSN_ADDRESSES)
def test_dsn_address_decodes_what_the_report_type_encodes(value: str, address: str) -> None:
    assert dsn_address(value) == address


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("jörg@xn--bcher-kva.example", "jörg@bücher.example"),
        ("Jörg@Bücher.Example", "jörg@xn--bcher-kva.example"),
        ("anna@XN--BCHER-KVA.EXAMPLE", "anna@bücher.example"),
        ("jo\u0308rg@example.de", "jörg@example.de"),  # decomposed ö (NFD) against NFC
        ("alice@customer.test", "ALICE@customer.test"),
    ],
)
def test_address_key_takes_u_labels_and_a_labels_as_one_domain(one: str, other: str) -> None:
    assert address_key(one) == address_key(other)


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("jörg@example.de", "jorg@example.de"),
        ("jörg@bücher.example", "jörg@bucher.example"),
        ("alice@customer.test", "alice@customer.test.evil"),
    ],
)
def test_address_key_keeps_different_addresses_apart(one: str, other: str) -> None:
    assert address_key(one) != address_key(other)


def test_address_key_of_a_domain_idna_cannot_write_is_its_lower_case() -> None:
    assert address_key("a@exa mple.de") == "a@exa mple.de"
    assert address_key("A@" + "ü" * 70 + ".de") == "a@" + "ü" * 70 + ".de"


@pytest.mark.parametrize(
    ("address", "spellings"),
    [
        ("Anna@Bücher.example", ("anna@xn--bcher-kva.example", "anna@bücher.example")),
        ("anna@XN--BCHER-KVA.example", ("anna@xn--bcher-kva.example", "anna@bücher.example")),
        ("Alice@Customer.test", ("alice@customer.test",)),
        ("jörg@example.de", ("jörg@example.de",)),  # a local part has one form
        ("x@xn--zz.example", ("x@xn--zz.example",)),  # no A-label: only as written
    ],
)
def test_address_spellings_are_the_forms_one_mailbox_is_written_in(
    address: str, spellings: tuple[str, ...]
) -> None:
    assert address_spellings(address) == spellings


@given(st.text())
def test_dsn_address_and_address_key_never_raise(value: str) -> None:
    decoded = dsn_address(value)
    assert isinstance(address_key(decoded), str)
    assert address_spellings(decoded)[0] == address_key(decoded)
    assert isinstance(dsn_address("utf-8; " + value), str)
    assert isinstance(dsn_address("rfc822; " + value), str)


_RECIPIENT_FIELD = re.compile(
    rb"^(?:final|original)-recipient:[ \t]*(rfc822[ \t]*;[^\r\n]*)", re.I | re.M
)


def test_the_ascii_reports_of_the_corpus_name_the_same_addresses_as_before(corpus: Path) -> None:
    """xtext decoding must not touch a plain address: every rfc822 recipient of the
    corpus's real reports (none of them in xtext) reads as it is written."""
    values = [
        value.decode("utf-8", "replace")
        for path in sorted((corpus / "fixtures").rglob("*"))
        if path.is_file()
        for value in _RECIPIENT_FIELD.findall(path.read_bytes())
    ]
    assert len(values) > 500
    changed = [
        v for v in values if dsn_address(v) != v.split(";", 1)[1].strip().strip("<>").strip()
    ]
    assert changed == []


def _address(local: int, domain: int) -> str:
    """An address with a local part and a domain of these lengths (labels of 63)."""
    labels, left = [], domain - len(".test")
    while left > 0:
        size = min(63, left if left <= 63 else 62)
        labels.append("d" * size)
        left -= size + 1
    return "l" * local + "@" + ".".join(labels) + ".test"


@pytest.mark.parametrize(
    ("address", "too_long"),
    [
        (_address(64, 20), None),
        (_address(65, 20), "its part before the @ is 65 characters long, more than the 64"),
        (_address(64, 189), None),  # 254 in all: RFC 5321's longest path, without <>
        (_address(64, 190), "the address is 255 characters long, more than the 254"),
        ("ü" * 32 + "@example.de", None),  # 64 bytes of UTF-8
        ("ü" * 33 + "@example.de", "66 bytes (UTF-8) long, more than the 64"),
    ],
)
def test_an_address_longer_than_rfc_5321_allows_is_no_mailbox(
    address: str, too_long: str | None
) -> None:
    why = overlong_address(address)
    if too_long is None:
        assert why is None, why
    else:
        assert why is not None and too_long in why, why
        assert why.endswith("RFC 5321 allows: no mail can be delivered to it")


def test_elided_keeps_both_ends_within_its_limit() -> None:
    shown = elided("a" * 300 + "@victim.test.attacker.example")
    assert len(shown) == 80 and shown.startswith("aaa") and "\u2026" in shown
    assert shown.endswith("@victim.test.attacker.example")
    assert elided("short@x.test") == "short@x.test"
