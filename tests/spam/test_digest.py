"""Held spam: one digest a day to ops instead of any per-message mail; expiry after retention."""

from __future__ import annotations

import email
import threading
from collections.abc import Iterator
from email.policy import default as default_policy
from pathlib import Path

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.orm import ORMExecuteState, Session

from maildesk.app import App
from maildesk.db.models import Blob, Event, Intake, Outbox, Ticket
from maildesk.outbound.sender import MaildirTransport, OutboxSender
from maildesk.spam.jobs import expire, send_digest
from maildesk.spam.quarantine import queue_digest
from tests.conftest import FrozenClock, _empty_all_tables, command_beside, make_settings
from tests.mailfactory import deliver, make_mail

EVERYTHING_IS_SPAM = {"unsure_at": 0.0, "spam_at": 0.0}


@pytest.fixture
def spam_app(tmp_path: Path, database_url: str, clock: FrozenClock) -> Iterator[App]:
    spam = {**EVERYTHING_IS_SPAM, "digest_to": "postmaster@example.com", "digest_at": "07:00"}
    app = App.build(make_settings(tmp_path, database_url, spam=spam), clock=clock)
    yield app
    app.db.dispose()


def outbox(app: App) -> list[Outbox]:
    with app.db.transaction() as session:
        return list(session.scalars(select(Outbox)))


def test_the_daily_digest_lists_the_days_spam_once_and_goes_only_to_ops(
    spam_app: App, clock: FrozenClock, tmp_path: Path
) -> None:
    # 09:00: two spam messages held; neither makes any mail.
    deliver(spam_app, make_mail(subject="Cheap watches", sender="Spammer <x@spam.test>"))
    deliver(spam_app, make_mail(subject="=?utf-8?q?Gl=C3=BCck=0ABcc:_victim@example.org?="))
    assert outbox(spam_app) == []
    assert not send_digest(spam_app)  # 07:00 today covers yesterday: nothing held then

    clock.advance(days=1)  # the next morning, after 07:00
    assert send_digest(spam_app)
    assert not send_digest(spam_app)  # a day gets one digest (restarts, other nodes)
    [row] = outbox(spam_app)
    assert row.purpose == "spam_digest" and row.recipients == ["postmaster@example.com"]
    assert row.ticket_id is None

    maildir = tmp_path / "sent"
    OutboxSender(
        spam_app.db, MaildirTransport(maildir), spam_app.settings.outbound, clock, "n"
    ).drain()
    [sent_file] = [p for p in maildir.rglob("*") if p.is_file()]
    sent = email.message_from_bytes(sent_file.read_bytes(), policy=default_policy)
    assert sent["To"] == "postmaster@example.com"
    assert sent["Bcc"] is None  # a hostile subject stays inside the body
    assert sent["Auto-Submitted"] == "auto-generated"
    assert "2 messages" in sent["Subject"]
    body = sent.get_content()
    assert "Cheap watches" in body and "x@spam.test" in body
    assert "Glück Bcc: victim@example.org" in body  # decoded, folded to one line
    assert "quarantine release" in body

    clock.advance(days=1)  # a day without spam: no digest at all
    assert not send_digest(spam_app)
    assert len(outbox(spam_app)) == 1


def test_no_digest_without_a_configured_address(
    tmp_path: Path, database_url: str, clock: FrozenClock
) -> None:
    app = App.build(make_settings(tmp_path, database_url, spam=EVERYTHING_IS_SPAM), clock=clock)
    try:
        deliver(app, make_mail(subject="Cheap watches"))
        clock.advance(days=1)
        assert not send_digest(app)
        assert outbox(app) == []
    finally:
        app.db.dispose()


