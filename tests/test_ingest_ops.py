"""`maildesk ingest` as ops meet it behind Postfix and in bulk: the real command, as a process.

Postfix's pipe(8) reads the exit code: 0 delivered, 75 (EX_TEMPFAIL) deferred and
tried again, death by a signal deferred; 1, 65, 66, 70, 77 bounced; and a command
still running at command_time_limit (1000 s) is killed with SIGKILL and *bounced*.
"""

from __future__ import annotations

import mailbox
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session

from maildesk.db.models import Direction, Intake, IntakeState, Message
from tests.conftest import private_pg_database, write_cli_config
from tests.daemon_harness import maildesk_env
from tests.mailfactory import make_mail


def run_ingest(
    config: Path, *args: str, stdin: bytes | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "maildesk", "--config", str(config), "ingest", *args],
        input=stdin if stdin is not None else b"",
        capture_output=True,
        timeout=timeout,
        check=False,
        cwd=config.parent,
        env=maildesk_env(),
    )


def counts(url: str) -> tuple[dict[IntakeState, int], int, int]:
    """Intake rows by state; message rows; distinct Message-IDs among them."""
    engine = create_engine(url)
    with Session(engine) as session:
        states = dict(
            session.execute(select(Intake.state, func.count()).group_by(Intake.state)).all()
        )
        inbound = Message.direction == Direction.INBOUND
        messages = session.scalar(select(func.count()).where(inbound)) or 0
        distinct = (
            session.scalar(select(func.count(func.distinct(Message.dedupe_key))).where(inbound))
            or 0
        )
    engine.dispose()
    return states, messages, distinct


@pytest.fixture
def sqlite_config(tmp_path: Path, sqlite_template: Path) -> tuple[Path, str]:
    path = tmp_path / "maildesk.sqlite3"
    shutil.copy(sqlite_template, path)
    url = f"sqlite:///{path}"
    return write_cli_config(tmp_path / "maildesk.toml", tmp_path / "data", url), url


@pytest.fixture
def pg_config(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    with private_pg_database("maildesk_ingest_ops") as url:
        yield write_cli_config(tmp_path / "maildesk.toml", tmp_path / "data", url), url


class TableLock:
    """Another PostgreSQL session holding a table in ACCESS EXCLUSIVE mode (a migration)."""

    def __init__(self, url: str, table: str) -> None:
        self.conn = psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"))
        self.conn.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")

    def release(self) -> None:
        self.conn.rollback()
        self.conn.close()


def test_pipe_delivery_gives_up_with_75_before_the_mta_kills_it_on_a_hung_database(
    pg_config: tuple[Path, str],
) -> None:
    """A database that hangs (a table locked by a migration) instead of failing must not
    hold `ingest -` until Postfix's command_time_limit, which kills and bounces."""
    config, url = pg_config
    lock = TableLock(url, "intake")
    try:
        started = time.monotonic()
        result = run_ingest(
            config, "--time-limit", "3", "-", stdin=make_mail(message_id="hung@c.test")
        )
        took = time.monotonic() - started
    finally:
        lock.release()
    assert result.returncode == 75, result.stderr.decode()
    assert took < 20
    assert b"try later" in result.stderr
    assert counts(url)[0] == {}  # nothing stored, so nothing to dedupe on the retry


def test_pipe_delivery_stored_but_processing_hangs_exits_0_at_the_time_limit(
    pg_config: tuple[Path, str],
) -> None:
    """Stored is ours: a hang in processing must end in 0, not in Postfix's kill and bounce."""
    config, url = pg_config
    lock = TableLock(url, "known_message_ids")  # processing reads it; storing does not
    try:
        result = run_ingest(
            config, "--time-limit", "4", "-", stdin=make_mail(message_id="half@c.test")
        )
    finally:
        lock.release()
    assert result.returncode == 0, result.stderr.decode()
    assert b"stored, processing left pending" in result.stderr
    states, _, _ = counts(url)
    assert sum(states.values()) == 1


def test_one_unreadable_path_does_not_keep_the_others_out(
    sqlite_config: tuple[Path, str], tmp_path: Path
) -> None:
    config, url = sqlite_config
    first, last = tmp_path / "a.eml", tmp_path / "b.eml"
    first.write_bytes(make_mail(message_id="a@c.test", sender="a@c.test"))
    last.write_bytes(make_mail(message_id="b@c.test", sender="b@c.test"))
    maildir = tmp_path / "md"
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True)
    (maildir / "new" / "1.host").write_bytes(make_mail(message_id="n@c.test", sender="n@c.test"))
    (maildir / "cur" / "2.host:2,S").write_bytes(make_mail(message_id="c@c.test", sender="c@c"))
    (maildir / "tmp" / "3.host").write_bytes(make_mail(message_id="t@c.test", sender="t@c.test"))
    missing = tmp_path / "gone.eml"

    result = run_ingest(config, "--json", str(first), str(missing), str(maildir), str(last))

    assert result.returncode == 66, result.stderr.decode()
    assert f"not read: {missing}: no such file".encode() in result.stderr
    summary = result.stdout.decode().strip().splitlines()[-1]
    assert '"stored": 4' in summary and '"unreadable": 1' in summary
    states, messages, _ = counts(url)
    assert messages == 4  # a, the Maildir's new/ and cur/ (not tmp/), b
    assert states == {IntakeState.DONE: 4}


