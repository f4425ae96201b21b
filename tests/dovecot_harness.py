"""A private, throwaway Dovecot IMAP server for tests (never the system instance).

Runs ``/usr/sbin/dovecot -F -c CONFIG`` as root with its own base_dir and
state_dir, a passwd-file passdb, a static userdb owned by the ``dovecot`` user
and Maildirs, all under a temporary directory, on a free loopback port.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from imapclient import IMAPClient

from tests.daemon_harness import free_port

DOVECOT = Path("/usr/sbin/dovecot")
APPENDUID = re.compile(rb"APPENDUID (\d+) (\d+)")


def dovecot_available() -> str | None:
    """None when a private Dovecot can run here, else why not."""
    if not DOVECOT.exists():
        return f"{DOVECOT} not installed (run .ci/test-services)"
    if os.geteuid() != 0:
        return "a private Dovecot needs root here"
    try:
        pwd.getpwnam("dovecot")
    except KeyError:
        return "no dovecot user"
    return None


def require_dovecot() -> None:
    reason = dovecot_available()
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


CONFIG = """\
base_dir = {root}/run
state_dir = {root}/state
instance_name = maildesk-test-{port}
listen = 127.0.0.1
protocols = imap
{ssl}
disable_plaintext_auth = no
auth_mechanisms = plain login{mechanisms}
first_valid_uid = 1
log_path = {root}/dovecot.log
mail_location = maildir:~/Maildir
# IDLE sessions learn of new mail through inotify; where that is unavailable
# (per-user instance limit reached on a busy test host) Dovecot falls back to
# checking every mailbox_idle_check_interval, 30 s by default: longer than
# the tests wait.
mailbox_idle_check_interval = 1 secs
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/passwd
}}
userdb {{
  driver = static
  args = uid=dovecot gid=dovecot home={root}/home/%u
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {tls_port}
  }}
}}
{extra}
"""
SSL_ON = """\
ssl = yes
ssl_cert = <{root}/tls/server.pem
ssl_key = <{root}/tls/server.key"""

OAUTH2 = """\
introspection_mode = post
introspection_url = {url}
username_attribute = username
active_attribute = active
active_value = true
"""
OAUTH2_PASSDB = """
passdb {{
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = {conf}
}}
"""


def make_certificates(where: Path) -> None:
    """A throwaway CA (ca.pem) and a server certificate for 127.0.0.1/localhost signed by it."""
    where.mkdir(parents=True, exist_ok=True)

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=where, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
            "/CN=maildesk test CA", "-keyout", "ca.key", "-out", "ca.pem",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
            "-keyout", "server.key", "-out", "server.csr")  # fmt: skip
    (where / "san.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"
    )
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", "server.pem")  # fmt: skip


@dataclass
class Dovecot:
    users: dict[str, str]
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="maildesk-dovecot-")))
    port: int = field(default_factory=free_port)
    tls: bool = False  # STARTTLS on ``port`` and implicit TLS on ``tls_port``
    tls_port: int = 0
    introspection_url: str = ""  # accept XOAUTH2/OAUTHBEARER tokens this RFC 7662 endpoint knows
    extra_config: str = ""  # appended to the config as it is (no {} formatting)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def ca_file(self) -> Path:
        return self.root / "tls" / "ca.pem"

    @property
    def config(self) -> Path:
        return self.root / "dovecot.conf"

    def setup(self) -> None:
        self.root.chmod(0o755)  # the dovecot user must reach its home below
        for sub in ("run", "state", "home"):
            (self.root / sub).mkdir(exist_ok=True)
        account = pwd.getpwnam("dovecot")
        os.chown(self.root / "home", account.pw_uid, account.pw_gid)
        lines = [f"{user}:{{PLAIN}}{password}" for user, password in self.users.items()]
        (self.root / "passwd").write_text("\n".join(lines) + "\n", encoding="utf-8")
        if self.tls:
            make_certificates(self.root / "tls")
            self.tls_port = self.tls_port or free_port()
        ssl = SSL_ON.format(root=self.root) if self.tls else "ssl = no"
        mechanisms = extra = ""
        if self.introspection_url:
            oauth2 = self.root / "dovecot-oauth2.conf.ext"
            oauth2.write_text(OAUTH2.format(url=self.introspection_url), encoding="utf-8")
            mechanisms = " xoauth2 oauthbearer"
            extra = OAUTH2_PASSDB.format(conf=oauth2)
        config = CONFIG.format(
            root=self.root,
            port=self.port,
            tls_port=self.tls_port,
            ssl=ssl,
            mechanisms=mechanisms,
            extra=extra,
        )
        self.config.write_text(config + self.extra_config, encoding="utf-8")

    def start(self, timeout: float = 20) -> Dovecot:
        self.proc = subprocess.Popen(
            [str(DOVECOT), "-F", "-c", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=(self.root / "dovecot.stderr").open("ab"),
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"dovecot exited {self.proc.returncode}: {self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    if sock.recv(64).startswith(b"* OK"):
                        return self
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"dovecot did not listen in {timeout}s: {self.log()}")

    def stop(self, timeout: float = 20) -> None:
        if self.proc is None:
            return
        # Its imap processes outlive the master (their sessions would go on):
        # end them too, as a real restart does (systemd: SIGTERM to every process
        # of the service, SIGKILL to what is left after a grace period). SIGKILL
        # to them would leave a session's maildir lock (dovecot-uidlist.lock,
        # which holds no pid) for Dovecot to wait out: two minutes before it is
        # stale, every session of that mailbox stalls in SELECT. The master holds
        # no such lock, and on SIGTERM it waits a second for its children; so it
        # is stopped (no new session while they are listed) and killed, and they
        # get the SIGTERM.
        children: list[int] = []
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGSTOP)
            children = _children(self.proc.pid)
            self.proc.kill()
            self.proc.wait(timeout=timeout)
        _end_processes(children, grace=5.0)
        (self.root / "run" / "master.pid").unlink(missing_ok=True)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def reload(self) -> None:
        """``doveadm reload``: new sessions get the config as it now is; running ones keep theirs."""
        subprocess.run(
            ["doveadm", "-c", str(self.config), "reload"], check=True, capture_output=True
        )

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def log(self) -> str:
        parts = []
        for name in ("dovecot.log", "dovecot.stderr"):
            path = self.root / name
            if path.exists():
                parts.append(path.read_text(errors="replace")[-3000:])
        return "\n".join(parts)

    # -- a second, independent client (the "user's mail program") ----------
    def connect(self, user: str, timeout: float = 30) -> IMAPClient:
        """A logged-in client the caller closes."""
        client = IMAPClient("127.0.0.1", port=self.port, ssl=False, timeout=timeout)
        try:
            client.login(user, self.users[user])
        except BaseException:
            client.shutdown()
            raise
        return client

    @contextmanager
    def client(self, user: str) -> Iterator[IMAPClient]:
        client = self.connect(user)
        try:
            yield client
        finally:
            try:
                client.logout()
            except Exception:
                client.shutdown()

    def append(
        self, user: str, raw: bytes, folder: str = "INBOX", flags: Sequence[bytes] = ()
    ) -> int:
        """APPEND one message; returns its UID (from APPENDUID)."""
        with self.client(user) as client:
            return append_with(client, raw, folder, flags)

    def mailbox(self, user: str, **overrides: Any) -> dict[str, Any]:
        """An ``[[imap]]`` block (as a dict) reading this server as ``user``."""
        values: dict[str, Any] = {
            "name": user,
            "host": "127.0.0.1",
            "port": self.port,
            "security": "none",
            "user": user,
            "password": self.users[user],
        }
        values.update(overrides)
        return values


def _end_processes(pids: list[int], grace: float) -> None:
    """SIGTERM ``pids``, then SIGKILL those still running after ``grace`` seconds."""
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    running = list(pids)
    while running and time.monotonic() < deadline:
        running = [pid for pid in running if _alive(pid)]
        time.sleep(0.02)
    for pid in running:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    """Running, not exited (a zombie waiting for its parent counts as exited)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _children(pid: int) -> list[int]:
    """Direct child processes of ``pid`` (Linux /proc)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found += [int(p) for p in (task / "children").read_text().split()]
    return found


def append_with(client: IMAPClient, raw: bytes, folder: str, flags: Sequence[bytes] = ()) -> int:
    reply = client.append(folder, raw, flags=tuple(flags))
    found = APPENDUID.search(reply)
    assert found, reply
    return int(found.group(2))


@contextmanager
def dovecot_server(*users: str, **options: Any) -> Iterator[Dovecot]:
    require_dovecot()
    server = Dovecot({user: f"pw-{user}" for user in users}, **options)
    server.setup()
    try:
        server.start()
        for user in users:  # mailboxes exist before maildesk is pointed at them
            with server.client(user) as client:
                client.select_folder("INBOX")
        yield server
    finally:
        server.remove()
