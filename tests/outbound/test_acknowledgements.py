"""Acknowledgements and notices: MAIL-RULES §3 (sending side) and §4."""

from __future__ import annotations

import email
import email.utils
from email.message import Message as EmailMessageT
from pathlib import Path

import pytest
from sqlalchemy import select

from maildesk.app import App
from maildesk.db import queries
from maildesk.db.models import (
    Blob,
    Direction,
    Event,
    Intake,
    IntakeState,
    Message,
    MessageKind,
    Outbox,
    OutboxState,
    Ticket,
    TicketStatus,
)
from maildesk.outbound.sender import MaildirTransport, OutboxSender
from maildesk.tickets import change_status
from tests.conftest import FrozenClock, make_settings
from tests.mailfactory import deliver, make_mail


def outbox(app: App) -> list[tuple[Outbox, EmailMessageT]]:
    with app.db.transaction() as session:
        rows = list(session.scalars(select(Outbox).order_by(Outbox.id)))
        return [
            (row, email.message_from_bytes(session.get(Blob, row.raw_sha256).data)) for row in rows
        ]  # type: ignore[union-attr]


def skipped_reasons(app: App) -> list[str]:
    with app.db.transaction() as session:
        return [e.reason for e in session.scalars(select(Event).where(Event.kind == "ack_skipped"))]


def test_new_ticket_is_acknowledged_with_threading_headers(app: App) -> None:
    deliver(app, make_mail(message_id="q@customer.test", subject="Printer on fire"))
    [(row, ack)] = outbox(app)
    assert row.recipients == ["alice@customer.test"] and row.purpose == "ack"
    assert ack["In-Reply-To"] == "<q@customer.test>"
    assert "q@customer.test" in ack["References"]
    assert ack["Subject"].startswith("[Support #1] ")
    assert ack["Auto-Submitted"] == "auto-replied"
    assert ack["X-Maildesk-Loop"]
    assert ack["From"] == "Support <support@example.com>"
    assert ack["Reply-To"].startswith("Support <support+t-1-")
    assert app.signer.parse_outbound_message_id(ack["Message-ID"].strip("<>")).ticket == 1  # type: ignore[union-attr]
    parts = [p for p in ack.walk() if p.get_content_type() in ("text/plain", "text/html")]
    assert {p.get_content_type() for p in parts} == {"text/plain", "text/html"}
    for part in parts:
        assert app.signer.find_body_marker(part.get_payload(decode=True).decode()) == 1
    assert row.envelope_from.startswith("support+bounce-1-")


def test_customer_reply_to_the_ack_threads_and_is_not_acknowledged_again(app: App) -> None:
    deliver(app, make_mail(message_id="q@customer.test"))
    [(_, ack)] = outbox(app)
    deliver(
        app,
        make_mail(
            message_id="r@customer.test",
            subject="Re: " + ack["Subject"],
            in_reply_to=ack["Message-ID"].strip("<>"),
        ),
    )
    assert len(outbox(app)) == 1


def test_auto_replies_lists_and_bounces_are_never_acknowledged(app: App) -> None:
    deliver(
        app,
        make_mail(
            message_id="a1@x.test",
            headers={"Auto-Submitted": "auto-replied"},
            subject="Out of office",
        ),
    )
    deliver(
        app,
        make_mail(
            message_id="a2@x.test",
            headers={"List-Id": "<dev.lists.test>"},
            subject="list post",
            sender="dev@lists.test",
        ),
    )
    deliver(
        app,
        make_mail(
            message_id="a3@x.test", sender="MAILER-DAEMON@mx.test", subject="Undeliverable: hi"
        ),
        mail_from="",
    )
    deliver(
        app,
        make_mail(
            message_id="a4@x.test",
            headers={"Precedence": "bulk"},
            subject="newsletter",
            sender="news@shop.test",
        ),
    )
    assert outbox(app) == []
    assert len(skipped_reasons(app)) == 4


