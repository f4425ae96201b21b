"""What a real MTA or a hostile client sees of the listener, byte by byte.

A raw SMTP conversation over TCP with the real aiosmtpd listener: the envelope
and HELO go on the wire exactly as the test writes them, as smtplib would not
let it.
"""

from __future__ import annotations

import base64
import email
import socket
import ssl
import time
from collections.abc import Iterator
from email import policy
from pathlib import Path

import pytest
from sqlalchemy import select

from maildesk.app import App
from maildesk.config import ListenerSettings
from maildesk.db.models import Blob, Intake, Message, Ticket
from maildesk.domain.message import ParsedMessage
from maildesk.intake.smtp import IntakeHandler, build_controller
from maildesk.pipeline.parse import parse_message
from maildesk.spam.features import FeatureConfig, tokens
from tests.daemon_harness import free_port
from tests.mailfactory import make_mail


class RawClient:
    """One SMTP connection, written and read line by line."""

    def __init__(self, port: int, source: str = "127.0.0.1") -> None:
        self.sock = socket.create_connection(
            ("127.0.0.1", port), timeout=10, source_address=(source, 0)
        )
        self.stream = self.sock.makefile("rwb")
        self.greeting = self.reply()

    def reply(self) -> list[str]:
        lines = []
        while True:
            raw = self.stream.readline()
            if not raw:
                raise ConnectionError(f"closed by the server after {lines!r}")
            lines.append(raw.decode("utf-8", "replace").rstrip("\r\n"))
            if len(lines[-1]) < 4 or lines[-1][3] != "-":
                return lines

    def send(self, data: bytes) -> None:
        self.stream.write(data)
        self.stream.flush()

    def command(self, line: bytes | str) -> str:
        """The command's reply, its last line (the code and text that count)."""
        self.send((line.encode() if isinstance(line, str) else line) + b"\r\n")
        return self.reply()[-1]

    def starttls(self, ca_file: Path) -> None:
        assert self.command("STARTTLS").startswith("220")
        context = ssl.create_default_context(cafile=str(ca_file))
        self.sock = context.wrap_socket(self.sock, server_hostname="127.0.0.1")
        self.stream = self.sock.makefile("rwb")

    def mail(self, helo: bytes | str, mail_from: bytes | str, message: bytes) -> str:
        """One whole transaction; returns the reply to the end of DATA."""
        self.command(b"EHLO " + (helo.encode() if isinstance(helo, str) else helo))
        mail_from = mail_from.encode() if isinstance(mail_from, str) else mail_from
        assert self.command(b"MAIL FROM:<" + mail_from + b">").startswith("250")
        assert self.command("RCPT TO:<support@example.com>").startswith("250")
        assert self.command("DATA").startswith("354")
        self.send(crlf(message) + b".\r\n")
        return self.reply()[-1]

    def close(self) -> None:
        self.sock.close()


def crlf(raw: bytes) -> bytes:
    lines = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return lines if lines.endswith(b"\r\n") else lines + b"\r\n"


def start(app: App, settings: ListenerSettings, **session_options: object) -> object:
    handler = IntakeHandler(
        app.intake(), app.settings.receiving_addresses, settings.protocol, lambda: None, app.clock
    )
    controller = build_controller(settings, handler)
    controller.SMTP_kwargs.update(session_options)
    controller.start()
    return controller


@pytest.fixture
def smtp(app: App) -> Iterator[int]:
    port = free_port()
    controller = start(app, ListenerSettings(port=port))
    yield port
    controller.stop()  # type: ignore[attr-defined]


def stored(app: App) -> list[tuple[Intake, bytes]]:
    with app.db.transaction() as session:
        rows = list(session.scalars(select(Intake).order_by(Intake.id)))
        return [(row, bytes(session.get(Blob, row.raw_sha256).data)) for row in rows]  # type: ignore[union-attr]


def parsed(raw: bytes) -> ParsedMessage:
    return parse_message(raw)


# -- the HELO is the client's word: it cannot write our trace line ---------------


def test_a_bare_cr_in_the_helo_cannot_add_headers_above_our_trace_line(app: App, smtp: int) -> None:
    client = RawClient(smtp, source="127.0.0.2")
    helo = b"x\rX-Spam-Flag: NO\rAuthentication-Results: mx.example.com; dmarc=pass"
    assert client.mail(helo, "a@c.test", make_mail(message_id="cr@c.test")).startswith("250")
    client.close()

    [(_row, raw)] = stored(app)
    message = email.message_from_bytes(raw, policy=policy.compat32)
    assert [name.lower() for name in message][:2] == ["received", "from"]
    assert raw.startswith(b"Received: from x ([127.0.0.2])\r\n")


def test_a_bracketed_address_in_the_helo_is_not_read_as_the_client_address(
    app: App, smtp: int
) -> None:
    client = RawClient(smtp, source="127.0.0.2")
    forged = "mail-1.google.com ([209.85.220.41])"  # a relay the seed model knows as ham
    assert client.mail(forged, "a@c.test", make_mail(message_id="helo@c.test")).startswith("250")
    client.close()

    [(_row, raw)] = stored(app)
    relay_ips = sorted(t for t in tokens(parsed(raw), FeatureConfig()) if t.startswith("rcvdip:"))
    assert relay_ips == ["rcvdip:127.0", "rcvdip:127.0.0"]


