"""An agent whose answer never reaches the customer is told by mail (MAIL-RULES §5).

With no web UI, an ``outbound_failed`` event on the ticket is seen by nobody:
Bob believes Alice has his answer. Whatever says it failed first (our relay
refusing it, the outbox giving up, a bounce from Alice's side), Bob gets one
``delivery_failed`` notice he can reply to; a second signal for the same mail
gives no second notice, and mail nobody wrote (an acknowledgement) or mail to
an agent (a notice about a notice would loop) gives none at all.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from maildesk.app import App
from maildesk.db.models import Event, Outbox, OutboxState
from tests.agents.agenthelp import AGENTS, agent_app, client_reply, reply_address, to
from tests.conftest import FrozenClock
from tests.daemon_harness import RelaySink
from tests.mailfactory import deliver, make_mail
from tests.outbound.test_bounces import dsn

ALICE = "alice@customer.test"
BOB = "bob@agents.test"
CAROL = "carol@agents.test"


@dataclass
class RefusingRelay(RelaySink):
    """A real relay that answers RCPT for the addresses in ``refuse`` with their reply."""

    refuse: dict[str, str] = field(default_factory=dict)

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    def mail_to(self, address: str) -> list[EmailMessage]:
        found = []
        for mail in self.received:
            if address in mail.rcpt_tos:
                parsed = message_from_bytes(mail.raw, policy=policy.default)
                assert isinstance(parsed, EmailMessage)
                found.append(parsed)
        return found


def text_of(mail: EmailMessage) -> str:
    body = mail.get_body(("plain",))
    assert body is not None
    return str(body.get_content())


@pytest.fixture
def relay() -> Iterator[RefusingRelay]:
    sink = RefusingRelay()
    sink.start()
    yield sink
    sink.stop()


def _app(
    tmp_path: Path, database_url: str, clock: FrozenClock, relay: RelaySink, **more: Any
) -> App:
    """The agents' app, its outbox sent by the daemon's sender to the real relay."""
    outbound = {"transport": "smtp", "relay_port": relay.port}
    return agent_app(tmp_path, database_url, clock, outbound=outbound, **more)


@pytest.fixture
def app(
    tmp_path: Path, database_url: str, clock: FrozenClock, relay: RefusingRelay
) -> Iterator[App]:
    application = _app(tmp_path, database_url, clock, relay)
    yield application
    application.db.dispose()


def drain(app: App) -> None:
    app.sender().drain()


def bob_answers(app: App, body: str = "Hello Alice,\n\nplease unplug the printer.\n") -> None:
    """Alice opens ticket #1 (her acknowledgement and Bob's notice go out); Bob answers."""
    deliver(app, make_mail(message_id="first@customer.test", body="My printer is on fire.\n"))
    drain(app)
    [notice] = to(app, BOB, "new_ticket")
    deliver(app, client_reply(notice, body), rcpt=(reply_address(notice),), mail_from=BOB)


def outbox_row(app: App, purpose: str) -> Outbox:
    with app.db.transaction() as session:
        row = session.scalars(select(Outbox).where(Outbox.purpose == purpose)).one()
        session.expunge(row)
        return row


def notices_queued(app: App) -> int:
    return len(to(app, BOB, "delivery_failed")) + len(to(app, CAROL, "delivery_failed"))


def test_an_answer_our_relay_refuses_is_told_to_its_agent_once(
    app: App, relay: RefusingRelay
) -> None:
    """The relay says 550 5.1.1 for Alice: Bob hears which ticket, whom, why, and that
    Alice is suppressed now; the bounce that follows for the same mail tells nothing new."""
    bob_answers(app)
    relay.refuse[ALICE] = "550 5.1.1 <alice@customer.test>: mailbox unavailable"
    drain(app)  # the answer is refused; Bob's notice is queued
    drain(app)  # and goes out

    [notice] = relay.mail_to(BOB)[1:]  # after his new-ticket notice
    text = text_of(notice)
    assert "NOT delivered" in str(notice["Subject"]) and "#1]" in str(notice["Subject"])
    assert text.startswith("-- reply above this line [ref:md-1-")
    assert "Your answer on ticket #1" in text and f"NOT delivered to: {ALICE}" in text
    assert "Our mail relay did not take it" in text and "5.1.1" in text
    assert f"{ALICE} is suppressed: maildesk will not mail it until 2026-04-01" in text
    assert "please unplug the printer." in text  # what to send again
    assert str(notice["Message-ID"]).startswith("<md.a.1.")  # signed for Bob: he can reply
    local = reply_address_of(notice).split("@")[0]
    assert app.signer.parse_reply_local_part(local, agent="bob") is not None
    assert len(relay.mail_to(ALICE)) == 1  # her acknowledgement, nothing more

    # Alice's side bounces the same answer later (it reached them another way).
    answer = outbox_row(app, "agent_reply")
    deliver(app, dsn(answer.envelope_from, [ALICE]), rcpt=(answer.envelope_from,), mail_from="")
    drain(app)
    assert notices_queued(app) == 1
    assert len(relay.mail_to(BOB)) == 2


