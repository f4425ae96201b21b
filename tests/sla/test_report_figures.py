"""`maildesk report` JSON over two weeks of varied tickets, every figure worked out by hand.

Calendar Mon–Fri 10:00–19:00 Europe/Berlin (CET, UTC+1 in March 2026); the
period is Mon 2 – Sun 15 March 2026 (ISO weeks 10 and 11), asked for on
Mon 16 March at 12:00 Berlin. The tickets: answered, breached, paused,
resolved, reopened and resolved again by a colleague, one merged away, one
without a policy, one created at 00:30 Berlin (the previous day in UTC),
replies from an agent's second address and from a stranger, and tickets
before and after the period that are still open.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, event, text

from maildesk.app import App
from maildesk.cli import main
from maildesk.config import load_settings
from maildesk.db.models import Event, Rating, Ticket, TicketStatus
from maildesk.tickets import change_status, merge_tickets
from tests.conftest import FrozenClock, private_pg_database
from tests.sla.slahelp import agent_reply, berlin, customer_message, new_ticket

CONFIG = """
data_dir = "{data}"
database_url = "{url}"
support_addresses = ["support@example.com", "billing@example.com"]
mail_domain = "example.com"
installation_secret = "test-secret"

[[agents]]
name = "bob"
addresses = ["bob@example.com"]
[[agents]]
name = "carol"
addresses = ["carol@example.com", "carol@help.example.com"]
[[agents]]
name = "dave"
addresses = ["dave@example.com"]

[calendars.office]
timezone = "Europe/Berlin"
hours = {{ mon = "10:00-19:00", tue = "10:00-19:00", wed = "10:00-19:00", thu = "10:00-19:00", fri = "10:00-19:00" }}

