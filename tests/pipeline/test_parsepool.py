"""Parsing a bulk import in a child process gives the same outcome as in-process."""

from __future__ import annotations

from pathlib import Path

import pytest

from maildesk.app import App
from maildesk.intake.store import Envelope
from tests.conftest import FrozenClock, make_settings
from tests.mailfactory import make_mail, reply_to


def import_and_count(
    tmp_path: Path, database_url: str, clock: FrozenClock, child: bool
) -> dict[str, int]:
    app = App.build(
        make_settings(tmp_path, database_url, pipeline={"parse_in_child": child}), clock=clock
    )
    first = make_mail(message_id="root@c.test", subject="root")
    mails = [first] + [reply_to(first, message_id=f"r{n}@c.test") for n in range(30)]
    mails += [
        make_mail(message_id=f"n{n}@c.test", subject=f"new {n}", sender=f"s{n}@c.test")
        for n in range(20)
    ]
    mails.append(b"")  # unparsable: quarantined, wherever it was parsed
    app.intake().store_many([(raw, Envelope(source="file")) for raw in mails])
    worker = app.worker()
    try:
        summary = worker.drain(batch_size=20).as_dict()
    finally:
        worker.close()
        app.db.dispose()
    return summary


def test_child_process_parsing_matches_in_process(
    tmp_path: Path, database_url: str, clock: FrozenClock
) -> None:
    if not database_url.startswith("sqlite"):
        pytest.skip("about parsing, not storage: runs on SQLite only")
    fresh = Path(database_url.split("///", 1)[1])
    (tmp_path / "b").mkdir()
    copy = tmp_path / "b" / "maildesk.sqlite3"
    copy.write_bytes(fresh.read_bytes())  # an untouched copy, before the first run
    inline = import_and_count(tmp_path / "a", database_url, clock, child=False)
    in_child = import_and_count(tmp_path / "b", f"sqlite:///{copy}", clock, child=True)
    assert inline == {
        "created": 21,
        "threaded": 30,
        "duplicates": 0,
        "auto_replies": 0,
        "quarantined": 1,
        "pending": 0,
    }
    assert in_child == inline
