"""Schema upgrades as ops meet them: old databases with mail in them, several
nodes starting at once, a database newer than the package, the lookups the
hot paths need indexed on PostgreSQL."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from click.testing import CliRunner
from sqlalchemy import MetaData, create_engine, event, exc, insert, text
from sqlalchemy.orm import Session

from maildesk.cli import main
from maildesk.db import queries
from maildesk.db.database import Database
from maildesk.db.models import Base, IntakeState, Ticket
from tests.conftest import REPO, private_pg_database, write_cli_config
from tests.mailfactory import make_mail

AT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def empty_pg_database() -> contextlib.AbstractContextManager[str]:
    """A PostgreSQL database of its own with no schema at all, dropped afterwards."""
    return private_pg_database("maildesk_empty", migrate=False)


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'maildesk.sqlite3'}"
        return
    with empty_pg_database() as url:
        yield url


def migrate_to(url: str, revision: str) -> None:
    db = Database(url)
    command.upgrade(db.alembic_config(), revision)
    db.dispose()


def schema_diff(url: str) -> list[Any]:
    engine = create_engine(url)
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": False})
        diff = compare_metadata(context, Base.metadata)
    engine.dispose()
    return diff


def cli(tmp_path: Path, url: str, *args: str) -> tuple[int, str]:
    config = write_cli_config(tmp_path / "maildesk.toml", tmp_path / "data", url)
    result = CliRunner().invoke(main, ["--config", str(config), *args])
    return result.exit_code, result.output + (repr(result.exception) if result.exception else "")


# -- a database at an old revision, with mail in it ---------------------------------
def fill_at_0002(url: str) -> None:
    """Rows as maildesk 0002 wrote them: a ticket with its mail, intake, outbox, events."""
    engine = create_engine(url)
    tables = MetaData()
    tables.reflect(engine)
    rows: list[tuple[str, dict[str, Any]]] = [
        ("blobs", {"sha256": "a" * 64, "size": 3, "data": b"raw"}),
        ("contacts", {"id": 1, "email": "alice@example.org", "name": "Alice", "created_at": AT}),
        ("tickets", {
            "id": 1, "number": 7, "subject": "Printer on fire", "normalized_subject": "printer on fire",
            "status": "open", "priority": "high", "requester_id": 1, "created_at": AT,
            "updated_at": AT, "support_addresses": ["support@example.com"],
        }),
        ("tickets", {
            "id": 2, "number": 8, "subject": "Again", "normalized_subject": "again",
            "status": "closed", "priority": "normal", "requester_id": 1, "created_at": AT,
            "updated_at": AT, "support_addresses": [],
        }),
        ("ticket_links", {
            "id": 1, "ticket_id": 2, "other_ticket_id": 1, "kind": "follow_up_of", "created_at": AT,
        }),
        ("messages", {
            "id": 1, "ticket_id": 1, "dedupe_key": "<fire@example.org>",
            "header_message_id": "<fire@example.org>", "direction": "inbound", "kind": "customer",
            "from_addr": "alice@example.org", "from_name": "Alice", "to_addrs": ["support@example.com"],
            "cc_addrs": [], "delivered_to": [], "subject": "Printer on fire", "text_body": "Help",
            "raw_sha256": "a" * 64, "created_at": AT,
        }),
        ("known_message_ids", {
            "id": 1, "message_id": "<fire@example.org>", "ticket_id": 1, "origin": "inbound",
        }),
        ("intake", {
            "id": 1, "received_at": AT, "source": "smtp", "source_ref": "", "envelope_to": [],
            "raw_sha256": "a" * 64, "size": 3, "header_message_id": "<fire@example.org>",
            "state": "done", "disposition": "created", "attempts": 1, "message_pk": 1, "ticket_id": 1,
        }),
        ("intake", {
            "id": 2, "received_at": AT, "source": "lmtp", "source_ref": "", "envelope_to": [],
            "raw_sha256": "a" * 64, "size": 3, "state": "pending", "attempts": 0,
        }),
        ("outbox", {
            "id": 1, "created_at": AT, "ticket_id": 1, "message_pk": 1, "purpose": "ack",
            "message_id": "<ack@example.com>", "envelope_from": "support@example.com",
            "recipients": ["alice@example.org"], "recipient_key": "alice@example.org",
            "raw_sha256": "a" * 64, "state": "queued", "attempts": 0, "next_attempt_at": AT,
        }),
        ("events", {
            "id": 1, "at": AT, "kind": "threading", "ticket_id": 1, "intake_id": 1,
            "message_pk": 1, "reason": "new ticket", "data": {"rule": 7},
        }),
    ]  # fmt: skip
    with engine.begin() as conn:
        for table, values in rows:
            conn.execute(insert(tables.tables[table]).values(**values))
    engine.dispose()


def test_db_upgrade_keeps_the_mail_of_an_old_database(empty_url: str, tmp_path: Path) -> None:
    migrate_to(empty_url, "0002")
    fill_at_0002(empty_url)

    code, output = cli(tmp_path, empty_url, "db", "upgrade")

    head = Database(empty_url).head_revision()
    assert code == 0, output
    assert f"schema 0002 -> {head}" in output
    assert schema_diff(empty_url) == []
    db = Database(empty_url)
    with db.sessions() as session:
        ticket = session.get_one(Ticket, 1)
        assert (ticket.number, ticket.subject, ticket.status, ticket.priority) == (
            7,
            "Printer on fire",
            "open",
            "high",
        )
        assert ticket.created_at == AT and ticket.support_addresses == ["support@example.com"]
        assert ticket.tags == [] and ticket.possible_spam is False
        assert [m.text_body for m in ticket.messages] == ["Help"]
        assert queries.newest_follow_up(session, 1) == 2
        counts = {
            table: session.execute(text(f"SELECT count(*) FROM {table}")).scalar()
            for table in ("intake", "outbox", "events", "known_message_ids", "blobs")
        }
        assert counts == {"intake": 2, "outbox": 1, "events": 1, "known_message_ids": 1, "blobs": 1}
        pending = session.execute(text("SELECT state FROM intake WHERE id = 2")).scalar()
        assert pending == IntakeState.PENDING
    # The foreign keys still hold, and are still enforced.
    with pytest.raises(exc.IntegrityError), db.transaction() as session:
        session.execute(
            text(
                "INSERT INTO watchers (ticket_id, agent, added_by, created_at) "
                "VALUES (999, 'bob', '', :at)"
            ),
            {"at": AT},
        )
    if db.is_sqlite:
        with db.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA foreign_key_check").all() == []
    db.dispose()


def test_upgrade_refolds_old_subjects_so_a_customers_reply_finds_her_ticket(
    empty_url: str, tmp_path: Path
) -> None:
    # Opened before subjects were NFKC-folded: the full-width subject was stored casefolded
    # only, and her reply ("Re:", no headers, no tag), folded the new way, found nothing.
    migrate_to(empty_url, "0014")
    now = datetime.now(UTC)
    engine = create_engine(empty_url)
    tables = MetaData()
    tables.reflect(engine)
    with engine.begin() as conn:
        conn.execute(
            insert(tables.tables["contacts"]).values(
                id=1, email="alice@customer.test", name="Alice", created_at=now
            )
        )
        conn.execute(
            insert(tables.tables["tickets"]).values(
                id=1, number=7, subject="Ｒｅｆｕｎｄ ｆｏｒ ｏｒｄｅｒ １２",
                normalized_subject="ｒｅｆｕｎｄ ｆｏｒ ｏｒｄｅｒ １２", status="open",
                priority="normal", requester_id=1, created_at=now, updated_at=now,
                support_addresses=["support@example.com"],
            )
        )  # fmt: skip
    engine.dispose()

    code, output = cli(tmp_path, empty_url, "db", "upgrade")
    assert code == 0, output
    reply = tmp_path / "reply.eml"
    reply.write_bytes(
        make_mail(sender="alice@customer.test", subject="Re: Ｒｅｆｕｎｄ ｆｏｒ ｏｒｄｅｒ １２")
    )
    code, output = cli(tmp_path, empty_url, "ingest", "--json", str(reply))

    assert code == 0, output
    summary = json.loads(output.strip().splitlines()[-1])
    assert (summary["threaded"], summary["created"]) == (1, 0), summary
    db = Database(empty_url)
    with db.sessions() as session:
        assert [m.subject for m in session.get_one(Ticket, 1).messages] == [
            "Re: Ｒｅｆｕｎｄ ｆｏｒ ｏｒｄｅｒ １２"
        ]
    db.dispose()


# -- several nodes at once on one PostgreSQL database --------------------------------
CHILD = """
import os, sys, time
from maildesk.cli import main
go = sys.argv[1]
open(f"{go}.{os.getpid()}", "w").close()
deadline = time.monotonic() + 60
while not os.path.exists(go) and time.monotonic() < deadline:
    time.sleep(0.002)
