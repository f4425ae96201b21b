"""MAIL-RULES §1 and §2 end to end through the pipeline, on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import os
from pathlib import Path

from sqlalchemy import func, select

from maildesk.app import App
from maildesk.db import queries
from maildesk.db.models import (
    Direction,
    Event,
    IdOrigin,
    IntakeState,
    KnownMessageId,
    Message,
    Outbox,
    Ticket,
    TicketLink,
    TicketStatus,
)
from tests.conftest import FrozenClock
from tests.mailfactory import deliver, make_mail, reply_to


def tickets(app: App) -> list[Ticket]:
    with app.db.transaction() as session:
        return list(session.scalars(select(Ticket).order_by(Ticket.id)))


def ticket_of(app: App, message_id: str) -> int:
    with app.db.transaction() as session:
        row = session.scalars(select(Message).where(Message.header_message_id == message_id)).one()
        ticket = session.get(Ticket, row.ticket_id)
        assert ticket is not None and ticket.number is not None
        return ticket.number


def thread_event(app: App, message_id: str) -> Event:
    with app.db.transaction() as session:
        intake = queries.intakes_for_message_id(session, message_id)[-1]
        events = queries.events_for_intake(session, intake.id)
        return next(e for e in events if e.kind in ("created", "threaded"))


def ack_count(app: App) -> int:
    """How many acknowledgements were queued, to anyone."""
    with app.db.transaction() as session:
        return len(session.scalars(select(Outbox.id).where(Outbox.purpose == "ack")).all())


def set_status(app: App, number: int, status: TicketStatus, clock: FrozenClock) -> None:
    with app.db.transaction() as session:
        ticket = queries.ticket_by_number(session, number)
        assert ticket is not None
        ticket.status = status
        if status is TicketStatus.RESOLVED:
            ticket.resolved_at = clock()


def test_new_mail_creates_one_ticket_with_requester(app: App) -> None:
    summary = deliver(app, make_mail(message_id="first@customer.test"))
    assert summary.as_dict()["created"] == 1
    [ticket] = tickets(app)
    assert ticket.subject == "Printer on fire"
    assert ticket.status is TicketStatus.NEW
    assert thread_event(app, "first@customer.test").data["rule"] == "new_ticket"


def test_redelivery_is_a_duplicate_and_adds_nothing(app: App) -> None:
    raw = make_mail(message_id="again@customer.test")
    deliver(app, raw)
    summary = deliver(app, raw)
    assert summary.as_dict()["duplicates"] == 1
    assert len(tickets(app)) == 1
    with app.db.transaction() as session:
        assert (
            session.scalar(
                select(func.count(Message.id)).where(Message.direction == Direction.INBOUND)
            )
            == 1
        )


def test_one_mail_to_two_support_addresses_makes_one_ticket(app: App) -> None:
    raw = make_mail(message_id="both@customer.test", to="support@example.com, billing@example.com")
    # Two separate deliveries, as two aliases would produce: different trace headers.
    deliver(app, b"Received: from mx1\r\n" + raw, rcpt=("support@example.com",))
    summary = deliver(app, b"Received: from mx2\r\n" + raw, rcpt=("billing@example.com",))
    assert summary.as_dict()["duplicates"] == 1
    [ticket] = tickets(app)
    assert ticket.support_addresses == ["support@example.com", "billing@example.com"]


def test_reply_with_in_reply_to_threads_even_with_a_new_subject(app: App) -> None:
    first = make_mail(message_id="q1@customer.test")
    deliver(app, first)
    deliver(app, reply_to(first, message_id="q2@customer.test", subject="totally different"))
    assert ticket_of(app, "q2@customer.test") == ticket_of(app, "q1@customer.test")
    assert thread_event(app, "q2@customer.test").data["rule"] == "references"
    assert len(tickets(app)) == 1


def test_sibling_replies_to_an_unseen_parent_share_a_ticket(app: App) -> None:
    deliver(app, make_mail(message_id="s1@x.test", references=["root@elsewhere.test"], subject="a"))
    deliver(
        app,
        make_mail(
            message_id="s2@x.test",
            references=["root@elsewhere.test"],
            subject="b",
            sender="bob@x.test",
        ),
    )
    assert ticket_of(app, "s1@x.test") == ticket_of(app, "s2@x.test")


def test_parent_arriving_after_its_reply_joins_the_reply_ticket(app: App) -> None:
    deliver(app, make_mail(message_id="child@x.test", in_reply_to="parent@x.test", subject="Re: a"))
    with app.db.transaction() as session:
        origin = session.scalar(
            select(KnownMessageId.origin).where(KnownMessageId.message_id == "parent@x.test")
        )
    assert origin is IdOrigin.REFERENCED  # only named by the reply so far
    deliver(app, make_mail(message_id="parent@x.test", subject="a", sender="bob@x.test"))
    assert ticket_of(app, "parent@x.test") == ticket_of(app, "child@x.test")
    with app.db.transaction() as session:
        origin = session.scalar(
            select(KnownMessageId.origin).where(KnownMessageId.message_id == "parent@x.test")
        )
    assert origin is IdOrigin.INBOUND  # now a message we hold


def test_early_reply_ticket_is_merged_when_its_parent_joins_another_thread(app: App) -> None:
    # grandparent, then a reply to the parent that arrives before the parent itself
    deliver(app, make_mail(message_id="gp@x.test", subject="topic", to="list@lists.test"))
    deliver(
        app,
        make_mail(
            message_id="c@x.test",
            in_reply_to="p@x.test",
            references=["p@x.test"],
            subject="Re: topic",
            sender="bob@x.test",
            to="list@lists.test",
        ),
    )
    assert ticket_of(app, "c@x.test") != ticket_of(app, "gp@x.test")
    deliver(
        app,
        make_mail(
            message_id="p@x.test",
            references=["gp@x.test"],
            subject="Re: topic",
            sender="carol@x.test",
            to="list@lists.test",
        ),
    )
    survivor = ticket_of(app, "gp@x.test")
    assert ticket_of(app, "p@x.test") == survivor
    assert ticket_of(app, "c@x.test") == survivor
    with app.db.transaction() as session:
        merged = [t for t in session.scalars(select(Ticket)) if t.merged_into_id is not None]
        assert len(merged) == 1 and merged[0].status is TicketStatus.CLOSED


def test_forged_parent_sharing_no_people_does_not_merge(app: App) -> None:
    deliver(
        app,
        make_mail(
            message_id="mine@victim.test",
            subject="private",
            sender="victim@v.test",
            to="support@example.com",
        ),
    )
    deliver(
        app,
        make_mail(
            message_id="vc@victim.test",
            in_reply_to="unseen@victim.test",
            subject="Re: secret",
            sender="victim2@v.test",
            to="victim@v.test",
        ),
    )
    deliver(
        app,
        make_mail(
            message_id="unseen@victim.test",
            references=["mine@victim.test"],
            subject="whatever",
            sender="mallory@evil.test",
            to="support@example.com",
        ),
    )
    assert ticket_of(app, "vc@victim.test") != ticket_of(app, "unseen@victim.test")


def test_signed_outbound_message_id_threads_without_a_database_row(app: App) -> None:
    deliver(app, make_mail(message_id="orig@customer.test"))
    number = ticket_of(app, "orig@customer.test")
    ours = app.signer.outbound_message_id(number, "example.com", nonce="abc123")
    deliver(app, make_mail(message_id="r@customer.test", in_reply_to=ours, subject="hmm"))
    assert ticket_of(app, "r@customer.test") == number
    assert thread_event(app, "r@customer.test").data["rule"] == "signed_reference"


def test_forged_outbound_message_id_does_not_thread(app: App) -> None:
    deliver(app, make_mail(message_id="orig@customer.test"))
    number = ticket_of(app, "orig@customer.test")
    forged = app.signer.outbound_message_id(number, "example.com", nonce="abc123").replace(
        f".{number}.", f".{number + 1000}.", 1
    )
    deliver(app, make_mail(message_id="f@customer.test", in_reply_to=forged, subject="other"))
    assert ticket_of(app, "f@customer.test") != number


def test_body_marker_threads_when_headers_were_rewritten(app: App) -> None:
    deliver(app, make_mail(message_id="orig@customer.test"))
    number = ticket_of(app, "orig@customer.test")
    body = f"Thanks!\n\n> earlier text\n> {app.signer.body_marker(number)}\n"
    deliver(app, make_mail(message_id="m@customer.test", subject="no tag", body=body))
    assert ticket_of(app, "m@customer.test") == number
    assert thread_event(app, "m@customer.test").data["rule"] == "body_marker"


def test_subject_tag_from_participant_threads(app: App) -> None:
    deliver(app, make_mail(message_id="orig@customer.test", cc="carol@customer.test"))
    number = ticket_of(app, "orig@customer.test")
    deliver(
        app,
        make_mail(
            message_id="c@customer.test",
            sender="carol@customer.test",
            subject=f"[Support #{number}] still broken",
        ),
    )
    assert ticket_of(app, "c@customer.test") == number
    assert thread_event(app, "c@customer.test").data["rule"] == "subject_tag"


def test_stranger_quoting_a_ticket_number_gets_a_new_linked_ticket(app: App) -> None:
    deliver(app, make_mail(message_id="orig@customer.test"))
    number = ticket_of(app, "orig@customer.test")
    deliver(
        app,
        make_mail(
            message_id="evil@attacker.test",
            sender="mallory@attacker.test",
            subject=f"Re: [Support #{number}] please close",
        ),
    )
    other = ticket_of(app, "evil@attacker.test")
    assert other != number
    with app.db.transaction() as session:
        link = session.scalars(select(TicketLink)).one()
        assert (link.kind, link.other_ticket_id) == ("quoted_by_stranger", number)
    assert "not a participant" in thread_event(app, "evil@attacker.test").reason


def test_outlook_reply_with_only_thread_index_threads(app: App) -> None:
    root = base64.b64encode(os.urandom(22)).decode()
    child = base64.b64encode(base64.b64decode(root) + os.urandom(5)).decode()
    deliver(app, make_mail(message_id="o1@corp.test", headers={"Thread-Index": root}))
    deliver(
        app,
        make_mail(
            message_id="o2@corp.test",
            subject="AW: something else",
            sender="dave@corp.test",
            headers={"Thread-Index": child},
        ),
    )
    assert ticket_of(app, "o2@corp.test") == ticket_of(app, "o1@corp.test")
    assert thread_event(app, "o2@corp.test").data["rule"] == "thread_index"


def test_same_sender_same_subject_within_window(app: App, clock: FrozenClock) -> None:
    deliver(app, make_mail(message_id="w1@customer.test", subject="VPN down"))
    clock.advance(days=2)
    deliver(app, make_mail(message_id="w2@customer.test", subject="AW: Re: VPN   down"))
    assert ticket_of(app, "w2@customer.test") == ticket_of(app, "w1@customer.test")
    assert thread_event(app, "w2@customer.test").data["rule"] == "sender_subject"
    # another sender with the same subject is not threaded by subject
    deliver(
        app, make_mail(message_id="w3@other.test", sender="zed@other.test", subject="Re: VPN down")
    )
    assert ticket_of(app, "w3@other.test") != ticket_of(app, "w1@customer.test")


def test_same_subject_outside_window_is_a_new_ticket(app: App, clock: FrozenClock) -> None:
    deliver(app, make_mail(message_id="w1@customer.test", subject="VPN down"))
    clock.advance(days=30)
    deliver(app, make_mail(message_id="w2@customer.test", subject="Re: VPN down"))
    assert ticket_of(app, "w2@customer.test") != ticket_of(app, "w1@customer.test")


def test_reply_to_resolved_ticket_inside_window_reopens(app: App, clock: FrozenClock) -> None:
    first = make_mail(message_id="r1@customer.test")
    deliver(app, first)
    number = ticket_of(app, "r1@customer.test")
    set_status(app, number, TicketStatus.RESOLVED, clock)
    clock.advance(days=3)
    deliver(app, reply_to(first, message_id="r2@customer.test"))
    assert ticket_of(app, "r2@customer.test") == number
    [ticket] = tickets(app)
    assert ticket.status is TicketStatus.OPEN


def test_reply_to_resolved_ticket_outside_window_opens_linked_ticket(
    app: App, clock: FrozenClock
) -> None:
    first = make_mail(message_id="r1@customer.test")
    deliver(app, first)
    number = ticket_of(app, "r1@customer.test")
    set_status(app, number, TicketStatus.RESOLVED, clock)
    clock.advance(days=40)
    deliver(app, reply_to(first, message_id="r2@customer.test"))
    new = ticket_of(app, "r2@customer.test")
    assert new != number
    old, follow = tickets(app)
    assert old.status is TicketStatus.RESOLVED
    with app.db.transaction() as session:
        link = session.scalars(select(TicketLink)).one()
        assert (link.ticket_id, link.other_ticket_id, link.kind) == (
            follow.id,
            old.id,
            "follow_up_of",
        )


def test_reply_to_closed_ticket_opens_linked_ticket(app: App, clock: FrozenClock) -> None:
    first = make_mail(message_id="c1@customer.test")
    deliver(app, first)
    number = ticket_of(app, "c1@customer.test")
    set_status(app, number, TicketStatus.CLOSED, clock)
    deliver(app, reply_to(first, message_id="c2@customer.test"))
    assert ticket_of(app, "c2@customer.test") != number


def test_auto_reply_to_resolved_ticket_is_stored_but_does_not_reopen(
    app: App, clock: FrozenClock
) -> None:
    first = make_mail(message_id="a1@customer.test")
    deliver(app, first)
    number = ticket_of(app, "a1@customer.test")
    set_status(app, number, TicketStatus.RESOLVED, clock)
    deliver(
        app,
        reply_to(
            first,
            message_id="a2@customer.test",
            subject="Automatic reply: away",
            headers={"Auto-Submitted": "auto-replied"},
        ),
    )
    assert ticket_of(app, "a2@customer.test") == number
    [ticket] = tickets(app)
    assert ticket.status is TicketStatus.RESOLVED


def test_merged_ticket_forwards_threading(app: App) -> None:
    a = make_mail(message_id="ma@customer.test", subject="one")
    deliver(app, a)
    deliver(app, make_mail(message_id="mb@customer.test", subject="two"))
    with app.db.transaction() as session:
        first, second = session.scalars(select(Ticket).order_by(Ticket.id)).all()
        first.merged_into_id = second.id
        survivor = second.number
    deliver(app, reply_to(a, message_id="mc@customer.test"))
    assert ticket_of(app, "mc@customer.test") == survivor


def test_empty_and_colon_message_ids_neither_crash_nor_collide(app: App) -> None:
    one = make_mail(subject="no id one").replace(b"Message-ID: <", b"X-Old-Id: <", 1)
    two = make_mail(subject="no id two").replace(b"Message-ID: <", b"X-Old-Id: <", 1)
    deliver(app, b"Message-ID: <>\r\n" + one)
    deliver(app, b"Message-ID: <>\r\n" + two)
    # Written raw: the standard library itself truncates such ids at the colon.
    for n, who in (("1234", "a@x.test"), ("5678", "b@x.test")):
        raw = make_mail(message_id=f"colon{n}@host.test", subject=f"colon {n}", sender=who)
        deliver(
            app, raw.replace(f"<colon{n}@host.test>".encode(), f"<Mail2L:{n}@host.test>".encode())
        )
    with app.db.transaction() as session:
        keys = session.scalars(
            select(Message.dedupe_key).where(Message.direction == Direction.INBOUND)
        ).all()
    assert len(keys) == 4 and len(set(keys)) == 4
    assert "Mail2L:1234@host.test" in keys and "Mail2L:5678@host.test" in keys


def test_same_message_id_with_different_content_is_kept_apart(app: App) -> None:
    deliver(app, make_mail(message_id="same@x.test", body="first text\n"))
    summary = deliver(app, make_mail(message_id="same@x.test", body="second, different text\n"))
    assert summary.as_dict()["duplicates"] == 0
    with app.db.transaction() as session:
        assert (
            session.scalar(
                select(func.count(Message.id)).where(Message.direction == Direction.INBOUND)
            )
            == 2
        )


def test_unmatched_bounce_is_filed_closed_and_marked_auto(app: App) -> None:
    bounce = make_mail(
        sender="MAILER-DAEMON@mx.test",
        subject="Undelivered Mail Returned to Sender",
        message_id="b1@mx.test",
        body="could not deliver\n",
    )
    summary = deliver(app, bounce, mail_from="")
    assert summary.as_dict()["auto_replies"] == 1
    [ticket] = tickets(app)
    assert ticket.status is TicketStatus.CLOSED
    with app.db.transaction() as session:
        message = session.scalars(
            select(Message).where(Message.direction == Direction.INBOUND)
        ).one()
        assert message.kind == "auto" and message.auto_kind == "bounce"


def test_oversized_message_is_quarantined_with_reason(tmp_path, database_url, clock) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import make_settings

    settings = make_settings(tmp_path, database_url, pipeline={"max_message_bytes": 2000})
    app = App.build(settings, clock=clock)
    summary = deliver(app, make_mail(body="x" * 5000 + "\n"))
    assert summary.as_dict()["quarantined"] == 1
    with app.db.transaction() as session:
        from maildesk.db.models import Intake

        row = session.scalars(select(Intake)).one()
        assert row.state is IntakeState.QUARANTINED
        assert "exceeds max_message_bytes" in (row.quarantine_reason or "")
    app.db.dispose()


def test_header_only_imap_copy_of_a_huge_message_is_quarantined(app: App) -> None:
    note = (
        b"X-Maildesk-Truncated: original size 90000000 bytes exceeds max_message_bytes=50000000\r\n"
    )
    headers_only = note + make_mail(message_id="huge@x.test").split(b"\n\n")[0] + b"\n\n"
    assert deliver(app, headers_only, source="imap").as_dict()["quarantined"] == 1
    # The same note from a sender (not first, or not from IMAP) is just a header.
    forged = make_mail(message_id="forged@x.test", headers={"X-Maildesk-Truncated": "lies"})
    assert deliver(app, forged, source="imap").as_dict()["quarantined"] == 0
    from_smtp = deliver(app, note + make_mail(message_id="smtp@x.test"), source="smtp")
    assert from_smtp.as_dict()["quarantined"] == 0


def test_a_redelivered_copy_of_quarantined_bytes_is_a_duplicate(
    tmp_path: Path, database_url: str, clock: FrozenClock
) -> None:
    """Quarantine is decided once per message: a second copy (an MTA retry, the same
    import run again after a parse timeout) neither gets a second chance nor a ticket."""
    from maildesk.intake.store import Envelope
    from tests.conftest import make_settings

    big = make_mail(message_id="big@x.test", body="x" * 5000 + "\n")
    strict = App.build(
        make_settings(tmp_path, database_url, pipeline={"max_message_bytes": 2000}), clock=clock
    )
    # Two copies in one batch: the first is quarantined, the second is its duplicate.
    for _ in range(2):
        strict.intake().store(big, Envelope(source="smtp", rcpt_to=("support@example.com",)))
    assert strict.worker().drain().as_dict()["quarantined"] == 1
    strict.db.dispose()
    # Later, with a limit the message fits: a third copy is still not a new ticket.
    lenient = App.build(make_settings(tmp_path, database_url), clock=clock)
    summary = deliver(lenient, big).as_dict()
    assert summary["created"] == 0 and summary["duplicates"] == 1, summary
    with lenient.db.transaction() as session:
        from maildesk.db.models import Event, Intake

        rows = session.scalars(select(Intake).order_by(Intake.id)).all()
        assert [r.disposition for r in rows] == ["quarantined", "duplicate", "duplicate"]
        reasons = session.scalars(select(Event.reason).where(Event.kind == "duplicate")).all()
        assert all(f"in quarantine as intake {rows[0].id}" in r for r in reasons), reasons
        assert session.scalars(select(Ticket)).all() == []
    lenient.db.dispose()


def test_the_first_rule_that_matches_decides_when_several_name_different_tickets(
    app: App,
) -> None:
    """MAIL-RULES §2: one ordered decision. Alice has two open tickets; each mail below
    carries evidence for both, and must land on the one its earliest rule names (else
    the answers to it go to the other conversation)."""
    root = base64.b64encode(os.urandom(22)).decode()
    printer = make_mail(
        message_id="printer@customer.test",
        subject="Printer on fire",
        headers={"Thread-Index": root},
    )
    deliver(app, printer)
    deliver(app, make_mail(message_id="vpn@customer.test", subject="VPN down"))
    one, two = ticket_of(app, "printer@customer.test"), ticket_of(app, "vpn@customer.test")
    assert one != two
    marker_two = f"Thanks.\n\n> {app.signer.body_marker(two)}\n"

    # 2 (References) before 3 (body marker), 4 (subject tag) and 6 (sender + subject).
    deliver(
        app,
        reply_to(
            printer,
            message_id="r-refs@customer.test",
            subject=f"Re: [Support #{two}] VPN down",
            body=marker_two,
        ),
    )
    # 3 (body marker) before 4 (subject tag) and 6 (sender + subject).
    deliver(
        app,
        make_mail(
            message_id="r-marker@customer.test",
            subject=f"Re: [Support #{one}] Printer on fire",
            body=marker_two,
        ),
    )
    # 4 (subject tag) before 5 (Thread-Index) and 6: the tag names ticket two, the
    # Outlook conversation and the bare subject are ticket one's.
    child = base64.b64encode(base64.b64decode(root) + os.urandom(5)).decode()
    deliver(
        app,
        make_mail(
            message_id="r-tag@customer.test",
            subject=f"AW: [Support #{two}] Printer on fire",
            headers={"Thread-Index": child},
        ),
    )
    # 5 (Thread-Index) before 6 (same sender, same subject as ticket two).
    deliver(
        app,
        make_mail(
            message_id="r-index@customer.test",
            subject="Re: VPN down",
            headers={"Thread-Index": child},
        ),
    )
    expected = {
        "r-refs@customer.test": (one, "references"),
        "r-marker@customer.test": (two, "body_marker"),
        "r-tag@customer.test": (two, "subject_tag"),
        "r-index@customer.test": (one, "thread_index"),
    }
    found = {mid: (ticket_of(app, mid), thread_event(app, mid).data["rule"]) for mid in expected}
    assert found == expected
    assert len(tickets(app)) == 2


def test_a_mail_without_message_id_delivered_twice_is_one_ticket_and_one_ack(app: App) -> None:
    """MAIL-RULES §1: a message without Message-ID gets a synthetic one from its hash,
    so its second delivery (another MX, an MTA retry) is the same message."""
    raw = b"\n".join(
        line
        for line in make_mail(subject="No id here", body="Where is my parcel?\n").split(b"\n")
        if not line.startswith(b"Message-ID:")
    )
    assert b"Message-ID" not in raw
    first = deliver(app, b"Received: from mx1.example.com\r\n" + raw)
    again = deliver(app, b"Received: from mx2.example.com\r\n" + raw)
    assert (first.as_dict()["created"], again.as_dict()["duplicates"]) == (1, 1)
    [ticket] = tickets(app)
    with app.db.transaction() as session:
        inbound = session.scalars(
            select(Message).where(Message.direction == Direction.INBOUND)
        ).all()
        assert [m.ticket_id for m in inbound] == [ticket.id]
        assert inbound[0].header_message_id is None
        assert inbound[0].dedupe_key.endswith("@synthetic.maildesk.invalid")
        acks = session.scalars(select(Message).where(Message.direction == Direction.OUTBOUND)).all()
        assert len(acks) == 1, "acknowledged once"


def test_a_configured_ticket_tag_is_the_one_written_and_read(
    tmp_path: Path, database_url: str, clock: FrozenClock
) -> None:
    """MAIL-RULES §2 rule 4: the tag is configurable, like RT's rtname; two installations
    with different tags must not read each other's numbers."""
    from tests.conftest import make_settings

    settings = make_settings(tmp_path, database_url, threading={"ticket_tag": "ACME-IT"})
    app = App.build(settings, clock=clock)
    try:
        deliver(app, make_mail(message_id="orig@customer.test", cc="carol@customer.test"))
        with app.db.transaction() as session:
            [ack] = session.scalars(select(Message).where(Message.direction == Direction.OUTBOUND))
            assert (ack.subject or "").startswith("[ACME-IT #1] ")
        for n, tag in enumerate(("ACME-IT", "Support")):
            deliver(
                app,
                make_mail(
                    message_id=f"c{n}@customer.test",
                    sender="carol@customer.test",
                    subject=f"[{tag} #1] still broken",
                ),
            )
        assert ticket_of(app, "c0@customer.test") == 1
        assert thread_event(app, "c0@customer.test").data["rule"] == "subject_tag"
        assert ticket_of(app, "c1@customer.test") != 1, "another installation's tag"
    finally:
        app.db.dispose()
