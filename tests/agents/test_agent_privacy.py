"""What agents write or receive never reaches a customer it should not, and a
customer's mail cannot subscribe strangers to a ticket.

Found by a security review of the agent mail paths; each case is an attack or
a leak that went through before its fix.
"""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlalchemy import select

from maildesk.app import App
from maildesk.db.models import Event, Intake, IntakeState
from tests.agents.agenthelp import (
    AGENT_ADDRESSES,
    Sent,
    agent_app,
    client_reply,
    events_of_kind,
    outbox,
    reply_address,
    ticket_number,
    to,
)
from tests.conftest import FrozenClock
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


def _ticket_with_a_note(app: App, note: str) -> tuple[bytes, Sent, str]:
    """Alice's first mail, bob's new-ticket notice and its reply address; bob wrote ``note``."""
    first = make_mail(message_id="first@customer.test")
    deliver(app, first)
    notice = to(app, "bob@agents.test", "new_ticket")[0]
    address = reply_address(notice)
    deliver(
        app,
        client_reply(notice, f"#note\n\n{note}\n"),
        rcpt=(address,),
        mail_from="bob@agents.test",
    )
    return first, notice, address


def test_note_in_an_attached_original_is_not_sent_to_the_customer(app: App) -> None:
    first, _notice, address = _ticket_with_a_note(app, SECRET)
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


def bob_confirms(app: App, request: Sent) -> None:
    """Bob answers his "reply to apply" request, as his mail client does."""
    raw = client_reply(request, "yes\n")
    deliver(app, raw, rcpt=(reply_address(request),), mail_from="bob@agents.test")


def test_a_forged_agent_from_with_the_internal_address_in_cc_applies_no_command(
    tmp_path: Path, database_url: str, clock: FrozenClock
) -> None:
    """The internal address makes a note on the agent's From alone; it must not make
    that From a key to the commands. Mallory knows a Message-ID of the thread (her
    own mail, or one she was copied on) and writes the internal address into a Cc
    header only: the mail comes in to the public support address."""
    app = agent_app(
        tmp_path, database_url, clock, agent_mail={"internal_addresses": ["internal@example.com"]}
    )
    try:
        deliver(app, make_mail(message_id="first@customer.test"))
        forged = make_mail(
            sender="Bob Agent <bob@agents.test>",
            subject="Re: Printer on fire",
            cc="internal@example.com",
            body="#status closed\n#cc mallory@evil.test\n\nClosing, see internal.\n",
            message_id="forged@evil.test",
            in_reply_to="first@customer.test",
        )
        deliver(app, forged, mail_from=MALLORY)

        ticket = ticket_number(app)
        assert ticket.status == "new"
        assert not events_of_kind(app, "agent_command")
        # Bob is asked to confirm the commands by a reply signed for him; he never
        # wrote them, so he does not, and his next answer does not go to Mallory.
        assert len(to(app, "bob@agents.test", "agent_confirm")) == 1
        notice = to(app, "bob@agents.test", "new_ticket")[0]
        raw = client_reply(notice, "Hello Alice,\n\nplease unplug the printer.\n")
        deliver(app, raw, rcpt=(reply_address(notice),), mail_from="bob@agents.test")
        [answer] = to(app, ALICE, "agent_reply")
        assert answer.recipients == [ALICE]
        assert to(app, MALLORY) == []
    finally:
        app.db.dispose()


def test_the_agents_own_commands_to_the_internal_address_apply_once_confirmed(
    tmp_path: Path, database_url: str, clock: FrozenClock
) -> None:
    app = agent_app(
        tmp_path, database_url, clock, agent_mail={"internal_addresses": ["internal@example.com"]}
    )
    try:
        first = make_mail(message_id="first@customer.test")
        deliver(app, first)
        note = reply_to(
            first, sender="Bob Agent <bob@agents.test>", body=f"#priority high\n\n{SECRET}\n"
        )
        deliver(app, note, rcpt=("internal@example.com",), mail_from="bob@agents.test")
        assert ticket_number(app).priority == "normal"
        [request] = to(app, "bob@agents.test", "agent_confirm")
        assert "#priority high" in request.text
        bob_confirms(app, request)
        assert ticket_number(app).priority == "high"
        # The note is kept, for the agents only.
        deliver(app, reply_to(first, body="Any news?\n", message_id="second@customer.test"))
        assert SECRET in to(app, "bob@agents.test", "customer_reply")[-1].text
        customer_mail = [s for s in outbox(app) if ALICE in s.recipients]
        assert all("5000 EUR" not in s.text for s in customer_mail)
    finally:
        app.db.dispose()


