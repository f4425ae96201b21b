"""A recipient our relay cannot be given as it is (non-ASCII, no SMTPUTF8) must not stall
the outbox: smtplib raised UnicodeEncodeError out of the sender, the drain stopped at
that row, and it and every row claimed behind it were tried again and again, never sent.
"""

from __future__ import annotations

from sqlalchemy import select

from maildesk.app import App
from maildesk.db.models import Event, Outbox, OutboxState
from tests.daemon_harness import RelaySink
from tests.mailfactory import deliver, make_mail
from tests.outbound.test_bounces import drain_to
from tests.outbound.test_outbox_claims import queue

IDN = "kunde@bücher.test"


def test_a_customer_at_an_idn_domain_does_not_stop_other_customers_mail(
    app: App, relay: RelaySink
) -> None:
    raw = make_mail(message_id="idn@x.test", subject="Frage")
    deliver(app, raw.replace(b"alice@customer.test", IDN.encode()))
    deliver(app, make_mail(message_id="q@customer.test"))

    drain_to(app, relay)
    assert [mail.rcpt_tos for mail in relay.received] == [["alice@customer.test"]]
    with app.db.transaction() as session:
        assert [row.state for row in session.scalars(select(Outbox))] == [OutboxState.SENT]
        skipped = session.scalars(select(Event.reason).where(Event.kind == "ack_skipped")).all()
    assert any(IDN in reason for reason in skipped)


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
