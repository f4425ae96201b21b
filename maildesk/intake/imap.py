"""IMAP intake: one poller thread per configured mailbox folder (MAIL-RULES §1).

What is new is decided by UIDVALIDITY + UID kept in ``imap_folder_state``,
never by \\Seen. Per batch: fetch with BODY.PEEK[] (fetching sets no flag),
store through :class:`IntakeStore` (one commit), record the highest UID, and
only then apply the post-action (flag, move, delete) and record that too, so
a crash anywhere leaves at worst a message fetched again, which is recognised
by Message-ID + content hash and not stored twice.

New mail is noticed through IDLE within seconds; every
``poll_interval_seconds`` (and at least every :data:`IDLE_MAX_SECONDS`, well
before the server's IDLE timeout) IDLE is left for a reconciliation search.
Each folder is read by one node at a time: a lease row in the state table,
renewed while the poller runs and taken over by another node once expired.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import imaplib
import json
import logging
import os
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from select import POLLIN, POLLPRI, poll
from typing import Any

from imapclient import DELETED, SEEN, IMAPClient
from imapclient.exceptions import LoginError
from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from maildesk.config import (
    ConfigError,
    ImapAuth,
    ImapMailboxSettings,
    ImapPostAction,
    ImapSecurity,
    Settings,
    resolve_secret,
)
from maildesk.connection_watch import CommandOverdue, ConnectionWatch
from maildesk.db.database import Database
from maildesk.db.models import Blob, ImapFolderState, Intake
from maildesk.db.upsert import insert_ignore
from maildesk.domain.message import TRUNCATED_HEADER, UNFETCHABLE_HEADER
from maildesk.intake.oauth2 import (
    Login,
    OAuth2Error,
    OAuth2Login,
    PasswordLogin,
    oauth2_login,
)
from maildesk.intake.post_action_retry import RetryBook, passes, refusal_code
from maildesk.intake.store import Envelope, IntakeStore, header_message_id

log = logging.getLogger("maildesk.intake.imap")

SOURCE = "imap"
# RFC 2177: servers may drop an IDLE after 30 minutes; restart long before.
IDLE_MAX_SECONDS = 540.0
IDLE_CHECK_SECONDS = 1.0  # how often an IDLE-ing poller looks at its stop flag and lease
BACKOFF_BASE_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 300.0
FETCH_BATCH = 50  # UIDs stored per transaction
FETCH_BYTES = 8 * 1024 * 1024  # at most this much message data per FETCH command
STORE_BYTES = 32 * 1024 * 1024  # at most this much message data held per store transaction
# A FETCH may take command_deadline_seconds plus a second per this many bytes.
FETCH_MIN_BYTES_PER_SECOND = 16 * 1024
# A message whose own FETCH failed this often is stored as a placeholder and passed over.
FETCH_ATTEMPTS = 3
# The longest UID set one post-action command names (well under any server's line limit).
UID_SET_CHARS = 4000
# After the server refused a mailbox's credentials, its next login waits this
# long, doubling up to LOGIN_RETRY_MAX_SECONDS: providers lock an account after a
# handful of failed logins (Microsoft 365 smart lockout: 10 by default).
LOGIN_RETRY_SECONDS = 60.0
LOGIN_RETRY_MAX_SECONDS = 1800.0
STOP_GRACE_SECONDS = 5.0  # on stop, a poller's command may finish this long before it is cut

Clock = Callable[[], datetime]


class FolderStatus(enum.StrEnum):
    STARTING = "starting"
    STANDBY = "standby"  # another node holds the lease
    POLLING = "polling"
    IDLE = "idle"
    WAITING = "waiting"  # polling mode, between two polls
    BACKOFF = "backoff"  # failed; reconnecting after a delay
    STOPPED = "stopped"


class LoginHeld(Exception):
    """The mailbox's credentials were refused lately; no login is tried before its retry."""


class LoginGate:
    """One mailbox's logins, shared by the pollers of all its folders.

    A refused login (wrong password, revoked token) does not mend itself: each
    folder poller trying on its own every 1, 2, 4 ... seconds made a dozen
    failed logins a minute with a few folders, enough to lock the account at a
    real provider. Logins of a mailbox are tried one at a time; once one is
    refused, none is tried before the retry time, which doubles from
    :data:`LOGIN_RETRY_SECONDS`. ``free_retries`` refusals are retried at once
    (an OAuth2 access token the server refused is replaced by a fresh one).
    """

    def __init__(self, free_retries: int = 0) -> None:
        self.free_retries = free_retries
        self.lock = threading.Lock()
        self.refusals = 0
        self.retry_at = 0.0  # time.monotonic()
        self.error = ""

    def wait_seconds(self) -> float:
        return max(0.0, self.retry_at - time.monotonic())

    def attempt(self, log_in: Callable[[], None]) -> None:
        """``log_in()`` unless a refusal holds the mailbox back (then LoginHeld)."""
        with self.lock:
            if self.wait_seconds() > 0:
                raise LoginHeld(self.error)
            try:
                log_in()
            except LoginError as exc:
                self.refusals += 1
                self.retry_at = time.monotonic() + login_retry_delay(
                    self.refusals - self.free_retries
                )
                self.error = f"{failure_kind(exc)}: {type(exc).__name__}: {exc}"
                raise
            self.refusals, self.retry_at, self.error = 0, 0.0, ""


def login_retry_delay(refusals: int) -> float:
    """How long a mailbox waits after its ``refusals``-th refused login in a row."""
    if refusals <= 0:
        return 0.0
    return min(LOGIN_RETRY_MAX_SECONDS, LOGIN_RETRY_SECONDS * 2 ** (refusals - 1))


class FolderUnavailable(Exception):
    """The server refused to SELECT the folder (it does not exist, or not by that name)."""


class LeaseLost(Exception):
    """Another node took this folder over (our lease had expired)."""


@dataclass
class FolderHealth:
    """What ops see per folder (also written to ``<data_dir>/imap-health.json``)."""

    mailbox: str
    folder: str
    status: FolderStatus = FolderStatus.STARTING
    last_error: str = ""
    consecutive_failures: int = 0
    last_ok_at: str = ""  # ISO time of the last successful search
    stored: int = 0  # messages stored by this process
    last_uid: int = 0
    # Stored messages whose post-action the server refused for a reason that may
    # pass (NO [OVERQUOTA], say): tried again later; the reason is the latest refusal.
    post_action_waiting: int = 0
    post_action_waiting_reason: str = ""


@dataclass(frozen=True)
class Progress:
    uidvalidity: int
    last_uid: int
    acted_uid: int
    copied: frozenset[int] = frozenset()  # above acted_uid, in move_to already (no MOVE)


def backoff_delay(failures: int) -> float:
    """Exponential backoff with a little jitter: 1, 2, 4, ... seconds, at most 5 minutes."""
    base = min(BACKOFF_MAX_SECONDS, BACKOFF_BASE_SECONDS * 2 ** max(0, failures - 1))
    return base * random.uniform(0.9, 1.1)


def source_ref(mailbox: str, folder: str, uidvalidity: int, uid: int) -> str:
    return f"{mailbox}/{folder}/{uidvalidity}/{uid}"


def ref_folder(ref: str) -> str:
    """``<mailbox>/<folder>`` of a source ref (folder names may contain '/')."""
    return ref.rsplit("/", 2)[0]


