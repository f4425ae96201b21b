"""What our mail looks like to the customer's client, as the relay receives it (MAIL-RULES §4)."""

from __future__ import annotations

import shutil
from email.message import Message as EmailMessageT
from pathlib import Path

import pytest
from inscriptis import get_text

from maildesk.app import App
from maildesk.db import queries
from maildesk.db.models import TicketStatus
from maildesk.tickets import change_status
from tests.agents.agenthelp import agent_app, client_reply, reply_address, to
from tests.conftest import FrozenClock, make_settings
from tests.daemon_harness import RelaySink
from tests.mailfactory import deliver, make_mail
from tests.outbound.test_bounces import drain_to

# Message-IDs as Exchange Online / Outlook.com write them: 78 characters and more.
OUTLOOK_FIRST = "DB9PR08MB6588D2C8E8B2A0A1B7E9F6C3C4F29@DB9PR08MB6588.eurprd08.prod.outlook.com"
OUTLOOK_REPLY = "DB9PR08MB65881F2E3D4C5B6A79887A6B5C4D3E2@DB9PR08MB6588.eurprd08.prod.outlook.com"
SHIPPED = Path(__file__).resolve().parents[2] / "templates"


def ids(message: EmailMessageT, header: str) -> list[str]:
    """The ids in a threading header as a mail client reads them: ``<...>`` tokens."""
    return str(message.get(header) or "").split()


def parts(message: EmailMessageT) -> dict[str, str]:
    out = {}
    for part in message.walk():
        if part.get_content_type() in ("text/plain", "text/html"):
            payload = part.get_payload(decode=True)
            assert isinstance(payload, bytes)
            out[part.get_content_type()] = payload.decode(part.get_content_charset() or "ascii")
    return out


def test_answers_to_an_outlook_customer_name_their_mail_in_the_threading_headers(
    app: App, relay: RelaySink
) -> None:
    """A long Message-ID went out RFC 2047-encoded (``=?utf-8?q?=3CDB9PR...``) in
    In-Reply-To and References, so the customer's client could not put our answer
    in their conversation."""
    deliver(app, make_mail(message_id=OUTLOOK_FIRST))
    drain_to(app, relay)
    [ack] = [r.message for r in relay.received]
    assert ids(ack, "In-Reply-To") == [f"<{OUTLOOK_FIRST}>"]
    assert ids(ack, "References") == [f"<{OUTLOOK_FIRST}>"]

    # The customer answers the acknowledgement from Outlook; the ticket is resolved.
    deliver(
        app,
        make_mail(
            message_id=OUTLOOK_REPLY,
            subject="RE: " + str(ack["Subject"]),
            in_reply_to=str(ack["Message-ID"]).strip("<>"),
            references=[OUTLOOK_FIRST, str(ack["Message-ID"]).strip("<>")],
        ),
    )
    with app.db.transaction() as session:
        ticket = queries.ticket_by_number(session, 1)
        assert ticket is not None
        change_status(
            session, ticket, TicketStatus.RESOLVED, app.clock(), app.notices(), actor="test"
        )
    drain_to(app, relay)
    resolved = relay.received[-1].message
    assert ids(resolved, "In-Reply-To") == [f"<{OUTLOOK_REPLY}>"]
    assert ids(resolved, "References") == [
        f"<{OUTLOOK_FIRST}>",
        str(ack["Message-ID"]),
        f"<{OUTLOOK_REPLY}>",
    ]
    for line in relay.received[-1].raw.split(b"\r\n"):
        assert len(line) <= 998


def test_the_quoted_message_keeps_its_lines_in_the_html_part(
    tmp_path: Path, database_url: str, clock: FrozenClock, relay: RelaySink
) -> None:
    """HTML clients show the HTML part: the quote was one run-on paragraph there."""
    settings = make_settings(tmp_path, database_url, acknowledgements={"quote_message": "always"})
    app = App.build(settings, clock=clock)
    try:
        body = "Hello,\nmy printer is on fire.\nIt is a <Model 5> & it smokes.\n\nAlice\n"
        deliver(app, make_mail(body=body))
        drain_to(app, relay)
        [ack] = [r.message for r in relay.received]
        shown = [line.strip() for line in get_text(parts(ack)["text/html"]).splitlines()]
        assert "Hello," in shown, shown
        start = shown.index("Hello,")
        assert shown[start : start + 5] == [
            "Hello,",
            "my printer is on fire.",
            "It is a <Model 5> & it smokes.",
            "",
            "Alice",
        ]
        assert "<Model 5>" not in parts(ack)["text/html"]  # still escaped in the HTML itself
    finally:
        app.db.dispose()


