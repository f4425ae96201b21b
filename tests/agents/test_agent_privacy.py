"""What agents write or receive never reaches a customer it should not, and a
customer's mail cannot subscribe strangers to a ticket.

Found by a security review of the agent mail paths; each case is an attack or
a leak that went through before its fix.
"""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage

import pytest
from sqlalchemy import select

from maildesk.app import App
from maildesk.db.models import Event, Intake, IntakeState
from tests.agents.agenthelp import (
    AGENT_ADDRESSES,
    client_reply,
    outbox,
    reply_address,
    to,
)
from tests.mailfactory import deliver, make_mail, reply_to

ALICE = "alice@customer.test"
MALLORY = "mallory@evil.test"
SECRET = "Customer owes us 5000 EUR from the last contract, do not mention it"


@pytest.fixture
def app(mta_trusting_app: App) -> App:
    return mta_trusting_app


@pytest.mark.parametrize(
    "subject",
    ["Re: [Support #1] Printer on fire", "Re: Printer on fire"],
    ids=["subject-tag", "same-sender-subject"],
)
def test_forged_from_cannot_subscribe_a_stranger_to_the_ticket(app: App, subject: str) -> None:
    deliver(app, make_mail(message_id="first@customer.test"))  # Alice's ticket #1

    # Mallory forges Alice's From (our MTA even says dmarc=fail) and Cc's herself.
    forged = make_mail(
        sender=f"Alice Customer <{ALICE}>",
        subject=subject,
        body="Please also keep my colleague in copy.\n",
        cc=f"Mallory <{MALLORY}>",
        message_id="forged@evil.test",
        headers={
            "Authentication-Results": "mx.example.com; dmarc=fail (p=reject) "
            "header.from=customer.test; spf=fail smtp.mailfrom=evil.test"
        },
    )
    deliver(app, forged, mail_from=MALLORY)

    # Bob answers Alice from the notification of her ticket.
    notice = to(app, "bob@agents.test", "new_ticket")[0]
    raw = client_reply(notice, "Hello Alice,\n\nyour new password is hunter2.\n")
    deliver(app, raw, rcpt=(reply_address(notice),), mail_from="bob@agents.test")

    answers = to(app, ALICE, "agent_reply")
    assert len(answers) == 1
    assert MALLORY not in answers[0].recipients
    assert to(app, MALLORY) == []


@pytest.mark.parametrize(
    "body",
    [
        "#status resolved\n\nHello Alice,\n\nplease unplug the printer.\n",
        "#note\n#status resolved\n\nCustomer is on the blacklist, closing silently.\n",
    ],
    ids=["reply", "note"],
)
def test_resolution_mail_carries_no_agent_message_id(app: App, body: str) -> None:
    deliver(app, make_mail(message_id="first@customer.test"))
    notice = to(app, "bob@agents.test", "new_ticket")[0]
    raw = client_reply(notice, body)  # Message-ID <...@agents.test>, the agent's own host
    deliver(app, raw, rcpt=(reply_address(notice),), mail_from="bob@agents.test")

    resolved = to(app, ALICE, "resolved")
    assert len(resolved) == 1
    assert b"agents.test" not in resolved[0].raw
    assert resolved[0].msg["In-Reply-To"] == "<first@customer.test>"


