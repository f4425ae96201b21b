"""Spam held in quarantine: the daily digest to ops, and expiry after the retention period.

Spam is never answered or notified per message (no backscatter, no noise);
instead one digest a day lists what was held, so ops can release a false
positive. The digest's Message-ID is derived from its day and signed, so
however often the job runs (restarts, several nodes) a day gets one digest:
the outbox's unique Message-ID refuses a second.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from email.headerregistry import Address as HeaderAddress
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from email.policy import default as default_policy
from email.utils import format_datetime
from zoneinfo import ZoneInfo

from sqlalchemy import ColumnElement, and_, delete, exists, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from maildesk.config import Settings
from maildesk.db.models import (
    Attachment,
    Blob,
    Disposition,
    Event,
    Intake,
    IntakeState,
    Message,
    Outbox,
    OutboxState,
    SpamFeedback,
)
from maildesk.domain.signing import Signer
from maildesk.intake.store import put_blob
from maildesk.outbound.compose import LOOP_HEADER, WIRE_POLICY, one_line, split_address
from maildesk.outbound.templates import TemplateRenderer

log = logging.getLogger("maildesk.spam")

SPAM_REASON_PREFIX = "spam:"
DIGEST_PURPOSE = "spam_digest"
DIGEST_LIMIT = 500  # messages listed in one digest; the count is always complete
EXPIRE_BATCH = 500
_FIELD_LIMIT = 160
_PROBABILITY_RE = re.compile(r"p=([0-9.]+)")


@dataclass(frozen=True, slots=True)
class HeldSpam:
    """One quarantined spam message, as the digest lists it (values folded, never HTML)."""

    intake_id: int
    received_at: datetime
    sender: str
    subject: str
    probability: str
    message_id: str


def is_spam_quarantine(intake: Intake) -> bool:
    return (intake.quarantine_reason or "").startswith(SPAM_REASON_PREFIX)


def _spam_held() -> ColumnElement[bool]:
    return and_(
        Intake.state == IntakeState.QUARANTINED,
        Intake.quarantine_reason.like(SPAM_REASON_PREFIX + "%"),
    )


# -- digest ---------------------------------------------------------------------
def digest_window(settings: Settings, now: datetime) -> tuple[datetime, datetime, str]:
    """The day the latest digest covers: ``[end - 1 day, end)`` and its local date.

    ``end`` is the most recent ``digest_at`` at or before ``now`` in the digest's
    time zone, so a job that runs late still covers exactly the same day.
    """
    zone = ZoneInfo(settings.spam.digest_timezone)
    hour, minute = (int(part) for part in settings.spam.digest_at.split(":"))
    local = now.astimezone(zone)
    end_local = datetime.combine(local.date(), time(hour, minute), tzinfo=zone)
    if end_local > local:
        end_local = datetime.combine(
            local.date() - timedelta(days=1), time(hour, minute), tzinfo=zone
        )
    end = end_local.astimezone(UTC)
    return end - timedelta(days=1), end, end_local.date().isoformat()


def held_spam(session: Session, since: datetime, until: datetime) -> tuple[int, list[HeldSpam]]:
    """How many spam messages were quarantined in ``[since, until)``, and the first ones."""
    window = and_(_spam_held(), Intake.processed_at >= since, Intake.processed_at < until)
    count = session.scalar(select(func.count(Intake.id)).where(window)) or 0
    rows = session.scalars(select(Intake).where(window).order_by(Intake.id).limit(DIGEST_LIMIT))
    listed = []
    for row in rows:
        blob = session.get(Blob, row.raw_sha256)
        headers = BytesHeaderParser(policy=default_policy).parsebytes(
            bytes(blob.data)[:65536] if blob else b""
        )
        found = _PROBABILITY_RE.search(row.quarantine_reason or "")
        listed.append(
            HeldSpam(
                intake_id=row.id,
                received_at=row.received_at,
                sender=_field(headers, "From") or (row.envelope_from or ""),
                subject=_field(headers, "Subject"),
                probability=found.group(1) if found else "?",
                message_id=one_line(row.header_message_id or "")[:_FIELD_LIMIT],
            )
        )
    return count, listed


def _field(headers: object, name: str) -> str:
    """A header as display text: decoded, one line, bounded; never raises."""
    try:
        value = headers[name]  # type: ignore[index]
        return one_line(str(value or ""))[:_FIELD_LIMIT]
    except Exception:  # a hostile header must not stop the digest
        return "(undecodable)"


def queue_digest(
    session: Session,
    settings: Settings,
    signer: Signer,
    renderer: TemplateRenderer,
    now: datetime,
) -> Outbox | None:
    """Queue the digest of the last day's spam to ``spam.digest_to``; None if nothing to do."""
    to = settings.spam.digest_to
    if not to:
        return None
    since, until, day = digest_window(settings, now)
    support = settings.support_addresses[0]
    _local, domain = split_address(support)
    message_id = f"md.spam-digest.{day}.{signer.sign('spam-digest', day, length=16)}@{domain}"
    if session.scalar(select(Outbox.id).where(Outbox.message_id == message_id)) is not None:
        return None  # this day's digest is already queued (another node, an earlier run)
    count, listed = held_spam(session, since, until)
    if count == 0:
        log.info("spam digest %s: no spam quarantined, nothing sent", day)
        return None
    rendered = renderer.render(
        "spam_digest",
        "ops",
        {
            "day": day,
            "since": since.isoformat(timespec="minutes"),
            "until": until.isoformat(timespec="minutes"),
            "count": count,
            "messages": listed,
            "omitted": count - len(listed),
            "retention_days": f"{settings.spam.retention_days:g}"
            if settings.spam.retention_days
            else "",
            "support": {"name": settings.outbound.from_name, "address": support},
        },
    )
    mime = EmailMessage(policy=WIRE_POLICY)
    mime["From"] = HeaderAddress(one_line(settings.outbound.from_name), addr_spec=support)
    mime["To"] = to
    mime["Subject"] = one_line(rendered.subject) or f"Spam quarantine digest {day}"
    mime["Date"] = format_datetime(now)
    mime["Message-ID"] = f"<{message_id}>"
    mime["Auto-Submitted"] = "auto-generated"
    mime["X-Auto-Response-Suppress"] = "All"
    mime[LOOP_HEADER] = signer.sign("loop", length=16)
    mime.set_content(rendered.text)
    raw = mime.as_bytes()
    row = Outbox(
        created_at=now,
        ticket_id=None,
        message_pk=None,
        purpose=DIGEST_PURPOSE,
        message_id=message_id,
        envelope_from=support,
        recipients=[to],
        recipient_key=to.lower()[:320],
        raw_sha256=put_blob(session, raw),
        state=OutboxState.QUEUED,
        next_attempt_at=now,
    )
    try:
        with session.begin_nested():  # another node may queue the same day's digest just now
            session.add(row)
    except IntegrityError:
        return None  # it did: its digest goes, not a second one
    log.info(
        "spam digest %s: %d message(s) listed, queued to %s (outbox=%s)", day, count, to, row.id
    )
    return row


