"""sd_notify: READY=1 only after the listeners are bound, STOPPING=1 on SIGTERM."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from maildesk.app import App
from maildesk.service import Daemon
from tests.conftest import make_settings
from tests.daemon_harness import DaemonProcess, RelaySink

pytestmark = pytest.mark.slow


def test_ready_after_bind_and_stopping_on_sigterm(tmp_path: Path) -> None:
    notify_path = tmp_path / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(notify_path))
    listener.settimeout(30)
    relay = RelaySink().start()
    daemon = DaemonProcess(tmp_path, relay_port=relay.port)
    os.environ["NOTIFY_SOCKET"] = str(notify_path)
    try:
        daemon.start()
    finally:
        del os.environ["NOTIFY_SOCKET"]
    try:
        ready = listener.recv(4096).decode()
        assert "READY=1" in ready
        # READY came after bind: the port accepts connections now.
        socket.create_connection(("127.0.0.1", daemon.smtp_port), timeout=5).close()
        assert daemon.terminate() == 0
        messages = []
        while True:
            try:
                messages.append(listener.recv(4096).decode())
            except TimeoutError:
                break
            if any("STOPPING=1" in m for m in messages):
                break
        assert any("STOPPING=1" in m for m in messages)
    finally:
        listener.close()
        relay.stop()


def test_systemd_unit_is_hardened_and_prevents_restart_on_bad_config() -> None:
    unit = subprocess.run(
        [sys.executable, "-m", "maildesk", "systemd-unit"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for line in (
        "Type=notify",
        "Restart=on-failure",
        "RestartPreventExitStatus=78",
        "StateDirectory=maildesk",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
    ):
        assert line in unit
    assert f"ExecStart={sys.executable} -m maildesk" in unit


def test_systemd_unit_runs_the_config_it_was_given_on_its_data_dir(tmp_path: Path) -> None:
    """`maildesk --config X systemd-unit`: the unit reads X and the data X names, not /etc's."""
    data = tmp_path / "srv-data"
    config = tmp_path / "site.toml"
    config.write_text(f'data_dir = "{data}"\n', encoding="utf-8")
    relative = tmp_path / "relative.toml"
    relative.write_text('data_dir = "./var"\n', encoding="utf-8")

    def unit(*args: str) -> str:
        return subprocess.run(
            [sys.executable, "-m", "maildesk", *args, "systemd-unit"],
            capture_output=True,
            text=True,
            check=True,
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        ).stdout

    given = unit("--config", "site.toml")
    assert f"--config {config} --data-dir {data} run" in given
    assert f"ReadWritePaths={data}" in given  # writable under ProtectSystem=strict
    # A relative data_dir would be / under systemd: the state directory, and said so.
    rel = unit("--config", str(relative))
    assert f"--config {relative} --data-dir /var/lib/maildesk run" in rel
    assert "is relative" in rel and "--data-dir /var/lib/maildesk too" in rel
    default = unit()
    assert "--config /etc/maildesk/maildesk.toml --data-dir /var/lib/maildesk run" in default


class _RecordingNotifier:
    def __init__(self, watchdog_usec: int) -> None:
        self.address = "recorded"
        self.watchdog_usec = watchdog_usec
        self.sent: list[tuple[float, str]] = []

    def notify(self, state: str) -> None:
        self.sent.append((time.monotonic(), state))


def test_the_watchdog_is_fed_while_a_long_backlog_drains(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A drain of thousands of stored mails (an import stored with --no-process) runs
    longer than WatchdogSec: the loop is alive, so systemd must hear so meanwhile, not
    kill the daemon (SIGABRT) and restart it into the same backlog again and again."""
    settings = make_settings(
        tmp_path,
        f"sqlite:///{tmp_path / 'maildesk.sqlite3'}",
        listeners=[{"host": "127.0.0.1", "port": 0}],
    )
    app = App.build(settings)
    app.db.ensure_schema()
    notifier = _RecordingNotifier(watchdog_usec=200_000)  # a ping due every 0.1 s
    daemon = Daemon(app, notifier=notifier)  # type: ignore[arg-type]
    window: list[float] = []

    class Backlog:
        """Batch after batch for 1.5 s, as a worker does with a long queue."""

        def release_own_claims(self) -> int:
            return 0

        def drain(self, *, should_stop: Callable[[], bool], batch_size: int) -> None:
            window.append(time.monotonic())
            end = time.monotonic() + 1.5
            while time.monotonic() < end and not should_stop():
                time.sleep(0.02)  # one batch
            window.append(time.monotonic())
            daemon.stop_requested.set()

    monkeypatch.setattr(app, "worker", lambda *_a, **_k: Backlog())
    assert daemon.run() == 0
    start, end = window
    pings = [at for at, state in notifier.sent if state == "WATCHDOG=1" and start <= at <= end]
    assert len(pings) >= 5, notifier.sent  # about one per 0.1 s, not none for 1.5 s
