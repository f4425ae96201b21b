"""Bounces for customers with internationalised addresses (RFC 6533), end to end.

When an answer to jörg@example.de bounces, the report comes back in RFC 6533's
forms: a ``message/global-delivery-status`` part, the address typed ``utf-8``
(in UTF-8 or with ``\\x{...}`` escapes), the returned mail as ``message/global``
or its headers as ``message/global-headers``. It must do what an ASCII bounce
does (tests/outbound/test_bounces.py, test_delivery_failed_notice.py): join the
ticket, suppress an address that does not exist, so nothing more is queued to
it, and tell the agent whose answer it was.

The reports come in through our real SMTP listener, as an MTA gives them:
null sender, SMTPUTF8.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from maildesk.app import App
from maildesk.db.models import Event, Message, Outbox, OutboxState, Suppression
from tests.conftest import FrozenClock
from tests.eai_dsn import JOERG, exim_dsn, m365_dsn, postfix_dsn
from tests.outbound.test_bounces import text_bounce
from tests.outbound.test_eai import (
    ANNA_IDN,
    ANNA_WIRE,
    BOB,
    Utf8Relay,
    bob_answers,
    by_smtp,
    desk,
    eai_mail,
    jörg_opens_a_ticket,
    parsed,
    text_of,
)

ANSWER = "Hallo Jörg,\n\nbitte ziehen Sie den Stecker.\n"


@pytest.fixture
def relay() -> Iterator[Utf8Relay]:
    sink = Utf8Relay()
    sink.start()
    yield sink
    sink.stop()


@pytest.fixture
def app(tmp_path: Path, database_url: str, clock: FrozenClock, relay: Utf8Relay) -> Iterator[App]:
    application = desk(tmp_path, database_url, clock, relay)
    yield application
    application.db.dispose()


def bounce_by_smtp(app: App, raw: bytes, rcpt: str) -> None:
    """An MTA hands its report to our real SMTP listener (null sender, SMTPUTF8)."""
    by_smtp(app, raw, "<>", rcpt)


def answered(app: App, relay: Utf8Relay) -> tuple[Outbox, bytes]:
    """Jörg opens ticket #1 through our listener; Bob's answer reaches the relay."""
    jörg_opens_a_ticket(app)
    app.sender().drain()
    bob_answers(app, ANSWER)
    app.sender().drain()
    with app.db.transaction() as session:
        row = session.scalars(select(Outbox).where(Outbox.purpose == "agent_reply")).one()
        session.expunge(row)
    assert row.state is OutboxState.SENT and row.recipients == [JOERG]
    _ack, sent = relay.to(JOERG)
    return row, sent.raw


def suppressed(app: App) -> set[str]:
    with app.db.transaction() as session:
        return set(session.scalars(select(Suppression.address)))


def bounce_ticket(app: App) -> int | None:
    with app.db.transaction() as session:
        bounce = session.scalars(select(Message).where(Message.auto_kind == "bounce")).one()
        return bounce.ticket_id


def notices_to_bob(relay: Utf8Relay) -> list[str]:
    return [text_of(parsed(m.raw)) for m in relay.to(BOB) if b"NOT delivered" in m.raw]


# Each MTA's report, and what its delivery-status part says the remote server answered.
REPORTS: dict[str, tuple[Callable[[str, bytes], bytes], str]] = {
    "postfix": (postfix_dsn, "Recipient address rejected: User unknown in virtual mailbox"),
    "exim": (exim_dsn, "550 5.1.1 <jörg@example.de>: Recipient address rejected: User unknown"),
    "microsoft365": (m365_dsn, "RESOLVER.ADR.RecipientNotFound; Recipient jörg@example.de"),
}


@pytest.mark.parametrize("mta", list(REPORTS))
def test_an_rfc6533_bounce_of_an_answer_suppresses_jörg_and_tells_the_agent(
    app: App, relay: Utf8Relay, mta: str
) -> None:
    """As for an ASCII bounce: the ticket, the suppression, one notice to Bob with what
    the remote server said; and a later answer of Bob's is not queued to the dead address.

    (Postfix's and Exim's own words name jörg and a 5.1.1, which the reading of text
    bounces found before; Microsoft's do not, and no notice quoted a server's answer.)
    """
    report, said = REPORTS[mta]
    answer, sent = answered(app, relay)
    bounce_by_smtp(app, report(answer.envelope_from, sent), answer.envelope_from)

    assert suppressed(app) == {JOERG}
    assert bounce_ticket(app) == answer.ticket_id
    app.sender().drain()
    [notice] = notices_to_bob(relay)
    assert f"NOT delivered to: {JOERG}" in notice
    assert "The recipient's mail system sent it back" in notice
    assert said in " ".join(notice.split())
    assert f"{JOERG} is suppressed" in notice

    bob_answers(app, "Hallo Jörg,\n\nnoch ein Versuch.\n")
    app.sender().drain()
    assert [row.purpose for row in queued_to(app, JOERG)] == ["ack", "agent_reply"]
    assert len(relay.to(JOERG)) == 2  # his acknowledgement and the first answer, no more


def queued_to(app: App, address: str) -> list[Outbox]:
    with app.db.transaction() as session:
        rows = session.scalars(select(Outbox).order_by(Outbox.id)).all()
        return [row for row in rows if address in row.recipients]


