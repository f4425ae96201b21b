"""The real daemon end to end: SMTP and LMTP in, acknowledgement out, reply threads."""

from __future__ import annotations

import smtplib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon_harness import DaemonProcess, RelaySink
from tests.mailfactory import make_mail

pytestmark = pytest.mark.slow


@pytest.fixture
def daemon(tmp_path: Path, relay: RelaySink) -> Iterator[DaemonProcess]:
    proc = DaemonProcess(tmp_path, relay_port=relay.port).start()
    yield proc
    if proc.proc is not None and proc.proc.poll() is None:
        proc.kill()


def test_customer_mail_ack_and_reply_land_on_one_ticket(
    daemon: DaemonProcess, relay: RelaySink
) -> None:
    with smtplib.SMTP("127.0.0.1", daemon.smtp_port) as client:
        client.sendmail(
            "alice@customer.test",
            ["support@example.com"],
            make_mail(message_id="e2e-1@customer.test", subject="Cannot log in"),
        )
    got = relay.wait_for(lambda r: any("alice@customer.test" in x.rcpt_tos for x in r))
    ack = next(x for x in got if "alice@customer.test" in x.rcpt_tos).message
    assert ack["Auto-Submitted"] == "auto-replied"
    assert ack["In-Reply-To"] == "<e2e-1@customer.test>"
    assert "[Support #" in ack["Subject"]
    assert ack["Reply-To"] and "support+" in ack["Reply-To"]

    # The customer replies the way a mail client does.
    reply = make_mail(
        message_id="e2e-2@customer.test",
        subject="Re: " + ack["Subject"],
        in_reply_to=ack["Message-ID"].strip("<>"),
        references=[r.strip("<>") for r in (ack["References"] or "").split()]
        + [ack["Message-ID"].strip("<>")],
        body="It works again, thanks.\n",
    )
    with smtplib.LMTP(str(daemon.lmtp_socket)) as client:
        refused = client.sendmail("alice@customer.test", ["support@example.com"], reply)
        assert refused == {}

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        tickets = daemon.cli("tickets", "list", "--json")
        if (
            tickets
            and len(daemon.cli("tickets", "show", str(tickets[0]["number"]), "--json")["messages"])
            >= 3
        ):
            break
        time.sleep(0.2)
    assert len(tickets) == 1
    shown = daemon.cli("tickets", "show", str(tickets[0]["number"]), "--json")
    kinds = [(m["direction"], m["message_id"]) for m in shown["messages"]]
    assert ("inbound", "e2e-1@customer.test") in kinds
    assert ("inbound", "e2e-2@customer.test") in kinds
    assert sum(1 for direction, _ in kinds if direction == "outbound") == 1, (
        "one acknowledgement only"
    )
    assert daemon.terminate() == 0


def test_unknown_recipient_is_refused_with_550(daemon: DaemonProcess) -> None:
    with (
        smtplib.SMTP("127.0.0.1", daemon.smtp_port) as client,
        pytest.raises(smtplib.SMTPRecipientsRefused) as refused,
    ):
        client.sendmail("x@customer.test", ["nobody@example.com"], make_mail())
    assert refused.value.recipients["nobody@example.com"][0] == 550
    assert daemon.terminate() == 0


def test_relay_down_then_back_delivers_once(tmp_path: Path) -> None:
    relay = RelaySink()
    daemon = DaemonProcess(tmp_path, relay_port=relay.port).start()
    try:
        with smtplib.SMTP("127.0.0.1", daemon.smtp_port) as client:
            for n in range(3):
                client.sendmail(
                    f"c{n}@customer.test",
                    ["support@example.com"],
                    make_mail(sender=f"c{n}@customer.test", message_id=f"down-{n}@customer.test"),
                )
        time.sleep(2)  # the sender tries and fails while the relay is down
        waiting = daemon.cli("outbox", "list", "--json")
        assert len(waiting) == 3 and all(row["state"] == "queued" for row in waiting)
        assert any(row["attempts"] >= 1 and row["last_error"] for row in waiting)
        relay.start()
        got = relay.wait_for(lambda r: len(r) >= 3, timeout=30)
        time.sleep(1.5)
        assert sorted(x.rcpt_tos[0] for x in relay.received) == sorted(
            f"c{n}@customer.test" for n in range(3)
        ), "each acknowledgement delivered exactly once"
        assert len(got) == 3
    finally:
        relay.stop()
        assert daemon.terminate() == 0


def test_permanent_failure_is_recorded_and_visible(tmp_path: Path) -> None:
    relay = RelaySink(reply="550 5.1.1 mailbox unavailable").start()
    daemon = DaemonProcess(tmp_path, relay_port=relay.port).start()
    try:
        with smtplib.SMTP("127.0.0.1", daemon.smtp_port) as client:
            client.sendmail(
                "gone@customer.test",
                ["support@example.com"],
                make_mail(sender="gone@customer.test"),
            )
        deadline = time.monotonic() + 30
        rows: list[dict[str, object]] = []
        while time.monotonic() < deadline:
            rows = daemon.cli("outbox", "list", "--json")
            if rows and rows[0]["state"] == "failed":
                break
            time.sleep(0.2)
        assert rows and rows[0]["state"] == "failed"
        assert "550" in str(rows[0]["last_error"])
    finally:
        relay.stop()
        assert daemon.terminate() == 0


def test_sighup_reloads_templates_without_dropping_the_listener(
    tmp_path: Path, relay: RelaySink
) -> None:
    import shutil
    import signal

    templates = tmp_path / "templates"
    shutil.copytree(Path(__file__).resolve().parents[1] / "templates", templates)
    daemon = DaemonProcess(tmp_path, relay_port=relay.port, templates=templates).start()
    try:
        with smtplib.SMTP("127.0.0.1", daemon.smtp_port) as client:
            client.sendmail(
                "a1@customer.test", ["support@example.com"], make_mail(sender="a1@customer.test")
            )
            text = (templates / "ack.customer.txt.j2").read_text()
            (templates / "ack.customer.txt.j2").write_text(
                text.replace("We received your request", "Got it")
            )
            (templates / "ack.customer.html.j2").unlink()
            assert daemon.proc is not None
            daemon.proc.send_signal(signal.SIGHUP)
            time.sleep(1)
            # the same SMTP session still works after the reload
            client.sendmail(
                "a2@customer.test",
                ["support@example.com"],
                make_mail(sender="a2@customer.test", subject="second"),
            )
        got = relay.wait_for(
            lambda r: {x.rcpt_tos[0] for x in r} >= {"a1@customer.test", "a2@customer.test"}
        )
        second = next(x for x in got if x.rcpt_tos[0] == "a2@customer.test").message
        assert second["Subject"].startswith("[Support #2] Got it")
        assert daemon.proc.poll() is None
    finally:
        assert daemon.terminate() == 0
