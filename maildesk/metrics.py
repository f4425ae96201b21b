"""Prometheus metrics: this node's counters, the database's figures, the HTTP endpoint.

Two kinds of metric, and a dashboard must treat them differently:

* per node, counted in this process where the event happens (mail stored,
  dispositions, deliveries, commands, lessons): sum them over nodes;
* database-wide, read at scrape time (:mod:`maildesk.db.figures`) and labelled
  ``scope="database"``: every node reports the same numbers, so take ``max``.

A scrape never waits on the database for more than a few seconds: the figures
are read in a worker thread with a deadline; a database that does not answer
gives ``maildesk_database_up 0`` and no figures, never a hung or failed scrape.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import Engine

from maildesk.db.figures import (
    QUARANTINE_CLASS_NAMES,
    READ_TIMEOUT_SECONDS,
    Figures,
    figures_from,
)

log = logging.getLogger("maildesk.metrics")

INTAKE_SOURCES = ("smtp", "lmtp", "imap", "file", "stdin")
LISTENER_SOURCES = ("smtp", "lmtp")
# Why a listener refused (reason label): 4xx asks the sender to retry, 5xx does not.
INTAKE_REFUSALS = {
    "refused_4xx": (
        "cannot_store",  # our 451: the database could not take it
        "too_many_connections",  # max_connections(_per_client): 421 at connect
        "too_many_commands",  # max_junk_commands
        "too_many_errors",  # max_errors
        "timeout",  # silent, or a command line not whole, for timeout_seconds
        "data_too_slow",  # DATA below min_data_rate
        "session_too_long",  # max_session_seconds
    ),
    "refused_5xx": (
        "not_support_address",  # RCPT
        "too_large",  # over max_message_bytes (SIZE= or the data itself)
        "line_too_long",  # a line of DATA over 1 MiB, or a command line too long
        "auth_failed",  # wrong user or password
        "bad_command",  # unknown, malformed or out of sequence
    ),
}
DISPOSITIONS = ("created", "threaded", "duplicate", "quarantined", "spam", "postponed")
FLAGS = ("possible_spam", "auto_reply", "bounce", "list", "own_mail", "loop")
DELIVERY_RESULTS = ("sent", "deferred", "failed", "suppressed", "dropped")
SCRAPE_DEADLINE_SECONDS = READ_TIMEOUT_SECONDS + 1.0
DATABASE_SCOPE = {"scope": "database"}


def maildesk_version() -> str:
    try:
        return version("maildesk")
    except PackageNotFoundError:  # a checkout run without installing
        return "unknown"


class Metrics:
    """This node's counters, in a registry of its own (no module-level singleton).

    Every component takes one; a one-off command's counters are simply never
    scraped. Label values are known in advance, so each series exists (at 0)
    from the start and ``rate()`` and ``increase()`` see the first event.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.received = Counter(
            "maildesk_intake_messages",
            "Mails received by this node: stored (acknowledged), or refused by a listener "
            "(4xx: try later, 5xx: not at all), with the reason of the refusal",
            ["source", "outcome", "reason"],
            registry=r,
        )
        self.dispositions = Counter(
            "maildesk_pipeline_messages",
            "Messages the pipeline of this node finished, by disposition (postponed: a "
            "temporary failure, tried again later)",
            ["disposition"],
            registry=r,
        )
        self.flags = Counter(
            "maildesk_pipeline_flagged_messages",
            "Messages the pipeline stored but does not answer: possible spam, auto-generated",
            ["flag"],
            registry=r,
        )
        self.pipeline_latency = Histogram(
            "maildesk_pipeline_latency_seconds",
            "From a mail stored to its decision applied (ticket written or quarantined)",
            buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600),
            registry=r,
        )
        self.deliveries = Counter(
            "maildesk_outbound_deliveries",
            "Outbound delivery attempts of this node, by result",
            ["result"],
            registry=r,
        )
        self.delivery_time = Histogram(
            "maildesk_outbound_delivery_seconds",
            "From an outbound mail queued to the relay taking it",
            buckets=(0.5, 1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600),
            registry=r,
        )
        self.agent_commands = Counter(
            "maildesk_agent_commands",
            "Commands in agents' mail, applied or not (with the reason told to the agent)",
            ["result"],
            registry=r,
        )
        self.spam_lessons = Counter(
            "maildesk_spam_lessons", "Messages the spam model learned on this node", registry=r
        )
        self.job_success = Gauge(
            "maildesk_last_success_timestamp_seconds",
            "When a scheduled job of this node last ran to its end (alert when it stops moving)",
            ["job"],
            registry=r,
        )
        for source in INTAKE_SOURCES:
            self.received.labels(source, "stored", "")
        for source in LISTENER_SOURCES:
            for outcome, reasons in INTAKE_REFUSALS.items():
                for reason in reasons:
                    self.received.labels(source, outcome, reason)
        for name in DISPOSITIONS:
            self.dispositions.labels(name)
        for name in FLAGS:
            self.flags.labels(name)
        for name in DELIVERY_RESULTS:
            self.deliveries.labels(name)
        for name in ("applied", "failed"):
            self.agent_commands.labels(name)

    # -- events, called where they happen (after the commit that makes them true) ----
    def mail_received(self, source: str, outcome: str, count: int = 1, reason: str = "") -> None:
        self.received.labels(source, outcome, reason).inc(count)

    def message_finished(
        self, disposition: str, flags: Iterable[str], latency_seconds: float | None
    ) -> None:
        # The histogram first: a scrape that sees the count sees its time too.
        if latency_seconds is not None:
            self.pipeline_latency.observe(max(0.0, latency_seconds))
        for flag in flags:
            self.flags.labels(flag).inc()
        self.dispositions.labels(disposition).inc()

    def delivered(self, result: str, seconds: float | None = None) -> None:
        if seconds is not None:  # first, as above
            self.delivery_time.observe(max(0.0, seconds))
        self.deliveries.labels(result).inc()

    def commands(self, applied: int, failed: int) -> None:
        if applied:
            self.agent_commands.labels("applied").inc(applied)
        if failed:
            self.agent_commands.labels("failed").inc(failed)

    def learned(self, lessons: int) -> None:
        if lessons:
            self.spam_lessons.inc(lessons)

    def job_succeeded(self, job: str, at: float) -> None:
        self.job_success.labels(job).set(at)


