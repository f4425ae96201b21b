"""Engine, sessions and schema management (Alembic migrations shipped in the package)."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from psycopg import OperationalError as PgOperationalError
from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.exc import DBAPIError, OperationalError, StatementError
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


class SchemaOutOfDate(Exception):
    """The database schema is older (or newer) than this maildesk expects."""


class SchemaTooNew(SchemaOutOfDate):
    """The database was upgraded by a newer maildesk: this one must not touch it."""


class StorageUnavailable(Exception):
    """The database cannot be reached or is locked: a temporary failure, retry later."""


# The most of an error's own words a quarantine reason or an intake's last error keeps.
MAX_ERROR_SUMMARY = 200


def error_summary(exc: BaseException, limit: int = MAX_ERROR_SUMMARY) -> str:
    """``exc`` in one short line: its class and the first line of its message.

    For a reason ops read (quarantine, an intake's last error): SQLAlchemy's text
    of a failed statement carries the SQL and its parameters, the customer's
    text, and a driver's detail lines may quote values too, so only the first
    line of the driver's own message is kept. The traceback goes to the log only.
    """
    inner = exc.orig if isinstance(exc, StatementError) and exc.orig is not None else None
    name = type(exc).__name__
    if inner is not None:
        name = f"{name} ({type(inner).__name__})"
    text = str(inner if inner is not None else exc)
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    summary = f"{name}: {first}" if first else name
    return summary if len(summary) <= limit else summary[: limit - 1].rstrip() + "\u2026"


def is_transient(exc: BaseException) -> bool:
    """True for database errors worth trying again later (down, locked, busy, timed out).

    Wider than :func:`is_unavailable`: an ``OperationalError`` such as a statement
    timeout may well be this message's doing, so it is retried, but counted.
    """
    if is_unavailable(exc) or isinstance(exc, OperationalError):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


# SQLSTATE classes of a PostgreSQL server that cannot do any work now, whatever was
# asked: connection exception (08), insufficient resources (53), operator intervention
# (57: shut down, terminated, starting up), system error (58). Not 57014, a statement
# cancelled or timed out, which the statement itself may have earned.
_PG_UNAVAILABLE_CLASSES = frozenset({"08", "53", "57", "58"})
_PG_NOT_UNAVAILABLE = frozenset({"57014"})
# SQLite result codes of a database that is locked by another process or that the
# file system fails: BUSY, LOCKED, NOMEM, IOERR, FULL, CANTOPEN, PROTOCOL.
_SQLITE_UNAVAILABLE = frozenset({5, 6, 7, 10, 13, 14, 15})


def is_unavailable(exc: BaseException) -> bool:
    """True when the database cannot be used at all now: down, restarted, unreachable,
    its connection killed, or (SQLite) locked by another process or failing on disk.

    Nobody's fault, and never the message's: the work is retried later and does
    not count as one of the message's attempts (MAIL-RULES §1).
    """
    if isinstance(exc, StorageUnavailable):
        return True
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    orig = exc.orig if isinstance(exc, DBAPIError) else exc
    if isinstance(orig, PgOperationalError):
        state = orig.sqlstate
        # No SQLSTATE: the connection failed before the server answered anything.
        return state is None or (
            state[:2] in _PG_UNAVAILABLE_CLASSES and state not in _PG_NOT_UNAVAILABLE
        )
    if isinstance(orig, sqlite3.OperationalError):
        code = getattr(orig, "sqlite_errorcode", None)
        return code is not None and code & 0xFF in _SQLITE_UNAVAILABLE
    return False


# SQLSTATEs of a transaction PostgreSQL failed because of another one: a deadlock
# (40P01), a serialization failure (40001), a lock not available (55P03).
LOCK_CONFLICTS = frozenset({"40P01", "40001", "55P03"})


def is_lock_conflict(exc: BaseException) -> bool:
    """True when another transaction made this one fail (a deadlock PostgreSQL broke).

    Nobody's fault and over once either side commits: the work, rolled back
    whole, is done again at once, and never counts as the message's failure.
    """
    orig = exc.orig if isinstance(exc, DBAPIError) else exc
    return getattr(orig, "sqlstate", None) in LOCK_CONFLICTS


T = TypeVar("T")


def retry_on_lock_conflict(
    work: Callable[[], T],
    *,
    attempts: int,
    what: str,
    also: tuple[type[Exception], ...] = (),
    before_again: Callable[[], None] | None = None,
) -> T:
    """``work()``, done again at once when it loses a lock conflict (or raises one of ``also``).

    ``work`` must run its own transaction, so a lost one was rolled back whole;
    ``before_again`` forgets what the lost try decided. The last try's error is raised.
    """
    for attempt in range(1, attempts + 1):
        try:
            return work()
        except Exception as exc:
            if attempt == attempts or not (is_lock_conflict(exc) or isinstance(exc, also)):
                raise
            logging.getLogger("maildesk.db").info(
                "%s lost a conflict with another writer, again (%d): %s",
                what,
                attempt,
                str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
            )
            if before_again is not None:
                before_again()
    raise AssertionError("unreachable")


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    # FULL: a committed intake row survives power loss, which is what lets us say 250.
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _sqlite_begin(conn: Any) -> None:
    # Take the write lock at BEGIN so two writers queue on busy_timeout instead
    # of failing with "database is locked" when a read upgrades to a write.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


class Database:
    """One engine and its session factory; built by the composition root."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        if self.is_sqlite:
            path = url.split("///", 1)[1] if "///" in url else ""
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            engine = create_engine(
                url, echo=echo, connect_args={"timeout": 30, "isolation_level": None}
            )
            event.listen(engine, "connect", _sqlite_pragmas)
            event.listen(engine, "begin", _sqlite_begin)
        else:
            engine = create_engine(url, echo=echo, pool_pre_ping=True, pool_size=5)
        self.engine: Engine = engine
        self.sessions = sessionmaker(engine, expire_on_commit=False)

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session in one transaction: committed on success, rolled back on error."""
        with self.sessions() as session, session.begin():
            yield session

    def alembic_config(self) -> AlembicConfig:
        cfg = AlembicConfig()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
        cfg.attributes["engine"] = self.engine
        return cfg

    def head_revision(self) -> str | None:
        return ScriptDirectory.from_config(self.alembic_config()).get_current_head()

    def known_revisions(self) -> set[str]:
        """Every revision this maildesk's migrations know."""
        script = ScriptDirectory.from_config(self.alembic_config())
        return {rev.revision for rev in script.walk_revisions()}

    def current_revision(self) -> str | None:
        try:
            with self.engine.connect() as conn:
                return MigrationContext.configure(conn).get_current_revision()
        except OperationalError as exc:
            raise StorageUnavailable(f"database unavailable: {exc.orig}") from exc

    def _refuse_newer(self, current: str | None) -> None:
        if current is not None and current not in self.known_revisions():
            raise SchemaTooNew(
                f"database schema is at {current}, newer than this maildesk (which knows up "
                f"to {self.head_revision()}): a newer maildesk upgraded it; run that version "
                "(this one cannot use or downgrade it)"
            )

    def is_empty(self) -> bool:
        with self.engine.connect() as conn:
            return not inspect(conn).get_table_names()

    def upgrade(self) -> None:
        """Migrate to head (one transaction; on PostgreSQL one node at a time)."""
        self._refuse_newer(self.current_revision())  # StorageUnavailable when it is down
        command.upgrade(self.alembic_config(), "head")

    def ensure_schema(self, *, initialise_empty: bool = True) -> str | None:
        """Refuse to run on an out-of-date schema; create it on an empty database.

        Returns a note for the log when it initialised the schema.
        """
        try:
            if initialise_empty and self.is_empty():
                self.upgrade()
                return "initialised an empty database to the current schema"
            current, head = self.current_revision(), self.head_revision()
        except OperationalError as exc:
            raise StorageUnavailable(f"database unavailable: {exc.orig}") from exc
        self._refuse_newer(current)
        if current != head:
            raise SchemaOutOfDate(
                f"database schema is at {current or 'no revision'}, this maildesk needs {head}: "
                "run `maildesk db upgrade`"
            )
        return None

    def dispose(self) -> None:
        self.engine.dispose()
