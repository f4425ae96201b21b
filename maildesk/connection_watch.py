"""An overall deadline for a conversation with a server, on top of the socket timeout.

The socket timeout bounds only the silence between two reads. A server, or a
middlebox in front of it, that sends a byte every few seconds holds a command
(an IMAP poller and its folder's lease, or the outbox sender) for as long as
it likes. The watch here shuts the TCP connection down when one command runs
past its deadline, or when the daemon stops and a poller does not finish in
time; the blocked read then fails as on any dropped connection, and the
caller treats it as such: an IMAP poller reconnects with backoff, the outbox
retries the mail later. Nothing is lost: an IMAP message counts as read only
once it is stored, and an outbound mail as sent only once the relay said so.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator

SocketOf = Callable[[], socket.socket | None]


class CommandOverdue(Exception):
    """One command took longer than its deadline; the connection was cut."""

    def __init__(self, what: str, seconds: float, setting: str, extra: float = 0.0) -> None:
        limit = f"{setting}={seconds:g}" + (f" + {extra:.0f} s for its size" if extra >= 1 else "")
        super().__init__(f"{what} took longer than {limit}; connection cut")


class ConnectionWatch:
    """One client's current connection, cut when a command is overdue or on stop.

    ``setting`` names the configuration key of the deadline, for the error.
    """

    def __init__(self, seconds: float, setting: str) -> None:
        self.seconds, self.setting = seconds, setting
        self._lock = threading.Lock()
        self._socket_of: SocketOf | None = None

    def attach(self, socket_of: SocketOf | None) -> None:
        """Watch the connection whose socket ``socket_of`` gives (asked only when cutting)."""
        with self._lock:
            self._socket_of = socket_of

    def cut(self) -> None:
        """Shut the connection down under any thread blocked reading it.

        Only the TCP socket is shut down (never closed, and the TLS layer is
        left alone), which is safe from another thread: the reader's ``recv``
        returns end-of-file at once, and the poller closes the rest.
        """
        with self._lock:
            socket_of = self._socket_of
        if socket_of is None:
            return
        with contextlib.suppress(OSError, AttributeError):  # already gone
            sock = socket_of()
            if sock is not None:
                socket.socket.shutdown(sock, socket.SHUT_RDWR)

    @contextlib.contextmanager
    def command(self, what: str, extra_seconds: float = 0.0) -> Iterator[None]:
        """Run one command (``what`` names it in the error) within the deadline.

        ``extra_seconds`` lengthens it for this command (a large transfer).
        """
        seconds = self.seconds + extra_seconds
        overdue = threading.Event()

        def fire() -> None:
            overdue.set()
            self.cut()

        timer = threading.Timer(seconds, fire)
        timer.daemon = True
        timer.start()
        try:
            yield
        except Exception as exc:
            if overdue.is_set():
                raise CommandOverdue(what, self.seconds, self.setting, extra_seconds) from exc
            raise
        finally:
            # Finished as the cut came: what it did stands (a mail the relay
            # took stays sent); the next command finds the connection gone.
            timer.cancel()
