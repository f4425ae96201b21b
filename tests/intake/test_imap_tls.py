"""IMAP over TLS and STARTTLS against a private Dovecot with a throwaway CA."""

from __future__ import annotations

import json
import smtplib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from maildesk.app import App
from maildesk.intake.imap import FolderStatus
from tests.daemon_harness import DaemonProcess, RelaySink
from tests.dovecot_harness import Dovecot, dovecot_server
from tests.intake.test_imap import Runner, idle_everywhere, mail, stored, wait_until
from tests.mailfactory import make_mail

USER, OTHER = "support", "sales"


@pytest.fixture
def dovecot() -> Iterator[Dovecot]:
    with dovecot_server(USER, OTHER, tls=True) as server:
        yield server


@pytest.mark.parametrize("security", ["starttls", "tls"])
def test_mail_is_read_over_a_verified_tls_connection(
    app: App, dovecot: Dovecot, runner: Runner, security: str
) -> None:
    port = dovecot.tls_port if security == "tls" else dovecot.port
    block = dovecot.mailbox(USER, security=security, port=port, ca_file=str(dovecot.ca_file))
    intake = runner.start(app, block)
    idle_everywhere(intake)
    raw = mail(1)
    dovecot.append(USER, raw)
    rows = wait_until(lambda: stored(app), "the message stored")
    assert [r for _, r in rows] == [raw]


def test_verify_tls_off_accepts_an_untrusted_certificate(
    app: App, dovecot: Dovecot, runner: Runner
) -> None:
    block = dovecot.mailbox(USER, security="tls", port=dovecot.tls_port, verify_tls=False)
    runner.start(app, block)
    dovecot.append(USER, mail(1))
    wait_until(lambda: len(stored(app)) == 1, "the message stored")


def test_untrusted_certificate_is_reported_and_other_mailboxes_keep_working(
    app: App, dovecot: Dovecot, runner: Runner, caplog: pytest.LogCaptureFixture
) -> None:
    # Verified against the system CAs, which never signed the throwaway certificate.
    broken = dovecot.mailbox(USER, security="starttls")
    intake = runner.start(app, broken, dovecot.mailbox(OTHER))
    failing = wait_until(
        lambda: [h for h in intake.health() if h.mailbox == USER and h.consecutive_failures],
        "the TLS failure reported",
    )
    assert failing[0].status is FolderStatus.BACKOFF
    assert "TLS failed: server certificate not trusted" in failing[0].last_error
    assert "CERTIFICATE_VERIFY_FAILED" in failing[0].last_error
    assert any(
        "imap support/INBOX: TLS failed: server certificate not trusted" in r.getMessage()
        for r in caplog.records
    )
    dovecot.append(OTHER, mail(2))
    rows = wait_until(lambda: stored(app), "the other mailbox's mail stored", timeout=60)
    assert rows[0][0].startswith(f"{OTHER}/INBOX/")


def test_daemon_with_a_broken_tls_mailbox_still_takes_smtp_and_other_imap_mail(
    tmp_path: Path, dovecot: Dovecot
) -> None:
    relay = RelaySink().start()
    config = f"""
[[imap]]
name = "{USER}"
host = "127.0.0.1"
port = {dovecot.tls_port}
security = "tls"
ca_file = "{tmp_path / "wrong-ca.pem"}"
user = "{USER}"
password = "{dovecot.users[USER]}"

[[imap]]
name = "{OTHER}"
host = "127.0.0.1"
port = {dovecot.tls_port}
security = "tls"
ca_file = "{dovecot.ca_file}"
user = "{OTHER}"
password = "{dovecot.users[OTHER]}"
"""
    # A CA bundle that exists but is not the one that signed the server's certificate.
    (tmp_path / "wrong-ca.pem").write_bytes(Path("/etc/ssl/certs/ca-certificates.crt").read_bytes())
    daemon = DaemonProcess(tmp_path, relay_port=relay.port, extra_config=config)
    try:
        daemon.start()
        with smtplib.SMTP("127.0.0.1", daemon.smtp_port) as smtp:
            smtp.sendmail("alice@customer.test", ["support@example.com"], make_mail())
        dovecot.append(OTHER, mail(3))
        health_file = daemon.workdir / "data" / "imap-health.json"
        deadline = time.monotonic() + 30
        health: dict[str, dict[str, Any]] = {}
        while time.monotonic() < deadline:
            if health_file.exists():
                health = {h["mailbox"]: h for h in json.loads(health_file.read_text())}
            if health.get(USER, {}).get("consecutive_failures") and health.get(OTHER, {}).get(
                "stored"
            ):
                break
            time.sleep(0.2)
        assert health[USER]["status"] == "backoff"
        assert "TLS failed" in health[USER]["last_error"]
        assert health[OTHER]["stored"] == 1, (health, daemon.log()[-3000:])
        tickets = daemon.cli("tickets", "list", "--json")
        assert len(tickets) == 2  # the SMTP mail and the other mailbox's mail
        assert "imap support/INBOX: TLS failed" in daemon.log()
        assert daemon.terminate() == 0
    finally:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.kill()
        relay.stop()
