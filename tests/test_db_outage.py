"""A database outage never quarantines good mail, never loses it, never sends twice.

The outages are real: PostgreSQL connections are killed with
``pg_terminate_backend`` and the test database refuses connections for a while
(``ALLOW_CONNECTIONS false``); the SQLite write lock is held by another process
for longer than the busy timeout. Each outage is repeated more often than
``pipeline.max_attempts``: it is nobody's fault, so it must not count as one of
the message's attempts (MAIL-RULES §1). A message that is at fault (a stage
failing on its content, a database error from its data) still ends in quarantine.
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, event, select, text
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.orm import Session

from maildesk.app import App
from maildesk.config import OutboundSettings
from maildesk.db.database import Database, is_transient, is_unavailable
from maildesk.db.models import (
    Disposition,
    Event,
    Intake,
    IntakeState,
    Outbox,
    OutboxState,
    Ticket,
)
from maildesk.db.outage import Outage
from maildesk.intake.store import Envelope, put_blob
from maildesk.outbound.sender import OutboxSender, SmtpTransport
from maildesk.outbound.unrecorded import journal_path
from maildesk.pipeline import runner
from maildesk.pipeline.context import MessageContext, Stop
from maildesk.pipeline.runner import Worker
from maildesk.pipeline.stages import StageDeps
from tests.conftest import PG_ADMIN_URL, FrozenClock, make_settings, private_pg_database
from tests.daemon_harness import DaemonProcess, RelaySink
from tests.mailfactory import make_mail

MAX_ATTEMPTS = 5  # pipeline.max_attempts by default
OUTAGES = MAX_ATTEMPTS + 2


# -- a real PostgreSQL database of our own, and the means to take it away -----------


class PgOutage:
    """Kills the connections to one private database, or makes it refuse new ones."""

    def __init__(self, url: str) -> None:
        self.name = url.rsplit("/", 1)[1]
        self.admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")

    def kill(self) -> int:
        """Terminate every connection to the database (as a server restart would)."""
        with self.admin.connect() as conn:
            return len(
                conn.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = :name AND pid <> pg_backend_pid()"
                    ),
                    {"name": self.name},
                ).all()
            )

    def refuse(self, refused: bool = True) -> None:
        """While refused the database takes no connection (and those it had are killed)."""
        with self.admin.connect() as conn:
            conn.execute(
                text(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS {str(not refused).lower()}')
            )
        if refused:
            self.kill()

    def close(self) -> None:
        self.refuse(False)
        self.admin.dispose()


@pytest.fixture
def pg(tmp_path: Path, clock: FrozenClock) -> Iterator[tuple[App, PgOutage]]:
    with private_pg_database("maildesk_outage") as url:
        application = App.build(make_settings(tmp_path, url), clock=clock)
        outage = PgOutage(url)
        try:
            yield application, outage
        finally:
            outage.close()
            application.db.dispose()


def store(app: App, n: int, subject: str = "") -> None:
    sender = f"c{n}@customer.test"
    raw = make_mail(sender=sender, subject=subject or f"request {n}", message_id=f"m{n}@c")
    app.intake().store(
        raw, Envelope(source="smtp", mail_from=sender, rcpt_to=("support@example.com",))
    )


def intakes(app: App) -> list[Intake]:
    with app.db.transaction() as session:
        return list(session.scalars(select(Intake).order_by(Intake.id)))


def before_apply(worker: Worker, hook: Callable[[], None]) -> None:
    """Run ``hook`` after the batch is claimed and parsed, just before it is applied."""
    apply = worker.apply_parsed

    def hooked(parsed: Any) -> Any:
        hook()
        return apply(parsed)

    worker.apply_parsed = hooked  # type: ignore[method-assign]


def in_apply(worker: Worker, hook: Callable[[], None]) -> None:
    """Run ``hook`` inside the batch's apply transaction, once it has locked its rows."""
    still_claimed = worker._still_claimed

    def hooked(session: Session, batch: list[MessageContext]) -> Any:
        held = still_claimed(session, batch)
        hook()
        return held

    worker._still_claimed = hooked  # type: ignore[method-assign]


def drain_through_outage(worker: Worker) -> BaseException | None:
    """A drain as the daemon runs it: what it raised (it must be a temporary failure)."""
    try:
        worker.drain()
    except Exception as exc:
        assert is_transient(exc), f"an outage must read as temporary, got {exc!r}"
        return exc
    return None


