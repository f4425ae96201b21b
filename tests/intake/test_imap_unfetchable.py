"""A message the server can never deliver does not stop its folder, and is not lost.

Dovecot answers a FETCH of a mail file it cannot read (wrong owner or mode
after a restore, a broken disk) with ``* BYE FETCH failed: Internal error
occurred`` and closes the connection, on every try. The poller fetched the
same batch again after each reconnect, and no later mail of the folder was
ever stored.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from imapclient import DELETED
from sqlalchemy import select

from maildesk.app import App
from maildesk.db.models import ImapFolderState, Intake, IntakeState
from maildesk.intake.imap import FolderStatus
from tests.dovecot_harness import Dovecot, dovecot_server
from tests.intake.test_imap import (
    USER,
    Runner,
    flags_of,
    folder_state,
    mail,
    stored,
    wait_until,
)

UNFETCHABLE_HEADER = "X-Maildesk-Unfetchable"  # maildesk.domain.message.UNFETCHABLE_HEADER


@pytest.fixture
def dovecot() -> Iterator[Dovecot]:
    with dovecot_server(USER) as server:
        yield server


def mail_file(dovecot: Dovecot, marker: bytes) -> Path:
    """The Maildir file of the message that contains ``marker``."""
    maildir = dovecot.root / "home" / USER / "Maildir"
    (found,) = [
        path
        for sub in ("new", "cur")
        for path in (maildir / sub).iterdir()
        if marker in path.read_bytes()
    ]
    return found


def test_a_message_the_server_cannot_deliver_is_quarantined_and_the_folder_goes_on(
    app: App, dovecot: Dovecot, runner: Runner
) -> None:
    bad_uid = dovecot.append(USER, mail(0, message_id="unreadable@customer.test"))
    good = [mail(n) for n in range(1, 4)]
    good_uids = [dovecot.append(USER, raw) for raw in good]
    # Dovecot reads mail as the dovecot user (not root): it cannot open this file.
    mail_file(dovecot, b"unreadable@customer.test").chmod(0)

    runner.start(app, dovecot.mailbox(USER, post_action="delete"))
    wait_until(lambda: len(stored(app)) == 4, "4 stored", timeout=30)
    rows = stored(app)

    validity = folder_state(app).uidvalidity  # type: ignore[union-attr]
    ref = f"{USER}/INBOX/{validity}/"
    assert {r: raw for r, raw in rows if not raw.startswith(UNFETCHABLE_HEADER.encode())} == {
        f"{ref}{uid}": raw for uid, raw in zip(good_uids, good, strict=True)
    }
    (placeholder,) = [raw for r, raw in rows if r == f"{ref}{bad_uid}"]
    assert placeholder.startswith(f"{UNFETCHABLE_HEADER}: ".encode())
    assert b"Internal error occurred" in placeholder

    # The good ones are deleted from the server; the bad one stays, untouched.
    wait_until(lambda: list(flags_of(dovecot)) == [bad_uid], "the good ones deleted")
    assert DELETED not in flags_of(dovecot)[bad_uid]

    app.worker().drain()
    with app.db.transaction() as session:
        row = session.scalars(select(Intake).where(Intake.source_ref == f"{ref}{bad_uid}")).one()
        assert row.state is IntakeState.QUARANTINED
        reason = row.quarantine_reason or ""
    assert reason.startswith(f"cannot fetch from IMAP: UID {bad_uid} of {USER}/INBOX ")
    assert "Internal error occurred" in reason

    health = json.loads((app.settings.data_dir / "imap-health.json").read_text())
    assert f"UID {bad_uid}" in health[0]["last_error"]


def test_a_message_that_fails_once_is_fetched_whole_when_it_can_be_read_again(
    app: App, dovecot: Dovecot, runner: Runner
) -> None:
    """Failures below the limit are retried as before: no placeholder for a passing fault."""
    raw = mail(0, message_id="passing@customer.test")
    uid = dovecot.append(USER, raw)
    path = mail_file(dovecot, b"passing@customer.test")
    path.chmod(0)
    intake = runner.start(app, dovecot.mailbox(USER))
    wait_until(lambda: any(h.status is FolderStatus.BACKOFF for h in intake.health()), "a failure")
    mail_file(dovecot, b"passing@customer.test").chmod(0o600)
    rows = wait_until(lambda: stored(app), "the message stored", timeout=30)
    validity = folder_state(app).uidvalidity  # type: ignore[union-attr]
    assert rows == [(f"{USER}/INBOX/{validity}/{uid}", raw)]


def test_an_over_size_message_the_server_cannot_deliver_does_not_stop_the_folder(
    app: App, dovecot: Dovecot, runner: Runner
) -> None:
    """Over max_message_bytes only the header is fetched; that FETCH may fail the same way."""
    bad_uid = dovecot.append(
        USER, mail(0, message_id="unreadable-big@customer.test", body="z" * 20_000 + "\n")
    )
    good = mail(1)
    good_uid = dovecot.append(USER, good)
    mail_file(dovecot, b"unreadable-big@customer.test").chmod(0)

    runner.start(app, dovecot.mailbox(USER, post_action="flag", max_message_bytes=10_000))
    rows = dict(wait_until(lambda: len(stored(app)) == 2 and stored(app), "2 stored", timeout=30))
    ref = f"{USER}/INBOX/{folder_state(app).uidvalidity}/"  # type: ignore[union-attr]
    assert rows[f"{ref}{good_uid}"] == good
    assert rows[f"{ref}{bad_uid}"].startswith(f"{UNFETCHABLE_HEADER}: ".encode())
    wait_until(lambda: b"\\Seen" in flags_of(dovecot)[good_uid], "the good one flagged")
    assert b"\\Seen" not in flags_of(dovecot)[bad_uid]


def test_after_a_crash_before_its_post_action_a_placeholder_s_message_is_not_deleted(
    app: App, dovecot: Dovecot, runner: Runner
) -> None:
    """What failed is counted in memory; after a restart only the stored bytes say so."""
    bad_uid = dovecot.append(USER, mail(0, message_id="unreadable-crash@customer.test"))
    dovecot.append(USER, mail(1))
    mail_file(dovecot, b"unreadable-crash@customer.test").chmod(0)
    block = dovecot.mailbox(USER, post_action="none")
    first = runner.start(app, block)
    wait_until(lambda: len(stored(app)) == 2, "2 stored", timeout=30)
    runner.stop(first)

    # As if the daemon died after storing and before acting: the post-action is owed.
    with app.db.transaction() as session:
        state = session.scalars(select(ImapFolderState)).one()
        state.acted_uid = 0
    second = runner.start(app, dovecot.mailbox(USER, post_action="delete"))
    wait_until(
        lambda: (s := folder_state(app)) is not None and s.acted_uid == s.last_uid,
        "the owed post-action applied",
    )
    runner.stop(second)
    assert list(flags_of(dovecot)) == [bad_uid]  # the good one deleted, the bad one kept
    assert DELETED not in flags_of(dovecot)[bad_uid]
