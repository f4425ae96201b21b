"""Several nodes sweeping one PostgreSQL database: no escalation mail twice."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import datetime
from pathlib import Path

from sqlalchemy import select

from maildesk.db.models import Outbox, SlaEscalation, Ticket
from maildesk.sla.sweep import SweepResult, claim_ledger
from tests.conftest import FrozenClock, _empty_all_tables
from tests.sla.slahelp import berlin, new_ticket, sla_app, sweeper

TICKETS = 24


def _ledger_values(ticket_id: int, now: datetime) -> dict[str, object]:
    return {
        "ticket_id": ticket_id,
        "target": "first_response",
        "level": "breach",
        "instance": 0,
        "policy": "standard",
        "due_at": now,
        "fired_at": now,
        "late": False,
        "node": "n",
        "actions": [],
    }


def test_two_nodes_sweeping_at_once_send_each_escalation_once(
    tmp_path: Path, pg_url: str, clock: FrozenClock
) -> None:
    _empty_all_tables(pg_url)
    node_a = sla_app(tmp_path / "a", pg_url, clock)
    node_b = sla_app(tmp_path / "b", pg_url, clock)
    ids = []
    for n in range(TICKETS):
        ticket = new_ticket(node_a, clock, berlin(2026, 3, 6, 15, n), subject=f"Case {n}")
        ids.append(ticket.id)
    with node_a.db.transaction() as session:
        for ticket in session.scalars(select(Ticket)):
            ticket.assignee = "bob"
    clock.now = berlin(2026, 3, 9, 12, 0)  # every warning and breach is due
    results: list[SweepResult] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def sweep(app_node) -> None:  # type: ignore[no-untyped-def]
        try:
            barrier.wait()
            for _ in range(3):
                results.append(sweeper(app_node, batch_size=3).run())
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=sweep, args=(n,)) for n in (node_a, node_b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sum(r.fired for r in results) == 2 * TICKETS
    with node_a.db.transaction() as session:
        mail = Counter(
            session.execute(
                select(Outbox.ticket_id, Outbox.purpose).where(Outbox.purpose.like("sla_%"))
            ).all()
        )
    assert len(mail) == 2 * TICKETS and set(mail.values()) == {1}
    node_a.db.dispose()
    node_b.db.dispose()


def test_a_second_nodes_ledger_insert_waits_and_then_does_nothing(
    tmp_path: Path, pg_url: str, clock: FrozenClock
) -> None:
    _empty_all_tables(pg_url)
    node_a = sla_app(tmp_path / "a", pg_url, clock)
    node_b = sla_app(tmp_path / "b", pg_url, clock)
    ticket = new_ticket(node_a, clock, berlin(2026, 3, 6, 15, 0))
    outcome: list[bool] = []
    with node_a.db.transaction() as session_a:
        assert claim_ledger(session_a, _ledger_values(ticket.id, clock.now)) is True

        def other_node() -> None:
            with node_b.db.transaction() as session_b:
                outcome.append(claim_ledger(session_b, _ledger_values(ticket.id, clock.now)))

        thread = threading.Thread(target=other_node)
        thread.start()
        thread.join(timeout=1.0)
        assert thread.is_alive()  # blocked on A's uncommitted row, not failing
    thread.join()
    assert outcome == [False]
    with node_a.db.transaction() as session:
        assert len(session.scalars(select(SlaEscalation)).all()) == 1
    node_a.db.dispose()
    node_b.db.dispose()