# -- expiry ---------------------------------------------------------------------
def expire_spam(session: Session, now: datetime, retention_days: float) -> int:
    """Delete spam held longer than ``retention_days`` (and its copies and bytes).

    Returns how many quarantine entries were removed. Bytes still referenced
    elsewhere (a ticket's message, an outbox row, the feedback ledger) stay.
    """
    if retention_days <= 0:
        return 0
    cutoff = now - timedelta(days=retention_days)
    # Locked (on PostgreSQL): a `quarantine release|retry` on another node waits,
    # and finds the row gone; a row it is changing right now is left for next time.
    query = (
        select(Intake.id, Intake.raw_sha256)
        .where(_spam_held(), Intake.processed_at < cutoff)
        .order_by(Intake.id)
        .limit(EXPIRE_BATCH)
    )
    if session.connection().dialect.name != "sqlite":
        query = query.with_for_update(skip_locked=True)
    old = list(session.execute(query).all())
    if not old:
        return 0
    digests = {digest for _id, digest in old}
    # Re-delivered copies of held spam were recorded as duplicates without a ticket.
    copies = session.scalars(
        select(Intake.id).where(
            Intake.raw_sha256.in_(digests),
            Intake.disposition == Disposition.DUPLICATE,
            Intake.ticket_id.is_(None),
        )
    ).all()
    ids = [intake_id for intake_id, _digest in old] + list(copies)
    session.execute(delete(Event).where(Event.intake_id.in_(ids)))
    session.execute(delete(Intake).where(Intake.id.in_(ids)))
    referenced = or_(
        exists().where(Intake.raw_sha256 == Blob.sha256),
        exists().where(Message.raw_sha256 == Blob.sha256),
        exists().where(Outbox.raw_sha256 == Blob.sha256),
        exists().where(Attachment.sha256 == Blob.sha256),
        exists().where(SpamFeedback.raw_sha256 == Blob.sha256),
    )
    session.execute(
        delete(Blob)
        .where(Blob.sha256.in_(digests), ~referenced)
        .execution_options(synchronize_session=False)
    )
    session.add(
        Event(
            at=now,
            kind="spam_expired",
            reason=f"{len(old)} spam message(s) held over {retention_days:g} days deleted",
            data={"intake_ids": [intake_id for intake_id, _digest in old]},
        )
    )
    log.info("spam quarantine: %d message(s) older than %g days deleted", len(old), retention_days)
    return len(old)
