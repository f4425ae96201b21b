"""`maildesk run` reading two real Dovecot mailboxes: corpus mail and kill -9."""

from __future__ import annotations

import json
import random
import statistics
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from imapclient import SEEN
from sqlalchemy import select

from maildesk.db.database import Database
from maildesk.db.models import Intake
from tests.daemon_harness import DaemonProcess, RelaySink
from tests.dovecot_harness import Dovecot, append_with, dovecot_server
from tests.mailfactory import make_mail

pytestmark = pytest.mark.slow
MAILBOXES = ("support", "sales")


@pytest.fixture
def dovecot() -> Iterator[Dovecot]:
    with dovecot_server(*MAILBOXES) as server:
        yield server


def imap_config(dovecot: Dovecot) -> str:
    blocks = []
    for user in MAILBOXES:
        blocks.append(
            f"""
[[imap]]
name = "{user}"
host = "127.0.0.1"
port = {dovecot.port}
security = "none"
user = "{user}"
password = "{dovecot.users[user]}"
post_action = "flag"
poll_interval_seconds = 30
"""
        )
    return "\n".join(blocks)


@pytest.fixture
def daemon(tmp_path: Path, relay: RelaySink, dovecot: Dovecot) -> Iterator[DaemonProcess]:
    proc = DaemonProcess(tmp_path, relay_port=relay.port, extra_config=imap_config(dovecot))
    yield proc
    if proc.proc is not None and proc.proc.poll() is None:
        proc.kill()


def stored_refs(daemon: DaemonProcess) -> dict[str, datetime]:
    """source_ref -> received_at of every IMAP intake row (a ref twice fails the test)."""
    db = Database(f"sqlite:///{daemon.workdir / 'data' / 'maildesk.sqlite3'}")
    try:
        if db.is_empty():
            return {}
        with db.transaction() as session:
            rows = session.execute(
                select(Intake.source_ref, Intake.received_at).where(Intake.source == "imap")
            ).all()
    finally:
        db.dispose()
    refs = [ref for ref, _ in rows]
    duplicates = {ref for ref in refs if refs.count(ref) > 1}
    assert not duplicates, f"stored twice: {sorted(duplicates)[:5]}"
    return dict(rows)


def wait_for_all(daemon: DaemonProcess, expected: set[str], timeout: float) -> dict[str, datetime]:
    deadline = time.monotonic() + timeout
    while True:
        got = stored_refs(daemon)
        if set(got) >= expected:
            return got
        if time.monotonic() > deadline:
            missing = sorted(expected - set(got))
            raise AssertionError(f"{len(missing)} never stored, e.g. {missing[:5]}")
        time.sleep(0.2)


def uidvalidity(dovecot: Dovecot, user: str) -> int:
    with dovecot.client(user) as client:
        return int(client.folder_status("INBOX", [b"UIDVALIDITY"])[b"UIDVALIDITY"])


def all_seen(dovecot: Dovecot, user: str) -> bool:
    with dovecot.client(user) as client:
        client.select_folder("INBOX", readonly=True)
        return all(SEEN in f for f in client.get_flags(client.search()).values())


def corpus_messages(corpus: Path, count: int) -> list[bytes]:
    files = sorted((corpus / "spamassassin").glob("*/*.txt"))
    picked = random.Random(4).sample(files, count)
    return [path.read_bytes() for path in picked]


def test_corpus_mail_appended_while_idle_is_stored_exactly_once(
    daemon: DaemonProcess, dovecot: Dovecot, corpus: Path
) -> None:
    daemon.start()
    wait_idle(daemon)
    validity = {user: uidvalidity(dovecot, user) for user in MAILBOXES}
    appended: dict[str, float] = {}
    clients = {user: dovecot.client(user) for user in MAILBOXES}
    opened = {user: ctx.__enter__() for user, ctx in clients.items()}
    try:
        for n, raw in enumerate(corpus_messages(corpus, 300)):
            user = MAILBOXES[n % 2]
            uid = append_with(opened[user], raw, "INBOX")
            appended[f"{user}/INBOX/{validity[user]}/{uid}"] = time.time()
            time.sleep(0.02)  # mail arrives one by one, not in one burst
    finally:
        for ctx in clients.values():
            ctx.__exit__(None, None, None)
    got = wait_for_all(daemon, set(appended), timeout=90)
    assert set(got) == set(appended)
    deadline = time.monotonic() + 30
    while not all(all_seen(dovecot, u) for u in MAILBOXES) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert all(all_seen(dovecot, u) for u in MAILBOXES)
    latencies = sorted(got[ref].timestamp() - at for ref, at in appended.items())
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    print(
        f"\nIMAP APPEND->stored latency over {len(latencies)} corpus messages: "
        f"median {statistics.median(latencies) * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, "
        f"max {latencies[-1] * 1000:.0f} ms"
    )
    assert daemon.terminate() == 0


def wait_idle(daemon: DaemonProcess, timeout: float = 30) -> None:
    """Until the health file shows every folder IDLE-ing."""
    path = daemon.workdir / "data" / "imap-health.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            health = json.loads(path.read_text())
            if len(health) == len(MAILBOXES) and all(h["status"] == "idle" for h in health):
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"pollers not IDLE in {timeout}s: {daemon.log()[-2000:]}")


def test_kill_9_and_dovecot_restart_lose_nothing_and_store_nothing_twice(
    daemon: DaemonProcess, dovecot: Dovecot
) -> None:
    validity = {user: uidvalidity(dovecot, user) for user in MAILBOXES}
    expected: set[str] = set()
    done = threading.Event()

    def append_all() -> None:
        for n in range(100):
            user = MAILBOXES[n % 2]
            for attempt in range(100):  # Dovecot restarts below: retry, as a mail server would
                raw = make_mail(message_id=f"kill-{n}.{attempt}@customer.test", subject=f"K {n}")
                try:
                    expected.add(f"{user}/INBOX/{validity[user]}/{dovecot.append(user, raw)}")
                    break
                except Exception:
                    time.sleep(0.2)
            time.sleep(0.05)
        done.set()

    daemon.start()
    writer = threading.Thread(target=append_all)
    writer.start()
    chaos = random.Random(9)
    for round_ in range(3):
        time.sleep(chaos.uniform(0.5, 1.5))
        if round_ == 1:  # the server goes away under the running daemon
            dovecot.restart()
            continue
        daemon.kill()
        daemon.start()
    writer.join(timeout=120)
    assert done.is_set()
    wait_for_all(daemon, expected, timeout=60)  # and fails on anything stored twice
    log = daemon.log()
    assert "connection failed" in log and "reconnecting in" in log
    assert "UIDVALIDITY changed" not in log
    assert daemon.terminate() == 0