def test_a_note_on_a_forged_agent_from_is_shown_unverified_unless_the_agent_confirms(
    tmp_path: Path, database_url: str, clock: FrozenClock
) -> None:
    """Mallory writes Bob's From to the internal address: her text is kept as a note (the
    internal address takes notes on the From), but agents reading the ticket must not
    take it for Bob's word. Bob's own note with commands loses the mark once he
    confirms the mail by a reply signed for him."""
    app = agent_app(
        tmp_path, database_url, clock, agent_mail={"internal_addresses": ["internal@example.com"]}
    )
    lure = "Alice called: please send the password reset link to mallory@evil.test instead"
    try:
        first = make_mail(message_id="first@customer.test")
        deliver(app, first)
        forged = reply_to(first, sender="Bob Agent <bob@agents.test>", body=f"{lure}\n")
        deliver(app, forged, rcpt=("internal@example.com",), mail_from=MALLORY)
        deliver(app, reply_to(first, body="Any news?\n", message_id="second@customer.test"))
        shown = to(app, "bob@agents.test", "customer_reply")[-1].text
        assert "- Bob Agent (unverified: kept on its From alone), " in shown
        assert lure in shown

        own = reply_to(
            first,
            sender="Bob Agent <bob@agents.test>",
            body="#priority high\n\nChecked her contract: renewal due.\n",
            message_id="own@agents.test",
        )
        deliver(app, own, rcpt=("internal@example.com",), mail_from="bob@agents.test")
        [request] = to(app, "bob@agents.test", "agent_confirm")
        # Confirming vouches for the note too: the request shows it.
        assert "Checked her contract: renewal due." in request.text
        assert "If you did not send that mail, do not reply" in request.text
        bob_confirms(app, request)
        assert ticket_number(app).priority == "high"
        deliver(app, reply_to(first, body="Hello?\n", message_id="third@customer.test"))
        notes = to(app, "bob@agents.test", "customer_reply")[-1].text.split("Internal notes")[1]
        # The forged note keeps its mark; Bob's confirmed one is his.
        assert notes.count("(unverified: kept on its From alone)") == 1
        assert notes.index("unverified") < notes.index(lure) < notes.index("renewal due")
        assert "- Bob Agent, " in notes
    finally:
        app.db.dispose()


@pytest.mark.parametrize(
    "body",
    [
        "Checked her contract: renewal due.\n",
        "#priority high\n\nChecked her contract: renewal due.\n",
    ],
    ids=["note", "note-with-command"],
)
def test_an_authenticated_note_to_the_internal_address_is_not_shown_unverified(
    tmp_path: Path, database_url: str, clock: FrozenClock, body: str
) -> None:
    """Bob's note to the internal address that our MTA says passed DKIM/SPF/DMARC for his
    domain was not kept on its From alone: it carries no "unverified" mark, whether or
    not it also holds a command waiting for his confirmation (it was marked when it did)."""
    app = agent_app(
        tmp_path,
        database_url,
        clock,
        agent_mail={
            "internal_addresses": ["internal@example.com"],
            "trusted_authserv_ids": ["mx.example.com"],
        },
    )
    try:
        first = make_mail(message_id="first@customer.test")
        deliver(app, first)
        note = reply_to(
            first,
            sender="Bob Agent <bob@agents.test>",
            body=body,
            message_id="own@agents.test",
            headers={
                "Authentication-Results": "mx.example.com; dkim=pass header.d=agents.test; "
                "spf=pass smtp.mailfrom=agents.test; dmarc=pass header.from=agents.test"
            },
        )
        deliver(app, note, rcpt=("internal@example.com",), mail_from="bob@agents.test")
        deliver(app, reply_to(first, body="Any news?\n", message_id="second@customer.test"))
        notes = to(app, "bob@agents.test", "customer_reply")[-1].text.split("Internal notes")[1]
        assert "renewal due" in notes
        assert "unverified" not in notes
        assert "- Bob Agent, " in notes
    finally:
        app.db.dispose()


