"""Assignment as a support lead checks it: caps, reopen, sticky customers, two nodes.

Each test drives the real pipeline (``deliver``) on a frozen clock: Monday
2026-03-02 09:00 UTC, everyone below on shift.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from maildesk.app import App
from maildesk.db.models import Ticket, TicketStatus
from maildesk.intake.store import Envelope
from maildesk.routing import assign_db
from maildesk.tickets import change_status
from tests.conftest import FrozenClock, make_settings, private_pg_database
from tests.mailfactory import deliver, make_mail, reply_to
from tests.routing.test_route_stage import events_of, ticket_of


def desk(
    tmp_path: Path,
    database_url: str,
    clock: FrozenClock,
    *,
    groups: list[dict[str, Any]],
    agents: list[dict[str, Any]],
    rules: str = "",
    **extra: Any,
) -> App:
    folder = tmp_path / "rules"
    folder.mkdir(exist_ok=True)
    (folder / "10-main.toml").write_text(rules, encoding="utf-8")
    settings = make_settings(
        tmp_path,
        database_url,
        groups=groups,
        agents=[{"addresses": [f"{a['name']}@example.com"], **a} for a in agents],
        routing={"rules_dir": folder, "default_group": "L1"},
        **extra,
    )
    return App.build(settings, clock=clock)


def mail_from(app: App, who: str, subject: str, **kwargs: Any) -> bytes:
    raw = make_mail(sender=f"{who}@customer.test", subject=subject, **kwargs)
    deliver(app, raw, mail_from=f"{who}@customer.test")
    return raw


def resolve(app: App, number: int, clock: FrozenClock) -> None:
    """As ``#status resolved`` does: the assignee stays on the ticket."""
    with app.db.transaction() as session:
        ticket = session.scalars(select(Ticket).where(Ticket.number == number)).one()
        change_status(session, ticket, TicketStatus.RESOLVED, clock(), None, actor="agent:x")


def test_a_reopened_ticket_does_not_count_against_its_own_assignees_cap(
    tmp_path: Path, database_url: str, clock: FrozenClock
) -> None:
    """ann (cap 1) resolved her only ticket; its reopening must not make her "at cap (1/1)"."""
    app = desk(
        tmp_path,
        database_url,
        clock,
        groups=[{"name": "L1", "strategy": "round_robin"}],
        agents=[
            {"name": "ann", "groups": ["L1"], "max_open_tickets": 1},
            {"name": "ben", "groups": ["L1"]},
        ],
    )
    first = mail_from(app, "r", "broken printer")
    assert ticket_of(app, 1).assignee == "ann"
    resolve(app, 1, clock)
    clock.advance(hours=1)
    deliver(app, reply_to(first, sender="r@customer.test", body="still broken"), mail_from="r@x")
    ticket = ticket_of(app, 1)
    assert ticket.status == TicketStatus.OPEN
    last = events_of(app, 1, "assigned")[-1]
    assert ticket.assignee == "ann", last.reason
    assert last.reason == "assigned to ann: reopened: back to ann"


def test_a_reopened_ticket_goes_back_to_its_assignee_from_another_group(
    tmp_path: Path, database_url: str, clock: FrozenClock
) -> None:
    """ann gave the L1 ticket to the specialist cy (``#assign cy``); cy resolved it.

    The customer's reply reopens it: it goes back to cy, who knows it, not to
    whoever is next in L1's rotation.
    """
    app = desk(
        tmp_path,
        database_url,
        clock,
        groups=[{"name": "L1"}, {"name": "L2"}],
        agents=[
            {"name": "ann", "groups": ["L1"]},
            {"name": "ben", "groups": ["L1"]},
            {"name": "cy", "groups": ["L2"]},
        ],
    )
    first = mail_from(app, "r", "broken printer")
    with app.db.transaction() as session:
        ticket = session.scalars(select(Ticket)).one()
        ticket.assignee = "cy"  # what ``#assign cy`` does: the group stays L1
    resolve(app, 1, clock)
    clock.advance(hours=1)
    deliver(app, reply_to(first, sender="r@customer.test", body="still broken"), mail_from="r@x")
    ticket = ticket_of(app, 1)
    assert (ticket.group, ticket.assignee) == ("L1", "cy"), events_of(app, 1, "assigned")[-1].reason