def truncated_copy(header: bytes, size: int, limit: int) -> bytes:
    """The stored stand-in for a message too large to fetch: its header plus a note."""
    note = f"{TRUNCATED_HEADER}: original size {size} bytes exceeds max_message_bytes={limit}"
    return note.encode("ascii") + b"\r\n" + header


def unfetchable_copy(where: str, attempts: int, error: str) -> bytes:
    """The stored stand-in for a message the server failed to deliver: a note alone."""
    error = " ".join(error.split())[:500]
    note = f"{UNFETCHABLE_HEADER}: {where} failed to FETCH {attempts} times, left on the server"
    return f"{note}: {error}".encode("ascii", "replace") + b"\r\n\r\n"


def new_uids(found: Iterable[int], last_uid: int) -> list[int]:
    """UIDs above ``last_uid``: ``UID n+1:*`` also returns the last message when it is <= n."""
    return sorted(uid for uid in set(found) if uid > last_uid)


def uid_sets(uids: Iterable[int], limit: int = UID_SET_CHARS) -> Iterator[str]:
    """``uids`` as IMAP sequence sets (``"3:7,9"``), each at most ``limit`` characters.

    A runs of consecutive UIDs is one range, so a post-action after a long wait
    (every UID since acted_uid, thousands of them) is a short command; servers
    refuse command lines past a limit (Dovecot: 64 kB), which a list of every
    UID would pass. Only UIDs given are named: a range covers no gap.
    """
    runs: list[list[int]] = []
    for uid in sorted(set(uids)):
        if runs and uid == runs[-1][1] + 1:
            runs[-1][1] = uid
        else:
            runs.append([uid, uid])
    part: list[str] = []
    size = 0
    for first, last in runs:
        text = str(first) if first == last else f"{first}:{last}"
        if part and size + 1 + len(text) > limit:
            yield ",".join(part)
            part, size = [], 0
        part.append(text)
        size += len(text) + (1 if size else 0)
    if part:
        yield ",".join(part)


def uid_set_members(text: str) -> set[int]:
    """The UIDs a sequence set written by :func:`uid_sets` names (``"3:5,9"``: 3, 4, 5, 9)."""
    found: set[int] = set()
    for item in filter(None, text.split(",")):
        first, _, last = item.partition(":")
        found.update(range(int(first), int(last or first) + 1))
    return found


def size_groups(sizes: Sequence[tuple[int, int]], budget: int) -> Iterator[list[int]]:
    """Split (uid, size) pairs into FETCH groups of at most ``budget`` bytes (at least one)."""
    group: list[int] = []
    total = 0
    for uid, size in sizes:
        if group and total + size > budget:
            yield group
            group, total = [], 0
        group.append(uid)
        total += size
    if group:
        yield group


def command_watch(mailbox: ImapMailboxSettings) -> ConnectionWatch:
    """The watch that holds each command to the mailbox's ``command_deadline_seconds``."""
    return ConnectionWatch(mailbox.command_deadline_seconds, "command_deadline_seconds")


class _WatchedIMAP4(imaplib.IMAP4):
    """imaplib's connection, handed to the watch as soon as its socket exists.

    ``context`` set: implicit TLS, as imapclient's own TLS class does it, but
    with the handshake begun only once the watch can cut it.
    """

    def __init__(
        self,
        host: str,
        port: int,
        timeout: float | None,
        context: ssl.SSLContext | None,
        watch: ConnectionWatch,
    ) -> None:
        self._context, self._watch = context, watch
        super().__init__(host, port, timeout)

    def _create_socket(self, timeout: float | None) -> socket.socket:
        sock: socket.socket = super()._create_socket(timeout)  # type: ignore[misc]
        if self._context is not None:
            sock = self._context.wrap_socket(
                sock, server_hostname=self.host, do_handshake_on_connect=False
            )
        self._watch.attach(lambda: sock)
        if isinstance(sock, ssl.SSLSocket):
            try:
                sock.do_handshake()
            except BaseException:
                sock.close()
                raise
        return sock


class _WatchedClient(IMAPClient):
    """An IMAPClient whose connection, TLS handshake and greeting are under the deadline.

    imapclient opens the connection and reads the server's greeting inside its
    constructor, before there is a client to hand to the watch, so a server
    that trickled its greeting would hold the poller; here the connection is
    opened by :class:`_WatchedIMAP4` instead.
    """

    def __init__(self, watch: ConnectionWatch, *args: Any, **kwargs: Any) -> None:
        self._watch = watch
        super().__init__(*args, **kwargs)

    def _create_IMAP4(self) -> imaplib.IMAP4:
        context = self.ssl_context if self.ssl else None
        what = "TLS handshake and greeting" if context else "greeting"
        with self._watch.command(what):
            try:
                return _WatchedIMAP4(
                    self.host, self.port, self._timeout.connect, context, self._watch
                )
            except BaseException:
                self._watch.attach(None)  # imaplib has closed the socket
                raise


def connect(
    mailbox: ImapMailboxSettings,
    login: Login,
    watch: ConnectionWatch,
    gate: LoginGate | None = None,
) -> IMAPClient:
    """Open, secure and log in (through ``gate``), attached to ``watch``; raises on any failure."""
    context = ssl.create_default_context(
        cafile=str(mailbox.ca_file) if mailbox.ca_file is not None else None
    )
    if not mailbox.verify_tls:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    client = _WatchedClient(
        watch,
        mailbox.host,
        port=mailbox.effective_port,
        ssl=mailbox.security is ImapSecurity.TLS,
        ssl_context=context,
        timeout=mailbox.timeout_seconds,
    )
    watch.attach(client.socket)
    try:
        with watch.command("log-in"):
            if mailbox.security is ImapSecurity.STARTTLS:
                client.starttls(context)
            try:
                if gate is None:
                    login.login(client)
                else:
                    gate.attempt(lambda: login.login(client))
            except LoginError:
                login.refused()
                raise
    except BaseException:
        disconnect(client, watch)
        raise
    return client


def failure_kind(exc: BaseException) -> str:
    """How a failed connection is named in the log line and the health file."""
    if isinstance(exc, LoginError):
        return "login failed"
    if isinstance(exc, OAuth2Error):
        return "OAuth2 token refresh failed"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return "TLS failed: server certificate not trusted (check ca_file / verify_tls)"
    if isinstance(exc, ssl.SSLError):
        return "TLS failed"
    if isinstance(exc, CommandOverdue):
        return "command deadline exceeded"
    if isinstance(exc, FolderUnavailable):
        return "folder cannot be selected"
    return "connection failed"


def disconnect(client: IMAPClient, watch: ConnectionWatch) -> None:
    """Log out (within the deadline), or just close; never raises."""
    try:
        with watch.command("LOGOUT"):
            client.logout()
    except Exception:
        with contextlib.suppress(Exception):  # already gone
            client.shutdown()
    finally:
        watch.attach(None)


