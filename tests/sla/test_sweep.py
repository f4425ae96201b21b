"""The SLA sweep over stored tickets: due times, exactly-once escalation, catch-up.

Calendar: Mon–Fri 10:00–19:00 Europe/Berlin. Fri 6 March 2026 is a Friday
(CET, UTC+1); Mon 9 and Tue 10 March are working days.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import delete, event, func, select

from maildesk.db.models import (
    Event,
    Outbox,
    SlaEscalation,
    SlaTargetRow,
    Ticket,
    TicketStatus,
    Watcher,
)
from maildesk.routing.waiting import WaitingAssigner
from maildesk.sla.calendar import BusinessCalendar, CalendarConfig
from tests.conftest import FrozenClock
from tests.sla.slahelp import (
    AGENTS,
    OFFICE,
    agent_reply,
    berlin,
    new_ticket,
    set_status,
    sla_app,
    sweeper,
    target_row,
)

CAL = BusinessCalendar(CalendarConfig.model_validate(OFFICE))


def _set(app, ticket_id: int, **values: object) -> None:  # type: ignore[no-untyped-def]
    with app.db.transaction() as session:
        ticket = session.get(Ticket, ticket_id)
        for key, value in values.items():
            setattr(ticket, key, value)


def _all_mail(app) -> list[tuple[int | None, str, list[str]]]:  # type: ignore[no-untyped-def]
    with app.db.transaction() as session:
        rows = session.execute(
            select(Outbox.ticket_id, Outbox.purpose, Outbox.recipients).order_by(Outbox.id)
        ).all()
    return [(t, p, list(r)) for t, p, r in rows]


def _sla_mail(app) -> list[tuple[int | None, str, list[str]]]:  # type: ignore[no-untyped-def]
    return [row for row in _all_mail(app) if row[1].startswith("sla_")]


def _purposes_to(app, address: str) -> list[str]:  # type: ignore[no-untyped-def]
    return [p for _, p, r in _all_mail(app) if address in r]


def test_friday_evening_ticket_is_due_monday(
    tmp_path: Path, database_url: str, clock: FrozenClock
) -> None:
    app = sla_app(tmp_path, database_url, clock)
    ticket = new_ticket(app, clock, berlin(2026, 3, 6, 18, 30))
    clock.now = berlin(2026, 3, 6, 18, 45)
    sweeper(app).run()
    row = target_row(app, ticket.id, "first_response")
    assert row.policy == "standard"
    # 30 minutes on Friday, 3 h 30 on Monday from 10:00.
    assert row.due_at == berlin(2026, 3, 9, 13, 30)
    assert row.status == "running"


def test_pending_moves_the_due_time_by_the_paused_business_time(
    tmp_path: Path, database_url: str, clock: FrozenClock
) -> None:
    app = sla_app(tmp_path, database_url, clock)
    ticket = new_ticket(app, clock, berlin(2026, 3, 6, 18, 30))
    clock.now = berlin(2026, 3, 9, 11, 0)
    sweeper(app).run()
    before = target_row(app, ticket.id, "resolution").due_at
    set_status(app, ticket.id, TicketStatus.PENDING, notify=True)
    sweeper(app).run()
    assert target_row(app, ticket.id, "resolution").status == "paused"
    clock.now = berlin(2026, 3, 10, 11, 0)
    set_status(app, ticket.id, TicketStatus.OPEN, notify=True)
    sweeper(app).run()
    after = target_row(app, ticket.id, "resolution").due_at
    paused = CAL.business_time_between(berlin(2026, 3, 9, 11), berlin(2026, 3, 10, 11))
    assert paused == timedelta(hours=9)
    assert before is not None and after is not None
    assert CAL.business_time_between(before, after) == paused
    assert target_row(app, ticket.id, "first_response").due_at == berlin(2026, 3, 10, 13, 30)


def test_changing_priority_recomputes_through_the_rules(
    tmp_path: Path, database_url: str, clock: FrozenClock
) -> None:
    sla = {
        "default_policy": "standard",
        "policies": [
            {"name": "standard", "first_response": {"minutes": 240, "calendar": "office"}},
            {"name": "urgent", "first_response": {"minutes": 60, "basis": "calendar"}},
            {"name": "coupon", "first_response": {"minutes": 30, "basis": "calendar"}},
        ],
        "rules": [
            {"priority": "urgent", "policy": "urgent"},
            {"subject_token": "VIP-2026", "policy": "coupon"},
        ],
    }
    app = sla_app(tmp_path, database_url, clock, sla)
    ticket = new_ticket(app, clock, berlin(2026, 3, 6, 18, 30))
    coupon = new_ticket(app, clock, berlin(2026, 3, 6, 18, 30), subject="Help [vip-2026]")
    sweeper(app).run()
    assert target_row(app, ticket.id, "first_response").due_at == berlin(2026, 3, 9, 13, 30)
    assert target_row(app, coupon.id, "first_response").due_at == berlin(2026, 3, 6, 19, 0)
    _set(app, ticket.id, priority="urgent")
    sweeper(app).run()
    row = target_row(app, ticket.id, "first_response")
    assert (row.policy, row.due_at) == ("urgent", berlin(2026, 3, 6, 19, 30))


def test_downtime_over_a_weekend_fires_every_due_escalation_once_marking_late_ones(
    tmp_path: Path, database_url: str, clock: FrozenClock
) -> None:
    app = sla_app(tmp_path, database_url, clock)
    # 4 h first response, warning at 80 % = 3 h 12.
    a = new_ticket(app, clock, berlin(2026, 3, 6, 15, 0), subject="A")  # warn Fri 18:12, due 19:00
    c = new_ticket(app, clock, berlin(2026, 3, 6, 16, 0), subject="C")  # warn Mon 10:12, due 11:00
    clock.now = berlin(2026, 3, 6, 17, 0)
    assert sweeper(app).run().fired == 0
    # The daemon stops here (mail still arrives through the MTA) and is back Monday noon.
    b = new_ticket(app, clock, berlin(2026, 3, 6, 18, 30), subject="B")  # warn Mon 12:42, due 13:30
    assert len({a.id, b.id, c.id}) == 3
    for t in (a, b, c):
        _set(app, t.id, assignee="bob")
    clock.now = berlin(2026, 3, 9, 12, 0)
    first = sweeper(app).run()
    assert (first.fired, first.late) == (4, 4)
    assert sorted((t, p) for t, p, _ in _sla_mail(app)) == sorted(
        [(a.id, "sla_warning"), (a.id, "sla_breach"), (c.id, "sla_warning"), (c.id, "sla_breach")]
    )
    # Again at once, and after a "restart" (a new sweeper): nothing more.
    assert sweeper(app).run().fired == 0
    clock.now = berlin(2026, 3, 9, 12, 45)  # 3 minutes after b's warning: on time
    assert (sweeper(app).run().fired, sweeper(app).run().fired) == (1, 0)
    clock.now = berlin(2026, 3, 9, 13, 31)
    assert sweeper(app).run().late == 0
    mail = _sla_mail(app)
    assert len(mail) == 6 and all(r == ["bob@example.com"] for _, _, r in mail)
    with app.db.transaction() as session:
        ledger = {
            (e.ticket_id, e.level): (e.late, e.due_at)
            for e in session.scalars(select(SlaEscalation))
        }
    assert ledger == {
        (a.id, "warning"): (True, berlin(2026, 3, 6, 18, 12)),
        (a.id, "breach"): (True, berlin(2026, 3, 6, 19, 0)),
        (c.id, "warning"): (True, berlin(2026, 3, 9, 10, 12)),
        (c.id, "breach"): (True, berlin(2026, 3, 9, 11, 0)),
        (b.id, "warning"): (False, berlin(2026, 3, 9, 12, 42)),
        (b.id, "breach"): (False, berlin(2026, 3, 9, 13, 30)),
    }


def test_breach_actions_raise_reassign_watch_and_notify_the_lead(
    tmp_path: Path, database_url: str, clock: FrozenClock
) -> None:
    sla = {
        "default_policy": "standard",
        "policies": [
            {
                "name": "standard",
                "warning_share": None,
                "first_response": {"minutes": 60, "calendar": "office"},
                "breach": {
                    "notify": ["assignee", "lead"],
                    "raise_priority": True,
                    "reassign_to_group": "escalates_to",
                    "add_watchers": ["carol"],
                },
            }
        ],
    }
    app = sla_app(tmp_path, database_url, clock, sla)
    ticket = new_ticket(app, clock, berlin(2026, 3, 9, 10, 0))
    _set(app, ticket.id, assignee="bob", group="l1")
    clock.now = berlin(2026, 3, 9, 11, 1)
    assert sweeper(app).run().fired == 1
    with app.db.transaction() as session:
        t = session.get(Ticket, ticket.id)
        assert t is not None
        # Assigned within the new group by its strategy, as an escalation is.
        assert (str(t.priority), t.group, t.assignee) == ("high", "l2", "dave")
        watchers = session.scalars(select(Watcher.agent).where(Watcher.ticket_id == t.id)).all()
        assigned = session.scalars(
            select(Event.reason).where(Event.ticket_id == t.id, Event.kind == "assigned")
        ).all()
    assert watchers == ["carol"]
    assert assigned[-1].startswith("assigned to dave")
    # The assignee and lead when it breached, and the lead (and new assignee) of the
    # group it went to: dave gets the breach notice, not a second "assigned" one.
    assert sorted(r[0] for _, _, r in _sla_mail(app)) == [
        "bob@example.com",
        "carol@example.com",
        "dave@example.com",
    ]
    assert _purposes_to(app, "dave@example.com") == ["sla_breach"]
    assert sweeper(app).run().fired == 0


def test_a_breach_reassignment_to_a_group_nobody_can_take_waits_there(
    tmp_path: Path, database_url: str, clock: FrozenClock
) -> None:
    """dave (l2) is off shift: the ticket waits in l2, and the waiting job gives it to him."""
    agents = [dict(a) for a in AGENTS]
    agents[2] = {**agents[2], "timezone": "Europe/Berlin", "hours": {"tue": "09:00-17:00"}}
    sla = {
        "default_policy": "standard",
        "policies": [
            {
                "name": "standard",
                "warning_share": None,
                "first_response": {"minutes": 60, "calendar": "office"},
                "breach": {"reassign_to_group": "l2"},
            }
        ],
    }
    app = sla_app(tmp_path, database_url, clock, sla, agents)
    ticket = new_ticket(app, clock, berlin(2026, 3, 9, 10, 0))
    _set(app, ticket.id, assignee="bob", group="l1")
    clock.now = berlin(2026, 3, 9, 11, 1)
    assert sweeper(app).run().fired == 1
    with app.db.transaction() as session:
        t = session.get(Ticket, ticket.id)
        assert t is not None
        assert (t.group, t.assignee) == ("l2", None)
    assert _purposes_to(app, "dave@example.com") == []
    clock.now = berlin(2026, 3, 10, 9, 0)
    assert [a.agent for a in WaitingAssigner.for_app(app).run()] == ["dave"]
    assert _purposes_to(app, "dave@example.com") == ["assigned"]


def test_notifications_wait_for_the_recipients_working_hours(
    tmp_path: Path, database_url: str, clock: FrozenClock
) -> None:
    agents = [dict(a) for a in AGENTS]
    agents[0] = {**agents[0], "timezone": "Europe/Berlin", "hours": {"mon": "08:00-12:00"}}
    sla = {
        "default_policy": "p",
        "hold_until_working_hours": True,
        "policies": [
            {
                "name": "p",
                "warning_share": None,
                "first_response": {"minutes": 30, "basis": "calendar"},
            }
        ],
    }
    app = sla_app(tmp_path, database_url, clock, sla, agents)
    ticket = new_ticket(app, clock, berlin(2026, 3, 6, 18, 0))
    _set(app, ticket.id, assignee="bob")
    clock.now = berlin(2026, 3, 6, 18, 40)
    sweeper(app).run()
    with app.db.transaction() as session:
        row = session.scalars(select(Outbox).where(Outbox.purpose == "sla_breach")).one()
    assert row.next_attempt_at == berlin(2026, 3, 9, 8, 0)


def test_auto_close_reminds_resolves_with_a_notice_and_closes(
    tmp_path: Path, database_url: str, clock: FrozenClock
) -> None:
    sla = {
        "auto_close": {
            "pending_reminder_days": 3,
            "pending_resolve_days": 7,
            "resolved_close_days": 2,
        }
    }
    app = sla_app(tmp_path, database_url, clock, sla)
    ticket = new_ticket(app, clock, berlin(2026, 3, 2, 9, 0))
    clock.now = berlin(2026, 3, 2, 10, 0)
    set_status(app, ticket.id, TicketStatus.PENDING, notify=True)

    def purposes() -> list[str]:
        """The mail to the customer after the acknowledgement (the assignee's notice of
        the new ticket aside)."""
        with app.db.transaction() as session:
            return list(
                session.scalars(
                    select(Outbox.purpose)
                    .where(Outbox.purpose.not_in(("ack", "new_ticket")))
                    .order_by(Outbox.id)
                )
            )

    clock.now = berlin(2026, 3, 5, 9, 59)
    assert sweeper(app).run().auto_closed == 0
    clock.now = berlin(2026, 3, 5, 10, 0)
    assert sweeper(app).run().auto_closed == 1
    assert sweeper(app).run().auto_closed == 0
    assert purposes() == ["pending_reminder"]
    clock.now = berlin(2026, 3, 9, 10, 0)
    sweeper(app).run()
    with app.db.transaction() as session:
        t = session.get(Ticket, ticket.id)
        assert t is not None and t.status is TicketStatus.RESOLVED
    assert purposes() == ["pending_reminder", "auto_resolved"]
    clock.now = berlin(2026, 3, 11, 10, 1)
    sweeper(app).run()
    with app.db.transaction() as session:
        t = session.get(Ticket, ticket.id)
        assert t is not None and t.status is TicketStatus.CLOSED
        kinds = session.scalar(
            select(func.count()).where(SlaEscalation.ticket_id == ticket.id)  # type: ignore[arg-type]
        )
    assert kinds == 3
    assert purposes() == ["pending_reminder", "auto_resolved"]


def test_a_ticket_reopened_by_hand_after_auto_close_is_auto_closed_again(
    tmp_path: Path, database_url: str, clock: FrozenClock
) -> None:
    """Each resolution gets its own close: the first close must not stand for the next."""
    app = sla_app(tmp_path, database_url, clock, {"auto_close": {"resolved_close_days": 2}})
    ticket = new_ticket(app, clock, berlin(2026, 3, 2, 9, 0))
    clock.now = berlin(2026, 3, 2, 10, 0)
    set_status(app, ticket.id, TicketStatus.RESOLVED, notify=True)
    clock.now = berlin(2026, 3, 4, 10, 1)
    assert sweeper(app).run().auto_closed == 1
    # An agent reopens it (`#status open`, `maildesk tickets set-status`) and resolves it again.
    clock.now = berlin(2026, 3, 5, 9, 0)
    set_status(app, ticket.id, TicketStatus.OPEN, notify=True)
    clock.now = berlin(2026, 3, 5, 10, 0)
    set_status(app, ticket.id, TicketStatus.RESOLVED, notify=True)
    clock.now = berlin(2026, 3, 7, 9, 59)
    assert sweeper(app).run().auto_closed == 0
    clock.now = berlin(2026, 3, 7, 10, 1)
    assert sweeper(app).run().auto_closed == 1
    with app.db.transaction() as session:
        t = session.get(Ticket, ticket.id)
        assert t is not None and t.status is TicketStatus.CLOSED


def test_a_ticket_the_sweep_cannot_handle_does_not_stop_the_others(
    tmp_path: Path, database_url: str, clock: FrozenClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One ticket fails in the sweep (made to, here); every other ticket keeps its SLA."""
    from maildesk.sla.sweep import SlaSweeper

    app = sla_app(tmp_path, database_url, clock)
    broken = new_ticket(app, clock, berlin(2026, 3, 9, 10), message_id="b@x.test", subject="One")
    fine = new_ticket(app, clock, berlin(2026, 3, 9, 10), message_id="f@x.test", subject="Two")
    real_auto_close = SlaSweeper._auto_close

    def failing_for_one(self: SlaSweeper, session: object, history: object, now: object) -> int:
        if history.ticket.id == broken.id:  # type: ignore[attr-defined]
            raise RuntimeError("cannot handle this one")
        return real_auto_close(self, session, history, now)  # type: ignore[arg-type]

    monkeypatch.setattr(SlaSweeper, "_auto_close", failing_for_one)
    clock.now = berlin(2026, 3, 9, 10, 30)
    assert sweeper(app).run().tickets == 2
    assert target_row(app, fine.id, "first_response").status == "running"
    with app.db.transaction() as session:
        kept = session.scalars(select(SlaTargetRow).where(SlaTargetRow.ticket_id == broken.id))
        assert list(kept) == []


