"""Notices for IMAP mail too large to fetch (issue 4).

The poller stores only the header of such a message and the pipeline puts it
in quarantine with the reason. This job, run by the daemon's scheduler, then
tells the sender once, when the mailbox's ``oversize_notice`` policy says so:
never to automated mail, our own addresses, suppressed or rate-limited
senders (the checks every customer notice passes). Each quarantined message
gets exactly one ``oversize_notice`` event (sent or why not); the notice's
Message-ID is derived from the intake id, so two nodes cannot queue it twice.
"""

from __future__ import annotations

import logging
import re
from datetime import datetime, timedelta
from email.headerregistry import Address as HeaderAddress
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime
from typing import TYPE_CHECKING

from sqlalchemy import exists, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from maildesk.config import ImapMailboxSettings, OversizeNotice, Settings
from maildesk.db.database import is_lock_conflict, is_unavailable
from maildesk.db.models import Blob, Event, Intake, IntakeState, Outbox, OutboxState
from maildesk.db.outage import Outage
from maildesk.domain.address import mailbox_key
from maildesk.domain.author import MAX_SHOWN_NAME, shorten
from maildesk.domain.authresults import failed_dmarc, no_backscatter
from maildesk.domain.autodetect import classify
from maildesk.domain.message import TRUNCATED_HEADER
from maildesk.domain.rawheader import raw_header_values
from maildesk.intake.store import put_blob
from maildesk.outbound.compose import (
    LOOP_HEADER,
    MessageIdsHeader,
    header_address,
    needs_smtputf8,
    one_line,
    quoted_subject,
    split_address,
    wire_address,
)
from maildesk.outbound.notices import Notices
from maildesk.pipeline.context import HUMAN_KINDS
from maildesk.pipeline.parse import ParseError, parse_message
from maildesk.pipeline.spam import objection_to_answering

if TYPE_CHECKING:
    from apscheduler.schedulers.base import BaseScheduler

    from maildesk.app import App

log = logging.getLogger("maildesk.intake.imap")

PURPOSE = "too_large"
EVENT = "oversize_notice"
REASON_PREFIX = "too large to fetch from IMAP"
LOOKBACK = timedelta(days=2)  # older quarantine entries are not answered any more
INTERVAL_SECONDS = 10.0
SIZE_NOTE = re.compile(r"original size (\d+) bytes")


def mailbox_of(settings: Settings, source_ref: str) -> ImapMailboxSettings | None:
    key = source_ref.split("/", 1)[0]
    return next((m for m in settings.imap if m.key == key), None)


def pending(session: Session, now: datetime) -> list[Intake]:
    """Quarantined over-size IMAP messages without an ``oversize_notice`` event yet."""
    noticed = exists().where(Event.intake_id == Intake.id, Event.kind == EVENT)
    return list(
        session.scalars(
            select(Intake)
            .where(
                Intake.source == "imap",
                Intake.state == IntakeState.QUARANTINED,
                Intake.quarantine_reason.startswith(REASON_PREFIX),
                Intake.processed_at >= now - LOOKBACK,
                ~noticed,
            )
            .order_by(Intake.id)
            .limit(100)
        )
    )


def queue_notices(session: Session, notices: Notices, now: datetime) -> int:
    """Decide (and queue) the notice for each pending message; returns how many were queued."""
    queued = 0
    for intake in pending(session, now):
        reason = _notice(session, notices, intake, now)
        sent = reason is None
        queued += sent
        text = f"{PURPOSE} notice queued" if sent else f"no {PURPOSE} notice: {reason}"
        session.add(Event(at=now, kind=EVENT, reason=text, intake_id=intake.id))
        log.info("intake=%s %s", intake.id, text)
    return queued


