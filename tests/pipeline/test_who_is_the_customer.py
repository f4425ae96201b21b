"""Who the customer is, and where answers go (MAIL-RULES §3, §4, §6).

Found by a review of how maildesk picks the requester and the recipients of
acknowledgements and answers from a customer's headers: From, Reply-To, a
mailing list's rewritten From, a forward, a second address, display names.
"""

from __future__ import annotations

import email
import email.policy
from email.headerregistry import Address as HeaderAddress

import pytest
from sqlalchemy import select

from maildesk.app import App
from maildesk.db.models import Contact, Participant, Ticket
from tests.agents.agenthelp import outbox, to
from tests.conftest import FrozenClock  # noqa: F401  (fixture type for readers)
from tests.mailfactory import deliver, make_mail
from tests.pipeline.test_threading import ticket_of
from tests.pipeline.test_threading_privacy import bob_answers

ALICE = "alice@customer.test"
CEO = "ceo@customer.test"
MALLORY = "mallory@evil.test"
LIST = "users@lists.example"
DMARC_PASS = {
    "Authentication-Results": "mx.example.com; dmarc=pass header.from=customer.test; "
    "spf=pass smtp.mailfrom=customer.test"
}


@pytest.fixture
def app(mta_trusting_app: App) -> App:
    return mta_trusting_app


def requester_and_participants(app: App, number: int) -> tuple[str | None, dict[str, str]]:
    with app.db.transaction() as session:
        ticket = session.scalars(select(Ticket).where(Ticket.number == number)).one()
        people = dict(
            session.execute(
                select(Contact.email, Participant.role)
                .join(Participant, Participant.contact_id == Contact.id)
                .where(Participant.ticket_id == ticket.id)
            ).all()
        )
        return (ticket.requester.email if ticket.requester else None), {
            k: str(v) for k, v in people.items()
        }


# -- Reply-To ------------------------------------------------------------------


def test_a_forged_from_with_reply_to_an_attacker_sends_nothing_to_the_attacker(app: App) -> None:
    """From: the CEO (not authenticated), Reply-To: the attacker. The ack and the
    agent's answer (account data) go to the From only; the attacker gets nothing."""
    deliver(
        app,
        make_mail(
            sender=f"The CEO <{CEO}>",
            subject="Please send me the account list",
            message_id="ceo@evil.test",
            headers={"Reply-To": f"CEO (mobile) <{MALLORY}>"},
        ),
        mail_from=MALLORY,
    )
    number = ticket_of(app, "ceo@evil.test")
    assert requester_and_participants(app, number) == (CEO, {CEO: "requester"})
    # The agent is shown the Reply-To, and that answers do not go to it.
    [notice] = to(app, "bob@agents.test", "new_ticket")
    assert f"Reply-To: CEO (mobile) <{MALLORY}>\r\n(not answered" in notice.text
    assert len(to(app, CEO, "ack")) == 1
    bob_answers(app, number, "Hello,\n\nthe account list: 4711, 4712.\n")
    assert [s.recipients for s in to(app, CEO, "agent_reply")] == [[CEO]]
    assert [s for s in outbox(app) if MALLORY in s.recipients] == []


# -- mailing lists that rewrite From for DMARC ---------------------------------


def list_mail(
    author: str, name: str, subject: str, message_id: str, *, google: bool = False
) -> bytes:
    """A mail as Mailman (or Google Groups) relays it from a p=reject domain."""
    headers = {
        "List-Id": "Users of the product <users.lists.example>",
        "List-Post": f"<mailto:{LIST}>",
        "List-Unsubscribe": "<mailto:users-leave@lists.example>",
        "Precedence": "list",
        "Reply-To": f"{name} <{author}>",
    }
    if google:
        headers["X-Original-From"] = f"{name} <{author}>"
    return make_mail(
        sender=f"{name} via Users <{LIST}>",
        to=f"Users <{LIST}>, support@example.com",
        subject=subject,
        message_id=message_id,
        body=f"{name} here: the export hangs.\n",
        headers=headers,
    )


@pytest.mark.parametrize("google", [False, True], ids=["mailman", "google-groups"])
def test_a_list_that_rewrites_from_does_not_make_the_list_the_requester(
    app: App, google: bool
) -> None:
    deliver(
        app,
        list_mail(ALICE, "Alice", "Export hangs", "l1@customer.test", google=google),
        mail_from="users-bounces@lists.example",
    )
    number = ticket_of(app, "l1@customer.test")
    requester, people = requester_and_participants(app, number)
    assert requester == ALICE
    assert LIST not in people
    assert to(app, LIST) == []  # list mail: never acknowledged

    # Another member asks the same thing through the list: her own ticket.
    deliver(
        app,
        list_mail("dora@other.test", "Dora", "Export hangs", "l2@other.test", google=google),
        mail_from="users-bounces@lists.example",
    )
    assert ticket_of(app, "l2@other.test") != number

    # The agent's answer (it may hold account data) goes to Alice, not the whole list.
    bob_answers(app, number, "Hello Alice,\n\nyour licence key is ABC-123.\n")
    assert [s.recipients for s in to(app, ALICE, "agent_reply")] == [[ALICE]]
    assert to(app, LIST) == []


# -- forwards ------------------------------------------------------------------


