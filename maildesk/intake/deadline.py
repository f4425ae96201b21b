"""An overall deadline for each IMAP command, on top of the socket timeout.

The socket timeout bounds only the silence between two reads. A server, or a
middlebox in front of it, that sends a byte every few seconds holds a command
(and with it the poller and its folder's lease) for as long as it likes. The
watch here shuts the TCP connection down when one command runs past its
deadline, or when the daemon stops and a poller does not finish in time; the
blocked read then fails as on any dropped connection, and the poller
reconnects with backoff. Nothing is lost: a message counts as read only once
it is stored, and the post-action comes after that.

The server's greeting is read while the connection object is being built and
before there is anything to attach to; it is one line and bounded by the
socket timeout only.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

from imapclient import IMAPClient


class CommandOverdue(Exception):
    """One IMAP command took longer than its deadline; the connection was cut."""

    def __init__(self, what: str, seconds: float) -> None:
        super().__init__(
            f"{what} took longer than command_deadline_seconds={seconds:g}; connection cut"
        )


class ConnectionWatch:
    """One poller's current connection, cut when a command is overdue or on stop."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._lock = threading.Lock()
        self._client: IMAPClient | None = None

    def attach(self, client: IMAPClient | None) -> None:
        with self._lock:
            self._client = client

    def cut(self) -> None:
        """Shut the connection down under any thread blocked reading it.

        Only the TCP socket is shut down (never closed, and the TLS layer is
        left alone), which is safe from another thread: the reader's ``recv``
        returns end-of-file at once, and the poller closes the rest.
        """
        with self._lock:
            client = self._client
        if client is None:
            return
        with contextlib.suppress(OSError, AttributeError):  # already gone
            socket.socket.shutdown(client.socket(), socket.SHUT_RDWR)

    @contextlib.contextmanager
    def command(self, what: str) -> Iterator[None]:
        """Run one IMAP command (``what`` names it in the log) within the deadline."""
        overdue = threading.Event()

        def fire() -> None:
            overdue.set()
            self.cut()

        timer = threading.Timer(self.seconds, fire)
        timer.daemon = True
        timer.start()
        try:
            yield
        except Exception as exc:
            if overdue.is_set():
                raise CommandOverdue(what, self.seconds) from exc
            raise
        finally:
            timer.cancel()
        if overdue.is_set():  # it finished as the cut came: the connection is gone anyway
            raise CommandOverdue(what, self.seconds)
