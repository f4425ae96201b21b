"""`maildesk run` stops within systemd's TimeoutStopSec however slow the relay is."""

from __future__ import annotations

import asyncio
import smtplib
import time
from pathlib import Path
from typing import Any

from tests.daemon_harness import DaemonProcess, RelaySink
from tests.mailfactory import make_mail


class StallingRelay(RelaySink):
    """Takes the whole mail, then stalls its reply for ``delay`` seconds (counts the DATAs)."""

    delay: float = 0.0
    datas: int = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.datas += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        return await super().handle_DATA(server, session, envelope)


def test_sigterm_during_a_stalled_relay_delivery_stops_in_time_and_sends_once_after(
    tmp_path: Path,
) -> None:
    """The delivery in hand is cut after a grace, not waited for until relay_deadline
    (300 s) while systemd kills at TimeoutStopSec (60 s in our unit); after the restart
    the mail goes out again, with the same Message-ID."""
    relay = StallingRelay()
    relay.start()
    relay.delay = 600
    # A relay that is slow but alive (a large mail on a slow link, a trickling relay)
    # is not cut by the silence timeout (30 s); modelled here by a longer one.
    daemon = DaemonProcess(
        tmp_path, relay_port=relay.port, extra_config="relay_timeout_seconds = 120\n"
    ).start()
    try:
        with smtplib.SMTP("127.0.0.1", daemon.smtp_port) as client:
            client.sendmail(
                "c@customer.test", ["support@example.com"], make_mail(sender="c@customer.test")
            )
        deadline = time.monotonic() + 20
        while relay.datas == 0:  # the acknowledgement is at the relay, waiting for its 250
            assert time.monotonic() < deadline, "the acknowledgement never reached the relay"
            time.sleep(0.05)
        started = time.monotonic()
        assert daemon.terminate(timeout=50) == 0
        took = time.monotonic() - started
        assert took < 30, f"stop took {took:.0f}s"
        assert "cutting the delivery" in daemon.log()

        relay.delay = 0
        daemon.start()
        received = relay.wait_for(lambda r: len(r) >= 1, 30)
        time.sleep(1)  # a second copy would come now
        ids = {r.message["Message-ID"] for r in relay.received}
        assert len(ids) == 1 and len(received) >= 1
    finally:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.terminate()
        relay.stop()
