"""Junk folder feedback against a real Dovecot: moved in = spam, moved out = ham, once each."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import select

from maildesk.app import App
from maildesk.db.models import SpamFeedback
from tests.dovecot_harness import Dovecot, dovecot_server
from tests.intake.test_imap import Runner, idle_everywhere, mail, stored, wait_until

USER = "support"


@pytest.fixture
def dovecot() -> Iterator[Dovecot]:
    with dovecot_server(USER) as server:
        with server.client(USER) as client:
            client.create_folder("Junk")
        yield server


def feedback(app: App) -> dict[str, tuple[str, str]]:
    """raw sha256 -> (label, source) of every feedback row."""
    with app.db.transaction() as session:
        rows = session.scalars(select(SpamFeedback)).all()
        return {r.raw_sha256: (r.label, r.source) for r in rows}


def move(dovecot: Dovecot, message_id: str, source: str, target: str) -> None:
    """What an agent's mail program does: find the message and MOVE it."""
    with dovecot.client(USER) as client:
        client.select_folder(source)
        uids = client.search(["HEADER", "Message-ID", message_id])
        assert len(uids) == 1, (source, message_id, uids)
        client.move(uids, target)


def test_moving_into_junk_is_spam_and_back_out_is_ham_once_each(
    app: App, dovecot: Dovecot, runner: Runner
) -> None:
    block = dovecot.mailbox(USER, junk_folder="Junk", post_action="flag")
    intake = runner.start(app, block)
    idle_everywhere(intake)
    spam, ham = mail(1, message_id="junk-1@customer.test"), mail(2)
    dovecot.append(USER, spam)
    dovecot.append(USER, ham)
    # The provider's own filter files mail straight into Junk: never ours, never feedback.
    dovecot.append(USER, mail(3), folder="Junk")
    wait_until(lambda: len(stored(app)) == 2, "two stored")
    digest = hashlib.sha256(spam).hexdigest()

    move(dovecot, "junk-1@customer.test", "INBOX", "Junk")
    wait_until(lambda: digest in feedback(app), "spam feedback")
    assert feedback(app) == {digest: ("spam", "imap_junk")}

    # A restart reads Junk from its recorded UID: nothing is recorded again.
    runner.stop(intake)
    intake = runner.start(app, block)
    idle_everywhere(intake)
    time.sleep(1)
    assert feedback(app) == {digest: ("spam", "imap_junk")}

    move(dovecot, "junk-1@customer.test", "Junk", "INBOX")
    wait_until(lambda: feedback(app).get(digest, ("",))[0] == "ham", "ham feedback")
    assert feedback(app) == {digest: ("ham", "imap_junk")}
    assert len(stored(app)) == 2  # moved back: seen again, not stored again
    with app.db.transaction() as session:
        row = session.scalars(select(SpamFeedback)).one()
        assert row.learned_at is None  # the correction is learned (again) by the daemon
