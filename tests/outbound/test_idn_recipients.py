"""Recipients beyond ASCII, at a relay that does not offer SMTPUTF8. A domain goes
out in its IDNA form and needs nothing of the relay; an address with no ASCII form
(a local part beyond ASCII, see test_eai) must not stall the outbox: smtplib raised
UnicodeEncodeError out of the sender, the drain stopped at that row, and it and every
row claimed behind it were tried again and again, never sent.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import select

from maildesk.app import App
from maildesk.db.models import Event, Outbox, OutboxState
from tests.daemon_harness import RelaySink
from tests.mailfactory import deliver, make_mail
from tests.outbound.test_bounces import drain_to
from tests.outbound.test_outbox_claims import queue

IDN = "kunde@bücher.test"
UTF8_LOCAL = "jürgen@customer.test"


@pytest.fixture
def relay() -> Iterator[RelaySink]:
    """A relay as before RFC 6531: no SMTPUTF8."""
    sink = RelaySink(smtputf8=False).start()
    yield sink
    sink.stop()


def test_a_customer_at_an_idn_domain_gets_mail_at_the_domain_s_ascii_form(
    app: App, relay: RelaySink
) -> None:
    """bücher.test goes out as xn--bcher-kva.test, in the envelope and the To header."""
    raw = make_mail(message_id="idn@x.test", subject="Frage")
    deliver(app, raw.replace(b"alice@customer.test", IDN.encode()))
    deliver(app, make_mail(message_id="q@customer.test"))

    drain_to(app, relay)
    assert sorted(mail.rcpt_tos for mail in relay.received) == [
        ["alice@customer.test"],
        ["kunde@xn--bcher-kva.test"],
    ]
    (idn,) = [m for m in relay.received if m.rcpt_tos != ["alice@customer.test"]]
    assert "kunde@xn--bcher-kva.test" in str(idn.message["To"])
    with app.db.transaction() as session:
        states = {row.state for row in session.scalars(select(Outbox))}
    assert states == {OutboxState.SENT}


def test_a_customer_whose_address_has_no_ascii_form_does_not_stop_other_customers_mail(
    app: App, relay: RelaySink
) -> None:
    """A local part beyond ASCII needs SMTPUTF8: without it the acknowledgement fails, with why."""
    raw = make_mail(message_id="utf8@x.test", subject="Frage")
    deliver(app, raw.replace(b"alice@customer.test", UTF8_LOCAL.encode()))
    deliver(app, make_mail(message_id="q@customer.test"))

    drain_to(app, relay)
    assert [mail.rcpt_tos for mail in relay.received] == [["alice@customer.test"]]
    with app.db.transaction() as session:
        rows = session.scalars(select(Outbox).order_by(Outbox.id)).all()
        assert [row.state for row in rows] == [OutboxState.FAILED, OutboxState.SENT]
        assert rows[0].last_error == f"the relay does not offer SMTPUTF8, needed for {UTF8_LOCAL}"
        failed = session.scalars(select(Event.reason).where(Event.kind == "outbound_failed")).all()
    assert any(UTF8_LOCAL in reason for reason in failed)


def test_a_queued_mail_the_relay_cannot_take_fails_with_a_reason_and_the_rest_go(
    app: App, relay: RelaySink
) -> None:
    queue(app, "first")
    queue(app, "second")
    with app.db.transaction() as session:
        first = session.scalars(select(Outbox).order_by(Outbox.id)).first()
        assert first is not None
        first.recipients = [IDN]

    drain_to(app, relay)
    assert [str(mail.message["Subject"]) for mail in relay.received] == ["second"]
    with app.db.transaction() as session:
        rows = session.scalars(select(Outbox).order_by(Outbox.id)).all()
        assert [row.state for row in rows] == [OutboxState.FAILED, OutboxState.SENT]
        assert IDN in (rows[0].last_error or "")
