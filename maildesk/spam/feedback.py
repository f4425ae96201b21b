"""Spam feedback: what people said a message is, and learning it once.

Every source of feedback (``maildesk spam mark``, releasing spam from
quarantine, agents' ``#spam``/``#ham``, an IMAP Junk folder) records a row
with :func:`record_feedback` in its own transaction. :func:`learn_pending`
then trains the live model on rows not learned yet and saves it atomically;
the scorers pick the new file up by its changed mtime. Learning runs in the
CLI command that recorded the feedback or in the daemon's scheduler, never
in the intake path.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from maildesk.db.database import Database
from maildesk.db.models import Blob, Event, Intake, Message, SpamFeedback, Ticket, TicketStatus
from maildesk.outbound.notices import Notices
from maildesk.pipeline.parse import ParseError, parse_message
from maildesk.spam.scoring import ScorerSpec

log = logging.getLogger("maildesk.spam")
LEARN_BATCH = 500


class SpamLabel(enum.StrEnum):
    SPAM = "spam"
    HAM = "ham"


def record_feedback(
    session: Session,
    *,
    raw_sha256: str,
    label: SpamLabel,
    source: str,
    actor: str,
    now: datetime,
) -> bool:
    """Record that these bytes are ``label``; True when that is news to the model.

    The same label twice is one lesson; a different label replaces the old one
    and is learned again (a correction).
    """
    row = session.scalars(select(SpamFeedback).where(SpamFeedback.raw_sha256 == raw_sha256)).first()
    if row is None:
        session.add(
            SpamFeedback(
                raw_sha256=raw_sha256,
                label=label.value,
                source=source[:40],
                actor=actor[:320],
                created_at=now,
            )
        )
        return True
    if row.label == label.value:
        return False
    row.label, row.source, row.actor = label.value, source[:40], actor[:320]
    row.created_at, row.learned_at = now, None
    return True


def learn_pending(db: Database, spec: ScorerSpec, clock: Callable[[], datetime]) -> int:
    """Train the live model on feedback not learned yet; returns how many were learned."""
    from maildesk.spam.model import SpamFilter  # sklearn: imported only to learn

    learned = 0
    with db.transaction() as session:
        stmt = (
            select(SpamFeedback)
            .where(SpamFeedback.learned_at.is_(None))
            .order_by(SpamFeedback.id)
            .limit(LEARN_BATCH)
        )
        if not db.is_sqlite:
            stmt = stmt.with_for_update(skip_locked=True)
        rows = list(session.scalars(stmt))
        if not rows:
            return 0
        model, note = SpamFilter.load_or_seed(spec.live_path, spec.seed_path)
        log.info("%s", note)
        now = clock()
        for row in rows:
            blob = session.get(Blob, row.raw_sha256)
            try:
                msg = parse_message(bytes(blob.data) if blob else b"")
            except ParseError as exc:
                log.warning("spam feedback %s not learned: %s", row.raw_sha256[:12], exc)
            else:
                model.learn(msg, row.label == SpamLabel.SPAM)
                learned += 1
            row.learned_at = now
        # Saved before the commit: if saving fails, the rows stay pending and are
        # learned again next time rather than marked learned and lost.
        model.save(spec.live_path)
    log.info("spam model: learned %d message(s); saved %s", learned, spec.live_path)
    return learned


def settle_ticket(
    session: Session,
    intake: Intake,
    label: SpamLabel,
    notices: Notices | None,
    now: datetime,
    *,
    actor: str,
) -> str:
    """What a verdict on a stored message does to its ticket; returns what happened.

    Ham on a possible-spam ticket clears the flag and sends the acknowledgement
    it was waiting for. Spam closes the ticket (the mail stays, flagged).
    """
    from maildesk.tickets import change_status

    ticket = session.get(Ticket, intake.ticket_id) if intake.ticket_id else None
    if ticket is None:
        return "no ticket"
    if label is SpamLabel.HAM and ticket.possible_spam:
        ticket.possible_spam = False
        _event(session, ticket, now, f"marked ham by {actor}: possible-spam flag cleared")
        message = session.get(Message, intake.message_pk) if intake.message_pk else None
        if notices is not None and message is not None:
            notices.acknowledge(session, ticket, message, True, "released as ham")
        return f"ticket #{ticket.number} released"
    if label is SpamLabel.SPAM:
        ticket.possible_spam = True
        _event(session, ticket, now, f"marked spam by {actor}")
        change_status(session, ticket, TicketStatus.CLOSED, now, None, actor=actor)
        return f"ticket #{ticket.number} closed as spam"
    return f"ticket #{ticket.number} unchanged"


def _event(session: Session, ticket: Ticket, now: datetime, reason: str) -> None:
    session.add(Event(at=now, kind="spam_feedback", reason=reason, ticket_id=ticket.id))
