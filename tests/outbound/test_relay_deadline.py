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
