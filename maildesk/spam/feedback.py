"""Spam feedback: what people said a message is, and learning it once.

Every source of feedback (``maildesk spam mark``, releasing spam from
quarantine, agents' ``#spam``/``#ham``, an IMAP Junk folder) records a row
with :func:`record_feedback` in its own transaction. :func:`learn_pending`
then trains the live model on rows not learned yet, saves it atomically and
publishes it to every node through the database (:mod:`maildesk.shared_models`);
the scorers pick the new file up by its changed mtime. Learning runs in the
CLI command that recorded the feedback or in the daemon's scheduler, never
in the intake path.
"""

from __future__ import annotations

import enum
import fcntl
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from maildesk.atomic import write_atomic
from maildesk.db import queries
from maildesk.db.database import Database, is_lock_conflict
from maildesk.db.models import (
    Blob,
    Event,
    Intake,
    Message,
    Outbox,
    SpamFeedback,
    Ticket,
    TicketStatus,
)
from maildesk.db.upsert import insert_ignore_statement
from maildesk.outbound.agent_notices import notify_after_customer_mail
from maildesk.outbound.notices import Notices
from maildesk.pipeline.context import HUMAN_KINDS
from maildesk.pipeline.parse import ParseError, parse_message
from maildesk.shared_models import PUBLISH_ATTEMPTS, PublishConflict, publish, pull, settle
from maildesk.spam.scoring import ScorerSpec

log = logging.getLogger("maildesk.spam")
LEARN_BATCH = 500


class SpamLabel(enum.StrEnum):
    SPAM = "spam"
    HAM = "ham"


class FeedbackError(ValueError):
    """The feedback names no stored message."""


def record_feedback(
    session: Session,
    *,
    intake_id: int | None = None,
    message_pk: int | None = None,
    raw_sha256: str | None = None,
    label: SpamLabel | str,
    source: str,
    actor: str,
    now: datetime | None = None,
) -> bool:
    """Record that a stored message is ``label``; True when that is news to the model.

    The message is named by its intake row, its ``messages`` row or its raw
    bytes' hash (one of them). The ledger is keyed by the raw bytes, so two
    copies of one message are one lesson; the same label twice is one lesson;
    a different label replaces the old one and is learned again (a
    correction). Only the ledger is written, in the caller's transaction:
    learning happens later (:func:`learn_pending`), never in the caller's path.
    ``source`` says where it came from (cli, quarantine_release, agent,
    imap_junk), ``actor`` who. Raises :class:`FeedbackError` if nothing matches.
    """
    label = SpamLabel(label)
    digest = raw_sha256 or _raw_of(session, intake_id, message_pk)
    when = now or datetime.now(UTC)
    # Insert-if-absent, then the row locked: a verdict on the same message from
    # another node (an agent's #spam beside the IMAP Junk folder) in the same
    # moment waits for this one and is judged against it, instead of failing on
    # the unique key.
    connection = session.connection()
    values = {
        "raw_sha256": digest,
        "label": label.value,
        "source": source[:40],
        "actor": actor[:320],
        "created_at": when,
    }
    table = SpamFeedback.__table__
    insert = insert_ignore_statement(connection.dialect.name, table, ("raw_sha256",))
    if connection.execute(insert.returning(table.c.id), values).first() is not None:
        log.info("spam feedback: %s is %s (%s by %s)", digest[:12], label, source, actor)
        return True
    locked = select(SpamFeedback).where(SpamFeedback.raw_sha256 == digest).with_for_update()
    row = session.scalars(locked.execution_options(populate_existing=True)).one()
    if row.label == label.value:
        return False
    row.label, row.source, row.actor = label.value, source[:40], actor[:320]
    row.created_at, row.learned_at = when, None
    log.info("spam feedback: %s corrected to %s (%s by %s)", digest[:12], label, source, actor)
    return True


def _raw_of(session: Session, intake_id: int | None, message_pk: int | None) -> str:
    if intake_id is not None:
        intake = session.get(Intake, intake_id)
        if intake is not None:
            return intake.raw_sha256
        raise FeedbackError(f"no stored message with intake id {intake_id}")
    if message_pk is not None:
        message = session.get(Message, message_pk)
        if message is not None and message.raw_sha256:
            return message.raw_sha256
        found = session.scalars(
            select(Intake.raw_sha256).where(Intake.message_pk == message_pk).limit(1)
        ).first()
        if found:
            return found
        raise FeedbackError(f"no stored raw message for message {message_pk}")
    raise FeedbackError("record_feedback needs intake_id, message_pk or raw_sha256")


@dataclass(frozen=True, slots=True)
class _Lesson:
    id: int
    raw_sha256: str
    is_spam: bool
    created_at: datetime
    raw: bytes


