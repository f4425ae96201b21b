"""IMAP intake against a real, private Dovecot: IDLE, exactly-once, post-actions."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import given
from hypothesis import strategies as st
from imapclient import SEEN
from sqlalchemy import func, select, update

from maildesk.app import App
from maildesk.config import ImapMailboxSettings
from maildesk.db.database import Database
from maildesk.db.models import Blob, ImapFolderState, Intake, Ticket
from maildesk.intake.imap import (
    TRUNCATED_HEADER,
    FolderHealth,
    FolderStatus,
    ImapIntake,
    new_uids,
    ref_folder,
    size_groups,
    source_ref,
    uid_set_members,
    uid_sets,
)
from maildesk.intake.store import IntakeStore
from tests.dovecot_harness import Dovecot, dovecot_server
from tests.mailfactory import make_mail

T = TypeVar("T")
USER = "support"


def crlf(raw: bytes) -> bytes:
    return raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def mail(n: int, **kwargs: Any) -> bytes:
    kwargs.setdefault("subject", f"Question {n}")
    kwargs.setdefault("message_id", f"imap-{n}-{time.monotonic_ns()}@customer.test")
    return crlf(make_mail(**kwargs))


def wait_until(probe: Callable[[], T], what: str, timeout: float = 20) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last: {value!r}")
        time.sleep(0.05)


def stored(app: App) -> list[tuple[str, bytes]]:
    """(source_ref, raw bytes) of every stored IMAP message, in intake order."""
    with app.db.transaction() as session:
        rows = session.scalars(select(Intake).where(Intake.source == "imap").order_by(Intake.id))
        out = []
        for row in rows:
            blob = session.get_one(Blob, row.raw_sha256)
            out.append((row.source_ref, bytes(blob.data)))
        return out


def folder_state(app: App, mailbox: str = USER, folder: str = "INBOX") -> ImapFolderState | None:
    with app.db.transaction() as session:
        return session.scalars(
            select(ImapFolderState).where(
                ImapFolderState.mailbox == mailbox, ImapFolderState.folder == folder
            )
        ).one_or_none()


class Runner:
    """Starts ImapIntake instances for a test and stops whatever is left at the end."""

    def __init__(self) -> None:
        self.running: list[ImapIntake] = []

    def start(
        self,
        app: App,
        *mailboxes: dict[str, Any],
        holder: str | None = None,
        store: IntakeStore | None = None,
    ) -> ImapIntake:
        settings = app.settings.model_copy(
            update={"imap": tuple(ImapMailboxSettings.model_validate(m) for m in mailboxes)}
        )
        intake = ImapIntake.build(
            settings,
            store=store or app.intake(),
            db=app.db,
            holder=holder or app.node_name,
            clock=app.clock,
        )
        intake.start()
        self.running.append(intake)
        return intake

    def stop(self, intake: ImapIntake) -> None:
        intake.stop()
        self.running.remove(intake)


@pytest.fixture
def dovecot() -> Iterator[Dovecot]:
    with dovecot_server(USER, "sales") as server:
        yield server


def idle_everywhere(intake: ImapIntake) -> None:
    wait_until(
        lambda: all(h.status is FolderStatus.IDLE for h in intake.health()), "pollers to IDLE"
    )


def flags_of(dovecot: Dovecot, folder: str = "INBOX") -> dict[int, tuple[bytes, ...]]:
    with dovecot.client(USER) as client:
        client.select_folder(folder, readonly=True)
        return {uid: tuple(flags) for uid, flags in client.get_flags(client.search()).items()}


# -- pure helpers ----------------------------------------------------------


@given(st.sets(st.integers(1, 10_000)), st.integers(0, 10_000))
def test_new_uids_are_exactly_those_above_the_last_stored(found: set[int], last: int) -> None:
    result = new_uids(found, last)
    assert result == sorted(u for u in found if u > last)


@given(st.lists(st.tuples(st.integers(1, 10**6), st.integers(0, 5000)), max_size=40))
def test_size_groups_keep_order_and_respect_the_budget(pairs: list[tuple[int, int]]) -> None:
    groups = list(size_groups(pairs, 8000))
    assert [uid for group in groups for uid in group] == [uid for uid, _ in pairs]
    sizes = iter(size for _, size in pairs)
    for group in groups:
        total = sum(next(sizes) for _ in group)
        assert len(group) == 1 or total <= 8000


@given(st.sets(st.integers(1, 50_000), max_size=3000), st.integers(11, 400))
def test_uid_sets_name_exactly_the_uids_in_short_commands(uids: set[int], limit: int) -> None:
    """A post-action after a long wait names thousands of UIDs: as ranges, in commands a
    server takes, never one UID more (a range over a gap would act on unstored mail)."""
    named: list[int] = []
    for part in uid_sets(uids, limit):
        assert len(part) <= limit
        for item in part.split(","):
            first, _, last = item.partition(":")
            named += range(int(first), int(last or first) + 1)
    assert sorted(named) == sorted(uids) and len(named) == len(set(named))


@given(st.sets(st.integers(1, 50_000), max_size=300))
def test_uid_set_members_reads_back_what_uid_sets_wrote(uids: set[int]) -> None:
    """The UIDs copied into move_to are kept in the folder state as one sequence set."""
    assert uid_set_members(",".join(uid_sets(uids))) == uids


def test_uid_sets_of_a_long_run_are_one_range() -> None:
    assert list(uid_sets(range(1, 20_001))) == ["1:20000"]
    assert list(uid_sets([5, 3, 4, 9, 10, 12])) == ["3:5,9:10,12"]


@pytest.mark.parametrize(
    ("mailbox", "folder"), [("support", "INBOX"), ("a", "Lists/Work/2026"), ("x@y", "a b")]
)
def test_source_ref_names_its_folder(mailbox: str, folder: str) -> None:
    assert ref_folder(source_ref(mailbox, folder, 1795332407, 42)) == f"{mailbox}/{folder}"


# -- against Dovecot -------------------------------------------------------


def test_idle_brings_new_mail_in_once_and_flags_it_after_storing(
    app: App, dovecot: Dovecot, runner: Runner
) -> None:
    # A reconciliation poll only every 10 minutes: what arrives now came through IDLE.
    intake = runner.start(app, dovecot.mailbox(USER, poll_interval_seconds=600))
    idle_everywhere(intake)
    sent = [mail(n) for n in range(3)]
    uids = [dovecot.append(USER, raw) for raw in sent]
    rows = wait_until(lambda: len(stored(app)) == 3 and stored(app), "3 stored messages")
    validity = folder_state(app).uidvalidity  # type: ignore[union-attr]
    assert rows == [
        (f"{USER}/INBOX/{validity}/{uid}", raw) for uid, raw in zip(uids, sent, strict=True)
    ]
    flags = wait_until(
        lambda: (f := flags_of(dovecot)) and all(SEEN in v for v in f.values()) and f, "\\Seen"
    )
    assert sorted(flags) == uids
    time.sleep(1.5)  # another IDLE round: the flag change must not bring anything in again
    assert len(stored(app)) == 3


def test_move_post_action_moves_only_after_storing(
    app: App, dovecot: Dovecot, runner: Runner, tmp_path: Path
) -> None:
    dovecot.append(USER, mail(1))
    # The database the poller stores into is unreachable: nothing may be moved.
    broken = IntakeStore(Database("postgresql+psycopg://nobody@127.0.0.1:1/none"), app.clock)
    mailbox = dovecot.mailbox(USER, post_action="move", move_to="Processed")
    failing = runner.start(app, mailbox, store=broken)
    health = wait_until(
        lambda: [h for h in failing.health() if h.consecutive_failures >= 1], "a failure"
    )
    assert health[0].status is FolderStatus.BACKOFF
    assert "cannot store" in health[0].last_error
    runner.stop(failing)
    assert list(flags_of(dovecot)) == [1]  # still in INBOX, untouched
    assert flags_of(dovecot)[1] == ()
    assert stored(app) == []

    intake = runner.start(app, mailbox)
    wait_until(lambda: len(stored(app)) == 1, "the message stored")
    idle_everywhere(intake)
    dovecot.append(USER, mail(2))
    wait_until(lambda: len(stored(app)) == 2, "the second message stored")
    wait_until(lambda: not flags_of(dovecot), "INBOX emptied")
    assert len(flags_of(dovecot, "Processed")) == 2
    assert len(stored(app)) == 2


def test_mail_marked_seen_by_another_client_is_still_stored(
    app: App, dovecot: Dovecot, runner: Runner
) -> None:
    dovecot.append(USER, mail(1), flags=[SEEN])
    second = dovecot.append(USER, mail(2))
    with dovecot.client(USER) as other:  # the agent opens it in their mail program
        other.select_folder("INBOX")
        other.add_flags([second], [SEEN])
    runner.start(app, dovecot.mailbox(USER, post_action="none"))
    wait_until(lambda: len(stored(app)) == 2, "both read messages stored")
    assert [ref.rsplit("/", 1)[1] for ref, _ in stored(app)] == ["1", str(second)]


def test_uidvalidity_reset_stores_nothing_twice_and_makes_no_duplicate_tickets(
    app: App, dovecot: Dovecot, runner: Runner
) -> None:
    sent = [mail(n) for n in range(3)]
    with dovecot.client(USER) as client:
        client.create_folder("Support")
    for raw in sent:
        dovecot.append(USER, raw, folder="Support")
    mailbox = dovecot.mailbox(USER, folders=["Support"], post_action="none")
    intake = runner.start(app, mailbox)
    wait_until(lambda: len(stored(app)) == 3, "3 stored")
    before = folder_state(app, folder="Support")
    runner.stop(intake)

    with dovecot.client(USER) as client:  # recreated, with the same mail and one more
        client.delete_folder("Support")
        client.create_folder("Support")
    for raw in [*sent, mail(9)]:
        dovecot.append(USER, raw, folder="Support")

    runner.start(app, mailbox)
    wait_until(
        lambda: (s := folder_state(app, folder="Support")) and s.last_uid == 4, "re-read folder"
    )
    after = folder_state(app, folder="Support")
    assert before is not None and after is not None
    assert after.uidvalidity != before.uidvalidity
    assert len(stored(app)) == 4
    app.worker().drain()
    with app.db.transaction() as session:
        assert session.scalar(select(func.count()).select_from(Ticket)) == 4


def test_poller_restart_and_dovecot_restart_lose_and_double_nothing(
    app: App, dovecot: Dovecot, runner: Runner
) -> None:
    mailbox = dovecot.mailbox(USER, folders=["INBOX"])
    intake = runner.start(app, mailbox)
    for n in range(3):
        dovecot.append(USER, mail(n))
    wait_until(lambda: len(stored(app)) == 3, "first 3")
    runner.stop(intake)
    for n in range(3, 5):  # arrives while maildesk is down
        dovecot.append(USER, mail(n))
    intake = runner.start(app, mailbox)
    wait_until(lambda: len(stored(app)) == 5, "5 after the poller restart")

    dovecot.restart()
    for n in range(5, 8):
        dovecot.append(USER, mail(n))
    wait_until(lambda: len(stored(app)) == 8, "8 after the Dovecot restart", timeout=30)
    assert any(h.stored for h in intake.health())
    refs = [ref for ref, _ in stored(app)]
    assert len(set(refs)) == 8
    assert all(SEEN in f for f in flags_of(dovecot).values())


def test_two_nodes_share_a_folder_and_store_each_message_once(
    app: App, dovecot: Dovecot, runner: Runner
) -> None:
    second = App(
        app.settings.model_copy(update={"node_name": "node-b"}),
        Database(app.settings.effective_database_url),
        app.signer,
        app.clock,
    )
    try:
        mailbox = dovecot.mailbox(USER, lease_seconds=6)
        runner.start(app, mailbox, holder="node-a")
        runner.start(second, mailbox, holder="node-b")
        wait_until(lambda: folder_state(app) and folder_state(app).lease_holder, "a lease")  # type: ignore[union-attr]
        for n in range(20):
            dovecot.append(USER, mail(n))
        wait_until(lambda: len(stored(app)) >= 20, "20 stored")
        holder = folder_state(app).lease_holder  # type: ignore[union-attr]

        # The holder dies without releasing its lease: the other waits for it to expire.
        dying = runner.running[0 if holder == "node-a" else 1]
        runner.stop(dying)
        with app.db.transaction() as session:
            session.execute(
                update(ImapFolderState).values(
                    lease_holder=holder, lease_expires_at=app.clock() + timedelta(seconds=6)
                )
            )
        dovecot.append(USER, mail(99))
        time.sleep(3)
        assert len(stored(app)) == 20  # the lease is still valid: nobody reads
        app.clock.advance(seconds=7)  # type: ignore[attr-defined]
        wait_until(lambda: len(stored(app)) == 21, "the survivor took over")
        assert folder_state(app).lease_holder != holder  # type: ignore[union-attr]
        assert len({ref for ref, _ in stored(app)}) == 21
    finally:
        second.db.dispose()


def test_huge_message_is_not_downloaded_but_its_header_is_kept(
    app: App, dovecot: Dovecot, runner: Runner
) -> None:
    big = mail(1, body=("y" * 76 + "\n") * 400)
    small = mail(2)
    dovecot.append(USER, big)
    dovecot.append(USER, small)
    runner.start(app, dovecot.mailbox(USER, max_message_bytes=10_000, post_action="none"))
    rows = wait_until(lambda: len(stored(app)) == 2 and stored(app), "both stored")
    (_, head), (_, whole) = rows
    assert whole == small
    header, _, _body = big.partition(b"\r\n\r\n")
    assert head.startswith(f"{TRUNCATED_HEADER}: original size {len(big)} bytes".encode())
    assert head.endswith(header + b"\r\n\r\n")
    assert b"yyyy" not in head


def test_wrong_password_is_reported_and_other_mailboxes_keep_working(
    app: App, dovecot: Dovecot, runner: Runner
) -> None:
    intake = runner.start(
        app,
        dovecot.mailbox(USER, password="wrong"),
        dovecot.mailbox("sales"),
    )
    dovecot.append("sales", mail(1))
    wait_until(lambda: len(stored(app)) == 1, "sales mail stored")
    broken = wait_until(
        lambda: [h for h in intake.health() if h.mailbox == USER and h.consecutive_failures],
        "the failing mailbox reported",
    )
    assert broken[0].status is FolderStatus.BACKOFF
    assert "login failed" in broken[0].last_error
    assert stored(app)[0][0].startswith("sales/INBOX/")


def test_the_health_file_ends_with_the_newest_state_when_two_folders_report_at_once(
    app: App, tmp_path: Path
) -> None:
    """Two pollers report together; the one that wrote an older view must not win.

    The first report's write is held until the second report has had its turn.
    A folder that then stays in its state would otherwise show the old one in
    the file for good (ops, and `wait_idle` in the daemon tests, read the file).
    """
    first_write_started, let_first_write_go = threading.Event(), threading.Event()

    class HeldFirstWrite(ImapIntake):
        def _write_health(self, snapshot: list[dict[str, Any]]) -> None:
            if not first_write_started.is_set():
                first_write_started.set()
                let_first_write_go.wait(5)
            super()._write_health(snapshot)

    path = tmp_path / "imap-health.json"
    intake = HeldFirstWrite(
        (), {}, app.intake(), app.db, app.node_name, app.clock, health_path=path
    )
    for folder in ("support", "sales"):
        intake._health[(folder, "INBOX")] = FolderHealth(folder, "INBOX")
    first = threading.Thread(
        target=intake._record_health,
        args=(FolderHealth("support", "INBOX", FolderStatus.IDLE),),
    )
    second = threading.Thread(
        target=intake._record_health,
        args=(FolderHealth("sales", "INBOX", FolderStatus.IDLE),),
    )
    first.start()
    assert first_write_started.wait(5)
    second.start()
    second.join(0.5)  # lets the second report write first, where nothing stops it
    let_first_write_go.set()
    first.join(5)
    second.join(5)
    on_disk = {(h["mailbox"], h["status"]) for h in json.loads(path.read_text())}
    assert on_disk == {("support", "idle"), ("sales", "idle")}


def test_a_poll_that_fails_on_every_connection_backs_off_longer_each_time(
    app: App, dovecot: Dovecot, runner: Runner
) -> None:
    """The database is down: connecting works, storing does not. Retries must slow down."""
    dovecot.append(USER, mail(1))
    broken = IntakeStore(Database("postgresql+psycopg://nobody@127.0.0.1:1/none"), app.clock)
    failing = runner.start(app, dovecot.mailbox(USER, post_action="flag"), store=broken)
    health = wait_until(
        lambda: [h for h in failing.health() if h.consecutive_failures >= 3],
        "three failures in a row",
        timeout=30,
    )
    assert health[0].status is FolderStatus.BACKOFF
    assert "cannot store" in health[0].last_error
