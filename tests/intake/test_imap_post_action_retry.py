"""A post-action the server refuses for a reason that passes is tried again, not dropped.

A MOVE into a full folder (NO [OVERQUOTA]) used to be logged and passed over
for good: after a quota incident ops found hundreds of old mails in INBOX.
The refusals here come from a real Dovecot with its quota plugin; Dovecot checks
a quota on MOVE only into another quota root, so ``move_to`` lies in an archive
namespace with a quota of its own (as an archive on cheaper storage would).
"""

from __future__ import annotations

import fcntl
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest

import maildesk.intake.imap as imap_module
from maildesk.app import App
from maildesk.intake.post_action_retry import passes, retry_delay
from tests.conftest import FrozenClock
from tests.daemon_harness import DaemonProcess, RelaySink
from tests.dovecot_harness import Dovecot, dovecot_server
from tests.intake.test_imap import USER, Runner, flags_of, folder_state, mail, stored, wait_until
from tests.intake.test_imap_post_actions import ACL
from tests.slow_link import SlowLink

ACL_UNCACHED = ACL.replace("acl = vfile", "acl = vfile::cache_secs=0")

TARGET = "Archive.Processed"
QUOTA = """
namespace inbox {{
  inbox = yes
  separator = .
  prefix =
}}
namespace archive {{
  separator = .
  prefix = Archive.
  location = maildir:~/Archive
  list = yes
  subscriptions = no
}}
mail_plugins = $mail_plugins quota
protocol imap {{
  mail_plugins = $mail_plugins imap_quota
}}
plugin {{
  quota = count:Archive quota:ns=Archive.
  quota_rule = *:messages=1
  quota_vsizes = yes
}}
"""


@pytest.fixture
def dovecot(monkeypatch: pytest.MonkeyPatch) -> Iterator[Dovecot]:
    """Dovecot whose archive namespace holds one message at most (until raise_quota)."""
    import tests.dovecot_harness as harness

    monkeypatch.setattr(harness, "CONFIG", harness.CONFIG + QUOTA)
    with dovecot_server(USER) as server:
        with server.client(USER) as client:
            client.create_folder(TARGET)
        yield server


def raise_quota(dovecot: Dovecot) -> None:
    """What ops do after the incident: more room, by `doveadm reload` (no restart)."""
    config = dovecot.config.read_text()
    dovecot.config.write_text(config.replace("messages=1\n", "messages=1000\n"))
    dovecot.reload()