def next_round(clock: FrozenClock, app: App) -> None:
    """Past the retry delay and past the claim timeout: everything due is due again."""
    clock.advance(seconds=app.settings.pipeline.claim_timeout_seconds + 1)


# -- PostgreSQL -------------------------------------------------------------------------


def test_connections_killed_mid_batch_more_often_than_max_attempts_never_quarantine(
    pg: tuple[App, PgOutage], clock: FrozenClock
) -> None:
    app, outage = pg
    store(app, 1)
    worker = app.worker("node-a")
    # Killed between two transactions (idle in the pool) costs nothing: pool_pre_ping.
    between: list[int] = []
    before_apply(worker, lambda: between.append(outage.kill()) if len(between) < 2 else None)
    kills: list[int] = []
    in_apply(worker, lambda: kills.append(outage.kill()) if len(kills) < OUTAGES else None)
    try:
        for _ in range(OUTAGES):
            drain_through_outage(worker)  # the batch's transaction loses its connection
            next_round(clock, app)
        summary = worker.drain()
    finally:
        worker.close()
    (row,) = intakes(app)
    assert row.disposition is Disposition.CREATED, row.quarantine_reason
    assert len(kills) == OUTAGES and all(kills) and all(between)
    assert summary.as_dict()["created"] == 1, summary.as_dict()
    assert row.attempts == 1  # the outages counted for nothing; the one that worked did


def test_mail_stored_before_the_database_went_away_is_processed_after_it(
    pg: tuple[App, PgOutage], clock: FrozenClock
) -> None:
    app, outage = pg
    for n in range(3):
        store(app, n)
    worker = app.worker("node-a")
    # The database goes away once the batch is claimed: the batch can be neither
    # applied nor put back, and the drains after it fail from the start.
    refusals: list[bool] = []

    def refuse_once() -> None:
        if not refusals:
            outage.refuse()
            refusals.append(True)

    before_apply(worker, refuse_once)
    try:
        drain_through_outage(worker)
        assert refusals
        errors = [drain_through_outage(worker) for _ in range(OUTAGES)]
        assert all(errors), "with the database refusing connections, a drain fails"
        assert all(is_unavailable(e) for e in errors if e is not None)
        outage.refuse(False)
        clock.advance(seconds=app.settings.pipeline.retry_delay_seconds + 1)
        summary = worker.drain()
    finally:
        worker.close()
    # At once, not after the claim timeout: this worker put back what it held.
    assert summary.as_dict()["created"] == 3, summary.as_dict()
    rows = intakes(app)
    assert [r.disposition for r in rows] == [Disposition.CREATED] * 3
    assert all(r.state is IntakeState.DONE for r in rows)
    assert all(r.attempts == 1 for r in rows)


def test_the_daemon_outlives_an_outage_and_works_after_it(tmp_path: Path, relay: RelaySink) -> None:
    """A real ``maildesk run`` on PostgreSQL: killed connections and a database refusing
    new ones for longer than the worker's retry delay. It must not exit; mail taken
    after the outage is processed and acknowledged; the outage is logged once."""
    with private_pg_database("maildesk_outage_daemon") as url:
        outage = PgOutage(url)
        # The worker's backoff starts at the retry delay: short, for a short test.
        daemon = DaemonProcess(
            tmp_path, relay_port=relay.port, extra_config="[pipeline]\nretry_delay_seconds = 0.25"
        )
        write = daemon.write_config

        def with_pg() -> None:
            write()
            daemon.config_path.write_text(
                f'database_url = "{url}"\n' + daemon.config_path.read_text()
            )

        daemon.write_config = with_pg  # type: ignore[method-assign]
        daemon.start()
        try:
            send(daemon, 1)
            relay.wait_for(lambda got: len(got) == 1)  # the first acknowledgement
            outage.refuse()
            time.sleep(2)  # several drains of the worker and the sender fail meanwhile
            outage.kill()
            assert daemon.proc is not None and daemon.proc.poll() is None, daemon.log()[-3000:]
            outage.refuse(False)
            send(daemon, 2, deadline=30)  # the listener stores once the database is back
            relay.wait_for(lambda got: len(got) == 2, timeout=20)
            db = Database(url)
            try:
                with db.transaction() as session:
                    kept = list(session.scalars(select(Intake.disposition)))
            finally:
                db.dispose()
            assert kept == [Disposition.CREATED] * 2, kept  # none quarantined, none lost
        finally:
            code = daemon.terminate()
            outage.close()
        log = daemon.log()
        assert code == 0, log[-3000:]
        assert log.count("pipeline: database unavailable") == 1, log[-3000:]
        assert "database available again" in log


