"""The listeners against broken or hostile clients: what the next sender, the
sending MTA or ops would notice, over real sockets to the real aiosmtpd listener."""

from __future__ import annotations

import socket
from pathlib import Path

from maildesk.app import App
from maildesk.config import ListenerSettings
from maildesk.intake.smtp import MAX_RECIPIENTS
from tests.daemon_harness import free_port
from tests.intake.test_smtp_protocol import RawClient, crlf, start, stored
from tests.mailfactory import make_mail


def test_recipients_beyond_the_limit_get_452_and_the_mail_still_arrives(app: App) -> None:
    """Every RCPT for a support address was kept, without end: one connection
    sending RCPT lines (the same address, or ``support+<500 bytes>``) grew the
    daemon's memory until it died. RFC 5321 s. 4.5.3.1.10: 452, the sender
    sends the rest in another transaction."""
    port = free_port()
    controller = start(app, ListenerSettings(port=port))
    try:
        client = RawClient(port)
        client.command("EHLO flood.example")
        assert client.command("MAIL FROM:<a@c.test>").startswith("250")
        client.send(b"RCPT TO:<support@example.com>\r\n" * (MAX_RECIPIENTS + 5))
        replies = [client.reply()[-1] for _ in range(MAX_RECIPIENTS + 5)]
        assert all(r.startswith("250") for r in replies[:MAX_RECIPIENTS])
        assert all(r.startswith("452 4.5.3") for r in replies[MAX_RECIPIENTS:]), replies[-1]
        assert client.command("DATA").startswith("354")
        client.send(crlf(make_mail(message_id="flood@c.test")) + b".\r\n")
        assert client.reply()[-1].startswith("250")
        client.close()
    finally:
        controller.stop()  # type: ignore[attr-defined]
    [(row, _raw)] = stored(app)
    assert len(row.envelope_to) == MAX_RECIPIENTS


def lmtp_replies_after_data(path: Path, recipients: list[str], data: bytes) -> list[str]:
    """One LMTP transaction; the replies after the final dot, one per recipient
    (RFC 2033 s. 4.2), or what came before the server fell silent."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(3)
        sock.connect(str(path))
        stream = sock.makefile("rwb")

        def reply() -> str:
            while True:
                line = stream.readline().decode().rstrip("\r\n")
                if len(line) < 4 or line[3] != "-":
                    return line

        def command(text: str) -> str:
            stream.write(text.encode() + b"\r\n")
            stream.flush()
            return reply()

        reply()  # greeting
        command("LHLO mta.example")
        assert command("MAIL FROM:<a@c.test>").startswith("250")
        for rcpt in recipients:
            assert command(f"RCPT TO:<{rcpt}>").startswith("250")
        assert command("DATA").startswith("354")
        stream.write(data + b".\r\n")
        stream.flush()
        statuses: list[str] = []
        try:
            for _ in recipients:
                statuses.append(reply())
        except TimeoutError:
            return [*statuses, "(no reply)"]
        assert command("RSET").startswith("250"), "the session goes on in step"
        return statuses


def test_lmtp_refuses_too_big_a_mail_once_per_recipient(app: App, tmp_path: Path) -> None:
    """After DATA an LMTP server answers once per accepted recipient. Too big a mail
    (or a line over 1 MiB) got one 552 for two recipients: Postfix waited for
    the second reply until its timeout, deferred the mail as "conversation timed
    out" and tried again and again; the next reply it read was off by one."""
    sock = tmp_path / "lmtp.sock"
    controller = start(
        app, ListenerSettings(protocol="lmtp", socket=sock, max_message_bytes=20_000)
    )
    recipients = ["support@example.com", "billing@example.com"]
    try:
        too_big = lmtp_replies_after_data(sock, recipients, crlf(make_mail(body="x" * 50_000)))
        too_long = lmtp_replies_after_data(
            sock, recipients, b"Subject: x\r\n\r\n" + b"y" * (2 << 20) + b"\r\n"
        )
        ok = lmtp_replies_after_data(sock, recipients, crlf(make_mail(message_id="fits@c.test")))
    finally:
        controller.stop()  # type: ignore[attr-defined]
    assert [s[:3] for s in too_big] == ["552", "552"], too_big
    assert [s[:3] for s in too_long] == ["500", "500"], too_long
    assert [s[:3] for s in ok] == ["250", "250"], ok
    assert [row.header_message_id for row, _raw in stored(app)] == ["fits@c.test"]
