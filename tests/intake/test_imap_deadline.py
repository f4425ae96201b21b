"""An IMAP server whose replies trickle in cannot hold a poller or the daemon's stop.

The tests' real Dovecot sits behind a loopback relay that can send its replies
one byte at a time (``tests/slow_link.py``): every read gets a byte well
within the socket timeout, but a command never ends.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from imapclient import SEEN

from maildesk.app import App
from maildesk.intake.imap import FolderStatus
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
from tests.slow_link import SlowLink


@pytest.fixture
def dovecot() -> Iterator[Dovecot]:
    with dovecot_server(USER) as server:
        yield server


# At 0.2 s a byte the new-mail notice comes within the deadline and the DONE
# that ends the IDLE is cut; at 0.6 s the notice itself is.
@pytest.mark.parametrize("interval", [0.2, 0.6])
def test_a_trickling_server_is_cut_at_the_command_deadline_and_nothing_is_lost(
    app: App, dovecot: Dovecot, runner: Runner, interval: float
) -> None:
    with SlowLink(dovecot.port, interval=interval) as link:
        mailbox = dovecot.mailbox(
            USER,
            port=link.port,
            timeout_seconds=2,
            command_deadline_seconds=3,
            poll_interval_seconds=600,
        )
        intake = runner.start(app, mailbox)
        idle_everywhere(intake)
        link.trickle.set()
        raw = mail(1, body="The export still fails.\n" * 200)
        dovecot.append(USER, raw)

        failed = wait_until(
            lambda: [h for h in intake.health() if h.consecutive_failures], "the cut"
        )
        assert failed[0].status is FolderStatus.BACKOFF
        assert "command deadline exceeded" in failed[0].last_error
        assert "command_deadline_seconds=3" in failed[0].last_error
        assert stored(app) == []
        assert flags_of(dovecot) == {1: ()}  # not flagged before it is stored

        link.trickle.clear()  # the path is fast again: the poller reconnects by itself
        rows = wait_until(lambda: stored(app), "the message stored", timeout=30)
        assert [body for _, body in rows] == [raw]
        wait_until(lambda: SEEN in flags_of(dovecot)[1], "the message flagged")
        idle_everywhere(intake)
        assert len(stored(app)) == 1


def test_stopping_cuts_a_command_that_would_not_end(
    app: App, dovecot: Dovecot, runner: Runner
) -> None:
    # The default deadline (300 s) is far off: only the stop may cut the command.
    with SlowLink(dovecot.port, interval=0.5) as link:
        mailbox = dovecot.mailbox(USER, port=link.port, timeout_seconds=2)
        intake = runner.start(app, mailbox)
        idle_everywhere(intake)
        link.trickle.set()
        dovecot.append(USER, mail(1))
        time.sleep(3)  # the new-mail notice has trickled in; the poller is leaving IDLE

        intake.stop(timeout=8)
        runner.running.remove(intake)
        assert [h.status for h in intake.health()] == [FolderStatus.STOPPED]
        state = folder_state(app)
        assert state is not None and state.lease_holder is None  # released for others
    assert stored(app) == []

    # What the stop interrupted comes in with the next start.
    runner.start(app, dovecot.mailbox(USER))
    wait_until(lambda: len(stored(app)) == 1, "the message stored after the restart")


def test_a_new_mail_notice_split_across_packets_during_idle_is_read_whole(
    app: App, dovecot: Dovecot, runner: Runner, caplog: pytest.LogCaptureFixture
) -> None:
    with SlowLink(dovecot.port, interval=0.1) as link:
        intake = runner.start(app, dovecot.mailbox(USER, port=link.port, poll_interval_seconds=600))
        idle_everywhere(intake)
        link.trickle.set()
        dovecot.append(USER, mail(1))
        time.sleep(2)  # the "* 1 EXISTS" notice comes in a byte at a time
        link.trickle.clear()
        wait_until(lambda: len(stored(app)) == 1, "the message stored")
    assert "reconnecting" not in caplog.text  # one connection throughout


def test_a_slow_but_steady_link_still_brings_a_large_message_in(
    app: App,
    dovecot: Dovecot,
    runner: Runner,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A FETCH gets time for its size: a fixed deadline would cut a large message
    on a slow link every time, and the folder would never get past it."""
    monkeypatch.setattr("maildesk.intake.imap.FETCH_MIN_BYTES_PER_SECOND", 1024)
    raw = mail(1, body="Log attached below.\n" + "0123456789abcdef" * 1000 + "\n")  # 16 KB
    dovecot.append(USER, raw)
    with SlowLink(dovecot.port, interval=0.0002) as link:  # some 4 KB/s: the FETCH takes ~4 s
        link.trickle.set()
        mailbox = dovecot.mailbox(
            USER, port=link.port, timeout_seconds=2, command_deadline_seconds=2
        )
        runner.start(app, mailbox)
        rows = wait_until(lambda: stored(app), "the message stored", timeout=60)
        assert [body for _, body in rows] == [raw]
    assert "deadline exceeded" not in caplog.text  # in at the first FETCH, never cut


@pytest.mark.parametrize("security", ["none", "tls"])
def test_a_trickled_greeting_or_tls_handshake_is_cut_at_the_command_deadline(
    app: App, runner: Runner, security: str
) -> None:
    """Connecting is under the deadline too: imapclient reads the greeting (and
    does the TLS handshake) inside its constructor, before a watch could cut it.

    Python bounds a TLS handshake as a whole by the socket timeout; the
    greeting after it only read by read. Both are cut at the deadline here,
    well before the socket timeout would end the handshake.
    """
    with (
        dovecot_server(USER, tls=True) as dovecot,
        SlowLink(dovecot.tls_port if security == "tls" else dovecot.port, interval=0.2) as link,
    ):
        dovecot.append(USER, mail(1))
        link.trickle.set()  # from the first byte the server sends
        mailbox = dovecot.mailbox(
            USER,
            port=link.port,
            security=security,
            ca_file=str(dovecot.ca_file),
            timeout_seconds=10,
            command_deadline_seconds=2,
        )
        started = time.monotonic()
        intake = runner.start(app, mailbox)
        failed = wait_until(
            lambda: [h for h in intake.health() if h.consecutive_failures], "the cut", timeout=15
        )
        assert time.monotonic() - started < 8  # the greeting alone would take half a minute
        what = "TLS handshake and greeting" if security == "tls" else "greeting"
        assert "command deadline exceeded" in failed[0].last_error
        assert f"{what} took longer than command_deadline_seconds=2" in failed[0].last_error
        assert stored(app) == []

        link.trickle.clear()  # a fast path again: the poller gets in by itself
        wait_until(lambda: len(stored(app)) == 1, "the message stored", timeout=30)
