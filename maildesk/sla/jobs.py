"""The SLA sweep as a scheduler job: runs once at start (catch-up), then every interval."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

from apscheduler.schedulers.base import BaseScheduler

from maildesk.sla.sweep import SlaSweeper

if TYPE_CHECKING:
    from maildesk.app import App


def add_sla_jobs(scheduler: BaseScheduler, app: App) -> SlaSweeper | None:
    """Schedule the sweep (escalations and auto-close); None when SLA is switched off."""
    sla = app.settings.sla
    auto = sla.auto_close
    wanted = sla.policies or auto.resolved_close_days or auto.pending_resolve_days
    if not sla.enabled or not wanted:
        return None
    sweeper = SlaSweeper.for_app(app)
    scheduler.add_job(
        sweeper.run,
        "interval",
        seconds=sla.sweep_interval_seconds,
        id="sla",
        max_instances=1,
        coalesce=True,
        next_run_time=datetime.now(UTC),  # the catch-up sweep on start
    )
    return sweeper
