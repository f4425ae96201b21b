"""The daemon learns spam feedback in the background, never in the intake path."""

from __future__ import annotations

from typing import TYPE_CHECKING

from apscheduler.schedulers.base import BaseScheduler

from maildesk.spam.feedback import learn_pending
from maildesk.spam.scoring import ScorerSpec

if TYPE_CHECKING:
    from maildesk.app import App

LEARN_INTERVAL_SECONDS = 60.0


def add_spam_learning(scheduler: BaseScheduler, app: App) -> None:
    """Learn pending feedback every minute (and save the live model when there was any)."""
    spec = ScorerSpec.from_settings(app.settings)
    if spec is None:
        return
    scheduler.add_job(
        learn_pending,
        "interval",
        args=(app.db, spec, app.clock),
        seconds=LEARN_INTERVAL_SECONDS,
        id="spam-learn",
        max_instances=1,
        coalesce=True,
    )
