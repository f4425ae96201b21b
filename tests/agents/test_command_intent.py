"""An agent's mail whose commands are not quite right does nothing by halves.

An agent who writes ``#note Legal says no`` or ``#note:`` or types the number
sign with a Japanese input method (U+FF03) means an internal note. Before the
fix such a line was no command, or a failed one, and the rest of the mail went
to the customer and every Cc'd participant. Likewise a mail with a typo in
one command applied the others and sent the answer anyway.
"""

from __future__ import annotations

import smtplib

import pytest
from sqlalchemy import select

from maildesk.app import App
from maildesk.db.models import Message
from tests.agents.agenthelp import (
    AGENT_ADDRESSES,
    Sent,
    client_reply,
    events_of_kind,
    outbox,
    reply_address,
    ticket_number,
    to,
    wait_for_sent,
)
from tests.daemon_harness import DaemonProcess, RelaySink
from tests.mailfactory import deliver, make_mail

ALICE = "alice@customer.test"
DAVE = "dave@customer.test"
SECRET = "Legal checked the contract: we will not refund the 5000 EUR, stall her"


@pytest.fixture
def app(mta_trusting_app: App) -> App:
    return mta_trusting_app


def _notice(app: App) -> Sent:
    deliver(app, make_mail(message_id="first@customer.test", cc=f"Dave <{DAVE}>"))
    return to(app, "bob@agents.test", "new_ticket")[0]


def _from_bob(app: App, notice: Sent, body: str, style: str = "thunderbird") -> None:
    raw = client_reply(notice, body, style=style)
    deliver(app, raw, rcpt=(reply_address(notice),), mail_from="bob@agents.test")


def _customer_side(app: App) -> list[Sent]:
    return [s for s in outbox(app) if not AGENT_ADDRESSES & set(s.recipients)]


def _kept_from_bob(app: App) -> list[str]:
    with app.db.transaction() as session:
        return list(
            session.scalars(select(Message.text_body).where(Message.from_addr == "bob@agents.test"))
        )


@pytest.mark.parametrize(
    "first_line",
    [
        "#note Customer is lying about the warranty",  # "#note" takes no argument
        "#note:",
        "#note: for the team",
        "\uff03note",  # FULLWIDTH NUMBER SIGN, as a CJK input method types it
        "\u200b#note",  # a zero-width space some clients put in front
        "#notes",  # a typo: no such command
        "#internal",
    ],
    ids=[
        "note-with-text",
        "note-colon",
        "note-colon-text",
        "fullwidth",
        "zwsp",
        "notes",
        "internal",
    ],
)
@pytest.mark.parametrize("style", ["thunderbird", "gmail"])
def test_a_note_written_not_quite_right_never_reaches_the_customer(
    app: App, first_line: str, style: str
) -> None:
    notice = _notice(app)
    _from_bob(app, notice, f"{first_line}\n\n{SECRET}\n", style)

    customer_mail = _customer_side(app)
    assert [s.purpose for s in customer_mail] == ["ack"]
    for sent in customer_mail:
        assert "5000 EUR" not in " ".join(sent.text.split())
    # Nothing is lost: the mail is kept on the ticket, and bob is told.
    assert any(SECRET in text for text in _kept_from_bob(app))
    result = to(app, "bob@agents.test", "agent_result")
    assert len(result) == 1
    assert "nothing was sent to the customer" in " ".join(result[0].text.split())


def test_a_mail_with_a_command_that_cannot_be_applied_applies_nothing_and_sends_nothing(
    app: App,
) -> None:
    notice = _notice(app)
    _from_bob(
        app,
        notice,
        "#assign karol\n#status resolved\n\nHello Alice,\n\nCarol will call you tomorrow.\n",
    )

    ticket = ticket_number(app)
    assert ticket.assignee == "bob" and ticket.status != "resolved"
    assert [s.purpose for s in _customer_side(app)] == ["ack"]  # no answer, no resolution mail
    assert not events_of_kind(app, "agent_command")
    report = " ".join(to(app, "bob@agents.test", "agent_result")[0].text.split())
    assert "NOT applied: #assign karol (no agent or group named 'karol')" in report
    assert "Nothing of your mail was applied and nothing was sent to the customer" in report

    # Corrected and sent again, all of it applies.
    _from_bob(
        app,
        notice,
        "#assign carol\n#status resolved\n\nHello Alice,\n\nCarol will call you tomorrow.\n",
    )
    ticket = ticket_number(app)
    assert ticket.assignee == "carol" and ticket.status == "resolved"
    answers = to(app, ALICE, "agent_reply")
    assert len(answers) == 1 and "Carol will call you tomorrow." in answers[0].text
    assert len(to(app, ALICE, "resolved")) == 1


@pytest.mark.slow
def test_over_the_daemon_a_note_with_text_on_its_command_line_stays_internal(
    daemon: DaemonProcess, relay: RelaySink
) -> None:
    first = make_mail(message_id="intent-1@customer.test", subject="Refund", cc=f"Dave <{DAVE}>")
    with smtplib.SMTP("127.0.0.1", daemon.smtp_port) as client:
        client.sendmail(ALICE, ["support@example.com"], first)
    notice = wait_for_sent(relay, "bob@agents.test", "New ticket")

    reply = client_reply(notice, f"#note Customer is lying about the warranty\n{SECRET}\n")
    with smtplib.SMTP("127.0.0.1", daemon.smtp_port) as client:
        client.sendmail("bob@agents.test", [reply_address(notice)], reply)
    # The result of bob's mail is the last thing the daemon sends for it.
    result = wait_for_sent(relay, "bob@agents.test", "Commands on")
    assert "nothing was sent to the customer" in " ".join(result.text.split())

    to_customers = [r for r in relay.received if {ALICE, DAVE} & set(r.rcpt_tos)]
    assert [str(r.message["Subject"]) for r in to_customers] == [
        "[Support #1] We received your request: Refund"
    ]
    for r in to_customers:
        assert b"5000 EUR" not in r.raw
    assert daemon.terminate() == 0
