"""The daemon as ops run it: a second start, SIGHUP with a broken template, SIGTERM, a full disk."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.daemon_harness import REPO, DaemonProcess, RelaySink, maildesk_env
from tests.mailfactory import make_mail

pytestmark = pytest.mark.slow


def test_a_second_daemon_on_the_same_database_is_refused(tmp_path: Path, relay: RelaySink) -> None:
    first = DaemonProcess(tmp_path, relay_port=relay.port).start()
    # An operator starts another one by hand: the same data_dir, another SMTP port.
    second = DaemonProcess(tmp_path, relay_port=relay.port)
    second.write_config()
    proc = subprocess.Popen(
        [sys.executable, "-m", "maildesk", "--config", str(second.config_path), "run"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
        env=maildesk_env(),
    )
    try:
        try:
            output, _ = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
            pytest.fail(
                "a second daemon runs on the same SQLite database: "
                + output.decode(errors="replace")[-1500:]
            )
        assert proc.returncode == 75, output.decode(errors="replace")
        assert b"already running" in output
        # The first daemon still has its LMTP socket and still takes mail there.
        with smtplib.LMTP(str(first.lmtp_socket)) as client:
            client.sendmail("x@customer.test", ["support@example.com"], make_mail())
    finally:
        if proc.poll() is None:
            proc.kill()
        assert first.terminate() == 0


@pytest.mark.parametrize(
    ("host", "code", "said"),
    [
        # Held by another program (or a maildesk still stopping): temporary, systemd retries.
        (
            "127.0.0.1",
            75,
            "listeners.0.port: cannot listen on 127.0.0.1:{port}: address already in use",
        ),
        # An address this machine does not have: the config's to fix, not retried.
        ("192.0.2.1", 78, "listeners.0.host: cannot listen on 192.0.2.1:{port}: cannot assign"),
    ],
)
def test_a_listener_that_cannot_bind_is_one_clear_line_and_the_documented_code(
    tmp_path: Path, host: str, code: int, said: str
) -> None:
    """No traceback and exit 1 (which systemd restarts in a loop): file, key, reason, code."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        config = tmp_path / "maildesk.toml"
        config.write_text(
            f'data_dir = "{tmp_path / "data"}"\ninstallation_secret = "s"\n'
            f'[[listeners]]\nhost = "{host}"\nport = {port}\n',
            encoding="utf-8",
        )
        proc = subprocess.run(
            [sys.executable, "-m", "maildesk", "--config", str(config), "run"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
            env=maildesk_env(),
            check=False,
        )
    assert proc.returncode == code, proc.stderr
    assert f"{config}: " + said.format(port=port) in proc.stderr
    assert "Traceback" not in proc.stderr


def test_check_beside_the_running_daemon_passes_its_listeners(
    tmp_path: Path, relay: RelaySink
) -> None:
    """Ops run `maildesk check` while the daemon runs: its own listeners are no failure."""
    daemon = DaemonProcess(tmp_path, relay_port=relay.port).start()
    try:
        output = daemon.cli("check")  # exit 0, or it fails
        assert f"127.0.0.1:{daemon.smtp_port}: a running maildesk answers" in output
        assert f"socket {daemon.lmtp_socket}: a running maildesk answers" in output
    finally:
        assert daemon.terminate() == 0


def _break_template(templates: Path) -> None:
    ack = templates / "ack.customer.txt.j2"
    ack.write_text(ack.read_text() + "\n{% if %}broken\n")


def test_sighup_with_a_broken_template_keeps_the_old_templates(
    tmp_path: Path, relay: RelaySink
) -> None:
    templates = tmp_path / "templates"
    shutil.copytree(REPO / "templates", templates)
    daemon = DaemonProcess(tmp_path, relay_port=relay.port, templates=templates).start()
    try:
        _break_template(templates)
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "SIGHUP" not in daemon.log() and time.monotonic() < deadline:
            time.sleep(0.1)
        with smtplib.SMTP("127.0.0.1", daemon.smtp_port) as client:
            client.sendmail(
                "a1@customer.test", ["support@example.com"], make_mail(sender="a1@customer.test")
            )
        # The customer is acknowledged with the templates that worked, not quarantined.
        got = relay.wait_for(lambda r: any(x.rcpt_tos == ["a1@customer.test"] for x in r), 15)
        ack = next(x for x in got if x.rcpt_tos == ["a1@customer.test"])
        assert b"We received your request" in ack.raw
        assert "kept" in daemon.log() and "ack.customer.txt.j2" in daemon.log()
        assert daemon.cli("quarantine", "list", "--json") == []
    finally:
        assert daemon.terminate() == 0


class SlowRelay(RelaySink):
    """A relay that takes ``delay`` seconds to answer each DATA."""

    delay: float = 0.0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        await asyncio.sleep(self.delay)
        return await super().handle_DATA(server, session, envelope)


def test_sigterm_does_not_wait_for_the_whole_outbox_batch(tmp_path: Path) -> None:
    relay = SlowRelay().start()
    daemon = DaemonProcess(tmp_path, relay_port=relay.port).start()
    try:
        relay.delay = 2.5
        with smtplib.SMTP("127.0.0.1", daemon.smtp_port) as client:
            for n in range(8):
                sender = f"c{n}@customer.test"
                client.sendmail(sender, ["support@example.com"], make_mail(sender=sender))
        # Two sent: the sender is inside a batch that holds the rest of the acks.
        relay.wait_for(lambda r: len(r) >= 2, 20)
        started = time.monotonic()
        assert daemon.terminate(timeout=60) == 0
        took = time.monotonic() - started
        # It finishes the mail in hand (up to 2.5 s at this relay) and leaves the rest queued.
        assert took < 8, f"SIGTERM took {took:.1f}s: the daemon sent the outbox batch first"
        assert len(relay.received) < 8
        relay.delay = 0
        daemon.start()  # and the rest goes out after the restart
        relay.wait_for(lambda r: len({x.rcpt_tos[0] for x in r}) == 8, 30)
    finally:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.terminate()
        relay.stop()


@pytest.fixture
def small_disk(tmp_path: Path) -> Any:
    """A 16 MiB tmpfs as the daemon's data_dir (needs root and mount; skipped otherwise)."""
    mount = tmp_path / "data"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {result.stderr.decode(errors='replace')}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(path: Path) -> None:
    """Write ``path`` until the file system is full (unbuffered: nothing is left to flush)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0" * 65536)
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def test_a_full_disk_answers_4xx_and_recovers(
    tmp_path: Path, relay: RelaySink, small_disk: Path
) -> None:
    daemon = DaemonProcess(tmp_path, relay_port=relay.port).start()
    try:
        filler = small_disk / "filler"
        _fill(filler)
        big = make_mail(sender="full@customer.test", body="x" * 200_000 + "\n")
        with smtplib.SMTP("127.0.0.1", daemon.smtp_port, timeout=30) as client:
            with pytest.raises(smtplib.SMTPDataError) as refused:
                client.sendmail("full@customer.test", ["support@example.com"], big)
            assert refused.value.smtp_code == 451
        filler.unlink()
        with smtplib.SMTP("127.0.0.1", daemon.smtp_port, timeout=30) as client:
            client.sendmail("full@customer.test", ["support@example.com"], big)
        relay.wait_for(lambda r: any(x.rcpt_tos == ["full@customer.test"] for x in r), 20)
        assert daemon.proc is not None and daemon.proc.poll() is None
    finally:
        assert daemon.terminate() == 0


def test_the_run_lock_is_per_database_on_sqlite_and_per_node_on_postgresql(
    tmp_path: Path, database_url: str
) -> None:
    from maildesk.app import App
    from maildesk.service import AlreadyRunning, RunLock
    from tests.conftest import make_settings

    def app(node: str) -> App:
        return App.build(make_settings(tmp_path, database_url, node_name=node))

    first, same, other = app("node-a"), app("node-a"), app("node-b")
    held = RunLock(first)
    try:
        with pytest.raises(AlreadyRunning, match="already running"):
            RunLock(same)
        if database_url.startswith("sqlite"):
            with pytest.raises(AlreadyRunning):
                RunLock(other)  # one SQLite file, one daemon
        else:
            RunLock(other).release()  # PostgreSQL: another node may run beside it
    finally:
        held.release()
    RunLock(same).release()  # free again once the first one stopped
    for each in (first, same, other):
        each.db.dispose()