def test_a_bounce_naming_no_verp_address_joins_by_the_returned_global_headers(
    app: App, relay: Utf8Relay
) -> None:
    """A relay that bounces to the From, not to our return path: the Message-ID in the
    returned ``message/global-headers`` names the answer, its ticket and its recipient."""
    answer, sent = answered(app, relay)
    bounce_by_smtp(app, exim_dsn("support@example.com", sent), "support@example.com")

    assert bounce_ticket(app) == answer.ticket_id
    assert suppressed(app) == {JOERG}
    app.sender().drain()
    assert len(notices_to_bob(relay)) == 1


def test_a_full_mailbox_in_a_global_report_suppresses_nobody_but_tells_the_agent(
    app: App, relay: Utf8Relay
) -> None:
    """5.2.2 is this mail's failure, not the address's: jörg stays reachable, the
    event says why, and Bob hears his answer did not arrive."""
    answer, sent = answered(app, relay)
    report = postfix_dsn(answer.envelope_from, sent, status="5.2.2", said="Mailbox full")
    bounce_by_smtp(app, report, answer.envelope_from)

    assert suppressed(app) == set()
    with app.db.transaction() as session:
        [event] = session.scalars(select(Event).where(Event.kind == "bounce_not_suppressed"))
        assert event.ticket_id == answer.ticket_id
        assert f"{JOERG}: 5.2.2" in event.reason
    app.sender().drain()
    [notice] = notices_to_bob(relay)
    assert f"NOT delivered to: {JOERG}" in notice and "Mailbox full" in notice
    assert "The address is not suppressed" in notice


def anna_answered(app: App, relay: Utf8Relay) -> tuple[Outbox, bytes]:
    """Anna writes from anna@bücher.example; Bob's answer goes to her domain's A-labels."""
    anna = eai_mail(f"Anna <{ANNA_IDN}>", "Frage", "Eine Frage.\n", "a1@x.test")
    by_smtp(app, anna, ANNA_WIRE)
    app.sender().drain()
    bob_answers(app, "Hallo Anna,\n\nja.\n")
    app.sender().drain()
    with app.db.transaction() as session:
        answer = session.scalars(select(Outbox).where(Outbox.purpose == "agent_reply")).one()
        session.expunge(answer)
    assert answer.recipients == [ANNA_WIRE]
    _ack, sent = relay.to(ANNA_WIRE)
    return answer, sent.raw


def test_an_idn_customer_bounced_under_her_u_label_domain_is_suppressed_by_her_wire_address(
    app: App, relay: Utf8Relay
) -> None:
    """We mail anna at her domain's A-labels (anna@xn--bcher-kva.example); Exchange
    reports her as anna@bücher.example. One address: suppressed as we mailed it, Bob
    told, and his next answer not queued to her."""
    answer, sent = anna_answered(app, relay)
    report = m365_dsn(answer.envelope_from, sent, recipient=ANNA_IDN)
    bounce_by_smtp(app, report, answer.envelope_from)

    assert suppressed(app) == {ANNA_WIRE}
    app.sender().drain()
    [told] = notices_to_bob(relay)
    assert f"NOT delivered to: {ANNA_WIRE}" in told and f"{ANNA_WIRE} is suppressed" in told
    bob_answers(app, "Hallo Anna,\n\nnoch ein Versuch.\n")
    assert [row.purpose for row in queued_to(app, ANNA_WIRE)] == ["ack", "agent_reply"]


def test_a_malformed_global_report_is_stored_on_the_ticket_and_read_by_its_words(
    app: App, relay: Utf8Relay
) -> None:
    """Latin-1 where UTF-8 belongs and an escape of no character (a surrogate) in the
    report's fields: it is kept on the answer's ticket, as a bounce. Its fields name
    nobody we mailed (said as an event); its words say jörg is unknown, as a text
    bounce's would, so he is suppressed and Bob is told."""
    answer, sent = answered(app, relay)
    report = postfix_dsn(answer.envelope_from, sent).replace(
        "Final-Recipient: utf-8; jörg@example.de\r\n".encode(),
        b"Final-Recipient: utf-8; j\xf6rg\\x{D800}@example.de\r\n",
    )
    report = report.replace("Original-Recipient: utf-8; jörg@example.de\r\n".encode(), b"")
    bounce_by_smtp(app, report, answer.envelope_from)

    assert bounce_ticket(app) == answer.ticket_id
    with app.db.transaction() as session:
        [refused] = session.scalars(select(Event).where(Event.kind == "suppression_refused"))
        assert "jörg\\x{d800}@example.de" in refused.reason
    assert suppressed(app) == {JOERG}
    app.sender().drain()
    [notice] = notices_to_bob(relay)
    assert f"NOT delivered to: {JOERG}" in notice


def test_a_text_bounce_naming_her_u_label_domain_suppresses_her_wire_address(
    app: App, relay: Utf8Relay
) -> None:
    """A bounce with no delivery-status part (an old Exchange's text NDR) writes
    anna@bücher.example, where we mailed anna@xn--bcher-kva.example: its words are
    read for her all the same, so she is suppressed and Bob is told."""
    answer, _sent = anna_answered(app, relay)
    returned = f"Message-ID: <{answer.message_id}>\r\nTo: {ANNA_IDN}\r\n"
    bounce_by_smtp(app, text_bounce(ANNA_IDN, returned, people=ANNA_IDN), answer.envelope_from)

    assert suppressed(app) == {ANNA_WIRE}
    app.sender().drain()
    [told] = notices_to_bob(relay)
    assert f"NOT delivered to: {ANNA_WIRE}" in told and f"{ANNA_WIRE} is suppressed" in told