def test_a_pass_with_nothing_new_to_fire_costs_no_statements_per_ticket(
    tmp_path: Path, database_url: str, clock: FrozenClock
) -> None:
    """The sweep walks every open ticket every minute. Once their escalations have
    fired, a pass must not ask the database again per ticket (a ledger insert that
    does nothing, a savepoint, an INSERT per SLA row): at 20,000 open tickets that
    was some 60,000 statements a minute. Half the tickets here are answered (their
    rows have no due time), half are late (warning and breach fired)."""
    app = sla_app(tmp_path, database_url, clock)
    tickets = [
        new_ticket(
            app, clock, berlin(2026, 3, 9, 10, n), message_id=f"m{n}@x.test", subject=f"T{n}"
        )
        for n in range(16)
    ]
    for ticket in tickets[::2]:
        agent_reply(app, ticket.id, berlin(2026, 3, 9, 11))
    clock.now = berlin(2026, 3, 10, 12)
    assert sweeper(app).run().fired == 16  # 8 late tickets: warning and breach each
    statements: list[str] = []

    def count(conn: object, cursor: object, sql: str, *args: object) -> None:
        statements.append(sql)

    event.listen(app.db.engine, "before_cursor_execute", count)
    clock.now = berlin(2026, 3, 10, 12, 1)
    again = sweeper(app).run()
    event.remove(app.db.engine, "before_cursor_execute", count)
    assert (again.tickets, again.fired) == (16, 0)
    # Find the closed tickets with live rows; one batch: claim it, read messages, events
    # and requesters, read the ledger, replace the SLA rows; then find no next batch.
    # (SQLite adds its BEGIN per transaction.)
    assert len(statements) <= 12, statements
    assert target_row(app, tickets[1].id, "first_response").breached
    assert target_row(app, tickets[0].id, "first_response").status == "satisfied"


