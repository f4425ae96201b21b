"""sd_notify: READY=1 only after the listeners are bound, STOPPING=1 on SIGTERM."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

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