def _notice(session: Session, notices: Notices, intake: Intake, now: datetime) -> str | None:
    """Queue the notice for ``intake``; returns why not, or None when queued."""
    settings = notices.settings
    mailbox = mailbox_of(settings, intake.source_ref)
    if mailbox is None or mailbox.oversize_notice is OversizeNotice.NONE:
        return "oversize_notice policy is none"
    blob = session.get(Blob, intake.raw_sha256)
    raw = bytes(blob.data) if blob is not None else b""
    header = raw.split(b"\r\n", 1)[1] if raw.startswith(TRUNCATED_HEADER.encode()) else raw
    try:
        msg = parse_message(header, time_limit=5.0)
    except ParseError as exc:
        return f"header cannot be parsed: {exc.reason}"
    verdict = classify(msg, envelope_sender=None, own_addresses=settings.own_addresses)
    if verdict.kind not in HUMAN_KINDS:
        return f"automated mail ({verdict.kind}) is never answered"
    authentication = msg.header_all("Authentication-Results")
    failed = failed_dmarc(authentication, settings.agent_mail.trusted_authserv_ids)
    if failed is not None and settings.acknowledgements.skip_dmarc_fail:
        return no_backscatter(failed)  # as for an acknowledgement: never to a forged From
    spam = objection_to_answering(session, settings, msg)
    if spam is not None:
        return spam
    sender = msg.from_.addr if msg.from_ else ""
    blocked = notices.blocked_reason(session, sender, PURPOSE)
    if blocked:
        return blocked
    to = wire_address(sender)
    if to is None:
        return f"cannot address {sender!r}"
    renderer = notices.renderer
    if not renderer.exists(PURPOSE, "customer"):
        return f"no {PURPOSE}.customer template"
    support = _support_address(settings, header)
    _local, domain = split_address(support)
    signature = notices.composer.signer.sign(PURPOSE, str(intake.id), length=16)
    message_id = f"md.{PURPOSE}.{intake.id}.{signature}@{domain or settings.mail_domain}"
    if session.scalar(select(Outbox.id).where(Outbox.message_id == message_id)) is not None:
        return "already queued by another node"
    note = (raw_header_values(raw, TRUNCATED_HEADER) or [""])[0]
    rendered = renderer.render(
        PURPOSE,
        "customer",
        {
            # The sender's own words, bounded as every notice quotes them (the header
            # alone may be 256 kB, and the From may be forged).
            "original_subject": quoted_subject(msg.subject),
            "size": intake_size(note),
            "limit": mailbox.max_message_bytes,
            "customer": {
                "email": sender,
                "name": shorten(one_line(msg.from_.name), MAX_SHOWN_NAME) if msg.from_ else "",
            },
            "support": {"name": settings.outbound.from_name, "address": support},
        },
    )
    # A local part beyond ASCII: header fields in UTF-8, sent with SMTPUTF8 (RFC 6531/6532).
    mime = EmailMessage(policy=SMTP.clone(utf8=True) if needs_smtputf8(to) else SMTP)
    mime["From"] = HeaderAddress(one_line(settings.outbound.from_name), addr_spec=support)
    mime["To"] = header_address("", to)
    mime["Subject"] = one_line(rendered.subject) or "Your message was too large"
    mime["Date"] = format_datetime(now)
    mime["Message-ID"] = f"<{message_id}>"
    # As every mail we write: an id is never RFC 2047-encoded (an Outlook-length one
    # would be, and the sender's client could not place the notice in the thread).
    answered = [msg.message_id] if msg.message_id else []
    for name in ("In-Reply-To", "References"):
        ids = MessageIdsHeader(name, answered)
        if ids:
            mime[name] = ids
    mime["Auto-Submitted"] = "auto-replied"
    mime["X-Auto-Response-Suppress"] = "All"
    mime[LOOP_HEADER] = notices.composer.loop_token
    mime.set_content(rendered.text)
    session.add(
        Outbox(
            created_at=now,
            ticket_id=None,
            message_pk=None,
            purpose=PURPOSE,
            message_id=message_id,
            envelope_from=support,
            recipients=[to],
            recipient_key=mailbox_key(to),
            raw_sha256=put_blob(session, mime.as_bytes()),
            state=OutboxState.QUEUED,
            next_attempt_at=now,
        )
    )
    return None


def intake_size(note: str) -> int:
    """The original size from the poller's note (``original size N bytes ...``)."""
    found = SIZE_NOTE.search(note)
    return int(found.group(1)) if found else 0


def _support_address(settings: Settings, header: bytes) -> str:
    """The support address the mail was sent to (To/Cc), else the first configured one."""
    own = settings.own_addresses
    for name in ("To", "Cc"):
        for value in raw_header_values(header, name):
            for part in value.replace(">", "<").split("<"):
                address = part.strip().strip(",").lower()
                if address in own:
                    return address
    return settings.support_addresses[0]


def run_once(app: App, outage: Outage | None = None) -> int:
    """One pass for the scheduler: errors are logged, never raised.

    ``outage`` (the daemon's): a database that is away is said once and waited out,
    not a traceback a round, and such a round is no success of the job.
    """
    if outage is not None and not outage.ready():
        return 0
    try:
        with app.db.transaction() as session:
            queued = queue_notices(session, app.notices(), app.clock())
    except Exception as exc:
        if outage is not None and is_unavailable(exc):
            outage.failed(exc)
        elif isinstance(exc, IntegrityError) or is_lock_conflict(exc):
            # Another node queued the same notice meanwhile (its Message-ID is unique).
            log.info("over-size notices: another node took this pass (%s)", type(exc).__name__)
        else:
            log.exception("over-size notices not queued this time (they stay pending)")
        return 0
    if outage is not None:
        outage.succeeded()
    return queued


def add_oversize_notices(scheduler: BaseScheduler, app: App) -> Outage | None:
    """Schedule the notice pass when any mailbox asks for notices; its outage tracker."""
    if not any(m.oversize_notice is not OversizeNotice.NONE for m in app.settings.imap):
        return None
    outage = Outage(log, "over-size notices")
    scheduler.add_job(
        run_once,
        "interval",
        args=[app, outage],
        seconds=INTERVAL_SECONDS,
        id="imap-oversize-notices",
        max_instances=1,
        coalesce=True,
    )
    return outage
