"""Customers writing as real mail clients and lists do (MAIL-RULES §2).

Each case put a customer's mail on a second ticket (with a second acknowledgement),
left it on a closed ticket, or held it in quarantine before its fix: a merged
ticket's subject, the other spelling of an internationalised domain, Turkish
Outlook's "İLT:", a reply carried by a mailing list, another helpdesk's big tag.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from maildesk.app import App
from maildesk.db.models import Ticket, TicketLink, TicketStatus
from maildesk.intake.store import Envelope
from maildesk.tickets import change_status
from tests.agents.agenthelp import agent_app, client_reply, reply_address, to
from tests.conftest import FrozenClock
from tests.mailfactory import deliver, make_mail, reply_to
from tests.pipeline.test_threading import ack_count, thread_event, ticket_of

ALICE = "alice@customer.test"
DAVE = "dave@customer.test"
LIST_BOUNCES = "users-bounces@lists.test"


def _agent_merges(app: App, into: int, other: int) -> None:
    """Bob answers the notice of ticket ``into`` with ``#merge <other>``."""
    [notice] = [
        n
        for n in to(app, "bob@agents.test", "new_ticket")
        if f"[Support #{into}]" in str(n.msg["Subject"])
    ]
    raw = client_reply(notice, f"#merge {other}\nSame invoice, one ticket.")
    deliver(app, raw, rcpt=(reply_address(notice),), mail_from="bob@agents.test")


@pytest.mark.parametrize("arrival", ["alone", "in_one_batch"])
def test_a_fresh_mail_on_the_same_subject_follows_a_merged_ticket(
    tmp_path: Path, database_url: str, clock: FrozenClock, arrival: str
) -> None:
    """Alice's ticket was merged into her colleague's; she writes again on the same
    subject (a new mail, no References): it goes on in the surviving ticket, as a reply
    would, not in a third ticket with a third acknowledgement. Also when the worker
    takes it in one batch with her next mail and a stranger's (the batch's lookahead)."""
    app = agent_app(tmp_path, database_url, clock)
    try:
        deliver(app, make_mail(message_id="a1@customer.test", subject="Invoice 4711 is wrong"))
        deliver(
            app,
            make_mail(
                message_id="d1@customer.test",
                sender=f"Dave <{DAVE}>",
                subject="Invoice 4711",
            ),
            mail_from=DAVE,
        )
        _agent_merges(app, into=2, other=1)
        with app.db.transaction() as session:
            statuses = {t.number: t.merged_into_id for t in session.scalars(select(Ticket))}
        assert statuses[1] is not None, "the agent's #merge was applied"

        clock.advance(days=1)
        again = make_mail(
            message_id="a2@customer.test", subject="Invoice 4711 is wrong", body="Any news?\n"
        )
        if arrival == "alone":
            deliver(app, again)
        else:
            intake = app.intake()
            for raw, sender in (
                (make_mail(message_id="z1@zed.test", sender="zed@zed.test"), "zed@zed.test"),
                (again, ALICE),
                (
                    make_mail(message_id="a3@customer.test", subject="AW: Invoice 4711 is wrong"),
                    ALICE,
                ),
            ):
                intake.store(
                    raw, Envelope(source="smtp", mail_from=sender, rcpt_to=("support@example.com",))
                )
            assert app.worker().drain().as_dict()["threaded"] == 2
            assert ticket_of(app, "a3@customer.test") == 2

        assert ticket_of(app, "a2@customer.test") == 2
        assert thread_event(app, "a2@customer.test").data["rule"] == "sender_subject"
        acks = [str(s.msg["Subject"]) for s in to(app, ALICE, "ack")]
        assert acks == ["[Support #1] We received your request: Invoice 4711 is wrong"]
        with app.db.transaction() as session:
            numbers = session.scalars(select(Ticket.number).order_by(Ticket.id)).all()
            assert numbers == ([1, 2] if arrival == "alone" else [1, 2, 3])  # 3: Zed's
            survivor = session.scalars(select(Ticket).where(Ticket.number == 2)).one()
            assert survivor.status is not TicketStatus.CLOSED
    finally:
        app.db.dispose()


@pytest.mark.parametrize(
    ("first", "then"),
    [
        ("anna@bücher.example", "anna@xn--bcher-kva.example"),
        ("anna@xn--bcher-kva.example", "Anna@Bücher.Example"),
    ],
    ids=["u-labels-then-a-labels", "a-labels-then-u-labels"],
)
def test_the_same_mailbox_in_the_other_spelling_of_its_domain_is_the_customer(
    app: App, first: str, then: str
) -> None:
    """An internationalised domain reaches us in U-labels from one of Anna's clients
    and in A-labels (punycode) from another (her phone): one mailbox, as the README
    says for erasure. Her answer by subject tag, and her next mail on the same
    subject, go on in her ticket, not in a new one "quoted by a stranger"."""

    def written_by(address: str, message_id: str, subject: str) -> bytes:
        # As an SMTPUTF8 client writes it: the address in UTF-8, not an encoded-word.
        raw = make_mail(
            message_id=message_id, sender="Anna <anna@placeholder.test>", subject=subject
        )
        return raw.replace(b"anna@placeholder.test", address.encode())

    for message_id, sender, subject in (
        ("u1@customer.test", first, "Lieferung"),
        ("u2@customer.test", then, "AW: [Support #1] Lieferung"),
        ("u3@customer.test", then, "AW: Lieferung"),
    ):
        deliver(
            app, written_by(sender, message_id, subject), mail_from="anna@xn--bcher-kva.example"
        )

    assert ticket_of(app, "u2@customer.test") == 1
    assert thread_event(app, "u2@customer.test").data["rule"] == "subject_tag"
    assert ticket_of(app, "u3@customer.test") == 1
    assert thread_event(app, "u3@customer.test").data["rule"] == "sender_subject"
    with app.db.transaction() as session:
        assert session.scalars(select(Ticket.number)).all() == [1]
    assert ack_count(app) == 1, "one acknowledgement"