# -- the envelope is the sender's data: stored, never bounced -------------------


def test_an_8_bit_envelope_sender_is_stored_not_bounced_after_data(app: App, smtp: int) -> None:
    """Old MTAs send Latin-1 addresses; only a 250 or a 4xx may follow DATA."""
    client = RawClient(smtp)
    reply = client.mail("old-mta.example", b"j\xf6rg@c.test", make_mail(message_id="l1@c.test"))
    client.close()
    assert reply.startswith("250")
    [(row, _raw)] = stored(app)
    assert row.envelope_from == "j\ufffdrg@c.test"


def test_nul_in_the_envelope_or_the_message_id_is_stored_not_retried_for_ever(
    app: App, smtp: int
) -> None:
    """PostgreSQL text cannot hold NUL: refused by the database, it was a 451 at
    every attempt until the sender gave up."""
    client = RawClient(smtp)
    raw = make_mail(message_id="nul\x00id@c.test")
    reply = client.mail("mta.example", b"a\x00b@c.test", raw)
    client.close()
    assert reply.startswith("250")
    [(row, body)] = stored(app)
    assert row.envelope_from == "a\ufffdb@c.test"
    assert row.header_message_id == "nul\ufffdid@c.test"
    assert body.endswith(crlf(raw))  # the bytes themselves as sent


# -- what real MTAs do ------------------------------------------------------------


def test_a_steady_sender_is_not_cut_by_the_idle_timeout_however_long_data_takes(
    app: App,
) -> None:
    """aiosmtpd restarted its timer only per command: a large mail on a slow link
    (a 50 MB mail below ~170 KB/s with the 300 s default) was cut at every attempt.
    The timeout is 2 s here; the client never pauses more than 0.3 s, and sends
    about 27 bytes/s, over min_data_rate (10 bytes/s here)."""
    port = free_port()
    controller = start(app, ListenerSettings(port=port, timeout_seconds=2, min_data_rate=10))
    try:
        client = RawClient(port)
        client.command("EHLO slow.example")
        client.command("MAIL FROM:<a@c.test>")
        client.command("RCPT TO:<support@example.com>")
        assert client.command("DATA").startswith("354")
        client.send(b"From: a@c.test\r\nSubject: slow\r\nMessage-ID: <slow@c.test>\r\n\r\n")
        for number in range(14):  # 4 s in all
            client.send(b"line %d\r\n" % number)
            time.sleep(0.3)
        client.send(b".\r\n")
        assert client.reply()[-1].startswith("250")
        client.close()
    finally:
        controller.stop()  # type: ignore[attr-defined]
    assert len(stored(app)) == 1


def test_the_auth_parameter_of_mail_from_is_accepted_after_login(
    app: App, tmp_path: Path, tls_files: tuple[Path, Path]
) -> None:
    """RFC 4954 s. 5: a server that offers AUTH accepts ``MAIL FROM:<...> AUTH=...``
    (sendmail sends it); refused with 555, the relay bounced every mail."""
    cert, key = tls_files
    users = tmp_path / "smtp-users"
    users.write_text("relay:s3cret\n")
    port = free_port()
    settings = ListenerSettings(
        port=port, tls_cert=cert, tls_key=key, require_auth=True, auth_users_file=users
    )
    controller = start(app, settings)
    try:
        client = RawClient(port)
        client.command("EHLO mta.example.net")
        client.starttls(cert)
        client.command("EHLO mta.example.net")
        login = base64.b64encode(b"\0relay\0s3cret").decode()
        assert client.command(f"AUTH PLAIN {login}").startswith("235")
        assert client.command("MAIL FROM:<a@c.test> AUTH=<>").startswith("250")
        assert client.command("RCPT TO:<support@example.com>").startswith("250")
        client.close()
    finally:
        controller.stop()  # type: ignore[attr-defined]


def test_require_auth_without_a_users_file_is_a_config_error() -> None:
    """It used to let everyone in: there was no one to check against."""
    with pytest.raises(ValueError, match="auth_users_file: require_auth = true needs"):
        ListenerSettings(require_auth=True)


def test_a_mail_with_nul_in_its_text_becomes_a_ticket_on_every_database(
    app: App, smtp: int
) -> None:
    """A raw NUL in the subject, or quoted-printable ``=00`` in the body, decodes to
    NUL, which PostgreSQL refuses: there the mail was quarantined, on SQLite a ticket."""
    raw = (
        b"From: Al\x00ice <alice@customer.test>\r\nTo: support@example.com\r\n"
        b"Subject: Printer\x00 on fire\r\nMessage-ID: <nul-text@c.test>\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
        b"The display shows =00 and then nothing.\r\n"
    )
    client = RawClient(smtp)
    assert client.mail("mta.example", "alice@customer.test", raw).startswith("250")
    client.close()

    assert app.worker().drain().as_dict()["created"] == 1
    with app.db.transaction() as session:
        [ticket] = session.scalars(select(Ticket)).all()
        assert ticket.subject == "Printer\ufffd on fire"
        [message] = session.scalars(
            select(Message).where(Message.header_message_id == "nul-text@c.test")
        ).all()
        assert "shows \ufffd and then nothing" in message.text_body
