"""The daily retention job: tickets closed longer ago than ``retention.closed_ticket_days`` go.

Safe on several nodes at once without a lease: each ticket is deleted in a
transaction of its own that skips a ticket another node has locked, and is
re-checked once locked.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from apscheduler.schedulers.base import BaseScheduler

from maildesk.privacy.retention import purge

if TYPE_CHECKING:
    from maildesk.app import App

log = logging.getLogger("maildesk.privacy")
RETENTION_INTERVAL_SECONDS = 24 * 3600.0
FIRST_RUN_DELAY_SECONDS = 300.0  # after start, not in the rush of a restart


def apply_retention(app: App) -> int:
    """Delete the tickets past retention; errors are logged, never raised into the scheduler."""
    try:
        done = purge(
            app.db,
            app.settings.retention.closed_ticket_days,
            now=app.clock,
            actor=f"retention@{app.node_name}",
        )
    except Exception:
        log.exception("retention: not applied this time (tried again tomorrow)")
        return 0
    return done.tickets


def add_retention(scheduler: BaseScheduler, app: App) -> None:
    """Schedule the retention job (none when ``closed_ticket_days`` is 0, the default)."""
    if not app.settings.retention.closed_ticket_days:
        return
    scheduler.add_job(
        apply_retention,
        "interval",
        args=(app,),
        seconds=RETENTION_INTERVAL_SECONDS,
        id="retention",
        next_run_time=datetime.now(UTC) + timedelta(seconds=FIRST_RUN_DELAY_SECONDS),
        max_instances=1,
        coalesce=True,
    )
