"""Clients that trickle bytes cannot hold a listener's slot for ever: a slow DATA
is cut below ``min_data_rate``, a command line must arrive within the timeout,
and no session outlives ``max_session_seconds``. Each cut is a 421 (the sender
retries), stores nothing, and is counted. Real sockets to the real listener.

The database plays no part here: SQLite only, to keep the timed tests few.
"""

from __future__ import annotations

import logging
import select
import time

import pytest

from maildesk.app import App
from maildesk.config import ListenerSettings
from maildesk.intake.smtp import (
    DATA_TOO_SLOW,
    SESSION_TOO_LONG,
    TIMEOUT,
    SessionClock,
    refusal_reason,
)
from tests.daemon_harness import free_port
from tests.intake.test_smtp_protocol import RawClient, crlf, start, stored
from tests.mailfactory import make_mail

SQLITE = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
PROTOCOLS = pytest.mark.parametrize("protocol", ["smtp", "lmtp"])


def greet(client: RawClient, protocol: str) -> None:
    hello = ("LHLO" if protocol == "lmtp" else "EHLO") + " mta.example"
    assert client.command(hello).startswith("250")


def begin_data(client: RawClient) -> None:
    assert client.command("MAIL FROM:<a@c.test>").startswith("250")
    assert client.command("RCPT TO:<support@example.com>").startswith("250")
    assert client.command("DATA").startswith("354")


def trickle(client: RawClient, data: bytes, every: float, at_most: float) -> tuple[str, float]:
    """Send ``data`` over and over, a byte each ``every`` seconds, until the server
    answers with an error; that reply and the seconds it took ("" if none came)."""
    began = time.monotonic()
    sent = 0
    while time.monotonic() - began < at_most:
        readable, _, _ = select.select([client.sock], [], [], every)
        if readable:
            reply = client.reply()[-1]
            if reply[:1] in ("4", "5"):
                return reply, time.monotonic() - began
            continue  # a 250 for a command trickled in
        try:
            client.sock.sendall(data[sent % len(data) : sent % len(data) + 1])
        except OSError:
            break  # closed: the reply is read below
        sent += 1
    readable, _, _ = select.select([client.sock], [], [], 0.5)
    return (client.reply()[-1] if readable else ""), time.monotonic() - began


def refusals(app: App, protocol: str, outcome: str, reason: str) -> float | None:
    return app.metrics.registry.get_sample_value(
        "maildesk_intake_messages_total",
        {"source": protocol, "outcome": outcome, "reason": reason},
    )


def closed(client: RawClient) -> bool:
    try:
        return client.stream.readline() == b""
    except ConnectionError:
        return True


