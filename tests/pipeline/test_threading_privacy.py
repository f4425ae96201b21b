"""Threading must not let a stranger into someone else's ticket (MAIL-RULES §2, §6).

Found by a review of the threading rules from an attacker's side: each case
subscribed a stranger to another customer's answers before its fix.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from maildesk.app import App
from maildesk.db.models import Ticket
from tests.agents.agenthelp import agent_app, client_reply, reply_address, to
from tests.conftest import FrozenClock
from tests.mailfactory import deliver, make_mail
from tests.pipeline.test_threading import ticket_of

ALICE = "alice@customer.test"
MALLORY = "mallory@evil.test"


@pytest.fixture
def app(mta_trusting_app: App) -> App:
    return mta_trusting_app


DMARC_FAIL = {
    "Authentication-Results": "mx.example.com; dmarc=fail (p=reject) "
    "header.from=customer.test; spf=fail smtp.mailfrom=evil.test"
}


def bob_answers(app: App, number: int, text: str) -> None:
    """Bob answers ticket ``number`` from its newest notification to him."""
    notices = [
        n
        for n in to(app, "bob@agents.test")
        if n.purpose in ("new_ticket", "customer_reply") and f"#{number}]" in str(n.msg["Subject"])
    ]
    notice = notices[-1]
    raw = client_reply(notice, text)
    deliver(app, raw, rcpt=(reply_address(notice),), mail_from="bob@agents.test")


@pytest.mark.parametrize(
    "step",
    [
        # Mallory's second mail, from her own (authenticated) address, names ...
        {"in_reply_to": "forged@evil.test"},  # ... her forged mail's own Message-ID
        {"references": ["seed@evil.test"]},  # ... an id her forged mail referenced
    ],
    ids=["forged-message-id", "forged-reference"],
)
def test_a_forged_mail_does_not_make_its_ids_a_key_to_the_ticket(
    app: App, step: dict[str, object]
) -> None:
    deliver(app, make_mail(message_id="first@customer.test"))  # Alice's ticket #1

    # Mallory forges Alice's From: the subject tag lets it in (Alice is a participant),
    # but it proves nothing, so it subscribes nobody.
    deliver(
        app,
        make_mail(
            sender=f"Alice Customer <{ALICE}>",
            subject="Re: [Support #1] Printer on fire",
            body="Any news?\n",
            message_id="forged@evil.test",
            references=["seed@evil.test"],
            headers=DMARC_FAIL,
        ),
        mail_from=MALLORY,
    )
    assert ticket_of(app, "forged@evil.test") == 1

    # Then a "reply" to what she forged, from her own address.
    deliver(
        app,
        make_mail(
            sender=f"Mallory <{MALLORY}>",
            subject="Re: Printer on fire",
            body="I am in copy now, right?\n",
            message_id="second@evil.test",
            **step,  # type: ignore[arg-type]
        ),
        mail_from=MALLORY,
    )

    bob_answers(app, 1, "Hello Alice,\n\nyour new password is hunter2.\n")
    [answer] = to(app, ALICE, "agent_reply")
    assert MALLORY not in answer.recipients
    assert to(app, MALLORY, "agent_reply") == []


def test_a_reused_message_id_does_not_join_another_customers_ticket(app: App) -> None:
    """A web form (or an attacker) reusing a Message-ID: each mail is its own
    conversation, and neither sender gets the other's answers."""
    deliver(
        app,
        make_mail(message_id="1@localhost", body="Alice's contract question\n", subject="Form"),
    )
    deliver(
        app,
        make_mail(
            sender=f"Mallory <{MALLORY}>",
            message_id="1@localhost",
            body="Mallory's question\n",
            subject="Form",
        ),
        mail_from=MALLORY,
    )
    with app.db.transaction() as session:
        numbers = {
            t.number: t.requester.email if t.requester else None
            for t in session.scalars(select(Ticket))
        }
    assert numbers == {1: ALICE, 2: MALLORY}

    bob_answers(app, 1, "Hello Alice,\n\nyour contract ends in May.\n")
    [answer] = to(app, ALICE, "agent_reply")
    assert answer.recipients == [ALICE]
    assert to(app, MALLORY, "agent_reply") == []


@pytest.mark.parametrize("skip_dmarc_fail", [True, False], ids=["no-ack", "ack-anyway"])
def test_a_new_ticket_under_a_forged_from_gives_the_forger_no_key_to_it(
    tmp_path: Path, database_url: str, clock: FrozenClock, skip_dmarc_fail: bool
) -> None:
    """Mallory asks as Alice (our MTA: dmarc=fail), then "replies" to her own forged mail.

    The agents answer the ticket as Alice's: the answer must not reach Mallory,
    also where ops chose to acknowledge DMARC failures (forwarders break DMARC).
    """
    app = agent_app(
        tmp_path,
        database_url,
        clock,
        agent_mail={"trusted_authserv_ids": ["mx.example.com"]},
        acknowledgements={"skip_dmarc_fail": skip_dmarc_fail},
    )
    deliver(
        app,
        make_mail(
            sender=f"Alice Customer <{ALICE}>",
            subject="Please send me my account details",
            message_id="forged-new@evil.test",
            headers=DMARC_FAIL,
        ),
        mail_from=MALLORY,
    )
    number = ticket_of(app, "forged-new@evil.test")
    deliver(
        app,
        make_mail(
            sender=f"Mallory <{MALLORY}>",
            subject="Re: Please send me my account details",
            body="Adding myself in copy.\n",
            message_id="follow@evil.test",
            in_reply_to="forged-new@evil.test",
        ),
        mail_from=MALLORY,
    )
    assert len(to(app, ALICE, "ack")) == (0 if skip_dmarc_fail else 1)
    bob_answers(app, number, "Hello Alice,\n\nyour account number is 4711.\n")
    assert to(app, MALLORY, "agent_reply") == []
