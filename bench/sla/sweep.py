"""How long one SLA sweep takes over N open tickets (SQLite or PostgreSQL).

Usage: .venv/bin/python bench/sla/sweep.py [N] [DATABASE_URL]
Tickets get a customer message each (half also an agent reply) and are
created over the previous two weeks; the sweep runs twice (first pass fires
escalations, second only recomputes).
"""

from __future__ import annotations

import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import insert

from maildesk.app import App
from maildesk.config import Settings
from maildesk.db.models import Message, Ticket
from maildesk.sla.sweep import SlaSweeper


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    tmp = Path(tempfile.mkdtemp())
    url = sys.argv[2] if len(sys.argv) > 2 else f"sqlite:///{tmp / 'bench.sqlite3'}"
    now = datetime(2026, 3, 9, 12, tzinfo=UTC)
    settings = Settings.model_validate(
        {
            "data_dir": tmp,
            "database_url": url,
            "installation_secret": "bench",
            "agents": [{"name": "bob", "addresses": ["bob@example.com"]}],
            "calendars": {
                "office": {
                    "timezone": "Europe/Berlin",
                    "hours": {d: "10:00-19:00" for d in ("mon", "tue", "wed", "thu", "fri")},
                    "holidays": {"country": "DE"},
                }
            },
            "sla": {
                "default_policy": "p",
                "policies": [
                    {
                        "name": "p",
                        "first_response": {"minutes": 240, "calendar": "office"},
                        "next_response": {"minutes": 480, "calendar": "office"},
                        "resolution": {"minutes": 2700, "calendar": "office"},
                    }
                ],
            },
        }
    )
    app = App.build(settings, clock=lambda: now)
    app.db.upgrade()
    with app.db.transaction() as session:
        tickets = [
            {
                "id": i,
                "number": i,
                "subject": f"t{i}",
                "created_at": now - timedelta(minutes=7 * i % 20000),
                "updated_at": now,
                "assignee": "bob",
            }
            for i in range(1, n + 1)
        ]
        session.execute(insert(Ticket), tickets)
        messages = [
            {
                "ticket_id": t["id"],
                "dedupe_key": f"m{t['id']}-{k}",
                "direction": "inbound",
                "kind": kind,
                "created_at": t["created_at"] + timedelta(minutes=90 * k),
            }
            for t in tickets
            for k, kind in enumerate(("customer", "agent_reply")[: 1 + t["id"] % 2])
        ]
        session.execute(insert(Message), messages)
    sweeper = SlaSweeper.for_app(app)
    for label in ("first pass (fires escalations)", "second pass (recompute only)"):
        start = time.perf_counter()
        result = sweeper.run()
        took = time.perf_counter() - start
        print(
            f"{label}: {n} tickets, {result.fired} fired, {took:.2f} s ({n / took:.0f} tickets/s)"
        )
    app.db.dispose()


if __name__ == "__main__":
    main()
