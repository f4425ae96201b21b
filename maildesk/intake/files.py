"""Messages from files: .eml files, Maildir folders, mbox files, plain folders, stdin.

Order is preserved: arguments in the order given, folders in file-name order,
an mbox in file order.
"""

from __future__ import annotations

import glob
import logging
import queue
import re
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger(__name__)

# A header field's first line ("Name:"): what follows an mbox's "From " separator.
_HEADER_FIELD = re.compile(rb"[!-9;-~]+[ \t]*:")
# A body line an mbox writer quoted: "From " became ">From ", ">From " became ">>From "
# (mboxrd; mboxo writers quote only the first). Unquoted, the stored bytes are the mail's
# own, so the same mail read over IMAP or a pipe is a duplicate, not a second message.
_QUOTED_FROM = re.compile(rb">+From ")


class SourceError(Exception):
    """A path that cannot be read as mail (missing, unreadable)."""


@dataclass(frozen=True)
class FileMessage:
    raw: bytes
    ref: str  # where it came from, for the record: path, path#n for mbox, "-"


def is_maildir(path: Path) -> bool:
    return all((path / sub).is_dir() for sub in ("cur", "new", "tmp"))


def looks_like_mbox(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            head = handle.read(5)
    except OSError:
        return False
    return head == b"From "


def iter_messages(
    paths: list[str], stdin: BinaryIO | None = None, unreadable: list[str] | None = None
) -> Iterator[FileMessage]:
    """Every message of ``paths``, in order.

    With ``unreadable`` (a list), a path or file that cannot be read is named
    there and skipped, and the rest is read: one bad file in a Maildir must not
    keep the others out. Without it, the first SourceError is raised.
    """
    for name in paths:
        yield from _skipping_unreadable(_messages_of(name, stdin, unreadable), unreadable)


def _skipping_unreadable(
    messages: Iterator[FileMessage], unreadable: list[str] | None
) -> Iterator[FileMessage]:
    """``messages``; a SourceError is named in ``unreadable`` and ends them (else raised)."""
    try:
        yield from messages
    except SourceError as exc:
        if unreadable is None:
            raise
        log.info("%s: skipped", exc)
        unreadable.append(str(exc))


def _messages_of(
    name: str, stdin: BinaryIO | None, unreadable: list[str] | None
) -> Iterator[FileMessage]:
    if name == "-":
        stream = stdin if stdin is not None else sys.stdin.buffer
        raw = stream.read()
        if not raw:  # nothing came: no message to store (and nothing to quarantine)
            raise SourceError("-: no message on stdin (empty input)")
        yield FileMessage(raw, "-")
        return
    path = Path(name)
    if not path.exists():
        raise SourceError(f"{name}: no such file or directory")
    if path.is_dir():
        yield from _folder(path, unreadable)
    elif looks_like_mbox(path):
        yield from _mbox(path)
    else:
        yield FileMessage(_read(path), str(path))


def read_ahead(messages: Iterator[FileMessage], limit: int) -> Iterator[FileMessage]:
    """The same messages in the same order, read by a thread up to ``limit`` ahead.

    A bulk import stores and processes one chunk while the next is read from disk.
    An error while reading (SourceError) is raised here, where the message would be.
    """
    ahead: queue.Queue[FileMessage | BaseException | None] = queue.Queue(maxsize=limit)
    stop = threading.Event()

    def reader() -> None:
        try:
            for message in messages:
                while not stop.is_set():
                    try:
                        ahead.put(message, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            ahead.put(None)
        except BaseException as exc:  # handed to the consumer, raised there
            ahead.put(exc)

    thread = threading.Thread(target=reader, name="maildesk-read-ahead", daemon=True)
    thread.start()
    try:
        while (item := ahead.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


def count_messages(paths: list[str]) -> int | None:
    """A cheap count for the progress bar (None when an mbox or stdin is involved)."""
    total = 0
    for name in paths:
        path = Path(name)
        if name == "-" or not path.exists():
            return None
        if path.is_dir():
            try:
                total += sum(1 for _ in _folder_files(path))
            except OSError:  # said when it is read
                return None
        elif looks_like_mbox(path):
            return None
        else:
            total += 1
    return total


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise SourceError(f"{path}: {exc.strerror or exc}") from exc


def _folder_files(path: Path) -> Iterator[Path]:
    if is_maildir(path):
        for sub in ("new", "cur"):
            yield from sorted(
                p
                for p in (path / sub).iterdir()
                if p.is_file() and not p.name.startswith(".") and _inside(p, path)
            )
        return
    for entry in sorted(path.rglob("*")):
        if (
            entry.is_file()
            and not any(part.startswith(".") for part in entry.relative_to(path).parts)
            and _inside(entry, path)
        ):
            yield entry


def _inside(entry: Path, folder: Path) -> bool:
    """False for a symlink in ``folder`` that leads out of it (skipped, with a warning).

    A folder handed to `ingest` is read, not what its links point to: a link
    to /etc/passwd or to another user's mail would otherwise become a ticket.
    """
    if not entry.is_symlink():
        return True
    try:
        if entry.resolve().is_relative_to(folder.resolve()):
            return True
    except (OSError, RuntimeError):  # a link loop
        pass
    log.warning("%s: a symlink out of %s, skipped", entry, folder)
    return False


def _folder(path: Path, unreadable: list[str] | None = None) -> Iterator[FileMessage]:
    maildir = is_maildir(path)
    for entry in _listed(path):
        yield from _skipping_unreadable(_folder_entry(path, entry, maildir), unreadable)


def _listed(path: Path) -> Iterator[Path]:
    """The folder's files; a folder that cannot be listed is a SourceError, not a crash."""
    files = _folder_files(path)
    while True:
        try:
            entry = next(files, None)
        except OSError as exc:
            raise SourceError(f"{exc.filename or path}: {exc.strerror or exc}") from exc
        if entry is None:
            return
        yield entry


def _folder_entry(path: Path, entry: Path, maildir: bool) -> Iterator[FileMessage]:
    if not maildir and looks_like_mbox(entry):
        yield from _mbox(entry)
    elif maildir and not entry.exists():
        moved = _maildir_moved(path, entry)
        if moved is None:
            log.warning("%s: removed while the import ran, skipped", entry)
        else:
            yield FileMessage(_read(moved), str(moved))
    else:
        yield FileMessage(_read(entry), str(entry))


def _maildir_moved(maildir: Path, entry: Path) -> Path | None:
    """Where a mail client moved a Maildir message while we imported it.

    Reading it moves it from new/ to cur/, and a flag change renames it in
    cur/ (``unique:2,FLAGS``); its unique part before the colon stays.
    """
    unique = entry.name.split(":", 1)[0]
    for sub in ("cur", "new"):
        for candidate in (maildir / sub).glob(f"{glob.escape(unique)}*"):
            if candidate.name.split(":", 1)[0] == unique:
                return candidate
    return None


def _mbox(path: Path) -> Iterator[FileMessage]:
    """The messages of an mbox, split at its "From " lines.

    A "From " line starts a message at the top of the file or when a header
    field follows it. An unquoted "From " line in a body (mboxo) stays in the
    body: Python's mailbox would cut the message there, drop that line and
    store the rest of the body as a message of its own. Quoted ">From " lines
    lose one ">" (mboxrd; for mboxo it is exact unless the mail itself had ">From ").
    """
    index = 0
    lines: list[bytes] = []
    try:
        with path.open("rb") as handle:
            line = handle.readline()
            while line:
                following = handle.readline()
                if index == 0 or (
                    line.startswith(b"From ") and _HEADER_FIELD.match(following) is not None
                ):
                    if index:
                        yield FileMessage(_without_separator(lines), f"{path}#{index}")
                    index, lines = index + 1, []
                else:
                    lines.append(line[1:] if _QUOTED_FROM.match(line) else line)
                line = following
    except OSError as exc:
        raise SourceError(f"{path}: {exc.strerror or exc}") from exc
    if index:
        yield FileMessage(_without_separator(lines), f"{path}#{index}")


def _without_separator(lines: list[bytes]) -> bytes:
    """A message's lines without the blank line that separates it from the next.

    Only a bare LF line, as Python's mailbox did: the same file stores the same bytes.
    """
    if lines and lines[-1] == b"\n":
        lines = lines[:-1]
    return b"".join(lines)
