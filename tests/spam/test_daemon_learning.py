"""The real daemon keeps what it learned across a restart; spam sends nothing through it."""

from __future__ import annotations

import smtplib
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
from sqlalchemy import select

from maildesk.db.database import Database
from maildesk.db.models import Event, Intake, IntakeState, Outbox
from maildesk.spam.feedback import SpamLabel, record_feedback
from maildesk.spam.model import SpamFilter
from maildesk.spam.scoring import SEED_MODEL
from tests.daemon_harness import DaemonProcess, RelaySink
from tests.mailfactory import make_mail

pytestmark = pytest.mark.slow
T = TypeVar("T")


def send(daemon: DaemonProcess, raw: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", daemon.smtp_port) as client:
        client.sendmail("alice@customer.test", ["support@example.com"], raw)


def eventually(probe: Callable[[], T | None], what: str, timeout: float = 60) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = probe()
        if found is not None:
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def spam_event(db: Database, message_id: str) -> Event | None:
    with db.transaction() as session:
        intake = session.scalars(
            select(Intake).where(Intake.header_message_id == message_id)
        ).first()
        if intake is None or intake.state not in (IntakeState.DONE, IntakeState.QUARANTINED):
            return None
        return session.scalars(
            select(Event).where(Event.intake_id == intake.id, Event.kind == "spam")
        ).first()


def test_what_the_daemon_learned_survives_a_restart(tmp_path: Path, relay: RelaySink) -> None:
    seed = SpamFilter.load(SEED_MODEL)
    live = tmp_path / "data" / "spam-model.npz"
    daemon = DaemonProcess(tmp_path, relay_port=relay.port).start()
    db = Database(f"sqlite:///{tmp_path / 'data' / 'maildesk.sqlite3'}")
    try:
        send(daemon, make_mail(message_id="first@customer.test", subject="Cannot log in"))
        first = eventually(lambda: spam_event(db, "first@customer.test"), "the first message")
        assert first.data["model"] == "seed" and first.data["model_version"] == seed.seen
        relay.wait_for(lambda got: len(got) == 1)  # its acknowledgement
        # An agent says it was spam (the way #spam and IMAP Junk moves record it) ...
        with db.transaction() as session:
            intake_id = session.scalars(select(Intake.id)).one()
            record_feedback(
                session, intake_id=intake_id, label=SpamLabel.SPAM, source="agent", actor="bob"
            )
        # ... and the daemon stops before its next learning round: it learns on the way out.
        assert daemon.terminate() == 0
        assert "spam model saved on shutdown" in daemon.log()
        assert SpamFilter.load(live).trained_spam == seed.trained_spam + 1

        # Restarted, now strict enough that everything new is spam.
        daemon.extra_config = "[spam]\nunsure_at = 0.0\nspam_at = 0.0\n"
        daemon.start()
        send(daemon, make_mail(message_id="second@customer.test", subject="Hot deals"))
        second = eventually(lambda: spam_event(db, "second@customer.test"), "the second message")
        assert second.data["model"] == "live"
        assert second.data["model_version"] == seed.seen + 1
        assert second.data["band"] == "spam"
        with db.transaction() as session:
            held = session.scalars(
                select(Intake).where(Intake.header_message_id == "second@customer.test")
            ).one()
            assert held.state is IntakeState.QUARANTINED
            assert len(session.scalars(select(Outbox)).all()) == 1  # only the first ack
        status = daemon.cli("spam", "status")
        assert f"version: {seed.seen + 1}" in status
        assert f"trained: {seed.trained_spam + 1} spam" in status
        assert "1 spam learned" in status and "0 pending" in status
        assert daemon.terminate() == 0
        assert len(relay.received) == 1
    finally:
        db.dispose()
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.kill()