def test_a_reopened_ticket_of_an_agent_off_shift_goes_to_the_rotation(
    tmp_path: Path, database_url: str, clock: FrozenClock
) -> None:
    """The other side of the two tests above: unavailable means off shift (or at cap)."""
    app = desk(
        tmp_path,
        database_url,
        clock,
        groups=[{"name": "L1"}, {"name": "L2"}],
        agents=[
            {"name": "ann", "groups": ["L1"]},
            {"name": "ben", "groups": ["L1"]},
            {
                "name": "cy",
                "groups": ["L2"],
                "absences": [{"start": "2026-03-02", "end": "2026-03-02"}],
            },
        ],
    )
    first = mail_from(app, "r", "broken printer")
    with app.db.transaction() as session:
        session.scalars(select(Ticket)).one().assignee = "cy"
    resolve(app, 1, clock)
    deliver(app, reply_to(first, sender="r@customer.test", body="still broken"), mail_from="r@x")
    ticket = ticket_of(app, 1)
    assert ticket.assignee == "ben"  # round robin after ann
    reason = events_of(app, 1, "assigned")[-1].reason
    assert "reopened: cy not available" in reason, reason


def test_sticky_gives_the_customer_their_agent_of_this_group(
    tmp_path: Path, database_url: str, clock: FrozenClock
) -> None:
    """The customer's latest ticket went to L2 (cy); their new L1 ticket goes to their L1 agent."""
    rules = """
[[rule]]
name = "network-to-l2"
when = { subject_keywords = "vpn" }
then = { group = "L2" }
"""
    app = desk(
        tmp_path,
        database_url,
        clock,
        rules=rules,
        groups=[{"name": "L1", "sticky": True}, {"name": "L2"}],
        agents=[
            {"name": "ann", "groups": ["L1"]},
            {"name": "ben", "groups": ["L1"]},
            {"name": "cy", "groups": ["L2"]},
        ],
    )
    mail_from(app, "s", "printer jam")
    mail_from(app, "s", "vpn drops")
    assert [ticket_of(app, n).assignee for n in (1, 2)] == ["ann", "cy"]
    mail_from(app, "s", "new laptop")
    ticket = ticket_of(app, 3)
    last = events_of(app, 3, "assigned")[-1]
    assert ticket.assignee == "ann", last.reason
    assert last.data["rule"] == "sticky"


def test_possible_spam_does_not_fill_the_agents_caps(
    tmp_path: Path, database_url: str, clock: FrozenClock
) -> None:
    """A wave of mail the filter is unsure of (held from agents) must not use up every cap."""
    app = desk(
        tmp_path,
        database_url,
        clock,
        groups=[
            {"name": "L1", "strategy": "least_open", "max_open": 1, "default_responsible": "lead"}
        ],
        agents=[
            {"name": "ann", "groups": ["L1"]},
            {"name": "ben", "groups": ["L1"]},
            {"name": "lead"},
        ],
        spam={"unsure_at": 0.0, "spam_at": 1.0, "allow_domains": ["good.test"]},
    )
    for i in range(2):
        raw = make_mail(sender=f"x{i}@junk.test", subject=f"cheap pills {i}")
        deliver(app, raw, mail_from=f"x{i}@junk.test")
    assert [ticket_of(app, n).possible_spam for n in (1, 2)] == [True, True]
    deliver(app, make_mail(sender="c@good.test", subject="printer"), mail_from="c@good.test")
    ticket = ticket_of(app, 3)
    assert not ticket.possible_spam
    assert ticket.assignee in ("ann", "ben"), events_of(app, 3, "assigned")[-1].reason


@pytest.fixture
def pg_private() -> Iterator[str]:
    with private_pg_database("maildesk_assign") as url:
        yield url


