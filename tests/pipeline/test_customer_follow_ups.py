"""A customer writing again after a ticket ended: by mail only, one conversation, one ticket.

MAIL-RULES §2: a reply to a closed ticket (or to one resolved longer ago than
``threading.reopen_window_days``) opens a new ticket linked to the old one. The
customer still has our old mails in the inbox and may answer them again: that
goes on in the follow-up already opened, not in yet another ticket.
"""

from __future__ import annotations

import email
import email.policy

from sqlalchemy import select

from maildesk.app import App
from maildesk.db import queries
from maildesk.db.models import Blob, Outbox, Ticket, TicketLink, TicketStatus
from maildesk.tickets import change_status
from tests.conftest import FrozenClock
from tests.mailfactory import deliver, make_mail
from tests.pipeline.test_threading import ticket_of

ALICE = "alice@customer.test"


def _set_status(app: App, number: int, status: TicketStatus) -> None:
    with app.db.transaction() as session:
        ticket = queries.ticket_by_number(session, number)
        assert ticket is not None
        change_status(session, ticket, status, app.clock(), app.notices(), actor="test")


def _mail_to(app: App, address: str, purpose: str) -> list[email.message.EmailMessage]:
    with app.db.transaction() as session:
        rows = session.scalars(
            select(Blob.data)
            .join(Outbox, Outbox.raw_sha256 == Blob.sha256)
            .where(Outbox.purpose == purpose)
            .order_by(Outbox.id)
        ).all()
    mails = [email.message_from_bytes(bytes(r), policy=email.policy.default) for r in rows]
    return [m for m in mails if address in str(m["To"])]  # type: ignore[misc]


def _answer(mail: email.message.EmailMessage, message_id: str, body: str) -> bytes:
    """The customer presses Reply on ``mail`` (one of ours) in their inbox."""
    return make_mail(
        message_id=message_id,
        subject=f"Re: {mail['Subject']}",
        in_reply_to=str(mail["Message-ID"]).strip("<>"),
        references=[str(mail["Message-ID"]).strip("<>")],
        body=body,
    )


def _tickets(app: App) -> list[tuple[int | None, TicketStatus]]:
    with app.db.transaction() as session:
        return [(t.number, t.status) for t in session.scalars(select(Ticket).order_by(Ticket.id))]


def test_answering_the_old_resolution_mail_twice_after_close_opens_one_follow_up(
    app: App, clock: FrozenClock
) -> None:
    deliver(app, make_mail(message_id="first@customer.test"))
    _set_status(app, 1, TicketStatus.RESOLVED)
    _set_status(app, 1, TicketStatus.CLOSED)
    [resolved] = _mail_to(app, ALICE, "resolved")

    clock.advance(days=20)
    deliver(app, _answer(resolved, "again1@customer.test", "It is burning again.\n"))
    clock.advance(minutes=10)
    # The screenshot, sent by answering the same mail in the inbox once more.
    deliver(app, _answer(resolved, "again2@customer.test", "Here is a screenshot.\n"))

    assert ticket_of(app, "again1@customer.test") == 2
    assert ticket_of(app, "again2@customer.test") == 2, "one problem, one new ticket"
    assert _tickets(app) == [(1, TicketStatus.CLOSED), (2, TicketStatus.NEW)]
    acks = _mail_to(app, ALICE, "ack")
    assert [str(a["Subject"]).split("]")[0] for a in acks] == ["[Support #1", "[Support #2"]
    with app.db.transaction() as session:
        links = [
            (k.ticket_id, k.other_ticket_id, k.kind) for k in session.scalars(select(TicketLink))
        ]
    assert links == [(2, 1, "follow_up_of")]


def test_a_reply_to_the_old_thread_reopens_the_resolved_follow_up(
    app: App, clock: FrozenClock
) -> None:
    deliver(app, make_mail(message_id="first@customer.test"))
    _set_status(app, 1, TicketStatus.RESOLVED)
    _set_status(app, 1, TicketStatus.CLOSED)
    [resolved] = _mail_to(app, ALICE, "resolved")
    deliver(app, _answer(resolved, "again1@customer.test", "It is burning again.\n"))
    _set_status(app, 2, TicketStatus.RESOLVED)

    clock.advance(days=2)  # inside the follow-up's reopen window
    deliver(app, _answer(resolved, "again2@customer.test", "Sorry, still burning.\n"))

    assert ticket_of(app, "again2@customer.test") == 2
    assert _tickets(app) == [(1, TicketStatus.CLOSED), (2, TicketStatus.OPEN)]
    assert len(_mail_to(app, ALICE, "ack")) == 2  # the first ticket's and the follow-up's

    # Once the follow-up is closed too, the next answer starts the next follow-up, once.
    _set_status(app, 2, TicketStatus.CLOSED)
    clock.advance(days=1)
    deliver(app, _answer(resolved, "again3@customer.test", "Burning a third time.\n"))
    deliver(app, _answer(resolved, "again4@customer.test", "And the photo.\n"))
    assert ticket_of(app, "again3@customer.test") == 3
    assert ticket_of(app, "again4@customer.test") == 3
    with app.db.transaction() as session:
        links = sorted(
            (k.ticket_id, k.other_ticket_id, k.kind) for k in session.scalars(select(TicketLink))
        )
    assert links == [(2, 1, "follow_up_of"), (3, 2, "follow_up_of")]
