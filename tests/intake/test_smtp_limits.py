"""Clients that hold a listener's connection slots without sending mail, as
Postfix's smtpd sheds them: the junk-command limit, the error limit and the
short timeout under stress. Real sockets to the real aiosmtpd listener."""

from __future__ import annotations

import time
from typing import Any

import pytest

from maildesk.app import App
from maildesk.config import ListenerSettings
from maildesk.intake.smtp import MAX_RECIPIENTS, IntakeHandler, build_controller
from maildesk.intake.store import Envelope
from tests.daemon_harness import free_port
from tests.intake.test_smtp_protocol import RawClient, crlf, start, stored
from tests.mailfactory import make_mail

PROTOCOLS = pytest.mark.parametrize("protocol", ["smtp", "lmtp"])


def greet(client: RawClient, protocol: str) -> None:
    assert client.command(("LHLO" if protocol == "lmtp" else "EHLO") + " mta.example").startswith(
        "250"
    )


def deliver(client: RawClient, message_id: str) -> str:
    """One transaction after the greeting; the reply to the end of DATA."""
    assert client.command("MAIL FROM:<a@c.test>").startswith("250")
    assert client.command("RCPT TO:<support@example.com>").startswith("250")
    assert client.command("DATA").startswith("354")
    client.send(crlf(make_mail(message_id=message_id)) + b".\r\n")
    return client.reply()[-1]


def closed(client: RawClient) -> bool:
    return client.stream.readline() == b""


@PROTOCOLS
def test_a_noop_loop_is_closed_after_the_junk_limit_and_its_slot_serves_a_sender(
    app: App, protocol: str
) -> None:
    """A client sending NOOP for ever held its slot for ever (each command restarted
    the 300 s timeout): a few of them refused every real sender."""
    port = free_port()
    controller = start(app, ListenerSettings(protocol=protocol, port=port, max_connections=1))
    try:
        looper = RawClient(port)
        looper.send(b"NOOP\r\n" * 101)  # the default limit is 100
        replies = [looper.reply()[-1] for _ in range(101)]
        assert all(r.startswith("250") for r in replies[:100]), replies[-2]
        assert replies[100].startswith("421 4.7.0"), replies[100]
        assert closed(looper)

        for _attempt in range(50):  # the slot comes back once the server closed it
            sender = RawClient(port)
            if sender.greeting[-1].startswith("220"):
                break
            time.sleep(0.02)
        greet(sender, protocol)
        assert deliver(sender, "after-loop@c.test").startswith("250")
        sender.close()
    finally:
        controller.stop()  # type: ignore[attr-defined]
    assert [row.header_message_id for row, _raw in stored(app)] == ["after-loop@c.test"]


@PROTOCOLS
def test_an_address_prober_is_closed_after_the_error_limit(app: App, protocol: str) -> None:
    """A dictionary attack on RCPT got 550 after 550 for as long as it liked."""
    port = free_port()
    controller = start(app, ListenerSettings(protocol=protocol, port=port))
    try:
        prober = RawClient(port)
        greet(prober, protocol)
        assert prober.command("MAIL FROM:<probe@c.test>").startswith("250")
        prober.send(b"".join(b"RCPT TO:<user%d@example.com>\r\n" % n for n in range(25)))
        replies = [prober.reply()[-1] for _ in range(21)]  # the default limit is 20
        assert all(r.startswith("550 5.1.1") for r in replies[:20]), replies[19]
        assert replies[20].startswith("421 4.7.0"), replies[20]
        assert closed(prober)  # the 5 RCPTs after the limit are not served
    finally:
        controller.stop()  # type: ignore[attr-defined]


def test_recipients_beyond_the_limit_are_not_counted_as_errors(app: App) -> None:
    """A 452 for the recipients over MAX_RECIPIENTS asks for another transaction
    (Postfix does not count them either, up to smtpd_recipient_overshoot_limit):
    counted, an MTA sending many recipients at once was closed before DATA, and
    again at every retry."""
    port = free_port()
    controller = start(app, ListenerSettings(port=port, max_errors=3))
    try:
        client = RawClient(port)
        greet(client, "smtp")
        assert client.command("MAIL FROM:<a@c.test>").startswith("250")
        client.send(b"RCPT TO:<support@example.com>\r\n" * (MAX_RECIPIENTS + 5))
        replies = [client.reply()[-1] for _ in range(MAX_RECIPIENTS + 5)]
        assert all(r.startswith("452 4.5.3") for r in replies[MAX_RECIPIENTS:]), replies[-1]
        assert client.command("DATA").startswith("354")
        client.send(crlf(make_mail(message_id="many@c.test")) + b".\r\n")
        assert client.reply()[-1].startswith("250")
        client.close()
    finally:
        controller.stop()  # type: ignore[attr-defined]
    assert len(stored(app)) == 1


