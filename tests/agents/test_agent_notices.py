"""What agents receive, and when: one notice per agent and mail, nobody left out."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from maildesk.app import App
from maildesk.db.models import Outbox, Ticket, Watcher
from tests.agents.agenthelp import (
    AGENTS,
    agent_app,
    client_reply,
    events_of_kind,
    outbox,
    reply_address,
    ticket_number,
    to,
)
from tests.conftest import FrozenClock, make_settings
from tests.mailfactory import deliver, make_mail, reply_to
from tests.sla.slahelp import sweeper

ALICE = "alice@customer.test"
BOB = "bob@agents.test"
CAROL = "carol@agents.test"
DAN = "dan@agents.test"
FIRST = "first@customer.test"


def _app_with(
    tmp_path: Path, database_url: str, clock: FrozenClock, agents: list[dict[str, Any]], **kw: Any
) -> App:
    """``agent_app`` with other agents (``groups`` too, when given)."""
    rules = tmp_path / "rules"
    rules.mkdir(exist_ok=True)
    settings = make_settings(
        tmp_path,
        database_url,
        agents=agents,
        groups=kw.pop("groups", [{"name": "L1"}, {"name": "L2"}]),
        routing={"default_group": "L1", "rules_dir": str(rules)},
        **kw,
    )
    return App.build(settings, clock=clock)


def _set(app: App, number: int, **values: object) -> None:
    with app.db.transaction() as session:
        ticket = session.scalars(select(Ticket).where(Ticket.number == number)).one()
        for key, value in values.items():
            setattr(ticket, key, value)


def _customer_reply(app: App, body: str = "Any news?\n") -> None:
    deliver(app, reply_to(make_mail(message_id=FIRST), body=body))


# -- SLA notices invite a reply: the reply must count as the agent's ------------------


@pytest.mark.parametrize("style", ["thunderbird", "outlook", "gmail"])
def test_an_agents_reply_to_an_sla_breach_notice_reaches_the_customer(
    tmp_path: Path, database_url: str, clock: FrozenClock, style: str
) -> None:
    sla = {
        "default_policy": "p",
        "policies": [
            {
                "name": "p",
                "warning_share": None,
                "first_response": {"minutes": 30, "basis": "calendar"},
                "breach": {"notify": ["assignee"]},
            }
        ],
    }
    app = agent_app(tmp_path, database_url, clock, sla=sla)
    try:
        deliver(app, make_mail(message_id=FIRST))
        assert ticket_number(app).assignee == "bob"
        clock.advance(minutes=31)
        assert sweeper(app).run().fired == 1
        [breach] = to(app, BOB, "sla_breach")
        assert "Reply to this mail to answer on the ticket." in breach.text
        # Bob does what the notice says, from his own mail client.
        raw = client_reply(breach, "Hello Alice,\n\nsorry for the wait: unplug it.\n", style=style)
        deliver(app, raw, rcpt=(reply_address(breach),), mail_from=BOB)
        assert not events_of_kind(app, "agent_mail_held")
        [answer] = to(app, ALICE, "agent_reply")
        assert "sorry for the wait" in answer.text
        assert "missed" not in answer.text  # the quoted notice is cut
    finally:
        app.db.dispose()


# -- one customer mail, one notice per agent ------------------------------------------

ON_SHIFT_AGENTS: list[dict[str, Any]] = [
    {
        "name": "bob",
        "addresses": [BOB],
        "groups": ["L1"],
        "hours": {"mon": "08:00-12:00"},  # UTC
    },
    {"name": "dan", "addresses": [DAN], "groups": ["L1"]},
    {"name": "carol", "addresses": [CAROL], "groups": ["L2"]},
]


def _agent_mails(app: App, address: str) -> list[str]:
    return [s.purpose for s in outbox(app) if address in s.recipients]


def test_a_reopened_ticket_given_to_someone_else_tells_them_once(
    tmp_path: Path, database_url: str, clock: FrozenClock
) -> None:
    app = _app_with(tmp_path, database_url, clock, ON_SHIFT_AGENTS)
    try:
        deliver(app, make_mail(message_id=FIRST))
        assert ticket_number(app).assignee == "bob"
        _set(app, 1, status="resolved")
        clock.now = datetime(2026, 3, 2, 13, 0, tzinfo=UTC)  # bob's shift is over
        _customer_reply(app, "It is burning again.\n")
        ticket = ticket_number(app)
        assert (ticket.status, ticket.assignee) == ("open", "dan")
        # Dan hears of it once, with the customer's words; not once per reason.
        told = [s for s in outbox(app) if DAN in s.recipients]
        assert len(told) == 1, [s.purpose for s in told]
        assert "burning again" in told[0].text
        assert "support+a-1-" in reply_address(told[0])
    finally:
        app.db.dispose()


def test_a_follow_up_rule_escalation_tells_the_new_assignee_once(
    tmp_path: Path, database_url: str, clock: FrozenClock
) -> None:
    rules = tmp_path / "rules"
    rules.mkdir(exist_ok=True)
    (rules / "10-outage.toml").write_text(
        "[[rule]]\n"
        'name = "outage-follow-up"\n'
        "follow_ups = true\n"
        "when = { subject_regex = '\\boutage\\b' }\n"
        "then = { escalate = true }\n"
    )
    groups = [{"name": "L1", "escalates_to": "L2"}, {"name": "L2"}]
    app = _app_with(tmp_path, database_url, clock, ON_SHIFT_AGENTS, groups=groups)
    try:
        first = make_mail(message_id=FIRST, subject="printer")
        deliver(app, first)
        deliver(app, reply_to(first, subject="Re: printer - now a total outage", body="Down.\n"))
        ticket = ticket_number(app)
        assert (ticket.group, ticket.assignee) == ("L2", "carol")
        told = [s for s in outbox(app) if CAROL in s.recipients]
        assert [s.purpose for s in told] == ["escalated"]
        assert "Down." in told[0].text
    finally:
        app.db.dispose()


# -- nobody left out --------------------------------------------------------------------


def test_a_watcher_set_by_a_rule_hears_of_the_new_ticket(
    tmp_path: Path, database_url: str, clock: FrozenClock
) -> None:
    rules = tmp_path / "rules"
    rules.mkdir(exist_ok=True)
    (rules / "10-watch.toml").write_text(
        '[[rule]]\nname = "printers"\nwhen = { subject_regex = "printer" }\n'
        'then = { watchers = ["carol"] }\n'
    )
    app = agent_app(tmp_path, database_url, clock)
    try:
        deliver(app, make_mail(message_id=FIRST))
        assert ticket_number(app).assignee == "bob"
        assert _agent_mails(app, BOB) == ["new_ticket"]
        [notice] = to(app, CAROL, "new_ticket")
        assert "my printer is on fire" in notice.text
        assert "support+a-1-" in reply_address(notice)
    finally:
        app.db.dispose()


def test_a_reply_on_an_unassigned_ticket_reaches_its_group_and_its_watcher(app: App) -> None:
    deliver(app, make_mail(message_id=FIRST))
    _set(app, 1, assignee=None)
    with app.db.transaction() as session:
        ticket = session.scalars(select(Ticket)).one()
        session.add(
            Watcher(ticket_id=ticket.id, agent="carol", added_by="t", created_at=ticket.created_at)
        )
    _customer_reply(app)
    assert len(to(app, CAROL, "customer_reply")) == 1
    assert len(to(app, BOB, "customer_reply")) == 1  # L1, the ticket's group


def test_a_reply_while_the_assignee_is_away_reaches_the_group(
    tmp_path: Path, database_url: str, clock: FrozenClock
) -> None:
    away = {"start": "2026-03-03", "end": "2026-03-13"}
    agents = [
        {"name": "bob", "addresses": [BOB], "groups": ["L1"], "absences": [away]},
        {"name": "dan", "addresses": [DAN], "groups": ["L1"]},
    ]
    app = _app_with(tmp_path, database_url, clock, agents)
    try:
        deliver(app, make_mail(message_id=FIRST))
        assert ticket_number(app).assignee == "bob"
        clock.now = datetime(2026, 3, 4, 10, 0, tzinfo=UTC)  # bob is on leave
        _customer_reply(app, "Still burning.\n")
        [told] = to(app, DAN, "customer_reply")
        assert "Still burning." in told.text
        assert not to(app, BOB, "customer_reply")
    finally:
        app.db.dispose()


def test_a_reply_on_a_ticket_of_an_agent_who_left_reaches_the_group(
    tmp_path: Path, database_url: str, clock: FrozenClock
) -> None:
    before = agent_app(tmp_path, database_url, clock)
    try:
        deliver(before, make_mail(message_id=FIRST))
        assert ticket_number(before).assignee == "bob"
    finally:
        before.db.dispose()
    agents = [*AGENTS[1:], {"name": "dan", "addresses": [DAN], "groups": ["L1"]}]
    app = _app_with(tmp_path, database_url, clock, agents)  # bob has left
    try:
        _customer_reply(app, "Hello? Anyone?\n")
        [told] = to(app, DAN, "customer_reply")
        assert "Anyone?" in told.text
    finally:
        app.db.dispose()


# -- answers to an agent's own mail are not held for their shift ----------------------


def test_the_result_of_an_agents_reply_off_shift_is_not_held_until_the_next_shift(
    tmp_path: Path, database_url: str, clock: FrozenClock
) -> None:
    app = _app_with(tmp_path, database_url, clock, ON_SHIFT_AGENTS)
    try:
        deliver(app, make_mail(message_id=FIRST))
        [notice] = to(app, BOB, "new_ticket")
        clock.now = datetime(2026, 3, 2, 22, 0, tzinfo=UTC)  # bob answers in the evening
        raw = client_reply(notice, "#priority high\n\nHello Alice,\n\nunplug it.\n")
        deliver(app, raw, rcpt=(reply_address(notice),), mail_from=BOB)
        assert ticket_number(app).priority == "high"
        with app.db.transaction() as session:
            row = session.scalars(select(Outbox).where(Outbox.purpose == "agent_result")).one()
        assert row.next_attempt_at <= clock()  # now, while he is at it; not tomorrow 08:00
    finally:
        app.db.dispose()
