"""The daily digest when the daemon was not running at its hour."""

from __future__ import annotations

import time
from pathlib import Path

from sqlalchemy import select

from maildesk.app import App
from maildesk.db.models import Outbox
from maildesk.service import Daemon
from tests.conftest import FrozenClock, make_settings
from tests.mailfactory import deliver, make_mail


def digests(app: App) -> list[Outbox]:
    with app.db.transaction() as session:
        return list(session.scalars(select(Outbox).where(Outbox.purpose == "spam_digest")))


def test_a_daemon_started_after_the_digest_hour_sends_the_digest_it_missed(
    tmp_path: Path, database_url: str, clock: FrozenClock
) -> None:
    """Stopped over 07:00 (a deploy, a reboot), the daemon used to wait for tomorrow's
    07:00: the day's spam was listed in no digest at all, and expired unseen. Started
    again, it sends the digest it missed, once however often it is restarted."""
    spam = {"unsure_at": 0.0, "spam_at": 0.0, "digest_to": "postmaster@example.com"}
    app = App.build(make_settings(tmp_path, database_url, spam=spam), clock=clock)
    try:
        deliver(app, make_mail(subject="Cheap watches"))  # Monday 09:00: held
        clock.advance(days=1)  # Tuesday 09:00: the daemon starts (again)
        for _start in range(2):
            daemon = Daemon(app)
            daemon.start_scheduler()
            try:
                deadline = time.monotonic() + 15
                while not digests(app) and time.monotonic() < deadline:
                    time.sleep(0.1)
            finally:
                assert daemon.scheduler is not None
                daemon.scheduler.shutdown(wait=True)
        sent = [row.recipients for row in digests(app)]
        assert sent == [["postmaster@example.com"]]  # one digest, not none and not two
    finally:
        app.db.dispose()
