"""What comes back (MAIL-RULES §3): only a bounce of a mail we sent suppresses, and only
the recipients of that mail.

A delivery report is just a mail anyone can write. One that names no mail of
ours (neither our signed VERP return path nor one of our Message-IDs in the
returned headers) must not put a customer on the suppression list, or a
stranger can cut a customer off from every answer; and one that does name
our mail may only suppress the people that mail went to.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from maildesk.app import App
from maildesk.config import OutboundSettings
from maildesk.db.models import (
    Direction,
    Event,
    Message,
    MessageKind,
    Outbox,
    OutboxState,
    Suppression,
    Ticket,
)
from maildesk.outbound.sender import OutboxSender, SmtpTransport
from tests.daemon_harness import RelaySink
from tests.mailfactory import deliver, make_mail


def dsn(to: str, failed: list[str], returned_headers: str = "") -> bytes:
    statuses = "".join(
        f"\r\nFinal-Recipient: rfc822; {addr}\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        "Diagnostic-Code: smtp; 550 5.1.1 no such user\r\n"
        for addr in failed
    )
    returned = (
        f"--b\r\nContent-Type: text/rfc822-headers\r\n\r\n{returned_headers}"
        if returned_headers
        else ""
    )
    return (
        f"From: MAILER-DAEMON@mx.elsewhere.test\r\nTo: {to}\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        "Message-ID: <dsn-forged@mx.elsewhere.test>\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\r\n\r\n'
        "--b\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n"
        "--b\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.elsewhere.test\r\n" + statuses + returned + "--b--\r\n"
    ).encode()


def drain_to(app: App, relay: RelaySink) -> OutboxSender:
    settings = OutboundSettings(transport="smtp", relay_port=relay.port)
    sender = OutboxSender(app.db, SmtpTransport(settings, password=""), settings, app.clock, "n1")
    sender.drain()
    return sender


def suppressed(app: App) -> set[str]:
    with app.db.transaction() as session:
        return set(session.scalars(select(Suppression.address)))


def test_a_forged_bounce_naming_no_mail_of_ours_does_not_cut_a_customer_off(
    app: App, relay: RelaySink
) -> None:
    deliver(app, make_mail(message_id="q@customer.test"))  # alice's ack is queued
    # A stranger mails support a delivery report that says alice's mailbox is gone.
    deliver(app, dsn("support@example.com", ["alice@customer.test"]), mail_from="")

    drain_to(app, relay)
    assert suppressed(app) == set()
    assert [mail.rcpt_tos for mail in relay.received] == [["alice@customer.test"]]
    with app.db.transaction() as session:
        assert {row.state for row in session.scalars(select(Outbox))} == {OutboxState.SENT}


def test_a_bounce_of_our_mail_suppresses_only_who_that_mail_went_to(
    app: App, relay: RelaySink
) -> None:
    deliver(app, make_mail(message_id="q@customer.test"))
    deliver(
        app,
        make_mail(message_id="b@other.test", sender="Bob <bob@other.test>", subject="Invoice"),
    )
    with app.db.transaction() as session:
        alice_ack, _bob_ack = session.scalars(select(Outbox).order_by(Outbox.id)).all()
        verp = alice_ack.envelope_from
    # Alice sees our VERP return path in her copy; her "bounce" names bob as well.
    report = dsn(verp, ["alice@customer.test", "bob@other.test"])
    deliver(app, report, rcpt=(verp,), mail_from="")

    assert suppressed(app) == {"alice@customer.test"}
    drain_to(app, relay)
    assert [mail.rcpt_tos for mail in relay.received] == [["bob@other.test"]]


def test_a_bounce_from_mailer_daemon_with_an_empty_address_is_a_bounce(
    app: App, corpus: Path
) -> None:
    """DragonFly's dma writes ``From: MAILER-DAEMON <>``; read from IMAP or a file (no
    envelope, no Return-Path) it was taken for a person's mail: a new open ticket."""
    raw = (
        corpus / "fixtures/sisimai-set-of-emails/maildir/bsd/lhost-dragonfly-01.eml"
    ).read_bytes()
    deliver(app, raw, source="imap", mail_from=None)
    with app.db.transaction() as session:
        message = session.scalars(
            select(Message).where(Message.direction == Direction.INBOUND)
        ).one()
        assert (message.kind, message.auto_kind) == (MessageKind.AUTO, "bounce")


def ack_of(app: App, address: str) -> Outbox:
    """The acknowledgement of a new ticket from ``address``."""
    deliver(app, make_mail(sender=address, subject=f"Question from {address}"))
    with app.db.transaction() as session:
        row = session.scalars(select(Outbox).order_by(Outbox.id.desc())).first()
        assert row is not None and row.recipients == [address]
        session.expunge(row)
        return row


