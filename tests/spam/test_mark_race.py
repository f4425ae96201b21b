"""Two ham verdicts on one possible-spam ticket at the same moment.

Two ops (or two nodes' ``maildesk spam mark``) mark the customer's two mails
ham at once. The first is paused between its read of the ticket's flag and
its write (at the acknowledgement), and the second runs completely meanwhile
(in another thread, on its own connection), as in tests/sla/test_status_race.py.
On SQLite the paused side's ``BEGIN IMMEDIATE`` holds the other off until it commits.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from maildesk.app import App
from maildesk.cli import main
from maildesk.db.models import Intake, Outbox, SpamFeedback, Ticket
from maildesk.outbound.notices import Notices
from maildesk.spam.feedback import record_feedback
from tests.mailfactory import deliver, make_mail
from tests.spam.test_feedback import cli, config_file, rows


def test_two_ham_marks_at_once_release_the_ticket_and_acknowledge_it_once(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = config_file(tmp_path, database_url, "unsure_at = 0.0\nspam_at = 1.0")
    cli(config, "ingest", "-", stdin=make_mail(message_id="m1@customer.test"))
    again = make_mail(message_id="m2@customer.test", in_reply_to="m1@customer.test")
    cli(config, "ingest", "-", stdin=again)  # "did you get my mail?"
    [ticket] = rows(database_url, Ticket)
    assert ticket.possible_spam and rows(database_url, Outbox) == []

    other = ["--config", str(config), "spam", "mark", "ham", "m2@customer.test"]
    done: list[object] = []
    runner: list[threading.Thread] = []
    original = Notices.acknowledge
    main_thread = threading.current_thread()

    def paused(self: Notices, *args: Any, **kwargs: Any) -> None:
        if threading.current_thread() is main_thread and not runner:
            thread = threading.Thread(
                target=lambda: done.append(main.main(other, standalone_mode=False))
            )
            runner.append(thread)
            thread.start()
            thread.join(timeout=1.0)  # PostgreSQL: it finishes; SQLite: it waits for us
        original(self, *args, **kwargs)

    monkeypatch.setattr(Notices, "acknowledge", paused)
    cli(config, "spam", "mark", "ham", "m1@customer.test")
    assert runner, "the other mark never ran"
    runner[0].join(timeout=60)
    assert done, "the other mark did not finish"

    [ticket] = rows(database_url, Ticket)
    assert not ticket.possible_spam
    # The customer gets the acknowledgement they were waiting for, once.
    assert [o.purpose for o in rows(database_url, Outbox)] == ["ack"]


def test_two_first_verdicts_on_one_message_at_once_are_one_lesson(app: App) -> None:
    """Two nodes record the first verdict on one held spam at once (#spam, the Junk folder).

    The first records it and is not yet committed; the second must wait for it
    and find the lesson known, not fail on the ledger's unique key.
    """
    deliver(app, make_mail(message_id="same@customer.test"))
    with app.db.transaction() as session:
        digest = session.scalars(select(Intake.raw_sha256)).one()
    outcome: list[object] = []

    def second() -> None:
        try:
            with app.db.transaction() as session:
                outcome.append(
                    record_feedback(
                        session, label="spam", raw_sha256=digest, source="imap_junk", actor="node-b"
                    )
                )
        except Exception as exc:  # the bug: a unique-key violation
            outcome.append(exc)

    thread = threading.Thread(target=second)
    with app.db.transaction() as session:
        assert record_feedback(
            session, label="spam", raw_sha256=digest, source="agent", actor="bob"
        )
        session.flush()
        thread.start()
        thread.join(timeout=1.0)  # it waits on the uncommitted row (both databases)
    thread.join(timeout=30)
    assert outcome == [False]  # the same lesson: already known
    with app.db.transaction() as session:
        [row] = session.scalars(select(SpamFeedback)).all()
    assert (row.label, row.actor) == ("spam", "bob")
