"""Shared fixtures: an App on SQLite and on PostgreSQL, a frozen clock, the corpus."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import create_engine, text

from maildesk.app import App
from maildesk.config import Settings
from maildesk.db.database import Database
from maildesk.db.models import Base
from tests.daemon_harness import RelaySink

REPO = Path(__file__).resolve().parents[1]
PG_ADMIN_URL = os.environ.get(
    "MAILDESK_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def corpus_dir() -> Path:
    env = os.environ.get("MAILDESK_CORPUS")
    return Path(env) if env else (REPO.parent / "shared" / "corpus").resolve()


@pytest.fixture(scope="session")
def corpus() -> Path:
    path = corpus_dir()
    if not path.is_dir():
        pytest.skip(f"mail corpus not found at {path} (set MAILDESK_CORPUS)")
    return path


class FrozenClock:
    """An injected clock tests move by hand."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kwargs: float) -> None:
        self.now += timedelta(**kwargs)


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(datetime(2026, 3, 2, 9, 0, tzinfo=UTC))


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "maildesk.sqlite3"
    db = Database(f"sqlite:///{path}")
    db.upgrade()
    db.dispose()
    return path


@contextlib.contextmanager
def private_pg_database(prefix: str, *, migrate: bool = True) -> Iterator[str]:
    """A PostgreSQL database of its own on the local server, dropped afterwards; migrated
    to the current schema unless ``migrate`` is False (then it has no schema at all).

    Skips the test where no server answers, except in CI, where that is a failure.
    """
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
            # The tests never crash the server, so a commit need not wait for its
            # WAL to reach the disk (it is as atomic and as visible as before).
            conn.execute(text(f'ALTER DATABASE "{name}" SET synchronous_commit = off'))
    except Exception as exc:  # pragma: no cover - depends on the machine
        admin.dispose()
        if os.environ.get("CI"):
            raise
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN_URL}: {exc}")
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    if migrate:
        db = Database(url)
        db.upgrade()
        db.dispose()
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A private PostgreSQL database for this test session, migrated once."""
    with private_pg_database("maildesk_test") as url:
        yield url


def _empty_all_tables(url: str) -> None:
    """Every table emptied and every id counter back at 1, as ``TRUNCATE ... RESTART
    IDENTITY`` leaves them, at a hundredth of its cost for the few rows a test leaves
    (TRUNCATE gives every table and index a new file). The foreign-key triggers are
    off while it deletes (``session_replication_role``): each would look up every
    deleted row's referrers, and after a test that left many rows that took minutes.
    """
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("SET LOCAL session_replication_role = replica")
        conn.exec_driver_sql(
            "; ".join(f"DELETE FROM {table.name}" for table in Base.metadata.sorted_tables)
        )
        conn.exec_driver_sql("SELECT setval(oid, 1, false) FROM pg_class WHERE relkind = 'S'")
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path) -> str:
    if request.param == "sqlite":
        path = tmp_path / "maildesk.sqlite3"
        shutil.copy(sqlite_template, path)
        return f"sqlite:///{path}"
    url: str = request.getfixturevalue("pg_url")
    _empty_all_tables(url)
    return url


def write_cli_config(
    path: Path, data_dir: Path, database_url: str, extra: str = "", secret: str = "cli-test"
) -> Path:
    """A minimal maildesk.toml for running the CLI against the test database."""
    path.write_text(
        f'data_dir = "{data_dir}"\ndatabase_url = "{database_url}"\n'
        f'support_addresses = ["support@example.com"]\ninstallation_secret = "{secret}"\n' + extra
    )
    return path


def make_settings(tmp_path: Path, database_url: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "data_dir": tmp_path / "data",
        "database_url": database_url,
        "support_addresses": ("support@example.com", "billing@example.com"),
        "mail_domain": "example.com",
        "installation_secret": "test-secret",
    }
    values.update(overrides)
    return Settings.model_validate(values)


@pytest.fixture
def app(tmp_path: Path, database_url: str, clock: FrozenClock) -> Iterator[App]:
    application = App.build(make_settings(tmp_path, database_url), clock=clock)
    yield application
    application.db.dispose()


@pytest.fixture
def mta_trusting_app(tmp_path: Path, database_url: str, clock: FrozenClock) -> Iterator[App]:
    """An app with agents that believes the Authentication-Results of mx.example.com."""
    from tests.agents.agenthelp import agent_app  # agenthelp imports this module

    application = agent_app(
        tmp_path, database_url, clock, agent_mail={"trusted_authserv_ids": ["mx.example.com"]}
    )
    yield application
    application.db.dispose()


@pytest.fixture
def relay() -> Iterator[RelaySink]:
    """A real SMTP server on loopback standing in for the outbound relay (daemon tests)."""
    sink = RelaySink().start()
    yield sink
    sink.stop()


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key, for a listener's STARTTLS."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def command_beside(
    app: App,
    tmp_path: Path,
    clock: FrozenClock,
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    extra_config: str = "",
) -> tuple[threading.Thread, list[Result]]:
    """A ``maildesk`` command, as ops would run it beside the daemon, in a thread
    the test starts: the same installation (database, secret; node_name unset, so
    the host's name), on the test's clock. The result is appended to the list."""
    from maildesk.cli import main

    config = tmp_path / "maildesk.toml"
    config.write_text(
        f'data_dir = "{tmp_path / "cli-data"}"\n'
        f'database_url = "{app.settings.database_url}"\n'
        'support_addresses = ["support@example.com"]\n'
        'installation_secret = "test-secret"\n' + extra_config
    )
    build = App.build.__func__  # type: ignore[attr-defined]
    monkeypatch.setattr(
        App, "build", classmethod(lambda cls, settings: build(cls, settings, clock))
    )
    results: list[Result] = []
    command = threading.Thread(
        target=lambda: results.append(CliRunner().invoke(main, ["--config", str(config), *args]))
    )
    return command, results
