"""The daemon under crashes and loops: kill -9 loses nothing, mail loops stop."""

from __future__ import annotations

import asyncio
import smtplib
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from tests.daemon_harness import DaemonProcess, RelaySink, free_port
from tests.mailfactory import make_mail

pytestmark = pytest.mark.slow

CLIENTS = 20
MAILS = 1000


def send_until_accepted(port: int, sender: str, raw: bytes, deadline: float) -> bool:
    """Behave like a sending MTA: retry until a 250 (or give up at the deadline)."""
    while time.monotonic() < deadline:
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
                client.sendmail(sender, ["support@example.com"], raw)
            return True
        except (OSError, smtplib.SMTPException):
            time.sleep(0.2)
    return False


def wait_processed(
    daemon: DaemonProcess, expected: int, timeout: float = 180
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    tickets: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        tickets = daemon.cli("tickets", "list", "--json", "--limit", "0")
        if len(tickets) >= expected:
            return tickets
        time.sleep(1)
    return tickets


def test_kill_9_during_1000_concurrent_mails_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    relay = RelaySink().start()
    daemon = DaemonProcess(tmp_path, relay_port=relay.port).start()
    accepted: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + 240

    def one(n: int) -> None:
        sender = f"c{n}@customer.test"
        raw = make_mail(sender=sender, message_id=f"load-{n}@customer.test", subject=f"request {n}")
        if send_until_accepted(daemon.smtp_port, sender, raw, deadline):
            with lock:
                accepted.append(f"load-{n}@customer.test")

    try:
        with ThreadPoolExecutor(CLIENTS) as pool:
            futures = [pool.submit(one, n) for n in range(MAILS)]
            while len(accepted) < MAILS // 3:
                time.sleep(0.05)
            daemon.kill()  # no goodbye: SIGKILL mid-stream
            time.sleep(1)
            daemon.start()  # same data directory, same node name
            for future in futures:
                future.result()
        assert len(accepted) == MAILS
        tickets = wait_processed(daemon, MAILS)
        requesters = Counter(t["requester"] for t in tickets)
        assert len(tickets) == MAILS, f"{len(tickets)} tickets for {MAILS} accepted mails"
        assert max(requesters.values()) == 1, "no duplicate tickets"

        # Each ticket is acknowledged once: at most one distinct ack Message-ID per customer.
        got = relay.wait_for(lambda r: len({x.rcpt_tos[0] for x in r}) >= MAILS, timeout=180)
        ids_per_customer: dict[str, set[str]] = {}
        for item in got:
            ids_per_customer.setdefault(item.rcpt_tos[0], set()).add(item.message["Message-ID"])
        assert len(ids_per_customer) == MAILS
        assert max(len(ids) for ids in ids_per_customer.values()) == 1
    finally:
        relay.stop()
        if daemon.proc and daemon.proc.poll() is None:
            assert daemon.terminate() == 0


class Forwarder:
    """A relay that hands each mail on to another SMTP server (a second maildesk)."""

    def __init__(self, target_port: int, target_address: str) -> None:
        self.port = free_port()
        self.target_port = target_port
        self.target_address = target_address
        self.count = 0
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.count += 1
        raw = envelope.original_content
        await asyncio.get_running_loop().run_in_executor(
            None, self._forward, envelope.mail_from, raw
        )
        return "250 OK"

    def _forward(self, mail_from: str, raw: bytes) -> None:
        try:
            with smtplib.SMTP("127.0.0.1", self.target_port, timeout=10) as client:
                client.sendmail(mail_from, [self.target_address], raw)
        except (OSError, smtplib.SMTPException):
            pass


def test_two_maildesks_acknowledging_each_other_stop(tmp_path: Path) -> None:
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    a_dir.mkdir()
    b_dir.mkdir()
    a = DaemonProcess(a_dir, support="support@a.test")
    b = DaemonProcess(b_dir, support="support@b.test")
    to_b, to_a = Forwarder(b.smtp_port, "support@b.test"), Forwarder(a.smtp_port, "support@a.test")
    a.relay_port, b.relay_port = to_b.port, to_a.port
    to_b.controller.start()
    to_a.controller.start()
    a.start()
    b.start()
    try:
        # B's helpdesk address writes to A: A acknowledges to B, B must not answer that.
        with smtplib.SMTP("127.0.0.1", a.smtp_port) as client:
            client.sendmail(
                "support@b.test",
                ["support@a.test"],
                make_mail(
                    sender="Helpdesk B <support@b.test>",
                    to="support@a.test",
                    message_id="loop-start@b.test",
                ),
            )
        time.sleep(8)
        assert to_b.count == 1, "A acknowledges the first mail once"
        assert to_a.count == 0, "B never answers A's acknowledgement (Auto-Submitted, loop header)"
    finally:
        for daemon in (a, b):
            assert daemon.terminate() == 0
        to_a.controller.stop()
        to_b.controller.stop()


class DumbResponder:
    """An auto-responder that ignores every auto-reply convention: it answers everything."""

    def __init__(self, target_port: int) -> None:
        self.port = free_port()
        self.target_port = target_port
        self.count = 0
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.count += 1
        reply = make_mail(
            sender="robot@robot.test",
            subject=f"I got your mail number {self.count}",
            message_id=f"robot-{self.count}@robot.test",
            body="Thanks for your mail!\n",
        )
        await asyncio.get_running_loop().run_in_executor(None, self._send, reply)
        return "250 OK"

    def _send(self, raw: bytes) -> None:
        try:
            with smtplib.SMTP("127.0.0.1", self.target_port, timeout=10) as client:
                client.sendmail("robot@robot.test", ["support@example.com"], raw)
        except (OSError, smtplib.SMTPException):
            pass


def test_a_responder_that_answers_everything_is_bounded_by_the_rate_limit(tmp_path: Path) -> None:
    daemon = DaemonProcess(tmp_path)
    robot = DumbResponder(daemon.smtp_port)
    daemon.relay_port = robot.port
    robot.controller.start()
    daemon.start()
    try:
        with smtplib.SMTP("127.0.0.1", daemon.smtp_port) as client:
            client.sendmail(
                "robot@robot.test",
                ["support@example.com"],
                make_mail(
                    sender="robot@robot.test", message_id="robot-0@robot.test", subject="start"
                ),
            )
        time.sleep(12)
        first = robot.count
        time.sleep(4)
        assert robot.count == first, "the exchange has stopped"
        assert 1 <= first <= 5, f"at most the hourly limit of acknowledgements: {first}"
    finally:
        assert daemon.terminate() == 0
        robot.controller.stop()
