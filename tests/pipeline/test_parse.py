"""parse_message on hand-made messages, and the Deadline it runs under."""

from __future__ import annotations

import base64
import contextlib
import email
import signal
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from maildesk.domain.message import ParsedMessage
from maildesk.pipeline import parse as parse_module
from maildesk.pipeline.deadline import DeadlineExceeded, deadline
from maildesk.pipeline.parse import ParseError, ParseTimeout, parse_message
from tests.eai_dsn import JOERG, exim_dsn, m365_dsn, postfix_dsn, returned_mail


def mail(*header_lines: str, body: str = "Hello.\n", eol: str = "\n") -> bytes:
    return (eol.join(header_lines) + eol + eol + body.replace("\n", eol)).encode("utf-8")


def attachment_names(message: ParsedMessage) -> list[str]:
    return [a.filename for a in message.attachments]


# --- headers -----------------------------------------------------------------


def test_rfc2047_subject_is_decoded() -> None:
    raw = mail("Subject: =?utf-8?q?Caf=C3=A9?= =?iso-8859-1?b?b3V2ZXJ0?= today", "From: a@b.c")
    assert parse_message(raw).subject == "Caféouvert today"


def test_8bit_utf8_header_is_decoded_as_utf8() -> None:
    raw = b"From: =?utf-8?q?Jos=C3=A9?= <JOSE@Example.COM>\nSubject: \xc3\xa9t\xc3\xa9\n\nbody\n"
    message = parse_message(raw)
    assert message.subject == "été"
    assert message.from_ is not None
    assert message.from_.addr == "jose@example.com"
    assert message.from_.name == "José"


def test_8bit_latin1_header_falls_back_without_losing_bytes() -> None:
    raw = b"Subject: caf\xe9 cr\xe8me\nFrom: a@b.c\n\nbody\n"
    assert parse_message(raw).subject == "café crème"


def test_8bit_header_uses_the_declared_charset_when_not_utf8() -> None:
    raw = "Subject: Привет\nContent-Type: text/plain; charset=koi8-r\n\nтекст\n".encode("koi8-r")
    message = parse_message(raw)
    assert message.subject == "Привет"
    assert message.text.strip() == "текст"


def test_all_headers_are_kept_in_order_and_decoded() -> None:
    raw = mail("Received: one", "X-Tag: =?utf-8?q?=C3=A9?=", "Received: two", "Subject: s")
    message = parse_message(raw)
    assert message.header_all("received") == ["one", "two"]
    assert message.header("x-tag") == "é"
    assert [k for k, _ in message.headers] == ["Received", "X-Tag", "Received", "Subject"]


def test_addresses_are_lower_cased_and_garbage_is_tolerated() -> None:
    raw = mail(
        "From: Support <Help@Example.ORG>",
        "To: A <A@X.io>, b@y.io, ,;;garbage<<",
        "Cc: undisclosed-recipients:;",
        "Reply-To: <Reply@Example.org>",
    )
    message = parse_message(raw)
    assert message.from_ is not None
    assert message.from_.addr == "help@example.org"
    assert [a.addr for a in message.to][:2] == ["a@x.io", "b@y.io"]
    assert message.cc == ()
    assert [a.addr for a in message.reply_to] == ["reply@example.org"]


def test_the_same_address_fields_in_many_mails_parse_alike_each_time() -> None:
    """Parsed address fields are remembered; every mail still gets its own, complete result."""
    shared = ("To: Help Desk <Help@Example.ORG>, b@y.io", "Cc: =?utf-8?q?Jos=C3=A9?= <jose@x.io>")
    first = parse_message(mail("From: Ann <ann@a.io>", *shared))
    second = parse_message(mail("From: Bob <bob@b.io>", *shared, "Reply-To: ann@a.io"))
    again = parse_message(mail("From: Ann <ann@a.io>", *shared))
    assert first == again
    assert [(a.addr, a.name) for a in second.to] == [
        ("help@example.org", "Help Desk"),
        ("b@y.io", ""),
    ]
    assert [(a.addr, a.name) for a in second.cc] == [("jose@x.io", "José")]
    assert second.from_ is not None and second.from_.addr == "bob@b.io"
    assert [a.addr for a in second.reply_to] == ["ann@a.io"]
    # A field too long to be remembered is parsed all the same.
    many = ", ".join(f"user{i}@example.org" for i in range(400))
    assert len(many) > parse_module.MAX_CACHED_ADDRESS_FIELD
    long_to = parse_message(mail("From: a@b.c", f"To: {many}"))
    assert [a.addr for a in long_to.to] == [f"user{i}@example.org" for i in range(400)]


