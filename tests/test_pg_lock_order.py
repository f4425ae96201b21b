"""Different kinds of work at once on two nodes of one PostgreSQL database.

Each test drives two transactions in two threads, each on its own connection,
with a barrier between their lock acquisitions, so the crossing they are about
happens every run (PostgreSQL's deadlock_timeout is one second: each test
costs about that). What must hold: no work lost or done twice, and a lock
conflict is retried, never counted as the message's fault.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg.errors
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import OperationalError

from maildesk.app import App
from maildesk.db import queries
from maildesk.db.models import (
    Direction,
    Disposition,
    Intake,
    IntakeState,
    Message,
    Outbox,
    OutboxState,
    Suppression,
    Ticket,
)
from maildesk.intake.store import Envelope
from maildesk.outbound.sender import DrainResult, PermanentFailure
from maildesk.outbound.suppression import suppress
from maildesk.pipeline.runner import Worker
from tests.conftest import FrozenClock, make_settings, private_pg_database
from tests.mailfactory import make_mail

BARRIER_SECONDS = 20


@pytest.fixture
def pg_app(tmp_path: Path, clock: FrozenClock) -> Iterator[App]:
    with private_pg_database("maildesk_locks") as url:
        application = App.build(make_settings(tmp_path, url), clock=clock)
        try:
            yield application
        finally:
            application.db.dispose()


def worker(app: App, node: str) -> Worker:
    return Worker(
        app.db, app.settings, app.signer, app.clock, node, notices=app.notices(), router=app.router
    )


def store(app: App, raw: bytes, sender: str) -> None:
    app.intake().store(
        raw, Envelope(source="smtp", mail_from=sender, rcpt_to=("support@example.com",))
    )


def run_both(*jobs: Callable[[], Any]) -> list[Any]:
    """Run ``jobs`` in threads at once; their results, or the first error raised."""
    results: list[Any] = [None] * len(jobs)
    errors: list[BaseException] = []

    def run(n: int, job: Callable[[], Any]) -> None:
        try:
            results[n] = job()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n, job)) for n, job in enumerate(jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads), "a transaction hung"
    if errors:
        raise errors[0]
    return results


class PauseAfterFirstLock:
    """Wraps :func:`queries.locked_ticket`: each thread named in ``parties`` meets the
    others at a barrier after the first ticket it locks (once), then goes on."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, parties: int) -> None:
        self.barrier = threading.Barrier(parties, timeout=BARRIER_SECONDS)
        self.waited: set[int] = set()
        self.original = queries.locked_ticket
        monkeypatch.setattr(queries, "locked_ticket", self)

    def __call__(self, session: Any, ticket_id: int) -> Ticket:
        ticket = self.original(session, ticket_id)
        me = threading.get_ident()
        if me not in self.waited:
            self.waited.add(me)
            self.barrier.wait()
        return ticket


# -- two pipeline batches crossing on two tickets --------------------------------------


def _two_tickets(app: App) -> None:
    """Tickets A and B, each with two stored messages (four ids to reply to)."""
    for name in ("a", "b"):
        sender = f"{name}@customer.test"
        store(
            app, make_mail(sender=sender, subject=f"case {name}", message_id=f"{name}1@c"), sender
        )
        store(
            app,
            make_mail(
                sender=sender,
                subject=f"Re: case {name}",
                message_id=f"{name}2@c",
                in_reply_to=f"{name}1@c",
                references=[f"{name}1@c"],
            ),
            sender,
        )
    _process(app, created=2)


def _process(app: App, *, created: int) -> None:
    """Apply what is stored, on a node of its own; ``created`` tickets come of it."""
    node = worker(app, "setup")
    try:
        assert node.drain().as_dict()["created"] == created
    finally:
        node.close()


def _reply(app: App, n: int, parent: str) -> None:
    """A reply from its own sender naming only ``parent``: no conversation key in common
    with any other reply here, so the advisory locks do not order them."""
    sender = f"r{n}@customer.test"
    raw = make_mail(
        sender=sender,
        subject=f"Re: reply {n}",
        message_id=f"r{n}@c",
        in_reply_to=parent,
        references=[parent],
    )
    store(app, raw, sender)


