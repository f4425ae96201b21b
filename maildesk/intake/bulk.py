"""A bulk import's storing side, in a thread beside the pipeline.

`maildesk ingest` of a large mailbox reads and stores chunk after chunk while
the main thread processes what is already stored, so the disk writes of one
chunk overlap with parsing and applying the previous one. Storing is still
the only thing that makes a message ours: the import exits 0 only when the
storer has stored everything, and a read or storage error stops it after
storing what came before, exactly as a storing loop in the main thread would.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

from maildesk.intake.files import FileMessage, SourceError
from maildesk.intake.store import Envelope, IntakeStore


class BulkStorer(threading.Thread):
    def __init__(self, store: IntakeStore, messages: Iterator[FileMessage], chunk: int) -> None:
        super().__init__(name="maildesk-bulk-store", daemon=True)
        self.store = store
        self.messages = messages
        self.chunk = chunk
        self.stored = 0
        self.error: BaseException | None = None
        self.finished = threading.Event()
        self._progress = threading.Event()

    def run(self) -> None:
        batch: list[tuple[bytes, Envelope]] = []
        try:
            try:
                for item in self.messages:
                    source = "stdin" if item.ref == "-" else "file"
                    batch.append((item.raw, Envelope(source=source, source_ref=item.ref)))
                    if len(batch) >= self.chunk:
                        self._flush(batch)
            except SourceError as exc:
                self._flush(batch)  # what came before the unreadable path is stored
                raise exc
            self._flush(batch)
        except BaseException as exc:  # handed to the main thread by wait_for_work/result
            self.error = exc
        finally:
            self.finished.set()
            self._progress.set()

    def _flush(self, batch: list[tuple[bytes, Envelope]]) -> None:
        if batch:
            self.store.store_many(batch)
            self.stored += len(batch)
            batch.clear()
            self._progress.set()

    def wait_for_work(self, timeout: float) -> None:
        """Block until the next chunk is stored (or storing ended), at most ``timeout``."""
        self._progress.wait(timeout)
        self._progress.clear()
