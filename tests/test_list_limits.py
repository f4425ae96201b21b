"""`tickets|quarantine|outbox list` on years of mail: the newest rows, not all of them."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import insert

from maildesk.cli import LIST_LIMIT, main
from maildesk.db.database import Database
from maildesk.db.models import Blob, Intake, IntakeState, Outbox, SlaTargetRow, Ticket
from tests.conftest import write_cli_config

NOW = datetime.now(UTC)
DIGEST = "0" * 64


@pytest.fixture
def config(tmp_path: Path, database_url: str) -> Path:
    return write_cli_config(tmp_path / "maildesk.toml", tmp_path / "data", database_url)


def cli(config: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["--config", str(config), *args], catch_exceptions=False)


def seed(url: str, *, tickets: int = 0, quarantined: int = 0, outbox: int = 0) -> None:
    db = Database(url)
    with db.transaction() as session:
        session.execute(insert(Blob), [{"sha256": DIGEST, "size": 1, "data": b"x"}])
        if tickets:
            session.execute(
                insert(Ticket),
                [
                    {"number": n, "subject": f"subject {n}", "created_at": NOW, "updated_at": NOW}
                    for n in range(1, tickets + 1)
                ],
            )
        if quarantined:
            session.execute(
                insert(Intake),
                [
                    {
                        "received_at": NOW,
                        "source": "file",
                        "raw_sha256": DIGEST,
                        "size": 1,
                        "header_message_id": f"q{n}@example.org",
                        "state": IntakeState.QUARANTINED,
                        "quarantine_reason": f"reason {n}",
                    }
                    for n in range(1, quarantined + 1)
                ],
            )
        if outbox:
            session.execute(
                insert(Outbox),
                [
                    {
                        "created_at": NOW,
                        "purpose": "ack",
                        "message_id": f"o{n}@example.com",
                        "envelope_from": "support@example.com",
                        "recipients": [f"c{n}@example.org"],
                        "raw_sha256": DIGEST,
                        "next_attempt_at": NOW,
                    }
                    for n in range(1, outbox + 1)
                ],
            )
    db.dispose()


def test_tickets_list_shows_the_newest_hundred_and_says_how_to_see_more(
    config: Path, database_url: str
) -> None:
    seed(database_url, tickets=LIST_LIMIT + 1)
    result = cli(config, "tickets", "list")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == LIST_LIMIT
    assert lines[0].startswith("#2 ") and lines[-1].startswith(f"#{LIST_LIMIT + 1} ")
    assert "--limit" in result.stderr
    everything = cli(config, "tickets", "list", "--limit", "0")
    assert len(everything.stdout.splitlines()) == LIST_LIMIT + 1
    assert everything.stderr == ""
    newest = json.loads(cli(config, "tickets", "list", "--limit", "3", "--json").stdout)
    assert [t["number"] for t in newest] == [LIST_LIMIT - 1, LIST_LIMIT, LIST_LIMIT + 1]


def test_tickets_list_overdue_is_limited_and_marks_only_late_tickets(
    config: Path, database_url: str
) -> None:
    seed(database_url, tickets=3)
    db = Database(database_url)
    with db.transaction() as session:
        late = NOW - timedelta(days=1)
        session.execute(
            insert(SlaTargetRow),
            [
                {
                    "ticket_id": ticket_id,
                    "target": "first_response",
                    "policy": "p",
                    "status": status,
                    "started_at": late - timedelta(hours=4),
                    "due_at": late,
                    "computed_at": NOW,
                }
                for ticket_id, status in ((1, "running"), (2, "satisfied"), (3, "paused"))
            ],
        )
    db.dispose()
    listed = json.loads(cli(config, "tickets", "list", "--overdue", "--json").stdout)
    assert [t["number"] for t in listed] == [1, 3]
    assert all(t["overdue"]["target"] == "first_response" for t in listed)
    one = cli(config, "tickets", "list", "--overdue", "--limit", "1")
    assert one.stdout.startswith("#3 ") and "LATE: first response late" in one.stdout
    assert len(one.stdout.splitlines()) == 1 and "--limit" in one.stderr
    everyone = cli(config, "tickets", "list").stdout.splitlines()
    assert ["LATE" in line for line in everyone] == [True, False, True]


def test_quarantine_list_shows_the_newest_and_counts_them_all(
    config: Path, database_url: str
) -> None:
    seed(database_url, quarantined=3)
    result = cli(config, "quarantine", "list", "--limit", "2")
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines[:-1]] == ["2", "3"]
    assert lines[-1] == "3 quarantined"
    assert "--limit" in result.stderr
    assert len(json.loads(cli(config, "quarantine", "list", "--json").stdout)) == 3


def test_outbox_list_shows_the_newest_hundred(config: Path, database_url: str) -> None:
    seed(database_url, outbox=LIST_LIMIT + 1)
    result = cli(config, "outbox", "list")
    lines = result.stdout.splitlines()
    assert len(lines) == LIST_LIMIT + 1  # and the count line
    assert lines[0].split()[0] == "2" and lines[-2].split()[0] == str(LIST_LIMIT + 1)
    assert "--limit" in result.stderr
    queued = json.loads(
        cli(config, "outbox", "list", "--state", "queued", "--limit", "2", "--json").stdout
    )
    assert [row["id"] for row in queued] == [LIST_LIMIT, LIST_LIMIT + 1]