def test_two_batches_locking_two_tickets_crosswise_both_apply_without_a_retry_delay(
    pg_app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Node 1's batch answers A then B, node 2's B then A: each holds one ticket and
    waits for the other's. PostgreSQL breaks the deadlock by failing one; that
    one's batch must be applied again at once (its work is all rolled back), not
    put back for later with an attempt counted against its mails."""
    _two_tickets(pg_app)
    one, two = worker(pg_app, "node-1"), worker(pg_app, "node-2")
    try:
        _reply(pg_app, 1, "a1@c")
        _reply(pg_app, 2, "b1@c")
        first = one.claim(2)
        _reply(pg_app, 3, "b2@c")
        _reply(pg_app, 4, "a2@c")
        second = two.claim(2)
        assert len(first) == len(second) == 2
        parsed_one, parsed_two = one.parse_pool.submit(first)(), two.parse_pool.submit(second)()
        PauseAfterFirstLock(monkeypatch, 2)
        outcomes = run_both(
            lambda: one.apply_parsed(parsed_one), lambda: two.apply_parsed(parsed_two)
        )
    finally:
        one.close()
        two.close()

    dispositions = [o.disposition for batch in outcomes for o in batch]
    assert dispositions == [Disposition.THREADED] * 4, [o for b in outcomes for o in b]
    with pg_app.db.transaction() as session:
        per_ticket = dict(
            session.execute(
                select(Ticket.subject, func.count(Message.id))
                .join(Message, Message.ticket_id == Ticket.id)
                .where(Message.direction == Direction.INBOUND)
                .group_by(Ticket.subject)
            ).all()
        )
        assert per_ticket == {"case a": 4, "case b": 4}
        replies = session.scalars(select(Intake).where(Intake.header_message_id.like("r%"))).all()
        assert [(i.state, i.attempts) for i in replies] == [(IntakeState.DONE, 1)] * 4


def test_a_mail_that_keeps_losing_lock_conflicts_is_retried_never_quarantined(
    pg_app: App, clock: FrozenClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deadlocks (however many, however unlucky) are not the message's fault: they
    do not use up ``pipeline.max_attempts``, which would quarantine a good mail."""
    store(pg_app, make_mail(message_id="unlucky@c"), "alice@customer.test")
    node = worker(pg_app, "node-1")
    real = node._apply_batch
    crossings = 0

    def crossed(*args: Any, **kwargs: Any) -> Any:
        nonlocal crossings
        crossings += 1
        orig = psycopg.errors.DeadlockDetected("deadlock detected")
        raise OperationalError("SELECT ... FOR NO KEY UPDATE", {}, orig)

    monkeypatch.setattr(node, "_apply_batch", crossed)
    try:
        for _ in range(pg_app.settings.pipeline.max_attempts + 1):
            assert node.drain().as_dict()["pending"] == 1
            clock.advance(seconds=pg_app.settings.pipeline.retry_delay_seconds + 1)
        assert crossings > pg_app.settings.pipeline.max_attempts
        monkeypatch.setattr(node, "_apply_batch", real)
        assert node.drain().as_dict()["created"] == 1
    finally:
        node.close()
    with pg_app.db.transaction() as session:
        [intake] = session.scalars(select(Intake)).all()
        assert intake.disposition is Disposition.CREATED
        assert intake.attempts == 1


# -- the outbox sender recording a refusal while a bounce on the same ticket is applied ---


class DeadMailbox:
    """A relay that says the recipient's mailbox does not exist."""

    def send(self, envelope_from: str, recipients: list[str], raw: bytes) -> None:
        raise PermanentFailure(f"550 5.1.1 <{recipients[0]}>: no such user", dead=recipients)


def _blocked_or(app: App, done: threading.Event) -> None:
    """Wait until another backend of this database waits for a lock, or ``done``."""
    with app.db.engine.connect() as conn:
        for _ in range(BARRIER_SECONDS * 100):
            waiting = conn.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
                )
            ).scalar_one()
            if waiting or done.is_set():
                return
            conn.rollback()
            done.wait(0.01)
    raise AssertionError("the other transaction neither waited nor finished")