main(sys.argv[2:])
"""


def at_once(tmp_path: Path, url: str, args: list[str], nodes: int = 4) -> list[tuple[int, str]]:
    """``maildesk ARGS`` on several nodes, each its own process, let go at the same moment."""
    go = tmp_path / "go"
    procs = []
    for node in range(nodes):
        home = tmp_path / f"node{node}"
        home.mkdir()
        config = write_cli_config(home / "maildesk.toml", home / "data", url)
        config.write_text(config.read_text() + f'node_name = "node{node}"\n')
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", CHILD, str(go), "--config", str(config), *args],
                cwd=REPO,
                env={**os.environ, "PYTHONPATH": str(REPO)},
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("go.*"))) < nodes and time.monotonic() < deadline:
        time.sleep(0.01)
    go.touch()
    return [(proc.wait(timeout=120), proc.communicate()[0]) for proc in procs]


@pytest.mark.postgres
def test_nodes_starting_together_on_an_empty_postgres_database_all_start(tmp_path: Path) -> None:
    with empty_pg_database() as url:
        results = at_once(tmp_path, url, ["tickets", "list"])

        assert [code for code, _ in results] == [0] * len(results), results
        assert not [out for _, out in results if "Traceback" in out]
        db = Database(url)
        assert db.current_revision() == db.head_revision()
        db.dispose()
        assert schema_diff(url) == []


@pytest.mark.postgres
def test_db_upgrade_on_several_nodes_at_once_upgrades_once(tmp_path: Path) -> None:
    with empty_pg_database() as url:
        migrate_to(url, "0002")
        fill_at_0002(url)

        results = at_once(tmp_path, url, ["db", "upgrade"])

        assert [code for code, _ in results] == [0] * len(results), results
        db = Database(url)
        assert db.current_revision() == db.head_revision()
        with db.sessions() as session:
            assert session.get_one(Ticket, 1).subject == "Printer on fire"
        db.dispose()
        assert schema_diff(url) == []


# -- a database newer than this maildesk (the package was downgraded) ----------------
@pytest.fixture(params=["sqlite", "postgresql"])
def migrated_url(
    request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path
) -> Iterator[str]:
    if request.param == "sqlite":
        path = tmp_path / "maildesk.sqlite3"
        shutil.copy(sqlite_template, path)
        yield f"sqlite:///{path}"
        return
    with private_pg_database("maildesk_newer") as url:
        yield url


def test_a_database_newer_than_maildesk_is_refused_plainly(
    migrated_url: str, tmp_path: Path
) -> None:
    engine = create_engine(migrated_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0999'"))
    engine.dispose()

    code, output = cli(tmp_path, migrated_url, "tickets", "list")
    assert code == 78, output
    assert "0999" in output and "newer than this maildesk" in output
    assert "run `maildesk db upgrade`" not in output

    code, output = cli(tmp_path, migrated_url, "db", "upgrade")
    assert code == 78, output
    assert "newer than this maildesk" in output and "Error" not in output

    code, output = cli(tmp_path, migrated_url, "db", "status")
    assert code == 1, output
    assert "0999" in output and "newer than this maildesk" in output


def test_db_commands_with_the_database_down_say_try_later(tmp_path: Path) -> None:
    url = "postgresql+psycopg://maildesk@127.0.0.1:1/maildesk"  # nothing listens on port 1
    for args in (["db", "upgrade"], ["db", "status"]):
        code, output = cli(tmp_path, url, *args)
        assert code == 75, (args, output)
        assert "database unavailable" in output


# -- indexes the hot lookups need on PostgreSQL ---------------------------------------
def plan_of(engine: Any, run: Callable[[Session], object]) -> str:
    """EXPLAIN of the last SELECT ``run`` sends, exactly as maildesk sent it."""
    sent: list[tuple[str, Any]] = []

    def grab(_conn: Any, _cursor: Any, statement: str, params: Any, _ctx: Any, _many: bool) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            sent.append((statement, params))

    event.listen(engine, "before_cursor_execute", grab)
    try:
        with Session(engine) as session:
            run(session)
    finally:
        event.remove(engine, "before_cursor_execute", grab)
    statement, params = sent[-1]
    with engine.connect() as conn:
        return "\n".join(row[0] for row in conn.exec_driver_sql(f"EXPLAIN {statement}", params))


@pytest.mark.postgres
def test_hot_lookups_use_an_index_on_postgres() -> None:
    n = 5000
    with private_pg_database("maildesk_plans") as url:
        engine = create_engine(url)
        with engine.begin() as conn:
            for statement in (
                "INSERT INTO blobs SELECT md5(g::text), 1, 'x' FROM generate_series(1, :n) g",
                "INSERT INTO tickets (id, number, subject, normalized_subject, status, priority,"
                " created_at, updated_at, support_addresses, tags, possible_spam)"
                " SELECT g, g, 's', 's' || g, 'closed', 'normal', now(), now(), '[]', '[]', false"
                " FROM generate_series(1, :n) g",
                "INSERT INTO ticket_links (ticket_id, other_ticket_id, kind, created_at)"
                " SELECT g, (g * 7919 % :n) + 1, 'follow_up_of', now() FROM generate_series(1, :n) g",
                "INSERT INTO messages (id, ticket_id, dedupe_key, direction, kind, from_addr,"
                " from_name, to_addrs, cc_addrs, delivered_to, subject, text_body, created_at,"
                " raw_sha256) SELECT g, g, '<' || g || '@x>', 'inbound', 'customer', 'a@x', '',"
                " '[]', '[]', '[]', 's', 'b', now(), md5(g::text) FROM generate_series(1, :n) g",
                # Half of it held in quarantine (spam kept for its retention days).
                "INSERT INTO intake (received_at, source, source_ref, envelope_to, raw_sha256,"
                " size, state, attempts, message_pk, ticket_id) SELECT now(), 'smtp', '', '[]',"
                " md5(g::text), 1, CASE WHEN g % 2 = 0 THEN 'quarantined' ELSE 'done' END, 1, g, g"
                " FROM generate_series(1, :n) g",
            ):
                conn.execute(text(statement), {"n": n})
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("ANALYZE"))
        digest = hashlib.md5(b"42").hexdigest()  # the intake row of message 42

        follow_up = plan_of(engine, lambda s: queries.newest_follow_up(s, 42))
        quarantined = plan_of(engine, lambda s: queries.quarantined_copies(s, [digest], n + 1))
        by_message = plan_of(engine, lambda s: queries.intakes_for_message_id(s, "<42@x>"))
        engine.dispose()

    plans = {
        "ticket_links by other_ticket_id": follow_up,
        "intake by raw_sha256": quarantined,
        "intake by message_pk": by_message,
    }
    scans = {lookup: plan for lookup, plan in plans.items() if "Seq Scan" in plan}
    assert scans == {}