def test_nul_anywhere_in_the_text_becomes_a_replacement_character() -> None:
    raw = (
        b"From: Al\x00ice <alice@customer.test>\nTo: =?utf-8?q?B=00b?= <bob@x.io>\n"
        b"Subject: Printer\x00 on fire\nX-Note: a\x00b\n"
        b"Content-Type: text/plain; charset=utf-8\n"
        b"Content-Transfer-Encoding: quoted-printable\n\nThe display shows =00.\n"
    )
    message = parse_message(raw)
    assert message.subject == "Printer\ufffd on fire"
    assert message.header("x-note") == "a\ufffdb"
    assert ("Subject", "Printer\ufffd on fire") in message.headers
    assert message.header("from") == "Al\ufffdice <alice@customer.test>"
    # Control characters are dropped from display names, NUL among them.
    assert message.from_ is not None and message.from_.name == "Alice"
    assert [a.name for a in message.to] == ["Bb"]
    assert "shows \ufffd." in message.text
    clean = parse_message(mail("From: a@b.c", "Subject: fine"))
    assert all("\0" not in value for _name, value in clean.headers)


def test_unusable_from_keeps_the_text() -> None:
    message = parse_message(mail("From: ))((", "Subject: s"))
    assert message.from_ is None or message.from_.addr == ""


def test_date_is_aware_utc() -> None:
    message = parse_message(mail("Date: Mon, 27 May 2002 10:28:30 +0200"))
    assert message.date == datetime(2002, 5, 27, 8, 28, 30, tzinfo=UTC)


def test_garbage_date_is_none() -> None:
    assert parse_message(mail("Date: sometime last week")).date is None


def test_thread_index_is_kept_raw() -> None:
    raw = mail("Thread-Index: AcHjkLmnOPqrSTuvWXyz0123456789==", "Subject: s")
    assert parse_message(raw).thread_index == "AcHjkLmnOPqrSTuvWXyz0123456789=="


# --- message ids ----------------------------------------------------------------


def test_empty_message_id_gives_none() -> None:
    assert parse_message(mail("Message-ID: <>", "Subject: s")).message_id is None


def test_message_id_with_colon_is_kept_whole() -> None:
    assert parse_message(mail("Message-ID: <Mail2L:1@x>")).message_id == "Mail2L:1@x"


def test_two_mail2l_ids_stay_different() -> None:
    first = parse_message(mail("Message-ID: <Mail2L:1234@host>"))
    second = parse_message(mail("Message-ID: <Mail2L:5678@host>"))
    assert first.message_id != second.message_id


def test_reply_headers_come_from_the_raw_header() -> None:
    raw = mail(
        "In-Reply-To: <Mail2L:9@x> (your message)",
        "References: <a@x>\n <Mail2L:9@x>\n <a@x>",
    )
    message = parse_message(raw)
    assert message.in_reply_to == ("Mail2L:9@x",)
    assert message.references == ("a@x", "Mail2L:9@x")


# --- bodies ----------------------------------------------------------------------


def test_iso_2022_jp_body_and_subject() -> None:
    subject = "=?ISO-2022-JP?B?" + base64.b64encode("件名".encode("iso2022_jp")).decode() + "?="
    raw = (
        f"Subject: {subject}\nContent-Type: text/plain; charset=ISO-2022-JP\n"
        "Content-Transfer-Encoding: 7bit\n\n"
    ).encode() + "こんにちは、世界\n".encode("iso2022_jp")
    message = parse_message(raw)
    assert message.subject == "件名"
    assert message.text.strip() == "こんにちは、世界"


def test_html_only_mail_gets_a_text_body() -> None:
    raw = mail(
        "Content-Type: text/html; charset=utf-8",
        body="<html><body><p>Printer is <b>broken</b></p><p>Second&nbsp;para</p></body></html>",
    )
    message = parse_message(raw)
    assert message.html is not None and "<b>broken</b>" in message.html
    assert "Printer is broken" in message.text
    assert "Second" in message.text
    assert "<p>" not in message.text