def test_mail_from_our_own_address_is_not_answered(app: App) -> None:
    deliver(
        app,
        make_mail(message_id="own@example.com", sender="support@example.com", subject="hello me"),
    )
    assert outbox(app) == []


@pytest.mark.parametrize(
    "sender", ["Support <support+foo@example.com>", "support+t-1-abc@Example.com"]
)
def test_mail_from_a_sub_address_of_ours_is_not_answered(app: App, sender: str) -> None:
    """A sub-address of a support address is ours too (the listener takes it as ours):
    an acknowledgement to it is mail to ourselves, the first turn of a loop."""
    address = sender.rpartition("<")[2].rstrip(">")
    deliver(app, make_mail(message_id="own@x.test", sender=sender), mail_from=address)
    assert outbox(app) == []
    with app.db.transaction() as session:
        [message] = session.scalars(select(Message)).all()
        assert message.kind == MessageKind.AUTO and message.auto_kind == "own_mail"
        ticket = queries.ticket_by_number(session, 1)
        assert ticket is not None
        change_status(
            session, ticket, TicketStatus.RESOLVED, app.clock(), app.notices(), actor="test"
        )
    assert outbox(app) == [], "nor is any other mail to the customer side sent to it"
    with app.db.transaction() as session:
        reasons = session.scalars(select(Event.reason).where(Event.kind == "resolved_skipped"))
        assert any("one of our own addresses" in r for r in reasons)


def test_acknowledgements_are_rate_limited_per_sender(app: App, clock: FrozenClock) -> None:
    for n in range(8):
        deliver(app, make_mail(message_id=f"rl{n}@customer.test", subject=f"question {n}"))
        clock.advance(minutes=1)
    assert len(outbox(app)) == 5, "per_sender_per_hour default is 5"
    assert any("rate limit" in r for r in skipped_reasons(app))
    clock.advance(hours=2)
    deliver(app, make_mail(message_id="rl-late@customer.test", subject="later question"))
    assert len(outbox(app)) == 6


def test_notices_an_agent_or_the_clock_sends_are_not_rate_limited(app: App) -> None:
    """The rate limit stops mail loops, which only mail answering mail can start: an
    agent resolving a customer's eight tickets, or the sweep's reminders due at once
    after a restart, must reach the customer every time."""
    for n in range(8):
        deliver(app, make_mail(message_id=f"many{n}@customer.test", subject=f"question {n}"))
    with app.db.transaction() as session:
        for number in range(1, 9):
            ticket = queries.ticket_by_number(session, number)
            assert ticket is not None
            change_status(
                session, ticket, TicketStatus.RESOLVED, app.clock(), app.notices(), actor="test"
            )
    purposes = [row.purpose for row, _ in outbox(app)]
    assert purposes.count("ack") == 5  # answers to incoming mail stay limited
    assert purposes.count("resolved") == 8


def test_header_injection_in_subject_and_name_cannot_add_headers(app: App) -> None:
    raw = make_mail(message_id="inj@customer.test", subject="hi").replace(
        b"Subject: hi", b"Subject: =?utf-8?q?hi=0D=0ABcc=3A_victim=40evil=2Etest?="
    )
    raw = raw.replace(
        b"From: Alice Customer", b"From: =?utf-8?q?Alice=0D=0ABcc=3A_x=40evil=2Etest?="
    )
    deliver(app, raw)
    [(row, ack)] = outbox(app)
    assert ack["Bcc"] is None
    assert row.recipients == ["alice@customer.test"]
    assert "\n" not in ack["Subject"] and "\r" not in ack["Subject"]
    assert "victim@evil.test" not in ack.as_string().split("\n\n", 1)[0].replace(ack["Subject"], "")