def test_empty_stdin_stores_nothing_and_says_so(sqlite_config: tuple[Path, str]) -> None:
    config, url = sqlite_config
    result = run_ingest(config, "-", stdin=b"")
    assert result.returncode == 66, result.stderr.decode()
    assert b"no message on stdin" in result.stderr
    assert counts(url)[0] == {}  # no empty message in quarantine


def test_an_mbox_copy_of_a_mail_already_stored_is_a_duplicate(
    sqlite_config: tuple[Path, str], tmp_path: Path
) -> None:
    """An mbox writer quotes body lines that start with "From "; unquoted, the mail is
    the one the pipe stored, not a second message on the ticket."""
    config, url = sqlite_config
    raw = make_mail(
        message_id="quoted@c.test", body="Hello,\nFrom here on the printer is broken.\n"
    )
    box = mailbox.mbox(str(tmp_path / "export.mbox"))  # mboxo: "From " -> ">From "
    box.add(raw)
    box.close()
    assert b"\n>From here" in (tmp_path / "export.mbox").read_bytes()

    assert run_ingest(config, "-", stdin=raw).returncode == 0
    result = run_ingest(config, "--json", str(tmp_path / "export.mbox"))

    assert result.returncode == 0, result.stderr.decode()
    assert '"duplicates": 1' in result.stdout.decode()
    assert counts(url)[1] == 1


def test_an_import_killed_midway_and_run_again_leaves_nothing_behind(
    sqlite_config: tuple[Path, str], tmp_path: Path
) -> None:
    """SIGKILL (Postfix's time limit, the OOM killer) mid-import, then the same import
    again: every mail once, and none left claimed by the dead process for 10 minutes."""
    config, url = sqlite_config
    total = 1200
    box = tmp_path / "big.mbox"
    with box.open("wb") as handle:
        for n in range(total):
            handle.write(b"From x@c.test Mon Mar  2 09:00:00 2026\n")
            handle.write(
                make_mail(message_id=f"bulk{n}@c.test", sender=f"u{n}@c.test", subject=f"s{n}")
            )
            handle.write(b"\n")
    args = [sys.executable, "-m", "maildesk", "--config", str(config), "ingest", str(box)]
    proc = subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=maildesk_env()
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # killed while it holds a batch
            states, messages, _ = counts(url)
            if states.get(IntakeState.PROCESSING) and messages:
                break
            assert proc.poll() is None, "the import ended before it could be killed"
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait()
    assert counts(url)[0].get(IntakeState.PROCESSING)

    again = run_ingest(config, "--json", str(box), timeout=120)

    assert again.returncode == 0, again.stderr.decode()
    states, messages, distinct = counts(url)
    assert IntakeState.PROCESSING not in states and IntakeState.PENDING not in states
    assert messages == distinct == total


def test_sigterm_while_waiting_for_a_locked_database_defers(
    sqlite_config: tuple[Path, str],
) -> None:
    """Killed by a signal (postfix stop), the pipe is deferred, never bounced: no exit 1."""
    import sqlite3

    config, url = sqlite_config
    holder = sqlite3.connect(url.split("///", 1)[1], isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "maildesk", "--config", str(config), "ingest", "-"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=maildesk_env(),
        )
        assert proc.stdin is not None
        proc.stdin.write(make_mail(message_id="term@c.test"))
        proc.stdin.close()
        threading.Event().wait(3)  # in the busy wait for the lock
        proc.terminate()
        proc.wait(timeout=20)
    finally:
        holder.rollback()
        holder.close()
    assert proc.returncode in (-15, 75), proc.returncode


def _children(pid: int) -> set[int]:
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_a_killed_import_leaves_no_parse_processes_behind(
    sqlite_config: tuple[Path, str], tmp_path: Path
) -> None:
    """`kill PID` of an import must not leave its parse children running for good
    (each holding the spam model, and the stdout an MTA or a script waits on)."""
    config, _url = sqlite_config
    box = tmp_path / "big.mbox"
    with box.open("wb") as handle:
        for n in range(2000):
            handle.write(b"From x@c.test Mon Mar  2 09:00:00 2026\n")
            handle.write(make_mail(message_id=f"o{n}@c.test", sender=f"u{n}@c.test") + b"\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "maildesk", "--config", str(config), "ingest", str(box)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=maildesk_env(),
    )
    children: set[int] = set()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(children) < 3:
            # The two parse children and multiprocessing's resource tracker.
            children |= _children(proc.pid)
            assert proc.poll() is None, "the import ended before it could be killed"
            time.sleep(0.05)
        assert len(children) >= 3, "the import started no parse children"
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(pid) for pid in children):
        time.sleep(0.1)
    left = [pid for pid in children if _alive(pid)]
    for pid in left:  # do not leave them to the next test either
        subprocess.run(["kill", "-9", str(pid)], check=False)
    assert not left, f"parse children {left} outlived the killed import"
