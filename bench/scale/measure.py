"""Time every read command and periodic daemon query of maildesk on a big PostgreSQL database.

Usage: .venv/bin/python bench/scale/measure.py [--scale 0.2] [--url URL] [--explain] [--only TEXT]

Without --url a private database is created on the local server
(MAILDESK_TEST_PG_URL, default postgres@127.0.0.1:5432), filled by
bench/scale/fill.sql with ``scale`` x (1M tickets, 2M messages, 5M events,
200k intake rows of which 20k quarantined, 500k outbox rows), measured and
dropped. At the default scale 0.2 that takes about a minute. Prints per
command: wall time, statements, the slowest statement with its time and the
rows it returned, and (with --explain) whether its plan reads a big table
whole (Seq Scan). Each command is cut off after 120 s (reported as TIMEOUT).
``--only`` measures just the commands and jobs whose name contains the text.

The SLA sweep is measured as two whole passes over every ticket it walks, in
one transaction rolled back after them: the first fires every escalation due
(a catch-up after downtime), the second finds them fired (the daemon's steady
state, every ``sla.sweep_interval_seconds``).
"""

from __future__ import annotations

import argparse
import os
import signal
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from string import Template
from typing import Any
from urllib.parse import urlsplit

from click.testing import CliRunner
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine

