"""Tickets nobody could take are given out once an agent can (the waiting-assignment job).

Mail goes through the real pipeline (``deliver``) on a frozen clock; the job
is run as the daemon's scheduler runs it. Monday 2026-03-02: the office opens
at 09:00 UTC.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import select

from maildesk.app import App
from maildesk.db.models import Outbox, Ticket, TicketStatus
from maildesk.routing import waiting
from maildesk.routing.waiting import WaitingAssigner
from maildesk.service import Daemon
from maildesk.tickets import change_status
from tests.conftest import FrozenClock, make_settings
from tests.mailfactory import deliver, make_mail, reply_to
from tests.routing.test_assignment_review import (  # noqa: F401 (pg_private: a fixture)
    desk,
    pg_private,
    resolve,
)
from tests.routing.test_route_stage import events_of, ticket_of

OFFICE = {d: "09:00-17:00" for d in ("mon", "tue", "wed", "thu", "fri")}
OOO = {"Auto-Submitted": "auto-replied"}
TEAM: dict[str, Any] = {
    "groups": [
        {"name": "L1", "strategy": "round_robin", "max_open": 2},
        {"name": "L3", "strategy": "none"},
    ],
    "agents": [
        {"name": "ann", "groups": ["L1"], "hours": OFFICE},
        {"name": "ben", "groups": ["L1"], "hours": OFFICE},
        {"name": "dee", "groups": ["L3"]},
    ],
}


@pytest.fixture
def night(clock: FrozenClock) -> FrozenClock:
    clock.now = datetime(2026, 3, 2, 7, 0, tzinfo=clock.now.tzinfo)
    return clock


def mail(app: App, n: int, subject: str = "printer") -> None:
    who = f"c{n}@customer.test"
    deliver(app, make_mail(sender=who, subject=f"{subject} {n}"), mail_from=who)


def run_job(app: App) -> list[tuple[int, str]]:
    return [(a.number, a.agent) for a in WaitingAssigner.for_app(app).run()]


def assigned_notices(app: App, agent: str) -> list[Outbox]:
    with app.db.transaction() as session:
        rows = session.scalars(select(Outbox).where(Outbox.purpose == "assigned")).all()
        session.expunge_all()
    return [r for r in rows if f"{agent}@example.com" in r.recipients]


def test_a_ticket_that_came_at_night_goes_to_the_first_agent_on_shift(
    tmp_path: Path, database_url: str, night: FrozenClock
) -> None:
    app = desk(tmp_path, database_url, night, **TEAM)
    mail(app, 1)
    # Today's behaviour, through the pipeline: nobody on shift, no default responsible.
    ticket = ticket_of(app, 1)
    assert (ticket.group, ticket.assignee) == ("L1", None)
    [event] = events_of(app, 1, "assigned")
    assert event.reason == (
        "nobody eligible in L1 (ann off shift; ben off shift); "
        "no default responsible: left unassigned"
    )
    # The group hears of it when the shift starts (new_ticket notices held until 09:00),
    # but nobody owns it.
    with app.db.transaction() as session:
        held = session.execute(
            select(Outbox.recipients, Outbox.next_attempt_at).where(Outbox.purpose == "new_ticket")
        ).all()
    nine = night().replace(hour=9)
    assert sorted((r[0], at.replace(tzinfo=nine.tzinfo)) for r, at in held) == [
        ("ann@example.com", nine),
        ("ben@example.com", nine),
    ]
    night.advance(hours=1)  # 08:00: still nobody; the job writes nothing
    assert run_job(app) == []
    assert len(events_of(app, 1, "assigned")) == 1
    night.advance(hours=1, minutes=5)  # 09:05: the shift has started
    assert run_job(app) == [(1, "ann")]
    ticket = ticket_of(app, 1)
    assert ticket.assignee == "ann"
    last = events_of(app, 1, "assigned")[-1]
    assert last.reason == (
        "assigned to ann: waiting since 2026-03-02 07:00 UTC; ann came on shift: "
        "round robin in L1 after nobody"
    )
    assert last.data["rule"] == "round_robin"
    [notice] = assigned_notices(app, "ann")
    assert notice.next_attempt_at <= night()  # she is on shift: sent now, not held
    assert run_job(app) == []  # assigned once


def test_the_cap_holds_across_the_batch_and_the_rotation_is_fair(
    tmp_path: Path, database_url: str, night: FrozenClock
) -> None:
    """Seven tickets over night, caps of two: four go out at 09:00, alternating, oldest first."""
    app = desk(tmp_path, database_url, night, **TEAM)
    for n in range(1, 8):
        mail(app, n)
        night.advance(minutes=10)
    night.now = night.now.replace(hour=9, minute=1)
    assert run_job(app) == [(1, "ann"), (2, "ben"), (3, "ann"), (4, "ben")]
    assert [ticket_of(app, n).assignee for n in (5, 6, 7)] == [None, None, None]
    assert run_job(app) == []  # both at their cap
    assert [len(assigned_notices(app, a)) for a in ("ann", "ben")] == [2, 2]
    # ben resolves one of his: the oldest waiting ticket is his at the next run.
    resolve(app, 4, night)
    night.advance(minutes=1)
    assert run_job(app) == [(5, "ben")]
    assert events_of(app, 5, "assigned")[-1].reason == (
        "assigned to ben: waiting since 2026-03-02 07:40 UTC; "
        "ben came on shift: round robin in L1 after ben"
    )
    resolve(app, 1, night)
    resolve(app, 3, night)
    assert run_job(app) == [(6, "ann"), (7, "ann")]
    night.advance(minutes=30)  # 09:32: a mail while both are at their cap waits too
    mail(app, 8)
    assert ticket_of(app, 8).assignee is None
    assert events_of(app, 8, "assigned")[-1].reason == (
        "nobody eligible in L1 (ann at cap (2/2); ben at cap (2/2)); "
        "no default responsible: left unassigned"
    )
    assert run_job(app) == []
    resolve(app, 2, night)
    night.advance(minutes=1)
    assert run_job(app) == [(8, "ben")]
    assert events_of(app, 8, "assigned")[-1].reason == (
        "assigned to ben: waiting since 2026-03-02 09:32 UTC; "
        "ben is below their cap now (1/2): round robin in L1 after ann"
    )


def test_a_reopened_ticket_that_waited_goes_back_to_its_agent(
    tmp_path: Path, database_url: str, night: FrozenClock
) -> None:
    """ann had the ticket; the customer reopens it at night (nobody on shift): in the
    morning it goes back to ann, as it would have at once had she been on shift,
    not to ben, whose turn it is in the rotation."""
    app = desk(tmp_path, database_url, night, **TEAM)
    first = make_mail(sender="c1@customer.test", subject="printer 1")
    deliver(app, first, mail_from="c1@customer.test")
    night.now = night.now.replace(hour=9, minute=5)
    assert run_job(app) == [(1, "ann")]
    resolve(app, 1, night)
    night.advance(hours=22)  # Tuesday 07:05: both off shift
    deliver(app, reply_to(first, sender="c1@customer.test", body="still jams"), mail_from="c1@x")
    ticket = ticket_of(app, 1)
    assert (ticket.status, ticket.assignee) == (TicketStatus.OPEN, None)
    assert "reopened: ann not available" in events_of(app, 1, "assigned")[-1].reason
    night.advance(hours=2)  # 09:05: ann and ben on shift; the rotation would pick ben
    assert run_job(app) == [(1, "ann")]
    assert "reopened: back to ann" in events_of(app, 1, "assigned")[-1].reason


def test_tickets_that_are_not_waiting_for_an_agent_are_left_alone(
    tmp_path: Path, database_url: str, night: FrozenClock
) -> None:
    """Pending, resolved, possible spam, merged, a group that assigns by hand, an
    auto-reply nobody was asked to take (kept open here): not given out."""
    rules = (
        '[[rule]]\nname = "sales"\nwhen = { subject_keywords = "quote" }\nthen = { group = "L3" }\n'
    )
    threading_ = {"unmatched_auto_status": "open"}
    app = desk(tmp_path, database_url, night, rules=rules, threading=threading_, **TEAM)
    for n in range(1, 6):
        mail(app, n)
    mail(app, 6, "quote")
    auto = make_mail(sender="robot@vendor.test", subject="Out of office", headers=OOO)
    deliver(app, auto, mail_from="robot@vendor.test")
    assert ticket_of(app, 7).status == TicketStatus.OPEN and not events_of(app, 7, "assigned")
    resolve(app, 2, night)
    with app.db.transaction() as session:
        tickets = {t.number: t for t in session.scalars(select(Ticket))}
        change_status(session, tickets[1], TicketStatus.PENDING, night(), None, actor="agent:x")
        tickets[3].possible_spam = True
        tickets[4].merged_into_id = tickets[5].id
    assert (ticket_of(app, 6).group, ticket_of(app, 6).assignee) == ("L3", None)
    night.now = night.now.replace(hour=10)
    assert run_job(app) == [(5, "ann")]  # the only one waiting
    assert [ticket_of(app, n).assignee for n in (1, 2, 3, 4, 6, 7)] == [None] * 6


def desk_without_groups(
    tmp_path: Path, database_url: str, clock: FrozenClock, agents: list[dict[str, Any]]
) -> App:
    """A small desk: agents, no groups, no default group, no rules."""
    folder = tmp_path / "rules"
    folder.mkdir(exist_ok=True)
    settings = make_settings(
        tmp_path,
        database_url,
        agents=[{"addresses": [f"{a['name']}@example.com"], **a} for a in agents],
        routing={"rules_dir": folder},
    )
    return App.build(settings, clock=clock)


def test_a_ticket_with_no_group_waits_for_any_agent_on_shift(
    tmp_path: Path, database_url: str, night: FrozenClock
) -> None:
    """Two agents and no groups: a ticket that came at night belongs to no group, yet it
    must not stay unassigned forever. Everyone hears of it at the start of their shift,
    and the agents on shift take the waiting tickets by round robin within their caps."""
    agents = [
        {"name": "ann", "hours": OFFICE},
        {"name": "ben", "hours": OFFICE, "max_open_tickets": 1},
    ]
    app = desk_without_groups(tmp_path, database_url, night, agents)
    mail(app, 1)
    night.advance(minutes=10)
    mail(app, 2)
    assert [ticket_of(app, n).assignee for n in (1, 2)] == [None, None]
    night.now = night.now.replace(hour=9, minute=5)
    assert run_job(app) == [(1, "ann"), (2, "ben")]
    ticket = ticket_of(app, 1)
    assert (ticket.group, ticket.assignee) == (None, "ann")
    first, last = events_of(app, 1, "assigned")
    assert first.reason == (
        "nobody eligible among all agents (ann off shift; ben off shift); "
        "no default responsible: left unassigned"
    )
    assert last.reason == (
        "assigned to ann: waiting since 2026-03-02 07:00 UTC; ann came on shift: "
        "round robin among all agents after nobody"
    )
    assert [len(assigned_notices(app, a)) for a in ("ann", "ben")] == [1, 1]
    # Both heard of each new ticket, held until their shift started at 09:00.
    with app.db.transaction() as session:
        held = session.execute(
            select(Outbox.recipients, Outbox.next_attempt_at).where(Outbox.purpose == "new_ticket")
        ).all()
    assert sorted(r for [r], at in held if at.replace(tzinfo=night.now.tzinfo).hour == 9) == [
        "ann@example.com",
        "ann@example.com",
        "ben@example.com",
        "ben@example.com",
    ]
    # In the day a ticket with no group goes out at once: ben is at his cap, so to ann.
    mail(app, 3)
    assert ticket_of(app, 3).assignee == "ann"
    assert run_job(app) == []


def test_a_ticket_with_no_group_skips_agents_only_in_groups_that_assign_by_hand(
    tmp_path: Path, database_url: str, night: FrozenClock
) -> None:
    """A specialist only in a hand-assigned group (L3, say) is not dealt tickets no rule
    placed, nor told of them; an agent of a group that assigns by itself is."""
    folder = tmp_path / "rules"
    folder.mkdir()
    settings = make_settings(
        tmp_path,
        database_url,
        agents=[
            {"name": "sam", "addresses": ["sam@example.com"], "groups": ["l3"]},
            {"name": "ann", "addresses": ["ann@example.com"], "groups": ["l1"], "hours": OFFICE},
        ],
        groups=[{"name": "l3", "strategy": "none"}, {"name": "l1"}],
        routing={"rules_dir": folder},
    )
    app = App.build(settings, clock=night)
    try:
        mail(app, 1)  # at night: ann is off shift, sam always on
        assert ticket_of(app, 1).assignee is None
        with app.db.transaction() as session:
            told = session.scalars(
                select(Outbox.recipients).where(Outbox.purpose == "new_ticket")
            ).all()
        assert told == [["ann@example.com"]]
        night.now = night.now.replace(hour=9, minute=5)
        assert run_job(app) == [(1, "ann")]
    finally:
        app.db.dispose()


def test_the_job_runs_for_agents_without_groups_and_not_without_agents(
    tmp_path: Path, database_url: str, night: FrozenClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The daemon schedules the job for a desk of agents without groups; a desk with no
    agents at all has nobody to give tickets to, and the daemon says so at start."""
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    with_agents = desk_without_groups(tmp_path / "a", database_url, night, [{"name": "ann"}])
    nobody = desk_without_groups(tmp_path / "b", database_url, night, [])
    try:
        assert waiting.add_waiting_assignment(BackgroundScheduler(), with_agents) is not None
        assert waiting.add_waiting_assignment(BackgroundScheduler(), nobody) is None
        assert "no agents are configured: new tickets are assigned to nobody" in caplog.text
    finally:
        with_agents.db.dispose()
        nobody.db.dispose()


