"""Subjects and copies as customers' clients and lists really send them (MAIL-RULES §2).

Each case gave a customer a second ticket (and a second acknowledgement), or stored
her mail twice on one ticket, before its fix: a CJK client's full-width "Ｒｅ：",
a ticket tag at the end of the subject, a reply to our acknowledgement whose client
dropped the headers and the tag, and a list's copy of her mail with its footer.
"""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from maildesk.app import App
from maildesk.db.models import Direction, Intake, Message, Ticket, TicketStatus
from tests.conftest import FrozenClock
from tests.mailfactory import deliver, make_mail
from tests.pipeline.test_threading import ack_count, set_status, thread_event, ticket_of

ALICE = "alice@customer.test"


@pytest.mark.parametrize(
    "subject", ["Ｒｅ：Printer on fire", "ＦＷ：Printer on fire", "Ｒｅ： ＲＥ：  Printer on fire"]
)
def test_a_full_width_reply_prefix_is_the_same_conversation(
    app: App, clock: FrozenClock, subject: str
) -> None:
    """A CJK client writes "Ｒｅ：" / "ＦＷ：" (full-width letters and colon) and drops
    the References: the same sender and subject find her open ticket (rule 6)."""
    deliver(app, make_mail(message_id="w1@customer.test"))
    clock.advance(hours=3)
    deliver(app, make_mail(message_id="w2@customer.test", subject=subject, body="Any news?\n"))
    assert ticket_of(app, "w2@customer.test") == 1
    assert thread_event(app, "w2@customer.test").data["rule"] == "sender_subject"
    assert ack_count(app) == 1, "acknowledged once"


def test_a_full_width_ticket_tag_at_the_end_is_our_tag(app: App) -> None:
    """A Japanese IME types the tag in full width, and her client keeps it at the end:
    "Ｒｅ：Paper jam ［Support ＃1］" names ticket 1 (rule 4), though the subject
    differs from the ticket's."""
    deliver(app, make_mail(message_id="j1@customer.test", subject="Printer on fire"))
    deliver(
        app, make_mail(message_id="j2@customer.test", subject="Ｒｅ：Paper jam ［Support ＃1］")
    )
    assert ticket_of(app, "j2@customer.test") == 1
    assert thread_event(app, "j2@customer.test").data["rule"] == "subject_tag"
    assert ack_count(app) == 1


def test_a_ticket_tag_at_the_end_is_not_part_of_the_subject(app: App, clock: FrozenClock) -> None:
    """Her client puts our tag at the end: "Printer on fire [Support #1]" after ticket 1
    was closed opens follow-up ticket 2; her next mail "Re: Printer on fire" (no tag,
    no References) belongs to ticket 2, not to a third ticket."""
    deliver(app, make_mail(message_id="e1@customer.test"))
    set_status(app, 1, TicketStatus.CLOSED, clock)
    clock.advance(days=1)
    deliver(app, make_mail(message_id="e2@customer.test", subject="Printer on fire [Support #1]"))
    assert ticket_of(app, "e2@customer.test") == 2
    clock.advance(hours=2)
    deliver(app, make_mail(message_id="e3@customer.test", subject="Re: Printer on fire"))
    assert ticket_of(app, "e3@customer.test") == 2
    assert thread_event(app, "e3@customer.test").data["rule"] == "sender_subject"
    assert ack_count(app) == 2, "the first ticket and its follow-up, not a third"


def test_a_reply_to_our_acknowledgement_without_headers_or_tag_finds_its_ticket(
    app: App, clock: FrozenClock
) -> None:
    """The acknowledgement's subject is "[Support #1] We received your request: …".
    Her client answers it with the tag dropped, no References and nothing quoted:
    the subject is compared with what we sent her (rule 6), not taken for a new
    request. Someone else writing that subject still gets a ticket of their own."""
    deliver(app, make_mail(message_id="k1@customer.test"))
    with app.db.transaction() as session:
        [ack] = session.scalars(
            select(Message.subject).where(Message.direction == Direction.OUTBOUND)
        ).all()
    assert ack == "[Support #1] We received your request: Printer on fire"
    clock.advance(hours=1)
    deliver(
        app,
        make_mail(
            message_id="k2@customer.test",
            subject="RE: We received your request: Printer on fire",
            body="The model is a LaserJet 4.\n",
        ),
    )
    assert ticket_of(app, "k2@customer.test") == 1
    assert thread_event(app, "k2@customer.test").data["rule"] == "sender_subject"
    assert ack_count(app) == 1

    deliver(
        app,
        make_mail(
            message_id="b1@other.test",
            sender="Bob <bob@other.test>",
            subject="RE: We received your request: Printer on fire",
        ),
        mail_from="bob@other.test",
    )
    assert ticket_of(app, "b1@other.test") == 2, "not Alice's ticket"


@pytest.mark.parametrize("from_rewritten", [False, True], ids=["from-kept", "from-rewritten"])
def test_a_lists_copy_of_a_customer_mail_is_one_message(
    app: App, clock: FrozenClock, from_rewritten: bool
) -> None:
    """Alice writes to support and Cc's her project's list, to which support is
    subscribed: the list's copy (same Message-ID, its footer added, perhaps its From
    rewritten) is the same mail. One message on the ticket, one acknowledgement; the
    copy is kept (raw, as a duplicate of the message) as evidence."""
    body = "Hello, my printer is on fire.\n"
    direct = make_mail(
        message_id="c1@customer.test", to="support@example.com", cc="users@lists.test", body=body
    )
    deliver(app, direct)
    clock.advance(minutes=2)
    list_copy = make_mail(
        message_id="c1@customer.test",
        sender=(
            '"Alice Customer via Users" <users@lists.test>'
            if from_rewritten
            else "Alice Customer <alice@customer.test>"
        ),
        to="support@example.com",
        cc="users@lists.test",
        subject="[Users] Printer on fire",
        body=body + "--\nUsers mailing list\nhttps://lists.test/users\n",
        headers={
            "List-Id": "Users <users.lists.test>",
            "List-Post": "<mailto:users@lists.test>",
            "List-Unsubscribe": "<mailto:users-leave@lists.test>",
            "Precedence": "list",
            **({"X-Original-From": f"Alice Customer <{ALICE}>"} if from_rewritten else {}),
        },
    )
    summary = deliver(app, list_copy, mail_from="users-bounces@lists.test")
    assert summary.as_dict()["duplicates"] == 1, summary.as_dict()
    with app.db.transaction() as session:
        inbound = session.scalar(
            select(func.count(Message.id)).where(Message.direction == Direction.INBOUND)
        )
        assert inbound == 1, "one message on the ticket"
        assert session.scalars(select(Ticket.number)).all() == [1]
        [first, copy] = session.scalars(select(Intake).order_by(Intake.id)).all()
        assert copy.disposition == "duplicate"
        assert copy.message_pk == first.message_pk and copy.raw_sha256 != first.raw_sha256
    assert ack_count(app) == 1