def test_bounce_of_our_ack_suppresses_the_address(app: App) -> None:
    deliver(app, make_mail(message_id="q@customer.test", sender="gone@customer.test"))
    [(row, ack)] = outbox(app)
    dsn = (
        "From: MAILER-DAEMON@mx.customer.test\r\nTo: " + row.envelope_from + "\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\nMessage-ID: <dsn1@mx.customer.test>\r\n"
        'MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary="b"\r\n\r\n'
        "--b\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n"
        "--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.customer.test\r\n\r\n"
        "Final-Recipient: rfc822; gone@customer.test\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        "Diagnostic-Code: smtp; 550 5.1.1 no such user\r\n"
        "--b\r\nContent-Type: text/rfc822-headers\r\n\r\nMessage-ID: " + ack["Message-ID"] + "\r\n"
        "Subject: " + ack["Subject"] + "\r\n--b--\r\n"
    ).encode()
    deliver(app, dsn, rcpt=(row.envelope_from,), mail_from="")
    with app.db.transaction() as session:
        ticket = queries.ticket_by_number(session, 1)
        assert ticket is not None and len(ticket.messages) == 3, "the bounce is on the ticket"
        events = queries.events_for_ticket(session, ticket.id)
        assert any(e.kind == "suppressed" and "gone@customer.test" in e.reason for e in events)
    # A new mail from the bounced address is not acknowledged while suppressed.
    deliver(
        app, make_mail(message_id="q2@customer.test", sender="gone@customer.test", subject="other")
    )
    assert len(outbox(app)) == 1
    assert any("suppressed" in r for r in skipped_reasons(app))


def test_resolution_notice_and_sending_to_maildir(app: App, tmp_path) -> None:  # type: ignore[no-untyped-def]
    deliver(app, make_mail(message_id="q@customer.test"))
    with app.db.transaction() as session:
        ticket = queries.ticket_by_number(session, 1)
        assert ticket is not None
        change_status(
            session, ticket, TicketStatus.RESOLVED, app.clock(), app.notices(), actor="test"
        )
    rows = outbox(app)
    assert [r.purpose for r, _ in rows] == ["ack", "resolved"]
    assert rows[1][1]["Auto-Submitted"] == "auto-generated"
    sender = OutboxSender(
        app.db, MaildirTransport(tmp_path / "md"), app.settings.outbound, app.clock, "n1"
    )
    result = sender.drain()
    assert result.sent == 2
    assert sender.drain().sent == 0, "each mail is sent once"
    files = list((tmp_path / "md" / "new").iterdir())
    assert len(files) == 2
    assert not list((tmp_path / "md" / "tmp").iterdir())
    for path in files:
        assert path.stat().st_mode & 0o077 == 0  # customers' mail, readable by us alone
        raw = path.read_bytes()
        assert raw.startswith(b"Return-Path: <support+bounce-")
        assert raw.count(b"\n") == raw.count(b"\r\n")  # one kind of line end throughout
        assert email.message_from_bytes(raw)["X-Maildesk-Rcpt"] == "alice@customer.test"
    with app.db.transaction() as session:
        assert {r.state for r in session.scalars(select(Outbox))} == {OutboxState.SENT}


def test_an_import_of_old_mail_is_not_acknowledged(app: App) -> None:
    from maildesk.intake.store import Envelope

    old = make_mail(message_id="old@customer.test", date="Tue, 02 Jan 2024 10:00:00 +0000")
    app.intake().store(old, Envelope(source="file", source_ref="old.eml"))
    app.worker().drain()
    assert outbox(app) == []
    assert any("older than" in r for r in skipped_reasons(app))


