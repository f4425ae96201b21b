"""An agent's commands against other mail changing the same ticket at the same moment.

Two nodes (two apps on one database) each run the pipeline. One side is
paused between the read its decision rests on and its write, and the other
side's mail is processed completely meanwhile (in another thread, on its own
connection), as in tests/sla/test_sweep_race.py. On SQLite the paused side's
``BEGIN IMMEDIATE`` holds the other side off until it commits.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from maildesk.agents.actions import CommandRunner
from maildesk.app import App
from maildesk.db.models import Event, Message, Outbox, Ticket, TicketStatus
from maildesk.pipeline import stages
from tests.agents.agenthelp import (
    Sent,
    agent_app,
    client_reply,
    in_thread,
    plain_mail,
    reply_address,
    to,
)
from tests.conftest import FrozenClock
from tests.mailfactory import deliver, make_mail

BOB = "bob@agents.test"


def _new_ticket(app: App, message_id: str, subject: str) -> tuple[Ticket, bytes]:
    """A customer's new ticket and the assignee's (bob's) notice of it."""
    deliver(app, make_mail(message_id=message_id, subject=subject))
    with app.db.transaction() as session:
        ticket = session.scalars(select(Ticket).order_by(Ticket.id.desc())).first()
        assert ticket is not None
        session.expunge(ticket)
    notice = [s for s in to(app, BOB, "new_ticket") if f"#{ticket.number}" in s.msg["Subject"]]
    assert len(notice) == 1
    return ticket, notice[0].raw


def _agent_mail(app: App, notice_raw: bytes, body: str) -> Callable[[], object]:
    notice = Sent("new_ticket", [BOB], notice_raw)
    raw = client_reply(notice, body)
    return lambda: deliver(app, raw, rcpt=(reply_address(notice),), mail_from=BOB)


@pytest.fixture
def nodes(tmp_path: Path, database_url: str, clock: FrozenClock) -> Iterator[tuple[App, App]]:
    apps = agent_app(tmp_path, database_url, clock), agent_app(tmp_path, database_url, clock)
    yield apps
    for app in apps:
        app.db.dispose()


def test_customer_reply_while_its_ticket_is_merged_follows_the_merge(
    nodes: tuple[App, App], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Node 1 threads a reply onto ticket A; node 2 merges A into B (#merge by bob)."""
    app, other_node = nodes
    a, _ = _new_ticket(app, "a1@customer.test", "Printer on fire")
    b, b_notice = _new_ticket(app, "b1@customer.test", "Printer still burning")
    merge = _agent_mail(other_node, b_notice, f"#merge {a.number}\n\nSame fire as #{a.number}.\n")

    original = stages.decide_thread
    finish: list[Callable[[], None]] = []

    def paused(ctx: Any, session: Any, deps: Any) -> Any:
        decision = original(ctx, session, deps)
        if ctx.message.message_id.strip("<>") == "a2@customer.test" and not finish:
            finish.append(in_thread(merge))
        return decision

    monkeypatch.setattr(stages, "decide_thread", paused)
    deliver(app, make_mail(message_id="a2@customer.test", in_reply_to="a1@customer.test"))
    assert finish, "the merge never ran"
    finish[0]()

    with app.db.transaction() as session:
        stub = session.get(Ticket, a.id)
        assert stub is not None
        merged = (stub.merged_into_id, stub.status)
        home = session.scalar(
            select(Message.ticket_id).where(Message.header_message_id.contains("a2@customer.test"))
        )
    assert merged == (b.id, TicketStatus.CLOSED)
    # Not left behind on the closed stub, where no one reads it.
    assert home == b.id


def test_two_agent_mails_resolving_one_ticket_on_two_nodes_resolve_it_once(
    nodes: tuple[App, App], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bob sends ``#status resolved`` twice (phone and desktop); two nodes take one each."""
    app, other_node = nodes
    a, a_notice = _new_ticket(app, "a1@customer.test", "Printer on fire")
    first = _agent_mail(app, a_notice, "#status resolved\n\nUnplug it.\n")
    second = _agent_mail(other_node, a_notice, "#status resolved\n\nUnplug it, really.\n")

    original = CommandRunner.run
    main = threading.current_thread()
    finish: list[Callable[[], None]] = []

    def paused(self: CommandRunner, commands: Any) -> Any:
        if threading.current_thread() is main:  # the first mail's commands: pause them
            finish.append(in_thread(second))
        return original(self, commands)

    monkeypatch.setattr(CommandRunner, "run", paused)
    first()
    assert finish, "the second mail never ran"
    finish[0]()

    with app.db.transaction() as session:
        ticket = session.get(Ticket, a.id)
        assert ticket is not None
        status = ticket.status
        notices = list(session.scalars(select(Outbox.purpose).where(Outbox.purpose == "resolved")))
    assert status is TicketStatus.RESOLVED
    # The customer is told once; the second command finds the ticket resolved already.
    assert notices == ["resolved"]


def _held_status_resolved(app: App) -> Sent:
    """Bob's new mail with ``#status resolved`` for a ticket: held, and his confirm request."""
    a, _ = _new_ticket(app, "a1@customer.test", "Printer on fire")
    raw = plain_mail(
        "Bob Agent <bob@agents.test>",
        "support@example.com",
        f"[Support #{a.number}] done",
        "#status resolved\n",
    )
    deliver(app, raw, mail_from=BOB)
    [request] = to(app, BOB, "agent_confirm")
    return request


def _confirmed_twice(
    nodes: tuple[App, App], monkeypatch: pytest.MonkeyPatch, first: bytes, second: bytes, rcpt: str
) -> tuple[TicketStatus, list[str], list[str]]:
    """``first`` on node 1, paused after its check of the held row; ``second`` on node 2."""
    app, other_node = nodes
    original = CommandRunner.run
    main = threading.current_thread()
    finish: list[Callable[[], None]] = []

    def paused(self: CommandRunner, commands: Any) -> Any:
        if threading.current_thread() is main and not finish:
            finish.append(
                in_thread(lambda: deliver(other_node, second, rcpt=(rcpt,), mail_from=BOB))
            )
        return original(self, commands)

    monkeypatch.setattr(CommandRunner, "run", paused)
    deliver(app, first, rcpt=(rcpt,), mail_from=BOB)
    assert finish, "the second confirmation never ran"
    finish[0]()

    with app.db.transaction() as session:
        ticket = session.scalars(select(Ticket).order_by(Ticket.id)).first()
        assert ticket is not None
        status = ticket.status
        notices = list(session.scalars(select(Outbox.purpose).where(Outbox.purpose == "resolved")))
        kinds = Event.kind.in_(["agent_confirmed", "status"])
        confirmed = list(session.scalars(select(Event.kind).where(kinds).order_by(Event.id)))
    return status, notices, confirmed


def test_two_confirmations_of_held_commands_on_two_nodes_apply_them_once(
    nodes: tuple[App, App], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bob answers the confirm request twice (phone and desktop); two nodes take one each."""
    request = _held_status_resolved(nodes[0])
    first, second = client_reply(request, "ok\n"), client_reply(request, "yes, ok\n")
    seen = _confirmed_twice(nodes, monkeypatch, first, second, reply_address(request))
    assert seen == (TicketStatus.RESOLVED, ["resolved"], ["status", "agent_confirmed"])


def test_two_confirmations_without_thread_headers_apply_the_held_commands_once(
    nodes: tuple[App, App], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same, from a client that sends no In-Reply-To, References or quote.

    Only the signed confirm address names the ticket and the held commands, so
    threading finds (and locks) nothing: the writer has to lock what it decides on.
    """
    request = _held_status_resolved(nodes[0])
    address = reply_address(request)
    subject = f"Re: {request.msg['Subject']}"
    first = plain_mail("Bob Agent <bob@agents.test>", address, subject, "ok\n")
    second = plain_mail("Bob Agent <bob@agents.test>", address, subject, "yes, ok\n")
    seen = _confirmed_twice(nodes, monkeypatch, first, second, address)
    # The customer is told once; the second confirmation finds the commands applied.
    assert seen == (TicketStatus.RESOLVED, ["resolved"], ["status", "agent_confirmed"])