class DaemonCollector(Collector):
    """What a scrape reads when it happens: up, build info, the database's figures, IMAP."""

    def __init__(
        self,
        engine: Engine,
        clock: Callable[[], datetime],
        node: str,
        imap_health: Callable[[], list[Any]] = list,
        deadline: float = SCRAPE_DEADLINE_SECONDS,
    ) -> None:
        self.engine = engine
        self.clock = clock
        self.node = node
        self.imap_health = imap_health
        self.deadline = deadline
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="metrics-db")
        self._lock = threading.Lock()
        self._reading: Future[Figures] | None = None

    def describe(self) -> list[Any]:
        return []  # the families depend on what the database says: not checked up front

    def figures(self) -> Figures | None:
        """The database's figures, or None when it did not answer within the deadline.

        One read at a time: while a read hangs (a database that takes the
        connection but never answers), later scrapes wait on that one, not
        on a pile of new ones.
        """
        with self._lock:
            if self._reading is None or self._reading.done():
                self._reading = self._pool.submit(figures_from, self.engine, self.clock())
            reading = self._reading
        try:
            return reading.result(timeout=self.deadline)
        except FutureTimeout:
            log.warning("metrics: the database did not answer in %.0f s", self.deadline)
        except Exception as exc:
            log.warning("metrics: cannot read the database figures: %s", exc)
        return None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily("maildesk_up", "1 while this maildesk daemon runs", value=1)
        yield up
        info = GaugeMetricFamily(
            "maildesk_build_info", "Version and node name (always 1)", labels=["version", "node"]
        )
        info.add_metric([maildesk_version(), self.node], 1)
        yield info
        figures = self.figures()
        yield GaugeMetricFamily(
            "maildesk_database_up",
            "1 when the database answered this scrape's queries in time",
            value=1 if figures is not None else 0,
        )
        if figures is not None:
            yield from database_families(figures)
        yield from imap_families(self.imap_health())

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.engine.dispose()


def _gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(
        name, f"{doc} (database-wide: take max over nodes)", labels=["scope", *labels]
    )


