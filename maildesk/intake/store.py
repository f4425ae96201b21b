"""The durable intake store: raw bytes in, an intake row out, nothing more.

Every receiver (files, stdin, SMTP/LMTP, IMAP) calls :meth:`IntakeStore.store`
and acknowledges only after it returns: the commit is what makes a message
ours. Processing happens later, in the pipeline worker.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import insert
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from maildesk.db.database import Database, StorageUnavailable
from maildesk.db.models import Attachment, Blob, Intake, IntakeState
from maildesk.db.upsert import insert_ignore
from maildesk.domain.address import elided
from maildesk.domain.message import ParsedAttachment
from maildesk.domain.rawheader import bounded_key, extract_message_id
from maildesk.metrics import Metrics

Clock = Callable[[], datetime]


@dataclass(frozen=True)
class Envelope:
    """Where a message came from and for whom, as the receiver saw it."""

    source: str  # file, stdin, smtp, lmtp, imap
    source_ref: str = ""
    mail_from: str | None = None
    rcpt_to: tuple[str, ...] = field(default=())


def header_message_id(raw: bytes) -> str | None:
    """The Message-ID an intake row is found by: whole, or one over the column's
    length bounded with a hash of it (see ``bounded_key``), never cut to another's."""
    return bounded_key(storable(extract_message_id(raw) or "")) or None


def storable(text: str) -> str:
    """``text`` as a text column of every database can hold it: valid UTF-8, no NUL.

    An SMTP client's 8-bit envelope arrives as surrogate escapes, which cannot
    be encoded, and PostgreSQL refuses NUL. Both are the sender's data, not a
    reason to answer 4xx until the sender gives up.
    """
    try:
        data = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that no decoder made
        data = text.encode("utf-8", "replace")
    return data.decode("utf-8", "replace").replace("\0", "\ufffd")


def put_blob(session: Session, data: bytes) -> str:
    """Store bytes content-addressed; storing the same bytes twice is a no-op."""
    digest = hashlib.sha256(data).hexdigest()
    insert_ignore(session, Blob, {"sha256": digest, "size": len(data), "data": data}, ["sha256"])
    return digest


# The longest attachment name kept whole (a display name; the mail may give 100 kB).
MAX_FILENAME = 1000
# RFC 6838 s. 4.2: a type and a subtype name of at most 127 characters each.
MAX_MEDIA_TYPE = 255


def media_type(content_type: str) -> str:
    """``content_type``, or application/octet-stream when it is longer than any media
    type can be (never cut into another type)."""
    return content_type if len(content_type) <= MAX_MEDIA_TYPE else "application/octet-stream"


def store_attachments(session: Session, message_pk: int, parts: Sequence[ParsedAttachment]) -> None:
    """Each attachment's bytes content-addressed; the mail's file name is display text only."""
    for part in parts:
        session.add(
            Attachment(
                message_pk=message_pk,
                # Both ends: a name cut short could lose its real extension to a decoy.
                filename=elided(part.filename, MAX_FILENAME),
                content_type=media_type(part.content_type),
                size=len(part.content),
                sha256=put_blob(session, part.content),
                content_id=part.content_id,
                inline=part.inline,
            )
        )


class IntakeStore:
    def __init__(self, db: Database, clock: Clock, metrics: Metrics | None = None) -> None:
        self.db = db
        self.clock = clock
        self.metrics = metrics

    def store(self, raw: bytes, envelope: Envelope) -> int:
        """Durably store one message; returns its intake id. Raises StorageUnavailable."""
        digest = hashlib.sha256(raw).hexdigest()
        try:
            with self.db.transaction() as session:
                put_blob(session, raw)
                stmt = insert(Intake).returning(Intake.id)
                intake_id = int(session.scalars(stmt, [self._row(digest, raw, envelope)]).one())
        except SQLAlchemyError as exc:
            raise StorageUnavailable(f"cannot store message: {exc}") from exc
        if self.metrics is not None:
            self.metrics.mail_received(envelope.source, "stored")
        return intake_id

    def store_many(self, items: Sequence[tuple[bytes, Envelope]]) -> None:
        """Store several messages in one transaction (one fsync for a bulk import).

        Blobs and intake rows go in one executemany each, not a statement per message.
        Raises StorageUnavailable; on return every message is stored.
        """
        blobs: dict[str, dict[str, object]] = {}
        rows = []
        for raw, env in items:
            digest = hashlib.sha256(raw).hexdigest()
            blobs.setdefault(digest, {"sha256": digest, "size": len(raw), "data": raw})
            rows.append(self._row(digest, raw, env))
        if not rows:
            return
        try:
            with self.db.transaction() as session:
                insert_ignore(session, Blob, list(blobs.values()), ["sha256"])
                session.execute(insert(Intake), rows)
        except SQLAlchemyError as exc:
            raise StorageUnavailable(f"cannot store message: {exc}") from exc
        if self.metrics is not None:
            for source in {env.source for _raw, env in items}:
                stored = sum(1 for _raw, env in items if env.source == source)
                self.metrics.mail_received(source, "stored", stored)

    def _row(self, digest: str, raw: bytes, env: Envelope) -> dict[str, object]:
        return {
            "received_at": self.clock(),
            "source": env.source,
            "source_ref": storable(env.source_ref[:2000]),
            "envelope_from": None if env.mail_from is None else storable(env.mail_from),
            "envelope_to": [storable(rcpt) for rcpt in env.rcpt_to],
            "raw_sha256": digest,
            "size": len(raw),
            "header_message_id": header_message_id(raw),
            "state": IntakeState.PENDING,
            "attempts": 0,
        }
