"""A relay that trickles its replies cannot stall the outbox: the delivery has a deadline."""

from __future__ import annotations

import pytest

from maildesk.config import OutboundSettings
from maildesk.outbound.sender import SmtpTransport, TemporaryFailure
from tests.daemon_harness import RelaySink
from tests.mailfactory import make_mail
from tests.slow_link import SlowLink


def test_a_trickling_relay_is_cut_at_the_deadline_and_the_mail_can_be_sent_again(
    relay: RelaySink,
) -> None:
    raw = make_mail(sender="support@example.com", to="alice@customer.test", message_id="a@x.test")
    with SlowLink(relay.port, interval=0.2) as link:
        settings = OutboundSettings(
            transport="smtp",
            relay_port=link.port,
            relay_timeout_seconds=2,  # never reached: a byte comes every 0.2 s
            relay_deadline_seconds=2,
        )
        transport = SmtpTransport(settings, password="")
        link.trickle.set()  # from the greeting on
        with pytest.raises(TemporaryFailure, match=r"relay_deadline_seconds=2; connection cut"):
            transport.send("support@example.com", ["alice@customer.test"], raw)
        assert relay.received == []

        link.trickle.clear()
        transport.send("support@example.com", ["alice@customer.test"], raw)
    [received] = relay.received
    assert received.rcpt_tos == ["alice@customer.test"]


def test_a_large_mail_to_a_slow_but_steady_relay_gets_time_for_its_size(
    relay: RelaySink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fixed deadline would cut it at every retry until the outbox gave up."""
    monkeypatch.setattr("maildesk.outbound.sender.RELAY_MIN_BYTES_PER_SECOND", 1024)
    raw = make_mail(
        sender="support@example.com",
        to="alice@customer.test",
        message_id="big@x.test",
        body="The log you asked for:\n" + ("0123456789abcdef" * 4 + "\n") * 250,  # 16 KB
    ).replace(b"\n", b"\r\n")  # as our outbound mail is
    with SlowLink(relay.port, interval=0.0002, slow_upload=True) as link:  # ~4 KB/s to it
        settings = OutboundSettings(
            transport="smtp",
            relay_port=link.port,
            relay_timeout_seconds=30,
            relay_deadline_seconds=1,
        )
        link.trickle.set()
        SmtpTransport(settings, password="").send(
            "support@example.com", ["alice@customer.test"], raw
        )
    assert len(relay.received) == 1