def test_a_translated_text_template_is_not_sent_beside_the_english_html(
    tmp_path: Path, database_url: str, clock: FrozenClock, relay: RelaySink
) -> None:
    """Ops translate ``de/ack.customer.txt.j2``; the top folder's English HTML part
    went out beside it, and that is the part most mail clients show."""
    templates = tmp_path / "templates"
    shutil.copytree(SHIPPED, templates)
    (templates / "de").mkdir()
    (templates / "de" / "ack.customer.txt.j2").write_text(
        '{% set subject = "Ihre Anfrage: " ~ ticket.subject %}Hallo {{ customer.name }},\n\n'
        "wir haben Ihre Anfrage #{{ ticket.number }} erhalten.\n",
        encoding="utf-8",
    )
    settings = make_settings(
        tmp_path,
        database_url,
        templates_dir=templates,
        address=[{"address": "support@example.com", "language": "de"}],
    )
    app = App.build(settings, clock=clock)
    try:
        deliver(app, make_mail())
        drain_to(app, relay)
        [ack] = [r.message for r in relay.received]
        assert str(ack["Subject"]).startswith("[Support #1] Ihre Anfrage:")
        shown = parts(ack)
        assert shown and all("wir haben Ihre Anfrage #1" in text for text in shown.values())
        assert not any("thank you for writing" in text for text in shown.values())
    finally:
        app.db.dispose()


@pytest.mark.parametrize(
    ("customer_subject", "answer_subject"),
    [
        # A customer answers our invoice mail at the support address: a new ticket.
        ("Re: Your invoice 42", "[Support #1] Re: Your invoice 42"),
        # A reply naming a ticket that is not theirs (or gone) also opens a new one.
        ("AW: [Support #7] Re: Rechnung", "[Support #1] Re: Rechnung"),
    ],
)
def test_an_agents_answer_to_a_ticket_opened_by_a_reply_has_one_re(
    tmp_path: Path,
    database_url: str,
    clock: FrozenClock,
    relay: RelaySink,
    customer_subject: str,
    answer_subject: str,
) -> None:
    """The answer's subject is "Re: " + the ticket's subject; for a ticket whose
    subject was already a reply the customer got "Re: Re: ..." (and a stale tag)."""
    app = agent_app(tmp_path, database_url, clock)
    try:
        deliver(app, make_mail(message_id="inv@customer.test", subject=customer_subject))
        [notice] = to(app, "bob@agents.test", "new_ticket")
        raw = client_reply(notice, "Hello Alice,\n\nthe invoice is paid.\n")
        deliver(app, raw, rcpt=(reply_address(notice),), mail_from="bob@agents.test")
        drain_to(app, relay)
        mails = [r.message for r in relay.received if r.rcpt_tos == ["alice@customer.test"]]
        [answer] = [m for m in mails if m["Auto-Submitted"] == "no"]  # not the acknowledgement
        assert " ".join(str(answer["Subject"]).split()) == answer_subject
    finally:
        app.db.dispose()


def test_mail_with_non_ascii_text_goes_to_the_relay_in_seven_bits(
    app: App, relay: RelaySink
) -> None:
    """We do not ask the relay for 8BITMIME (BODY=8BITMIME), so an 8-bit body breaks
    RFC 6152 and a strict relay refuses it: the text travels quoted-printable."""
    deliver(app, make_mail(sender="Jürgen Müller <juergen@customer.test>", subject="Grüße"))
    drain_to(app, relay)
    [ack] = relay.received
    assert all(byte < 0x80 for byte in ack.raw), "8-bit bytes sent without 8BITMIME"
    assert "Jürgen Müller" in parts(ack.message)["text/plain"]