def test_a_stored_mail_starts_both_counts_again(app: App) -> None:
    """As in Postfix: the limits are on commands without progress, not on a long
    session of a busy MTA that delivers mail after mail."""
    port = free_port()
    controller = start(app, ListenerSettings(port=port, max_junk_commands=3, max_errors=3))
    try:
        client = RawClient(port)
        for number in range(3):  # each round: 3 junk commands and 2 errors, then a mail
            greet(client, "smtp")
            assert client.command("NOOP").startswith("250")
            assert client.command("RSET").startswith("250")
            assert client.command("RCPT TO:<x@c.test>").startswith("503")  # before MAIL
            assert client.command("MAIL").startswith("501")  # no address
            assert deliver(client, f"m{number}@c.test").startswith("250")
        assert client.command("MAIL").startswith("501")  # no address
        assert client.command("MAIL").startswith("501")  # no address
        for _ in range(3):
            assert client.command("NOOP").startswith("250")
        assert client.command("NOOP").startswith("421 4.7.0 Too many commands")
        assert closed(client)
    finally:
        controller.stop()  # type: ignore[attr-defined]
    assert len(stored(app)) == 3


def test_the_idle_timeout_is_a_setting_and_the_client_is_told(app: App) -> None:
    port = free_port()
    controller = start(app, ListenerSettings(port=port, timeout_seconds=0.3))
    try:
        client = RawClient(port)
        greet(client, "smtp")
        time.sleep(0.6)
        assert client.reply()[-1].startswith("421 4.4.2")
        assert closed(client)
    finally:
        controller.stop()  # type: ignore[attr-defined]


@PROTOCOLS
def test_under_stress_idle_sessions_are_shed_while_a_steady_sender_completes(
    app: App, protocol: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Three idle clients of four slots: with the 300 s timeout they stayed, and
    the next sender was refused. Over 3/4 of the slots taken, a client silent
    for the stress timeout (0.4 s here) is closed; one that sends its mail a line
    every 0.15 s for 1.2 s (about 50 bytes/s, over min_data_rate) is not."""
    port = free_port()
    settings = ListenerSettings(
        protocol=protocol,
        port=port,
        max_connections=4,
        timeout_seconds=30,
        stress_timeout_seconds=0.4,
        min_data_rate=20,
    )
    controller = start(app, settings)
    try:
        idle = [RawClient(port) for _ in range(3)]
        for client in idle:
            greet(client, protocol)
        time.sleep(0.5)  # 3 of 4: no stress, the normal timeout
        for client in idle:
            assert client.command("NOOP").startswith("250")

        sender = RawClient(port)  # 4 of 4: stress
        greet(sender, protocol)
        assert sender.command("MAIL FROM:<a@c.test>").startswith("250")
        assert sender.command("RCPT TO:<support@example.com>").startswith("250")
        assert sender.command("DATA").startswith("354")
        sender.send(b"From: a@c.test\r\nSubject: steady\r\nMessage-ID: <steady@c.test>\r\n\r\n")
        for number in range(8):
            sender.send(b"line %d\r\n" % number)
            time.sleep(0.15)
        for client in idle:  # shed while the sender went on
            assert client.reply()[-1].startswith("421 4.4.2")
            assert closed(client)
        sender.send(b".\r\n")
        assert sender.reply()[-1].startswith("250")

        newcomer = RawClient(port)  # the freed slots serve others again
        assert newcomer.greeting[-1].startswith("220")
        newcomer.close()
        sender.close()
    finally:
        controller.stop()  # type: ignore[attr-defined]
    assert [row.header_message_id for row, _raw in stored(app)] == ["steady@c.test"]
    assert "silent clients now get the stress timeout" in caplog.text


class SlowStore:
    """The intake store, taking ``delay`` seconds per mail (a database under load)."""

    def __init__(self, store: Any, delay: float) -> None:
        self.inner, self.delay = store, delay

    def store(self, raw: bytes, envelope: Envelope) -> int:
        time.sleep(self.delay)
        result: int = self.inner.store(raw, envelope)
        return result


def test_a_slow_store_under_stress_is_not_taken_for_an_idle_client(app: App) -> None:
    """The client waits for our 250 while the store runs: cut then, the mail was
    stored without a 250, and the sender delivered it again later."""
    port = free_port()
    settings = ListenerSettings(port=port, max_connections=1, stress_timeout_seconds=0.3)
    handler = IntakeHandler(
        SlowStore(app.intake(), 1.0),  # type: ignore[arg-type]
        app.settings.own_addresses,
        "smtp",
        lambda: None,
        app.clock,
    )
    controller = build_controller(settings, handler)
    controller.start()
    try:
        client = RawClient(port)  # 1 of 1: stress
        greet(client, "smtp")
        assert deliver(client, "slow-store@c.test").startswith("250")
        client.close()
    finally:
        controller.stop()
    assert [row.header_message_id for row, _raw in stored(app)] == ["slow-store@c.test"]