def test_each_support_address_brings_its_own_queue_category_and_sender_name(
    tmp_path, database_url, clock
) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import make_settings

    settings = make_settings(
        tmp_path,
        database_url,
        address=[
            {
                "address": "billing@example.com",
                "queue": "billing",
                "category": "invoices",
                "from_name": "Example Billing",
            }
        ],
    )
    app = App.build(settings, clock=clock)
    deliver(
        app,
        make_mail(message_id="b@customer.test", to="billing@example.com"),
        rcpt=("billing@example.com",),
    )
    deliver(
        app, make_mail(message_id="s@customer.test", subject="other", sender="zed@customer.test")
    )
    with app.db.transaction() as session:
        billing = queries.ticket_by_number(session, 1)
        plain = queries.ticket_by_number(session, 2)
        assert billing is not None and plain is not None
        assert (billing.queue, billing.category) == ("billing", "invoices")
        assert (plain.queue, plain.category) == (None, None)
    (_, ack_billing), (_, ack_plain) = outbox(app)
    assert ack_billing["From"] == "Example Billing <billing@example.com>"
    assert ack_plain["From"] == "Support <support@example.com>"
    app.db.dispose()


def test_a_sender_our_mta_found_failing_dmarc_gets_a_ticket_but_no_acknowledgement(
    tmp_path: Path, database_url: str, clock: FrozenClock
) -> None:
    """A forged From must not turn our acknowledgement into backscatter."""
    settings = make_settings(
        tmp_path, database_url, agent_mail={"trusted_authserv_ids": ["mx.example.com"]}
    )
    app = App.build(settings, clock=clock)
    failing = "mx.example.com; dmarc=fail (p=reject) header.from=bank.test; spf=fail"
    elsewhere = "relay.evil.test; dmarc=fail header.from=friend.test"  # not our MTA's verdict
    try:
        for n, (sender, results) in enumerate(
            [
                ("Bank <security@bank.test>", failing),
                ("Ann <ann@friend.test>", elsewhere),
                ("Bo <bo@shop.test>", "mx.example.com; dmarc=pass header.from=shop.test"),
            ]
        ):
            raw = make_mail(
                sender=sender,
                message_id=f"d{n}@x.test",
                subject=f"Question {n}",
                headers={"Authentication-Results": results},
            )
            assert deliver(app, raw).as_dict()["created"] == 1
        assert sorted(row.recipients[0] for row, _ in outbox(app)) == [
            "ann@friend.test",
            "bo@shop.test",
        ]
        assert any(
            "dmarc=fail (bank.test): the sender is likely forged" in r for r in skipped_reasons(app)
        )
    finally:
        app.db.dispose()


def test_without_a_trusted_mta_named_an_authentication_results_header_changes_nothing(
    app: App,
) -> None:
    failing = "mx.example.com; dmarc=fail (p=reject) header.from=customer.test"
    deliver(app, make_mail(message_id="d9@x.test", headers={"Authentication-Results": failing}))
    assert len(outbox(app)) == 1


LURE = "Your mailbox is full. Verify your account at https://mail-verify.example.top/login"


def ack_text(ack: EmailMessageT) -> str:
    parts = [p for p in ack.walk() if p.get_content_type() in ("text/plain", "text/html")]
    return "\n".join(p.get_payload(decode=True).decode() for p in parts)  # type: ignore[union-attr]


def answered_by_an_agent(app: App, ticket_number: int) -> None:
    with app.db.transaction() as session:
        ticket = queries.ticket_by_number(session, ticket_number)
        assert ticket is not None
        session.add(
            Message(
                ticket_id=ticket.id,
                dedupe_key=f"agent-reply-{ticket.id}",
                direction=Direction.OUTBOUND,
                kind=MessageKind.AGENT_REPLY,
                from_addr="bob@example.com",
                created_at=app.clock(),
            )
        )