def send(daemon: DaemonProcess, n: int, deadline: float = 10) -> None:
    import smtplib

    raw = make_mail(sender=f"c{n}@customer.test", subject=f"hello {n}", message_id=f"d{n}@c")
    end = time.monotonic() + deadline
    while True:
        try:
            with smtplib.SMTP("127.0.0.1", daemon.smtp_port, timeout=10) as client:
                client.sendmail(f"c{n}@customer.test", ["support@example.com"], raw)
            return
        except smtplib.SMTPException:  # 451 while the database is away
            if time.monotonic() > end:
                raise
            time.sleep(0.2)


def outbox_state(app: App) -> OutboxState:
    with app.db.transaction() as session:
        return session.scalars(select(Outbox.state)).one()


def queue_one(app: App, now: datetime) -> None:
    raw = make_mail(sender="support@example.com", to="a@customer.test", message_id="o1@example.com")
    with app.db.transaction() as session:
        session.add(
            Outbox(
                created_at=now,
                purpose="ack",
                message_id="o1@example.com",
                envelope_from="support@example.com",
                recipients=["a@customer.test"],
                recipient_key="a@customer.test",
                raw_sha256=put_blob(session, raw),
                next_attempt_at=now,
            )
        )


def relay_sender(app: App, clock: FrozenClock, relay: RelaySink) -> OutboxSender:
    """node-a's sender, as the daemon builds it: its journal in the data directory."""
    settings = OutboundSettings(transport="smtp", relay_port=relay.port)
    transport = SmtpTransport(settings, password="")
    journal = journal_path(app.settings.data_dir, "node-a")
    return OutboxSender(app.db, transport, settings, clock, "node-a", journal=journal)


def deliver_into_outage(
    sender: OutboxSender, outage: PgOutage, monkeypatch: pytest.MonkeyPatch
) -> list[Exception]:
    """One drain whose delivery reaches the relay just before the database goes away."""
    send_mail = sender.transport.send

    def send_then_outage(*args: Any) -> None:
        send_mail(*args)
        outage.refuse()  # the relay has it; its record cannot be written

    monkeypatch.setattr(sender.transport, "send", send_then_outage)
    raised: list[Exception] = []
    try:
        sender.drain()
    except Exception as exc:
        raised.append(exc)
    monkeypatch.setattr(sender.transport, "send", send_mail)
    return raised