def database_families(f: Figures) -> Iterator[GaugeMetricFamily]:
    """The figures as gauges, each labelled ``scope="database"``."""
    scope = DATABASE_SCOPE["scope"]
    g = _gauge("maildesk_intake_pending_messages", "Mails stored, not processed yet", ("state",))
    g.add_metric([scope, "pending"], f.intake_pending)
    g.add_metric([scope, "processing"], f.intake_processing)
    yield g
    g = _gauge(
        "maildesk_intake_oldest_pending_age_seconds",
        "Age of the oldest mail stored and not processed yet (0: none)",
    )
    g.add_metric([scope], f.intake_oldest_pending_age_seconds or 0.0)
    yield g
    g = _gauge("maildesk_quarantine_messages", "Mails held in quarantine", ("reason",))
    for name in QUARANTINE_CLASS_NAMES:
        g.add_metric([scope, name], f.quarantine.get(name, 0))
    yield g
    g = _gauge(
        "maildesk_outbox_messages",
        "Outbound mails not sent: queued (not tried yet), deferred (tried, to be retried), "
        "failed (given up)",
        ("state",),
    )
    g.add_metric([scope, "queued"], f.outbox_queued)
    g.add_metric([scope, "deferred"], f.outbox_deferred)
    g.add_metric([scope, "failed"], f.outbox_failed)
    yield g
    g = _gauge(
        "maildesk_outbox_oldest_due_age_seconds",
        "How long the most overdue outbound mail has been due (0: none waiting)",
    )
    g.add_metric([scope], f.outbox_oldest_due_age_seconds or 0.0)
    yield g
    g = _gauge("maildesk_tickets_open", "Tickets new, open or pending", ("status", "group"))
    for status, group, count in f.tickets_open:
        g.add_metric([scope, status, group], count)
    yield g
    g = _gauge(
        "maildesk_tickets_unassigned",
        "Tickets new, open or pending that nobody is assigned (waiting for an agent)",
        ("group",),
    )
    for group, count in sorted(f.tickets_unassigned.items()):
        g.add_metric([scope, group], count)
    yield g
    g = _gauge("maildesk_tickets_past_sla_due", "Open tickets past an SLA due time")
    g.add_metric([scope], f.tickets_past_sla_due)
    yield g
    g = _gauge("maildesk_suppressed_addresses", "Addresses not mailed (hard bounces)")
    g.add_metric([scope], f.suppressed_addresses)
    yield g


# Folder states of a poller that works (standby: another node reads the folder).
_IMAP_WORKING = frozenset({"starting", "standby", "polling", "idle", "waiting"})


def imap_families(folders: list[Any]) -> Iterator[GaugeMetricFamily]:
    """Per IMAP folder this node reads (its pollers' health, as in imap-health.json)."""
    if not folders:
        return
    labels = ["mailbox", "folder"]
    up = GaugeMetricFamily(
        "maildesk_imap_folder_up", "0 while the folder's poller fails (backoff)", labels=labels
    )
    failures = GaugeMetricFamily(
        "maildesk_imap_folder_consecutive_failures", "Failures in a row", labels=labels
    )
    last_ok = GaugeMetricFamily(
        "maildesk_imap_folder_last_success_timestamp_seconds",
        "When the folder was last read successfully (0: not yet)",
        labels=labels,
    )
    for health in folders:
        key = [health.mailbox, health.folder]
        up.add_metric(key, 1 if str(health.status) in _IMAP_WORKING else 0)
        failures.add_metric(key, health.consecutive_failures)
        ok = datetime.fromisoformat(health.last_ok_at).timestamp() if health.last_ok_at else 0.0
        last_ok.add_metric(key, ok)
    yield from (up, failures, last_ok)


class MetricsServer:
    """The plain HTTP endpoint (``/metrics``) on the configured address."""

    def __init__(self, metrics: Metrics, collector: DaemonCollector) -> None:
        self.metrics = metrics
        self.collector = collector
        self.server: WSGIServer | None = None
        self.thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.server_address[1])

    def start(self, host: str, port: int) -> None:
        """Listen now; OSError when the address cannot be bound (in use, not ours)."""
        self.metrics.registry.register(self.collector)
        try:
            self.server, self.thread = start_http_server(
                port, addr=host, registry=self.metrics.registry
            )
        except OSError:
            self.metrics.registry.unregister(self.collector)
            raise

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
        self.collector.close()
