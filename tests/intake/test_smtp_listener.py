"""The SMTP/LMTP listeners as real aiosmtpd servers on loopback, in-process."""

from __future__ import annotations

import smtplib
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from maildesk.app import App
from maildesk.config import ListenerSettings
from maildesk.db.models import Intake
from maildesk.domain.address import base_address
from maildesk.intake.smtp import IntakeHandler, build_controller
from tests.conftest import FrozenClock, make_settings
from tests.daemon_harness import free_port
from tests.mailfactory import make_mail


def start(app: App, settings: ListenerSettings) -> object:
    handler = IntakeHandler(
        app.intake(), app.settings.receiving_addresses, settings.protocol, lambda: None, app.clock
    )
    controller = build_controller(settings, handler)
    controller.start()
    return controller


@pytest.fixture
def smtp(app: App) -> Iterator[int]:
    port = free_port()
    controller = start(app, ListenerSettings(protocol="smtp", port=port, max_message_bytes=20_000))
    yield port
    controller.stop()  # type: ignore[attr-defined]


def stored(app: App) -> list[Intake]:
    with app.db.transaction() as session:
        return list(session.scalars(select(Intake).order_by(Intake.id)))


def test_data_is_stored_before_250(app: App, smtp: int) -> None:
    with smtplib.SMTP("127.0.0.1", smtp) as client:
        client.sendmail(
            "alice@customer.test", ["support@example.com"], make_mail(message_id="s1@c.test")
        )
    [row] = stored(app)
    assert row.header_message_id == "s1@c.test"
    assert row.envelope_from == "alice@customer.test"
    assert row.envelope_to == ["support@example.com"]


def test_sub_addresses_of_support_are_accepted_others_refused(app: App, smtp: int) -> None:
    assert base_address("Support+t-12-abc@Example.com") == "support@example.com"
    with smtplib.SMTP("127.0.0.1", smtp) as client:
        refused = client.sendmail(
            "a@c.test", ["support+t-1-xyz@example.com", "stranger@example.com"], make_mail()
        )
    assert list(refused) == ["stranger@example.com"] and refused["stranger@example.com"][0] == 550
    assert stored(app)[0].envelope_to == ["support+t-1-xyz@example.com"]


def test_postmaster_is_accepted_and_reaches_support(app: App, smtp: int) -> None:
    """RFC 5321 s. 4.5.1: every SMTP server takes mail for "postmaster", in any case and
    also without a domain; here it becomes mail to the support address of its domain."""
    with smtplib.SMTP("127.0.0.1", smtp) as client:
        client.ehlo()
        for n, rcpt in enumerate(
            ["Postmaster@Example.com", "POSTMASTER", "postmaster@stranger.test"]
        ):
            client.mail("reporter@isp.test")
            code, reply = client.rcpt(rcpt)
            if rcpt.endswith("stranger.test"):
                assert code == 550, reply
                client.rset()
                continue
            assert code == 250, (rcpt, reply)
            code, reply = client.data(make_mail(message_id=f"pm{n}@isp.test"))
            assert code == 250, reply
    rows = stored(app)
    assert [r.header_message_id for r in rows] == ["pm0@isp.test", "pm1@isp.test"]
    assert all(r.envelope_to == ["support@example.com"] for r in rows)


def test_lines_longer_than_rfc_5321_allows_are_still_accepted(app: App, smtp: int) -> None:
    raw = (
        b"From: a@c.test\r\nTo: support@example.com\r\nSubject: long\r\n"
        b"Content-Type: text/html\r\n\r\n<p>" + b"x" * 5000 + b"</p>\r\n"
    )
    with smtplib.SMTP("127.0.0.1", smtp) as client:
        client.sendmail("a@c.test", ["support@example.com"], raw)
    assert len(stored(app)) == 1