def learn_pending(
    db: Database, spec: ScorerSpec, clock: Callable[[], datetime], node: str = ""
) -> int:
    """Train the live model on feedback not learned yet; returns how many were learned.

    No database lock is held while the model learns (a SQLite write lock would
    stall intake): read what is pending, bring this node's copy of the shared
    model up to date, learn and save it, then in one transaction publish it
    (only if no other node published meanwhile) and mark the rows learned. On
    a conflict the other node's model is pulled and the lessons learned again.
    A file lock beside the model keeps two learners on this node (the daemon
    and a ``spam mark`` command) from racing for the same copy.
    """
    for _attempt in range(PUBLISH_ATTEMPTS):
        with _model_lock(spec.live_path):
            lessons = _pending(db)
            if not lessons:
                return 0
            based_on = pull(db, spec.live_path)
            # What this node held before learning: put back if the lessons are not
            # published (they stay pending, and must not be in the copy twice then).
            before = spec.live_path.read_bytes() if spec.live_path.exists() else None
            model, note = spec.load()
            (log.warning if "falling back" in note and spec.live_path.exists() else log.info)(
                "%s", note
            )
            learned = 0
            for lesson in lessons:
                try:
                    msg = parse_message(lesson.raw)
                except ParseError as exc:
                    log.warning("spam feedback %s not learned: %s", lesson.raw_sha256[:12], exc)
                    continue
                model.learn(msg, lesson.is_spam)
                learned += 1
            # Saved before the rows are marked: if publishing fails they stay
            # pending and are learned again next time rather than lost.
            model.save(spec.live_path)
            now = clock()
            try:
                with db.transaction() as session:
                    version = publish(session, spec.live_path, based_on, node=node, now=now)
                    _mark_learned(session, lessons, now)
            except PublishConflict as exc:
                log.info("spam model: %s; learning again on the newer model", exc)
                continue
            except Exception as exc:
                _put_back(spec.live_path, before)
                if not is_lock_conflict(exc):
                    raise
                log.info("spam model: publishing lost a lock conflict; learning again: %s", exc)
                continue
            settle(spec.live_path, version)
        log.info(
            "spam model: learned %d message(s); saved %s (version %d, shared version %d)",
            learned,
            spec.live_path,
            model.seen,
            version,
        )
        return learned
    log.warning(
        "spam model: still conflicting after %d attempts; lessons stay pending", PUBLISH_ATTEMPTS
    )
    return 0


def _put_back(live_path: Path, before: bytes | None) -> None:
    """This node's copy as it was before lessons that were not published."""
    if before is None:
        live_path.unlink(missing_ok=True)
    else:
        write_atomic(live_path, before)


def _mark_learned(session: Session, lessons: list[_Lesson], now: datetime) -> None:
    for lesson in lessons:
        session.execute(
            update(SpamFeedback)
            .where(
                SpamFeedback.id == lesson.id,
                SpamFeedback.created_at == lesson.created_at,
                SpamFeedback.learned_at.is_(None),
            )
            .values(learned_at=now)
        )


def _pending(db: Database) -> list[_Lesson]:
    with db.transaction() as session:
        rows = session.execute(
            select(
                SpamFeedback.id,
                SpamFeedback.raw_sha256,
                SpamFeedback.label,
                SpamFeedback.created_at,
                Blob.data,
            )
            .join(Blob, Blob.sha256 == SpamFeedback.raw_sha256)
            .where(SpamFeedback.learned_at.is_(None))
            .order_by(SpamFeedback.id)
            .limit(LEARN_BATCH)
        ).all()
    return [
        _Lesson(id_, digest, label == SpamLabel.SPAM, created, bytes(data))
        for id_, digest, label, created, data in rows
    ]


