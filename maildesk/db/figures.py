"""Database-wide health figures: what is waiting, held, failing or late, right now.

One set of cheap aggregate queries, read by the metrics collector at each
scrape and by `maildesk status`. Each query reads an index over the few live
rows (pending intake, queued outbox, open tickets, running SLA targets), never
a table of everything ever received, so it stays fast at a million tickets.

The figures are the database's, not a node's: with several nodes on one
PostgreSQL database each one reports the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, create_engine, event, text

from maildesk.db.models import (
    OPEN_TICKETS_PREDICATE,
    QUARANTINED_OTHER,
    QUARANTINED_SPAM,
    SLA_LIVE_PREDICATE,
    UTCDateTime,
)

# How long a query of the figures may take; also the connect timeout. A scrape
# must answer while the database is down or locked, never hang.
READ_TIMEOUT_SECONDS = 2.0

# Quarantine reasons by their start: a bounded set of label values for dashboards.
QUARANTINE_CLASSES = (
    ("unparseable", "cannot parse%"),
    ("too_large", "message of % bytes exceeds%"),
    ("too_large", "too large to fetch%"),
    ("imap_fetch_failed", "cannot fetch from IMAP%"),
    ("processing_failed", "processing failed%"),
    ("processing_failed", "conflicting concurrent writes%"),
)
QUARANTINE_CLASS_NAMES = ("spam", *dict.fromkeys(name for name, _ in QUARANTINE_CLASSES), "other")
OPEN_STATUSES = ("new", "open", "pending")

_CLASSES = QUARANTINE_CLASSES
_QUARANTINE_CASE = (
    "CASE "
    + " ".join(f"WHEN quarantine_reason LIKE '{like}' THEN '{name}'" for name, like in _CLASSES)
    + " ELSE 'other' END"
)

_INTAKE_COUNTS = text(
    "SELECT state, count(*) FROM intake WHERE state IN ('pending', 'processing') GROUP BY state"
)
# The oldest by id (the index's order): received_at of one row, not of every pending one.
_INTAKE_OLDEST = text("SELECT received_at FROM intake WHERE state = :state ORDER BY id LIMIT 1")
# Each WHERE repeats its partial index's predicate word for word (see the models).
_QUARANTINED = text("SELECT count(*) FROM intake WHERE state = 'quarantined'")
_QUARANTINED_SPAM = text(f"SELECT count(*) FROM intake WHERE {QUARANTINED_SPAM}")
_QUARANTINED_OTHER = text(
    f"SELECT {_QUARANTINE_CASE} AS class, count(*) FROM intake "
    f"WHERE {QUARANTINED_OTHER} GROUP BY class"
)
_OUTBOX = text(
    "SELECT state, attempts > 0 AS retried, count(*) FROM outbox "
    "WHERE state IN ('queued', 'failed') GROUP BY state, attempts > 0"
)
_OUTBOX_FAILED_SINCE = text(
    "SELECT count(*) FROM outbox WHERE state = 'failed' AND created_at >= :since"
).bindparams(bindparam("since", type_=UTCDateTime()))
_OUTBOX_OLDEST_DUE = text(
    "SELECT next_attempt_at FROM outbox WHERE state = 'queued' AND next_attempt_at <= :now "
    "ORDER BY next_attempt_at LIMIT 1"
)
_TICKETS = text(
    'SELECT status, "group", count(*), '
    "sum(CASE WHEN assignee IS NULL THEN 1 ELSE 0 END) FROM tickets "
    f'WHERE {OPEN_TICKETS_PREDICATE} GROUP BY status, "group"'
)
# The live-targets index's own predicate, word for word: SQLite uses a partial index
# only for a query that repeats its WHERE terms.
_PAST_DUE = text(
    "SELECT count(DISTINCT ticket_id) FROM sla_targets "
    f"WHERE {SLA_LIVE_PREDICATE} AND due_at <= :now AND status = 'running'"
)
_SUPPRESSED = text("SELECT count(*) FROM suppressions WHERE until > :now")
_OUTBOX_OLDEST_DUE, _PAST_DUE, _SUPPRESSED = (
    query.bindparams(bindparam("now", type_=UTCDateTime()))
    for query in (_OUTBOX_OLDEST_DUE, _PAST_DUE, _SUPPRESSED)
)


@dataclass
class Figures:
    """What the database says now; ages in seconds (None: nothing waiting)."""

    at: datetime
    intake_pending: int = 0
    intake_processing: int = 0
    intake_oldest_pending_age_seconds: float | None = None
    quarantine: dict[str, int] = field(default_factory=dict)
    outbox_queued: int = 0
    outbox_deferred: int = 0
    outbox_failed: int = 0
    outbox_failed_last_day: int = 0  # of the mail queued in the last 24 hours
    outbox_oldest_due_age_seconds: float | None = None
    tickets_open: list[tuple[str, str, int]] = field(default_factory=list)  # status, group
    # Open tickets nobody is assigned, by group ("": of no group): waiting for an agent.
    tickets_unassigned: dict[str, int] = field(default_factory=dict)
    tickets_past_sla_due: int = 0
    suppressed_addresses: int = 0

    @property
    def quarantined(self) -> int:
        return sum(self.quarantine.values())

    def open_by_status(self) -> dict[str, int]:
        counts = dict.fromkeys(OPEN_STATUSES, 0)
        for status, _group, count in self.tickets_open:
            counts[status] = counts.get(status, 0) + count
        return counts

    def as_json(self) -> dict[str, Any]:
        """The ``database`` part of `maildesk status --json` (README, JSON formats)."""
        return {
            "intake": {
                "pending": self.intake_pending,
                "processing": self.intake_processing,
                "oldest_pending_age_seconds": self.intake_oldest_pending_age_seconds,
            },
            "quarantine": {"total": self.quarantined, "by_reason": dict(self.quarantine)},
            "outbox": {
                "queued": self.outbox_queued,
                "deferred": self.outbox_deferred,
                "failed": self.outbox_failed,
                "failed_last_day": self.outbox_failed_last_day,
                "oldest_due_age_seconds": self.outbox_oldest_due_age_seconds,
            },
            "tickets": {
                "open": self.open_by_status(),
                "open_by_group": [
                    {"status": s, "group": g, "count": c} for s, g, c in self.tickets_open
                ],
                "past_sla_due": self.tickets_past_sla_due,
                "unassigned": sum(self.tickets_unassigned.values()),
                "unassigned_by_group": dict(sorted(self.tickets_unassigned.items())),
            },
            "suppressed_addresses": self.suppressed_addresses,
        }


def _as_utc(value: Any) -> datetime | None:
    """A timestamp column read by plain SQL: SQLite gives text, PostgreSQL a datetime."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    assert isinstance(value, datetime)
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _age(now: datetime, then: Any) -> float | None:
    moment = _as_utc(then)
    return None if moment is None else max(0.0, (now - moment).total_seconds())


