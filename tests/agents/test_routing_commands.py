"""Issue 7's agent commands by mail: #escalate, #queue, #category as feedback, #cc a colleague."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from maildesk.app import App
from maildesk.db.models import Contact, Participant, ParticipantRole, Watcher
from maildesk.routing.waiting import WaitingAssigner
from tests.agents.agenthelp import (
    client_reply,
    events_of_kind,
    reply_address,
    ticket_number,
    to,
)
from tests.conftest import FrozenClock, make_settings
from tests.mailfactory import deliver, make_mail, reply_to

AGENTS = [
    {"name": "bob", "addresses": ["bob@agents.test"], "groups": ["L1"]},
    {"name": "carol", "addresses": ["carol@agents.test"], "groups": ["L2"]},
    {"name": "dan", "addresses": ["dan@agents.test"], "groups": ["L2"]},
    {"name": "erin", "addresses": ["erin@agents.test"], "groups": ["L3"]},
]
GROUPS = [
    {"name": "L1", "escalates_to": "L2"},
    {"name": "L2", "escalates_to": "L3", "strategy": "least_open"},
    {"name": "L3", "strategy": "none"},
]


def routing_app(tmp_path: Path, database_url: str, clock: FrozenClock, **more: Any) -> App:
    """An app with the agents and groups above, routing on, and ``more`` settings."""
    rules = tmp_path / "rules"
    rules.mkdir()
    settings = make_settings(
        tmp_path,
        database_url,
        agents=AGENTS,
        groups=GROUPS,
        routing={"default_group": "L1", "rules_dir": str(rules), "queue_groups": {"sales": "L3"}},
        **more,
    )
    return App.build(settings, clock=clock)


@pytest.fixture
def app(tmp_path: Path, database_url: str, clock: FrozenClock) -> Iterator[App]:
    application = routing_app(tmp_path, database_url, clock)
    yield application
    application.db.dispose()


def _bob_replies(app: App, body: str) -> str:
    """bob answers his new-ticket notice; returns his result report."""
    if not to(app, "bob@agents.test", "new_ticket"):
        deliver(app, make_mail(message_id="first@customer.test"))
    notice = to(app, "bob@agents.test", "new_ticket")[0]
    deliver(app, client_reply(notice, body), rcpt=(reply_address(notice),), mail_from="bob@x")
    return to(app, "bob@agents.test", "agent_result")[-1].text


def test_escalate_moves_up_a_tier_and_tells_the_new_group(app: App) -> None:
    report = _bob_replies(app, "#escalate\n\nA colleague will take over.\n")
    assert "applied: #escalate" in report
    ticket = ticket_number(app)
    assert ticket.group == "L2" and ticket.assignee in ("carol", "dan")
    for agent in ("carol", "dan"):  # the whole new group hears of it, with a signed reply address
        [notice] = to(app, f"{agent}@agents.test", "escalated")
        assert "Ticket #1 was escalated by bob from L1 to L2." in notice.text
        assert f"now assigned to {ticket.assignee}" in notice.text
        assert "support+a-1-" in reply_address(notice)
    assert not to(app, "erin@agents.test")
    [event] = events_of_kind(app, "escalated")
    assert event.data["from"] == "L1" and event.data["actor"] == "agent:bob"
    # The customer still gets the answer; never the escalation.
    [answer] = to(app, "alice@customer.test", "agent_reply")
    assert "A colleague will take over." in answer.text and "L2" not in answer.text


def test_escalate_to_a_named_group_and_past_the_top(app: App) -> None:
    report = _bob_replies(app, "#escalate L3\n")
    assert "applied: #escalate L3" in report
    assert (
        ticket_number(app).group == "L3" and ticket_number(app).assignee is None
    )  # L3 assigns by hand
    assert len(to(app, "erin@agents.test", "escalated")) == 1
    # Once at the top there is nowhere higher: reported, not applied.
    notice = to(app, "erin@agents.test", "escalated")[0]
    raw = client_reply(notice, "#escalate\n", sender="Erin <erin@agents.test>")
    deliver(app, raw, rcpt=(reply_address(notice),), mail_from="erin@x")
    report = to(app, "erin@agents.test", "agent_result")[-1].text
    assert "NOT applied: #escalate (group L3 has no higher tier (escalates_to))" in report
    assert ticket_number(app).group == "L3"


def test_queue_move_and_category_correction_are_recorded_as_feedback(app: App) -> None:
    report = _bob_replies(app, "#category billing\n#queue nowhere\n")
    assert "NOT applied: #queue nowhere (no queue named 'nowhere' (known: sales))" in report
    assert ticket_number(app).category is None  # a mail with a wrong command applies nothing
    report = _bob_replies(app, "#category billing\n#queue sales\n")
    assert "applied: #category billing" in report and "applied: #queue sales" in report
    ticket = ticket_number(app)
    assert (ticket.category, ticket.queue, ticket.group) == ("billing", "sales", "L3")
    [corrected] = events_of_kind(app, "category_corrected")
    assert corrected.data["to"] == "billing" and corrected.data["actor"] == "agent:bob"
    [moved] = events_of_kind(app, "queue_changed")
    assert moved.data["to"] == "sales"


def test_a_queue_or_group_the_ticket_is_already_in_does_not_hold_the_answer(app: App) -> None:
    """``#queue sales`` twice, ``#escalate L3`` when it is with L3: as asked, so the agent's
    answer goes out; only a command that cannot be done holds the whole mail back."""
    _bob_replies(app, "#queue sales\n")
    assert (ticket_number(app).queue, ticket_number(app).group) == ("sales", "L3")

    report = _bob_replies(app, "#queue sales\n#escalate L3\n\nOur sales team has it.\n")

    assert "NOT applied" not in report
    [answer] = to(app, "alice@customer.test", "agent_reply")
    assert "Our sales team has it." in answer.text
    assert len(events_of_kind(app, "queue_changed")) == 1 and not events_of_kind(app, "escalated")

    _bob_replies(app, "#escalate\n\nA specialist will call you.\n")  # L3 is the top tier
    assert len(to(app, "alice@customer.test", "agent_reply")) == 1  # held back with it


def test_cc_a_colleague_makes_them_a_watcher_not_a_customer_recipient(app: App) -> None:
    report = _bob_replies(app, "#cc carol@agents.test\n\nLooking into it.\n")
    assert "applied: #cc carol@agents.test" in report
    with app.db.transaction() as session:
        assert list(session.scalars(select(Watcher.agent))) == ["carol"]
    [answer] = to(app, "alice@customer.test", "agent_reply")
    assert "carol@agents.test" not in answer.recipients
    assert b"carol@agents.test" not in answer.raw
    # As a watcher carol now hears the customer's replies.
    deliver(app, reply_to(make_mail(message_id="first@customer.test"), body="Thanks!\n"))
    assert len(to(app, "carol@agents.test", "customer_reply")) == 1


def test_assign_to_a_group_lets_its_strategy_choose_an_agent_now(app: App) -> None:
    """``#assign L2``: the ticket does not sit unassigned in L2; least_open gives it to carol."""
    report = _bob_replies(app, "#assign L2\n")
    assert "applied: #assign L2" in report
    ticket = ticket_number(app)
    assert (ticket.group, ticket.assignee) == ("L2", "carol")
    last = events_of_kind(app, "assigned")[-1]
    assert last.reason == "assigned to carol: fewest open tickets in L2 (0 open)"
    [notice] = to(app, "carol@agents.test", "assigned")
    assert "Ticket #1 is now assigned to you (by agent bob)" in notice.text
    assert len(to(app, "bob@agents.test", "assigned")) == 1  # bob hears it left him