def test_two_nodes_assigning_in_two_groups_do_not_overfill_a_shared_agent(
    tmp_path: Path, pg_private: str, clock: FrozenClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ann (cap 1) works in L1 and L2: node a assigns in L1 while node b assigns in L2.

    The cap is per agent, not per group: one group's lock does not keep the
    other node from counting ann's tickets before node a's commit.
    """
    people: dict[str, Any] = {
        "rules": '[[rule]]\nname = "l2"\nwhen = { subject_keywords = "vpn" }\n'
        'then = { group = "L2" }\n',
        "groups": [
            {"name": "L1", "strategy": "least_open"},
            {"name": "L2", "strategy": "least_open"},
        ],
        "agents": [
            {"name": "ann", "groups": ["L1", "L2"], "max_open_tickets": 1},
            {"name": "ben", "groups": ["L1"]},
            {"name": "cy", "groups": ["L2"]},
        ],
    }
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    a = desk(tmp_path / "a", pg_private, clock, **people)
    b = desk(tmp_path / "b", pg_private, clock, **people)
    try:
        original = assign_db.open_counts
        runner: list[threading.Thread] = []

        def paused(session: Session, names: list[str], **kwargs: Any) -> dict[str, int]:
            counts = original(session, names, **kwargs)
            if not runner:  # node a has counted: node b assigns before a commits
                raw = make_mail(sender="b@customer.test", subject="vpn drops")
                thread = threading.Thread(target=lambda: deliver(b, raw, mail_from="b@x.test"))
                runner.append(thread)
                thread.start()
                thread.join(timeout=2.0)  # fixed: it waits for node a's commit
            return counts

        monkeypatch.setattr(assign_db, "open_counts", paused)
        deliver(a, make_mail(sender="a@customer.test", subject="printer"), mail_from="a@x.test")
        assert runner, "node b never ran"
        runner[0].join(timeout=60)
        with a.db.transaction() as session:
            rows = {t.subject: (t.group, t.assignee) for t in session.scalars(select(Ticket))}
        assert rows == {"printer": ("L1", "ann"), "vpn drops": ("L2", "cy")}, rows
    finally:
        a.db.dispose()
        b.db.dispose()


def _outage_desk(tmp_path: Path, database_url: str, clock: FrozenClock) -> App:
    """Tiers L1 (ann) -> L2 (cy) -> L3 (dee, by hand); a follow-up rule escalates "outage"."""
    rules = """
[[rule]]
name = "outage-follow-up"
follow_ups = true
when = { subject_regex = '\\boutage\\b' }
then = { escalate = true }
"""
    return desk(
        tmp_path,
        database_url,
        clock,
        rules=rules,
        groups=[
            {"name": "L1", "escalates_to": "L2"},
            {"name": "L2", "escalates_to": "L3"},
            {"name": "L3", "strategy": "none"},
        ],
        agents=[
            {"name": "ann", "groups": ["L1"]},
            {"name": "cy", "groups": ["L2"]},
            {"name": "dee", "groups": ["L3"]},
        ],
    )


def test_an_escalation_rule_on_follow_ups_escalates_a_ticket_once(
    tmp_path: Path, database_url: str, clock: FrozenClock
) -> None:
    """Each reply of the customer's that says "outage" again must not climb one tier more.

    The first one takes the ticket to L2, where cy has it; the next ones leave it
    with cy rather than send it on to L3 (assigned by hand: nobody) and so take
    it from the agent working on it.
    """
    app = _outage_desk(tmp_path, database_url, clock)
    first = mail_from(app, "x", "printer", message_id="p1@customer.test")
    assert ticket_of(app, 1).assignee == "ann"
    parent = first
    for i in range(2):
        clock.advance(minutes=10)
        follow = reply_to(parent, subject="Re: printer - total outage", body=f"All down {i}.\n")
        deliver(app, follow, mail_from="x@customer.test")
        parent = follow
        ticket = ticket_of(app, 1)
        assert (ticket.group, ticket.assignee) == ("L2", "cy"), i
    assert len(events_of(app, 1, "escalated")) == 1


def test_two_outage_replies_in_one_batch_escalate_once(
    tmp_path: Path, database_url: str, clock: FrozenClock
) -> None:
    """The worker applies a batch in one transaction: the first escalation's event is not
    yet written when the second reply is decided."""
    app = _outage_desk(tmp_path, database_url, clock)
    first = mail_from(app, "x", "printer", message_id="p1@customer.test")
    one = reply_to(first, subject="Re: printer - outage", body="All down.\n")
    two = reply_to(one, subject="Re: printer - outage", body="Still all down.\n")
    for raw in (one, two):
        envelope = Envelope(
            source="smtp", mail_from="x@customer.test", rcpt_to=("support@example.com",)
        )
        app.intake().store(raw, envelope)
    app.worker().drain()
    ticket = ticket_of(app, 1)
    assert (ticket.group, ticket.assignee) == ("L2", "cy")
    assert len(events_of(app, 1, "escalated")) == 1
