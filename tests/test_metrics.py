"""Ops watch the running daemon: `/metrics` for Prometheus, `maildesk status` at a terminal."""

from __future__ import annotations

import json
import smtplib
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, event, text

from maildesk.db.figures import figures_from, reader_engine
from maildesk.metrics import DaemonCollector
from tests.conftest import private_pg_database
from tests.daemon_harness import DaemonProcess, RelaySink, free_port, maildesk_env
from tests.mailfactory import make_mail

pytestmark = pytest.mark.slow

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@dataclass
class MetricsDaemon(DaemonProcess):
    """The daemon with its metrics endpoint on a free loopback port (and maybe PostgreSQL)."""

    metrics_port: int = 0
    database_url: str = ""

    def write_config(self) -> None:
        super().write_config()
        top = f'database_url = "{self.database_url}"\n' if self.database_url else ""
        metrics = f'\n[metrics]\nlisten = "127.0.0.1:{self.metrics_port}"\n'
        text_ = self.config_path.read_text(encoding="utf-8")
        self.config_path.write_text(top + text_ + metrics, encoding="utf-8")

    def wait_listening(self, timeout: float = 30) -> None:
        """The metrics endpoint opens just after the mail listeners: wait for it too."""
        super().wait_listening(timeout)
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.metrics_port), timeout=1):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    log = self.log()[-3000:]
                    raise AssertionError(f"no metrics endpoint in {timeout}s: {log}") from None
                time.sleep(0.1)

    def scrape(self) -> Samples:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            body = response.read().decode()
        return {
            (s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(body)
            for s in family.samples
        }

    def cli(self, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
        """``maildesk --config <this config> ARGS...`` as ops run it."""
        return subprocess.run(
            [sys.executable, "-m", "maildesk", "--config", str(self.config_path), *args],
            capture_output=True,
            text=stdin is None,
            input=stdin,
            timeout=120,
            check=False,
            cwd=self.workdir,
            env=maildesk_env(),
        )

    def status(self, *args: str) -> tuple[int, Any]:
        result = self.cli("status", *args)
        out = json.loads(result.stdout) if "--json" in args else result.stdout
        return result.returncode, out


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def wait_for(
    daemon: MetricsDaemon, done: Callable[[Samples], bool], timeout: float = 60
) -> Samples:
    deadline = time.monotonic() + timeout
    while True:
        samples = daemon.scrape()
        if done(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.2)


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest) -> Iterator[str]:
    """ "" for the daemon's own SQLite database, else a private PostgreSQL database."""
    if request.param == "sqlite":
        yield ""
        return
    with private_pg_database("maildesk_metrics") as url:
        yield url


@pytest.fixture
def daemon(tmp_path: Path, relay: RelaySink, database: str) -> Iterator[MetricsDaemon]:
    proc = MetricsDaemon(
        tmp_path, relay_port=relay.port, metrics_port=free_port(), database_url=database
    )
    proc.start()
    yield proc
    if proc.proc is not None and proc.proc.poll() is None:
        proc.kill()


def malformed_mail() -> bytes:
    """A header block over the parser's 256 KiB limit: stored, then held as unparseable."""
    filler = "".join(f"X-Filler-{n}: {'x' * 60}\r\n" for n in range(5000))
    return (
        "From: mallory@customer.test\r\nTo: support@example.com\r\nSubject: huge\r\n"
        f"Message-ID: <huge@customer.test>\r\n{filler}\r\nbody\r\n"
    ).encode()


def test_counters_and_gauges_follow_mail_through_the_daemon(
    daemon: MetricsDaemon, relay: RelaySink
) -> None:
    # The figures have a deadline of a few seconds: on a loaded machine, ask again.
    before = wait_for(daemon, lambda s: value(s, "maildesk_database_up") == 1)
    assert value(before, "maildesk_up") == 1
    assert value(before, "maildesk_database_up") == 1
    assert (
        value(before, "maildesk_intake_messages_total", source="smtp", outcome="stored", reason="")
        == 0
    )
    assert value(before, "maildesk_pipeline_messages_total", disposition="created") == 0

    with smtplib.SMTP("127.0.0.1", daemon.smtp_port) as client:
        client.sendmail(
            "alice@customer.test",
            ["support@example.com"],
            make_mail(message_id="metrics-1@customer.test", subject="Cannot log in"),
        )
    relay.wait_for(lambda got: any("alice@customer.test" in r.rcpt_tos for r in got))
    # The worker counts after its commit, the sender after its own: wait for both.
    after = wait_for(
        daemon,
        lambda s: (
            value(s, "maildesk_outbound_deliveries_total", result="sent") == 1
            and value(s, "maildesk_pipeline_messages_total", disposition="created") == 1
            and value(s, "maildesk_last_success_timestamp_seconds", job="outbox") is not None
            and value(s, "maildesk_database_up") == 1
        ),
    )
    assert (
        value(after, "maildesk_intake_messages_total", source="smtp", outcome="stored", reason="")
        == 1
    )
    assert value(after, "maildesk_pipeline_messages_total", disposition="created") == 1
    assert value(after, "maildesk_outbound_deliveries_total", result="sent") == 1, "the ack"
    assert value(after, "maildesk_pipeline_latency_seconds_count") == 1
    assert value(after, "maildesk_outbound_delivery_seconds_count") == 1
    assert value(after, "maildesk_tickets_open", scope="database", status="new", group="") == 1, (
        "one new ticket, counted from the database"
    )
    assert value(after, "maildesk_tickets_unassigned", scope="database", group="") == 1, (
        "nobody took it: the desk has no agents"
    )
    assert value(after, "maildesk_outbox_messages", scope="database", state="queued") == 0
    assert value(after, "maildesk_intake_pending_messages", scope="database", state="pending") == 0
    assert (value(after, "maildesk_last_success_timestamp_seconds", job="outbox") or 0) > (
        time.time() - 60
    ), "the outbox sender ran just now"

    # A stranger's address is refused; a mail the parser cannot read is held.
    with smtplib.SMTP("127.0.0.1", daemon.smtp_port) as client:
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            client.sendmail("x@customer.test", ["nobody@example.com"], make_mail())
        client.sendmail("mallory@customer.test", ["support@example.com"], malformed_mail())
    held = wait_for(
        daemon,
        lambda s: (
            value(s, "maildesk_quarantine_messages", scope="database", reason="unparseable") == 1
            and value(s, "maildesk_pipeline_messages_total", disposition="quarantined") == 1
            and value(s, "maildesk_database_up") == 1
        ),
    )
    assert value(held, "maildesk_quarantine_messages", scope="database", reason="unparseable") == 1
    assert value(held, "maildesk_pipeline_messages_total", disposition="quarantined") == 1
    assert (
        value(held, "maildesk_intake_messages_total", source="smtp", outcome="stored", reason="")
        == 2
    )
    refused = {"source": "smtp", "outcome": "refused_5xx", "reason": "not_support_address"}
    assert value(held, "maildesk_intake_messages_total", **refused) == 1
    assert value(held, "maildesk_outbound_deliveries_total", result="sent") == 1, "no ack for it"

    # `status` sees the same database, and says the held mail needs looking at.
    code, shown = daemon.status("--json")
    assert code == 1
    assert shown["schema"] == 1 and shown["healthy"] is False
    assert any("quarantine" in problem for problem in shown["problems"])
    figures = shown["database"]
    assert figures["quarantine"]["by_reason"]["unparseable"] == 1
    assert figures["quarantine"]["total"] == 1
    assert figures["tickets"]["open"] == {"new": 1, "open": 0, "pending": 0}
    assert (figures["tickets"]["unassigned"], figures["tickets"]["unassigned_by_group"]) == (
        1,
        {"": 1},
    )
    assert "1 unassigned" in daemon.status()[1]
    assert figures["intake"] == {
        "pending": 0,
        "processing": 0,
        "oldest_pending_age_seconds": None,
    }
    assert figures["outbox"]["failed"] == 0
    checked = daemon.cli("check")
    assert f"ok   metrics 127.0.0.1:{daemon.metrics_port}: a running maildesk answers" in (
        checked.stdout
    )
    assert daemon.terminate() == 0


def test_status_is_healthy_on_a_quiet_installation_and_names_what_waits(tmp_path: Path) -> None:
    daemon = MetricsDaemon(tmp_path, relay_port=free_port(), metrics_port=free_port())
    daemon.write_config()
    code, shown = daemon.status("--json")
    assert (code, shown["healthy"], shown["problems"]) == (0, True, [])
    assert set(shown) == {"schema", "at", "healthy", "problems", "database", "imap"}
    assert set(shown["database"]) == {
        "intake",
        "quarantine",
        "outbox",
        "tickets",
        "suppressed_addresses",
    }

    # Mail stored an hour ago and never processed (no daemon runs): something to look at.
    stored = daemon.cli("ingest", "--no-process", "-", stdin=make_mail(message_id="w@c.test"))
    assert stored.returncode == 0, stored.stderr
    engine = create_engine(f"sqlite:///{tmp_path / 'data' / 'maildesk.sqlite3'}")
    with engine.begin() as conn:
        an_hour_ago = (datetime.now(UTC) - timedelta(hours=1)).replace(tzinfo=None)
        conn.execute(text("UPDATE intake SET received_at = :t"), {"t": an_hour_ago})
    engine.dispose()
    code, shown = daemon.status("--json")
    assert code == 1
    assert shown["database"]["intake"]["pending"] == 1
    assert shown["database"]["intake"]["oldest_pending_age_seconds"] >= 3500
    assert any("not processed" in problem for problem in shown["problems"])
    code, out = daemon.status("--pending-minutes", "120")
    assert code == 0 and "1 pending" in out


def test_status_names_what_keeps_outbound_mail_waiting_by_the_transport(tmp_path: Path) -> None:
    """An acknowledgement due an hour ago and not sent: through a relay, the relay is to
    blame; written to a Maildir, the Maildir is (a full disk, a directory not writable)."""
    daemon = MetricsDaemon(tmp_path, relay_port=free_port(), metrics_port=free_port())
    daemon.write_config()
    stored = daemon.cli("ingest", "-", stdin=make_mail(message_id="due@c.test"))
    assert stored.returncode == 0, stored.stderr
    engine = create_engine(f"sqlite:///{tmp_path / 'data' / 'maildesk.sqlite3'}")
    with engine.begin() as conn:
        an_hour_ago = (datetime.now(UTC) - timedelta(hours=1)).replace(tzinfo=None)
        queued = conn.execute(
            text("UPDATE outbox SET next_attempt_at = :t WHERE state = 'queued'"),
            {"t": an_hour_ago},
        ).rowcount
    engine.dispose()
    assert queued == 1  # the acknowledgement
    code, shown = daemon.status("--json")
    [due] = [p for p in shown["problems"] if p.startswith("outbound mail due")]
    assert code == 1 and "the relay refuses or cannot be reached" in due

    config = daemon.config_path.read_text().replace('transport = "smtp"', 'transport = "maildir"')
    daemon.config_path.write_text(config)
    code, shown = daemon.status("--json")
    [due] = [p for p in shown["problems"] if p.startswith("outbound mail due")]
    maildir = tmp_path / "data" / "outbox-maildir"
    assert code == 1 and f"the Maildir {maildir} cannot be written" in due


@pytest.mark.parametrize(
    ("listen", "reason"),
    [
        ("10.1.2.3:9477", "reachable from other machines"),
        ("127.0.0.1", "is not host:port"),
        ("127.0.0.1:70000", "not between 1 and 65535"),
        ("metrics.example.com:9477", "not an IP address"),
    ],
)
def test_a_bad_metrics_address_is_refused_naming_the_key(
    tmp_path: Path, listen: str, reason: str
) -> None:
    daemon = MetricsDaemon(tmp_path, relay_port=free_port(), metrics_port=1)
    daemon.write_config()
    config = daemon.config_path.read_text().replace("127.0.0.1:1", listen)
    daemon.config_path.write_text(config)
    result = daemon.cli("run")
    assert result.returncode == 78, result.stderr
    assert "metrics.listen" in result.stderr and reason in result.stderr


def test_a_metrics_port_in_use_stops_the_start_for_a_retry(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        daemon = MetricsDaemon(tmp_path, relay_port=free_port(), metrics_port=port)
        daemon.write_config()
        result = daemon.cli("run")
        checked = daemon.cli("check")
    assert result.returncode == 75, result.stderr
    assert f"metrics.listen: cannot listen on 127.0.0.1:{port}" in result.stderr
    # `maildesk check` says so beforehand (and knows a running maildesk's endpoint).
    assert checked.returncode == 1
    assert f"FAIL metrics 127.0.0.1:{port}: cannot bind" in checked.stdout


def test_a_scrape_answers_in_seconds_when_the_database_does_not() -> None:
    """A server that takes the connection and never says a word: the scrape still answers."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        engine = reader_engine(f"postgresql+psycopg://maildesk@127.0.0.1:{port}/maildesk")
        collector = DaemonCollector(engine, lambda: datetime.now(UTC), "node-a")
        started = time.monotonic()
        families = {f.name: f for f in collector.collect()}
        again = {f.name: f for f in collector.collect()}  # while the first read still hangs
        took = time.monotonic() - started
        collector.close()
    assert took < 10
    assert families["maildesk_database_up"].samples[0].value == 0
    assert again["maildesk_database_up"].samples[0].value == 0
    assert families["maildesk_up"].samples[0].value == 1
    assert "maildesk_tickets_open" not in families, "no figures rather than wrong ones"


# -- the figures' queries read indexes, not whole tables -------------------------------
@pytest.mark.postgres
def test_the_figures_read_indexes_on_postgres() -> None:
    """At scale a scrape must not read every ticket, intake row or outbox row ever made."""
    n = 20000
    with private_pg_database("maildesk_figures") as url:
        engine = create_engine(url)
        with engine.begin() as conn:
            for statement in (
                "INSERT INTO blobs SELECT md5(g::text), 1, 'x' FROM generate_series(1, :n) g",
                "INSERT INTO tickets (id, number, subject, normalized_subject, status, priority,"
                ' created_at, updated_at, support_addresses, tags, possible_spam, "group")'
                " SELECT g, g, 's', 's' || g, CASE WHEN g % 100 = 0 THEN 'open' ELSE 'closed' END,"
                " 'normal', now(), now(), '[]', '[]', false, 'g' || (g % 5)"
                " FROM generate_series(1, :n) g",
                "INSERT INTO intake (received_at, source, source_ref, envelope_to, raw_sha256,"
                " size, state, attempts, ticket_id, quarantine_reason) SELECT now(), 'smtp', '',"
                " '[]', md5(g::text), 1, CASE WHEN g % 1000 = 0 THEN 'pending'"
                " WHEN g % 10 = 5 OR g % 1000 = 7 THEN 'quarantined' ELSE 'done' END, 1, g,"
                " CASE WHEN g % 10 = 5 THEN 'spam: p=0.99' WHEN g % 1000 = 7"
                " THEN 'cannot parse: empty message' END"
                " FROM generate_series(1, :n) g",
                "INSERT INTO outbox (created_at, ticket_id, purpose, message_id, envelope_from,"
                " recipients, recipient_key, raw_sha256, state, attempts, next_attempt_at)"
                " SELECT now(), g, 'ack', 'o' || g, 'a@x', '[]', 'k', md5(g::text),"
                " CASE WHEN g % 1000 = 0 THEN 'queued' ELSE 'sent' END, 1, now()"
                " FROM generate_series(1, :n) g",
                "INSERT INTO sla_targets (ticket_id, target, instance, policy, status, started_at,"
                " due_at, breached, elapsed_minutes, target_minutes, computed_at)"
                " SELECT g, 'resolution', 0, 'p', CASE WHEN g % 1000 = 0 THEN 'running'"
                " ELSE 'satisfied' END, now(), now() - interval '1 hour', false, 0, 0, now()"
                " FROM generate_series(1, :n) g",
            ):
                conn.execute(text(statement), {"n": n})
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("ANALYZE"))
        engine.dispose()

        reader = reader_engine(url)
        sent: list[tuple[str, Any]] = []

        def grab(_c: Any, _cur: Any, statement: str, params: Any, _ctx: Any, _many: bool) -> None:
            sent.append((statement, params))

        event.listen(reader, "before_cursor_execute", grab)
        figures = figures_from(reader, datetime.now(UTC))
        event.remove(reader, "before_cursor_execute", grab)
        with reader.connect() as conn:
            plans = {
                statement: "\n".join(r[0] for r in conn.exec_driver_sql(f"EXPLAIN {statement}", p))
                for statement, p in sent
                if statement.lstrip().upper().startswith("SELECT")
            }
        reader.dispose()
    assert figures.open_by_status()["open"] == n // 100
    assert figures.intake_pending == n // 1000
    assert figures.outbox_deferred == n // 1000
    scans = [s for s, plan in plans.items() if "Seq Scan" in plan]
    assert figures.tickets_past_sla_due == n // 1000
    assert figures.quarantine["spam"] == n // 10
    assert figures.quarantine["unparseable"] == n // 1000
    assert figures.quarantined == n // 10 + n // 1000
    # Suppressions: one row per bounced address, not per mail; read whole, it stays small.
    assert [s for s in scans if "FROM suppressions" not in s] == []


def test_each_imap_folder_says_whether_it_is_read() -> None:
    from maildesk.intake.imap import FolderHealth, FolderStatus
    from maildesk.metrics import imap_families

    folders = [
        FolderHealth("support", "INBOX", FolderStatus.IDLE, last_ok_at="2026-12-01T10:00:00+00:00"),
        FolderHealth("support", "Junk", FolderStatus.BACKOFF, "login refused", 4),
    ]
    families = {f.name: f for f in imap_families(folders)}
    up = {s.labels["folder"]: s.value for s in families["maildesk_imap_folder_up"].samples}
    assert up == {"INBOX": 1, "Junk": 0}
    failures = families["maildesk_imap_folder_consecutive_failures"].samples
    assert {s.labels["folder"]: s.value for s in failures} == {"INBOX": 0, "Junk": 4}
    last_ok = families["maildesk_imap_folder_last_success_timestamp_seconds"].samples
    assert last_ok[0].value == datetime(2026, 12, 1, 10, tzinfo=UTC).timestamp()
    assert list(imap_families([])) == [], "no IMAP configured: no IMAP metrics"