def test_a_first_time_sender_is_acknowledged_without_their_text_quoted(
    tmp_path: Path, database_url: str, clock: FrozenClock
) -> None:
    """Anyone can write any From: a quote would carry a stranger's text to that address.

    Quoted only when our MTA found dmarc=pass for the From, or an agent has
    answered the sender before; a pass written by the sender counts for nothing.
    """
    settings = make_settings(
        tmp_path, database_url, agent_mail={"trusted_authserv_ids": ["mx.example.com"]}
    )
    app = App.build(settings, clock=clock)
    cases = [
        ("victim@people.test", None),
        ("ann@friend.test", "relay.evil.test; dmarc=pass header.from=friend.test"),
        ("bo@shop.test", "mx.example.com; dmarc=pass header.from=shop.test"),
    ]
    try:
        for n, (sender, results) in enumerate(cases):
            headers = {"Authentication-Results": results} if results else {}
            raw = make_mail(sender=sender, message_id=f"q{n}@x.test", body=LURE, headers=headers)
            deliver(app, raw)
        acks = {row.recipients[0]: ack_text(ack) for row, ack in outbox(app)}
        assert set(acks) == {sender for sender, _ in cases}  # every one is acknowledged
        assert "mail-verify.example.top" not in acks["victim@people.test"]
        assert "#1" in acks["victim@people.test"]
        assert "mail-verify.example.top" not in acks["ann@friend.test"]
        assert "mail-verify.example.top" in acks["bo@shop.test"]

        # Once an agent has answered the first sender, their next request is quoted.
        answered_by_an_agent(app, 1)
        deliver(app, make_mail(sender="victim@people.test", message_id="q9@x.test", body=LURE))
        assert "mail-verify.example.top" in ack_text(outbox(app)[-1][1])
    finally:
        app.db.dispose()


@pytest.mark.parametrize(("policy", "quoted"), [("always", True), ("never", False)])
def test_quoting_in_acknowledgements_can_be_always_or_never(
    tmp_path: Path, database_url: str, clock: FrozenClock, policy: str, quoted: bool
) -> None:
    settings = make_settings(
        tmp_path,
        database_url,
        acknowledgements={"quote_message": policy},
        agent_mail={"trusted_authserv_ids": ["mx.example.com"]},
    )
    app = App.build(settings, clock=clock)
    try:
        results = "mx.example.com; dmarc=pass header.from=shop.test"
        raw = make_mail(
            sender="bo@shop.test", body=LURE, headers={"Authentication-Results": results}
        )
        deliver(app, raw)
        [(_, ack)] = outbox(app)
        assert ("mail-verify.example.top" in ack_text(ack)) is quoted
    finally:
        app.db.dispose()


def test_mail_to_the_reply_to_of_an_acknowledgement_joins_its_ticket(app: App) -> None:
    """MAIL-RULES §4: the Reply-To leads back to the ticket, even from a client that
    writes a new mail to it (no thread headers, no quote, another subject)."""
    deliver(app, make_mail(message_id="q@customer.test", subject="Printer on fire"))
    [(_, ack)] = outbox(app)
    address = email.utils.parseaddr(ack["Reply-To"])[1]
    assert address.startswith("support+t-1-")

    def new_mail_to(rcpt: str, n: int) -> int:
        raw = make_mail(
            message_id=f"new{n}@customer.test", to=rcpt, subject=f"one more thing {n}", body="Hi\n"
        )
        deliver(app, raw, rcpt=(rcpt,))
        with app.db.transaction() as session:
            message = session.scalars(
                select(Message).where(Message.header_message_id == f"new{n}@customer.test")
            ).one()
            ticket = session.get(Ticket, message.ticket_id)
            assert ticket is not None and ticket.number is not None
            return ticket.number

    assert new_mail_to(address, 1) == 1
    # The signature proves the number: another number under it leads nowhere.
    local, _, domain = address.partition("@")
    forged = local.replace("+t-1-", "+t-2-") + "@" + domain
    assert new_mail_to(forged, 2) == 2
    assert len([r for r, _ in outbox(app) if r.purpose == "ack"]) == 2


def test_acknowledgements_are_also_limited_per_sender_per_day(app: App, clock: FrozenClock) -> None:
    """Two mails an hour never meet the hourly limit (5); the daily one (20) still holds."""
    for n in range(25):
        deliver(app, make_mail(message_id=f"day{n}@customer.test", subject=f"question {n}"))
        clock.advance(minutes=50)
    assert len(outbox(app)) == 20, "per_sender_per_day default is 20"
    assert sum("in the last day" in r for r in skipped_reasons(app)) == 5
    clock.advance(days=1)
    deliver(app, make_mail(message_id="next-day@customer.test", subject="next day"))
    assert len(outbox(app)) == 21