def test_a_huge_html_body_is_turned_into_text_from_a_bounded_prefix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """lxml's tree of a 20 MB body of tags took 1.1 GB (55x the mail) before the deadline hit."""
    seen: list[int] = []

    def spy(html: str) -> str:
        seen.append(len(html))
        return "Printer is broken"

    monkeypatch.setattr(parse_module, "get_text", spy)
    raw = mail(
        "Content-Type: text/html; charset=utf-8",
        body="<p>Printer is broken</p>" + "<b>x</b> " * 1_000_000,
    )
    message = parse_message(raw)
    assert seen and max(seen) <= 1_000_000
    assert message.text == "Printer is broken"
    assert message.html is not None and len(message.html) > 9_000_000  # kept whole
    assert any("html body of" in defect for defect in message.defects)


def test_alternative_prefers_the_plain_part() -> None:
    raw = mail(
        'Content-Type: multipart/alternative; boundary="b"',
        body="--b\nContent-Type: text/plain\n\nplain words\n--b\n"
        "Content-Type: text/html\n\n<p>html words</p>\n--b--\n",
    )
    message = parse_message(raw)
    assert message.text.strip() == "plain words"
    assert message.html is not None and "html words" in message.html


@pytest.mark.parametrize(
    ("charset", "payload", "expected"),
    [
        ("unknown-8bit", "café".encode(), "café"),
        ("x-user-defined", "café".encode("latin-1"), "café"),
        ("utf8", "café".encode(), "café"),
        ("ks_c_5601-1987", "안녕하세요".encode("cp949"), "안녕하세요"),
        ("gb2312", "朱镕基".encode("gb18030"), "朱镕基"),
        ("no-such-charset", "naïve".encode(), "naïve"),
    ],
)
def test_bogus_charsets_decode_with_a_fallback(charset: str, payload: bytes, expected: str) -> None:
    raw = f"Content-Type: text/plain; charset={charset}\n\n".encode() + payload
    assert parse_message(raw).text.strip() == expected


def test_no_blank_line_between_header_and_body() -> None:
    raw = b"Subject: hi\nFrom: a@b.c\nThis is the body\nsecond line\n"
    message = parse_message(raw)
    assert message.subject == "hi"
    assert "This is the body" in message.text


def test_cr_only_line_endings() -> None:
    raw = mail(
        "Subject: old mac",
        "From: A <a@b.c>",
        "Message-ID: <cr@x>",
        body="line one\nline two\n",
        eol="\r",
    )
    message = parse_message(raw)
    assert message.subject == "old mac"
    assert message.message_id == "cr@x"
    assert message.from_ is not None and message.from_.addr == "a@b.c"
    assert "line one\nline two" in message.text


def test_crlf_body_text_uses_lf() -> None:
    message = parse_message(mail("Subject: s", body="a\nb\n", eol="\r\n"))
    assert message.text == "a\nb\n"


# --- attachments -----------------------------------------------------------------


def multipart(*parts: str, subtype: str = "mixed", extra: str = "") -> bytes:
    body = "".join(f"--XYZ\n{part}\n" for part in parts) + "--XYZ--\n"
    return mail(
        "From: a@b.c",
        "Subject: parts",
        f'Content-Type: multipart/{subtype}; boundary="XYZ"{extra}',
        body=body,
    )


def b64_part(ctype: str, headers: str, content: bytes) -> str:
    return (
        f"Content-Type: {ctype}\nContent-Transfer-Encoding: base64\n{headers}\n\n"
        + base64.b64encode(content).decode()
    )


def test_hostile_filenames_are_kept_as_display_text() -> None:
    raw = multipart(
        "Content-Type: text/plain\n\nsee attached",
        b64_part(
            "application/octet-stream",
            'Content-Disposition: attachment; filename="../../etc/passwd"',
            b"root:x:0:0",
        ),
        b64_part("text/plain", 'Content-Disposition: attachment; filename="CON"', b"con"),
    )
    message = parse_message(raw)
    assert attachment_names(message) == ["../../etc/passwd", "CON"]
    assert message.attachments[0].content == b"root:x:0:0"
    assert message.text.strip() == "see attached"


def test_encoded_filenames_are_decoded() -> None:
    raw = multipart(
        "Content-Type: text/plain\n\nx",
        b64_part(
            "application/pdf",
            "Content-Disposition: attachment; filename*=utf-8''Rechnung%20M%C3%A4rz.pdf",
            b"%PDF",
        ),
        b64_part(
            "image/png",
            'Content-Disposition: attachment; filename="=?utf-8?q?caf=C3=A9.png?="',
            b"PNG",
        ),
    )
    assert attachment_names(parse_message(raw)) == ["Rechnung März.pdf", "café.png"]