def test_a_customer_forwarding_her_own_mail_again_in_turkish_outlook_is_no_new_ticket(
    app: App, clock: FrozenClock
) -> None:
    """Turkish Outlook writes "YNT:" for a reply and "İLT:" for a forward. A customer who
    heard nothing forwards her own mail to support again (a forward names no Message-ID):
    the same sender and subject find her open ticket (rule 6), as "Fwd:" would."""
    deliver(app, make_mail(message_id="t1@customer.test", subject="Fatura hatalı"))
    clock.advance(days=2)
    deliver(
        app,
        make_mail(
            message_id="t2@customer.test",
            subject="İLT: Fatura hatalı",
            body="Cevap bekliyorum.\n\n-----Original Message-----\nFatura hatalı\n",
        ),
    )
    assert ticket_of(app, "t2@customer.test") == 1
    assert thread_event(app, "t2@customer.test").data["rule"] == "sender_subject"
    assert ack_count(app) == 1, "acknowledged once"


def _via_list(first: bytes, message_id: str, body: str) -> bytes:
    """Alice answers on her project's list, Cc support; the list rewrote From (DMARC)."""
    return reply_to(
        first,
        message_id=message_id,
        sender='"Alice Customer via Users" <users@lists.test>',
        to="users@lists.test",
        cc="support@example.com",
        body=body,
        headers={
            "List-Id": "Users <users.lists.test>",
            "List-Post": "<mailto:users@lists.test>",
            "X-Original-From": f"Alice Customer <{ALICE}>",
        },
    )


def test_a_customer_reply_carried_by_a_mailing_list_reopens_or_follows_up(
    app: App, clock: FrozenClock
) -> None:
    """A list post is a person's mail (only never acknowledged): Alice's answer that
    reaches us through her list reopens her resolved ticket, as any reply does, and
    once the ticket is closed it opens a linked follow-up instead of vanishing into
    the closed ticket."""
    first = make_mail(message_id="l1@customer.test", to="support@example.com, users@lists.test")
    deliver(app, first)
    with app.db.transaction() as session:
        ticket = session.scalars(select(Ticket)).one()
        change_status(session, ticket, TicketStatus.RESOLVED, clock(), app.notices(), actor="t")
    clock.advance(days=2)
    deliver(app, _via_list(first, "l2@customer.test", "Still burning.\n"), mail_from=LIST_BOUNCES)
    assert ticket_of(app, "l2@customer.test") == 1
    assert "reopens the resolved ticket" in thread_event(app, "l2@customer.test").reason
    with app.db.transaction() as session:
        assert session.scalars(select(Ticket.status)).all() == [TicketStatus.OPEN]
        ticket = session.scalars(select(Ticket)).one()
        change_status(session, ticket, TicketStatus.CLOSED, clock(), app.notices(), actor="t")

    clock.advance(days=1)
    deliver(app, _via_list(first, "l3@customer.test", "Burning again.\n"), mail_from=LIST_BOUNCES)
    assert ticket_of(app, "l3@customer.test") == 2
    with app.db.transaction() as session:
        rows = session.execute(select(Ticket.number, Ticket.status).order_by(Ticket.id)).all()
        assert [tuple(r) for r in rows] == [(1, TicketStatus.CLOSED), (2, TicketStatus.NEW)]
        follow_up = session.scalars(select(Ticket).where(Ticket.number == 2)).one()
        assert follow_up.requester is not None and follow_up.requester.email == ALICE
        links = session.execute(select(TicketLink.kind)).scalars().all()
    assert links == ["follow_up_of"]
    assert ack_count(app) == 1, "only Alice's first, direct mail is acknowledged: never a list"


def test_a_ticket_tag_with_a_number_no_ticket_can_have_is_no_reason_to_quarantine(
    app: App,
) -> None:
    """Another company's helpdesk may use the same tag with numbers beyond what our
    ticket numbers reach (PostgreSQL's INTEGER): a customer forwarding its mail gets
    a ticket (and an acknowledgement), and her reply quoting both tags joins her own;
    neither mail is held in quarantine as "processing failed"."""
    deliver(app, make_mail(message_id="f1@customer.test", subject="Printer on fire"))
    summary = deliver(
        app,
        make_mail(
            message_id="f2@customer.test",
            subject="Fwd: [Support #4294967296] Your return label",
            body="Is this from you?\n",
        ),
    )
    assert summary.as_dict()["quarantined"] == 0, summary.as_dict()
    assert ticket_of(app, "f2@customer.test") == 2
    assert thread_event(app, "f2@customer.test").data["rule"] == "new_ticket"

    deliver(
        app,
        make_mail(
            message_id="f3@customer.test",
            subject="Re: [Support #99999999999] Re: [Support #1] Printer on fire",
        ),
    )
    assert ticket_of(app, "f3@customer.test") == 1
    assert thread_event(app, "f3@customer.test").data["rule"] == "subject_tag"
    assert ack_count(app) == 2