ADMIN_URL = os.environ.get(
    "MAILDESK_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
HERE = Path(__file__).resolve().parent
LIMIT_SECONDS = 120
BIG = ("tickets", "messages", "events", "intake", "outbox", "sla_targets", "participants")


@dataclass
class Statement:
    sql: str
    params: Any
    seconds: float
    rows: int


@dataclass
class Recorder:
    statements: list[Statement] = field(default_factory=list)
    on: bool = False

    def before(
        self, conn: Any, cursor: Any, sql: str, params: Any, context: Any, many: bool
    ) -> None:
        conn.info["bench_t0"] = time.perf_counter()

    def after(
        self, conn: Any, cursor: Any, sql: str, params: Any, context: Any, many: bool
    ) -> None:
        if self.on and not sql.lstrip().upper().startswith(("EXPLAIN", "SAVEPOINT", "RELEASE")):
            took = time.perf_counter() - conn.info.pop("bench_t0", time.perf_counter())
            self.statements.append(Statement(sql, params, took, max(cursor.rowcount, 0)))


RECORDER = Recorder()
event.listen(Engine, "before_cursor_execute", RECORDER.before)
event.listen(Engine, "after_cursor_execute", RECORDER.after)


class Timeout(Exception):
    pass


@contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    def expire(_signum: int, _frame: Any) -> None:
        raise Timeout

    old = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def fill(url: str, scale: float) -> None:
    counts = {"nt": 1_000_000, "nm": 2_000_000, "ne": 5_000_000}
    counts |= {"ni": 200_000, "no": 500_000, "nc": 200_000}
    values = {key: str(max(10, int(n * scale))) for key, n in counts.items()}
    script = Template((HERE / "fill.sql").read_text()).substitute(values)
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        raw = conn.connection.driver_connection
        assert raw is not None
        for statement in script.split(";\n"):
            if statement.strip():
                raw.execute(statement)
    engine.dispose()


def seq_scans(url: str, stmt: Statement) -> tuple[list[str], float | None]:
    """Big tables the plan of ``stmt`` reads whole, and its execution time in ms."""
    sql = stmt.sql.strip()
    if not sql.upper().startswith("SELECT"):
        return [], None
    engine = create_engine(url)
    with engine.connect() as conn:
        raw = conn.connection.driver_connection
        assert raw is not None
        try:
            plan = raw.execute(
                "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql, stmt.params or None
            ).fetchone()[0][0]
        finally:
            raw.rollback()
    engine.dispose()
    found: list[str] = []

    def walk(node: dict[str, Any]) -> None:
        if node.get("Node Type") == "Seq Scan" and node.get("Relation Name") in BIG:
            found.append(node["Relation Name"])
        for child in node.get("Plans", []):
            walk(child)

    walk(plan["Plan"])
    return found, plan.get("Execution Time")


def measure(url: str, name: str, run: Callable[[], Any], explain: bool) -> str:
    RECORDER.statements.clear()
    RECORDER.on = True
    started = time.perf_counter()
    outcome = "ok"
    try:
        with time_limit(LIMIT_SECONDS):
            run()
    except Timeout:
        outcome = "TIMEOUT"
    finally:
        RECORDER.on = False
    took = time.perf_counter() - started
    stmts = [s for s in RECORDER.statements if s.sql.strip().upper().startswith(("SELECT", "WITH"))]
    slow = max(stmts, key=lambda s: s.seconds, default=None)
    line = f"{name:<34} {took:8.2f}s {outcome:<7} {len(RECORDER.statements):>6} stmts"
    if slow is not None:
        line += f"  slowest {slow.seconds * 1000:9.1f} ms, {slow.rows:>8} rows"
        if explain:
            scans, _ms = seq_scans(url, slow)
            line += "  seq scan: " + (",".join(scans) if scans else "-")
        line += "  " + " ".join(slow.sql.split())[:110]
    print(line, flush=True)
    return outcome


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scale", type=float, default=0.2)
    parser.add_argument("--url", default=None, help="an already filled database (kept)")
    parser.add_argument("--explain", action="store_true")
    parser.add_argument("--only", default="", help="measure only names containing this")
    args = parser.parse_args()
    host = urlsplit(ADMIN_URL.replace("+psycopg", "")).hostname
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit(f"{ADMIN_URL}: loopback servers only")
    name = None
    url = args.url
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    if url is None:
        name = f"maildesk_scale_{uuid.uuid4().hex[:8]}"
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        url = ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        run_all(url, args, fill_first=name is not None)
    finally:
        if name is not None:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def run_all(url: str, args: argparse.Namespace, *, fill_first: bool) -> None:
    from maildesk.app import App
    from maildesk.cli import main as cli
    from maildesk.config import Settings
    from maildesk.db.database import Database

    if fill_first:
        started = time.perf_counter()
        db = Database(url)
        db.upgrade()
        db.dispose()
        fill(url, args.scale)
        print(f"filled at scale {args.scale} in {time.perf_counter() - started:.0f}s", flush=True)
    tmp = Path(tempfile.mkdtemp())
    config = tmp / "maildesk.toml"
    config.write_text(
        f'data_dir = "{tmp / "data"}"\ndatabase_url = "{url}"\n'
        'support_addresses = ["support@example.com"]\ninstallation_secret = "bench"\n'
        '[spam]\ndigest_to = "ops@example.com"\nretention_days = 30\n'
        '[sla]\ndefault_policy = "p"\n[[sla.policies]]\nname = "p"\n'
        'first_response = { minutes = 240, calendar = "24x7" }\n'
        'resolution = { minutes = 2700, calendar = "24x7" }\n'
        '[calendars.24x7]\ntimezone = "UTC"\n'
        'hours = { mon = "00:00-24:00", tue = "00:00-24:00", wed = "00:00-24:00" }\n'
    )
    runner = CliRunner()

    def command(*argv: str) -> Callable[[], Any]:
        def run() -> None:
            result = runner.invoke(cli, ["--config", str(config), *argv], catch_exceptions=True)
            if result.exception is not None and not isinstance(result.exception, SystemExit):
                raise result.exception
            if result.exit_code != 0:
                print(f"  exit {result.exit_code}: {result.output[-300:]}")

        return run

    for argv in (
        ("tickets", "list"),
        ("tickets", "list", "--status", "open"),
        ("tickets", "list", "--overdue"),
        ("tickets", "show", "777"),
        ("quarantine", "list"),
        ("quarantine", "show", "20"),
        ("outbox", "list"),
        ("outbox", "list", "--state", "failed"),
        ("spam", "status"),
        ("db", "status"),
        ("report", "volume"),
        ("report", "agents"),
        ("report", "sla"),
        ("explain", "i770@mail.example.org"),
        ("status",),
    ):
        if args.only in " ".join(argv):
            measure(url, " ".join(argv), command(*argv), args.explain)

    settings = Settings.model_validate(
        {
            "data_dir": tmp / "data",
            "database_url": url,
            "installation_secret": "bench",
            "support_addresses": ["support@example.com"],
            "calendars": {"24x7": {"timezone": "UTC", "hours": {"mon": "00:00-24:00"}}},
            "spam": {"digest_to": "ops@example.com", "retention_days": 30},
            "sla": {
                "default_policy": "p",
                "policies": [
                    {
                        "name": "p",
                        "first_response": {"minutes": 240, "calendar": "24x7"},
                        "resolution": {"minutes": 2700, "calendar": "24x7"},
                    }
                ],
            },
        }
    )
    now = datetime.now(UTC)
    app = App.build(settings, clock=lambda: now)
    jobs = daemon_jobs(app, now)
    for job_name, job in jobs.items():
        if args.only in job_name:
            measure(url, job_name, job, args.explain)
    if args.only in "job: sla sweep":
        sweep_passes(app, url, args.explain)
    app.db.dispose()


def sweep_passes(app: Any, url: str, explain: bool) -> None:
    """Two whole SLA sweep passes in one transaction, rolled back after both."""
    from sqlalchemy.orm import Session

    from maildesk.sla.sweep import SlaSweeper

    sweeper = SlaSweeper.for_app(app)

    def one_pass(session: Session) -> Callable[[], Any]:
        def run() -> None:
            after, tickets, fired = 0, 0, 0
            closed = sweeper._closed_with_live_targets(session)
            while batch := sweeper._claim_batch(session, after, closed):
                after = batch[-1].id
                result = sweeper._sweep_batch(session, batch)
                tickets, fired = tickets + result.tickets, fired + result.fired
            print(f"  ({tickets} tickets, {fired} escalations fired)", flush=True)

        return run

    with Session(app.db.engine) as session:
        outcome = measure(url, "job: sla sweep (catch-up pass)", one_pass(session), explain)
        if outcome == "ok":
            outcome = measure(url, "job: sla sweep (next pass)", one_pass(session), explain)
        if outcome == "ok":
            session.rollback()
        else:  # cut off inside a statement: drop the connection (the server rolls back)
            session.connection().invalidate()


def daemon_jobs(app: Any, now: datetime) -> dict[str, Callable[[], Any]]:
    """The periodic queries of `maildesk run`, each in a transaction rolled back after it."""
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from maildesk import shared_models
    from maildesk.db.figures import figures_from, reader_engine
    from maildesk.db.models import Blob, Intake
    from maildesk.intake import oversize
    from maildesk.sla.sweep import SlaSweeper
    from maildesk.spam.quarantine import digest_window, expire_spam, held_spam

    def rolled_back(work: Callable[[Session], Any]) -> Callable[[], Any]:
        def run() -> None:
            with Session(app.db.engine) as session:
                work(session)
                session.rollback()

        return run

    sweeper = SlaSweeper.for_app(app)
    reader = reader_engine(app.settings.effective_database_url)  # the scrape's own engine
    since, until, _day = digest_window(app.settings, now)
    refs = [f"support/INBOX/1/{uid}" for uid in range(1, 101)]
    catch_up = (
        select(Intake.source_ref)
        .join(Blob, Blob.sha256 == Intake.raw_sha256)
        .where(Intake.source == "imap", Intake.source_ref.in_(refs))
    )
    return {
        "job: sla sweep candidates": rolled_back(lambda s: sweeper._claim_batch(s, 0)),
        "job: spam digest": rolled_back(lambda s: held_spam(s, since, until)),
        "job: spam expiry": rolled_back(lambda s: expire_spam(s, now, 30)),
        "job: pipeline claim": lambda: app.worker("bench").claim(),
        "job: outbox claim": lambda: app.sender("bench")._claim(50),
        "job: shared-model pull": lambda: shared_models.pull(
            app.db, app.settings.data_dir / "spam-live.npz"
        ),
        "job: oversize notices": rolled_back(lambda s: oversize.pending(s, now)),
        "job: imap catch-up": rolled_back(lambda s: s.execute(catch_up).all()),
        "scrape: metrics figures": lambda: figures_from(reader, now),
    }


if __name__ == "__main__":
    main()