def test_inline_image_keeps_its_content_id() -> None:
    raw = multipart(
        'Content-Type: text/html\n\n<p>logo <img src="cid:logo@x"></p>',
        b64_part("image/png", "Content-ID: <logo@x>\nContent-Disposition: inline", b"\x89PNG"),
        subtype="related",
    )
    message = parse_message(raw)
    (image,) = message.attachments
    assert image.content_id == "logo@x"
    assert image.inline
    assert image.content == b"\x89PNG"
    assert "logo" in message.text


def test_tnef_is_kept_as_an_attachment() -> None:
    raw = multipart(
        "Content-Type: text/plain\n\nOutlook mail",
        b64_part(
            "application/ms-tnef",
            'Content-Disposition: attachment; filename="winmail.dat"',
            b"\x78\x9f\x3e\x22",
        ),
    )
    (tnef,) = parse_message(raw).attachments
    assert (tnef.filename, tnef.content_type, tnef.content) == (
        "winmail.dat",
        "application/ms-tnef",
        b"\x78\x9f\x3e\x22",
    )


def test_nested_rfc822_is_an_attachment_and_its_text_is_not_merged() -> None:
    inner = "From: inner@x.y\nSubject: the original\nMessage-ID: <inner@x>\n\nInner secret text\n"
    raw = multipart(
        "Content-Type: text/plain\n\nFYI, forwarding.", f"Content-Type: message/rfc822\n\n{inner}"
    )
    message = parse_message(raw)
    assert "Inner secret text" not in message.text
    (forwarded,) = message.attachments
    assert forwarded.filename == "forwarded.eml"
    assert forwarded.content_type == "message/rfc822"
    reparsed = email.message_from_bytes(forwarded.content)
    assert reparsed["Subject"] == "the original"
    assert message.message_id != "inner@x"


def test_base64_garbage_does_not_fail_the_message() -> None:
    raw = multipart(
        "Content-Type: text/plain\n\nbody survives",
        "Content-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n"
        'Content-Disposition: attachment; filename="x.bin"\n\n!!!not*base64@@@\n====\nQUJD\n',
    )
    message = parse_message(raw)
    assert message.text.strip() == "body survives"
    assert attachment_names(message) == ["x.bin"]


def test_unnamed_attachment_gets_a_display_name() -> None:
    raw = multipart(
        "Content-Type: text/plain\n\nx",
        b64_part("application/pdf", "Content-Disposition: attachment", b"%PDF"),
    )
    (pdf,) = parse_message(raw).attachments
    assert pdf.filename.endswith(".pdf")


# --- delivery reports ------------------------------------------------------------


def test_dsn_with_two_recipients() -> None:
    status = (
        "Reporting-MTA: dns; mx.example.org\n\n"
        "Final-Recipient: rfc822; Gone@Example.com\nAction: failed\nStatus: 5.1.1\n"
        "Diagnostic-Code: smtp; 550 5.1.1 user unknown\n\n"
        "Final-Recipient: rfc822; full@example.net\nAction: delayed\nStatus: 4.2.2 (mailbox full)\n"
    )
    original = (
        "From: support@desk.example\nMessage-ID: <ticket-42@desk.example>\nSubject: Re: [#42]\n"
    )
    raw = multipart(
        "Content-Type: text/plain\n\nDelivery failed.",
        f"Content-Type: message/delivery-status\n\n{status}",
        f"Content-Type: text/rfc822-headers\n\n{original}",
        subtype="report",
        extra="; report-type=delivery-status",
    )
    message = parse_message(raw)
    assert message.content_type == "multipart/report"
    assert [(d.final_recipient, d.action, d.status) for d in message.delivery_status] == [
        ("Gone@Example.com", "failed", "5.1.1"),
        ("full@example.net", "delayed", "4.2.2"),
    ]
    assert message.delivery_status[0].diagnostic == "550 5.1.1 user unknown"
    assert ("Message-ID", "<ticket-42@desk.example>") in message.returned_headers
    assert message.text.strip() == "Delivery failed."