def moving(dovecot: Dovecot, **overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {"post_action": "move", "move_to": TARGET}
    values.update(overrides)
    return dovecot.mailbox(USER, **values)


def health_file(app: App) -> dict[str, Any]:
    """The folder's entry of imap-health.json ({} before the poller first wrote it)."""
    return health_in(app.settings.data_dir)


def health_in(data_dir: Path) -> dict[str, Any]:
    path = data_dir / "imap-health.json"
    if not path.exists():
        return {}
    [folder] = json.loads(path.read_text())
    return dict(folder)


def test_a_move_refused_over_quota_is_tried_again_and_done_once_there_is_room(
    app: App, dovecot: Dovecot, runner: Runner
) -> None:
    uids = [dovecot.append(USER, mail(n)) for n in range(3)]
    runner.start(app, moving(dovecot, post_action_retry_seconds=1))
    wait_until(lambda: len(stored(app)) == 3, "3 stored")
    refused = wait_until(
        lambda: "OVERQUOTA" in (h := health_file(app)).get("last_error", "") and h,
        "the refusal in the health file",
    )
    acted_then = folder_state(app).acted_uid  # type: ignore[union-attr]
    assert sorted(flags_of(dovecot)) == uids  # still in INBOX

    # New mail is stored all the while (and waits with the rest).
    uids.append(dovecot.append(USER, mail(3)))
    wait_until(lambda: len(stored(app)) == 4, "the 4th stored while the others wait")

    raise_quota(dovecot)
    wait_until(lambda: not flags_of(dovecot), "INBOX emptied into the archive", timeout=30)
    assert len(flags_of(dovecot, TARGET)) == 4
    wait_until(lambda: health_file(app).get("post_action_waiting") == 0, "nothing waits")
    wait_until(lambda: (s := folder_state(app)) and s.acted_uid == uids[-1], "acted recorded")
    assert len(stored(app)) == 4  # moving it stored nothing twice
    # While they waited, the health file said so, and a restart would have tried them.
    assert refused.get("post_action_waiting") == 3
    assert "OVERQUOTA" in refused["post_action_waiting_reason"]
    assert acted_then == 0


@pytest.fixture
def acl_dovecot(monkeypatch: pytest.MonkeyPatch) -> Iterator[Dovecot]:
    """Dovecot with ACLs read afresh on every check (no 30 s cache)."""
    import tests.dovecot_harness as harness

    monkeypatch.setattr(harness, "CONFIG", harness.CONFIG + ACL_UNCACHED)
    with dovecot_server(USER) as server:
        yield server


def test_a_move_that_cannot_pass_is_passed_over_and_later_mail_still_moves(
    app: App, acl_dovecot: Dovecot, runner: Runner
) -> None:
    """NO [NOPERM] does not pass by waiting: passed over at once, as before."""
    dovecot = acl_dovecot
    with dovecot.client(USER) as client:
        client.create_folder("Processed")
    acl = dovecot.root / "home" / USER / "Maildir" / ".Processed" / "dovecot-acl"
    acl.write_text("owner lrws\n")  # no "i": nothing may be moved in
    acl.chmod(0o644)
    first = dovecot.append(USER, mail(1))
    block = dovecot.mailbox(
        USER, post_action="move", move_to="Processed", post_action_retry_seconds=1
    )
    runner.start(app, block)
    wait_until(lambda: (s := folder_state(app)) and s.acted_uid == first, "passed over")
    refused = health_file(app)
    assert "NOPERM" in refused["last_error"]
    assert refused["post_action_waiting"] == 0

    acl.write_text("owner lrwsi\n")  # the right is given: later mail moves again
    second = dovecot.append(USER, mail(2))
    wait_until(lambda: (s := folder_state(app)) and s.acted_uid == second, "second acted")
    wait_until(lambda: second not in flags_of(dovecot), "the second moved")
    assert list(flags_of(dovecot)) == [first]  # the first is not tried again


def test_retrying_gives_up_with_one_warning_after_the_bounded_time(
    app: App, dovecot: Dovecot, runner: Runner, clock: FrozenClock, caplog: pytest.LogCaptureFixture
) -> None:
    uids = [dovecot.append(USER, mail(n)) for n in range(2)]
    runner.start(
        app, moving(dovecot, post_action_retry_seconds=1, post_action_retry_for_seconds=3600)
    )
    wait_until(lambda: "OVERQUOTA" in health_file(app).get("last_error", ""), "refused")
    clock.advance(hours=2)
    wait_until(lambda: (s := folder_state(app)) and s.acted_uid == uids[-1], "given up")
    wait_until(
        lambda: any("gave up on UIDs" in r.getMessage() for r in caplog.records),
        "the warning that retrying ends",
    )
    gave_up = [r for r in caplog.records if "gave up on UIDs" in r.getMessage()]
    assert len(gave_up) == 1 and "1, 2" in gave_up[0].getMessage()
    assert health_file(app)["post_action_waiting"] == 0
    assert sorted(flags_of(dovecot)) == uids  # left as they are, stored


def daemon_config(dovecot: Dovecot, port: int = 0, move_to: str = TARGET) -> str:
    return f"""
[[imap]]
name = "{USER}"
host = "127.0.0.1"
port = {port or dovecot.port}
security = "none"
user = "{USER}"
password = "{dovecot.users[USER]}"
post_action = "move"
move_to = "{move_to}"
poll_interval_seconds = 30
post_action_retry_seconds = 3600
"""


@pytest.mark.slow
def test_uids_waiting_for_their_move_are_moved_after_kill_9_and_a_restart(
    tmp_path: Path, relay: RelaySink, dovecot: Dovecot
) -> None:
    """The retry wait is an hour here: only the restart can bring the move about."""
    daemon = DaemonProcess(tmp_path, relay_port=relay.port, extra_config=daemon_config(dovecot))
    uids = [dovecot.append(USER, mail(n)) for n in range(3)]
    daemon.start()
    try:
        status = wait_until(
            lambda: (
                (s := daemon.status_json()[1])["imap"]
                and "OVERQUOTA" in (s["imap"][0]["last_error"] or "")
                and s
            ),
            "status to show the refusal",
            timeout=60,
        )
        daemon.kill()  # kill -9 while they wait
        assert sorted(flags_of(dovecot)) == uids

        raise_quota(dovecot)
        daemon.start()
        wait_until(lambda: not flags_of(dovecot), "INBOX emptied after the restart", timeout=60)
        assert len(flags_of(dovecot, TARGET)) == 3
        assert daemon.terminate() == 0
        # Before the kill, `maildesk status` said how many waited and why.
        assert status["imap"][0]["post_action_waiting"] == 3
        assert "OVERQUOTA" in status["imap"][0]["post_action_waiting_reason"]
        assert not status["healthy"]
        assert any("wait for their post-action" in p for p in status["problems"])
    finally:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.kill()


# -- a server without MOVE: COPY, then \Deleted and EXPUNGE ----------------------
NO_MOVE = """
protocol imap {
  imap_capability = IMAP4rev1 SASL-IR LITERAL+ ID ENABLE IDLE NAMESPACE UIDPLUS
}
# A lock held this long fails the command (NO [SERVERBUG]) instead of waiting minutes.
mail_max_lock_timeout = 1s
"""


@pytest.fixture
def copying_dovecot(monkeypatch: pytest.MonkeyPatch) -> Iterator[Dovecot]:
    """The quota'd Dovecot of :func:`dovecot`, without MOVE: a move is COPY, STORE, EXPUNGE."""
    import tests.dovecot_harness as harness

    monkeypatch.setattr(harness, "CONFIG", harness.CONFIG + QUOTA)
    with dovecot_server(USER, extra_config=NO_MOVE) as server:
        with server.client(USER) as client:
            assert not client.has_capability("MOVE")
            client.create_folder(TARGET)
        yield server


class InboxLockedFromCopy:
    """From maildesk's first COPY on, another process (a backup, a busy delivery
    agent) holds INBOX's index lock until :meth:`release`: the COPY into another
    folder goes through, the STORE \\Deleted after it waits and is refused with
    NO [SERVERBUG], a reason that passes. Hooked on the link to Dovecot."""

    def __init__(self, dovecot: Dovecot) -> None:
        self.path = dovecot.root / "home" / USER / "Maildir" / "dovecot.index.log"
        self.held: IO[bytes] | None = None
        self.released = False
        self.lock = threading.Lock()

    def __call__(self, sent: bytes) -> None:
        with self.lock:
            if b" COPY " in sent.upper() and not self.released and self.held is None:
                self.held = self.path.open("r+b")
                fcntl.lockf(self.held, fcntl.LOCK_EX)

    def release(self) -> None:
        with self.lock:
            self.released = True
            if self.held is not None:
                self.held.close()


def test_without_move_a_move_tried_again_copies_the_mail_once(
    app: App, copying_dovecot: Dovecot, runner: Runner
) -> None:
    """The COPY went through, the STORE \\Deleted was refused: the retry copied
    again, and the mail lay in move_to twice."""
    dovecot = copying_dovecot
    dovecot.append(USER, mail(1))
    locked = InboxLockedFromCopy(dovecot)
    with SlowLink(dovecot.port, on_upload=locked) as link:
        block = dovecot.mailbox(
            USER,
            port=link.port,
            post_action="move",
            move_to="Processed",
            post_action_retry_seconds=1,
        )
        runner.start(app, block)
        wait_until(
            lambda: "SERVERBUG" in health_file(app).get("last_error", ""), "the STORE refused"
        )
        assert locked.held is not None  # refused after the COPY
        locked.release()
        wait_until(lambda: not flags_of(dovecot), "INBOX emptied on the retry", timeout=30)
        wait_until(lambda: health_file(app).get("post_action_waiting") == 0, "nothing waits")
    assert len(flags_of(dovecot, "Processed")) == 1


def test_without_move_a_copy_refused_half_way_does_not_copy_the_first_half_again(
    app: App, copying_dovecot: Dovecot, runner: Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Thousands of UIDs are copied in several commands (uid_sets); here each UID is
    one. The archive has room for one: the first COPY goes through, the second is
    refused NO [OVERQUOTA]; once there is room, the retry copied the first again."""
    dovecot = copying_dovecot
    monkeypatch.setattr(imap_module, "uid_sets", lambda uids: map(str, sorted(set(uids))))
    uids = [dovecot.append(USER, mail(n)) for n in range(2)]
    runner.start(app, moving(dovecot, post_action_retry_seconds=1))
    wait_until(lambda: "OVERQUOTA" in health_file(app).get("last_error", ""), "the 2nd refused")
    assert len(flags_of(dovecot, TARGET)) == 1 and sorted(flags_of(dovecot)) == uids
    raise_quota(dovecot)
    wait_until(lambda: not flags_of(dovecot), "INBOX emptied on the retry", timeout=30)
    assert len(flags_of(dovecot, TARGET)) == 2


@pytest.mark.slow
def test_without_move_a_move_waiting_after_its_copy_copies_once_after_kill_9(
    tmp_path: Path, relay: RelaySink, copying_dovecot: Dovecot
) -> None:
    """Copied, STORE \\Deleted refused, kill -9 while the move waits (an hour):
    the restart's catch-up copied it again."""
    dovecot = copying_dovecot
    locked = InboxLockedFromCopy(dovecot)
    with SlowLink(dovecot.port, on_upload=locked) as link:
        config = daemon_config(dovecot, port=link.port, move_to="Processed")
        daemon = DaemonProcess(tmp_path, relay_port=relay.port, extra_config=config)
        dovecot.append(USER, mail(1))
        daemon.start()
        try:
            wait_until(
                lambda: health_in(tmp_path / "data").get("post_action_waiting") == 1,
                "the move to wait",
                timeout=60,
            )
            daemon.kill()
            locked.release()
            daemon.start()
            wait_until(lambda: not flags_of(dovecot), "INBOX emptied after the restart", timeout=60)
            assert daemon.terminate() == 0
        finally:
            if daemon.proc is not None and daemon.proc.poll() is None:
                daemon.kill()
    assert len(flags_of(dovecot, "Processed")) == 1


@pytest.mark.parametrize(
    ("answer", "retried"),
    [
        ("move failed: [OVERQUOTA] Quota exceeded (mailbox for user is full)", True),
        ("store failed: [UNAVAILABLE] Temporary failure", True),
        ("move failed: [INUSE] Mailbox is locked", True),
        ("uid expunge failed: [SERVERBUG] Internal error occurred. Refer to server log", True),
        ("move failed: [TRYCREATE] Mailbox doesn't exist: Processed", True),
        ("move failed: Server Unavailable. 15", True),  # no code: may pass
        ("move failed: [NOPERM] Permission denied", False),
        ("store failed: [CANNOT] Not allowed", False),
        ("uid expunge failed: [CONTACTADMIN] Account locked", False),
        ("MOVE command error: BAD [b'Error in IMAP command MOVE: Invalid arguments.']", False),
    ],
)
def test_which_refusals_are_tried_again(answer: str, retried: bool) -> None:
    assert passes(answer) is retried


def test_the_wait_between_retries_grows_to_an_hour() -> None:
    assert [retry_delay(n, 60) for n in (1, 2, 3)] == [60, 120, 240]
    assert retry_delay(30, 60) == 3600