def read_figures(conn: Connection, now: datetime) -> Figures:
    """The figures, by the queries above, on ``conn`` (see :func:`reader_engine`)."""
    at = {"now": now}
    figures = Figures(at=now)
    for state, count in conn.execute(_INTAKE_COUNTS):
        if state == "pending":
            figures.intake_pending = int(count)
        else:
            figures.intake_processing = int(count)
    ages = [
        _age(now, conn.scalar(_INTAKE_OLDEST, {"state": state}))
        for state in ("pending", "processing")
    ]
    figures.intake_oldest_pending_age_seconds = max(
        (a for a in ages if a is not None), default=None
    )
    figures.quarantine = dict.fromkeys(QUARANTINE_CLASS_NAMES, 0)
    total = int(conn.scalar(_QUARANTINED) or 0)
    if total:
        figures.quarantine["spam"] = int(conn.scalar(_QUARANTINED_SPAM) or 0)
        for name, count in conn.execute(_QUARANTINED_OTHER):
            figures.quarantine[name] += int(count)
        # A row without a reason is in neither index: counted, as "other".
        figures.quarantine["other"] += total - sum(figures.quarantine.values())
    for state, retried, count in conn.execute(_OUTBOX):
        if state == "failed":
            figures.outbox_failed += int(count)
        elif retried:
            figures.outbox_deferred += int(count)
        else:
            figures.outbox_queued += int(count)
    figures.outbox_oldest_due_age_seconds = _age(now, conn.scalar(_OUTBOX_OLDEST_DUE, at))
    if figures.outbox_failed:
        since = {"since": now - timedelta(days=1)}
        figures.outbox_failed_last_day = int(conn.scalar(_OUTBOX_FAILED_SINCE, since) or 0)
    for status, group, count, unassigned in conn.execute(_TICKETS):
        figures.tickets_open.append((str(status), str(group or ""), int(count)))
        if unassigned:
            waiting = figures.tickets_unassigned
            waiting[str(group or "")] = waiting.get(str(group or ""), 0) + int(unassigned)
    figures.tickets_open.sort()
    figures.tickets_past_sla_due = int(conn.scalar(_PAST_DUE, at) or 0)
    figures.suppressed_addresses = int(conn.scalar(_SUPPRESSED, at) or 0)
    return figures


def _sqlite_reader(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute(f"PRAGMA busy_timeout={int(READ_TIMEOUT_SECONDS * 1000)}")
    cursor.execute("PRAGMA query_only=ON")
    cursor.close()


def reader_engine(url: str) -> Engine:
    """An engine of its own for reading the figures: short timeouts, never a writer.

    Not the daemon's engine: on SQLite that one begins every transaction with
    the write lock (BEGIN IMMEDIATE), and a reader in WAL mode needs none; on
    PostgreSQL a scrape must give up after a few seconds, and must not take a
    connection the pipeline waits for.
    """
    if url.startswith("sqlite"):
        engine = create_engine(
            url, connect_args={"timeout": READ_TIMEOUT_SECONDS, "check_same_thread": False}
        )
        event.listen(engine, "connect", _sqlite_reader)
        return engine
    millis = int(READ_TIMEOUT_SECONDS * 1000)
    return create_engine(
        url,
        pool_size=1,
        max_overflow=1,
        pool_timeout=READ_TIMEOUT_SECONDS,
        pool_pre_ping=True,
        connect_args={
            "connect_timeout": max(1, round(READ_TIMEOUT_SECONDS)),
            "options": f"-c statement_timeout={millis} -c default_transaction_read_only=on",
        },
    )


def figures_from(engine: Engine, now: datetime) -> Figures:
    """Read the figures in one read-only transaction (one snapshot on PostgreSQL)."""
    with engine.connect() as conn:
        try:
            return read_figures(conn, now)
        finally:
            conn.rollback()
