"""The spam filter's background work in the daemon, never in the intake path.

* take the shared live model other nodes published, learn pending feedback,
  save and publish the model (every ``learn_interval_seconds``, and once more
  on shutdown, so nothing recorded is left unlearned);
* the daily digest of quarantined spam (when ``digest_to`` is set), and at
  start the one a daemon not running at ``digest_at`` missed;
* expiry of spam held longer than ``retention_days`` (hourly).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from apscheduler.schedulers.base import BaseScheduler
from apscheduler.triggers.cron import CronTrigger

from maildesk.db.database import is_unavailable
from maildesk.db.outage import Outage
from maildesk.shared_models import pull
from maildesk.spam.feedback import learn_pending
from maildesk.spam.quarantine import expire_spam, queue_digest
from maildesk.spam.scoring import ScorerSpec

if TYPE_CHECKING:
    from maildesk.app import App

log = logging.getLogger("maildesk.spam")
EXPIRE_INTERVAL_SECONDS = 3600.0


def take_shared_model(app: App) -> None:
    """Bring this node's copy of the live model up to date with the database's (at start)."""
    spec = ScorerSpec.from_settings(app.settings)
    if spec is None:
        return
    try:
        pull(app.db, spec.live_path)
    except Exception:
        log.exception("spam model: could not take the shared model; scoring with the local copy")


class SpamNotLearned(RuntimeError):
    """Pending feedback could not be learned this time (logged); it stays pending."""


def _learn(app: App) -> int:
    spec = ScorerSpec.from_settings(app.settings)
    if spec is None:
        return 0
    pull(app.db, spec.live_path)  # what other nodes learned
    learned = learn_pending(app.db, spec, app.clock, app.node_name)
    app.metrics.learned(learned)
    return learned


def learn_now(app: App) -> int:
    """Learn what feedback is pending.

    A failure is logged and raised as :class:`SpamNotLearned`, so the scheduler
    (and with it the job's last success in the metrics) sees the run failed.
    """
    try:
        return _learn(app)
    except Exception as exc:
        log.exception("spam feedback not learned this time (it stays pending)")
        raise SpamNotLearned(str(exc)) from exc


class ScheduledLearning:
    """:func:`learn_now` every interval, but a database or a disk that is away (a full
    disk cannot take the saved model) is said once and waited out with a growing
    delay, not a traceback each round. The feedback stays pending meanwhile.

    The service counts a round during either outage as no success (``outages``).
    """

    def __init__(self, app: App) -> None:
        self.app = app
        spec = ScorerSpec.from_settings(app.settings)
        where = f"the model file {spec.live_path}" if spec is not None else "the model file"
        self.database = Outage(log, "spam learning")
        self.disk = Outage(log, "spam learning", resource=where)

    @property
    def outages(self) -> tuple[Outage, ...]:
        return (self.database, self.disk)

    def __call__(self) -> int:
        if not (self.database.ready() and self.disk.ready()):
            return 0
        try:
            learned = _learn(self.app)
        except OSError as exc:  # the model file cannot be written: no room, no permission
            self.disk.failed(exc)
            return 0
        except Exception as exc:
            if not is_unavailable(exc):
                log.exception("spam feedback not learned this time (it stays pending)")
                raise SpamNotLearned(str(exc)) from exc
            self.database.failed(exc)
            return 0
        self.database.succeeded()
        self.disk.succeeded()
        return learned


def send_digest(app: App) -> bool:
    """Queue today's spam digest (the outbox sender sends it); True if one was queued."""
    with app.db.transaction() as session:
        row = queue_digest(session, app.settings, app.signer, app.renderer, app.clock())
    return row is not None


def expire(app: App) -> int:
    with app.db.transaction() as session:
        return expire_spam(session, app.clock(), app.settings.spam.retention_days)


def add_spam_learning(scheduler: BaseScheduler, app: App) -> ScheduledLearning | None:
    """Schedule the spam filter's jobs (none when the filter is off)."""
    spam = app.settings.spam
    if not spam.enabled:
        return None
    common = {"max_instances": 1, "coalesce": True}
    learning = ScheduledLearning(app)
    scheduler.add_job(
        learning,
        "interval",
        seconds=spam.learn_interval_seconds,
        id="spam-learn",
        **common,
    )
    if spam.digest_to:
        hour, minute = (int(part) for part in spam.digest_at.split(":"))
        trigger = CronTrigger(hour=hour, minute=minute, timezone=spam.digest_timezone)
        scheduler.add_job(
            send_digest,
            trigger,
            args=(app,),
            id="spam-digest",
            misfire_grace_time=6 * 3600,
            # Once at start too: a daemon down at digest_at sends the digest it
            # missed (the day's Message-ID keeps it to one digest a day).
            next_run_time=datetime.now(UTC),
            **common,
        )
    if spam.retention_days:
        scheduler.add_job(
            expire,
            "interval",
            args=(app,),
            seconds=EXPIRE_INTERVAL_SECONDS,
            id="spam-expire",
            next_run_time=datetime.now(UTC) + timedelta(seconds=30),
            **common,
        )
    return learning


def on_shutdown(app: App) -> None:
    """Learn what is still pending, so a restart loses nothing that was said."""
    if app.settings.spam.enabled:
        try:
            learned = learn_now(app)
        except SpamNotLearned:
            return  # logged; the next start learns it
        if learned:
            log.info("spam model saved on shutdown (%d message(s) learned)", learned)