[sla]
[[sla.policies]]
name = "standard"
first_response = {{ minutes = 240, calendar = "office" }}
resolution = {{ minutes = 1440, calendar = "office" }}
[[sla.policies]]
name = "fast"
first_response = {{ minutes = 60, calendar = "office" }}
next_response = {{ minutes = 120, calendar = "office" }}
[[sla.rules]]
category = "billing"
policy = "fast"
[[sla.rules]]
domain = "customer.test"
policy = "standard"
"""
PERIOD = ["--from", "2026-03-02", "--to", "2026-03-15", "--now", "2026-03-16T11:00:00"]
NOW = berlin(2026, 3, 16, 12, 0)


def status(
    app: App, clock: FrozenClock, ticket_id: int, at: datetime, to: TicketStatus, actor: str
) -> None:
    clock.now = at
    with app.db.transaction() as session:
        ticket = session.get_one(Ticket, ticket_id)
        change_status(session, ticket, to, at, None, actor=actor)


def build(app: App, clock: FrozenClock) -> dict[str, int]:
    """The tickets, by name; returns their numbers."""
    made: dict[str, int] = {}

    def ticket(
        name: str,
        at: datetime,
        mailbox: str | None,
        category: str | None,
        assignee: str | None,
        sender: str = "alice@customer.test",
    ) -> int:
        t = new_ticket(app, clock, at, subject=f"Case {name}", sender=sender)
        with app.db.transaction() as session:
            row = session.get_one(Ticket, t.id)
            row.category, row.assignee = category, assignee
            row.support_addresses = [f"{mailbox}@example.com"] if mailbox else []
            made[name] = t.id
        return t.id

    before = ticket("before", berlin(2026, 2, 27, 10, 0), "support", None, "carol")
    t0 = ticket("t0", berlin(2026, 3, 2, 10, 0), "support", None, "bob")
    agent_reply(app, t0, berlin(2026, 3, 2, 11, 0), "bob@example.com")
    status(app, clock, t0, berlin(2026, 3, 3, 12, 0), TicketStatus.RESOLVED, "agent:bob")
    t1 = ticket("t1", berlin(2026, 3, 2, 18, 0), "billing", "billing", "carol")
    agent_reply(app, t1, berlin(2026, 3, 3, 11, 30), "carol@example.com")
    customer_message(app, t1, berlin(2026, 3, 4, 10, 0))
    agent_reply(app, t1, berlin(2026, 3, 4, 11, 0), "carol@help.example.com")
    t2 = ticket("t2", berlin(2026, 3, 3, 10, 15), "support", None, "bob")
    agent_reply(app, t2, berlin(2026, 3, 3, 10, 45), "bob@example.com")
    status(app, clock, t2, berlin(2026, 3, 4, 10, 0), TicketStatus.PENDING, "agent:bob")
    status(app, clock, t2, berlin(2026, 3, 5, 16, 0), TicketStatus.OPEN, "customer")
    status(app, clock, t2, berlin(2026, 3, 6, 17, 0), TicketStatus.RESOLVED, "auto-close")
    status(app, clock, t2, berlin(2026, 3, 9, 9, 0), TicketStatus.OPEN, "customer")
    with app.db.transaction() as session:
        session.get_one(Ticket, t2).assignee = "dave"
    status(app, clock, t2, berlin(2026, 3, 10, 12, 0), TicketStatus.RESOLVED, "agent:dave")
    t3 = ticket("t3", berlin(2026, 3, 5, 0, 30), "billing", "billing", "bob")
    agent_reply(app, t3, berlin(2026, 3, 5, 10, 20), "bob@example.com")
    ticket("t4", berlin(2026, 3, 5, 14, 0), "support", None, "carol")
    t5 = ticket("t5", berlin(2026, 3, 6, 12, 0), "support", "hardware", "dave")
    agent_reply(app, t5, berlin(2026, 3, 6, 18, 59), "dave@example.com")
    status(app, clock, t5, berlin(2026, 3, 6, 19, 30), TicketStatus.RESOLVED, "agent:dave")
    t6 = ticket("t6", berlin(2026, 3, 9, 10, 0), "support", "hardware", "bob", "eve@elsewhere.test")
    agent_reply(app, t6, berlin(2026, 3, 9, 11, 0), "helper@partner.test")
    with app.db.transaction() as session:  # as maildesk recorded it before it kept the assignee
        data = {"from": "open", "to": "resolved", "actor": "cli"}
        at = berlin(2026, 3, 9, 12, 0)
        session.add(Event(at=at, kind="status", reason="resolved", ticket_id=t6, data=data))
    t7 = ticket("t7", berlin(2026, 3, 10, 11, 0), "support", None, "carol")
    clock.now = berlin(2026, 3, 10, 11, 30)
    with app.db.transaction() as session:
        merge_tickets(
            session, session.get_one(Ticket, t7), session.get_one(Ticket, t0), clock.now,
            reason="same printer",
        )  # fmt: skip
    t8 = ticket("t8", berlin(2026, 3, 12, 10, 0), "billing", None, "bob")
    agent_reply(app, t8, berlin(2026, 3, 12, 10, 30), "Bob@Example.com")
    status(app, clock, t8, berlin(2026, 3, 12, 11, 0), TicketStatus.PENDING, "agent:bob")
    ticket("t9", berlin(2026, 3, 13, 18, 30), None, None, None)
    ticket("after", berlin(2026, 3, 16, 9, 0), "support", None, "bob")
    with app.db.transaction() as session:
        for name, score, at in (
            ("t0", 2, berlin(2026, 3, 4, 12, 0)),
            ("t0", 5, berlin(2026, 3, 4, 13, 0)),  # the customer changed their mind
            ("t5", 4, berlin(2026, 3, 7, 9, 0)),
            ("t2", 1, berlin(2026, 3, 1, 12, 0)),  # before the period
            ("t1", 3, berlin(2026, 3, 16, 9, 0)),  # after it
        ):
            session.add(Rating(ticket_id=made[name], score=score, contact="c@x.org", created_at=at))
    clock.now = NOW
    with app.db.transaction() as session:
        numbers = {name: session.get_one(Ticket, tid).number for name, tid in made.items()}
    assert before and all(n is not None for n in numbers.values())
    return {name: int(n) for name, n in numbers.items() if n is not None}


def utc(*args: int) -> str:
    return datetime(*args, tzinfo=UTC).isoformat()  # type: ignore[misc]


def expected(numbers: dict[str, int]) -> dict[str, Any]:
    """Every figure, worked out by hand from the cases in :func:`build` (minutes of office time)."""
    # First responses met: t0 60 (10:00-11:00), t2 30, t5 419 (12:00-18:59), t8 30;
    # fast: t1 150 (Mon 18-19 and Tue 10-11:30), t3 20 (opens 10:00, answered 10:20).
    # Resolutions met: t0 660 (Mon 540 + Tue 120), t5 420 (closed after 19:00),
    # t2 1785: Tue 525, paused Wed-Thu 16:00, Thu 180 + Fri 420, reopened Mon 540 + Tue 120.
    frt = {"p50": 30.0, "p75": 150.0, "p90": 419.0, "p95": 419.0}  # of 20 30 30 60 150 419
    res = {"p50": 660.0, "p75": 1785.0, "p90": 1785.0, "p95": 1785.0}  # of 420 660 1785
    standard = {
        "policy": "standard",
        "tickets": 6,  # t0 t2 t4 t5 t8 t9
        "targets": 12,
        "breached": 4,  # t2 resolution, t4 both (never answered), t5 first response
        "breach_rate": 4 / 12,
        # first responses 30 30 60 419
        **{f"frt_{k}": v for k, v in zip(frt, (30.0, 60.0, 419.0, 419.0), strict=True)},
        **{f"resolution_{k}": v for k, v in res.items()},
    }
    fast = {
        "policy": "fast",
        "tickets": 2,  # t1 t3
        "targets": 3,  # t1: first and one next response (60 of 120); t3: first response
        "breached": 1,  # t1's first response
        "breach_rate": 1 / 3,
        # first responses 20 150
        **{f"frt_{k}": v for k, v in zip(frt, (20.0, 150.0, 150.0, 150.0), strict=True)},
        **{f"resolution_{k}": None for k in ("p50", "p75", "p90", "p95")},
    }

    def late(name: str, target: str, due: str, over: float, assignee: str) -> dict[str, Any]:
        subject = f"Case {name}"
        return {"number": numbers[name], "subject": subject, "policy": "standard",
                "target": target, "due_at": due, "over_minutes": over, "assignee": assignee}  # fmt: skip

    # Office minutes by now: "before" 540 + 2 x 2700 + 120 = 6060; t4 300 + 540 + 2700 + 120 = 3660.
    overdue = [
        late("before", "first_response", utc(2026, 2, 27, 13, 0), 6060 - 240.0, "carol"),
        late("before", "resolution", utc(2026, 3, 3, 15, 0), 6060 - 1440.0, "carol"),
        late("t4", "first_response", utc(2026, 3, 5, 17, 0), 3660 - 240.0, "carol"),
        late("t4", "resolution", utc(2026, 3, 10, 10, 0), 3660 - 1440.0, "carol"),
    ]
    buckets = {"<=30": 3, "<=60": 1, "<=120": 0, "<=240": 1, "<=480": 1, "<=960": 0}
    sla = {
        "first_response_minutes": {"count": 6, **frt},
        "resolution_minutes": {"count": 3, **res},
        "policies": [fast, standard],
        "backlog": 8,  # before t1 t3 t4 t6 t8 (pending) t9 after
        "overdue": overdue,
        "frt_distribution": [{"bucket": b, "tickets": n} for b, n in buckets.items()]
        + [{"bucket": "<=1920", "tickets": 0}, {"bucket": ">1920", "tickets": 0}],
        # Met but late: the week it started (t1, t2, t5); still late: the week it fell due.
        "breaches_per_week": [
            {"week": "2026-W10", "breaches": 4},
            {"week": "2026-W11", "breaches": 1},
        ],
        "tickets": 9,  # t0-t9 but the merged t7
        "without_policy": 1,  # t6: not billing, not from customer.test
    }
    agents = [
        {"agent": "bob", "open_assigned": 4, "replies": 4, "tickets_answered": 4, "resolved": 3},  # t0 t2 t6
        {"agent": "carol", "open_assigned": 3, "replies": 2, "tickets_answered": 1, "resolved": 0},
        {"agent": "dave", "open_assigned": 0, "replies": 1, "tickets_answered": 1, "resolved": 2},
        {"agent": "helper@partner.test", "open_assigned": 0, "replies": 1,
         "tickets_answered": 1, "resolved": 0},
    ]  # fmt: skip
    categories = [
        {"category": "(none)", "tickets": 5},
        {"category": "billing", "tickets": 2},
        {"category": "hardware", "tickets": 2},
    ]
    # UTC days: t3 (00:30 Berlin on the 5th) counts on the 4th; t7 was merged away.
    per_day = {2: 2, 3: 1, 4: 1, 5: 1, 6: 1, 9: 1, 12: 1, 13: 1}
    volume = {
        "tickets": 9,
        "per_day": [
            {"day": f"2026-03-{d:02d}", "tickets": per_day.get(d, 0)} for d in range(2, 16)
        ],
        "per_mailbox": [
            {"mailbox": "-", "tickets": 1},
            {"mailbox": "billing@example.com", "tickets": 3},
            {"mailbox": "support@example.com", "tickets": 5},
        ],
        "ratings": {
            "tickets_rated": 2,
            "average": 4.5,
            "per_score": [{"score": 4, "tickets": 1}, {"score": 5, "tickets": 1}],
        },
    }
    return {"sla": sla, "agents": agents, "categories": categories, "volume": volume}


def test_each_report_gives_the_figures_worked_out_by_hand(
    tmp_path: Path, database_url: str, clock: FrozenClock
) -> None:
    config = tmp_path / "maildesk.toml"
    config.write_text(CONFIG.format(data=tmp_path / "data", url=database_url), encoding="utf-8")
    app = App.build(load_settings(str(config)), clock=clock)
    want = expected(build(app, clock))
    app.db.dispose()
    for kind, section in want.items():
        result = CliRunner().invoke(
            main, ["--config", str(config), "report", kind, *PERIOD, "--format", "json"]
        )
        assert result.exit_code == 0, (result.output, result.exception)
        report = json.loads(result.output)
        assert report == {
            "report": kind,
            "from": utc(2026, 3, 2),
            "to": utc(2026, 3, 16),
            "generated_at": utc(2026, 3, 16, 11, 0),
            kind: section,
        }
        # The same text: key order, and a minute count stays a float ("60.0") and a count an int.
        assert json.dumps(report[kind]) == json.dumps(section), kind


@pytest.mark.postgres
def test_a_months_report_reads_only_that_month_on_postgres(tmp_path: Path) -> None:
    """Five years of tickets: a month's report finds its tickets, replies and status
    changes by index, never reading a big table whole (seconds at a million tickets)."""
    n = 20_000
    with private_pg_database("maildesk_report_plans") as url:
        engine = create_engine(url)
        with engine.begin() as conn:
            for statement in (
                "INSERT INTO tickets (id, number, subject, normalized_subject, status, priority,"
                " assignee, created_at, updated_at, support_addresses, tags, possible_spam)"
                " SELECT g, g, 's', 's' || g, CASE WHEN g > :n - 100 THEN 'open' ELSE 'closed' END,"
                " 'normal', 'agent' || g % 7, ts, ts, '[\"support@example.com\"]', '[]', false"
                " FROM (SELECT g, now() - interval '5 years' * (1 - g::float8 / :n) AS ts"
                " FROM generate_series(1, :n) g) s",
                "INSERT INTO messages (id, ticket_id, dedupe_key, direction, kind, from_addr,"
                " from_name, to_addrs, cc_addrs, delivered_to, subject, text_body, created_at)"
                " SELECT g, 1 + g % :n, '<' || g || '@x>', 'outbound', 'agent_reply', 'a@x', '',"
                " '[]', '[]', '[]', 's', 'b', now() - interval '5 years' * (1 - g::float8 / (2 * :n))"
                " FROM generate_series(1, 2 * :n) g",
                "INSERT INTO events (id, at, kind, ticket_id, reason, data)"
                " SELECT g, now() - interval '5 years' * (1 - g::float8 / (5 * :n)),"
                " (ARRAY['created','threaded','status','notified','assigned'])[1 + g % 5],"
                " 1 + g % :n, 'x', '{\"to\": \"resolved\"}' FROM generate_series(1, 5 * :n) g",
            ):
                conn.execute(text(statement), {"n": n})
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("ANALYZE"))
        config = tmp_path / "maildesk.toml"
        config.write_text(CONFIG.format(data=tmp_path / "data", url=url), encoding="utf-8")
        sent: list[tuple[str, Any]] = []

        def grab(conn: Any, cursor: Any, sql: str, params: Any, *_: Any) -> None:
            if sql.lstrip().upper().startswith(("SELECT", "WITH")) and "pg_catalog" not in sql:
                sent.append((sql, params))

        from sqlalchemy.engine import Engine

        event.listen(Engine, "before_cursor_execute", grab)
        try:
            for kind in ("sla", "agents", "categories", "volume"):
                result = CliRunner().invoke(main, ["--config", str(config), "report", kind])
                assert result.exit_code == 0, (result.output, result.exception)
        finally:
            event.remove(Engine, "before_cursor_execute", grab)
        assert sent
        whole: dict[str, str] = {}
        with engine.connect() as conn:
            for sql, params in sent:
                plan = "\n".join(r[0] for r in conn.exec_driver_sql(f"EXPLAIN {sql}", params))
                for table in ("tickets", "messages", "events"):
                    if f"Seq Scan on {table}" in plan:
                        whole[" ".join(sql.split())[:160]] = plan
        engine.dispose()
    assert whole == {}