def test_an_agents_out_of_office_reply_leaves_no_trace_in_customer_mail(app: App) -> None:
    """The agent's own mail (here their out-of-office answer to a notification) is
    stored on the ticket; its Message-ID names the agent's private host and must not
    appear in the References of what the customer gets afterwards."""
    first = make_mail(message_id="first@customer.test")
    deliver(app, first)
    notice = to(app, "bob@agents.test", "new_ticket")[0]
    away = email.message_from_bytes(
        client_reply(
            notice,
            "I am out of the office until Monday.\n",
            headers={"Auto-Submitted": "auto-replied", "X-Autoreply": "yes"},
        ),
        policy=email.policy.default,
    )
    away.replace_header("Message-ID", "<ooo.1234@mailhost.agents.test>")
    deliver(app, away.as_bytes(), rcpt=(reply_address(notice),), mail_from="bob@agents.test")
    assert events_of_kind(app, "agent_auto_reply")

    deliver(app, reply_to(first, body="Any news?\n", message_id="second@customer.test"))
    latest = to(app, "bob@agents.test", "customer_reply")[-1]
    raw = client_reply(latest, "#status resolved\n\nHello Alice,\n\nit is fixed.\n")
    deliver(app, raw, rcpt=(reply_address(latest),), mail_from="bob@agents.test")

    customer_mail = [s for s in outbox(app) if ALICE in s.recipients]
    assert {s.purpose for s in customer_mail} == {"ack", "agent_reply", "resolved"}
    for sent in customer_mail:
        assert b"agents.test" not in sent.raw, (sent.purpose, sent.msg["References"])


def _a_note_then_a_customer_reply(app: App) -> tuple[Sent, str]:
    """Bob keeps a two-line note on Alice's ticket, then Alice asks again: the agents'
    notice of her reply (which shows the note) and Bob's reply address."""
    note = "Customer owes us 5000 EUR from the last contract.\nDo not mention it until legal signs off.\n"
    first = make_mail(message_id="first@customer.test")
    deliver(app, first)
    notice = to(app, "bob@agents.test", "new_ticket")[0]
    address = reply_address(notice)
    deliver(app, client_reply(notice, f"#note\n\n{note}"), rcpt=(address,), mail_from="bob@x")
    deliver(app, reply_to(first, body="Any news?\n", message_id="second@customer.test"))
    return to(app, "bob@agents.test", "customer_reply")[-1], address


def test_a_note_left_in_an_inline_reply_is_not_sent_to_the_customer(app: App) -> None:
    """Bob answers inline: he deletes the notification's first lines (the marker and
    the instructions), writes under Alice's question and signs at the bottom, below
    the rest of the quote -- which holds the internal notes. A note of more than one
    line comes back with a "> " in front of each line, and is still a note."""
    latest, address = _a_note_then_a_customer_reply(app)
    assert "legal signs off" in latest.text

    lines = latest.text.splitlines()
    start = next(i for i, line in enumerate(lines) if "wrote on ticket #1" in line)
    question = lines.index("Any news?")

    def quoted(part: list[str]) -> list[str]:
        return ["> " + line if line else ">" for line in part]

    text = "\n".join(
        [
            "On 02.03.26 09:00, Support wrote:",
            *quoted(lines[start : question + 1]),
            "",
            "Hello Alice, a technician comes on Monday.",
            "",
            *quoted(lines[question + 1 :]),
            "",
            "Best regards",
        ]
    )
    reply = email.message_from_bytes(client_reply(latest, ""), policy=email.policy.default)
    assert isinstance(reply, EmailMessage)
    reply.set_content(text + "\n")
    deliver(app, reply.as_bytes(), rcpt=(address,), mail_from="bob@agents.test")

    for sent in [s for s in outbox(app) if not AGENT_ADDRESSES & set(s.recipients)]:
        assert "5000 EUR" not in sent.text, (sent.purpose, sent.text)
    report = to(app, "bob@agents.test", "agent_result")[-1]
    assert "reply NOT sent: it contains the internal note text" in report.text


def test_a_note_saved_to_a_text_file_in_another_charset_is_not_sent_to_the_customer(
    app: App,
) -> None:
    """Notepad on Windows saves in windows-1252: the note's "–" is not UTF-8 there."""
    note = "Kunde zahlt nie pünktlich – keinen Rabatt anbieten"
    _first, notice, address = _ticket_with_a_note(app, note)
    attachment = ("notiz.txt", "text/plain; charset=windows-1252", note.encode("cp1252"))
    deliver(
        app,
        client_reply(notice, "Details attached.\n", attachment=attachment),
        rcpt=(address,),
        mail_from="bob@agents.test",
    )
    [answer] = to(app, ALICE, "agent_reply")
    assert "Details attached." in answer.text
    assert list(answer.msg.iter_attachments()) == []
    result = to(app, "bob@agents.test", "agent_result")[-1]
    assert "attachment 'notiz.txt' NOT sent" in result.text