def test_a_mail_sent_while_the_database_went_away_is_recorded_not_sent_twice(
    pg: tuple[App, PgOutage],
    clock: FrozenClock,
    relay: RelaySink,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    app, outage = pg
    queue_one(app, clock())
    sender = relay_sender(app, clock, relay)
    raised = deliver_into_outage(sender, outage, monkeypatch)
    outage.refuse(False)
    clock.advance(minutes=30)  # long past the claim timeout
    end = time.monotonic() + 10  # the sender's backoff: a second or two
    while time.monotonic() < end and outbox_state(app) is OutboxState.QUEUED:
        sender.drain()
        time.sleep(0.2)
    assert len(relay.received) == 1, "the mail was sent a second time"
    with app.db.transaction() as session:
        row = session.scalars(select(Outbox)).one()
        assert (row.state, row.claimed_by, row.attempts) == (OutboxState.SENT, None, 1)
    # An outage is no error to raise: the scheduler would log a traceback every interval.
    assert not raised, raised


@pytest.mark.parametrize(
    ("reply", "recorded"),
    [("250 OK", OutboxState.SENT), ("554 5.7.1 rejected by policy", OutboxState.FAILED)],
)
def test_a_delivery_unrecorded_when_the_daemon_stopped_is_recorded_at_its_restart(
    pg: tuple[App, PgOutage],
    clock: FrozenClock,
    relay: RelaySink,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    reply: str,
    recorded: OutboxState,
) -> None:
    """The daemon stops (or dies) while the database is away, holding the record of a
    delivery the relay answered. Restarted with the database back, it writes that
    record (from its journal) before it gives back its claims: the mail is not sent
    a second time, and a refusal is recorded with the relay's words."""
    app, outage = pg
    queue_one(app, clock())
    relay.reply = reply
    deliver_into_outage(relay_sender(app, clock, relay), outage, monkeypatch)
    outage.refuse(False)
    clock.advance(minutes=30)
    relay.reply = "250 OK"

    restarted = relay_sender(app, clock, relay)  # a new process: nothing in memory
    assert restarted.release_own_claims() == 0
    with app.db.transaction() as session:
        row = session.scalars(select(Outbox)).one()
        assert (row.state, row.claimed_by, row.attempts) == (recorded, None, 1)
        assert reply.startswith("250") or "rejected by policy" in (row.last_error or "")
    restarted.drain()
    assert len(relay.received) == (1 if reply.startswith("250") else 0), "sent a second time"
    assert not journal_path(app.settings.data_dir, "node-a").exists()


class Killed(BaseException):
    """kill -9, as near as a test gets: nothing after it runs."""


def test_a_journal_entry_recorded_just_before_a_kill_is_not_recorded_twice(
    pg: tuple[App, PgOutage],
    clock: FrozenClock,
    relay: RelaySink,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A restarted daemon records the relay's refusal from its journal and is killed
    before the journal says so: at the next restart that refusal is already on the
    ticket. It must not be recorded again (a second "not delivered" for the agent)."""
    app, outage = pg
    queue_one(app, clock())
    relay.reply = "554 5.7.1 rejected by policy"
    sender = relay_sender(app, clock, relay)
    send_mail = sender.transport.send

    def refused_then_outage(*args: Any) -> None:
        try:
            send_mail(*args)
        finally:
            outage.refuse()  # the relay has answered; its answer cannot be written

    monkeypatch.setattr(sender.transport, "send", refused_then_outage)
    with contextlib.suppress(Exception):
        sender.drain()
    outage.refuse(False)
    assert journal_path(app.settings.data_dir, "node-a").exists()
    clock.advance(minutes=30)

    first = relay_sender(app, clock, relay)

    def killed() -> None:
        raise Killed

    monkeypatch.setattr(first, "_keep_unrecorded", killed)  # dies after the commit
    with pytest.raises(Killed):
        first.release_own_claims()
    assert journal_path(app.settings.data_dir, "node-a").exists()

    relay_sender(app, clock, relay).release_own_claims()
    with app.db.transaction() as session:
        row = session.scalars(select(Outbox)).one()
        assert (row.state, row.attempts) == (OutboxState.FAILED, 1)
        failed = session.scalars(select(Event).where(Event.kind == "outbound_failed")).all()
        assert len(failed) == 1, [e.reason for e in failed]
    assert not journal_path(app.settings.data_dir, "node-a").exists()


def test_an_unreadable_journal_is_moved_aside_and_the_sender_starts(
    sqlite_app: App, clock: FrozenClock, relay: RelaySink, caplog: pytest.LogCaptureFixture
) -> None:
    app = sqlite_app
    journal = journal_path(app.settings.data_dir, "node-a")
    journal.parent.mkdir(parents=True, exist_ok=True)
    journal.write_bytes(b'{"format": 1, "deliveries": {"7": {"live": ')  # cut by a full disk
    with caplog.at_level(logging.ERROR, logger="maildesk.outbound"):
        sender = relay_sender(app, clock, relay)
    assert sender.release_own_claims() == 0
    assert not journal.exists() and journal.with_name(journal.name + ".unreadable").exists()
    assert any(
        "cannot read the deliveries not yet recorded" in r.getMessage() for r in caplog.records
    )


def test_a_journal_left_by_the_nodes_old_name_is_reported_at_start(
    sqlite_app: App, clock: FrozenClock, relay: RelaySink, caplog: pytest.LogCaptureFixture
) -> None:
    """node_name changed while a journal was kept: the renamed daemon does not read it,
    so its mails go out again once the old name's claims run out. Ops must hear of it."""
    app = sqlite_app
    old = journal_path(app.settings.data_dir, "old-name")
    old.parent.mkdir(parents=True, exist_ok=True)
    old.write_text('{"format": 1, "deliveries": {}}')
    with caplog.at_level(logging.WARNING, logger="maildesk.outbound"):
        relay_sender(app, clock, relay).release_own_claims()  # as the daemon starts
    assert any(str(old) in r.getMessage() for r in caplog.records), caplog.text


# -- SQLite: the write lock held by another process --------------------------------------

LOCKER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
for line in sys.stdin:
    if line.strip() == "lock":
        conn.execute("BEGIN IMMEDIATE")
    elif conn.in_transaction:
        conn.execute("COMMIT")
    print("ok", flush=True)
"""
BUSY_TIMEOUT_MS = 200


class SqliteLocker:
    """Another process that takes and holds the database's write lock on command."""

    def __init__(self, path: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", LOCKER, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def _say(self, what: str) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(what + "\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "ok"

    def lock(self) -> None:
        self._say("lock")

    def unlock(self) -> None:
        """Lets go of the lock if it holds it."""
        self._say("unlock")

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=10)


@pytest.fixture
def sqlite_app(tmp_path: Path, sqlite_template: Path, clock: FrozenClock) -> Iterator[App]:
    path = tmp_path / "maildesk.sqlite3"
    path.write_bytes(sqlite_template.read_bytes())
    application = App.build(make_settings(tmp_path, f"sqlite:///{path}"), clock=clock)

    @event.listens_for(application.db.engine, "connect")
    def short_busy_timeout(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")  # 30 s in production

    yield application
    application.db.dispose()


def test_sqlite_locked_by_another_process_more_often_than_max_attempts_never_quarantines(
    sqlite_app: App, clock: FrozenClock
) -> None:
    app = sqlite_app
    store(app, 1)
    locker = SqliteLocker(Path(app.db.engine.url.database or ""))
    worker = app.worker("node-a")
    rounds: list[int] = []

    def lock_for_one_apply() -> None:
        if len(rounds) < OUTAGES:
            rounds.append(1)
            locker.lock()  # held through the apply and the put-back that follows it

    before_apply(worker, lock_for_one_apply)
    try:
        for _ in range(3 * OUTAGES):
            if len(rounds) == OUTAGES:
                break
            drain_through_outage(worker)
            locker.unlock()
            next_round(clock, app)
        summary = worker.drain()
    finally:
        worker.close()
        locker.close()
    (row,) = intakes(app)
    assert row.disposition is Disposition.CREATED, row.quarantine_reason
    assert len(rounds) == OUTAGES
    assert summary.as_dict()["created"] == 1
    assert row.attempts == 1


# -- what is the message's fault still ends in quarantine ------------------------------


def test_a_message_at_fault_is_quarantined_while_an_outage_spares_the_others(
    pg: tuple[App, PgOutage], clock: FrozenClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database error from the message's own data (here: its subject cast to a number)
    is the message's fault: quarantined with the reason, the good mail beside it is not."""
    app, outage = pg

    def numbered(ctx: MessageContext, session: Session, _deps: StageDeps) -> Stop | None:
        subject = ctx.parsed.subject if ctx.parsed is not None else ""
        if subject.startswith("order"):
            session.execute(text("SELECT CAST(:n AS integer)"), {"n": subject.split()[-1]})
        return None

    monkeypatch.setattr(runner, "DB_STAGES", [("numbered", numbered), *runner.DB_STAGES])
    store(app, 1, subject="order 42")
    store(app, 2, subject="order forty-two")  # poison: invalid input syntax for integer
    worker = app.worker("node-a")
    kills: list[int] = []
    in_apply(worker, lambda: kills.append(outage.kill()) if len(kills) < 2 else None)
    try:
        for _ in range(OUTAGES):
            drain_through_outage(worker)
            next_round(clock, app)
    finally:
        worker.close()
    good, poison = intakes(app)
    assert good.disposition is Disposition.CREATED, good.quarantine_reason
    assert poison.disposition is Disposition.QUARANTINED
    assert "InvalidTextRepresentation" in (poison.quarantine_reason or "") or "integer" in (
        poison.quarantine_reason or ""
    )


def test_outage_errors_are_told_from_the_messages_own(pg: tuple[App, PgOutage]) -> None:
    """The classification, on errors real servers raised."""
    app, outage = pg
    errors: dict[str, BaseException] = {}

    def record(name: str) -> Callable[[Callable[[Session], Any]], None]:
        def run(job: Callable[[Session], Any]) -> None:
            try:
                with app.db.transaction() as session:
                    job(session)
            except SQLAlchemyError as exc:
                errors[name] = exc

        return run

    record("data")(lambda s: s.execute(text("SELECT CAST('x' AS integer)")))
    record("timeout")(
        lambda s: s.execute(text("SET LOCAL statement_timeout = 50; SELECT pg_sleep(1)"))
    )
    record("killed")(
        lambda s: (s.execute(text("SELECT 1")), outage.kill(), s.execute(text("SELECT 1")))
    )
    outage.refuse()
    record("refused")(lambda s: s.execute(text("SELECT 1")))
    outage.refuse(False)
    assert set(errors) == {"data", "timeout", "killed", "refused"}
    assert not is_unavailable(errors["data"]) and not is_transient(errors["data"])
    assert not is_unavailable(errors["timeout"]) and is_transient(errors["timeout"])
    assert is_unavailable(errors["killed"]) and is_unavailable(errors["refused"])
    assert isinstance(errors["killed"], DBAPIError)


def test_sqlite_locked_reads_as_unavailable(tmp_path: Path, sqlite_template: Path) -> None:
    path = tmp_path / "locked.sqlite3"
    path.write_bytes(sqlite_template.read_bytes())
    db = Database(f"sqlite:///{path}")

    @event.listens_for(db.engine, "connect")
    def short(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")

    locker = SqliteLocker(path)
    locker.lock()
    try:
        with pytest.raises(SQLAlchemyError) as caught, db.transaction() as session:
            session.execute(text("SELECT 1"))
    finally:
        locker.close()
        db.dispose()
    assert is_unavailable(caught.value), caught.value


# -- the SLA sweep --------------------------------------------------------------------


def test_an_sla_sweep_cut_by_an_outage_fires_each_escalation_once_after_it(
    tmp_path: Path, clock: FrozenClock, caplog: pytest.LogCaptureFixture
) -> None:
    from tests.sla.slahelp import berlin, new_ticket, sla_app, sweeper

    with private_pg_database("maildesk_outage_sla") as url:
        app = sla_app(tmp_path, url, clock)
        outage = PgOutage(url)
        try:
            for n in range(3):
                new_ticket(app, clock, berlin(2026, 3, 6, 15, n), subject=f"Case {n}")
            with app.db.transaction() as session:
                for ticket in session.scalars(select(Ticket)):
                    ticket.assignee = "bob"
            clock.now = berlin(2026, 3, 9, 12, 0)  # every warning and breach is due
            sla = sweeper(app, batch_size=1)
            sweep_batch = sla._sweep_batch
            batches: list[int] = []

            def cut_second_batch(session: Session, batch: list[Ticket]) -> Any:
                result = sweep_batch(session, batch)
                batches.append(batch[0].id)
                if len(batches) == 2:
                    outage.refuse()  # its ledger rows and mail are not committed
                return result

            sla._sweep_batch = cut_second_batch  # type: ignore[method-assign]
            with caplog.at_level(logging.WARNING, "maildesk.sla"):
                for _ in range(3):  # not an exception in the scheduler's log each time
                    sla.run()
                outage.refuse(False)
                end = time.monotonic() + 10  # the sweep's backoff: a second or two
                while time.monotonic() < end and sla.outage.down:
                    sla.run()
                    time.sleep(0.2)
            with app.db.transaction() as session:
                mail = Counter(
                    session.execute(
                        select(Outbox.ticket_id, Outbox.purpose).where(Outbox.purpose.like("sla_%"))
                    ).all()
                )
        finally:
            outage.close()
            app.db.dispose()
    assert len(mail) == 2 * 3 and set(mail.values()) == {1}, mail  # warning + breach, once
    said = [r.getMessage() for r in caplog.records]
    assert sum("database unavailable" in m for m in said) == 1, said
    assert sum("database available again" in m for m in said) == 1, said


def test_the_wait_grows_while_the_database_stays_away_and_it_is_said_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    outage = Outage(
        logging.getLogger("maildesk.test"), "worker", base=0.5, monotonic=lambda: now[0]
    )
    with caplog.at_level(logging.DEBUG, "maildesk.test"):
        waits = []
        for _ in range(10):
            assert outage.ready()
            waits.append(outage.failed(RuntimeError("connection refused")))
            assert not outage.ready()
            now[0] += waits[-1]
        outage.succeeded()
    assert waits == [0.5, 1, 2, 4, 8, 16, 32, 60, 60, 60]
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 2, warnings
    assert "database unavailable" in warnings[0] and "connection refused" in warnings[0]
    assert "database available again after 243.5s" in warnings[1]


def test_a_message_whose_statement_times_out_does_not_spend_its_neighbours_attempts(
    pg: tuple[App, PgOutage], clock: FrozenClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A statement timeout is temporary but may be the message's doing: counted for it
    alone. Its batch is applied one by one, so the good mail beside it goes through at
    once, and after ``max_attempts`` only the slow one is quarantined."""
    app, outage = pg
    with outage.admin.connect() as conn:
        conn.execute(text(f'ALTER DATABASE "{outage.name}" SET statement_timeout = 300'))
    app.db.engine.dispose()  # new connections take the timeout

    def slow(ctx: MessageContext, session: Session, _deps: StageDeps) -> Stop | None:
        if ctx.parsed is not None and ctx.parsed.subject.startswith("slow"):
            session.execute(text("SELECT pg_sleep(1)"))
        return None

    monkeypatch.setattr(runner, "DB_STAGES", [("slow", slow), *runner.DB_STAGES])
    store(app, 1)
    store(app, 2, subject="slow report")
    store(app, 3)
    worker = app.worker("node-a")
    try:
        first = worker.drain()
        assert first.as_dict()["created"] == 2, first.as_dict()
        for _ in range(MAX_ATTEMPTS):
            next_round(clock, app)
            worker.drain()
    finally:
        worker.close()
    one, slow_one, three = intakes(app)
    assert (one.disposition, three.disposition) == (Disposition.CREATED,) * 2
    assert one.attempts == three.attempts == 1
    assert slow_one.disposition is Disposition.QUARANTINED
    assert "statement timeout" in (slow_one.quarantine_reason or "")


def test_the_shared_models_job_waits_out_an_outage_quietly_and_is_no_success(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Every node pulls the shared category model each minute. While the database was
    away that job logged a traceback each minute and still counted as a success in
    `maildesk_last_success_timestamp_seconds{job="shared-models"}`."""
    import maildesk.routing.models as models
    from maildesk.db.database import StorageUnavailable
    from maildesk.service import Daemon
    from tests.conftest import make_settings

    settings = make_settings(tmp_path, f"sqlite:///{tmp_path / 'maildesk.sqlite3'}")
    app = App.build(settings)
    app.db.ensure_schema()
    calls: list[int] = []
    real_pull = models.pull

    def away(*_args: Any, **_kwargs: Any) -> None:
        calls.append(1)
        raise StorageUnavailable("database is locked")

    def success() -> float | None:
        return app.metrics.registry.get_sample_value(
            "maildesk_last_success_timestamp_seconds", {"job": "shared-models"}
        )

    monkeypatch.setattr(models, "pull", away)
    daemon = Daemon(app)
    if (outage := getattr(daemon, "models_outage", None)) is not None:
        outage.base = outage.ceiling = 0.1  # retried soon, for the test
    daemon.start_scheduler()
    assert daemon.scheduler is not None
    try:
        job = daemon.scheduler.get_job("shared-models")
        assert job is not None
        for _round in range(3):
            seen = len(calls)
            time.sleep(0.15)
            job.modify(next_run_time=datetime.now(UTC))
            deadline = time.monotonic() + 10
            while len(calls) == seen and time.monotonic() < deadline:
                time.sleep(0.05)
        time.sleep(0.3)
        assert len(calls) >= 2
        assert success() is None  # no success while the database was away
        tracebacks = [r for r in caplog.records if r.exc_info and "shared model" in r.getMessage()]
        assert tracebacks == []
        said = [
            r for r in caplog.records if "shared models: database unavailable" in r.getMessage()
        ]
        assert len(said) == 1
        monkeypatch.setattr(models, "pull", real_pull)  # the database is back
        time.sleep(0.15)
        job.modify(next_run_time=datetime.now(UTC))
        deadline = time.monotonic() + 10
        while success() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert success() is not None
    finally:
        daemon.scheduler.shutdown(wait=True)
        app.db.dispose()
