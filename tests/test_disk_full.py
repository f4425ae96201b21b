"""The daemon on a full disk: SMTP/LMTP/IMAP intake, outbound mail (the Maildir, the
journal of deliveries not yet recorded) and spam learning wait and recover by
themselves, each said once, and `maildesk status` says which disk is full.

A real tmpfs of a few MiB, filled by the test, is the full file system (root and
mount needed; skipped otherwise).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import smtplib
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email import message_from_bytes
from pathlib import Path
from typing import Any

import pytest
from imapclient import SEEN
from sqlalchemy import select

from maildesk.db.database import Database
from maildesk.db.models import Intake, SpamFeedback
from maildesk.spam.feedback import SpamLabel, record_feedback
from maildesk.spam.model import SpamFilter
from maildesk.spam.scoring import SEED_MODEL
from tests.daemon_harness import DaemonProcess, RelaySink
from tests.dovecot_harness import append_with, dovecot_server
from tests.intake.test_imap_daemon import all_seen, imap_config, stored_refs
from tests.mailfactory import make_mail

pytestmark = pytest.mark.slow


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A real small file system at ``path``, unmounted afterwards."""
    path.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {result.stderr.decode(errors='replace')}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path: Path) -> None:
    """Write ``path`` until its file system has no room left."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0" * 4096)
    finally:
        os.close(fd)


class MaildirDaemon(DaemonProcess):
    """The daemon with the embedded default transport: outbound mail into a local Maildir."""

    maildir: Path = Path("/nonexistent")

    def write_config(self) -> None:
        super().write_config()
        text = self.config_path.read_text(encoding="utf-8")
        local = f'transport = "maildir"\nmaildir = "{self.maildir}"'
        self.config_path.write_text(text.replace('transport = "smtp"', local), encoding="utf-8")


def wait_until(what: str, done: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"not in {timeout}s: {what}")
        time.sleep(0.2)


def test_outbound_mail_waits_for_a_full_maildir_disk_and_goes_out_once_there_is_room(
    tmp_path: Path,
) -> None:
    with tmpfs(tmp_path / "outmail", "1m") as maildir:
        daemon = MaildirDaemon(tmp_path, relay_port=25)
        daemon.maildir = maildir
        daemon.start()
        try:
            filler = maildir / "filler"
            fill(filler)
            customers = [f"c{n}@customer.test" for n in range(3)]
            for customer in customers:
                with smtplib.SMTP("127.0.0.1", daemon.smtp_port, timeout=30) as client:
                    client.sendmail(customer, ["support@example.com"], make_mail(sender=customer))
            wait_until(
                "the daemon tried the Maildir", lambda: "No space left on device" in daemon.log()
            )
            filler.unlink()  # room again: nobody restarts the daemon
            new = maildir / "new"
            wait_until(
                "the three acknowledgements are in the Maildir",
                lambda: new.exists() and len(list(new.iterdir())) >= len(customers),
            )
            wait_until(
                "`maildesk status` healthy again", lambda: daemon.status_json()[1]["healthy"]
            )
            acks = [message_from_bytes(p.read_bytes()) for p in sorted(new.iterdir())]
            assert sorted(str(a["To"]) for a in acks) == customers  # each once
            assert list((maildir / "tmp").iterdir()) == []  # no half-written file left behind
            log = daemon.log()
            assert log.count("the Maildir unavailable") == 1, log[-3000:]
            assert "the Maildir available again" in log
            assert "Traceback" not in log, log[-3000:]
            assert daemon.proc is not None and daemon.proc.poll() is None
        finally:
            assert daemon.terminate() == 0


def test_status_names_a_full_data_directory_while_the_daemon_cannot_say_so(
    tmp_path: Path,
) -> None:
    with tmpfs(tmp_path / "data", "4m") as data:
        daemon = MaildirDaemon(tmp_path, relay_port=25)
        daemon.maildir = tmp_path / "outmail"  # not on the full disk
        daemon.start()
        try:
            code, said = daemon.status_json()
            assert code == 0, said
            filler = data / "filler"
            fill(filler)
            code, said = daemon.status_json()
            assert code == 1, said
            assert [p for p in said["problems"] if "data directory" in p], said
            assert not [p for p in said["problems"] if "Maildir" in p], said
            filler.unlink()
            code, said = daemon.status_json()
            assert code == 0, said
        finally:
            assert daemon.terminate() == 0


@dataclass
class GatedRelay(RelaySink):
    """A relay that holds its answer to the ``hold``-th mail until the test lets it go."""

    hold: int = 2
    arrived: threading.Event = field(default_factory=threading.Event)
    answer: threading.Event = field(default_factory=threading.Event)
    seen: int = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.seen += 1
        if self.seen == self.hold:
            self.arrived.set()
            await asyncio.to_thread(self.answer.wait, 60)
        return await super().handle_DATA(server, session, envelope)


def test_a_delivery_the_full_disk_keeps_from_being_recorded_holds_back_no_other_mail(
    tmp_path: Path,
) -> None:
    """The relay took a mail; then neither the database nor the journal can be written."""
    relay = GatedRelay().start()
    with tmpfs(tmp_path / "data", "4m") as data:
        daemon = DaemonProcess(tmp_path, relay_port=relay.port).start()
        try:
            customers = [f"c{n}@customer.test" for n in range(4)]
            with smtplib.SMTP("127.0.0.1", daemon.smtp_port, timeout=30) as client:
                for customer in customers:
                    client.sendmail(customer, ["support@example.com"], make_mail(sender=customer))
            assert relay.arrived.wait(60), daemon.log()[-3000:]
            filler = data / "filler"
            fill(filler)
            relay.answer.set()  # the relay takes it: out, and not recordable now
            wait_until(
                "the sender cannot record",
                lambda: "outbox sender: database unavailable" in daemon.log(),
            )
            filler.unlink()
            relay.wait_for(lambda r: {x.rcpt_tos[0] for x in r} == set(customers), 60)
            assert sorted(x.rcpt_tos[0] for x in relay.received) == customers  # each once
            log = daemon.log()
            assert "cannot write the deliveries not yet recorded" in log, log[-3000:]
            assert "Traceback" not in log, log[-3000:]
        finally:
            relay.answer.set()
            assert daemon.terminate() == 0
            relay.stop()


def test_spam_learning_on_a_full_disk_says_so_once_and_learns_once_there_is_room(
    tmp_path: Path,
) -> None:
    relay = RelaySink().start()
    with tmpfs(tmp_path / "data", "16m") as data:
        config = "[spam]\nlearn_interval_seconds = 0.2\n"
        daemon = DaemonProcess(tmp_path, relay_port=relay.port, extra_config=config).start()
        db = Database(f"sqlite:///{data / 'maildesk.sqlite3'}")
        try:
            with smtplib.SMTP("127.0.0.1", daemon.smtp_port, timeout=30) as client:
                client.sendmail("a@customer.test", ["support@example.com"], make_mail())
            relay.wait_for(lambda got: len(got) == 1)  # stored, processed, acknowledged
            # Room for the database to take the feedback, none for the 3.6 MB model.
            reserve = data / "reserve"
            reserve.write_bytes(b"\0" * 1_000_000)
            filler = data / "filler"
            fill(filler)
            reserve.unlink()
            with db.transaction() as session:
                intake_id = session.scalars(select(Intake.id)).one()
                record_feedback(
                    session, intake_id=intake_id, label=SpamLabel.SPAM, source="agent", actor="bob"
                )
            wait_until("a round met the full disk", lambda: "No space left" in daemon.log())
            time.sleep(3)  # more rounds while the disk stays full
            filler.unlink()
            wait_until("the lesson is learned", lambda: "learned 1 message" in daemon.log())
            with db.transaction() as session:
                assert session.scalars(select(SpamFeedback.learned_at)).one() is not None
            assert SpamFilter.load(data / "spam-model.npz").trained_spam == (
                SpamFilter.load(SEED_MODEL).trained_spam + 1
            )
            log = daemon.log()
            assert log.count("No space left on device") == 1, log[-4000:]
            assert "spam learning: the model file" in log and "available again" in log
            assert "Traceback" not in log, log[-4000:]
        finally:
            db.dispose()
            assert daemon.terminate() == 0
            relay.stop()


def test_imap_mail_stays_unflagged_on_a_full_disk_and_the_health_file_failure_is_said_once(
    tmp_path: Path,
) -> None:
    relay = RelaySink().start()
    with dovecot_server("support", "sales") as dovecot, tmpfs(tmp_path / "data", "4m") as data:
        config = imap_config(dovecot).replace(
            "poll_interval_seconds = 30", "poll_interval_seconds = 1"
        )
        daemon = DaemonProcess(tmp_path, relay_port=relay.port, extra_config=config).start()
        health = data / "imap-health.json"
        try:
            wait_until("the health file", health.exists)
            filler = data / "filler"
            fill(filler)
            with dovecot.client("support") as client:
                for n in range(5):
                    raw = make_mail(sender=f"i{n}@customer.test", body="y" * 4000 + "\n")
                    append_with(client, raw, "INBOX")
            wait_until("several tries on the full disk", lambda: "(failure 3)" in daemon.log())
            with dovecot.client("support") as client:
                client.select_folder("INBOX", readonly=True)
                assert not [f for f in client.get_flags(client.search()).values() if SEEN in f]
            filler.unlink()
            wait_until("all five stored", lambda: len(stored_refs(daemon)) == 5)  # once each
            wait_until("all five flagged", lambda: all_seen(dovecot, "support"))
            wait_until(
                "the health file says the folder works again",
                lambda: {h["status"] for h in json.loads(health.read_text())} <= {"idle"},
            )
            log = daemon.log()
            assert log.count(f"cannot write {health}") == 1, log[-4000:]
            assert f"{health}: written again" in log
            assert [p.name for p in data.iterdir() if p.name.startswith(".imap-health")] == []
        finally:
            assert daemon.terminate() == 0
            relay.stop()


def test_smtp_and_lmtp_say_4xx_on_a_full_disk_even_for_its_log_and_store_each_retry_once(
    tmp_path: Path,
) -> None:
    """Data directory and the daemon's own log on one full disk (the existing SMTP test,
    tests/test_daemon_lifecycle.py, has neither LMTP, nor the log, nor more than one mail)."""
    relay = RelaySink().start()
    with tmpfs(tmp_path / "work", "4m") as work:
        daemon = DaemonProcess(work, relay_port=relay.port).start()
        try:
            filler = work / "filler"
            fill(filler)
            mails = {
                f"full{n}@customer.test": make_mail(
                    sender=f"c{n}@customer.test",
                    message_id=f"full{n}@customer.test",
                    body=f"line {n} of a mail\n" * 200,  # its log lines too outgrow the log file
                )
                for n in range(30)
            }
            refused: dict[str, int] = {}
            for n, (message_id, raw) in enumerate(mails.items()):
                client: smtplib.SMTP = (
                    smtplib.LMTP(str(daemon.lmtp_socket))
                    if n % 2
                    else smtplib.SMTP("127.0.0.1", daemon.smtp_port, timeout=30)
                )
                with client, contextlib.suppress(smtplib.SMTPResponseException):
                    client.sendmail("x@customer.test", ["support@example.com"], raw)
                    refused[message_id] = 250
                refused.setdefault(message_id, 451)
            assert set(refused.values()) == {451}, refused
            filler.unlink()
            for raw in mails.values():  # each sender tries again
                with smtplib.SMTP("127.0.0.1", daemon.smtp_port, timeout=30) as again:
                    again.sendmail("x@customer.test", ["support@example.com"], raw)
            relay.wait_for(lambda got: len({x.rcpt_tos[0] for x in got}) == len(mails), 60)
            db = Database(f"sqlite:///{work / 'data' / 'maildesk.sqlite3'}")
            try:
                with db.transaction() as session:
                    stored = session.scalars(select(Intake.header_message_id)).all()
            finally:
                db.dispose()
            assert sorted(stored) == sorted(mails)  # each once
            assert daemon.proc is not None and daemon.proc.poll() is None
        finally:
            assert daemon.terminate() == 0
            relay.stop()
