"""A status changed by hand (``maildesk tickets set-status``) against the SLA sweep.

The command reads the ticket and writes the new status later; the sweep
closes (or auto-resolves) the same ticket in between. ``change_status`` is
wrapped so the sweep runs (in another thread, on its own connection) after
the command read the ticket and before it wrote it, as in test_sweep_race.
On SQLite the command's ``BEGIN IMMEDIATE`` holds the sweep off until it commits.
"""

from __future__ import annotations

import threading
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from maildesk import tickets
from maildesk.cli import main
from maildesk.db.models import Event, Outbox, Ticket, TicketStatus
from maildesk.sla.sweep import SweepResult
from maildesk.tickets import change_status
from tests.conftest import FrozenClock, write_cli_config
from tests.sla.slahelp import berlin, new_ticket, sla_app, sweeper


def _config(tmp_path: Path, database_url: str) -> Path:
    data_dir = tmp_path / "cli-data"
    return write_cli_config(tmp_path / "cli.toml", data_dir, database_url, secret="test-secret")


@pytest.mark.parametrize(
    ("before", "auto_close", "by_hand"),
    [
        (TicketStatus.RESOLVED, {"resolved_close_days": 2}, TicketStatus.OPEN),
        (TicketStatus.PENDING, {"pending_resolve_days": 2}, TicketStatus.RESOLVED),
    ],
)
def test_set_status_while_the_sweep_closes_the_ticket_is_one_or_the_other(
    tmp_path: Path,
    database_url: str,
    clock: FrozenClock,
    monkeypatch: pytest.MonkeyPatch,
    before: TicketStatus,
    auto_close: dict[str, int],
    by_hand: TicketStatus,
) -> None:
    app = sla_app(tmp_path, database_url, clock, {"auto_close": auto_close})
    ticket = new_ticket(app, clock, berlin(2026, 3, 2, 9, 0), message_id="h1@customer.test")
    clock.now = berlin(2026, 3, 2, 10, 0)
    with app.db.transaction() as session:
        t = session.get(Ticket, ticket.id)
        assert t is not None
        change_status(session, t, before, clock(), None, actor="test")
    clock.now = berlin(2026, 3, 4, 10, 1)  # the sweep's close (or auto-resolve) is due

    original = tickets.change_status
    done: list[SweepResult] = []
    runner: list[threading.Thread] = []

    def paused(
        session: Any, ticket: Ticket, status: TicketStatus, now: datetime, *a: Any, **kw: Any
    ) -> bool:
        if kw.get("actor") == "cli" and not runner:
            thread = threading.Thread(target=lambda: done.append(sweeper(app).run()))
            runner.append(thread)
            thread.start()
            thread.join(timeout=1.0)  # PostgreSQL: it finishes; SQLite: it waits for us
        return original(session, ticket, status, now, *a, **kw)

    monkeypatch.setattr(tickets, "change_status", paused)
    config = str(_config(tmp_path, database_url))
    command = ["tickets", "set-status", str(ticket.number), str(by_hand)]
    result = CliRunner().invoke(main, ["--config", config, *command], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert runner, "the sweep never ran"
    runner[0].join(timeout=60)
    assert done, "the sweep did not finish"

    with app.db.transaction() as session:
        t = session.get(Ticket, ticket.id)
        assert t is not None
        seen = (t.status, t.resolved_at is not None, t.closed_at is not None)
        history = [
            e.reason
            for e in session.scalars(
                select(Event).where(Event.ticket_id == ticket.id, Event.kind == "status")
            )
        ]
        notices = list(
            session.scalars(
                select(Outbox.purpose)
                .where(Outbox.purpose.in_(["auto_resolved", "resolved"]))
                .order_by(Outbox.id)
            )
        )
    # The hand change comes first (the sweep then has nothing to do) or second
    # (it changes the closed or resolved ticket): never both decided on the old status.
    resolved = by_hand is TicketStatus.RESOLVED
    assert seen == (by_hand, resolved, False), history
    starts = [h.split(" -> ")[0] for h in history]
    assert starts.count(str(before)) == 1, history
    # The customer hears of the resolution once.
    assert len(notices) == (1 if resolved else 0), notices
