"""Raw-header functions: table tests and never-raise properties."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from maildesk.domain.rawheader import (
    body_hash,
    content_hash,
    decode_header_text,
    decode_text,
    extract_message_id,
    parse_msgid_list,
    raw_header_values,
    split_header_block,
)


@pytest.mark.parametrize(
    ("raw", "headers", "body"),
    [
        (b"A: 1\r\nB: 2\r\n\r\nbody\r\n", b"A: 1\r\nB: 2\r\n", b"body\r\n"),
        (b"A: 1\nB: 2\n\nbody\n", b"A: 1\nB: 2\n", b"body\n"),
        (b"A: 1\rB: 2\r\rbody\r", b"A: 1\rB: 2\r", b"body\r"),
        # no blank line: the body starts at the first line that is not a field
        (b"A: 1\nThis is the body\n", b"A: 1\n", b"This is the body\n"),
        # a folded field stays in the header block
        (b"A: 1\n  more\n\nbody", b"A: 1\n  more\n", b"body"),
        (b"A: 1\n", b"A: 1\n", b""),
        (b"\nonly body", b"", b"only body"),
        (b"From someone Mon Jan 1\nA: 1\n\nbody", b"From someone Mon Jan 1\nA: 1\n", b"body"),
    ],
)
def test_split_header_block(raw: bytes, headers: bytes, body: bytes) -> None:
    assert split_header_block(raw) == (headers, body)


def test_crlf_pairs_are_not_mistaken_for_a_blank_line() -> None:
    headers, body = split_header_block(b"A: 1\r\nB: 2\r\n\r\nx")
    assert b"B: 2" in headers
    assert body == b"x"


@pytest.mark.parametrize(
    ("raw", "name", "values"),
    [
        (b"Subject: hello\n\nSubject: body\n", "subject", ["hello"]),
        (b"X-A: one\nx-a: two\n\n", "X-A", ["one", "two"]),
        (b"References: <a@b>\r\n <c@d>\r\n\r\n", "References", ["<a@b> <c@d>"]),
        (b"Subject: caf\xc3\xa9\n\n", "Subject", ["café"]),
        (b"Subject: caf\xe9\n\n", "Subject", ["café"]),
        (b"Subject: =?utf-8?q?x?=\n\n", "Subject", ["=?utf-8?q?x?="]),
        (b"Other: 1\n\n", "Subject", []),
    ],
)
def test_raw_header_values(raw: bytes, name: str, values: list[str]) -> None:
    assert raw_header_values(raw, name) == values


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"Message-ID: <abc@example.com>\n\n", "abc@example.com"),
        (b"Message-Id:   <abc@example.com>  \n\n", "abc@example.com"),
        (b"Message-ID: <>\n\n", None),
        (b"Message-ID:    \n\n", None),
        (b"Subject: x\n\n", None),
        (b"Message-ID: <Mail2L:1234@host>\n\n", "Mail2L:1234@host"),
        (b'Message-ID: <"quoted:local"@host>\n\n', '"quoted:local"@host'),
        (b"Message-ID: <a[1]@host>\n\n", "a[1]@host"),
        (b"Message-ID: <>\nMessage-ID: <second@host>\n\n", "second@host"),
        (b"Message-ID:\n <folded@host>\n\n", "folded@host"),
        (b"Message-ID: bare@host\n\n", "bare@host"),
        (b"Message-ID: <first@host> <second@host>\n\n", "first@host"),
        (b"Subject: x\n\nMessage-ID: <in-body@host>\n", None),
    ],
)
def test_extract_message_id(raw: bytes, expected: str | None) -> None:
    assert extract_message_id(raw) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("<a@b> <c@d>", ["a@b", "c@d"]),
        ("<a@b>\r\n\t<c@d> <a@b>", ["a@b", "c@d"]),
        ("<a@b> (Joe's message of Monday) <c@d>", ["a@b", "c@d"]),
        ("a@b, c@d", ["a@b", "c@d"]),
        ("Your message of Monday", []),
        ("<Mail2L:1@x> <Mail2L:2@x>", ["Mail2L:1@x", "Mail2L:2@x"]),
        ("<> <  > garbage <<x@y>", ["x@y"]),
        # Attributions name the parent's author, which is no Message-ID (MH, Gnus, Mutt).
        ('Message from Hal DeVore <hal@acm.test> of\r\n "Mon, 07 Oct 2002." <6384@d>', ["6384@d"]),
        ('Message from "Craig R.Hughes" <craig@d.test>    of "Wed" <DADE@d.test>', ["DADE@d.test"]),
        ("Message from pll@l.test of Fri, 26 Jul 2002 EDT <1@f> <2@f>", ["1@f", "2@f"]),
        ("message-id <3@p.test> of Fri, Sep 13 07:46:47 2002", ["3@p.test"]),
        ("<a@b> (message from Joe) <c@d>", ["a@b", "c@d"]),
        ('Message from Dave Long <dave> of "Wed"', []),
        ('hal@acm.test\'s message of "Wed, 25 Sep 2002"', []),
        ("; from valen@t.test on Thu, Aug 29, 2002", []),
        ("", []),
    ],
)
def test_parse_msgid_list(value: str, expected: list[str]) -> None:
    assert parse_msgid_list(value) == expected


def test_content_hash_is_sha256_of_the_exact_bytes() -> None:
    assert content_hash(b"") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert content_hash(b"a\r\n") != content_hash(b"a\n")


def test_body_hash_ignores_transport_headers_and_line_endings() -> None:
    first = b"Received: from a\r\nMessage-ID: <x@y>\r\n\r\nHello\r\nWorld\r\n"
    second = b"Received: from b\nReceived: from c\nMessage-ID: <x@y>\n\nHello\nWorld\n"
    other = b"Message-ID: <x@y>\n\nHello\nWorld!\n"
    assert body_hash(first) == body_hash(second)
    assert body_hash(first) != body_hash(other)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("=?utf-8?q?Caf=C3=A9_ouvert?=", "Café ouvert"),
        ("Re: =?ISO-8859-1?Q?Andr=E9?= Pirard", "Re: André Pirard"),
        ("=?utf-8?b?w6k=?= =?utf-8?b?w6k=?=", "éé"),
        # a multi-byte character split across two adjacent words
        ("=?utf-8?b?ww==?= =?utf-8?b?qQ==?=", "é"),
        ("=?utf-8?q?caf=C3?=\n =?utf-8?q?=A9?=", "café"),
        ("=?utf-8?b?w6k?=", "é"),  # missing padding
        ("=?iso-8859-1?q?this is some text?=", "this is some text"),  # spaces in a Q word
        ("=?ISO-2022-JP?B?GyRCJUYlOSVIGyhC?=", "テスト"),
        ("=?x-unknown?q?caf=E9?=", "café"),
        ("=?utf-8?b?!!!?=", "=?utf-8?b?!!!?="),  # undecodable word stays as written
        ("caf\udcc3\udca9", "café"),  # raw UTF-8 bytes as surrogate escapes
        ("caf\udce9", "café"),  # raw latin-1 byte
        ("line one\r\n line two", "line one line two"),
        ("plain", "plain"),
    ],
)
def test_decode_header_text(value: str, expected: str) -> None:
    assert decode_header_text(value) == expected


@pytest.mark.parametrize(
    ("text", "encode_as", "label"),
    [
        ("日本語のテキスト", "iso2022_jp", "ISO-2022-JP"),
        ("镕 朱镕基", "gb18030", "gb2312"),  # gb2312 label, gb18030 bytes
        ("한국어", "cp949", "ks_c_5601-1987"),
        ("café", "utf-8", "utf8"),
        ("café", "utf-8", '"UTF-8"'),
        ("café", "utf-8", "unknown-8bit"),
        ("café", "latin-1", "x-user-defined"),
        ("café", "latin-1", "us-ascii"),
        ("“quotes”", "cp1252", "iso-8859-1"),
        ("Привет", "koi8-r", "koi8-r"),
    ],
)
def test_decode_text_with_odd_labels(text: str, encode_as: str, label: str) -> None:
    assert decode_text(text.encode(encode_as), label)[0] == text


def test_decode_text_reports_when_the_label_did_not_fit() -> None:
    assert decode_text("é".encode(), "utf-8") == ("é", True)
    text, exact = decode_text(b"caf\xe9", "utf-8")
    assert (text, exact) == ("café", False)


def test_decode_text_keeps_bytes_a_declared_multibyte_charset_cannot_read() -> None:
    text, exact = decode_text("中文".encode("gb18030") + b"\xff\xfe", "gb2312")
    assert text.startswith("中文")
    assert not exact


@given(st.binary(max_size=400))
def test_raw_functions_never_raise(raw: bytes) -> None:
    headers, body = split_header_block(raw)
    assert raw.startswith(headers)
    assert raw.endswith(body)
    raw_header_values(raw, "Message-ID")
    extract_message_id(raw)
    body_hash(raw)


@given(st.text(max_size=200))
def test_text_functions_never_raise(value: str) -> None:
    parse_msgid_list(value)
    decode_header_text(value)


@given(
    st.binary(max_size=200), st.sampled_from(["utf-8", "gb2312", "iso-2022-jp", "x", "", "utf-7"])
)
def test_decode_text_never_raises(data: bytes, label: str) -> None:
    text, _ = decode_text(data, label)
    text.encode("utf-8")  # real text: no lone surrogates


_ID_CHARS = st.characters(min_codepoint=33, max_codepoint=126, exclude_characters="<>")


@given(
    left=st.text(_ID_CHARS, min_size=1, max_size=30),
    right=st.text(_ID_CHARS, min_size=1, max_size=30),
    eol=st.sampled_from(["\r\n", "\n", "\r"]),
)
def test_extract_message_id_returns_the_id_we_formatted(left: str, right: str, eol: str) -> None:
    msgid = f"{left}@{right}"
    raw = f"From: a@b{eol}Message-ID: <{msgid}>{eol}Subject: x{eol}{eol}body".encode()
    assert extract_message_id(raw) == msgid


def test_iso_2022_jp_as_windows_writes_it_decodes_and_escapes_never_pass_as_text() -> None:
    # こんにちは①です: ① is NEC row 13 (CP50220), which Python's iso2022_jp codecs refuse.
    data = b"\x1b$B$3$s$K$A$O-!$G$9\x1b(B"
    assert decode_text(data, "iso-2022-jp") == ("こんにちは①です", True)
    # Half-width katakana after ESC ( I, and JIS-Roman, as CP50221 writes them.
    assert decode_text(b"\x1b(I6@6E\x1b(J!\x1b(B", "iso-2022-jp")[0] == "ｶﾀｶﾅ!"
    # A Russian subject from php-mime-mail-parser's corpus (issue116).
    assert (
        decode_header_text("=?iso-2022-jp?B?GyRCJygnJS1iGyhCNDEgGyRCJ2AnZBsoQiAyOC4wOS4yMDE2?=")
        == "ЖД№41 от 28.09.2016"
    )
    # Broken beyond any reading: replacement characters and not exact, never the escapes.
    text, exact = decode_text(b"\x1b$B$3\x7f\x1b(B", "iso-2022-jp")
    assert "\x1b" not in text and not exact
