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

from sqlalchemy import select

from maildesk.app import App
from maildesk.config import OutboundSettings
from maildesk.db.models import Direction, Message, MessageKind, Outbox, OutboxState, Suppression
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