def test_oversized_message_gets_552_and_is_not_stored(app: App, smtp: int) -> None:
    with (
        smtplib.SMTP("127.0.0.1", smtp) as client,
        pytest.raises(smtplib.SMTPResponseException) as error,
    ):
        client.sendmail("a@c.test", ["support@example.com"], make_mail(body="x" * 50_000))
    assert error.value.smtp_code == 552
    assert stored(app) == []


def test_storage_failure_answers_451_so_the_sender_retries(app: App, smtp: int) -> None:
    with app.db.engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE intake RENAME TO intake_gone")
    try:
        with (
            smtplib.SMTP("127.0.0.1", smtp) as client,
            pytest.raises(smtplib.SMTPDataError) as error,
        ):
            client.sendmail("a@c.test", ["support@example.com"], make_mail())
        assert error.value.smtp_code == 451
    finally:
        with app.db.engine.begin() as conn:
            conn.exec_driver_sql("ALTER TABLE intake_gone RENAME TO intake")


def lmtp_conversation(path: Path, recipients: list[str], raw: bytes) -> list[str]:
    """Speak LMTP by hand: smtplib's LMTP client reads only one reply after DATA."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(path))
        stream = sock.makefile("rwb")

        def reply() -> list[str]:
            lines = []
            while True:
                line = stream.readline().decode().rstrip("\r\n")
                lines.append(line)
                if len(line) < 4 or line[3] != "-":
                    return lines

        def command(text: str) -> list[str]:
            stream.write(text.encode() + b"\r\n")
            stream.flush()
            return reply()

        reply()  # greeting
        command("LHLO test")
        command("MAIL FROM:<a@c.test>")
        for rcpt in recipients:
            assert command(f"RCPT TO:<{rcpt}>")[0].startswith("250")
        assert command("DATA")[0].startswith("354")
        body = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        stream.write(body + (b"" if body.endswith(b"\r\n") else b"\r\n") + b".\r\n")
        stream.flush()
        statuses = [reply()[0] for _ in recipients]
        command("QUIT")
        return statuses


def test_lmtp_on_a_unix_socket_answers_per_recipient(app: App, tmp_path: Path) -> None:
    sock = tmp_path / "lmtp.sock"
    controller = start(app, ListenerSettings(protocol="lmtp", socket=sock))
    try:
        statuses = lmtp_conversation(
            sock, ["support@example.com", "billing@example.com"], make_mail(message_id="l1@c.test")
        )
    finally:
        controller.stop()  # type: ignore[attr-defined]
    assert len(statuses) == 2 and all(s.startswith("250") for s in statuses)
    [row] = stored(app)
    assert row.source == "lmtp"
    assert row.envelope_to == ["support@example.com", "billing@example.com"]


def test_lmtp_storage_failure_answers_451_for_every_recipient(app: App, tmp_path: Path) -> None:
    """MAIL-RULES §1: nothing says yes before the bytes are stored, in LMTP either: each
    recipient is told "later", so the MTA keeps the mail for every mailbox."""
    sock = tmp_path / "lmtp.sock"
    controller = start(app, ListenerSettings(protocol="lmtp", socket=sock))
    with app.db.engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE intake RENAME TO intake_gone")
    try:
        statuses = lmtp_conversation(
            sock, ["support@example.com", "billing@example.com"], make_mail(message_id="l2@c.test")
        )
    finally:
        with app.db.engine.begin() as conn:
            conn.exec_driver_sql("ALTER TABLE intake_gone RENAME TO intake")
        controller.stop()  # type: ignore[attr-defined]
    assert len(statuses) == 2 and all(s.startswith("451") for s in statuses), statuses
    assert stored(app) == []


def test_starttls_and_auth_when_configured(
    app: App, tmp_path: Path, tls_files: tuple[Path, Path]
) -> None:
    import ssl

    cert, key = tls_files
    users = tmp_path / "users"
    users.write_text("relay:s3cret\n")
    port = free_port()
    controller = start(
        app,
        ListenerSettings(
            port=port, tls_cert=cert, tls_key=key, require_auth=True, auth_users_file=users
        ),
    )
    context = ssl.create_default_context(cafile=str(cert))
    try:
        with (
            smtplib.SMTP("127.0.0.1", port) as client,
            pytest.raises(smtplib.SMTPException),  # no TLS, no login
        ):
            client.sendmail("a@c.test", ["support@example.com"], make_mail())
        with smtplib.SMTP("127.0.0.1", port) as client:
            client.starttls(context=context)
            with pytest.raises(smtplib.SMTPAuthenticationError):
                client.login("relay", "wrong")
            client.login("relay", "s3cret")
            client.sendmail("a@c.test", ["support@example.com"], make_mail(message_id="tls@c.test"))
        # A session that switched to TLS gives its connection slot back once, like any other.
        slots = controller.slots  # type: ignore[attr-defined]
        for _attempt in range(100):
            if slots.open == 0:
                break
            time.sleep(0.02)
        assert slots.open == 0
    finally:
        controller.stop()  # type: ignore[attr-defined]
    assert [row.header_message_id for row in stored(app)] == ["tls@c.test"]


@pytest.mark.parametrize("protocol", ["smtp", "lmtp"])
def test_connections_beyond_max_connections_get_421_and_a_freed_slot_is_served(
    app: App, tmp_path: Path, protocol: str, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    where: dict[str, Any] = (
        {"port": port} if protocol == "smtp" else {"socket": tmp_path / "lmtp.sock"}
    )
    controller = start(app, ListenerSettings(protocol=protocol, max_connections=2, **where))

    def connect() -> smtplib.SMTP:
        if protocol == "smtp":
            return smtplib.SMTP("127.0.0.1", port, timeout=10)
        return smtplib.LMTP(str(where["socket"]), timeout=10)

    try:
        first, second = connect(), connect()
        assert first.noop()[0] == 250 and second.noop()[0] == 250
        with pytest.raises(smtplib.SMTPConnectError) as refused:
            connect()
        assert refused.value.smtp_code == 421
        assert first.noop()[0] == 250  # the sessions already open go on

        first.quit()
        for _attempt in range(50):  # the slot comes back once the server saw the QUIT
            try:
                third = connect()
                break
            except smtplib.SMTPConnectError:
                time.sleep(0.05)
        else:
            pytest.fail("no connection served after one was closed")
        third.sendmail("a@c.test", ["support@example.com"], make_mail(message_id="m1@c.test"))
        third.quit()
        second.quit()
    finally:
        controller.stop()  # type: ignore[attr-defined]
    assert [row.header_message_id for row in stored(app)] == ["m1@c.test"]
    assert "refusing new ones with 421" in caplog.text
    assert "below max_connections again; refused" in caplog.text


def test_one_client_address_cannot_take_every_slot(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    settings = ListenerSettings(port=port, max_connections=10, max_connections_per_client=2)
    controller = start(app, settings)

    def connect(source: str) -> smtplib.SMTP:
        return smtplib.SMTP("127.0.0.1", port, timeout=10, source_address=(source, 0))

    try:
        mine = [connect("127.0.0.1"), connect("127.0.0.1")]
        with pytest.raises(smtplib.SMTPConnectError) as refused:
            connect("127.0.0.1")
        assert refused.value.smtp_code == 421
        assert b"from your address" in refused.value.smtp_error
        other = connect("127.0.0.2")  # another host still gets in
        other.sendmail("b@c.test", ["support@example.com"], make_mail(message_id="o1@c.test"))
        other.quit()
        for client in mine:
            client.quit()
    finally:
        controller.stop()  # type: ignore[attr-defined]
    assert [row.header_message_id for row in stored(app)] == ["o1@c.test"]
    assert "(max_connections_per_client); refusing new ones with 421" in caplog.text


def test_a_message_the_listener_accepts_is_not_then_too_big_for_the_pipeline(
    tmp_path: Path, database_url: str, clock: FrozenClock
) -> None:
    """Both limits 20,000 bytes: the Received line we prepend must not push it over."""
    app = App.build(
        make_settings(tmp_path, database_url, pipeline={"max_message_bytes": 20_000}), clock=clock
    )
    port = free_port()
    controller = start(app, ListenerSettings(protocol="smtp", port=port, max_message_bytes=20_000))
    try:
        head = make_mail(message_id="edge@c.test", body="")
        raw = head + b"y" * (19_990 - len(head.replace(b"\n", b"\r\n"))) + b"\r\n"
        with smtplib.SMTP("127.0.0.1", port) as client:
            client.sendmail("a@c.test", ["support@example.com"], raw)
        summary = app.worker().drain()
    finally:
        controller.stop()  # type: ignore[attr-defined]
        app.db.dispose()
    assert (summary.counts["created"], summary.counts["quarantined"]) == (1, 0)


def test_the_lmtp_socket_takes_the_mtas_connections_under_the_units_umask(
    app: App, tmp_path: Path
) -> None:
    """The systemd unit runs maildesk with UMask=0027; the socket it binds must still
    let Postfix's lmtp client (another user) connect, which takes write permission."""
    import os
    import stat

    sock = tmp_path / "lmtp.sock"
    old = os.umask(0o027)
    try:
        controller = start(app, ListenerSettings(protocol="lmtp", socket=sock))
    finally:
        os.umask(old)
    try:
        mode = stat.S_IMODE(sock.stat().st_mode)
    finally:
        controller.stop()  # type: ignore[attr-defined]
    assert mode & 0o002, oct(mode)  # another user (the MTA) may connect


