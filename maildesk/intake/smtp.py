"""SMTP and LMTP listeners (aiosmtpd): store the raw bytes, then say 250.

Nothing slow runs in the DATA handler: the store call (one committed insert)
runs in a thread so the event loop keeps serving other sessions, and all
processing happens later in the pipeline worker.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable
from datetime import datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller, UnixSocketController
from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

from maildesk.config import ListenerSettings
from maildesk.db.database import StorageUnavailable
from maildesk.domain.address import base_address
from maildesk.intake.store import Envelope, IntakeStore

log = logging.getLogger("maildesk.intake.smtp")


def trace_header(helo: str | None, peer_ip: str, protocol: str, when: datetime) -> str:
    """Our Received line, in the usual ``from HELO ([IP])`` shape.

    The spam features read the oldest hop's shape (HELO against the
    bracketed IP); for mail a client sent straight to us, this line is that hop.
    We do no reverse DNS lookup, so the parentheses hold only the address.
    """
    origin = f"[{peer_ip}]" if peer_ip else "local"
    return (
        f"Received: from {helo or 'unknown'} ({origin})\r\n"
        f"\tby maildesk with {protocol.upper()}; {format_datetime(when)}\r\n"
    )


class IntakeHandler:
    """aiosmtpd handler: RCPT checks the address, DATA stores and answers."""

    def __init__(
        self,
        store: IntakeStore,
        support_addresses: frozenset[str],
        protocol: str,
        on_stored: Callable[[], None],
        clock: Callable[[], datetime],
    ) -> None:
        self.store = store
        self.support = support_addresses
        self.protocol = protocol
        self.on_stored = on_stored
        self.clock = clock

    async def handle_RCPT(
        self, server: SMTP, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        if base_address(address) not in self.support:
            log.info("rejected RCPT %s from %s: not a support address", address, session.peer)
            return f"550 5.1.1 <{address}>: not a support address here"
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


# RFC 5321 caps lines at 1,000 octets, but real mail (HTML from marketing tools,
# long base64 lines) breaks that, and a 500 would bounce it for good. Like
# Postfix we accept long lines; the message size limit still bounds memory.
LONG_LINE_LIMIT = 1024 * 1024


class _SMTP(SMTP):
    line_length_limit = LONG_LINE_LIMIT


class _LMTP(LMTP):
    line_length_limit = LONG_LINE_LIMIT


class _SmtpController(Controller):
    def factory(self) -> SMTP:
        return _SMTP(self.handler, **self.SMTP_kwargs)


class _SmtpSocketController(UnixSocketController):
    def factory(self) -> SMTP:
        return _SMTP(self.handler, **self.SMTP_kwargs)


class _LmtpController(Controller):
    def factory(self) -> SMTP:
        return _LMTP(self.handler, **self.SMTP_kwargs)


class _LmtpSocketController(UnixSocketController):
    def factory(self) -> SMTP:
        return _LMTP(self.handler, **self.SMTP_kwargs)


def _authenticator(users_file: Path) -> Callable[..., AuthResult]:
    users: dict[str, str] = {}
    for line in users_file.read_text(encoding="utf-8").splitlines():
        if ":" in line and not line.startswith("#"):
            user, password = line.split(":", 1)
            users[user.strip()] = password.strip()

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
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(settings.tls_cert), str(settings.tls_key))
        kwargs["tls_context"] = context
        kwargs["require_starttls"] = settings.require_auth
    if settings.require_auth and settings.auth_users_file:
        kwargs["authenticator"] = _authenticator(settings.auth_users_file)
        kwargs["auth_required"] = True
        kwargs["auth_require_tls"] = "tls_context" in kwargs
    if settings.socket is not None:
        settings.socket.parent.mkdir(parents=True, exist_ok=True)
        if settings.socket.exists():
            settings.socket.unlink()
        cls = _LmtpSocketController if settings.protocol == "lmtp" else _SmtpSocketController
        return cls(handler, unix_socket=str(settings.socket), **kwargs)
    port = settings.port or free_port(settings.host)
    cls2 = _LmtpController if settings.protocol == "lmtp" else _SmtpController
    return cls2(handler, hostname=settings.host, port=port, **kwargs)


def free_port(host: str) -> int:
    """A free TCP port on ``host`` (port 0 in the config: any free port, logged at start)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port