# Real bounces without a delivery-status part, as old MTAs write them: (file, the
# address that failed, whether the text says that address does not exist).
TEXT_BOUNCES = [
    ("lhost-qmail-01.eml", "kijitora@example.ne.jp", True),  # "550 Unknown user"
    ("lhost-exim-02.eml", "kijitora@example.jp", True),  # "550 5.1.1 ... User Unknown"
    ("lhost-exchange2003-01.eml", "kijitora@example.jp", True),  # "name is not recognized"
    ("lhost-v5sendmail-05.eml", "mikeneko@example.co.jp", True),
    ("lhost-exim-01.eml", "kijitora@example.ed.jp", False),  # 5.7.0: a policy, not the address
    ("lhost-qmail-06.eml", "kijitora@example.jp", False),  # 4.2.2: a full mailbox
    ("lhost-exim-38.eml", "kijitora@example.co.jp", False),  # "Warning: message ... delayed"
]


@pytest.mark.parametrize(("name", "address", "dead"), TEXT_BOUNCES)
def test_a_text_bounce_of_our_mail_suppresses_an_address_it_says_does_not_exist(
    app: App, corpus: Path, name: str, address: str, dead: bool
) -> None:
    """qmail, Exim's text form, old Sendmail and Exchange NDRs carry no delivery-status
    part: they joined the ticket but suppressed nobody, so every later mail to a
    mailbox that no longer exists went out and came back again."""
    raw = (corpus / "fixtures/sisimai-set-of-emails/maildir/bsd" / name).read_bytes()
    assert address.encode() in raw
    ack = ack_of(app, address)
    deliver(app, raw, rcpt=(ack.envelope_from,), mail_from="")

    assert suppressed(app) == ({address} if dead else set())
    with app.db.transaction() as session:
        bounce = session.scalars(select(Message).where(Message.auto_kind == "bounce")).one()
        assert bounce.ticket_id == ack.ticket_id


def text_bounce(failed: str, returned: str, *, people: str = "") -> bytes:
    """An Exchange 2003-style text NDR: a "To:" line naming everyone the mail went to,
    then only the recipient that failed, then the returned headers."""
    return (
        "From: postmaster@mx.customer.test\r\nTo: support@example.com\r\n"
        "Subject: Undeliverable: your question\r\nMessage-ID: <ndr1@mx.customer.test>\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\n"
        f"Your message\r\n\r\n  To:      {people}\r\n  Subject: your question\r\n\r\n"
        "did not reach the following recipient(s):\r\n\r\n"
        f"{failed} on Mon, 2 Mar 2026 09:00:00 +0000\r\n"
        "    The recipient name is not recognized\r\n\r\n"
        "--- Below this line is a copy of the message.\r\n\r\n" + returned + "\r\nHello\r\n"
    ).encode()


def test_a_text_bounce_suppresses_only_the_recipient_it_says_failed(app: App) -> None:
    ack = ack_of(app, "alice@customer.test")
    with app.db.transaction() as session:  # the mail went to alice and, in Cc, to bob
        message = session.get(Message, ack.message_pk)
        assert message is not None
        message.cc_addrs = ["bob@customer.test"]
    returned = (
        f"Message-ID: <{ack.message_id}>\r\nTo: alice@customer.test\r\nCc: bob@customer.test\r\n"
    )
    raw = text_bounce(
        "bob@customer.test", returned, people="alice@customer.test; bob@customer.test"
    )
    deliver(app, raw, rcpt=(ack.envelope_from,), mail_from="")
    assert suppressed(app) == {"bob@customer.test"}


def test_a_text_bounce_quoting_our_message_id_joins_the_ticket_and_suppresses(app: App) -> None:
    """Not every bounce goes to our VERP return path (a relay that bounces to the From,
    a notice sent without one): the Message-ID in the quoted copy names our mail."""
    ack = ack_of(app, "alice@customer.test")
    returned = f"Message-ID: <{ack.message_id}>\r\nTo: alice@customer.test\r\n"
    deliver(app, text_bounce("alice@customer.test", returned), mail_from="")

    assert suppressed(app) == {"alice@customer.test"}
    with app.db.transaction() as session:
        bounce = session.scalars(select(Message).where(Message.auto_kind == "bounce")).one()
        assert bounce.ticket_id == ack.ticket_id


def test_a_text_bounce_naming_no_mail_of_ours_suppresses_nobody(app: App) -> None:
    ack_of(app, "alice@customer.test")
    returned = "Message-ID: <someone-elses@mail.test>\r\nTo: alice@customer.test\r\n"
    deliver(app, text_bounce("alice@customer.test", returned), mail_from="")
    assert suppressed(app) == set()


