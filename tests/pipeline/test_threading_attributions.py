"""In-Reply-To written the old way: an attribution names the parent's author.

MH, nmh and exmh write ``Message from Hal DeVore <hal@acm.org> of "date." <id>``,
Gnus ``hal@acm.org's message of "date"``: the author's address is no Message-ID.
Taken as one, every later reply to any mail of that author, in any conversation,
named the same "id" and joined the first ticket that remembered it (the
SpamAssassin corpus put five unrelated threads on one ticket that way).
"""

from __future__ import annotations

import pytest
from sqlalchemy import select

from maildesk.app import App
from maildesk.db.models import Contact, Participant, Ticket
from tests.mailfactory import deliver, make_mail
from tests.pipeline.test_threading import ticket_of, tickets

DATE = '"Mon, 02 Mar 2026 07:00:00 +0000."'


def participants(app: App, number: int) -> set[str]:
    with app.db.transaction() as session:
        rows = session.scalars(
            select(Contact.email)
            .join(Participant, Participant.contact_id == Contact.id)
            .join(Ticket, Ticket.id == Participant.ticket_id)
            .where(Ticket.number == number)
        )
        return set(rows)


@pytest.mark.parametrize(
    ("alices", "bobs"),
    [
        (
            f"Message from Carol Vendor <carol@vendor.test> of {DATE} <v1@vendor.test>",
            f"Message from Carol Vendor <carol@vendor.test> of {DATE} <v2@vendor.test>",
        ),
        (
            f'Message from "Carol Vendor" <carol@vendor.test>    of {DATE}',
            f'Message from "Carol Vendor" <carol@vendor.test>    of {DATE}',
        ),
        (
            f"carol@vendor.test's message of {DATE}",
            f"carol@vendor.test's message of {DATE}",
        ),
    ],
    ids=["mh-with-ids", "mh-without-ids", "gnus-possessive"],
)
def test_replies_to_the_same_author_in_two_conversations_stay_two_tickets(
    app: App, alices: str, bobs: str
) -> None:
    """Alice and Bob each answer a different mail of Carol's and Cc support."""
    deliver(
        app,
        make_mail(
            message_id="alice-1@customer.test",
            subject="Re: Invoice 17 is wrong",
            headers={"In-Reply-To": alices},
        ),
    )
    deliver(
        app,
        make_mail(
            sender="Bob Other <bob@other.test>",
            message_id="bob-1@other.test",
            subject="Re: Your delivery is late",
            body="Where is the parcel?\n",
            headers={"In-Reply-To": bobs},
        ),
        mail_from="bob@other.test",
    )
    assert ticket_of(app, "alice-1@customer.test") != ticket_of(app, "bob-1@other.test")
    assert len(tickets(app)) == 2
    assert "bob@other.test" not in participants(app, ticket_of(app, "alice-1@customer.test"))


def test_the_message_id_in_an_mh_attribution_still_threads(app: App) -> None:
    deliver(app, make_mail(message_id="q1@customer.test", subject="VPN down"))
    deliver(
        app,
        make_mail(
            sender="Bob Colleague <bob@customer.test>",
            message_id="q2@customer.test",
            subject="other words",
            headers={
                "In-Reply-To": "Message from Alice Customer <alice@customer.test> of "
                f"{DATE} <q1@customer.test>"
            },
        ),
        mail_from="bob@customer.test",
    )
    assert ticket_of(app, "q2@customer.test") == ticket_of(app, "q1@customer.test")
