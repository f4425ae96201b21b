"""Junk folder feedback (issue 4): what agents move into a mailbox's Junk
folder is spam, what they move back out of it is ham.

A :class:`JunkPoller` reads the configured ``junk_folder`` like any folder
(UIDVALIDITY + last UID, IDLE, lease) but stores nothing and never changes
the server: each new message whose exact bytes maildesk stored before is
recorded as spam feedback. A message moved back out of Junk into a folder
maildesk reads shows up there as a message already stored; when its last
feedback was spam from the Junk folder, that is recorded as ham. The feedback
ledger is keyed by the raw bytes, so each message is one lesson however often
it is seen. Mail the provider filed straight into Junk was never stored and is
not looked at.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable
from datetime import datetime

from imapclient import IMAPClient
from sqlalchemy import select

from maildesk.db.database import Database
from maildesk.db.models import Blob, SpamFeedback
from maildesk.intake.imap import FETCH_BATCH, FolderPoller
from maildesk.spam.feedback import SpamLabel, record_feedback

log = logging.getLogger("maildesk.intake.imap")
SOURCE = "imap_junk"


def record_spam(db: Database, digests: Iterable[str], actor: str, now: datetime) -> int:
    """Spam feedback for the stored messages among ``digests``; returns how many were news."""
    wanted = set(digests)
    if not wanted:
        return 0
    recorded = 0
    with db.transaction() as session:
        known = session.scalars(select(Blob.sha256).where(Blob.sha256.in_(wanted))).all()
        for digest in known:
            recorded += record_feedback(
                session,
                raw_sha256=digest,
                label=SpamLabel.SPAM,
                source=SOURCE,
                actor=actor,
                now=now,
            )
    return recorded


def record_ham_if_junked(db: Database, digests: Iterable[str], actor: str, now: datetime) -> int:
    """Ham feedback for messages whose last feedback was spam from a Junk folder."""
    wanted = set(digests)
    if not wanted:
        return 0
    recorded = 0
    with db.transaction() as session:
        junked = session.scalars(
            select(SpamFeedback.raw_sha256).where(
                SpamFeedback.raw_sha256.in_(wanted),
                SpamFeedback.label == SpamLabel.SPAM.value,
                SpamFeedback.source == SOURCE,
            )
        ).all()
        for digest in junked:
            recorded += record_feedback(
                session, raw_sha256=digest, label=SpamLabel.HAM, source=SOURCE, actor=actor, now=now
            )
    return recorded


class JunkPoller(FolderPoller):
    """Reads a Junk folder read-only and records spam feedback; stores nothing."""

    writable = False

    def poll(self, client: IMAPClient, uidvalidity: int) -> int:
        self._begin_poll(client)
        uids = self._new_uids(client)
        recorded = 0
        for start in range(0, len(uids), FETCH_BATCH):
            chunk = uids[start : start + FETCH_BATCH]
            recorded += record_spam(
                self.deps.db, self._digests(client, chunk), self.name, self.deps.clock()
            )
            self.state.record_stored(chunk[-1])
            self.state.record_acted(chunk[-1])
            self.health.last_uid = chunk[-1]
        if recorded:
            log.info("imap %s: %d message(s) moved to Junk recorded as spam", self.name, recorded)
        self.health.last_ok_at = self.deps.clock().isoformat()
        return 0

    def _digests(self, client: IMAPClient, uids: list[int]) -> list[str]:
        limit = self.mailbox.max_message_bytes
        sizes = [
            (uid, size) for uid, size in sorted(self._sizes(client, uids).items()) if size <= limit
        ]
        return [hashlib.sha256(body).hexdigest() for _uid, body in self._bodies(client, sizes)]


def seen_again_hook(
    db: Database, actor: str, clock: Callable[[], datetime]
) -> Callable[[Iterable[str]], None]:
    """For a folder poller: messages seen again in a read folder may have come out of Junk."""

    def hook(digests: Iterable[str]) -> None:
        count = record_ham_if_junked(db, digests, actor, clock())
        if count:
            log.info("imap %s: %d message(s) moved out of Junk recorded as ham", actor, count)

    return hook
