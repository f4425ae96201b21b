"""The auto-close sweep against a customer reply arriving at the same moment.

The pipeline decides what a reply does (reopen, pending -> open) from the
ticket it read; the sweep closes or resolves the same ticket in between.
``decide_thread`` is wrapped so the sweep runs (in another thread, on its own
connection) after the pipeline read the ticket and before it wrote it. On
SQLite the pipeline's ``BEGIN IMMEDIATE`` holds the sweep off until it commits.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from maildesk.app import App
from maildesk.db.models import Event, Outbox, SlaEscalation, Ticket, TicketLink, TicketStatus
from maildesk.pipeline import stages
from maildesk.sla.sweep import SlaSweeper, SweepResult
from tests.conftest import FrozenClock
from tests.mailfactory import deliver, make_mail
from tests.sla.slahelp import berlin, new_ticket, set_status, sla_app, sweeper


def _sweep_inside_the_pipeline(
    app: App, monkeypatch: pytest.MonkeyPatch, message_id: str
) -> Callable[[], SweepResult]:
    """Run one sweep between the pipeline's read of ``message_id``'s ticket and its write."""
    original = stages.decide_thread
    done: list[SweepResult] = []
    runner: list[threading.Thread] = []

    def paused(ctx: Any, session: Any, deps: Any) -> Any:
        decision = original(ctx, session, deps)
        if ctx.message.message_id.strip("<>") == message_id and not runner:
            thread = threading.Thread(target=lambda: done.append(sweeper(app).run()))
            runner.append(thread)
            thread.start()
            thread.join(timeout=1.0)  # PostgreSQL: it finishes; SQLite: it waits for us
        return decision

    monkeypatch.setattr(stages, "decide_thread", paused)

    def result() -> SweepResult:
        assert runner, "the sweep never ran"
        runner[0].join(timeout=60)
        assert done, "the sweep did not finish"
        return done[0]

    return result


def _status_events(app: App, ticket_id: int) -> list[str]:
    with app.db.transaction() as session:
        return [
            f"{e.kind}: {e.reason}"
            for e in session.scalars(
                select(Event)
                .where(Event.ticket_id == ticket_id, Event.kind.in_(["status", "reopened"]))
                .order_by(Event.id)
            )
        ]


def _customer_mail(app: App) -> list[str]:
    with app.db.transaction() as session:
        return list(
            session.scalars(
                select(Outbox.purpose)
                .where(Outbox.purpose.in_(["auto_resolved", "resolved"]))
                .order_by(Outbox.id)
            )
        )


def test_reply_while_auto_close_runs_reopens_and_the_ticket_still_auto_closes_later(
    tmp_path: Path, database_url: str, clock: FrozenClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = sla_app(tmp_path, database_url, clock, {"auto_close": {"resolved_close_days": 2}})
    ticket = new_ticket(app, clock, berlin(2026, 3, 2, 9, 0), message_id="a1@customer.test")
    clock.now = berlin(2026, 3, 2, 10, 0)
    set_status(app, ticket.id, TicketStatus.RESOLVED)

    # Two days later (inside the 14-day reopen window) the customer writes back
    # just as the sweep comes to close the ticket.
    clock.now = berlin(2026, 3, 4, 10, 1)
    swept = _sweep_inside_the_pipeline(app, monkeypatch, "a2@customer.test")
    reply = make_mail(
        message_id="a2@customer.test", in_reply_to="a1@customer.test", subject="Re: Printer on fire"
    )
    deliver(app, reply)
    swept()

    with app.db.transaction() as session:
        tickets = list(session.scalars(select(Ticket).order_by(Ticket.id)))
        closes = list(
            session.scalars(select(SlaEscalation.level).where(SlaEscalation.ticket_id == ticket.id))
        )
        row = tickets[0]
        seen = (len(tickets), row.status, row.closed_at)
    # One outcome or the other (reopened, or closed plus a linked follow-up),
    # never a reopen decided on the resolved ticket written over the close.
    assert seen == (1, TicketStatus.OPEN, None), _status_events(app, ticket.id)
    assert closes == []
    assert _status_events(app, ticket.id) == [
        "status: new -> resolved by test",
        "reopened: customer replied within the reopen window",
    ]

    # Resolved again, it is closed two days later like any other ticket.
    clock.now = berlin(2026, 3, 5, 10, 0)
    set_status(app, ticket.id, TicketStatus.RESOLVED)
    clock.now = berlin(2026, 3, 7, 10, 1)
    assert sweeper(app).run().auto_closed == 1
    with app.db.transaction() as session:
        t = session.get(Ticket, ticket.id)
        assert t is not None and t.status is TicketStatus.CLOSED


def test_reply_while_auto_resolve_runs_leaves_the_ticket_open_without_a_resolved_notice(
    tmp_path: Path, database_url: str, clock: FrozenClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = sla_app(tmp_path, database_url, clock, {"auto_close": {"pending_resolve_days": 7}})
    ticket = new_ticket(app, clock, berlin(2026, 3, 2, 9, 0), message_id="p1@customer.test")
    clock.now = berlin(2026, 3, 2, 10, 0)
    set_status(app, ticket.id, TicketStatus.PENDING)

    clock.now = berlin(2026, 3, 2, 10, 0) + timedelta(days=7, minutes=1)
    swept = _sweep_inside_the_pipeline(app, monkeypatch, "p2@customer.test")
    reply = make_mail(
        message_id="p2@customer.test", in_reply_to="p1@customer.test", subject="Re: Printer on fire"
    )
    deliver(app, reply)
    swept()

    with app.db.transaction() as session:
        t = session.get(Ticket, ticket.id)
        assert t is not None
        seen = (t.status, t.resolved_at)
    assert seen == (TicketStatus.OPEN, None), _status_events(app, ticket.id)
    # The customer who just wrote is not told the ticket was resolved for want of an answer.
    assert _customer_mail(app) == []


def test_reply_while_the_sweep_holds_the_ticket_follows_the_close(
    tmp_path: Path, database_url: str, clock: FrozenClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The other order: the sweep has the ticket; the reply comes after the close."""
    app = sla_app(tmp_path, database_url, clock, {"auto_close": {"resolved_close_days": 2}})
    ticket = new_ticket(app, clock, berlin(2026, 3, 2, 9, 0), message_id="b1@customer.test")
    clock.now = berlin(2026, 3, 2, 10, 0)
    set_status(app, ticket.id, TicketStatus.RESOLVED)
    clock.now = berlin(2026, 3, 4, 10, 1)

    holding, decided = threading.Event(), threading.Event()
    original_close = SlaSweeper._auto_close
    original_decide = stages.decide_thread

    def close_later(self: SlaSweeper, session: Any, history: Any, now: Any) -> int:
        holding.set()  # the batch is claimed (locked on PostgreSQL)
        decided.wait(timeout=2.0)  # until the pipeline decided, if it can before we commit
        return original_close(self, session, history, now)

    def decide(ctx: Any, session: Any, deps: Any) -> Any:
        decision = original_decide(ctx, session, deps)
        decided.set()
        return decision

    monkeypatch.setattr(SlaSweeper, "_auto_close", close_later)
    monkeypatch.setattr(stages, "decide_thread", decide)
    done: list[SweepResult] = []
    thread = threading.Thread(target=lambda: done.append(sweeper(app).run()))
    thread.start()
    assert holding.wait(timeout=30)
    reply = make_mail(
        message_id="b2@customer.test", in_reply_to="b1@customer.test", subject="Re: Printer on fire"
    )
    deliver(app, reply)
    thread.join(timeout=60)
    assert done and done[0].auto_closed == 1

    with app.db.transaction() as session:
        old, *rest = session.scalars(select(Ticket).order_by(Ticket.id))
        follow_ups = session.execute(
            select(TicketLink.ticket_id, TicketLink.kind).where(
                TicketLink.other_ticket_id == old.id
            )
        ).all()
        seen = (old.status, [(t.id, "follow_up_of") for t in rest], follow_ups)
    # Closed first: the reply opens a new ticket linked to the closed one (MAIL-RULES §2).
    assert seen[0] is TicketStatus.CLOSED, _status_events(app, old.id)
    assert len(seen[1]) == 1 and seen[1] == seen[2]