@pytest.mark.parametrize("end", [b"\n.\n", b"\r.\r", b"\r\n.\n", b"\n.\r\n"])
def test_a_bare_line_ending_dot_does_not_end_the_data_smtp_smuggling(
    app: App, smtp: int, end: bytes
) -> None:
    """SMTP smuggling (CVE-2023-51764 family, aiosmtpd CVE-2024-27305): only CR LF . CR LF
    ends DATA. A listener that took a bare-LF/CR dot as the end would read the rest as a
    second mail from whoever the sender names, past the checks on the first one."""

    smuggled = (
        b"MAIL FROM:<ceo@example.com>\r\nRCPT TO:<support@example.com>\r\nDATA\r\n"
        b"From: ceo@example.com\r\nSubject: smuggled\r\nMessage-ID: <smuggled@x.test>\r\n\r\n"
        b"#status closed\r\n"
    )
    first = make_mail(message_id="carrier@customer.test").replace(b"\r\n", b"\n")
    first = first.replace(b"\n", b"\r\n").rstrip(b"\r\n")
    with socket.create_connection(("127.0.0.1", smtp), timeout=10) as sock:
        stream = sock.makefile("rwb")

        def reply() -> str:
            while True:
                line = stream.readline().decode()
                if len(line) < 4 or line[3] != "-":
                    return line

        reply()
        for command in (b"EHLO test", b"MAIL FROM:<alice@customer.test>"):
            stream.write(command + b"\r\n")
            stream.flush()
            assert reply().startswith("250")
        stream.write(b"RCPT TO:<support@example.com>\r\nDATA\r\n")
        stream.flush()
        assert reply().startswith("250") and reply().startswith("354")
        stream.write(first + b"\r\n" + end + smuggled + b".\r\n")
        stream.flush()
        answers = [reply()]
        stream.write(b"QUIT\r\n")
        stream.flush()
        answers += [line.decode() for line in stream.readlines()]

    rows = stored(app)
    assert [row.header_message_id for row in rows] == ["carrier@customer.test"], answers
    assert rows[0].envelope_from == "alice@customer.test"