def test_spam_held_past_retention_is_deleted_with_its_bytes(
    spam_app: App, clock: FrozenClock
) -> None:
    old = make_mail(subject="Old spam")
    deliver(spam_app, old)
    deliver(spam_app, old, mail_from="retry@spam.test")  # an MTA retry: a duplicate copy
    clock.advance(days=25)
    deliver(spam_app, make_mail(subject="Recent spam"))
    clock.advance(days=6)  # the first is 31 days old, the second 6 (retention 30)
    assert expire(spam_app) == 1
    assert expire(spam_app) == 0
    with spam_app.db.transaction() as session:
        [kept] = session.scalars(select(Intake)).all()
        assert (kept.quarantine_reason or "").startswith("spam:")
        assert session.scalar(select(func.count()).select_from(Blob)) == 1
        # The deleted entries' own events went with them; one note says what was deleted.
        assert set(
            session.scalars(select(Event.intake_id).where(Event.intake_id.is_not(None)))
        ) == {kept.id}
        [note] = session.scalars(select(Event).where(Event.kind == "spam_expired")).all()
        assert "30 days" in note.reason


def test_a_release_that_meets_the_expiry_is_told_it_came_too_late(
    tmp_path: Path, pg_url: str, clock: FrozenClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ops release a false positive just as the hourly expiry (another node) deletes it.

    Unlocked, the release could land between the expiry's read and its delete:
    the command said "released", and the mail was deleted all the same. The
    expiry locks what it reads, so the release waits for it and then says the
    message is gone. (PostgreSQL only: SQLite has one writer at a time.)
    """
    _empty_all_tables(pg_url)
    spam = {**EVERYTHING_IS_SPAM, "digest_to": "postmaster@example.com"}
    spam_app = App.build(make_settings(tmp_path, pg_url, spam=spam), clock=clock)
    deliver(spam_app, make_mail(subject="Invoice question", message_id="fp@customer.test"))
    clock.advance(days=31)  # past the 30 days of retention
    with spam_app.db.transaction() as session:
        held = session.scalars(select(Intake.id)).one()

    release, releases = command_beside(
        spam_app, tmp_path, clock, monkeypatch, ["quarantine", "release", str(held)]
    )

    def between_read_and_delete(state: ORMExecuteState) -> None:
        if state.is_delete and not release.is_alive() and not releases:
            release.start()
            release.join(timeout=2)  # done at once when nothing holds it back

    event.listen(Session, "do_orm_execute", between_read_and_delete)
    try:
        assert expire(spam_app) == 1
    finally:
        event.remove(Session, "do_orm_execute", between_read_and_delete)
    release.join(timeout=30)

    [result] = releases
    assert result.exit_code == 1
    assert f"no quarantined message with id {held}" in result.output
    with spam_app.db.transaction() as session:
        assert session.get(Intake, held) is None
        assert session.scalar(select(func.count()).select_from(Ticket)) == 0
    spam_app.db.dispose()


def test_two_nodes_queueing_the_same_days_digest_at_once_queue_one_quietly(
    tmp_path: Path, pg_url: str, clock: FrozenClock
) -> None:
    """Both find no digest queued yet; the second insert waits for the first and
    then meets its unique Message-ID. It used to fail the job with a traceback in
    the log; now the second node leaves it to the first. (PostgreSQL: on SQLite
    one writer at a time cannot interleave.)"""
    _empty_all_tables(pg_url)
    spam = {**EVERYTHING_IS_SPAM, "digest_to": "postmaster@example.com", "digest_at": "07:00"}
    node_a = App.build(make_settings(tmp_path / "a", pg_url, spam=spam), clock=clock)
    node_b = App.build(make_settings(tmp_path / "b", pg_url, spam=spam), clock=clock)
    try:
        deliver(node_a, make_mail(subject="Cheap watches", sender="Spammer <x@spam.test>"))
        clock.advance(days=1)
        results: list[object] = []

        def second_node() -> None:
            try:
                results.append(send_digest(node_b))
            except Exception as exc:  # what the scheduler would log as a failed job
                results.append(exc)

        racing = threading.Thread(target=second_node)
        with node_a.db.transaction() as session:
            assert queue_digest(session, node_a.settings, node_a.signer, node_a.renderer, clock())
            racing.start()  # its insert waits on ours until we commit
            racing.join(timeout=1)
            assert racing.is_alive()
        racing.join(timeout=30)

        assert results == [False]
        assert len(outbox(node_a)) == 1
    finally:
        node_a.db.dispose()
        node_b.db.dispose()