def reply_address_of(mail: EmailMessage) -> str:
    return str(mail["Reply-To"]).rpartition("<")[2].rstrip(">").strip()


def test_a_bounce_of_an_answer_is_told_to_its_agent_once_however_often_it_comes(
    app: App, relay: RefusingRelay
) -> None:
    """The relay took the answer; Alice's server bounces it, by our VERP address and
    again by its returned headers: one notice, with the bounce's diagnostic."""
    bob_answers(app)
    drain(app)
    answer = outbox_row(app, "agent_reply")
    assert answer.state is OutboxState.SENT
    deliver(app, dsn(answer.envelope_from, [ALICE]), rcpt=(answer.envelope_from,), mail_from="")
    returned = f"Message-ID: <{answer.message_id}>\r\nTo: {ALICE}\r\n"
    deliver(app, dsn("support@example.com", [ALICE], returned), mail_from="")
    drain(app)

    [notice] = relay.mail_to(BOB)[1:]
    text = text_of(notice)
    assert "Your answer on ticket #1" in text
    assert "The recipient's mail system sent it back" in text
    assert "550 5.1.1 no such user" in text
    assert f"{ALICE} is suppressed" in text
    assert notices_queued(app) == 1
    assert len(relay.mail_to(ALICE)) == 2  # acknowledgement and answer, nothing more


def test_a_resolution_mail_the_agent_caused_is_told_and_an_acknowledgement_is_not(
    app: App, relay: RefusingRelay
) -> None:
    """Alice's server refuses our mail as spam (the address is fine: not suppressed).
    Her acknowledgement failing is nobody's doing; the resolution mail of Bob's
    ``#status resolved`` failing is his to hear about."""
    relay.refuse[ALICE] = "554 5.7.1 message rejected as spam"
    bob_answers(app, "#status resolved\n")
    assert outbox_row(app, "ack").state is OutboxState.FAILED
    assert notices_queued(app) == 0
    drain(app)
    drain(app)

    [notice] = relay.mail_to(BOB)[2:]  # after his new-ticket notice and command result
    text = text_of(notice)
    assert "Your resolution mail on ticket #1" in text and "5.7.1" in text
    assert "The address is not suppressed" in text
    assert notices_queued(app) == 1


def test_an_answer_the_outbox_gives_up_on_is_told_and_a_failed_notice_is_not(
    app: App, relay: RefusingRelay, clock: FrozenClock
) -> None:
    """Alice's server says "later" until the outbox gives up; then Bob's notice fails
    for good too: nothing more is queued (a notice about a notice would loop)."""
    bob_answers(app)
    relay.refuse[ALICE] = "451 4.3.0 try again later"
    drain(app)
    clock.advance(hours=app.settings.outbound.give_up_after_hours + 1)
    relay.refuse[BOB] = "550 5.1.1 no such user"
    drain(app)  # the answer: given up, Bob's notice queued
    drain(app)  # Bob's notice: refused for good

    [row] = [r for r in rows(app) if r.purpose == "delivery_failed"]
    assert row.state is OutboxState.FAILED
    assert [r.state for r in rows(app)].count(OutboxState.QUEUED) == 0
    [notice] = to(app, BOB, "delivery_failed")
    assert "gave up retrying: alice@customer.test: 451" in notice.text
    assert "4.3.0 try again later" in notice.text
    with app.db.transaction() as session:  # the notice's failure is on the ticket, no more
        failed = session.scalars(select(Event.reason).where(Event.kind == "outbound_failed"))
        assert [r.split(" ", 1)[0] for r in failed] == ["agent_reply", "delivery_failed"]
    assert notices_queued(app) == 1


def rows(app: App) -> list[Outbox]:
    with app.db.transaction() as session:
        found = list(session.scalars(select(Outbox).order_by(Outbox.id)))
        session.expunge_all()
        return found


def test_an_absent_author_is_stood_in_for_by_the_group(
    tmp_path: Path, database_url: str, clock: FrozenClock, relay: RefusingRelay
) -> None:
    """Bob answered and went on leave; the bounce comes then: Carol, his group, hears."""
    agents = [
        {**AGENTS[0], "absences": [{"start": "2026-03-03", "end": "2026-03-20"}]},
        {**AGENTS[1], "groups": ["L1"]},
    ]
    app = _app(tmp_path, database_url, clock, relay, agents=agents)
    try:
        bob_answers(app)
        drain(app)
        clock.now = datetime(2026, 3, 4, 10, 0, tzinfo=UTC)
        answer = outbox_row(app, "agent_reply")
        report = dsn(answer.envelope_from, [ALICE])
        deliver(app, report, rcpt=(answer.envelope_from,), mail_from="")
        drain(app)
    finally:
        app.db.dispose()
    [notice] = [m for m in relay.mail_to(CAROL) if "NOT delivered" in str(m["Subject"])]
    assert "The answer by bob on ticket #1" in text_of(notice)
    assert not [m for m in relay.mail_to(BOB) if "NOT delivered" in str(m["Subject"])]