def test_dsn_returned_message_gives_returned_headers() -> None:
    raw = multipart(
        "Content-Type: text/plain\n\nbounced",
        "Content-Type: message/delivery-status\n\nFinal-Recipient: rfc822; x@y.z\nAction: failed\nStatus: 5.0.0\n",
        "Content-Type: message/rfc822\n\nMessage-ID: <orig@desk>\nSubject: hi\n\noriginal body\n",
        subtype="report",
    )
    message = parse_message(raw)
    assert ("Message-ID", "<orig@desk>") in message.returned_headers
    assert "original body" not in message.text


# --- delivery reports for internationalised addresses (RFC 6533) ------------------

OUR_ANSWER = returned_mail("md.r.1.abc@example.com")


@pytest.mark.parametrize(
    ("report", "status"), [(postfix_dsn, "5.1.1"), (exim_dsn, "5.0.0"), (m365_dsn, "5.1.10")]
)
def test_a_global_delivery_status_part_is_read_like_an_ascii_one(
    report: Callable[[str, bytes], bytes], status: str
) -> None:
    """``message/global-delivery-status`` (8bit, plain, base64), ``utf-8`` addresses raw
    or ``\\x{...}``-escaped, the original as ``message/global`` or ``message/global-headers``:
    the failed recipient and the returned Message-ID, as from an ASCII report."""
    message = parse_message(report("support+b-1@example.com", OUR_ANSWER))
    [failed] = message.delivery_status
    assert (failed.final_recipient, failed.original_recipient) == (JOERG, JOERG)
    assert (failed.action, failed.status) == ("failed", status)
    assert "jörg@example.de" in failed.diagnostic
    assert ("Message-ID", "<md.r.1.abc@example.com>") in message.returned_headers
    assert ("To", "Jörg Müller <jörg@example.de>") in message.returned_headers
    [part] = [a for a in message.attachments if a.content_type.endswith("delivery-status")]
    assert b"Final-Recipient: " in part.content  # kept decoded (Microsoft's is base64)


def test_a_global_delivery_status_part_in_quoted_printable_is_decoded() -> None:
    fields = "Reporting-MTA: dns; mx.example.de\n\nFinal-Recipient: utf-8; j=C3=B6rg@example.de\n"
    raw = multipart(
        "Content-Type: text/plain\n\nbounced",
        "Content-Type: message/global-delivery-status\n"
        f"Content-Transfer-Encoding: quoted-printable\n\n{fields}Action: failed\nStatus: 5.1.1\n",
        subtype="report",
    )
    [failed] = parse_message(raw).delivery_status
    assert (failed.final_recipient, failed.status) == (JOERG, "5.1.1")


def test_a_returned_message_global_in_base64_gives_its_headers() -> None:
    """RFC 6532 lets message/global travel in base64: its headers are read decoded."""
    raw = multipart(
        "Content-Type: text/plain\n\nbounced",
        "Content-Type: message/global-delivery-status\n\n"
        "Reporting-MTA: dns; mx\n\nFinal-Recipient: utf-8; j\\x{F6}rg@example.de\n"
        "Action: failed\nStatus: 5.1.1\n",
        b64_part("message/global", "", OUR_ANSWER),
        subtype="report",
    )
    message = parse_message(raw)
    assert message.delivery_status[0].final_recipient == JOERG
    assert ("Message-ID", "<md.r.1.abc@example.com>") in message.returned_headers


@pytest.mark.parametrize(
    ("fields", "recipient"),
    [
        # Latin-1 where UTF-8 belongs: read as Latin-1
        (b"Final-Recipient: utf-8; j\xf6rg@example.de\nAction: failed\n", "jörg@example.de"),
        # a truncated UTF-8 sequence and a stray continuation byte: read byte for byte
        (b"Final-Recipient: utf-8; j\xc3rg\x80@example.de\nAction: failed\n", "jÃrg€@example.de"),
        # bad escapes: kept as written
        (
            b"Final-Recipient: utf-8; j\\x{D800}rg@ex\\x{.de\nAction: failed\n",
            "j\\x{D800}rg@ex\\x{.de",
        ),
        # no fields at all, only garbage
        (b"\xff\xfe\x00garbage\n\n\n: : :\n", None),
    ],
)
def test_a_malformed_global_report_never_raises_and_is_kept(
    fields: bytes, recipient: str | None
) -> None:
    raw = (
        b"From: MAILER-DAEMON@mx.example.de\nSubject: Undelivered Mail\nContent-Type: "
        b'multipart/report; report-type=delivery-status; boundary="XYZ"\n\n'
        b"--XYZ\nContent-Type: text/plain\n\nbounced\n"
        b"--XYZ\nContent-Type: message/global-delivery-status\n\n"
        b"Reporting-MTA: dns; mx.example.de\n\n" + fields + b"\n--XYZ--\n"
    )
    message = parse_message(raw)
    assert [d.final_recipient for d in message.delivery_status] == (
        [recipient] if recipient else []
    )
    [part] = [a for a in message.attachments if a.content_type == "message/global-delivery-status"]
    assert part.content.startswith(b"Reporting-MTA: dns; mx.example.de\n")
    not_utf8 = "message/global-delivery-status part: not UTF-8"
    assert (not_utf8 in message.defects) == (not fields.isascii())


