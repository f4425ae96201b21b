"""The whole real corpus through `maildesk ingest`: nothing crashes, nothing vanishes.

Also: re-ingesting adds nothing, and threading on the SpamAssassin ham in
date order puts every message whose parent is present on its parent's ticket.
"""

from __future__ import annotations

import csv
import email.utils
import itertools
import json
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.orm import Session

from maildesk.db.models import Intake, IntakeState, Message, Ticket

pytestmark = pytest.mark.slow

SPAMASSASSIN_FOLDERS = ("easy-ham-1", "easy-ham-2", "hard-ham-1", "spam-1", "spam-2")


def run_ingest(data_dir: Path, paths: Iterable[str], *extra: str) -> dict[str, int]:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "maildesk",
            "--data-dir",
            str(data_dir),
            "ingest",
            "--json",
            "--no-progress",
            *extra,
            *paths,
        ],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary: dict[str, int] = json.loads(result.stdout.strip().splitlines()[-1])
    return summary


def counts(db_path: Path) -> dict[str, int]:
    engine = create_engine(f"sqlite:///{db_path}")
    with Session(engine) as session:
        data = {
            "tickets": session.scalar(select(func.count(Ticket.id))) or 0,
            "messages": session.scalar(select(func.count(Message.id))) or 0,
            "intake": session.scalar(select(func.count(Intake.id))) or 0,
            "unfinished": session.scalar(
                select(func.count(Intake.id)).where(
                    Intake.state.not_in([IntakeState.DONE, IntakeState.QUARANTINED])
                )
            )
            or 0,
            "quarantined_without_reason": session.scalar(
                select(func.count(Intake.id)).where(
                    Intake.state == IntakeState.QUARANTINED, Intake.quarantine_reason.is_(None)
                )
            )
            or 0,
        }
    engine.dispose()
    return data


def corpus_files(corpus: Path) -> list[Path]:
    files = [
        p
        for folder in SPAMASSASSIN_FOLDERS
        for p in sorted((corpus / "spamassassin" / folder).iterdir())
    ]
    fixtures = corpus / "fixtures"
    with (fixtures / "MANIFEST.tsv").open(encoding="utf-8") as handle:
        files += [fixtures / row["path"] for row in csv.DictReader(handle, delimiter="\t")]
    return files


def test_every_corpus_message_is_stored_or_quarantined_and_reingest_adds_nothing(
    corpus: Path, tmp_path: Path
) -> None:
    files = corpus_files(corpus)
    assert len(files) > 7500
    data = tmp_path / "data"
    summary = run_ingest(data, map(str, files))
    # mbox fixtures hold several messages each, so stored can exceed the file count.
    assert summary["stored"] >= len(files)
    assert (
        summary["created"] + summary["threaded"] + summary["duplicates"] + summary["quarantined"]
        == summary["stored"]
    ), summary
    db = data / "maildesk.sqlite3"
    first = counts(db)
    assert first["unfinished"] == 0
    assert first["quarantined_without_reason"] == 0
    assert first["intake"] == summary["stored"]

    again = run_ingest(data, map(str, files))
    second = counts(db)
    engine = create_engine(f"sqlite:///{db}")
    with engine.connect() as conn:
        new_on_reingest = conn.execute(
            text(
                "SELECT i.source_ref, e.kind, e.reason FROM intake i JOIN events e ON e.intake_id = i.id "
                "WHERE i.id > :n AND i.disposition IN ('created', 'threaded')"
            ),
            {"n": first["intake"]},
        ).all()
    engine.dispose()
    assert again["created"] == 0 and again["threaded"] == 0, (again, new_on_reingest)
    assert (second["tickets"], second["messages"]) == (first["tickets"], first["messages"])


def ham_threads(corpus: Path) -> list[dict[str, str]]:
    with (corpus / "spamassassin" / "threads.tsv").open(encoding="utf-8") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def date_key(row: dict[str, str]) -> float:
    parsed = email.utils.parsedate_tz(row["date"]) if row["date"] else None
    return float(email.utils.mktime_tz(parsed)) if parsed else 0.0


def pairwise(groups: dict[str, str]) -> set[tuple[str, str]]:
    by_group: dict[str, list[str]] = {}
    for item, group in groups.items():
        by_group.setdefault(group, []).append(item)
    return {
        (a, b)
        for members in by_group.values()
        for a, b in itertools.combinations(sorted(members), 2)
    }


def test_ham_threading_in_date_order_follows_the_header_threads(
    corpus: Path, tmp_path: Path
) -> None:
    rows = ham_threads(corpus)
    rows.sort(key=date_key)
    base = corpus / "spamassassin"
    data = tmp_path / "data"
    run_ingest(data, [str(base / r["file"]) for r in rows])

    engine = create_engine(f"sqlite:///{data / 'maildesk.sqlite3'}")
    with engine.connect() as conn:
        # A file that starts with an mbox "From " line is read as a one-message mbox: "<path>#1".
        ticket_of_ref = {
            ref.removesuffix("#1"): ticket
            for ref, ticket in conn.execute(
                text("SELECT source_ref, ticket_id FROM intake WHERE ticket_id IS NOT NULL")
            ).all()
        }
    engine.dispose()
    ticket_of = {r["file"]: ticket_of_ref.get(str(base / r["file"])) for r in rows}
    assert all(t is not None for t in ticket_of.values()), "every ham message is on a ticket"

    file_of_mid = {r["mid"]: r["file"] for r in rows}
    misplaced = [
        r["file"]
        for r in rows
        if r["parent"]
        and r["parent"] in file_of_mid
        and ticket_of[r["file"]] != ticket_of[file_of_mid[r["parent"]]]
    ]
    with_parent = sum(1 for r in rows if r["parent"] and r["parent"] in file_of_mid)
    assert with_parent > 1500
    assert misplaced == [], (
        f"{len(misplaced)} replies not on their parent's ticket: {misplaced[:5]}"
    )

    truth = pairwise({r["file"]: r["root"] for r in rows})
    ours = pairwise({f: str(t) for f, t in ticket_of.items()})
    both = len(truth & ours)
    precision = both / len(ours) if ours else 1.0
    recall = both / len(truth) if truth else 1.0
    print(
        f"\nham threading: pairs truth={len(truth)} ours={len(ours)} "
        f"precision={precision:.4f} recall={recall:.4f}"
    )
    assert recall == 1.0
    # Below 1.0 by design: threads.tsv roots at the nearest ancestor *present*, so
    # siblings of a missing parent count as separate threads there, and subject-only
    # replies (no References) are joined here by the sender/subject and Thread-Index
    # rules. A regression guard, not a target.
    assert precision > 0.8
