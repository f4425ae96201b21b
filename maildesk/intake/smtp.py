"""SMTP and LMTP listeners (aiosmtpd): store the raw bytes, then say 250.

Nothing slow runs in the DATA handler: the store call (one committed insert)
runs in a thread so the event loop keeps serving other sessions, and all
processing happens later in the pipeline worker.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import ssl
from collections import Counter
from collections.abc import Callable, Sequence
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


LONG_LINE_LIMIT = 1024 * 1024  # see _LimitedConnections


class ConnectionSlots:
    """How many connections one listener serves at once, in all and per client address.

    Each connection may hold a message of up to ``max_message_bytes`` in
    memory while it arrives, so the count bounds memory as well as sockets;
    the count per client keeps one host from taking every slot (Postfix's
    defaults: 100 in all, 50 per client). Beyond either a new connection gets
    ``421`` and is closed; a sending MTA retries later, so nothing is lost.
    Connections on a unix socket have no client address and count only in
    all. Used from the listener's event loop thread only.
    """

    def __init__(self, limit: int, per_client: int, name: str) -> None:
        self.limit, self.per_client, self.name = limit, per_client, name
        self.open = 0
        self.by_client: Counter[str] = Counter()
        # Refused since the listener (or that client) was last below its limit.
        self.refused: Counter[str | None] = Counter()

    def take(self, client: str | None) -> bytes | None:
        """Count a new connection in, or return the 421 reply that refuses it."""
        if self.open >= self.limit:
            return self._refuse(client, per_client=False)
        if client and self.by_client[client] >= self.per_client:
            return self._refuse(client, per_client=True)
        self.open += 1
        if client:
            self.by_client[client] += 1
        return None

    def give_back(self, client: str | None) -> None:
        self.open -= 1
        if client:
            self.by_client[client] -= 1
            if not self.by_client[client]:
                del self.by_client[client]
        self._below_again(None, "max_connections")
        if client:
            self._below_again(client, "max_connections_per_client")

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


class _LimitedConnections(SMTP):
    """An SMTP/LMTP session that first takes one of the listener's slots."""

    # RFC 5321 caps lines at 1,000 octets, but real mail (HTML from marketing
    # tools, long base64 lines) breaks that, and a 500 would bounce it for good.
    # We accept lines up to 1 MiB (MTAs such as Postfix split longer ones
    # before they relay them); the buffer of one line stays bounded.
    line_length_limit = LONG_LINE_LIMIT
    slots: ConnectionSlots | None = None
    holds_slot = refused = False
    client: str | None = None

    def data_received(self, data: bytes) -> None:
        # aiosmtpd restarts its idle timeout only when a command comes, so a
        # whole DATA phase had to fit into it: a large mail on a slow but
        # steady link was cut at every attempt. A client that sends is not idle.
        self._reset_timeout()
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
            refusal = self.slots.take(self.client)
            if refusal is not None:
                self.refused = True
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
            self.slots.give_back(self.client)


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

    def factory(self) -> SMTP:
        session = self.protocol(self.handler, **self.SMTP_kwargs)
        session.slots = self.slots
        return session


class _LimitedController(_LimitedFactory, Controller):
    pass


class _LimitedSocketController(_LimitedFactory, UnixSocketController):
    pass


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