@settings(max_examples=300, deadline=None)
@given(
    content=st.binary(max_size=400),
    cte=st.sampled_from(["", "8bit", "7bit", "base64", "quoted-printable", "x-unknown"]),
    ctype=st.sampled_from(["message/global-delivery-status", "message/global-headers"]),
)
def test_any_global_report_part_parses_and_is_kept(content: bytes, cte: str, ctype: str) -> None:
    """Whatever an RFC 6533 part holds, the report parses (no quarantine) and keeps it."""
    encoding = f"Content-Transfer-Encoding: {cte}\n".encode() if cte else b""
    raw = (
        b'From: MAILER-DAEMON@mx.example.de\nContent-Type: multipart/report; boundary="XYZ"\n\n'
        b"--XYZ\nContent-Type: text/plain\n\nbounced\n"
        b"--XYZ\nContent-Type: "
        + ctype.encode()
        + b"\n"
        + encoding
        + b"\n"
        + content.replace(b"--XYZ", b"")
        + b"\n--XYZ--\n"
    )
    message = parse_message(raw)
    assert [a.content_type for a in message.attachments] == [ctype]


# --- hostile and empty input -----------------------------------------------------


def test_huge_content_type_header_is_trimmed_and_recorded() -> None:
    params = "; " * 7000
    raw = (
        f"Subject: spam\nContent-Type: text/plain; charset=utf-8{params}\n\n".encode()
        + "bødy text".encode()
    )
    assert len(raw) > 14_000
    message = parse_message(raw, time_limit=5.0)
    assert message.text.strip() == "bødy text"
    assert any("parameters" in defect for defect in message.defects)


def test_header_block_over_the_limit_is_a_parse_error() -> None:
    raw = mail(*(f"X-Filler-{i}: {'x' * 60}" for i in range(100)))
    with pytest.raises(ParseError) as caught:
        parse_message(raw, max_header_bytes=1024)
    assert "1024" in caught.value.reason


def test_time_limit_gives_parse_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    def stuck(raw: bytes, max_header_bytes: int) -> ParsedMessage:
        end = time.monotonic() + 10
        while time.monotonic() < end:
            pass
        raise AssertionError("the deadline did not interrupt")

    monkeypatch.setattr(parse_module, "_parse", stuck)
    with pytest.raises(ParseTimeout) as caught:
        parse_message(mail("Subject: s"), time_limit=0.05)
    assert "0.05" in caught.value.reason


def test_internal_failure_becomes_parse_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(raw: bytes, max_header_bytes: int) -> ParsedMessage:
        raise KeyError("boom")

    monkeypatch.setattr(parse_module, "_parse", broken)
    with pytest.raises(ParseError) as caught:
        parse_message(mail("Subject: s"))
    assert "KeyError" in caught.value.reason


@pytest.mark.parametrize("raw", [b"", b"   \r\n\r\n  "])
def test_empty_input_is_a_parse_error(raw: bytes) -> None:
    with pytest.raises(ParseError):
        parse_message(raw)


@pytest.mark.parametrize(
    "raw",
    [
        bytes(range(256)) * 8,  # a binary file handed to `ingest`
        b"Lorem ipsum dolor sit amet, consectetur adipisicing elit.\n\nSed do eiusmod.\n",
    ],
    ids=["binary", "text"],
)
def test_bytes_that_start_with_no_header_field_are_no_mail(raw: bytes) -> None:
    """They were a ticket with no sender and no subject; they are quarantined, saying why."""
    with pytest.raises(ParseError) as caught:
        parse_message(raw)
    assert caught.value.reason.startswith("not a mail message: no header field")


