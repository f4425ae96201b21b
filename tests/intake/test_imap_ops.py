"""The IMAP intake as ops meet it at real providers, against a real Dovecot.

Found by a review of the IMAP path: a server without UIDPLUS/MOVE, a move
target the server will not create, a wrong password with several folders.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from imapclient import DELETED

import maildesk.intake.imap as imap_module
from maildesk.app import App
from maildesk.intake.imap import FolderStatus
from maildesk.intake.store import Envelope, IntakeStore
from tests.dovecot_harness import Dovecot, dovecot_server
from tests.intake.test_imap import (
    USER,
    Runner,
    flags_of,
    idle_everywhere,
    mail,
    stored,
    wait_until,
)

# What Dovecot offers, less UIDPLUS and MOVE (as some older or proxying servers do).
NO_UIDPLUS_NOR_MOVE = """
protocol imap {
  imap_capability = IMAP4rev1 SASL-IR LITERAL+ ID ENABLE IDLE NAMESPACE
}
"""


@pytest.fixture
def dovecot() -> Iterator[Dovecot]:
    with dovecot_server(USER) as server:
        yield server


@pytest.fixture
def plain_dovecot() -> Iterator[Dovecot]:
    with dovecot_server(USER, extra_config=NO_UIDPLUS_NOR_MOVE) as server:
        yield server


def message_ids(dovecot: Dovecot, folder: str = "INBOX") -> set[bytes]:
    with dovecot.client(USER) as client:
        client.select_folder(folder, readonly=True)
        fetched = client.fetch(client.search(), ["BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]"])
    return {
        data[b"BODY[HEADER.FIELDS (MESSAGE-ID)]"].split(b":", 1)[1].strip()
        for data in fetched.values()
    }


class AnotherClientDeletesWhileWeStore(IntakeStore):
    """While the first batch is stored, the agent's mail program gets a new mail
    and marks it deleted without expunging (Thunderbird's "mark as deleted")."""

    def __init__(self, app: App, dovecot: Dovecot, raw: bytes) -> None:
        super().__init__(app.db, app.clock)
        self.dovecot, self.raw, self.done = dovecot, raw, False

    def store_many(self, items: Sequence[tuple[bytes, Envelope]]) -> None:
        super().store_many(items)
        if not self.done:
            self.done = True
            with self.dovecot.client(USER) as other:
                other.select_folder("INBOX")
                uid = int(re.findall(rb"APPENDUID \d+ (\d+)", other.append("INBOX", self.raw))[0])
                other.add_flags([uid], [DELETED])


@pytest.mark.parametrize("action", ["delete", "move"])
def test_without_uidplus_only_our_own_messages_are_expunged(
    app: App, plain_dovecot: Dovecot, runner: Runner, action: str
) -> None:
    """Without UIDPLUS there is no UID EXPUNGE: a plain EXPUNGE removes every
    message flagged \\Deleted, also another client's, also one maildesk has not
    stored yet. That message was lost for good."""
    dovecot = plain_dovecot
    with dovecot.client(USER) as client:
        assert not client.has_capability("UIDPLUS") and not client.has_capability("MOVE")
    first = mail(1, message_id="first@customer.test")
    theirs = mail(2, message_id="theirs@customer.test")
    dovecot.append(USER, first)
    store = AnotherClientDeletesWhileWeStore(app, dovecot, theirs)
    intake = runner.start(
        app, dovecot.mailbox(USER, post_action=action, move_to="Done"), store=store
    )
    # Left by the first expunge, stored by the next poll like any mail, only then removed.
    wait_until(lambda: len(stored(app)) == 2, "the other client's message stored too")
    assert [raw for _ref, raw in stored(app)] == [first, theirs]
    wait_until(lambda: not flags_of(dovecot), "INBOX emptied of what maildesk stored")
    if action == "move":
        assert message_ids(dovecot, "Done") == {b"<first@customer.test>", b"<theirs@customer.test>"}
    [health] = intake.health()
    assert health.consecutive_failures == 0


def test_a_move_target_the_server_will_not_create_does_not_stop_the_intake(
    app: App, dovecot: Dovecot, runner: Runner
) -> None:
    """move_to = "Archive/Done" on a server whose separator is "." (Dovecot's
    Maildir++, Courier, many hosters): CREATE is refused, and every connect failed
    on it before the first mail was read: nothing came in at all."""
    dovecot.append(USER, mail(1))
    intake = runner.start(app, dovecot.mailbox(USER, post_action="move", move_to="Archive/Done"))
    wait_until(lambda: len(stored(app)) == 1, "the mail stored", timeout=10)
    idle_everywhere(intake)
    dovecot.append(USER, mail(2))
    wait_until(lambda: len(stored(app)) == 2, "later mail stored too", timeout=10)
    [health] = intake.health()
    assert health.consecutive_failures == 0
    assert "Archive/Done" in health.last_error and "'.'" in health.last_error  # names the fix
    assert len(flags_of(dovecot)) == 2  # left in INBOX, nothing lost


def auth_failures(dovecot: Dovecot) -> int:
    text = (dovecot.root / "dovecot.log").read_text(errors="replace")
    return len(re.findall(r"auth failed", text))


def test_a_wrong_password_is_tried_once_per_mailbox_and_not_again_at_once(
    app: App, dovecot: Dovecot, runner: Runner
) -> None:
    """Providers lock an account after a handful of failed logins (Microsoft 365
    smart lockout: 10). Every folder poller tried on its own and again after 1,
    2, 4 ... seconds: four folders made a dozen failed logins in the first
    half minute."""
    with dovecot.client(USER) as client:
        for folder in ("Sales", "Billing", "Junk"):
            client.create_folder(folder)
    block = dovecot.mailbox(
        USER, password="wrong", folders=["INBOX", "Sales", "Billing"], junk_folder="Junk"
    )
    intake = runner.start(app, block)
    wait_until(
        lambda: (
            all(h.status is FolderStatus.BACKOFF for h in intake.health())
            and len(intake.health()) == 4
        ),
        "every folder reported",
        timeout=15,
    )
    for health in intake.health():
        assert "login failed" in health.last_error and "AUTHENTICATIONFAILED" in health.last_error
    time.sleep(4)  # long enough for several retries of the old backoff (1, 2, 4 s)
    wait_until(lambda: auth_failures(dovecot) >= 1, "the failure in Dovecot's log")
    assert auth_failures(dovecot) == 1


def test_folders_with_non_ascii_names_are_read_moved_into_and_watched_as_junk(
    app: App, dovecot: Dovecot, runner: Runner
) -> None:
    """Folder names travel as modified UTF-7 ("Bearbeitet/Erledigt" in German
    Outlook, "Входящие" ...): read, created as move target and used as Junk."""
    with dovecot.client(USER) as client:
        client.create_folder("Поддержка & Hilfe")
        client.create_folder("Спам")
    block = dovecot.mailbox(
        USER,
        folders=["Поддержка & Hilfe"],
        post_action="move",
        move_to="Erledigt.Größer",
        junk_folder="Спам",
    )
    intake = runner.start(app, block)
    idle_everywhere(intake)
    raw = mail(1, message_id="umlaut@customer.test")
    dovecot.append(USER, raw, folder="Поддержка & Hilfe")
    wait_until(lambda: len(stored(app)) == 1, "stored")
    assert stored(app)[0][0].startswith(f"{USER}/Поддержка & Hilfe/")
    wait_until(lambda: message_ids(dovecot, "Erledigt.Größer"), "moved")
    assert all(h.consecutive_failures == 0 and not h.last_error for h in intake.health())


def test_a_move_target_created_by_someone_else_meanwhile_is_used_without_complaint(
    app: App, dovecot: Dovecot, runner: Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two folders' pollers (or two nodes) start at once, both find ``move_to`` missing,
    both CREATE it: Dovecot answers the second NO [ALREADYEXISTS]. The folder is there,
    so nothing is wrong; it was reported as "cannot be created" in the health file
    (seen once in CI). The LIST that missed it is replayed here: it answers as before
    the other CREATE, and the server really creates the folder in between."""
    real_selectable = imap_module._selectable

    def list_then_someone_creates(client: Any, folder: str) -> bool:
        found = real_selectable(client, folder)
        if not found:
            with dovecot.client(USER) as other:
                other.create_folder(folder)
        return found

    monkeypatch.setattr(imap_module, "_selectable", list_then_someone_creates)
    dovecot.append(USER, mail(1))
    intake = runner.start(app, dovecot.mailbox(USER, post_action="move", move_to="Processed"))
    wait_until(lambda: len(stored(app)) == 1, "stored")
    wait_until(lambda: message_ids(dovecot, "Processed"), "moved")
    [health] = intake.health()
    assert health.last_error == "" and health.consecutive_failures == 0, health


def test_a_folder_named_with_the_wrong_separator_is_reported_as_such(
    app: App, dovecot: Dovecot, runner: Runner
) -> None:
    """folders = ["Support/Billing"] where the server says "Support.Billing": the
    SELECT fails on every connect and was reported as "connection failed", which
    sends ops to check the network."""
    with dovecot.client(USER) as client:
        client.create_folder("Support.Billing")
    intake = runner.start(app, dovecot.mailbox(USER, folders=["Support/Billing"]))
    [health] = wait_until(
        lambda: [h for h in intake.health() if h.consecutive_failures], "the failure reported"
    )
    assert health.last_error.startswith("folder cannot be selected")
    assert "'Support.Billing'?" in health.last_error