def test_the_sender_recording_a_dead_mailbox_while_a_bounce_for_it_is_applied(
    pg_app: App, clock: FrozenClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The pipeline holds the ticket (threading locked it) and suppresses the bounced
    address; the sender, told by our relay that the same address is dead, has put
    it on the suppression list and writes the ``outbound_failed`` event on the
    ticket. The event's foreign key must not wait for the ticket's lock: the
    bounce's suppression waits for the sender's, and the two would deadlock (a
    sender that fails there leaves the row claimed, to be sent again)."""
    store(pg_app, make_mail(message_id="first@c"), "alice@customer.test")
    _process(pg_app, created=1)
    with pg_app.db.transaction() as session:
        ticket_id = session.scalars(select(Ticket.id)).one()
    sender = pg_app.sender("node-2")
    sender.transport = DeadMailbox()
    ticket_locked, sender_done = threading.Event(), threading.Event()

    def bounce() -> None:
        with pg_app.db.transaction() as session:
            queries.locked_ticket(session, ticket_id)  # as decide_thread does
            ticket_locked.set()
            _blocked_or(pg_app, sender_done)
            now = clock()
            suppress(session, "alice@customer.test", now, "bounced (test)", now)

    def send() -> DrainResult:
        ticket_locked.wait(BARRIER_SECONDS)
        try:
            return sender.drain()
        finally:
            sender_done.set()

    caplog.set_level(logging.INFO, "maildesk")
    _, result = run_both(bounce, send)
    assert result.failed == 1
    assert "lock conflict" not in caplog.text  # no deadlock to retry: none at all
    with pg_app.db.transaction() as session:
        [row] = session.scalars(select(Outbox)).all()
        assert (row.state, row.claimed_by) == (OutboxState.FAILED, None)
        assert session.scalars(select(Suppression.address)).all() == ["alice@customer.test"]


def test_the_sender_losing_a_deadlock_after_delivery_records_it_and_does_not_send_again(
    pg_app: App, clock: FrozenClock
) -> None:
    """Whatever crosses the transaction that records a delivery, losing it must not
    leave the row claimed: it would be delivered again once the claim expired.
    Here the other side holds a suppression row the sender's refusal extends and
    then wants the outbox row; it waits longer before it looks for deadlocks, so
    PostgreSQL picks the sender to fail, every run."""
    store(pg_app, make_mail(message_id="first@c"), "alice@customer.test")
    _process(pg_app, created=1)
    with pg_app.db.transaction() as session:
        now = clock()
        suppress(session, "zed@customer.test", now, "bounced long ago (test)", now)
        [row] = session.scalars(select(Outbox)).all()
        row.recipients = ["alice@customer.test", "zed@customer.test"]
        outbox_id = row.id
    sender = pg_app.sender("node-2")
    sender.transport = DeadMailbox()
    sender._suppressed = lambda recipients: set()  # type: ignore[method-assign]
    held, sender_done = threading.Event(), threading.Event()
    delivered: list[list[str]] = []
    dead = DeadMailbox()

    def send_once(envelope_from: str, recipients: list[str], raw: bytes) -> None:
        delivered.append(recipients)
        dead.send(envelope_from, recipients, raw)

    sender.transport.send = send_once  # type: ignore[method-assign]

    def other() -> None:
        with pg_app.db.engine.connect() as conn:
            conn.execute(text("SET deadlock_timeout = '10s'"))
            conn.execute(
                text("UPDATE suppressions SET reason = 'held' WHERE address = 'zed@customer.test'")
            )
            held.set()
            _blocked_or(pg_app, sender_done)
            conn.execute(
                text("UPDATE outbox SET last_error = 'seen' WHERE id = :id"), {"id": outbox_id}
            )
            conn.commit()

    def send() -> DrainResult:
        held.wait(BARRIER_SECONDS)
        try:
            return sender.drain()
        finally:
            sender_done.set()

    _, result = run_both(other, send)
    assert result.failed == 1 and len(delivered) == 1
    with pg_app.db.transaction() as session:
        row = session.get_one(Outbox, outbox_id)
        assert (row.state, row.claimed_by, row.attempts) == (OutboxState.FAILED, None, 1)
    clock.advance(seconds=3600)
    assert sender.drain() == DrainResult() and len(delivered) == 1


# -- a learner losing a lock conflict while it publishes -------------------------------


def test_a_learner_that_loses_a_lock_conflict_learns_each_lesson_once(
    pg_app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Marking lessons learned can cross a pipeline transaction correcting the same
    feedback rows (an agent's #ham beside the learner). The model copy was saved
    with the lessons before publishing: if it stays, the lessons (still pending)
    are learned into it a second time."""
    from maildesk.spam import feedback
    from maildesk.spam.model import SpamFilter
    from maildesk.spam.scoring import SEED_MODEL, ScorerSpec

    store(pg_app, make_mail(message_id="junk@c", subject="Cheap pills"), "x@spam.test")
    with pg_app.db.transaction() as session:
        intake_id = session.scalars(select(Intake.id)).one()
        feedback.record_feedback(
            session, intake_id=intake_id, label="spam", source="cli", actor="ops"
        )
    spec = ScorerSpec(pg_app.settings.data_dir / "spam-model.npz", SEED_MODEL)
    real, lost = feedback._mark_learned, list[bool]()

    def crossed(session: Any, lessons: Any, now: Any) -> None:
        if not lost:
            lost.append(True)
            orig = psycopg.errors.DeadlockDetected("deadlock detected")
            raise OperationalError("UPDATE spam_feedback ...", {}, orig)
        real(session, lessons, now)

    monkeypatch.setattr(feedback, "_mark_learned", crossed)
    # Before the fix the error went out to the scheduler, to be learned next time.
    with contextlib.suppress(OperationalError):
        feedback.learn_pending(pg_app.db, spec, pg_app.clock, "node-1")
    feedback.learn_pending(pg_app.db, spec, pg_app.clock, "node-1")
    seed = SpamFilter.load(SEED_MODEL)
    assert SpamFilter.load(spec.live_path).trained_spam == seed.trained_spam + 1