def test_assign_to_a_group_with_nobody_on_shift_waits_for_the_first_one(
    tmp_path: Path, database_url: str, clock: FrozenClock
) -> None:
    """carol works Saturdays only: ``#assign L2`` on Monday waits; she gets it on Saturday."""
    rules = tmp_path / "rules"
    rules.mkdir()
    agents = [
        AGENTS[0],
        {**AGENTS[1], "hours": {"sat": "10:00-18:00"}},
        {**AGENTS[2], "groups": ["L1"]},
    ]
    settings = make_settings(
        tmp_path,
        database_url,
        agents=agents,
        groups=GROUPS,
        routing={"default_group": "L1", "rules_dir": str(rules)},
    )
    app = App.build(settings, clock=clock)
    try:
        assert "applied: #assign L2" in _bob_replies(app, "#assign L2\n")
        ticket = ticket_number(app)
        assert (ticket.group, ticket.assignee) == ("L2", None)
        assert events_of_kind(app, "assigned")[-1].reason == (
            "nobody eligible in L2 (carol off shift); no default responsible: left unassigned"
        )
        assert WaitingAssigner.for_app(app).run() == []
        clock.advance(days=5, hours=1, minutes=5)  # Saturday 10:05
        [done] = WaitingAssigner.for_app(app).run()
        assert (done.number, done.agent) == (1, "carol")
        assert ticket_number(app).assignee == "carol"
        assert len(to(app, "carol@agents.test", "assigned")) == 1
    finally:
        app.db.dispose()


@pytest.mark.parametrize("ours", ["support+sales@example.com", "Notes@Example.com"])
def test_cc_of_a_sub_address_or_internal_address_of_ours_is_refused(
    tmp_path: Path, database_url: str, clock: FrozenClock, ours: str
) -> None:
    """Our own addresses are never customer-side participants, with a +tag or internal."""
    app = routing_app(
        tmp_path, database_url, clock, agent_mail={"internal_addresses": ["notes@example.com"]}
    )
    try:
        report = _bob_replies(app, f"#cc {ours}\n\nLooking into it.\n")
        assert f"NOT applied: #cc {ours} (that is one of our own addresses)" in report
        assert to(app, "alice@customer.test", "agent_reply") == []  # held back, as asked
        with app.db.transaction() as session:
            emails = session.scalars(
                select(Contact.email)
                .join(Participant, Participant.contact_id == Contact.id)
                .where(Participant.role == ParticipantRole.CC)
            ).all()
        assert emails == []
    finally:
        app.db.dispose()