NOT_ME = "That was not me! Someone is sending mail in my name, ops please check the logs"


@pytest.mark.parametrize("via", ["reply-to", "in-reply-to"])
def test_an_agents_answer_to_a_held_mail_warning_is_never_sent_to_the_customer(
    app: App, via: str
) -> None:
    """Mallory forges bob's From on Alice's ticket; bob is warned and answers the warning.

    The warning says nothing of answering the customer, and rightly bob writes to
    whoever reads it. His words went to Alice and her Cc'd colleague.
    """
    first = make_mail(message_id="first@customer.test", cc="Dave <dave@customer.test>")
    deliver(app, first)
    forged = reply_to(first, sender="Bob Agent <bob@agents.test>", body="#status closed\n")
    deliver(app, forged, mail_from=MALLORY)
    [warning] = to(app, "bob@agents.test", "agent_held")

    if via == "reply-to":
        raw, rcpt = client_reply(warning, NOT_ME + "\n"), reply_address(warning)
    else:  # a client that answers the From: the signed Message-ID alone says what it answers
        raw = client_reply(warning, NOT_ME + "\n", to_addr="support@example.com")
        rcpt = "support@example.com"
    deliver(app, raw, rcpt=(rcpt,), mail_from="bob@agents.test")

    customer_mail = [s for s in outbox(app) if not AGENT_ADDRESSES & set(s.recipients)]
    assert [s.purpose for s in customer_mail] == ["ack"]
    assert all("not me" not in s.text for s in customer_mail)
    # Kept for the agents, as a note of bob's.
    deliver(app, reply_to(first, body="Any news?\n", message_id="second@customer.test"))
    assert NOT_ME in " ".join(to(app, "bob@agents.test", "customer_reply")[-1].text.split())
    # bob's answer from that notice goes out, and names no mail that went only to bob.
    notice = to(app, "bob@agents.test", "customer_reply")[-1]
    deliver(
        app,
        client_reply(notice, "Hello Alice,\n\nplease unplug the printer.\n"),
        rcpt=(reply_address(notice),),
        mail_from="bob@agents.test",
    )
    [answer] = to(app, ALICE, "agent_reply")
    assert "please unplug the printer." in answer.text
    assert "md.n." not in str(answer.msg["References"]) and "md.a." not in str(
        answer.msg["References"]
    )


def test_an_agents_answer_to_the_result_of_their_commands_stays_internal(app: App) -> None:
    """The result mail is about bob's own mail; a reply to it is a note (its commands apply)."""
    deliver(app, make_mail(message_id="first@customer.test", cc="Dave <dave@customer.test>"))
    notice = to(app, "bob@agents.test", "new_ticket")[0]
    deliver(
        app,
        client_reply(notice, "#note\n\nCalled her, she will send the serial number.\n"),
        rcpt=(reply_address(notice),),
        mail_from="bob@agents.test",
    )
    [result] = to(app, "bob@agents.test", "agent_result")
    deliver(
        app,
        client_reply(result, f"#priority high\n\nAlso for the team: {SECRET}\n"),
        rcpt=(reply_address(result),),
        mail_from="bob@agents.test",
    )

    assert ticket_number(app).priority == "high"
    customer_mail = [s for s in outbox(app) if not AGENT_ADDRESSES & set(s.recipients)]
    assert [s.purpose for s in customer_mail] == ["ack"]
    report = to(app, "bob@agents.test", "agent_result")[-1].text
    assert "stored as an internal note" in report


def _reply(notice: Sent, text: str) -> bytes:
    """A reply to ``notice`` whose whole plain text is ``text`` (as the client wrote it)."""
    reply = email.message_from_bytes(client_reply(notice, ""), policy=email.policy.default)
    assert isinstance(reply, EmailMessage)
    reply.set_content(text)
    return reply.as_bytes()