def test_obsolete_header_syntax_is_still_mail() -> None:
    """RFC 5322's obsolete syntax (white space before the colon) is mail all the same."""
    parsed = parse_message(b"From  : John Doe <jdoe@example.org>\r\nTo    : Mary\r\n\r\nHi\r\n")
    assert "Hi" in parsed.text


def test_deep_nesting_is_bounded() -> None:
    depth = 60
    opening = "".join(
        f'--b{i}\nContent-Type: multipart/mixed; boundary="b{i + 1}"\n\n' for i in range(depth)
    )
    closing = "".join(f"--b{i}--\n" for i in reversed(range(depth + 1)))
    raw = mail(
        'Content-Type: multipart/mixed; boundary="b0"',
        body=opening + f"--b{depth}\n\ndeep\n" + closing,
    )
    try:
        message = parse_message(raw)
    except ParseError:
        return
    assert any("nesting" in defect for defect in message.defects)


_SEED = mail(
    "From: A <a@b.c>",
    "Subject: =?utf-8?q?x=C3=A9?=",
    'Content-Type: multipart/mixed; boundary="q"',
    body="--q\nContent-Type: text/plain; charset=utf-8\n\nhi\n--q\n"
    "Content-Type: image/png; name=a.png\nContent-Transfer-Encoding: base64\n\nQUJD\n--q--\n",
)


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=600))
def test_arbitrary_bytes_only_raise_parse_error(raw: bytes) -> None:
    with contextlib.suppress(ParseError):
        parse_message(raw)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_mutated_messages_only_raise_parse_error(data: st.DataObject) -> None:
    raw = bytearray(_SEED)
    for _ in range(data.draw(st.integers(1, 8))):
        pos = data.draw(st.integers(0, len(raw) - 1))
        raw[pos : pos + data.draw(st.integers(0, 3))] = data.draw(st.binary(min_size=0, max_size=4))
    with contextlib.suppress(ParseError):
        parse_message(bytes(raw))


# --- Deadline --------------------------------------------------------------------


def busy(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def test_deadline_interrupts_a_long_block_in_the_main_thread() -> None:
    with pytest.raises(DeadlineExceeded), deadline(0.05):
        busy(10)


def test_deadline_is_not_swallowed_by_except_exception() -> None:
    with pytest.raises(DeadlineExceeded), deadline(0.05):
        try:
            busy(10)
        except Exception:
            pytest.fail("DeadlineExceeded was caught as an Exception")


def test_deadline_restores_the_previous_handler_and_timer() -> None:
    def previous(signum: int, frame: object) -> None:
        pass

    old = signal.signal(signal.SIGALRM, previous)
    try:
        with deadline(5):
            pass
        assert signal.getsignal(signal.SIGALRM) is previous
        assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    finally:
        signal.signal(signal.SIGALRM, old)


def test_nested_deadlines_keep_the_outer_one() -> None:
    with pytest.raises(DeadlineExceeded) as caught, deadline(0.2):
        with deadline(30):
            pass
        assert signal.getitimer(signal.ITIMER_REAL)[0] > 0  # outer timer re-armed
        busy(10)
    assert caught.value.seconds == 0.2


def test_inner_deadline_fires_inside_a_longer_outer_one() -> None:
    with deadline(30), pytest.raises(DeadlineExceeded) as caught, deadline(0.05):
        busy(10)
    assert caught.value.seconds == 0.05


def test_deadline_in_a_thread_raises_on_exit() -> None:
    outcome: list[str] = []

    def worker() -> None:
        try:
            with deadline(0.01):
                time.sleep(0.05)
        except DeadlineExceeded:
            outcome.append("exceeded")
        else:
            outcome.append("finished")

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert outcome == ["exceeded"]


def test_deadline_in_a_thread_lets_the_blocks_own_error_through() -> None:
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            with deadline(0.01):
                time.sleep(0.05)
                raise ValueError("own error")
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert len(errors) == 1 and isinstance(errors[0], ValueError)


def test_multipart_without_its_boundary_keeps_the_body_as_text() -> None:
    raw = mail('Content-Type: multipart/mixed; boundary="never-used"', body="Just some words.\n")
    message = parse_message(raw)
    assert message.text.strip() == "Just some words."
    assert message.attachments == ()