class FolderStateStore:
    """The folder's row in ``imap_folder_state``; every write checks we hold the lease."""

    def __init__(
        self,
        db: Database,
        mailbox: str,
        folder: str,
        holder: str,
        clock: Clock,
        lease_seconds: float,
    ) -> None:
        self.db = db
        self.mailbox, self.folder, self.holder = mailbox, folder, holder
        self.clock = clock
        self.lease = timedelta(seconds=lease_seconds)

    def _mine(self) -> Any:
        return (
            (ImapFolderState.mailbox == self.mailbox)
            & (ImapFolderState.folder == self.folder)
            & (ImapFolderState.lease_holder == self.holder)
        )

    def _update(self, session: Session, where: Any, **values: Any) -> int:
        stmt = (
            update(ImapFolderState)
            .where(where)
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        return int(session.execute(stmt).rowcount)  # type: ignore[attr-defined]

    def acquire(self) -> bool:
        """Take (or keep) the lease if it is free, ours, or expired."""
        now = self.clock()
        with self.db.transaction() as session:
            insert_ignore(
                session,
                ImapFolderState,
                {
                    "mailbox": self.mailbox,
                    "folder": self.folder,
                    "uidvalidity": 0,
                    "last_uid": 0,
                    "acted_uid": 0,
                    "updated_at": now,
                },
                ["mailbox", "folder"],
            )
            free = or_(
                ImapFolderState.lease_holder.is_(None),
                ImapFolderState.lease_holder == self.holder,
                ImapFolderState.lease_expires_at < now,
            )
            where = (
                (ImapFolderState.mailbox == self.mailbox)
                & (ImapFolderState.folder == self.folder)
                & free
            )
            return (
                self._update(
                    session, where, lease_holder=self.holder, lease_expires_at=now + self.lease
                )
                == 1
            )

    def renew(self, **values: Any) -> None:
        """Extend the lease (and write ``values``); raises LeaseLost if it is not ours."""
        now = self.clock()
        with self.db.transaction() as session:
            changed = self._update(
                session, self._mine(), lease_expires_at=now + self.lease, updated_at=now, **values
            )
        if changed != 1:
            raise LeaseLost(f"{self.mailbox}/{self.folder} is now read by another node")

    def release(self) -> None:
        with self.db.transaction() as session:
            self._update(session, self._mine(), lease_holder=None, lease_expires_at=None)

    def load(self) -> Progress:
        with self.db.transaction() as session:
            row = session.scalars(
                select(ImapFolderState).where(
                    ImapFolderState.mailbox == self.mailbox, ImapFolderState.folder == self.folder
                )
            ).one()
            copied = frozenset(uid_set_members(row.copied_uids))
            return Progress(row.uidvalidity, row.last_uid, row.acted_uid, copied)

    def reset(self, uidvalidity: int) -> None:
        self.renew(uidvalidity=uidvalidity, last_uid=0, acted_uid=0, copied_uids="")

    def record_stored(self, uid: int) -> None:
        self.renew(last_uid=uid)

    def record_acted(self, uid: int) -> None:
        self.renew(acted_uid=uid)

    def record_copied(self, uids: Iterable[int]) -> None:
        """The UIDs now in move_to whose move is not done yet (what was there is replaced)."""
        self.renew(copied_uids=",".join(uid_sets(uids)))


@dataclass
class PollerDeps:
    """What a folder poller needs from the rest of maildesk."""

    store: IntakeStore
    db: Database
    holder: str
    clock: Clock
    stop: threading.Event
    on_stored: Callable[[], None]
    on_health: Callable[[FolderHealth], None]


class FolderPoller:
    """Reads one folder of one mailbox until stopped; never raises."""

    writable = True  # False: the folder is only looked at (no post-action)

    def __init__(
        self, mailbox: ImapMailboxSettings, folder: str, login: Login, deps: PollerDeps
    ) -> None:
        self.mailbox, self.folder, self.login, self.deps = mailbox, folder, login, deps
        self.name = f"{mailbox.key}/{folder}"
        self.state = FolderStateStore(
            deps.db, mailbox.key, folder, deps.holder, deps.clock, mailbox.lease_seconds
        )
        self.health = FolderHealth(mailbox.key, folder)
        self.failures = 0
        self.last_renew = 0.0
        self.watch = command_watch(mailbox)
        # UID -> (failed FETCHes of it alone, last error). The UIDs of a batch whose
        # FETCH failed are here with 0: from then on they are fetched one at a time.
        self.fetch_failures: dict[int, tuple[int, str]] = {}
        # Called with the hashes of messages found again that were stored before.
        self.on_seen_again: Callable[[Iterable[str]], None] | None = None
        self.uidvalidity = 0  # of the folder as selected by the current session
        self.move_target_problem = ""  # why move_to could not be created, if it could not
        self.gate = LoginGate()  # ImapIntake shares one between the folders of a mailbox
        # UIDs whose refused post-action is tried again (post_action_retry), and the
        # highest UID up to which each is acted on, passed over or waiting there:
        # what this process knows (a restart finds it again between acted_uid and
        # last_uid, and tries it all).
        self.retries = RetryBook(
            mailbox.post_action_retry_seconds, mailbox.post_action_retry_for_seconds
        )
        self.settled_uid = 0

    # -- the loop -----------------------------------------------------------
    def run(self) -> None:
        stop = self.deps.stop
        while not stop.is_set():
            try:
                held = self.gate.wait_seconds()
                if held > 0:  # the mailbox's login was refused: no folder tries before its time
                    self._report(FolderStatus.BACKOFF, self.gate.error)
                    stop.wait(held)
                    continue
                if not self.state.acquire():
                    self._stand_by()
                    stop.wait(self.mailbox.lease_seconds / 3)
                    continue
                self.session()
            except LeaseLost as exc:
                log.warning("imap %s: %s; standing by", self.name, exc)
                self._stand_by(str(exc))
            except LoginHeld:  # another folder's login was refused meanwhile
                self._report(FolderStatus.BACKOFF, self.gate.error)
            except Exception as exc:
                self._failed(exc)
        try:
            self.state.release()
        except Exception as exc:
            log.warning("imap %s: could not release the lease: %s", self.name, exc)
        self._report(FolderStatus.STOPPED)

    def _stand_by(self, error: str = "") -> None:
        """Another node holds the folder's lease: it reads the folder, and says how that goes.

        This node's failures in a row end here: left in its health, `maildesk status`
        here said the folder failed (and the metric stayed up) for as long as the
        other node read it.
        """
        self._forget_progress()
        self.failures = 0
        self.health.consecutive_failures = 0
        self._report(FolderStatus.STANDBY, error)

    def _failed(self, exc: Exception) -> None:
        if self.deps.stop.is_set():  # cut on the way out (ImapIntake.stop)
            log.info("imap %s: stopped during a command (%s)", self.name, exc)
            return
        self.failures += 1
        delay = max(backoff_delay(self.failures), self.gate.wait_seconds())
        what = failure_kind(exc)
        if isinstance(exc, LoginError):
            what += " (credentials refused; the folders of this mailbox wait for one retry)"
        error = f"{type(exc).__name__}: {exc}"
        log.warning(
            "imap %s: %s (%s); reconnecting in %.1fs (failure %d)",
            self.name,
            what,
            error,
            delay,
            self.failures,
        )
        self.health.consecutive_failures = self.failures
        self._report(FolderStatus.BACKOFF, f"{what}: {error}")
        self.deps.stop.wait(delay)

    def session(self) -> None:
        """One connection: select, reconcile, then IDLE (or wait) and poll until stopped."""
        client = connect(self.mailbox, self.login, self.watch, self.gate)
        command = self.watch.command
        try:
            writable = self.writable and self.mailbox.post_action is not ImapPostAction.NONE
            self.uidvalidity = 0
            with command("SELECT"):
                uidvalidity = self._select(client, writable)
            progress = self._check_uidvalidity(uidvalidity)
            self.uidvalidity = uidvalidity
            if writable and self.mailbox.post_action is ImapPostAction.MOVE:
                with command("LIST/CREATE of move_to"):
                    self._ensure_move_target(client)
            with command("CAPABILITY"):
                use_idle = self.mailbox.idle and b"IDLE" in client.capabilities()
            if writable:
                self._catch_up_post_actions(client, progress)
            while not self.deps.stop.is_set():
                self.poll(client, uidvalidity)
                # Only now is the connection known to work: a post-action or a
                # store (the database is down) that fails on every connect keeps
                # backing off instead of retrying every second.
                if self.failures:
                    log.info("imap %s: working again after %d failures", self.name, self.failures)
                    self.failures = 0
                    self.health.consecutive_failures = 0
                if writable and self.retries.due(time.monotonic()):
                    # On a new connection: a server's raised quota or other changed
                    # limits (Dovecot after `doveadm reload`) often reach only new sessions.
                    log.info(
                        "imap %s: post-actions due to be tried again; reconnecting for them",
                        self.name,
                    )
                    return
                if use_idle:
                    noticed = self._idle(client)
                else:
                    self._wait(self.mailbox.poll_interval_seconds)
                    noticed = False
                if noticed or self.deps.stop.is_set():
                    continue
                with command("SELECT (reconciliation)"):
                    if self._select(client, writable) != uidvalidity:
                        return  # the folder was recreated: a new session reads it anew
        finally:
            disconnect(client, self.watch)

    def _select(self, client: IMAPClient, writable: bool) -> int:
        """SELECT (EXAMINE) the folder; its UIDVALIDITY. FolderUnavailable if refused.

        Also at each reconciliation: a session keeps the folder as it was when
        selected. Deleted and created again by someone else meanwhile, Dovecot
        goes on answering SEARCH from the old one, with no notice and no error,
        so the new folder's mail was never read.
        """
        try:
            info = client.select_folder(self.folder, readonly=not writable)
        except imaplib.IMAP4.abort:
            raise
        except imaplib.IMAP4.error as exc:
            hint = _separator_hint(client, self.folder)
            raise FolderUnavailable(f"{self.folder!r}: {exc}{hint}") from exc
        uidvalidity = int(info[b"UIDVALIDITY"])
        if self.uidvalidity and uidvalidity != self.uidvalidity:
            log.warning(
                "imap %s: UIDVALIDITY changed from %d to %d while selected (folder "
                "recreated?); reading it again on a new connection",
                self.name,
                self.uidvalidity,
                uidvalidity,
            )
        return uidvalidity

    def _ensure_move_target(self, client: IMAPClient) -> None:
        """Create ``move_to`` if it cannot hold mail yet.

        A CREATE the server refuses (a name it does not allow, no right to
        create) is said in the log and the health file, and the folder is read
        all the same: each move is then refused and the mail left where it is,
        stored. Failing the connection for it kept every mail out.
        """
        target = self.mailbox.move_to
        self.move_target_problem = ""
        if _selectable(client, target):
            return
        try:
            client.create_folder(target)
        except imaplib.IMAP4.abort:
            raise
        except imaplib.IMAP4.error as exc:
            if refusal_code(str(exc)) == "ALREADYEXISTS":
                # Created between our LIST and CREATE: by another folder's poller
                # starting at the same moment, another node, or a person.
                return
            hint = _separator_hint(client, target)
            error = f"move_to {target!r} does not exist and cannot be created ({exc}){hint}"
            log.warning("imap %s: %s; mail is stored and left in %s", self.name, error, self.folder)
            self.move_target_problem = error
            self.health.last_error = error
            self.deps.on_health(replace(self.health))

    def _check_uidvalidity(self, uidvalidity: int) -> Progress:
        progress = self.state.load()
        if progress.uidvalidity == uidvalidity:
            return progress
        if progress.uidvalidity:
            log.warning(
                "imap %s: UIDVALIDITY changed from %d to %d (folder recreated?): reading it "
                "again from the start; messages already stored are recognised by Message-ID "
                "and content and not stored again",
                self.name,
                progress.uidvalidity,
                uidvalidity,
            )
        self.state.reset(uidvalidity)
        self.fetch_failures.clear()
        self._forget_progress()
        return Progress(uidvalidity, 0, 0)

    # -- reading ------------------------------------------------------------
    def poll(self, client: IMAPClient, uidvalidity: int) -> int:
        """Store every message above the recorded UID; returns how many were stored."""
        self._begin_poll(client)
        uids = self._new_uids(client)
        stored = 0
        for start in range(0, len(uids), FETCH_BATCH):
            chunk = uids[start : start + FETCH_BATCH]
            sizes = self._sizes(client, chunk)
            for part in self._store_groups(chunk, sizes):
                stored += self._store_part(client, part, sizes, uidvalidity)
        if stored:
            log.info("imap %s: stored %d new messages (up to UID %d)", self.name, stored, uids[-1])
        self.health.last_ok_at = self.deps.clock().isoformat()
        return stored

    def _store_groups(self, chunk: list[int], sizes: dict[int, int]) -> Iterator[list[int]]:
        """The chunk's UIDs in groups holding at most STORE_BYTES of mail (at least one).

        A group's bodies are all in memory until its transaction commits: fifty
        messages near ``max_message_bytes`` would otherwise be held at once.
        UIDs that vanished count for nothing; over-size ones only by their header.
        """
        limit = self.mailbox.max_message_bytes
        held = [(uid, size if (size := sizes.get(uid, 0)) <= limit else 0) for uid in chunk]
        yield from size_groups(held, STORE_BYTES)

    def _store_part(
        self, client: IMAPClient, uids: list[int], sizes: dict[int, int], uidvalidity: int
    ) -> int:
        """Store, record and act on one group of UIDs; returns how many were new."""
        items = self._fetch(client, uids, {u: sizes[u] for u in uids if u in sizes}, uidvalidity)
        fresh = self._not_yet_stored(items)
        if fresh:
            self.deps.store.store_many(fresh)
        self.state.record_stored(uids[-1])
        self.health.stored += len(fresh)
        self.health.last_uid = uids[-1]
        if fresh:
            self.deps.on_stored()
        self._post_action(client, uids, sizes)
        self._settle(uids[-1])
        # Failures of UIDs passed are forgotten; a given-up one is kept, so no
        # catch-up of post-actions in this process acts on it.
        self.fetch_failures = {
            u: f for u, f in self.fetch_failures.items() if u > uids[-1] or self._given_up(u)
        }
        return len(fresh)

    def _new_uids(self, client: IMAPClient) -> list[int]:
        """The folder's UIDs above the last one recorded as stored, in order."""
        last = self.state.load().last_uid
        with self.watch.command("SEARCH"):
            return new_uids(client.search(["UID", f"{last + 1}:*"]), last)

    def _sizes(self, client: IMAPClient, uids: list[int]) -> dict[int, int]:
        """RFC822.SIZE of each UID that still exists."""
        with self.watch.command("FETCH RFC822.SIZE"):
            return {
                uid: int(data[b"RFC822.SIZE"])
                for uid, data in client.fetch(uids, ["RFC822.SIZE"]).items()
                if b"RFC822.SIZE" in data
            }

    def _begin_poll(self, client: IMAPClient) -> None:
        self._report(FolderStatus.POLLING)
        _take_change_notices(client)  # what they announce, the search below finds
        self._renew_if_due()  # every write below checks the lease as well

    def _fetch(
        self, client: IMAPClient, uids: list[int], sizes: dict[int, int], uidvalidity: int
    ) -> list[tuple[bytes, Envelope]]:
        """Raw bytes per UID of ``sizes`` (header plus note when too large).

        UIDs without a size vanished before it was asked for and are skipped.
        """
        limit = self.mailbox.max_message_bytes
        small = [(uid, size) for uid, size in sorted(sizes.items()) if size <= limit]
        raws = dict(self._bodies(client, small))
        large = [uid for uid, size in sizes.items() if size > limit]
        for uid, data in self._guarded_fetch(client, large, "BODY.PEEK[HEADER]", {}):
            header = data.get(b"BODY[HEADER]")
            if header is not None:
                raws[uid] = truncated_copy(bytes(header), sizes[uid], limit)
                log.warning(
                    "imap %s: UID %d is %d bytes, over max_message_bytes=%d: "
                    "stored its header only, for quarantine",
                    self.name,
                    uid,
                    sizes[uid],
                    limit,
                )
        for uid in (uid for uid in sorted(sizes) if self._given_up(uid)):
            raws[uid] = self._unfetchable(uid, uidvalidity)
        return [
            (
                raws[uid],
                Envelope(SOURCE, source_ref(self.mailbox.key, self.folder, uidvalidity, uid)),
            )
            for uid in uids
            if uid in raws
        ]

    def _bodies(
        self, client: IMAPClient, sized: list[tuple[int, int]]
    ) -> Iterator[tuple[int, bytes]]:
        """(UID, raw bytes) of the messages, in FETCHes of at most FETCH_BYTES.

        Each FETCH gets a second more per FETCH_MIN_BYTES_PER_SECOND of what it
        reads: on a slow but steady link the largest message still comes
        through (a fixed deadline would cut it, and then again on every
        retry), while a trickle is still cut. Vanished UIDs, and those given
        up on (:meth:`_fetch_failed`), are skipped.
        """
        size_of = dict(sized)
        for group in size_groups(sized, FETCH_BYTES):
            for uid, data in self._guarded_fetch(client, group, "BODY.PEEK[]", size_of):
                body = data.get(b"BODY[]")
                if body is not None:
                    yield uid, bytes(body)

    def _guarded_fetch(
        self, client: IMAPClient, uids: list[int], item: str, size_of: dict[int, int]
    ) -> Iterator[tuple[int, dict[bytes, Any]]]:
        """FETCH ``item`` of the UIDs not given up on; one at a time where one failed before.

        A UID in ``size_of`` gives its FETCH a second more per
        FETCH_MIN_BYTES_PER_SECOND of its size (see :meth:`_bodies`).
        """
        wanted = [uid for uid in uids if not self._given_up(uid)]
        if not wanted:
            return
        suspect = any(uid in self.fetch_failures for uid in wanted)
        for part in [[uid] for uid in wanted] if suspect else [wanted]:
            transfer = sum(size_of.get(uid, 0) for uid in part) / FETCH_MIN_BYTES_PER_SECOND
            try:
                with self.watch.command(f"FETCH {item}", extra_seconds=transfer):
                    fetched = client.fetch(part, [item])
            except imaplib.IMAP4.error as exc:
                self._fetch_failed(part, exc)
                raise
            yield from fetched.items()

    def _fetch_failed(self, uids: list[int], exc: imaplib.IMAP4.error) -> None:
        """Count a FETCH the server failed; the poll fails (and is retried) as before.

        Only the server's answers count: NO/BAD, and BYE or end of file
        (Dovecot closes the connection when it cannot read a mail file). The
        deadline (CommandOverdue), a time-out or a reset while reading (OSError)
        is the link, not the message, and is not counted. A batch that
        failed is fetched one UID at a time next time, so a UID whose own FETCH
        failed FETCH_ATTEMPTS times is the culprit: it is given up on, and the
        rest of the folder goes on.
        """
        for uid in uids:
            count = self.fetch_failures.get(uid, (0, ""))[0] + (len(uids) == 1)
            self.fetch_failures[uid] = (count, f"{type(exc).__name__}: {exc}")

    def _given_up(self, uid: int) -> bool:
        return self.fetch_failures.get(uid, (0, ""))[0] >= FETCH_ATTEMPTS

    def _unfetchable(self, uid: int, uidvalidity: int) -> bytes:
        """The placeholder stored (and quarantined) for a UID given up on."""
        attempts, error = self.fetch_failures[uid]
        where = f"UID {uid} of {self.name} (UIDVALIDITY {uidvalidity})"
        log.warning(
            "imap %s: UID %d failed to FETCH %d times (%s): stored a placeholder for "
            "quarantine; the message is left on the server",
            self.name,
            uid,
            attempts,
            error,
        )
        self.health.last_error = f"{where} cannot be fetched: {error}"
        self.deps.on_health(replace(self.health))
        return unfetchable_copy(where, attempts, error)

    def _not_yet_stored(self, items: list[tuple[bytes, Envelope]]) -> list[tuple[bytes, Envelope]]:
        """Drop messages this folder already stored (same Message-ID and same bytes).

        That happens after a crash between storing and recording the UID, and
        after a UIDVALIDITY change, when the whole folder is read again.
        """
        ids = {raw: header_message_id(raw) or "" for raw, _env in items}
        hashes = {raw: hashlib.sha256(raw).hexdigest() for raw, _env in items}
        wanted = {mid for mid in ids.values() if mid}
        # Without a Message-ID the bytes alone identify it: only when they are
        # already stored at all (a blob) is the intake table searched for them.
        bare = {hashes[raw] for raw, _env in items if not ids[raw]}
        mailbox_prefix = f"{self.mailbox.key}/"
        rows: list[Any] = []
        with self.deps.db.transaction() as session:
            if wanted:
                rows += session.execute(
                    select(Intake.header_message_id, Intake.raw_sha256, Intake.source_ref).where(
                        Intake.source == SOURCE, Intake.header_message_id.in_(wanted)
                    )
                ).all()
            if bare:
                known_blobs = set(session.scalars(select(Blob.sha256).where(Blob.sha256.in_(bare))))
                if known_blobs:
                    rows += session.execute(
                        select(
                            Intake.header_message_id, Intake.raw_sha256, Intake.source_ref
                        ).where(Intake.source == SOURCE, Intake.raw_sha256.in_(known_blobs))
                    ).all()
        # The whole mailbox: a message moved from one read folder to another (out
        # of Junk, say) is the same message, seen again, not a new one.
        known = {
            (mid or "", sha) for mid, sha, ref in rows if ref_folder(ref).startswith(mailbox_prefix)
        }
        fresh = []
        again = []
        for raw, env in items:
            key = (ids[raw], hashes[raw])
            if key in known:
                log.info("imap %s: %s was stored before; not storing it again", self.name, env)
                again.append(hashes[raw])
                continue
            known.add(key)
            fresh.append((raw, env))
        if again and self.on_seen_again is not None:
            self.on_seen_again(again)
        return fresh

    # -- after storing ------------------------------------------------------
    def _post_action(
        self, client: IMAPClient, uids: list[int], sizes: dict[int, int] | None = None
    ) -> None:
        """Flag, move or delete stored UIDs; ``sizes`` when the caller already asked for them."""
        action = self.mailbox.post_action
        # Only a placeholder of a message given up on was stored: the server
        # holds the only copy, and whoever repairs it finds it where it was.
        uids = [u for u in uids if not self._given_up(u)]
        if action is ImapPostAction.NONE or not uids:
            return
        if action is ImapPostAction.DELETE:
            # Over max_message_bytes only the header was stored: the server holds
            # the only copy of the rest, so it is never expunged (MAIL-RULES §1).
            if sizes is None:
                sizes = self._sizes(client, uids)
            uids = [u for u in uids if sizes.get(u, 0) <= self.mailbox.max_message_bytes]
            if not uids:
                return
        with self.watch.command(f"post-action {action}"):
            try:
                self._apply_post_action(client, uids)
            except imaplib.IMAP4.abort:
                raise  # the connection failed: reconnect and catch up
            except imaplib.IMAP4.error as exc:
                # The server refused it (NO/BAD: no right to remove mail, quota, a
                # target that cannot be created). The mail is stored, so leaving it
                # where it is loses nothing; stopping the folder for it would stall
                # every later mail.
                self._refused(uids, str(exc))
                return
        if any(u in self.retries for u in uids):
            log.info("imap %s: post-action %s done at last for UIDs %s", self.name, action, uids)
            self.retries.done(uids)
            self._report_waiting()

    def _refused(self, uids: list[int], reason: str) -> None:
        """Keep ``uids`` to be tried again if the reason may pass, else pass them over."""
        action = self.mailbox.post_action
        error = f"post-action {action} refused: {reason}"
        if action is ImapPostAction.MOVE and self.move_target_problem:
            error += f" ({self.move_target_problem})"
        where = f"UIDs {uids[0]}:{uids[-1]} ({len(uids)})"
        if not passes(reason):
            self.retries.done(uids)
            log.warning("imap %s: %s; %s left as they are", self.name, error, where)
        else:
            now = self.deps.clock()
            fresh = [u for u in uids if u not in self.retries]
            self.retries.refused(uids, reason, now, time.monotonic(), self._stored_at(fresh))
            given_up = self.retries.expired(now)
            if given_up:
                log.warning(
                    "imap %s: %s; gave up on UIDs %s after trying for %.0f hours "
                    "(post_action_retry_for_seconds); left as they are",
                    self.name,
                    error,
                    ", ".join(map(str, given_up[:20])) + (" ..." if len(given_up) > 20 else ""),
                    self.mailbox.post_action_retry_for_seconds / 3600,
                )
            still = [self.retries.waiting[u] for u in uids if u in self.retries]
            if still:
                wait = max(0.0, (self.retries.next_at() or 0.0) - time.monotonic())
                # A warning when they begin to wait; each refusal after it, one info line.
                say = log.warning if any(w.attempts == 1 for w in still) else log.info
                say(
                    "imap %s: %s (%s, a reason that may pass); %s stay to be tried again in %.0fs",
                    self.name,
                    error,
                    refusal_code(reason) or "no code",
                    where,
                    wait,
                )
        self.health.last_error = error
        self._report_waiting(force=True)

    def _stored_at(self, uids: list[int]) -> dict[int, datetime]:
        """When each of ``uids`` was stored (its retries are counted from then); if known."""
        if not uids:
            return {}
        refs = {source_ref(self.mailbox.key, self.folder, self.uidvalidity, u): u for u in uids}
        with self.deps.db.transaction() as session:
            rows = session.execute(
                select(Intake.source_ref, func.min(Intake.received_at))
                .where(Intake.source == SOURCE, Intake.source_ref.in_(list(refs)))
                .group_by(Intake.source_ref)
            ).all()
        return {refs[ref]: at for ref, at in rows}

    def _settle(self, uid: int) -> None:
        """Every UID up to ``uid`` is acted on, passed over or waiting: record what is done.

        acted_uid stays below the lowest UID waiting, so a restart tries it again.
        """
        self.settled_uid = max(self.settled_uid, uid)
        lowest = self.retries.lowest()
        self.state.record_acted(self.settled_uid if lowest is None else lowest - 1)

    def _forget_progress(self) -> None:
        """What this process knew of post-actions (another node may act meanwhile)."""
        self.retries.clear()
        self.settled_uid = 0
        self._report_waiting()

    def _report_waiting(self, force: bool = False) -> None:
        waiting, reason = len(self.retries), self.retries.summary()
        if not force and (waiting, reason) == (
            self.health.post_action_waiting,
            self.health.post_action_waiting_reason,
        ):
            return
        self.health.post_action_waiting = waiting
        self.health.post_action_waiting_reason = reason
        self.deps.on_health(replace(self.health))

    def _apply_post_action(self, client: IMAPClient, uids: list[int]) -> None:
        action = self.mailbox.post_action
        if action is ImapPostAction.FLAG:
            for part in uid_sets(uids):
                client.add_flags(part, [SEEN], silent=True)
        elif action is ImapPostAction.MOVE:
            if client.has_capability("MOVE"):
                for part in uid_sets(uids):
                    client.move(part, self.mailbox.move_to)
            else:
                self._copy_and_expunge(client, uids)
        elif action is ImapPostAction.DELETE:
            self._expunge(client, uids)

    def _copy_and_expunge(self, client: IMAPClient, uids: list[int]) -> None:
        """A move without MOVE: COPY into move_to what is not there yet, then expunge.

        Each COPY that went through is recorded at once: when a later COPY,
        the STORE \\Deleted or the EXPUNGE is refused (or the connection drops,
        or the daemon restarts), the move is tried again, and copying anew would
        leave the mail in move_to once more each time. Only UIDs copied, now or
        before, are expunged. A crash between a COPY and its record copies those
        UIDs once more on the next try: without MOVE the two cannot be one step.
        """
        progress = self.state.load()
        copied = set(progress.copied)
        for part in uid_sets(u for u in uids if u not in copied):
            client.copy(part, self.mailbox.move_to)
            copied |= uid_set_members(part)
            # Those at or below acted_uid are settled and never tried again.
            self.state.record_copied(u for u in copied if u > progress.acted_uid)
        self._expunge(client, uids)

    def _expunge(self, client: IMAPClient, uids: list[int]) -> None:
        """Flag ``uids`` \\Deleted and expunge them, and never anything else.

        With UIDPLUS, UID EXPUNGE names them. Without it there is only EXPUNGE,
        which removes every message flagged \\Deleted: also one another client
        (an agent's mail program) marked deleted and may still undo, or one that
        came in during this poll and was never stored. So EXPUNGE is sent only
        when every message flagged \\Deleted is ours (a UID just flagged, or
        one stored whole before); otherwise ours stay flagged for the next
        expunge, by us or by the other client. The SEARCH and the EXPUNGE are
        two commands: a flag set in between is not seen, which is as much as a
        server without UIDPLUS allows.
        """
        for part in uid_sets(uids):
            client.add_flags(part, [DELETED], silent=True)
        if client.has_capability("UIDPLUS"):
            for part in uid_sets(uids):
                client.uid_expunge(part)
            return
        others = set(client.search(["DELETED"])) - set(uids)
        others -= self._stored_whole(sorted(others))
        if others:
            listed = ", ".join(map(str, sorted(others)[:10]))
            note = (
                f"the server has no UIDPLUS, and {len(others)} message(s) flagged \\Deleted "
                f"that maildesk has not stored whole (UIDs {listed}) would be expunged with "
                "ours; ours are left flagged \\Deleted until they can be"
            )
            log.warning("imap %s: %s", self.name, note)
            self.health.last_error = note
            self.deps.on_health(replace(self.health))
            return
        client.expunge()

    def _stored_whole(self, uids: list[int]) -> set[int]:
        """Those of ``uids`` (of this folder and UIDVALIDITY) stored in full, not as a note."""
        if not uids:
            return set()
        refs = {source_ref(self.mailbox.key, self.folder, self.uidvalidity, u): u for u in uids}
        notes = [f"{name}:".encode() for name in (UNFETCHABLE_HEADER, TRUNCATED_HEADER)]
        found: set[int] = set()
        with self.deps.db.transaction() as session:
            rows = session.execute(
                select(Intake.source_ref, func.substr(Blob.data, 1, 64))
                .join(Blob, Blob.sha256 == Intake.raw_sha256)
                .where(Intake.source == SOURCE, Intake.source_ref.in_(list(refs)))
            ).all()
        for ref, head in rows:
            if not any(bytes(head).startswith(note) for note in notes):
                found.add(refs[ref])
        return found

    def _catch_up_post_actions(self, client: IMAPClient, progress: Progress) -> None:
        """Apply post-actions a crash left undone, and try again those due.

        Between acted_uid and last_uid lie UIDs whose post-action was not done:
        after a crash (or in a new process) all of them, within this process only
        those waiting in :attr:`retries`; the rest there were acted on or passed over.
        """
        undone_from = max(progress.acted_uid, self.settled_uid)
        due = set(self.retries.due(time.monotonic()))
        if undone_from >= progress.last_uid and not due:
            return
        with self.watch.command("SEARCH"):
            found = client.search(["UID", f"{progress.acted_uid + 1}:{progress.last_uid}"])
        there = {u for u in found if progress.acted_uid < u <= progress.last_uid}
        gone = [u for u in self.retries.waiting if u not in there]
        if gone:  # moved or deleted by someone else: nothing left to act on
            self.retries.done(gone)
        undone = sorted(u for u in there if u > undone_from)
        uids = sorted({*undone, *(due & there)})
        placeholders = self._stored_placeholders(progress.uidvalidity, uids)
        self._post_action(client, [u for u in uids if u not in placeholders])
        # Whatever is still due was not tried (a placeholder): it would bring the
        # poller straight back here on every connection.
        self.retries.done(self.retries.due(time.monotonic()))
        self._settle(progress.last_uid)
        self._report_waiting()
        if undone:
            log.info(
                "imap %s: applied the post-action left undone to %d messages",
                self.name,
                len(undone),
            )

    def _stored_placeholders(self, uidvalidity: int, uids: list[int]) -> set[int]:
        """UIDs stored only as a placeholder (the server failed to deliver them).

        What failed is counted in memory: after a crash between storing such a
        placeholder and acting on it, only the stored bytes still say so, and
        the server's copy must not be moved or expunged.
        """
        if not uids:
            return set()
        refs = {source_ref(self.mailbox.key, self.folder, uidvalidity, u): u for u in uids}
        prefix = UNFETCHABLE_HEADER.encode() + b":"
        with self.deps.db.transaction() as session:
            found = session.scalars(
                select(Intake.source_ref)
                .join(Blob, Blob.sha256 == Intake.raw_sha256)
                .where(
                    Intake.source == SOURCE,
                    Intake.source_ref.in_(list(refs)),
                    func.substr(Blob.data, 1, len(prefix)) == prefix,
                )
            ).all()
        return {refs[ref] for ref in found}

    # -- waiting ------------------------------------------------------------
    def _idle(self, client: IMAPClient) -> bool:
        """IDLE until new mail, the reconciliation interval, or stop; renewing the lease.

        True when the server announced a change (new mail, BYE).
        """
        self._report(FolderStatus.IDLE)
        command = self.watch.command
        with command("IDLE"):
            client.idle()
        try:
            noticed = self._wait_in_idle(client)
        except BaseException:
            # End the IDLE if the connection still works (a lost lease, say);
            # never let that hide why the wait failed.
            with contextlib.suppress(Exception), command("DONE"):
                client.idle_done()
            raise
        with command("DONE"):
            client.idle_done()
        return noticed

    def _wait_in_idle(self, client: IMAPClient) -> bool:
        if _take_change_notices(client):
            return True  # mail came in during the last poll's commands or as IDLE began
        until = time.monotonic() + min(self.mailbox.poll_interval_seconds, IDLE_MAX_SECONDS)
        until = min(until, self.retries.next_at() or until)  # a retry due ends the IDLE
        while not self.deps.stop.is_set() and time.monotonic() < until:
            if _buffered_change(client):
                return True
            with self.watch.command("IDLE (waiting)"):
                line = _next_idle_line(client, IDLE_CHECK_SECONDS)
            if line is not None and _notice_of_change(line):
                return True
            self._renew_if_due()
        return False

    def _wait(self, seconds: float) -> None:
        self._report(FolderStatus.WAITING)
        until = time.monotonic() + seconds
        until = min(until, self.retries.next_at() or until)
        while not self.deps.stop.is_set() and time.monotonic() < until:
            self.deps.stop.wait(min(IDLE_CHECK_SECONDS * 5, max(0.0, until - time.monotonic())))
            self._renew_if_due()

    def _renew(self) -> None:
        self.state.renew()
        self.last_renew = time.monotonic()

    def _renew_if_due(self) -> None:
        if time.monotonic() - self.last_renew >= self.mailbox.lease_seconds / 3:
            self._renew()

    def _report(self, status: FolderStatus, error: str = "") -> None:
        changed = status is not self.health.status or (error and error != self.health.last_error)
        self.health.status = status
        if error:
            self.health.last_error = error
        if changed:
            self.deps.on_health(replace(self.health))


def _selectable(client: IMAPClient, folder: str) -> bool:
    """``folder`` exists and can hold mail (a \\Noselect parent of a subfolder cannot)."""
    for flags, _sep, _name in client.list_folders("", folder):
        if not {f.lower() for f in flags} & {b"\\noselect", b"\\nonexistent"}:
            return True
    return False


def _separator_hint(client: IMAPClient, folder: str) -> str:
    """For a folder name written with '/' on a server that separates levels otherwise."""
    if "/" not in folder:
        return ""
    separator = ""
    with contextlib.suppress(imaplib.IMAP4.error):
        for _flags, found, _name in client.list_folders("", ""):
            if found:
                separator = found.decode() if isinstance(found, bytes) else str(found)
                break
    if not separator or separator == "/":
        return ""
    return (
        f"; this server separates folder levels with {separator!r}, not '/': "
        f"{folder.replace('/', separator)!r}?"
    )


def _next_idle_line(client: IMAPClient, timeout: float) -> bytes | None:
    """The next line the server sends during IDLE; None if none begins within ``timeout``.

    Only the wait is bounded by ``timeout``: a line that has begun is read
    whole, blocking, under the socket timeout and the command deadline.
    imapclient's ``idle_check`` reads with the socket non-blocking, and when a
    line comes in two TCP segments the buffered reader drops the part it had
    read, so the connection fails on the rest ("unexpected response: b' 1
    EXISTS'"). It also swallows end-of-file, which here ends the connection.
    """
    sock = client.socket()
    if not (isinstance(sock, ssl.SSLSocket) and sock.pending()):
        waiting = poll()
        waiting.register(sock, POLLIN | POLLPRI)
        if not waiting.poll(timeout * 1000):
            return None
    try:
        line: bytes = client._imap._get_line()
    except imaplib.IMAP4.abort as exc:
        if "EOF" in str(exc):
            raise ConnectionError("the server closed the connection during IDLE") from exc
        raise
    return line


def _buffered_change(client: IMAPClient) -> bool:
    """True when a change notice already sits in imaplib's read buffer.

    :func:`_next_idle_line` waits on the socket. A line that arrived in the
    same packet as the one before it (``+ idling`` and ``* 2 EXISTS``
    together) is already in the buffered reader, invisible to that wait, and
    would wait for the next packet or the reconciliation poll. Reads only
    complete lines.
    """
    reader = client._imap.file
    sock = client.socket()
    changed = False
    sock.setblocking(False)
    try:
        while True:
            try:
                pending = reader.peek(1)
            except (BlockingIOError, ssl.SSLWantReadError, TimeoutError):
                return changed
            if b"\n" not in pending:
                return changed
            changed = _notice_of_change(reader.readline()) or changed
    finally:
        sock.setblocking(True)
        client._set_read_timeout()


def _take_change_notices(client: IMAPClient) -> bool:
    """Pop untagged EXISTS/RECENT that arrived with other commands' responses.

    imaplib keeps those in ``untagged_responses`` (where the IDLE wait never
    looks), so new mail announced during a poll or just before the IDLE
    continuation would otherwise wait for the next reconciliation poll.
    """
    pending = client._imap.untagged_responses
    found = False
    for name in ("EXISTS", "RECENT"):
        found = bool(pending.pop(name, None)) or found
    return found


def _notice_of_change(line: bytes) -> bool:
    """An untagged EXISTS/RECENT (new mail) or BYE (server going away) ends the IDLE."""
    words = line.split()
    if words[:1] != [b"*"] or len(words) < 2:
        return False
    kind = (words[2] if len(words) >= 3 else words[1]).upper()
    return kind in (b"EXISTS", b"RECENT") or words[1].upper() == b"BYE"


@dataclass
class ImapIntake:
    """All configured mailbox folders: starts one poller thread each, stops them all."""

    mailboxes: tuple[ImapMailboxSettings, ...]
    logins: dict[str, Login]
    store: IntakeStore
    db: Database
    holder: str
    clock: Clock
    on_stored: Callable[[], None] = lambda: None
    health_path: Path | None = None
    stop_event: threading.Event = field(default_factory=threading.Event)
    pollers: list[FolderPoller] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _health: dict[tuple[str, str], FolderHealth] = field(default_factory=dict)
    _health_write_lock: threading.Lock = field(default_factory=threading.Lock)
    _health_write_failing: bool = False  # said once until a write works again

    @classmethod
    def build(
        cls,
        settings: Settings,
        *,
        store: IntakeStore,
        db: Database,
        holder: str,
        clock: Clock,
        on_stored: Callable[[], None] = lambda: None,
    ) -> ImapIntake:
        """Resolve the secrets now, so a missing secret stops the start with exit 78."""
        return cls(
            settings.imap,
            resolve_logins(settings, clock),
            store,
            db,
            holder,
            clock,
            on_stored,
            settings.data_dir / "imap-health.json",
        )

    def start(self) -> None:
        deps = PollerDeps(
            self.store,
            self.db,
            self.holder,
            self.clock,
            self.stop_event,
            self.on_stored,
            self._record_health,
        )
        from maildesk.intake.junk import JunkPoller, seen_again_hook  # it builds on this module

        for mailbox in self.mailboxes:
            login = self.logins[mailbox.key]
            gate = LoginGate(free_retries=1 if isinstance(login, OAuth2Login) else 0)
            junk = (mailbox.junk_folder,) if mailbox.junk_folder else ()
            for folder in (*mailbox.folders, *junk):
                kind = JunkPoller if folder in junk else FolderPoller
                poller = kind(mailbox, folder, login, deps)
                poller.gate = gate
                if junk and kind is FolderPoller:
                    poller.on_seen_again = seen_again_hook(self.db, poller.name, self.clock)
                self.pollers.append(poller)
                self._health[(mailbox.key, folder)] = poller.health
                thread = threading.Thread(
                    target=poller.run, name=f"imap:{poller.name}", daemon=True
                )
                thread.start()
                self.threads.append(thread)
                log.info(
                    "imap %s: reading %s:%d (%s, post-action %s)",
                    poller.name,
                    mailbox.host,
                    mailbox.effective_port,
                    "IDLE" if mailbox.idle else "polling",
                    mailbox.post_action,
                )

    def stop(self, timeout: float = 15.0) -> None:
        """Ask every poller to stop and wait for them (each releases its lease).

        A poller still inside a slow command after half the time (at most
        :data:`STOP_GRACE_SECONDS`) has its connection cut: what it was
        fetching is fetched again next time, and nothing was flagged yet.
        """
        self.stop_event.set()
        start = time.monotonic()
        grace = start + min(STOP_GRACE_SECONDS, timeout / 2)
        for thread in self.threads:
            thread.join(max(0.0, grace - time.monotonic()))
        for poller, thread in zip(self.pollers, self.threads, strict=True):
            if thread.is_alive():
                log.info("imap %s: still in a command; cutting its connection", poller.name)
                poller.watch.cut()
        for thread in self.threads:
            thread.join(max(0.0, start + timeout - time.monotonic()))
            if thread.is_alive():
                log.warning("%s did not stop in time", thread.name)
        self.threads.clear()
        self.pollers.clear()

    def health(self) -> list[FolderHealth]:
        with self.lock:
            return [replace(h) for h in self._health.values()]

    def _record_health(self, health: FolderHealth) -> None:
        with self.lock:
            self._health[(health.mailbox, health.folder)] = health
        if health.status in (FolderStatus.BACKOFF, FolderStatus.STANDBY):
            log.info("imap %s/%s: %s", health.mailbox, health.folder, health.status)
        if self.health_path is None:
            return
        # The snapshot is taken inside the write lock: a writer holding an older
        # snapshot would otherwise replace the file after a newer one, and a
        # folder that then stays in its state would show the old one for good.
        with self._health_write_lock:
            with self.lock:
                snapshot = [asdict(h) for h in self._health.values()]
            self._write_health(snapshot)

    def _write_health(self, snapshot: list[dict[str, Any]]) -> None:
        """Replace the health file; one that cannot be written (a full disk) is said once.

        It is written at each change of a folder's state, every second or so
        while a folder retries: a line each time would flood the log.
        """
        assert self.health_path is not None
        tmp = self.health_path.with_name(f".{self.health_path.name}.{threading.get_ident()}")
        try:
            tmp.write_text(json.dumps(snapshot, indent=1), encoding="utf-8")
            os.replace(tmp, self.health_path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)  # a part written, on a disk with no room
            (log.debug if self._health_write_failing else log.warning)(
                "cannot write %s (not said again until it can): %s", self.health_path, exc
            )
            self._health_write_failing = True
            return
        if self._health_write_failing:
            log.warning("%s: written again", self.health_path)
            self._health_write_failing = False


def resolve_logins(settings: Settings, clock: Clock) -> dict[str, Login]:
    """Each mailbox's login by key; ConfigError for duplicates or a missing secret."""
    logins: dict[str, Login] = {}
    for index, mailbox in enumerate(settings.imap):
        if mailbox.key in logins:
            raise ConfigError(settings.source, f"imap.{index}.name", f"{mailbox.key!r} twice")
        if mailbox.auth is ImapAuth.OAUTH2:
            logins[mailbox.key] = oauth2_login(settings, index, mailbox, clock)
            continue
        value = resolve_secret(
            settings.source,
            f"imap.{index}.password",
            mailbox.password,
            mailbox.password_file,
            mailbox.password_env,
        )
        if value is None:
            raise ConfigError(settings.source, f"imap.{index}.password", "no password given")
        logins[mailbox.key] = PasswordLogin(mailbox.user, value)
    return logins