def test_a_ps_to_the_agents_own_answer_carries_neither_his_address_nor_his_signed_one(
    app: App,
) -> None:
    """Bob answers Alice in Outlook, then replies to his own sent answer with a PS.

    Outlook quotes that answer under a header block naming bob's private address and
    the reply address signed for him: with that address and a forged From, anyone
    answers as bob (commands included). It all went to Alice.
    """
    deliver(app, make_mail(message_id="first@customer.test"))
    notice = to(app, "bob@agents.test", "new_ticket")[0]
    address = reply_address(notice)
    raw = client_reply(notice, "Hello Alice,\n\nplease unplug the printer.\n", style="outlook")
    deliver(app, raw, rcpt=(address,), mail_from="bob@agents.test")
    sent = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(sent, EmailMessage)
    body = sent.get_body(("plain",))
    assert body is not None
    ps = (
        "PS: and plug it in again after ten seconds.\n\n________________________________\n"
        "From: Bob Agent <bob@agents.test>\nSent: Monday, March 2, 2026 9:05 AM\n"
        f"To: Support <{address}>\nSubject: {sent['Subject']}\n\n{body.get_content()}"
    )
    deliver(app, _reply(notice, ps), rcpt=(address,), mail_from="bob@agents.test")

    first, second = to(app, ALICE, "agent_reply")
    assert "plug it in again" in second.text
    assert "please unplug" not in second.text
    local = address.split("@")[0]
    for answer in (first, second):
        assert b"agents.test" not in answer.raw
        assert local.encode() not in answer.raw


def test_an_agents_address_in_a_signature_without_a_delimiter_is_not_sent(app: App) -> None:
    """Outlook and Apple Mail write the agent's signature with no "-- " line above it."""
    deliver(app, make_mail(message_id="first@customer.test"))
    notice = to(app, "bob@agents.test", "new_ticket")[0]
    text = (
        "Hello Alice,\n\nplease unplug the printer.\n\nKind regards\nBob Agent\n"
        "Senior Support | Bob@Agents.test | +49 30 1234567\n"
    )
    deliver(
        app,
        client_reply(notice, text, style="outlook"),
        rcpt=(reply_address(notice),),
        mail_from="bob@agents.test",
    )
    [answer] = to(app, ALICE, "agent_reply")
    assert "Senior Support | support@example.com | +49 30 1234567" in answer.text
    assert b"agents.test" not in answer.raw.lower()
    report = to(app, "bob@agents.test", "agent_result")[-1].text
    assert "Bob@Agents.test replaced by support@example.com" in " ".join(report.split())


def test_one_line_of_a_note_kept_in_an_inline_reply_is_not_sent(app: App) -> None:
    """Bob answers inline and keeps one line of a two-line note in the quote."""
    latest, address = _a_note_then_a_customer_reply(app)
    line = next(line for line in latest.text.splitlines() if "5000 EUR" in line)
    text = (
        "On 02.03.26 09:00, Support wrote:\n> Any news?\n\n"
        "Hello Alice, a technician comes on Monday.\n\n"
        f"> {line}\n\nWe will talk about that later.\n\nBest regards\n"
    )
    deliver(app, _reply(latest, text), rcpt=(address,), mail_from="bob@agents.test")

    customer_mail = [s for s in outbox(app) if not AGENT_ADDRESSES & set(s.recipients)]
    assert [s.purpose for s in customer_mail] == ["ack"]
    report = to(app, "bob@agents.test", "agent_result")[-1]
    assert "reply NOT sent: it contains the internal note text" in report.text


@pytest.mark.parametrize(
    "signature",
    [
        "Bob Agent, Senior Support Engineer",  # a line of the note's last paragraph
        "Kind regards\nBob Agent\nSenior Support | +49 30 1234567",  # a paragraph of its own
    ],
    ids=["line", "paragraph"],
)
def test_a_signature_a_note_and_an_answer_both_end_with_is_no_leak(
    app: App, signature: str
) -> None:
    """Outlook writes the agent's signature under a note and under an answer alike, with
    no "-- " line: the answer still goes to the customer, and the note's own words never do."""
    deliver(app, make_mail(message_id="first@customer.test"))
    notice = to(app, "bob@agents.test", "new_ticket")[0]
    address = reply_address(notice)
    note = f"#note\n\nCustomer owes us 5000 EUR from the last contract.\n{signature}\n"
    deliver(app, client_reply(notice, note, style="outlook"), rcpt=(address,), mail_from="bob@x")
    answer = f"Hello Alice,\n\na technician comes on Monday.\n\n{signature}\n"
    deliver(
        app,
        client_reply(notice, answer, style="outlook"),
        rcpt=(address,),
        mail_from="bob@agents.test",
    )

    [sent] = to(app, ALICE, "agent_reply")
    assert "technician comes on Monday" in sent.text
    assert "5000 EUR" not in sent.text