def test_two_nodes_running_the_job_at_once_assign_each_ticket_once_within_the_caps(
    tmp_path: Path,
    pg_private: str,  # noqa: F811 (the fixture)
    night: FrozenClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ann (cap 1) works in L1 and L2; one ticket waits in each. Node a's job has chosen
    ann for the L1 ticket and not committed yet when node b's job runs: b must neither
    take the L1 ticket too nor count ann below her cap for the L2 one.
    """
    people: dict[str, Any] = {
        "rules": '[[rule]]\nname = "l2"\nwhen = { subject_keywords = "vpn" }\n'
        'then = { group = "L2" }\n',
        "groups": [{"name": "L1"}, {"name": "L2"}],
        "agents": [
            {"name": "ann", "groups": ["L1", "L2"], "hours": OFFICE, "max_open_tickets": 1},
            {"name": "ben", "groups": ["L1"], "hours": OFFICE},
            {"name": "cy", "groups": ["L2"], "hours": OFFICE},
        ],
    }
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    a = desk(tmp_path / "a", pg_private, night, **people)
    b = desk(tmp_path / "b", pg_private, night, **people)
    try:
        mail(a, 1)
        mail(a, 2, "vpn")
        assert [ticket_of(a, n).assignee for n in (1, 2)] == [None, None]
        night.now = night.now.replace(hour=9, minute=1)
        original = waiting.choose_in_group
        node_b: list[threading.Thread] = []
        found_by_b: list[tuple[int, str]] = []

        def paused(*args: Any, **kwargs: Any) -> Any:
            result = original(*args, **kwargs)
            if not node_b:  # node a has chosen: node b runs its job before a commits
                thread = threading.Thread(target=lambda: found_by_b.extend(run_job(b)))
                node_b.append(thread)
                thread.start()
                thread.join(timeout=3.0)  # fixed: it waits for node a's commit
            return result

        monkeypatch.setattr(waiting, "choose_in_group", paused)
        found_by_a = run_job(a)
        node_b[0].join(timeout=60)
        assert found_by_a[0] == (1, "ann")  # which node then does L2 is a race
        assert sorted(found_by_a + found_by_b) == [(1, "ann"), (2, "cy")]
        assert [ticket_of(a, n).assignee for n in (1, 2)] == ["ann", "cy"]
        assert [len(events_of(a, n, "assigned")) for n in (1, 2)] == [2, 2]
        assert [len(assigned_notices(a, x)) for x in ("ann", "cy")] == [1, 1]
    finally:
        a.db.dispose()
        b.db.dispose()


def test_the_daemon_runs_the_job_at_start_and_every_interval(
    tmp_path: Path, database_url: str, night: FrozenClock
) -> None:
    """The scheduler of ``maildesk run`` gives out what waited while it was down."""
    app = desk(tmp_path, database_url, night, **TEAM)
    try:
        mail(app, 1)
        night.now = night.now.replace(hour=9, minute=30)
        daemon = Daemon(app)
        daemon.start_scheduler()
        try:
            assert daemon.scheduler is not None
            job = daemon.scheduler.get_job("waiting-assignment")
            assert job is not None and job.trigger.interval.total_seconds() == 60
            deadline = time.monotonic() + 15
            while ticket_of(app, 1).assignee is None and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            assert daemon.scheduler is not None
            daemon.scheduler.shutdown(wait=True)
        assert ticket_of(app, 1).assignee == "ann"
    finally:
        app.db.dispose()