def test_a_forwarded_mail_is_the_forwarders_ticket(app: App) -> None:
    """Bob forwards Alice's mail inline: Bob asks, Bob is answered; the quoted From
    inside the body makes nobody a participant."""
    body = (
        "Can you help Alice with this?\n\n"
        "-------- Forwarded Message --------\n"
        f"From: Alice Customer <{ALICE}>\n"
        "To: Bob <bob@customer.test>\n"
        "Subject: Printer on fire\n\n"
        "My printer is on fire.\n"
    )
    deliver(
        app,
        make_mail(
            sender="Bob Colleague <bob@customer.test>",
            subject="Fwd: Printer on fire",
            message_id="fwd@customer.test",
            body=body,
        ),
        mail_from="bob@customer.test",
    )
    number = ticket_of(app, "fwd@customer.test")
    assert requester_and_participants(app, number) == (
        "bob@customer.test",
        {"bob@customer.test": "requester"},
    )
    assert to(app, ALICE) == []


# -- display names -------------------------------------------------------------


@pytest.mark.parametrize(
    "sender",
    [
        '"support@bank.example" <evil@evil.test>',
        '"Doe, John" <evil@evil.test>',
        "=?utf-8?q?Alice=0D=0ABcc=3A_victim=40victim=2Etest?= <evil@evil.test>",
        '"Evil\\" <victim@victim.test>, \\"x" <evil@evil.test>',
    ],
    ids=["address-as-name", "comma", "encoded-crlf", "quote-trick"],
)
def test_a_display_name_cannot_add_a_recipient_to_our_mail(app: App, sender: str) -> None:
    raw = make_mail(sender="placeholder@evil.test", message_id="n@evil.test")
    raw = raw.replace(b"From: placeholder@evil.test", b"From: " + sender.encode())
    deliver(app, raw, mail_from="evil@evil.test")
    number = ticket_of(app, "n@evil.test")
    bob_answers(app, number, "Hello,\n\nhere is your answer.\n")
    mails = [s for s in outbox(app) if s.purpose in ("ack", "agent_reply")]
    assert {s.purpose for s in mails} == {"ack", "agent_reply"}
    for sent in mails:
        assert sent.recipients == ["evil@evil.test"]
        parsed = email.message_from_bytes(sent.raw, policy=email.policy.default)
        addresses = parsed["To"].addresses
        assert [a.addr_spec for a in addresses] == ["evil@evil.test"]
        assert isinstance(addresses[0], HeaderAddress)
        assert parsed["Bcc"] is None and parsed["Cc"] is None


# -- a second address, a stranger with a reference -----------------------------


def test_the_agents_notice_names_who_wrote_a_reply_not_the_requester(app: App) -> None:
    """Mallory learnt the Message-ID of Alice's mail (it went to a public list too) and
    "replies" to it. The notice must not tell the agent that Alice wrote it: the agent
    would act on "Alice's" request (change her bank account) and answer it to Alice."""
    deliver(app, make_mail(message_id="first@customer.test"))
    deliver(
        app,
        make_mail(
            sender="Alice Customer <mallory@evil.test>",
            subject="Re: Printer on fire",
            body="Please send the refund to IBAN XX00 1234 instead.\n",
            message_id="m@evil.test",
            in_reply_to="first@customer.test",
        ),
        mail_from=MALLORY,
    )
    assert ticket_of(app, "m@evil.test") == 1
    [notice] = to(app, "bob@agents.test", "customer_reply")
    assert f"<{MALLORY}> wrote on ticket #1" in notice.text
    assert "<alice@customer.test> wrote" not in notice.text


def test_a_new_ticket_notice_shows_an_address_like_display_name_as_no_address(app: App) -> None:
    deliver(
        app,
        make_mail(sender='"support@bank.example" <evil@evil.test>', message_id="n@evil.test"),
        mail_from="evil@evil.test",
    )
    [notice] = to(app, "bob@agents.test", "new_ticket")
    assert "support@bank.example" not in notice.text.replace('"support@bank.example"', "")


def test_the_same_customer_from_a_second_address_is_added_and_answered(app: App) -> None:
    """Alice answers our acknowledgement from her private address: that address
    proved it received our mail (our signed Message-ID), so it joins as Cc."""
    deliver(app, make_mail(message_id="first@customer.test"))
    [ack] = to(app, ALICE, "ack")
    ack_id = str(ack.msg["Message-ID"]).strip("<>")
    deliver(
        app,
        make_mail(
            sender="Alice <alice@gmail.test>",
            subject="Re: Printer on fire",
            body="Writing from home: it is still burning.\n",
            message_id="g@gmail.test",
            in_reply_to=ack_id,
            headers=DMARC_PASS,
        ),
        mail_from="alice@gmail.test",
    )
    assert requester_and_participants(app, 1) == (
        ALICE,
        {ALICE: "requester", "alice@gmail.test": "cc"},
    )
    bob_answers(app, 1, "Hello Alice,\n\nplease unplug it.\n")
    [answer] = to(app, ALICE, "agent_reply")
    assert answer.recipients == [ALICE, "alice@gmail.test"]


def test_a_null_sender_with_a_from_is_never_acknowledged(app: App) -> None:
    deliver(
        app,
        make_mail(sender=f"Alice <{ALICE}>", subject="Re: your question", message_id="v@c.test"),
        mail_from="",
    )
    assert to(app, ALICE, "ack") == []


def test_an_envelope_sender_other_than_from_answers_the_from(app: App) -> None:
    """A forwarding service (SRS) or a mailing system sends for Alice: the envelope
    sender is theirs; the customer is the From."""
    deliver(
        app,
        make_mail(message_id="e@customer.test"),
        mail_from="SRS0=abcd=XY=customer.test=alice@forwarder.test",
    )
    assert requester_and_participants(app, 1)[0] == ALICE
    assert [s.recipients for s in to(app, ALICE, "ack")] == [[ALICE]]