def _target_rows(app) -> dict[tuple[int, str, int], dict[str, object]]:  # type: ignore[no-untyped-def]
    """Every stored SLA target row, every column, by (ticket, target, instance)."""
    with app.db.transaction() as session:
        rows = session.execute(select(SlaTargetRow.__table__)).mappings().all()
    return {(r["ticket_id"], r["target"], r["instance"]): dict(r) for r in rows}


@contextmanager
def _sla_row_writes(app) -> Iterator[list[str]]:  # type: ignore[no-untyped-def]
    """The INSERT/UPDATE/DELETE statements on sla_targets run meanwhile (their verbs)."""
    writes: list[str] = []

    def record(conn: object, cursor: object, sql: str, *args: object) -> None:
        if re.match(r"\s*(INSERT INTO|UPDATE|DELETE FROM) sla_targets\b", sql):
            writes.append(sql.split()[0])

    event.listen(app.db.engine, "before_cursor_execute", record)
    try:
        yield writes
    finally:
        event.remove(app.db.engine, "before_cursor_execute", record)


def test_a_steady_pass_writes_no_sla_rows_and_a_change_writes_only_the_rows_it_moved(
    tmp_path: Path, database_url: str, clock: FrozenClock
) -> None:
    """Every pass used to delete and rewrite every SLA row of every open ticket: at a
    million tickets on PostgreSQL most of a 24 s pass that had nothing to do. A pass
    where nothing changed writes nothing; a reply, a policy change and a new ticket
    write just their rows, which read as a full recomputation's would."""
    sla = {
        "default_policy": "standard",
        "policies": [
            {
                "name": "standard",
                "first_response": {"minutes": 240, "calendar": "office"},
                "resolution": {"minutes": 1440, "calendar": "office"},
                "warning": {"notify": ["assignee"], "targets": ["first_response"]},
                "breach": {"notify": ["assignee"], "targets": ["first_response"]},
            },
            {"name": "quick", "first_response": {"minutes": 60, "calendar": "office"}},
        ],
    }
    app = sla_app(tmp_path, database_url, clock, sla)
    t = [
        new_ticket(
            app, clock, berlin(2026, 3, 9, 10, n), message_id=f"m{n}@x.test", subject=f"T{n}"
        )
        for n in range(5)
    ]
    agent_reply(app, t[0].id, berlin(2026, 3, 9, 11))  # answered in time
    set_status(app, t[1].id, TicketStatus.PENDING)  # its clock stopped
    clock.now = berlin(2026, 3, 10, 12)
    assert sweeper(app).run().fired == 6  # three late tickets: warning and breach each
    before = _target_rows(app)
    assert len(before) == 10

    # A minute later (business time running): nothing to fire, nothing to write.
    clock.now = berlin(2026, 3, 10, 12, 1)
    with _sla_row_writes(app) as writes:
        again = sweeper(app).run()
    assert (again.tickets, again.fired) == (5, 0)
    assert writes == []
    assert _target_rows(app) == before

    # A reply to a late ticket, another ticket moved to a policy without a resolution
    # target, and a new ticket: one DELETE, one UPDATE (two rows), one INSERT.
    agent_reply(app, t[2].id, berlin(2026, 3, 10, 12, 2))
    _set(app, t[3].id, sla_policy="quick")
    new = new_ticket(app, clock, berlin(2026, 3, 10, 12, 5), message_id="n@x.test", subject="N")
    with _sla_row_writes(app) as writes:
        assert sweeper(app).run().fired == 0  # the policy change fires nothing again
    assert writes == ["DELETE", "UPDATE", "INSERT"]
    after = _target_rows(app)
    moved = {
        (t[2].id, "first_response", 0),
        (t[3].id, "first_response", 0),
    }
    assert set(before) - set(after) == {(t[3].id, "resolution", 0)}
    assert set(after) - set(before) == {(new.id, "first_response", 0), (new.id, "resolution", 0)}
    for key in set(before) & set(after):
        assert (after[key] == before[key]) == (key not in moved), key
    assert after[(t[2].id, "first_response", 0)]["status"] == "satisfied"
    assert after[(t[3].id, "first_response", 0)]["policy"] == "quick"

    # The same as a pass that rewrote every row would have stored, but for the row
    # ids and when each was written (a running clock's minutes are as of then).
    with app.db.transaction() as session:
        session.execute(delete(SlaTargetRow))
    sweeper(app).run()
    rewritten = _target_rows(app)

    def comparable(row: dict[str, object]) -> dict[str, object]:
        skip = {"id", "computed_at"} | (
            {"elapsed_minutes"} if row["status"] == "running" else set()
        )
        return {k: v for k, v in row.items() if k not in skip}

    assert {k: comparable(r) for k, r in after.items()} == {
        k: comparable(r) for k, r in rewritten.items()
    }
