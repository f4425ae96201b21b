"""SMTP and LMTP listeners (aiosmtpd): store the raw bytes, then say 250.

Nothing slow runs in the DATA handler: the store call (one committed insert)
runs in a thread so the event loop keeps serving other sessions, and all
processing happens later in the pipeline worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
import re
import socket
import ssl
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from datetime import datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Any, AnyStr

from aiosmtpd.controller import Controller, UnixSocketController
from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

from maildesk.config import ConfigError, ListenerSettings, refuse_world_readable
from maildesk.db.database import StorageUnavailable
from maildesk.domain.address import base_address
from maildesk.intake.store import Envelope, IntakeStore

log = logging.getLogger("maildesk.intake.smtp")

# Characters of a host name or an address; anything else in a client's HELO
# is written as "?" in our Received line.
_NOT_IN_HOST_NAME = re.compile(r"[^A-Za-z0-9.\-_:]")


def helo_word(helo: str | None) -> str:
    """What of a client's HELO goes into our Received line: its first word, as a host name.

    The client chooses its HELO. Written whole, a bare CR in it started
    header lines of the client's choosing above our trace (an
    ``Authentication-Results`` or ``X-Spam-Flag`` that looks like our own
    MTA's), and a bracketed address in it stood where ours is read. Postfix
    likewise records only a cleaned HELO.
    """
    words = (helo or "").split()
    return _NOT_IN_HOST_NAME.sub("?", words[0])[:255] if words else "unknown"


def trace_header(helo: str | None, peer_ip: str, protocol: str, when: datetime) -> str:
    """Our Received line, in the usual ``from HELO ([IP])`` shape.

    The spam features read the oldest hop's shape (HELO against the
    bracketed IP); for mail a client sent straight to us, this line is that hop.
    We do no reverse DNS lookup, so the parentheses hold only the address.
    """
    origin = f"[{peer_ip}]" if peer_ip else "local"
    return (
        f"Received: from {helo_word(helo)} ({origin})\r\n"
        f"\tby maildesk with {protocol.upper()}; {format_datetime(when)}\r\n"
    )


# Recipients one transaction may have (RFC 5321 s. 4.5.3.1.8: at least 100). Only
# our own addresses are accepted, so a real mail has a few; without a limit a
# client could grow one envelope, and the daemon's memory, without end.
MAX_RECIPIENTS = 100


def postmaster_aliases(addresses: Sequence[str]) -> dict[str, str]:
    """Where mail to ``postmaster`` goes: each domain's first address; "" (no domain) the first.

    RFC 5321 s. 4.5.1: an SMTP server must accept mail for "postmaster" (in
    any case, and without a domain). Here it reaches support like any mail to
    that address, as an MTA's ``postmaster: root`` alias would deliver it.
    """
    aliases: dict[str, str] = {}
    for address in addresses:
        aliases.setdefault("", address.lower())
        aliases.setdefault(address.rpartition("@")[2].lower(), address.lower())
    return aliases


class IntakeHandler:
    """aiosmtpd handler: RCPT checks the address, DATA stores and answers."""

    def __init__(
        self,
        store: IntakeStore,
        support_addresses: Sequence[str],
        protocol: str,
        on_stored: Callable[[], None],
        clock: Callable[[], datetime],
    ) -> None:
        self.store = store
        self.support = frozenset(a.lower() for a in support_addresses)
        self.postmaster = postmaster_aliases(support_addresses)
        self.protocol = protocol
        self.on_stored = on_stored
        self.clock = clock

    async def handle_RCPT(
        self, server: SMTP, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        local, _, domain = address.rpartition("@") if "@" in address else (address, "", "")
        if local.lower() == "postmaster" and domain.lower() in self.postmaster:
            address = self.postmaster[domain.lower()]
        elif base_address(address) not in self.support:
            log.info("rejected RCPT %s from %s: not a support address", address, session.peer)
            return f"550 5.1.1 <{address}>: not a support address here"
        if len(envelope.rcpt_tos) >= MAX_RECIPIENTS:
            # 452, not 552: the sender delivers the rest in another transaction.
            return "452 4.5.3 Too many recipients, send the rest in another transaction"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Any, envelope: Any) -> str:
        raw: bytes = envelope.original_content or b""
        peer = session.peer[0] if session.peer else ""
        trace = trace_header(session.host_name, peer, self.protocol, self.clock())
        item = Envelope(
            source=self.protocol,
            source_ref=str(session.peer),
            mail_from=envelope.mail_from or "",
            rcpt_to=tuple(envelope.rcpt_tos),
        )
        try:
            intake_id = await asyncio.get_running_loop().run_in_executor(
                None, self.store.store, trace.encode() + raw, item
            )
        except StorageUnavailable as exc:
            log.error("cannot store message from %s: %s", session.peer, exc)
            status = "451 4.3.0 Cannot store the message now, try again later"
        except Exception:  # not stored, by our fault: never a 5xx, which would bounce it
            log.exception("cannot store message from %s", session.peer)
            status = "451 4.3.0 Cannot store the message now, try again later"
        else:
            log.info(
                "intake=%s stored from %s for %s", intake_id, session.peer, ",".join(item.rcpt_to)
            )
            self.on_stored()
            status = f"250 2.0.0 Stored as {intake_id}"
        if self.protocol == "lmtp":
            # LMTP answers once per accepted recipient (RFC 2033).
            return "\r\n".join(status for _ in envelope.rcpt_tos)
        return status

    def refused(self, outcome: str, reason: str) -> None:
        """A refusal, in the metrics (a stored mail is counted by the store)."""
        if self.store.metrics is not None:
            self.store.metrics.mail_received(self.protocol, outcome, reason=reason)


def refusal_reason(reply: str) -> tuple[str, str] | None:
    """A reply's outcome and reason in ``maildesk_intake_messages_total``; None if
    it refuses nothing the metrics count (a 2xx/3xx, or a 4xx such as "452 too many
    recipients" that only asks for another transaction)."""
    if reply.startswith("451 4.3.0"):
        return "refused_4xx", "cannot_store"
    if not reply.startswith("5"):
        return None
    if reply.startswith("550 5.1.1"):
        return "refused_5xx", "not_support_address"
    if reply.startswith("552"):
        return "refused_5xx", "too_large"
    if reply.startswith(("500 Line too long", "500 Command line too long")):
        return "refused_5xx", "line_too_long"
    if reply.startswith("535"):
        return "refused_5xx", "auth_failed"
    return "refused_5xx", "bad_command"


LONG_LINE_LIMIT = 1024 * 1024  # see _LimitedConnections
STRESS_SHARE = 0.75  # more of a listener's slots taken than this: stress (see ConnectionSlots)
# What a session may repeat without end making no progress (Postfix's list,
# with EXPN, HELP and LMTP's LHLO): see _LimitedConnections.
JUNK_COMMANDS = frozenset({"NOOP", "RSET", "VRFY", "EXPN", "HELP", "HELO", "EHLO", "LHLO"})
# Replies with a 4xx code that are no fault of the client: not errors to count.
NOT_CLIENT_ERRORS = ("452 4.5.3", "451 4.3.0")


class ConnectionSlots:
    """How many connections one listener serves at once, in all and per client address.

    Each connection may hold a message of up to ``max_message_bytes`` in
    memory while it arrives, so the count bounds memory as well as sockets;
    the count per client keeps one host from taking every slot (Postfix's
    defaults: 100 in all, 50 per client). Beyond either a new connection gets
    ``421`` and is closed; a sending MTA retries later, so nothing is lost.
    Connections on a unix socket have no client address and count only in
    all. Used from the listener's event loop thread only.

    More than 3/4 of the slots taken is *stress* (Postfix: all smtpd processes
    busy): sessions then wait for a silent client only the listener's short
    stress timeout, so idle holders make room for senders. Entering stress
    re-arms every session's timer, the idle ones already open included;
    leaving it does not, so the sessions idle through it are shed all the
    same (the next command, or byte of DATA, arms the timeout that applies then).
    """

    def __init__(self, limit: int, per_client: int, name: str) -> None:
        self.limit, self.per_client, self.name = limit, per_client, name
        self.sessions: set[_LimitedConnections] = set()
        self.by_client: Counter[str] = Counter()
        # Refused since the listener (or that client) was last below its limit.
        self.refused: Counter[str | None] = Counter()

    @property
    def open(self) -> int:
        return len(self.sessions)

    @property
    def stressed(self) -> bool:
        return self.open > self.limit * STRESS_SHARE

    def take(self, session: _LimitedConnections, client: str | None) -> bytes | None:
        """Count a new connection in, or return the 421 reply that refuses it."""
        if self.open >= self.limit:
            return self._refuse(client, per_client=False)
        if client and self.by_client[client] >= self.per_client:
            return self._refuse(client, per_client=True)
        with self._watch_stress():
            self.sessions.add(session)
        if client:
            self.by_client[client] += 1
        return None

    def give_back(self, session: _LimitedConnections, client: str | None) -> None:
        with self._watch_stress():
            self.sessions.discard(session)
        if client:
            self.by_client[client] -= 1
            if not self.by_client[client]:
                del self.by_client[client]
        self._below_again(None, "max_connections")
        if client:
            self._below_again(client, "max_connections_per_client")

    @contextlib.contextmanager
    def _watch_stress(self) -> Iterator[None]:
        """Log entering and leaving stress; on entering, re-arm the sessions' idle timers."""
        before = self.stressed
        yield
        if self.stressed == before:
            return
        if not self.stressed:
            log.info("%s: %d connections open, stress over", self.name, self.open)
            return
        log.warning(
            "%s: %d of %d connections open; silent clients now get the stress timeout",
            self.name,
            self.open,
            self.limit,
        )
        for session in self.sessions:
            session.arm_timeout()

    def _below_again(self, key: str | None, limit: str) -> None:
        if self.refused[key]:
            whose = f" for {key}" if key else ""
            log.warning(
                "%s: below %s%s again; refused %d", self.name, limit, whose, self.refused[key]
            )
            del self.refused[key]

    def _refuse(self, client: str | None, per_client: bool) -> bytes:
        key = client if per_client else None
        limit = "max_connections_per_client" if per_client else "max_connections"
        count = self.by_client[client] if client and per_client else self.open
        if not self.refused[key]:
            whose = f" from {key}" if key else ""
            log.warning(
                "%s: %d connections open%s (%s); refusing new ones with 421, first from %s",
                self.name,
                count,
                whose,
                limit,
                client or "the socket",
            )
        self.refused[key] += 1
        if key:
            return b"421 4.7.0 Too many connections from your address, try again later\r\n"
        return b"421 4.7.0 Too many connections, try again later\r\n"


@dataclasses.dataclass(frozen=True)
class Limit:
    """A time limit of a session: what its 421 says, and its reason in the metrics."""

    reason: str  # in maildesk_intake_messages_total{outcome="refused_4xx"}
    reply: str


TIMEOUT = Limit("timeout", "421 4.4.2 Timeout exceeded, closing")
DATA_TOO_SLOW = Limit("data_too_slow", "421 4.4.2 Data arriving too slowly, closing")
SESSION_TOO_LONG = Limit("session_too_long", "421 4.4.2 Session time limit exceeded, closing")


@dataclasses.dataclass
class SessionClock:
    """When a session's time is up, and by which limit. Times are the event loop's.

    A trickling client must not hold a slot: bytes alone never restart a
    clock. A command line must come whole within the timeout from when the
    session is ready for it (Exim's smtp_receive_timeout per line, Postfix's
    smtpd_per_request_deadline). DATA starts with the timeout's worth of
    credit; each byte received earns ``1/min_data_rate`` s more, never above
    the timeout from that byte (Postfix's smtpd_min_data_rate): a sender at
    or above that rate is never cut, one below it runs out. The timeout is
    the stress timeout while the listener is under stress, so both tighten
    then, as Postfix's do. Whatever it sends, no session outlives
    ``max_session_seconds`` from its connection.
    """

    started: float
    ready_at: float  # ready for the next command line; in DATA, the last byte received
    data_deadline: float | None = None  # while DATA is received: when its credit runs out

    def command_ready(self, now: float) -> None:
        self.ready_at, self.data_deadline = now, None

    def data_started(self, now: float, timeout: float) -> None:
        self.ready_at, self.data_deadline = now, now + timeout

    def data_received(self, now: float, size: int, timeout: float, min_rate: float) -> None:
        if self.data_deadline is None:
            return  # bytes of a command line: no more time for it
        self.ready_at = now
        self.data_deadline = min(self.data_deadline + size / min_rate, now + timeout)

    def expiry(self, timeout: float, max_session: float) -> tuple[float, Limit]:
        """The next limit to run out (a silence before a slow rate, on a tie)."""
        due = [(self.ready_at + timeout, TIMEOUT)]
        if self.data_deadline is not None:
            due.append((self.data_deadline, DATA_TOO_SLOW))
        due.append((self.started + max_session, SESSION_TOO_LONG))
        return min(due, key=lambda pair: pair[0])


class _LimitedConnections(SMTP):
    """An SMTP/LMTP session that first takes one of the listener's slots, and
    gives it back when the client wastes it.

    As Postfix's smtpd does: a client is closed with 421 when it sends more
    than ``max_junk_commands`` junk commands, or gets ``max_errors`` error
    replies (refused RCPTs of an address prober, unknown commands, failed
    AUTH); a stored mail forgives both counts (Postfix resets them after a
    delivery). The time limits of ``SessionClock`` close it with ``421 4.4.2``:
    the timeout (``timeout_seconds``, only ``stress_timeout_seconds`` while
    the listener is under stress, see ``ConnectionSlots``), ``min_data_rate``
    and ``max_session_seconds``. Each refusal is counted in the metrics with
    its reason; one that ends the session is also logged with the peer.
    """

    # RFC 5321 caps lines at 1,000 octets, but real mail (HTML from marketing
    # tools, long base64 lines) breaks that, and a 500 would bounce it for good.
    # We accept lines up to 1 MiB (MTAs such as Postfix split longer ones
    # before they relay them); the buffer of one line stays bounded.
    line_length_limit = LONG_LINE_LIMIT
    slots: ConnectionSlots | None = None
    settings = ListenerSettings()
    holds_slot = refused = False
    client: str | None = None
    junk = errors = 0
    command: str | None = None  # the one being served
    clock: SessionClock
    expiring: Limit = TIMEOUT  # the limit the armed timer stands for
    in_hook = False  # our handler is at work: the client waits for us, not idle

    def __init__(self, handler: Any, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.clock = SessionClock(started=self.loop.time(), ready_at=self.loop.time())
        # One wrapper round every command aiosmtpd dispatches: aiosmtpd has no
        # hook that sees them all (functools.wraps keeps the syntax HELP shows).
        self._smtp_methods = {
            name: functools.wraps(method)(functools.partial(self._serve, name, method))
            for name, method in self._smtp_methods.items()
        }

    async def _serve(
        self, command: str, method: Callable[[str | None], Awaitable[None]], arg: str | None
    ) -> None:
        if self.transport is None or self.transport.is_closing():
            return  # pipelined after our 421: nothing more is served
        self.command = command
        if command in JUNK_COMMANDS:
            if self.junk >= self.settings.max_junk_commands:
                await self._close_with(
                    "421 4.7.0 Too many commands without mail, closing", "too_many_commands"
                )
                return
            self.junk += 1
        await method(arg)
        if self.transport is not None and not self.transport.is_closing():
            self._reset_timeout()  # served: the next command line's time starts now

    async def push(self, status: AnyStr) -> None:
        await super().push(status)
        text = status if isinstance(status, str) else status.decode("utf-8", "replace")
        refusal = refusal_reason(text)
        if refusal is not None:
            self.event_handler.refused(*refusal)
        if self.command == "DATA" and text.startswith("354"):
            self.clock.data_started(self.loop.time(), self._current_timeout())
            self.arm_timeout()
        elif self.command == "DATA" and text.startswith("250"):
            self.junk = self.errors = 0  # a stored mail: the client makes progress
        elif text[:1] in ("4", "5") and not text.startswith(NOT_CLIENT_ERRORS):
            self.errors += 1
            if self.errors >= self.settings.max_errors:
                await self._close_with("421 4.7.0 Too many errors, closing", "too_many_errors")

    async def _close_with(self, reply: str, reason: str) -> None:
        assert self.session is not None and self.transport is not None
        log.info("closing the session of %s: %s", self.session.peer, reply)
        self.event_handler.refused("refused_4xx", reason)
        await SMTP.push(self, reply)  # not an error of the client, and one line even in LMTP
        self.transport.close()

    async def _call_handler_hook(self, command: str, *args: Any) -> Any:
        self.in_hook = True
        try:
            return await super()._call_handler_hook(command, *args)
        finally:
            self.in_hook = False

    def _reset_timeout(self, duration: float | None = None) -> None:
        # aiosmtpd calls this as the session starts and as each valid command
        # comes (we too, once one is served): ready for the next command line.
        # Its duration is only for the PROXY handshake, which we do not enable.
        self.clock.command_ready(self.loop.time())
        self.arm_timeout()

    def _current_timeout(self) -> float:
        if self.slots is not None and self.slots.stressed:
            return min(self._timeout_duration, self.settings.stress_timeout_seconds)
        return float(self._timeout_duration)

    def arm_timeout(self) -> None:
        """(Re)start the timer for the first of the session's limits to run out now."""
        now = self.loop.time()
        if self.in_hook:  # storing a mail: our time, not the client's; look again later
            expiry, self.expiring = now + self._current_timeout(), TIMEOUT
        else:
            limits = self.clock.expiry(self._current_timeout(), self.settings.max_session_seconds)
            expiry, self.expiring = limits
        if self._timeout_handle is not None:
            self._timeout_handle.cancel()
        self._timeout_handle = self.loop.call_later(max(expiry - now, 0.0), self._timeout_cb)

    def _timeout_cb(self) -> None:
        if self.in_hook:  # storing the mail takes long: that is our time, not the client's
            self._reset_timeout()
            return
        assert isinstance(self.transport, asyncio.WriteTransport)
        assert self.session is not None
        limit = self.expiring
        log.info(
            "closing the session of %s: %s (%s)",
            self.session.peer,
            limit.reply,
            self._setting_of(limit),
        )
        self.event_handler.refused("refused_4xx", limit.reason)
        self.transport.write(limit.reply.encode() + b"\r\n")
        super()._timeout_cb()

    def _setting_of(self, limit: Limit) -> str:
        """The setting that ran out, for the log line: ops see which one to look at."""
        if limit is DATA_TOO_SLOW:
            return f"min_data_rate = {self.settings.min_data_rate} bytes/s"
        if limit is SESSION_TOO_LONG:
            return f"max_session_seconds = {self.settings.max_session_seconds:g}"
        if self._current_timeout() < self._timeout_duration:
            return f"stress_timeout_seconds = {self.settings.stress_timeout_seconds:g}"
        return f"timeout_seconds = {self._timeout_duration:g}"

    def data_received(self, data: bytes) -> None:
        # aiosmtpd's idle timer is restarted only by a command, so a whole DATA
        # had to fit into one timeout; restarted by every byte, it let a client
        # hold the session with a byte now and then. DATA now earns time by
        # the bytes received, a command line none (see SessionClock).
        self.clock.data_received(
            self.loop.time(), len(data), self._current_timeout(), self.settings.min_data_rate
        )
        if self.clock.data_deadline is not None:
            self.arm_timeout()
        super().data_received(data)

    def _getparams(self, params: Sequence[str]) -> dict[str, str | bool] | None:
        # RFC 4954 s. 5: a server that offers AUTH accepts MAIL FROM's AUTH=
        # parameter (sendmail sends it); we trust none, as if it were AUTH=<>.
        result = super()._getparams(params)
        if result is not None:
            result.pop("AUTH", None)
        return result

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self._original_transport is None  # not the TLS layer after STARTTLS
        if first and self.slots is not None:
            peer = transport.get_extra_info("peername")
            self.client = peer[0] if isinstance(peer, tuple) and peer else None
            refusal = self.slots.take(self, self.client)
            if refusal is not None:
                self.refused = True
                self.event_handler.refused("refused_4xx", "too_many_connections")
                assert isinstance(transport, asyncio.WriteTransport)
                transport.write(refusal)
                transport.close()
                return
            self.holds_slot = True
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if self.refused:
            return  # never started: nothing of the session to end
        super().connection_lost(error)
        if self.holds_slot and self.slots is not None:
            self.holds_slot = False
            self.slots.give_back(self, self.client)


class _LMTP(_LimitedConnections, LMTP):
    # aiosmtpd's own refusals at the end of DATA (too big, a line too long) are
    # one line; LMTP owes one reply per accepted recipient (RFC 2033 s. 4.2), so
    # an MTA with two recipients waited for the second until its timeout.
    _DATA_REFUSALS = ("552 Error: Too much mail data", "500 Line too long")

    async def push(self, status: AnyStr) -> None:
        text = status if isinstance(status, str) else status.decode("utf-8", "replace")
        recipients = self.envelope.rcpt_tos if self.envelope is not None else []
        if recipients and text.startswith(self._DATA_REFUSALS):
            await super().push("\r\n".join(text for _ in recipients))
        else:
            await super().push(status)


class _LimitedFactory:
    """For the controllers: sessions of the configured protocol, sharing one set of slots."""

    handler: Any
    SMTP_kwargs: dict[str, Any]
    protocol: type[_LimitedConnections] = _LimitedConnections
    slots: ConnectionSlots | None = None
    settings = ListenerSettings()

    def factory(self) -> SMTP:
        session = self.protocol(self.handler, **self.SMTP_kwargs)
        session.slots, session.settings = self.slots, self.settings
        return session


class _LimitedController(_LimitedFactory, Controller):
    pass


class _LimitedSocketController(_LimitedFactory, UnixSocketController):
    # Connecting to a unix socket takes write permission on it. Bound under the
    # unit's UMask=0027 it was srwxr-x---, and the MTA (Postfix's lmtp client runs
    # as postfix) was refused: every mail deferred. Like Dovecot's LMTP socket (and
    # like a loopback port), anyone on this machine may connect.
    SOCKET_MODE = 0o666

    def start(self) -> None:
        super().start()
        os.chmod(self.unix_socket, self.SOCKET_MODE)


def _read_users(users_file: Path) -> dict[str, str]:
    """The ``user:password`` lines of an auth users file (``#`` starts a comment line)."""
    users: dict[str, str] = {}
    for line in users_file.read_text(encoding="utf-8").splitlines():
        if ":" in line and not line.startswith("#"):
            user, password = line.split(":", 1)
            users[user.strip()] = password.strip()
    return users


def _tls_context(settings: ListenerSettings) -> ssl.SSLContext:
    assert settings.tls_cert is not None and settings.tls_key is not None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(settings.tls_cert), str(settings.tls_key))
    return context


def check_listener_files(source: str, index: int, settings: ListenerSettings) -> None:
    """The certificate, key and users file a listener reads as it starts; ConfigError if not.

    Found only then, they would stop `maildesk run` with a traceback after the
    config was accepted (and systemd would restart it again and again).
    """
    key = f"listeners.{index}"
    if settings.tls_cert is not None and settings.tls_key is not None:
        refuse_world_readable(source, f"{key}.tls_key", settings.tls_key)
        try:
            _tls_context(settings)
        except (OSError, ssl.SSLError) as exc:
            reason = exc.strerror or str(exc)
            raise ConfigError(
                source,
                f"{key}.tls_cert",
                f"cannot load {settings.tls_cert} with {settings.tls_key}: {reason}",
            ) from None
    if settings.require_auth and settings.auth_users_file is not None:
        path = settings.auth_users_file
        refuse_world_readable(source, f"{key}.auth_users_file", path)
        try:
            users = _read_users(path)
        except (OSError, UnicodeDecodeError) as exc:
            reason = (exc.strerror if isinstance(exc, OSError) else None) or str(exc)
            raise ConfigError(
                source, f"{key}.auth_users_file", f"cannot read {path}: {reason}"
            ) from None
        if not users:
            raise ConfigError(
                source,
                f"{key}.auth_users_file",
                f"{path} has no 'user:password' line: nobody could deliver mail",
            )


def _authenticator(users_file: Path) -> Callable[..., AuthResult]:
    users = _read_users(users_file)

    def check(
        server: SMTP, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        if isinstance(auth_data, LoginPassword):
            user = auth_data.login.decode("utf-8", "replace")
            ok = users.get(user) == auth_data.password.decode("utf-8", "replace")
            return AuthResult(success=ok, handled=False)
        return AuthResult(success=False, handled=False)

    return check


def build_controller(
    settings: ListenerSettings, handler: IntakeHandler
) -> Controller | UnixSocketController:
    """A started-later aiosmtpd controller for one configured listener."""
    kwargs: dict[str, Any] = {
        "data_size_limit": settings.max_message_bytes,
        "enable_SMTPUTF8": True,
        "ident": "maildesk",
        "timeout": settings.timeout_seconds,
    }
    if settings.tls_cert and settings.tls_key and settings.protocol == "smtp":
        kwargs["tls_context"] = _tls_context(settings)
        kwargs["require_starttls"] = settings.require_auth
    if settings.require_auth and settings.auth_users_file:
        kwargs["authenticator"] = _authenticator(settings.auth_users_file)
        kwargs["auth_required"] = True
        kwargs["auth_require_tls"] = "tls_context" in kwargs
    controller: _LimitedController | _LimitedSocketController
    if settings.socket is not None:
        settings.socket.parent.mkdir(parents=True, exist_ok=True)
        if settings.socket.exists():
            settings.socket.unlink()
        controller = _LimitedSocketController(handler, unix_socket=str(settings.socket), **kwargs)
        where = str(settings.socket)
    else:
        port = settings.port or free_port(settings.host)
        controller = _LimitedController(handler, hostname=settings.host, port=port, **kwargs)
        where = f"{settings.host}:{port}"
    controller.protocol = _LMTP if settings.protocol == "lmtp" else _LimitedConnections
    controller.settings = settings
    controller.slots = ConnectionSlots(
        settings.max_connections,
        settings.max_connections_per_client,
        f"{settings.protocol} listener {where}",
    )
    return controller


def free_port(host: str) -> int:
    """A free TCP port on ``host`` (port 0 in the config: any free port, logged at start)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port