@SQLITE
@PROTOCOLS
def test_a_trickler_in_data_is_cut_while_an_honest_sender_is_stored(
    app: App, protocol: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A byte every 0.05 s reset the idle timer each time: a trickler in DATA held its
    slot for as long as it liked. Below min_data_rate (100 bytes/s here: 20 are sent)
    it has the timeout's worth of credit (1 s) and then gets 421; an honest sender
    on the listener meanwhile stores its mail, and the trickler's part is not stored."""
    caplog.set_level(logging.INFO, "maildesk.intake.smtp")
    port = free_port()
    settings = ListenerSettings(
        protocol=protocol, port=port, timeout_seconds=1.0, min_data_rate=100
    )
    controller = start(app, settings)
    try:
        trickler = RawClient(port)
        greet(trickler, protocol)
        begin_data(trickler)
        partial = crlf(make_mail(message_id="trickled@c.test"))
        reply, _ = trickle(trickler, partial, every=0.05, at_most=0.3)
        assert reply == "", reply  # still receiving its mail

        honest = RawClient(port)
        greet(honest, protocol)
        begin_data(honest)
        honest.send(crlf(make_mail(message_id="honest@c.test")) + b".\r\n")
        assert honest.reply()[-1].startswith("250")
        honest.close()

        reply, seconds = trickle(trickler, partial[40:], every=0.05, at_most=5.0)
        assert reply.startswith("421 4.4.2"), f"not cut: {reply!r} after {seconds:.1f}s"
        assert closed(trickler)
    finally:
        controller.stop()  # type: ignore[attr-defined]
    assert [row.header_message_id for row, _raw in stored(app)] == ["honest@c.test"]
    assert refusals(app, protocol, "refused_4xx", "data_too_slow") == 1
    assert "min_data_rate" in caplog.text and "127.0.0.1" in caplog.text


@SQLITE
def test_a_command_line_trickled_a_byte_at_a_time_is_cut_at_the_timeout(app: App) -> None:
    """Exim's smtp_receive_timeout, Postfix's per-request deadline: a command line
    must arrive whole within the timeout; bytes of it do not restart the clock."""
    port = free_port()
    controller = start(app, ListenerSettings(port=port, timeout_seconds=0.5))
    try:
        client = RawClient(port)
        greet(client, "smtp")
        reply, seconds = trickle(client, b"MAIL FROM:<a@c.test>\r\n", every=0.1, at_most=5.0)
        assert reply.startswith("421 4.4.2"), f"not cut: {reply!r} after {seconds:.1f}s"
        assert closed(client)
    finally:
        controller.stop()  # type: ignore[attr-defined]
    assert refusals(app, "smtp", "refused_4xx", "timeout") == 1


@SQLITE
@PROTOCOLS
def test_a_session_of_slow_whole_commands_is_cut_at_the_session_cap(
    app: App, protocol: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Whole NOOPs, each well within the timeout and under the junk limit, kept a
    session open without end; max_session_seconds (1 s here) ends it with 421."""
    caplog.set_level(logging.INFO, "maildesk.intake.smtp")
    port = free_port()
    settings = ListenerSettings(
        protocol=protocol, port=port, timeout_seconds=30, max_session_seconds=1.0
    )
    controller = start(app, settings)
    try:
        client = RawClient(port)
        greet(client, protocol)
        reply, seconds = trickle(client, b"NOOP\r\n", every=0.02, at_most=5.0)
        assert reply.startswith("421 4.4.2"), f"not cut: {reply!r} after {seconds:.1f}s"
        assert seconds > 0.7  # the cap, not an earlier limit (a loaded host only adds)
        assert closed(client)
    finally:
        controller.stop()  # type: ignore[attr-defined]
    assert refusals(app, protocol, "refused_4xx", "session_too_long") == 1
    assert "max_session_seconds" in caplog.text


@SQLITE
def test_a_big_mail_at_a_steady_rate_above_the_minimum_is_stored(app: App) -> None:
    """2 MB at about 1.3 MB/s takes longer than the timeout (0.5 s) but never runs out
    of credit at min_data_rate 200 KB/s, and fits in the session: stored whole."""
    port = free_port()
    settings = ListenerSettings(
        port=port,
        max_message_bytes=4 * 1024 * 1024,
        timeout_seconds=0.5,
        min_data_rate=200_000,
        max_session_seconds=10,
    )
    controller = start(app, settings)
    body = ("x" * 76 + "\n") * (2_000_000 // 77)
    message = crlf(make_mail(message_id="big@c.test", body=body))
    try:
        client = RawClient(port)
        greet(client, "smtp")
        begin_data(client)
        began = time.monotonic()
        for offset in range(0, len(message), 64 * 1024):
            client.send(message[offset : offset + 64 * 1024])
            time.sleep(0.05)
        client.send(b".\r\n")
        assert client.reply()[-1].startswith("250")
        assert time.monotonic() - began > settings.timeout_seconds
        client.close()
    finally:
        controller.stop()  # type: ignore[attr-defined]
    [(row, raw)] = stored(app)
    assert row.header_message_id == "big@c.test"
    assert raw.endswith(message)


@SQLITE
@PROTOCOLS
def test_refusals_by_aiosmtpd_itself_are_counted_with_their_reason(app: App, protocol: str) -> None:
    """Too big (552), a line over the limit (500), a command it does not know (500):
    refused by aiosmtpd before our handler saw them, they were in no metric."""
    port = free_port()
    controller = start(app, ListenerSettings(protocol=protocol, port=port, max_message_bytes=2000))
    try:
        client = RawClient(port)
        greet(client, protocol)
        begin_data(client)
        client.send(crlf(make_mail(body="many words\n" * 300)) + b".\r\n")
        assert client.reply()[-1].startswith("552")

        begin_data(client)
        client.send(b"Subject: long\r\n\r\n" + b"x" * (1024 * 1024 + 10) + b"\r\n.\r\n")
        assert client.reply()[-1].startswith("500 Line too long")

        assert client.command("FROB").startswith("500")
        assert client.command("RCPT TO:<nobody@example.com>").startswith("503")  # no MAIL
        client.close()
    finally:
        controller.stop()  # type: ignore[attr-defined]
    assert refusals(app, protocol, "refused_5xx", "too_large") == 1
    assert refusals(app, protocol, "refused_5xx", "line_too_long") == 1
    assert refusals(app, protocol, "refused_5xx", "bad_command") == 2
    assert stored(app) == []


# -- the clock itself: the rule in numbers -----------------------------------------


def test_a_sender_at_the_minimum_rate_never_runs_out_however_long_it_takes() -> None:
    clock = SessionClock(started=0.0, ready_at=0.0)
    clock.data_started(0.0, timeout=300)
    for second in range(1, 100_000):  # 500 bytes a second for 28 hours
        clock.data_received(float(second), 500, timeout=300, min_rate=500)
        due, limit = clock.expiry(timeout=300, max_session=1e9)
        assert due == second + 300 and limit is TIMEOUT  # only a silence would end it


def test_a_sender_below_the_minimum_rate_runs_out_of_its_credit() -> None:
    """100 bytes/s at min_data_rate 500: 10 s of credit, 0.8 s lost each second."""
    clock = SessionClock(started=0.0, ready_at=0.0)
    clock.data_started(0.0, timeout=10)
    second = 0
    while True:
        due, limit = clock.expiry(timeout=10, max_session=1e9)
        if due < second + 1:
            break
        second += 1
        clock.data_received(float(second), 100, timeout=10, min_rate=500)
    assert limit is DATA_TOO_SLOW and 12 < due < 13


def test_credit_never_runs_ahead_of_the_timeout_that_applies_now() -> None:
    """A burst does not buy a long silence afterwards; under stress (10 s) still less."""
    clock = SessionClock(started=0.0, ready_at=0.0)
    clock.data_started(0.0, timeout=300)
    clock.data_received(1.0, 10_000_000, timeout=300, min_rate=500)
    assert clock.expiry(timeout=300, max_session=1e9) == (301.0, TIMEOUT)
    clock.data_received(2.0, 10_000_000, timeout=10, min_rate=500)
    assert clock.expiry(timeout=10, max_session=1e9) == (12.0, TIMEOUT)


def test_the_session_cap_ends_any_session_and_command_bytes_earn_nothing() -> None:
    clock = SessionClock(started=0.0, ready_at=0.0)
    clock.data_received(5.0, 100, timeout=300, min_rate=500)  # half a command line
    assert clock.expiry(timeout=300, max_session=7200) == (300.0, TIMEOUT)
    clock.command_ready(7000.0)
    assert clock.expiry(timeout=300, max_session=7200) == (7200.0, SESSION_TOO_LONG)


@pytest.mark.parametrize(
    ("reply", "counted"),
    [
        ("250 2.0.0 Stored as 7", None),
        ("354 End data with <CR><LF>.<CR><LF>", None),
        ("452 4.5.3 Too many recipients, send the rest in another transaction", None),
        (
            "451 4.3.0 Cannot store the message now, try again later",
            ("refused_4xx", "cannot_store"),
        ),
        (
            "550 5.1.1 <x@c.test>: not a support address here",
            ("refused_5xx", "not_support_address"),
        ),
        ("552 Error: Too much mail data", ("refused_5xx", "too_large")),
        (
            "552 Error: message size exceeds fixed maximum message size",
            ("refused_5xx", "too_large"),
        ),
        ("500 Line too long (see RFC5321 4.5.3.1.6)", ("refused_5xx", "line_too_long")),
        ("500 Command line too long", ("refused_5xx", "line_too_long")),
        ("535 5.7.8 Authentication credentials invalid", ("refused_5xx", "auth_failed")),
        ('500 Error: command "FROB" not recognized', ("refused_5xx", "bad_command")),
        ("503 Error: need MAIL command", ("refused_5xx", "bad_command")),
    ],
)
def test_replies_are_counted_under_their_reason(
    reply: str, counted: tuple[str, str] | None
) -> None:
    assert refusal_reason(reply) == counted


@SQLITE
def test_connections_over_the_limit_are_counted(app: App) -> None:
    port = free_port()
    controller = start(app, ListenerSettings(port=port, max_connections=1))
    try:
        first = RawClient(port)
        second = RawClient(port)
        assert second.greeting[-1].startswith("421 4.7.0")
        first.close()
    finally:
        controller.stop()  # type: ignore[attr-defined]
    assert refusals(app, "smtp", "refused_4xx", "too_many_connections") == 1