@contextmanager
def _model_lock(live_path: Path) -> Iterator[None]:
    live_path.parent.mkdir(parents=True, exist_ok=True)
    with open(live_path.with_name(live_path.name + ".lock"), "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def feedback_counts(session: Session) -> dict[str, int]:
    """The ledger at a glance: learned spam/ham, and what is still pending."""
    rows = session.execute(
        select(SpamFeedback.label, SpamFeedback.learned_at.is_(None), func.count()).group_by(
            SpamFeedback.label, SpamFeedback.learned_at.is_(None)
        )
    ).all()
    counts = {"spam learned": 0, "ham learned": 0, "pending": 0}
    for label, pending, count in rows:
        counts["pending" if pending else f"{label} learned"] += int(count)
    return counts


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

    # Another verdict (an agent's, another op's) may be settling it at the same
    # moment: decide on the flag as it is now, locked until this one is committed.
    ticket = queries.locked_ticket(session, intake.ticket_id) if intake.ticket_id else None
    if ticket is None:
        return "no ticket"
    if label is SpamLabel.HAM and ticket.possible_spam:
        ticket.possible_spam = False
        _event(session, ticket, now, f"marked ham by {actor}: possible-spam flag cleared")
        reopened = _undo_spam_close(session, ticket, now, actor)
        message = session.get(Message, intake.message_pk) if intake.message_pk else None
        if notices is not None and message is not None:
            _announce(session, ticket, message, notices, now)
        if reopened is not None:
            return f"ticket #{ticket.number} released and reopened ({reopened})"
        return f"ticket #{ticket.number} released"
    if label is SpamLabel.SPAM:
        ticket.possible_spam = True
        before = ticket.status
        if change_status(session, ticket, TicketStatus.CLOSED, now, None, actor=actor):
            _event(session, ticket, now, f"marked spam by {actor}", {SPAM_CLOSED_FROM: before})
        else:
            _event(session, ticket, now, f"marked spam by {actor}")
        return f"ticket #{ticket.number} closed as spam"
    return f"ticket #{ticket.number} unchanged"


SPAM_CLOSED_FROM = "closed_from"  # spam_feedback event data: the status a spam verdict closed


def _undo_spam_close(session: Session, ticket: Ticket, now: datetime, actor: str) -> str | None:
    """Put back the status a spam verdict closed the ticket from, if nothing changed since.

    Returns the status restored, or None (not closed by a verdict, or closed,
    resolved or reopened by someone after it: their decision stands).
    """
    from maildesk.tickets import change_status

    if ticket.status is not TicketStatus.CLOSED:
        return None
    recent = session.scalars(
        select(Event)
        .where(Event.ticket_id == ticket.id, Event.kind.in_(("status", "spam_feedback")))
        .order_by(Event.id.desc())
        .limit(50)
    )
    last = [e for e in recent if e.kind == "status" or SPAM_CLOSED_FROM in (e.data or {})][:2]
    # The verdict wrote its status event, then its own: both must still be the newest.
    if len(last) < 2 or last[0].kind != "spam_feedback" or last[1].kind != "status":
        return None
    before = TicketStatus(last[0].data[SPAM_CLOSED_FROM])
    change_status(session, ticket, before, now, None, actor=f"{actor} (spam verdict undone)")
    return str(before)


def _announce(
    session: Session, ticket: Ticket, message: Message, notices: Notices, now: datetime
) -> None:
    """What a new ticket gets, held back while it was possible spam: once each.

    The flag is also set by a spam verdict on a ticket that was acknowledged
    and announced when it came in; a later ham verdict must not do it again.
    The acknowledgement is the one held back when the mail came in, with its
    routing rule's template; one skipped then for another reason (a rule, a
    forged sender, automated or list mail: MAIL-RULES §3) stays skipped. Only
    automated mail is not announced: a list's mail is a person's, the agents
    hear of it.
    """
    if _queued(session, ticket, "ack"):
        _event(session, ticket, now, "already acknowledged: not acknowledged again")
    elif (decision := notices.acknowledgement_decision(session, ticket)) is None:
        # Flagged before held acknowledgements were recorded: decided as then.
        if message.auto_kind is not None:
            why = f"{message.auto_kind}: automated mail is never answered"
            notices.acknowledge(session, ticket, message, False, f"released as ham; {why}")
        else:
            notices.acknowledge(session, ticket, message, True, "released as ham")
    elif decision.held:
        notices.acknowledge(
            session,
            ticket,
            message,
            True,
            "released as ham",
            decision.template,
            dmarc_passed=decision.dmarc_passed,
            quote=decision.quote,
        )
    else:
        _event(session, ticket, now, f"released as ham; still not acknowledged: {decision.reason}")
    automated = message.auto_kind not in (None, *HUMAN_KINDS)
    if not automated and not _queued(session, ticket, "new_ticket"):
        notify_after_customer_mail(
            session,
            notices,
            ticket,
            message,
            created=True,
            reopened=False,
            assignee_before=None,
            written_at=now,
        )


def _queued(session: Session, ticket: Ticket, purpose: str) -> bool:
    found = select(Outbox.id).where(Outbox.ticket_id == ticket.id, Outbox.purpose == purpose)
    return session.scalar(found.limit(1)) is not None


def _event(
    session: Session,
    ticket: Ticket,
    now: datetime,
    reason: str,
    data: dict[str, str] | None = None,
) -> None:
    session.add(
        Event(at=now, kind="spam_feedback", reason=reason, ticket_id=ticket.id, data=data or {})
    )