def test_mail_carrying_our_loop_header_is_stored_but_never_answered(app: App) -> None:
    """A responder that drops Auto-Submitted but keeps our headers (it answers with a
    copy of ours) must not get an acknowledgement of its own: that starts a loop."""
    deliver(app, make_mail(message_id="q@customer.test"))
    [(_, ack)] = outbox(app)
    robot = make_mail(
        message_id="robot1@robot.test",
        sender="Robot <robot@robot.test>",
        subject="Your request was received",
        body="We got your mail.\n",
        headers={"X-Maildesk-Loop": ack["X-Maildesk-Loop"]},
    )
    summary = deliver(app, robot, mail_from="robot@robot.test")
    assert summary.as_dict()["created"] == 1, "stored, on a ticket of its own"
    assert len(outbox(app)) == 1, "and not answered"
    with app.db.transaction() as session:
        message = session.scalars(
            select(Message).where(Message.header_message_id == "robot1@robot.test")
        ).one()
        assert message.kind == MessageKind.AUTO and message.auto_kind == "loop"
    assert any("X-Maildesk-Loop" in r for r in skipped_reasons(app))


def _fail_when_an_intake_is_done(app: App, on: bool) -> None:
    """A real database error at the very end of apply, after the ack row was written."""
    with app.db.engine.begin() as conn:
        if conn.dialect.name == "sqlite":
            conn.exec_driver_sql(
                "CREATE TRIGGER fail_done BEFORE UPDATE ON intake WHEN NEW.state = 'done' "
                "BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
                if on
                else "DROP TRIGGER fail_done"
            )
        elif on:
            conn.exec_driver_sql(
                "CREATE FUNCTION fail_done() RETURNS trigger AS $$ BEGIN "
                "RAISE EXCEPTION 'injected failure'; END $$ LANGUAGE plpgsql"
            )
            conn.exec_driver_sql(
                "CREATE TRIGGER fail_done BEFORE UPDATE ON intake FOR EACH ROW "
                "WHEN (NEW.state = 'done') EXECUTE FUNCTION fail_done()"
            )
        else:
            conn.exec_driver_sql("DROP TRIGGER fail_done ON intake")
            conn.exec_driver_sql("DROP FUNCTION fail_done()")


def test_an_acknowledgement_is_queued_in_the_transaction_of_its_ticket(
    app: App, clock: FrozenClock
) -> None:
    """MAIL-RULES §4: queued in the same transaction as the change that caused it. When
    the ticket is not written, neither is its acknowledgement (no mail about a ticket
    that does not exist); processed again, the mail is acknowledged once."""
    _fail_when_an_intake_is_done(app, on=True)
    try:
        deliver(app, make_mail(message_id="tx@customer.test"))
        for _ in range(app.settings.pipeline.max_attempts):
            clock.advance(hours=1)  # past any retry delay
            app.worker().drain()
        with app.db.transaction() as session:
            [intake] = session.scalars(select(Intake)).all()
            assert intake.state is IntakeState.QUARANTINED, intake.state
            assert session.scalars(select(Ticket)).all() == []
            assert session.scalars(select(Message)).all() == []
        assert outbox(app) == []
    finally:
        _fail_when_an_intake_is_done(app, on=False)
    with app.db.transaction() as session:  # `maildesk quarantine retry`
        [intake] = session.scalars(select(Intake)).all()
        intake.state, intake.attempts, intake.not_before = IntakeState.PENDING, 0, None
    assert app.worker().drain().as_dict()["created"] == 1
    assert [row.purpose for row, _ in outbox(app)] == ["ack"]
