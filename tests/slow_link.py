"""A TCP relay on loopback that can make a real server's replies trickle.

Put in front of the tests' Dovecot, it plays a slow or half-broken network
path: with ``trickle`` on, everything the server sends reaches the client one
byte at a time, ``interval`` apart, so no single read ever waits long enough
for a socket timeout, while a command never ends. What the client sends goes
through at once, or (``slow_upload``) it is what trickles instead.
``on_upload`` sees each piece the client sends before the server does (a test
acts at a given command that way).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable


class SlowLink:
    def __init__(
        self,
        target_port: int,
        interval: float = 0.2,
        slow_upload: bool = False,
        on_upload: Callable[[bytes], None] | None = None,
    ) -> None:
        self.target_port = target_port
        self.interval = interval
        self.slow_upload = slow_upload
        self.on_upload = on_upload
        self.trickle = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, name="slow-link", daemon=True).start()

    def __enter__(self) -> SlowLink:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            sockets, self._sockets = [self._listener, *self._sockets], []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
                server = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                return
            server.settimeout(None)
            with self._lock:
                self._sockets += [client, server]
            up = self.slow_upload
            for source, sink, slow, upload in (
                (client, server, up, True),
                (server, client, not up, False),
            ):
                threading.Thread(
                    target=self._pump,
                    args=(source, sink, slow, upload),
                    name="slow-link",
                    daemon=True,
                ).start()

    def _pump(self, source: socket.socket, sink: socket.socket, slow: bool, upload: bool) -> None:
        try:
            while data := source.recv(65536):
                if upload and self.on_upload is not None:
                    self.on_upload(data)
                if not (slow and self.trickle.is_set()):
                    sink.sendall(data)
                    continue
                for index in range(len(data)):
                    if not self.trickle.is_set():  # back to full speed mid-reply
                        sink.sendall(data[index:])
                        break
                    sink.sendall(data[index : index + 1])
                    time.sleep(self.interval)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
