"""What the poller does after storing (flag, move, delete) never loses mail or stalls the folder.

Found by a review of the IMAP intake against the real Dovecot; each case lost a
message's body, stopped every later mail of its folder, or stored a message twice.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator

import pytest
from imapclient import SEEN

from maildesk.app import App
from maildesk.domain.message import TRUNCATED_HEADER
from tests.dovecot_harness import Dovecot, dovecot_server
from tests.intake.test_imap import (
    USER,
    Runner,
    flags_of,
    folder_state,
    idle_everywhere,
    mail,
    stored,
    wait_until,
)
from tests.intake.test_imap_junk import feedback, move

# A shared mailbox where our account may read and flag, but not remove mail.
ACL = """
mail_plugins = $mail_plugins acl
protocol imap {{
  mail_plugins = $mail_plugins imap_acl
}}
plugin {{
  acl = vfile
}}
"""


@pytest.fixture
def dovecot() -> Iterator[Dovecot]:
    with dovecot_server(USER) as server:
        yield server


@pytest.fixture
def acl_dovecot(monkeypatch: pytest.MonkeyPatch) -> Iterator[Dovecot]:
    import tests.dovecot_harness as harness

    monkeypatch.setattr(harness, "CONFIG", harness.CONFIG + ACL)
    with dovecot_server(USER) as server:
        yield server


def test_delete_never_expunges_a_message_of_which_only_the_header_was_stored(
    app: App, dovecot: Dovecot, runner: Runner
) -> None:
    """Over max_message_bytes only the header is stored: the body exists nowhere but
    on the server (MAIL-RULES 1)."""
    uid = dovecot.append(USER, mail(1, body=("y" * 76 + "\n") * 400))  # ~31 KB
    runner.start(app, dovecot.mailbox(USER, max_message_bytes=10_000, post_action="delete"))
    rows = wait_until(lambda: stored(app), "the header stored")
    assert rows[0][1].startswith(TRUNCATED_HEADER.encode())
    wait_until(lambda: (s := folder_state(app)) and s.acted_uid == uid, "post-action recorded")
    assert uid in flags_of(dovecot)


def test_a_move_to_folder_that_is_only_a_noselect_parent_is_created(
    app: App, dovecot: Dovecot, runner: Runner
) -> None:
    """Someone made "Processed/2026" first: "Processed" is listed, but cannot hold
    mail; every MOVE failed with TRYCREATE, on every connect, before the poll."""
    with dovecot.client(USER) as client:
        client.create_folder("Processed.2026")  # Dovecot's separator is "."
    dovecot.append(USER, mail(1))
    runner.start(app, dovecot.mailbox(USER, post_action="move", move_to="Processed"))
    wait_until(lambda: len(stored(app)) == 1, "the first message stored")
    dovecot.append(USER, mail(2))
    wait_until(lambda: len(stored(app)) == 2, "the second message stored", timeout=15)
    wait_until(lambda: not flags_of(dovecot), "INBOX emptied into Processed")
    assert len(flags_of(dovecot, "Processed")) == 2


def test_a_post_action_the_server_refuses_does_not_stop_later_mail(
    app: App, acl_dovecot: Dovecot, runner: Runner
) -> None:
    """MOVE refused with NO [NOPERM]: the mail is stored, so it is left where it
    is, and said in the health file; the folder goes on."""
    dovecot = acl_dovecot
    with dovecot.client(USER) as client:
        client.create_folder("Processed")
    acl = dovecot.root / "home" / USER / "Maildir" / "dovecot-acl"
    acl.write_text("owner lrwsi\n")
    acl.chmod(0o644)
    dovecot.append(USER, mail(1))
    intake = runner.start(app, dovecot.mailbox(USER, post_action="move", move_to="Processed"))
    wait_until(lambda: len(stored(app)) == 1, "the first message stored")
    dovecot.append(USER, mail(2))
    wait_until(lambda: len(stored(app)) == 2, "the second message stored", timeout=15)
    [health] = intake.health()
    assert health.consecutive_failures == 0
    assert "post-action move refused" in health.last_error
    assert len(flags_of(dovecot)) == 2  # left in INBOX, nothing lost


def test_mail_moved_out_of_junk_into_another_read_folder_is_ham_not_a_second_copy(
    app: App, dovecot: Dovecot, runner: Runner
) -> None:
    with dovecot.client(USER) as client:
        client.create_folder("Junk")
        client.create_folder("Support")
    block = dovecot.mailbox(
        USER, folders=["INBOX", "Support"], junk_folder="Junk", post_action="flag"
    )
    intake = runner.start(app, block)
    idle_everywhere(intake)
    spam = mail(1, message_id="junk-out@customer.test")
    dovecot.append(USER, spam)
    wait_until(lambda: SEEN in flags_of(dovecot).get(1, ()), "stored and flagged")
    digest = hashlib.sha256(spam).hexdigest()
    move(dovecot, "junk-out@customer.test", "INBOX", "Junk")
    wait_until(lambda: digest in feedback(app), "learned as spam")

    move(dovecot, "junk-out@customer.test", "Junk", "Support")
    wait_until(
        lambda: (s := folder_state(app, folder="Support")) and s.last_uid >= 1, "Support read"
    )
    time.sleep(1)
    assert len(stored(app)) == 1
    assert feedback(app)[digest][0] == "ham"
