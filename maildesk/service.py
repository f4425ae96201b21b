"""`maildesk run`: build the daemon, start in order, stop in reverse.

Start: config (done by the CLI) -> database check -> intake listeners ->
metrics endpoint -> pipeline worker (this, the main thread, so the parse
deadline can use SIGALRM) -> outbox sender and periodic jobs (APScheduler)
-> READY=1.
SIGTERM/SIGINT stop accepting, finish the message in hand, and exit 0.
SIGHUP reloads templates.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from apscheduler.events import EVENT_JOB_EXECUTED, JobExecutionEvent
from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import Connection, text

from maildesk.app import App
from maildesk.config import ListenerSettings
from maildesk.db.database import is_transient, is_unavailable
from maildesk.db.figures import reader_engine
from maildesk.db.outage import Outage
from maildesk.intake.imap import ImapIntake
from maildesk.intake.oversize import add_oversize_notices
from maildesk.intake.smtp import IntakeHandler, build_controller
from maildesk.metrics import DaemonCollector, MetricsServer
from maildesk.outbound.sender import OutboxSender
from maildesk.privacy.jobs import add_retention
from maildesk.routing.models import pull_models
from maildesk.routing.waiting import add_waiting_assignment
from maildesk.sla.jobs import add_sla_jobs
from maildesk.spam import jobs as spam_jobs
from maildesk.spam.jobs import add_spam_learning

log = logging.getLogger("maildesk.service")

# Messages per worker transaction in the daemon: short write locks, low accept latency.
DAEMON_BATCH = 8
# On stop, a delivery to the relay may finish this long before it is cut (and sent
# again after the restart, with the same Message-ID): a slow relay must not hold
# the stop past systemd's TimeoutStopSec (60 s in our unit), which kills.
STOP_GRACE_SECONDS = 10.0
SHARED_MODELS_INTERVAL_SECONDS = 60.0  # how soon a node takes models another node taught


class CannotListen(Exception):
    """A configured listener cannot bind: said with the file, the key and what to do.

    An address in use (another program, or a maildesk still stopping) is
    temporary: exit 75, systemd tries again. Anything else (a privileged port,
    an address this machine does not have, a socket folder it may not write)
    is the configuration's to fix: exit 78, not retried in a loop.
    """

    def __init__(self, source: str, key: str, where: str, exc: OSError, *, tcp: bool) -> None:
        reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
        if exc.errno == errno.EADDRINUSE:
            hint = (
                "another program holds it (`ss -ltnp` names it): stop it or change the port"
                if tcp
                else "another program holds it"
            )
            self.exit_code = os.EX_TEMPFAIL
        elif exc.errno == errno.EACCES and tcp:
            hint = "a port below 1024 needs CAP_NET_BIND_SERVICE (see `maildesk systemd-unit`)"
            self.exit_code = os.EX_CONFIG
        elif exc.errno == errno.EADDRNOTAVAIL:
            hint = "this machine has no such address"
            self.exit_code = os.EX_CONFIG
        else:
            hint = ""
            self.exit_code = os.EX_CONFIG
        message = f"{source}: {key}: cannot listen on {where}: {reason}"
        super().__init__(f"{message}; {hint}" if hint else message)

    @classmethod
    def listener(
        cls, source: str, index: int, listener: ListenerSettings, exc: OSError
    ) -> CannotListen:
        where = str(listener.socket or f"{listener.host}:{listener.port}")
        field = "socket" if listener.socket else "port"
        if exc.errno == errno.EADDRNOTAVAIL:
            field = "host"
        key = f"listeners.{index}.{field}"
        return cls(source, key, where, exc, tcp=listener.socket is None)


class SystemdNotifier:
    """The sd_notify datagram protocol; silent outside systemd (no NOTIFY_SOCKET)."""

    def __init__(self) -> None:
        self.address = os.environ.get("NOTIFY_SOCKET", "")
        self.watchdog_usec = int(os.environ.get("WATCHDOG_USEC", "0") or 0)

    def notify(self, state: str) -> None:
        if not self.address:
            return
        address = self.address
        if address.startswith("@"):
            address = "\0" + address[1:]  # abstract namespace socket
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.connect(address)
                sock.sendall(state.encode())
        except OSError as exc:
            log.warning("sd_notify %s failed: %s", state, exc)


_PG_LOCK = text("SELECT pg_try_advisory_lock(hashtext(:key))")
_PG_UNLOCK = text("SELECT pg_advisory_unlock(hashtext(:key))")


class AlreadyRunning(Exception):
    """Another `maildesk run` holds this SQLite database, or this node name on PostgreSQL."""


class RunLock:
    """Held while `maildesk run` runs, so a second daemon refuses to start beside it.

    Two daemons on one SQLite file would both take mail and send the outbox,
    and two PostgreSQL nodes of one name take each other's claims for their
    own (each releases them as "mine from before a crash" when it starts).
    SQLite: an flock on a file beside the database. PostgreSQL: a session
    advisory lock on the node name, on a connection kept for the purpose.
    Both end with the process, however it ends.
    """

    def __init__(self, app: App) -> None:
        self._file: int | None = None
        self._conn: Connection | None = None
        self._key = ""
        db = app.db
        if db.is_sqlite:
            database = db.engine.url.database or ""
            path = Path(f"{database}.run-lock")
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise AlreadyRunning(
                    f"another `maildesk run` is already running on {database} ({path} is locked)"
                ) from None
            self._file = fd
            return
        conn = db.engine.connect()
        self._key = f"maildesk run {app.node_name}"
        taken = conn.scalar(_PG_LOCK, {"key": self._key})
        conn.commit()  # a session lock outlives the transaction; idle, not idle in transaction
        if not taken:
            conn.close()
            raise AlreadyRunning(
                f"another `maildesk run` is already running as node {app.node_name!r} "
                "on this database: give each node its own node_name"
            )
        self._conn = conn

    def release(self) -> None:
        if self._file is not None:
            os.close(self._file)  # drops the flock
            self._file = None
        if self._conn is not None:
            try:
                self._conn.execute(_PG_UNLOCK, {"key": self._key})
                self._conn.commit()
                self._conn.close()
            except Exception as exc:  # the database went away: so did the lock
                log.warning("releasing the run lock: %s", exc)
            self._conn = None


@dataclass
class Daemon:
    app: App
    notifier: SystemdNotifier = field(default_factory=SystemdNotifier)
    stop_requested: threading.Event = field(default_factory=threading.Event)
    wakeup: threading.Event = field(default_factory=threading.Event)
    controllers: list[Any] = field(default_factory=list)
    scheduler: BackgroundScheduler | None = None
    sender: OutboxSender | None = None
    imap: ImapIntake | None = None
    run_lock: RunLock | None = None
    metrics_server: MetricsServer | None = None
    # Per scheduler job: its Outages, if it has any; a run while the database (or
    # the Maildir) is away returns normally, but is no success.
    job_outages: dict[str, tuple[Outage, ...]] = field(default_factory=dict)
    models_outage: Outage = field(
        default_factory=lambda: Outage(logging.getLogger("maildesk.routing"), "shared models")
    )

    def request_stop(self, signum: int, _frame: FrameType | None) -> None:
        log.info("received %s: stopping", signal.Signals(signum).name)
        self.stop_requested.set()
        self.wakeup.set()

    def reload(self, _signum: int, _frame: FrameType | None) -> None:
        error = self.app.reload()  # a broken rules file or template keeps the last good ones
        log.info(
            "SIGHUP: templates %s; rules %s",
            "kept (error)" if self.app.template_errors else "reloaded",
            "kept (error)" if error else "reloaded",
        )

    def start_listeners(self) -> None:
        for index, listener in enumerate(self.app.settings.listeners):
            handler = IntakeHandler(
                self.app.intake(),
                self.app.settings.receiving_addresses,
                listener.protocol,
                on_stored=self.wakeup.set,
                clock=self.app.clock,
            )
            try:
                controller = build_controller(listener, handler)
                controller.start()
            except OSError as exc:
                raise CannotListen.listener(self.app.settings.source, index, listener, exc) from exc
            self.controllers.append(controller)
            where = (
                listener.socket or f"{listener.host}:{getattr(controller, 'port', listener.port)}"
            )
            log.info("listening: %s on %s", listener.protocol.upper(), where)

    def start_imap(self) -> None:
        """One poller thread per configured IMAP mailbox folder (none by default)."""
        if not self.app.settings.imap:
            return
        self.imap = ImapIntake.build(
            self.app.settings,
            store=self.app.intake(),
            db=self.app.db,
            holder=self.app.node_name,
            clock=self.app.clock,
            on_stored=self.wakeup.set,
        )
        self.imap.start()

    def start_metrics(self) -> None:
        """The Prometheus endpoint ([metrics] listen); nothing when it is not configured."""
        settings = self.app.settings
        address = settings.metrics.address
        if address is None:
            return
        host, port = address
        collector = DaemonCollector(
            reader_engine(settings.effective_database_url),
            self.app.clock,
            self.app.node_name,
            imap_health=lambda: self.imap.health() if self.imap is not None else [],
        )
        server = MetricsServer(self.app.metrics, collector)
        try:
            server.start(host, port)
        except OSError as exc:
            collector.close()
            where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            raise CannotListen(settings.source, "metrics.listen", where, exc, tcp=True) from exc
        self.metrics_server = server
        log.info("metrics: http://%s/metrics", settings.metrics.listen)

    def _job_ran(self, event: JobExecutionEvent) -> None:
        outages = self.job_outages.get(event.job_id, ())
        if event.exception is None and not any(outage.down for outage in outages):
            self.app.metrics.job_succeeded(event.job_id, time.time())

    def start_scheduler(self) -> None:
        sender = self.sender = self.app.sender()
        self.job_outages["outbox"] = (sender.outage, sender.maildir_outage)
        interval = self.app.settings.outbound.drain_interval_seconds
        scheduler = BackgroundScheduler(timezone="UTC")
        scheduler.add_job(
            sender.drain,
            "interval",
            kwargs={"should_stop": self.stop_requested.is_set},
            seconds=interval,
            id="outbox",
            max_instances=1,
            coalesce=True,
        )
        if (sweeper := add_sla_jobs(scheduler, self.app)) is not None:
            self.job_outages["sla"] = (sweeper.outage,)
        if (learning := add_spam_learning(scheduler, self.app)) is not None:
            self.job_outages["spam-learn"] = learning.outages
        if (oversize := add_oversize_notices(scheduler, self.app)) is not None:
            self.job_outages["imap-oversize-notices"] = (oversize,)
        add_waiting_assignment(scheduler, self.app)
        add_retention(scheduler, self.app)
        self.job_outages["shared-models"] = (self.models_outage,)
        scheduler.add_job(
            pull_models,
            "interval",
            args=(self.app.db, self.app.settings, self.app.router.models, self.models_outage),
            seconds=SHARED_MODELS_INTERVAL_SECONDS,
            id="shared-models",
            max_instances=1,
            coalesce=True,
        )
        scheduler.add_listener(self._job_ran, EVENT_JOB_EXECUTED)
        scheduler.start()
        self.scheduler = scheduler

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        signal.signal(signal.SIGHUP, self.reload)
        try:
            self.run_lock = RunLock(self.app)
        except AlreadyRunning as exc:
            log.error("not starting: %s", exc)
            self.app.db.dispose()
            return os.EX_TEMPFAIL  # systemd tries again once the other one has stopped
        spam_jobs.take_shared_model(self.app)  # before the parse children load it
        # category/queue models other nodes taught
        pull_models(self.app.db, self.app.settings, self.app.router.models, self.models_outage)
        worker = self.app.worker()
        released = worker.release_own_claims() + self.app.sender().release_own_claims()
        if released:
            log.warning("took back %d claims this node held when it last stopped", released)
        try:
            try:
                self.start_listeners()
                self.start_metrics()
            except CannotListen as exc:
                log.error("not starting: %s", exc)
                return exc.exit_code
            self.start_imap()
            self.start_scheduler()
            self.notifier.notify("READY=1\nSTATUS=accepting mail")
            log.info("maildesk running (node %s)", self.app.node_name)
            watchdog_every = self.notifier.watchdog_usec / 2e6 if self.notifier.watchdog_usec else 0
            last_ping = 0.0

            def alive() -> None:
                nonlocal last_ping
                if watchdog_every and time.monotonic() - last_ping >= watchdog_every:
                    self.notifier.notify("WATCHDOG=1")
                    last_ping = time.monotonic()

            def should_stop() -> bool:
                # Asked between batches: a drain of a long backlog (an import stored
                # with --no-process, a burst) is the loop alive, not hung; without a
                # ping meanwhile systemd's WatchdogSec would kill it, again and again.
                alive()
                return self.stop_requested.is_set()

            outage = Outage(
                logging.getLogger("maildesk.pipeline"),
                "pipeline",
                base=self.app.settings.pipeline.retry_delay_seconds,
            )
            while not self.stop_requested.is_set():
                # Also while the database is away: the daemon is alive, waiting for it.
                alive()
                if not outage.ready():  # new mail does not cut the backoff short
                    self.stop_requested.wait(0.5)
                    continue
                self.wakeup.clear()
                try:
                    worker.drain(should_stop=should_stop, batch_size=DAEMON_BATCH)
                except Exception as exc:
                    if is_unavailable(exc):
                        # Stored mail stays stored, the listeners go on taking mail:
                        # it is all processed once the database is back.
                        outage.failed(exc)
                        continue
                    if not is_transient(exc):  # a bug, not an outage
                        raise
                    log.warning("pipeline: temporary database failure, again soon: %s", exc)
                else:
                    outage.succeeded()
                self.wakeup.wait(timeout=1.0)
        finally:
            self.shutdown()
        return 0

    def _cut_deliveries(self) -> None:
        if self.sender is not None:
            log.info("stopping: cutting the delivery still running at the relay")
            self.sender.cut_deliveries()

    def shutdown(self) -> None:
        self.notifier.notify("STOPPING=1")
        if self.imap is not None:
            self.imap.stop()
        for controller in reversed(self.controllers):
            try:
                controller.stop()
            except Exception as exc:  # a listener that failed to start
                log.warning("stopping listener: %s", exc)
        if self.scheduler is not None:
            cutter = threading.Timer(STOP_GRACE_SECONDS, self._cut_deliveries)
            cutter.daemon = True
            cutter.start()
            self.scheduler.shutdown(wait=True)
            cutter.cancel()
        spam_jobs.on_shutdown(self.app)  # learn pending feedback, save the live model
        if self.metrics_server is not None:
            self.metrics_server.stop()
        if self.run_lock is not None:
            self.run_lock.release()
        self.app.db.dispose()
        log.info("maildesk stopped")