def test_note_in_an_attached_original_is_not_sent_to_the_customer(app: App) -> None:
    first = make_mail(message_id="first@customer.test")
    deliver(app, first)
    notice = to(app, "bob@agents.test", "new_ticket")[0]
    address = reply_address(notice)
    deliver(
        app,
        client_reply(notice, f"#note\n\n{SECRET}\n"),
        rcpt=(address,),
        mail_from="bob@agents.test",
    )
    deliver(app, reply_to(first, body="Any news?\n", message_id="second@customer.test"))
    latest = to(app, "bob@agents.test", "customer_reply")[-1]
    assert SECRET in latest.text

    # Outlook "When replying to a message: Attach original message": the reply carries
    # the notification (with its internal notes) as a message/rfc822 part.
    reply = email.message_from_bytes(
        client_reply(latest, "We are on it, see below.\n", style="outlook"),
        policy=email.policy.default,
    )
    assert isinstance(reply, EmailMessage)
    reply.add_attachment(email.message_from_bytes(latest.raw, policy=email.policy.default))
    deliver(app, reply.as_bytes(), rcpt=(address,), mail_from="bob@agents.test")

    customer_mail = [s for s in outbox(app) if not AGENT_ADDRESSES & set(s.recipients)]
    assert any(s.purpose == "agent_reply" for s in customer_mail)
    for sent in customer_mail:
        blobs = [sent.raw]
        for part in sent.msg.iter_attachments():
            blobs.append(part.get_payload(decode=True) or b"")
        for blob in blobs:
            flat = " ".join(blob.decode("utf-8", "replace").split())
            assert "5000 EUR" not in flat, (sent.purpose, sent.recipients)


def test_hostile_cc_does_not_block_the_agents_answer_to_the_requester(app: App) -> None:
    # The customer Cc's an address our relay cannot take (non-ASCII local part, RFC 6532).
    original = make_mail(
        message_id="first@customer.test",
        cc="J\u00f6rg <j\u00f6rg@customer.test>",
    )
    deliver(app, original)
    notice = to(app, "bob@agents.test", "new_ticket")[0]

    raw = client_reply(notice, "Hello Alice,\n\nplease unplug the printer.\n")
    deliver(app, raw, rcpt=(reply_address(notice),), mail_from="bob@agents.test")

    with app.db.transaction() as session:
        states = [(i.state, i.quarantine_reason) for i in session.scalars(select(Intake))]
    # The agent's verified reply must not end in quarantine ...
    assert all(s is not IntakeState.QUARANTINED for s, _ in states), states
    # ... and Alice must get the answer.
    assert len(to(app, ALICE, "agent_reply")) == 1


def test_our_own_sub_addresses_in_a_customer_cc_do_not_get_the_answers(app: App) -> None:
    """A support+… address (a signed reply or rating address) is ours, not a customer
    Cc: answers sent to it came back into our own intake."""
    deliver(
        app,
        make_mail(
            message_id="first@customer.test",
            cc="Feedback <support+feedback@example.com>, Carol <carol@customer.test>",
        ),
    )
    notice = to(app, "bob@agents.test", "new_ticket")[0]
    raw = client_reply(notice, "Hello Alice,\n\nplease unplug the printer.\n")
    deliver(app, raw, rcpt=(reply_address(notice),), mail_from="bob@agents.test")

    [answer] = to(app, ALICE, "agent_reply")
    assert sorted(answer.recipients) == [ALICE, "carol@customer.test"]


def test_a_mail_with_hundreds_of_cc_does_not_make_each_answer_a_mailing(app: App) -> None:
    """Every Cc participant gets every answer: a ticket takes at most 48 of them."""
    crowd = ", ".join(f"victim{n}@elsewhere.test" for n in range(300))
    deliver(app, make_mail(message_id="first@customer.test", cc=crowd))
    notice = to(app, "bob@agents.test", "new_ticket")[0]
    raw = client_reply(notice, "Hello Alice,\n\nplease unplug the printer.\n")
    deliver(app, raw, rcpt=(reply_address(notice),), mail_from="bob@agents.test")

    [answer] = to(app, ALICE, "agent_reply")
    assert len(answer.recipients) == 1 + 48
    assert answer.recipients[:3] == [ALICE, "victim0@elsewhere.test", "victim1@elsewhere.test"]
    with app.db.transaction() as session:
        [note] = session.scalars(select(Event).where(Event.kind == "cc_not_added")).all()
        assert note.reason.startswith("252 Cc address(es) not added")
