"""What the resolution mails promise the customer, against what auto-close then does.

Both the resolution notice and the auto-close notice say "reply within N days
and the ticket opens again". With ``[sla.auto_close] resolved_close_days``
shorter than ``threading.reopen_window_days`` (the example config: 7 and 14)
the sweep closes the ticket first, and a reply to a closed ticket opens a new
one (MAIL-RULES §2): the customer who keeps to the promise must get it kept.
"""

from __future__ import annotations

import email
import email.policy
import re
from datetime import timedelta
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlalchemy import select

from maildesk.app import App
from maildesk.db.models import Blob, Outbox, Ticket, TicketStatus
from tests.conftest import FrozenClock
from tests.mailfactory import deliver, make_mail
from tests.sla.slahelp import berlin, new_ticket, set_status, sla_app, sweeper

AUTO_CLOSE = {"resolved_close_days": 7, "pending_reminder_days": 3, "pending_resolve_days": 5}


def _customer_mail(app: App, purpose: str) -> EmailMessage:
    with app.db.transaction() as session:
        data = session.scalars(
            select(Blob.data)
            .join(Outbox, Outbox.raw_sha256 == Blob.sha256)
            .where(Outbox.purpose == purpose)
        ).one()
    mail = email.message_from_bytes(bytes(data), policy=email.policy.default)
    assert isinstance(mail, EmailMessage)
    return mail


def _promised_days(mail: EmailMessage) -> int:
    body = mail.get_body(("plain",))
    assert body is not None
    text = " ".join(body.get_content().split())
    found = re.search(r"reply to this message within (\d+) days and the ticket opens again", text)
    assert found, text
    return int(found.group(1))


def _tickets(app: App) -> list[tuple[int | None, TicketStatus]]:
    with app.db.transaction() as session:
        return [(t.number, t.status) for t in session.scalars(select(Ticket).order_by(Ticket.id))]


@pytest.mark.parametrize("purpose", ["resolved", "auto_resolved"])
def test_a_reply_within_the_days_the_resolution_mail_promises_reopens_the_ticket(
    tmp_path: Path, database_url: str, clock: FrozenClock, purpose: str
) -> None:
    app = sla_app(tmp_path, database_url, clock, {"auto_close": AUTO_CLOSE})
    try:
        ticket = new_ticket(app, clock, berlin(2026, 3, 2, 9, 0), message_id="q@customer.test")
        clock.now = berlin(2026, 3, 2, 10, 0)
        if purpose == "resolved":  # an agent resolves it
            set_status(app, ticket.id, TicketStatus.RESOLVED, notify=True)
        else:  # the customer never answers the agent's question
            set_status(app, ticket.id, TicketStatus.PENDING)
            for _day in range(6):
                clock.advance(days=1)
                sweeper(app).run()
        assert _tickets(app) == [(1, TicketStatus.RESOLVED)]
        with app.db.transaction() as session:
            resolved_at = session.get_one(Ticket, ticket.id).resolved_at
        assert resolved_at is not None
        mail = _customer_mail(app, purpose)
        days = _promised_days(mail)

        # The daemon sweeps every minute; the customer answers an hour before the promise ends.
        answer_at = resolved_at + timedelta(days=days, hours=-1)
        while clock.now + timedelta(hours=6) < answer_at:
            clock.advance(hours=6)
            sweeper(app).run()
        clock.now = answer_at
        sweeper(app).run()
        deliver(
            app,
            make_mail(
                message_id="again@customer.test",
                subject=f"Re: {mail['Subject']}",
                in_reply_to=str(mail["Message-ID"]).strip("<>"),
                body="Sorry, the printer is burning again.\n",
            ),
        )
        assert _tickets(app) == [(1, TicketStatus.OPEN)], f"promised {days} days"
    finally:
        app.db.dispose()