def test_a_bounce_names_the_address_we_mailed_as_its_original_recipient(app: App) -> None:
    """Alice's old address forwards to a mailbox that is gone: the report's Final-Recipient
    is the forward's target and the address we mailed is its Original-Recipient."""
    ack = ack_of(app, "alice@old.test")
    report = dsn(ack.envelope_from, ["alice@new.test"]).replace(
        b"Final-Recipient: rfc822; alice@new.test\r\n",
        b"Original-Recipient: rfc822;alice@old.test\r\nFinal-Recipient: rfc822; alice@new.test\r\n",
    )
    deliver(app, report, rcpt=(ack.envelope_from,), mail_from="")

    assert suppressed(app) == {"alice@old.test"}
    with app.db.transaction() as session:
        refused = session.scalars(select(Event).where(Event.kind == "suppression_refused")).all()
        assert [e.reason for e in refused] == []


def test_an_original_recipient_in_xtext_names_the_address_we_mailed(app: App) -> None:
    """Exim and sendmail repeat the ORCPT as it came, in xtext (RFC 3461 s. 4): a "+"
    in the address we mailed is "+2B" there."""
    ack = ack_of(app, "alice+tickets@old.test")
    report = dsn(ack.envelope_from, ["alice@new.test"]).replace(
        b"Final-Recipient: rfc822; alice@new.test\r\n",
        b"Original-Recipient: rfc822;alice+2Btickets@old.test\r\n"
        b"Final-Recipient: rfc822; alice@new.test\r\n",
    )
    deliver(app, report, rcpt=(ack.envelope_from,), mail_from="")

    assert suppressed(app) == {"alice+tickets@old.test"}
    with app.db.transaction() as session:
        refused = session.scalars(select(Event).where(Event.kind == "suppression_refused")).all()
        assert [e.reason for e in refused] == []


def test_a_report_naming_only_an_alias_target_is_read_by_its_own_words(app: App) -> None:
    """Postfix writes an Original-Recipient only when it has one: its fields then name
    the alias target alone, and its words the address we mailed."""
    ack = ack_of(app, "alice@old.test")
    report = dsn(ack.envelope_from, ["alice@new.test"]).replace(
        b"Your message could not be delivered.",
        b"<alice@new.test> (expanded from <alice@old.test>): host mx.new.test said: 550\r\n"
        b"    5.1.1 <alice@new.test>: Recipient address rejected: User unknown",
    )
    deliver(app, report, rcpt=(ack.envelope_from,), mail_from="")

    assert suppressed(app) == {"alice@old.test"}
    with app.db.transaction() as session:
        [refused] = session.scalars(select(Event).where(Event.kind == "suppression_refused"))
        assert "alice@new.test" in refused.reason


@pytest.mark.parametrize(
    ("status", "diagnostic"),
    [("5.2.2", "552 5.2.2 mailbox full"), ("5.7.1", "550 5.7.1 message rejected as spam")],
)
def test_a_report_of_a_full_mailbox_or_a_refusal_does_not_cut_the_customer_off(
    app: App, status: str, diagnostic: str
) -> None:
    """Suppression stops every mail to the address, agents' answers included, for
    30 days: only a report that the address does not exist may do that, as for
    our own relay's answers."""
    ack = ack_of(app, "alice@customer.test")
    report = (
        dsn(ack.envelope_from, ["alice@customer.test"])
        .replace(b"Status: 5.1.1", f"Status: {status}".encode())
        .replace(b"550 5.1.1 no such user", diagnostic.encode())
    )
    deliver(app, report, rcpt=(ack.envelope_from,), mail_from="")

    assert suppressed(app) == set()
    with app.db.transaction() as session:
        [event] = session.scalars(select(Event).where(Event.kind == "bounce_not_suppressed"))
        assert event.ticket_id == ack.ticket_id
        assert f"alice@customer.test: {status} {diagnostic}" in event.reason


def test_a_bounce_naming_a_row_of_another_ticket_does_not_suppress_its_recipient(
    app: App,
) -> None:
    """Our VERP address names the outbox row and its ticket, signed. An erasure
    (``maildesk privacy forget``) frees a row's id, and SQLite gives the highest free
    id to the next row: a late bounce of the erased mail then names another
    customer's mail by id, but still alice's ticket. It must not cut bob off."""
    deliver(app, make_mail(message_id="q@customer.test"))
    deliver(app, make_mail(message_id="b@other.test", sender="bob@other.test", subject="Hi"))
    with app.db.transaction() as session:
        alice_ack, bob_ack = session.scalars(select(Outbox).order_by(Outbox.id)).all()
        alice_ticket = session.get(Ticket, alice_ack.ticket_id)
        assert alice_ticket is not None and alice_ack.envelope_from is not None
        number, bob_row = alice_ticket.number, bob_ack.id
    domain = alice_ack.envelope_from.rpartition("@")[2]
    verp = app.signer.reply_local_part("support", "bounce", number, extra=(str(bob_row),))
    late = f"{verp}@{domain}"
    deliver(app, dsn(late, ["bob@other.test"]), rcpt=(late,), mail_from="")
    assert suppressed(app) == set()
