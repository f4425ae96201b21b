"""Run the real daemon as a subprocess, with a real aiosmtpd relay sink beside it."""

from __future__ import annotations

import email
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import Message as EmailMessageT
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

REPO = Path(__file__).resolve().parents[1]


def maildesk_env() -> dict[str, str]:
    """The environment for a ``python -m maildesk`` child: this checkout's package first.

    The child runs in the test's directory, where an editable install of
    another checkout (a git worktree's main one) would otherwise be imported.
    """
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": path}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    raw: bytes

    @property
    def message(self) -> EmailMessageT:
        return email.message_from_bytes(self.raw)


@dataclass
class RelaySink:
    """A relay that records what it is given; can be told to answer 4xx or 5xx.

    It offers SMTPUTF8 (RFC 6531) unless ``smtputf8`` is False.
    """

    port: int = field(default_factory=free_port)
    received: list[Received] = field(default_factory=list)
    reply: str = "250 OK"
    lock: threading.Lock = field(default_factory=threading.Lock)
    controller: Controller | None = None
    smtputf8: bool = True

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.reply.startswith("250"):
            with self.lock:
                self.received.append(
                    Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content)
                )
        return self.reply

    def start(self) -> RelaySink:
        self.controller = Controller(
            self, hostname="127.0.0.1", port=self.port, enable_SMTPUTF8=self.smtputf8
        )
        self.controller.start()
        return self

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    def wait_for(
        self, predicate: Callable[[list[Received]], bool], timeout: float = 30
    ) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                snapshot = list(self.received)
            if predicate(snapshot):
                return snapshot
            time.sleep(0.1)
        raise AssertionError(
            f"relay did not get the expected mail in {timeout}s: {len(self.received)} received"
        )


@dataclass
class DaemonProcess:
    workdir: Path
    smtp_port: int = field(default_factory=free_port)
    relay_port: int = 0
    extra_config: str = ""
    support: str = "support@example.com"
    templates: Path = REPO / "templates"
    proc: subprocess.Popen[bytes] | None = None

    @property
    def lmtp_socket(self) -> Path:
        return self.workdir / "lmtp.sock"

    @property
    def config_path(self) -> Path:
        return self.workdir / "maildesk.toml"

    def write_config(self) -> None:
        self.config_path.write_text(
            f"""
data_dir = "{self.workdir / "data"}"
support_addresses = ["{self.support}", "billing@example.com"]
mail_domain = "{self.support.split("@")[1]}"
installation_secret = "e2e-secret"
templates_dir = "{self.templates}"

[[listeners]]
protocol = "smtp"
host = "127.0.0.1"
port = {self.smtp_port}

[[listeners]]
protocol = "lmtp"
socket = "{self.lmtp_socket}"

[outbound]
transport = "smtp"
relay_host = "127.0.0.1"
relay_port = {self.relay_port}
drain_interval_seconds = 0.2
retry_base_seconds = 0.5
retry_max_seconds = 1
{self.extra_config}
""",
            encoding="utf-8",
        )

    def start(self) -> DaemonProcess:
        self.write_config()
        log = (self.workdir / "daemon.log").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "maildesk", "--config", str(self.config_path), "run"],
            stdout=log,
            stderr=log,
            cwd=self.workdir,
            env=maildesk_env(),
        )
        self.wait_listening()
        return self

    def wait_listening(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}: {self.log()[-3000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.smtp_port), timeout=1):
                    if self.lmtp_socket.exists():
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"daemon did not listen in {timeout}s: {self.log()[-3000:]}")

    def log(self) -> str:
        path = self.workdir / "daemon.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def terminate(self, timeout: float = 30) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=30)

    def status_json(self) -> tuple[int, dict[str, Any]]:
        """`maildesk status --json` as ops run it: its exit code (1 while something needs
        looking at) and what it says."""
        result = self._run("status", "--json")
        assert result.returncode in (0, 1), result.stderr
        return result.returncode, dict(json.loads(result.stdout))

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``maildesk --config <this config> ARGS`` in the daemon's working directory."""
        return subprocess.run(
            [sys.executable, "-m", "maildesk", "--config", str(self.config_path), *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            cwd=self.workdir,
            env=maildesk_env(),
        )

    def cli(self, *args: str) -> Any:
        result = self._run(*args)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout) if "--json" in args else result.stdout
