"""The pipeline worker: claims stored messages oldest first and runs the stages.

Claiming is its own short transaction (``FOR UPDATE SKIP LOCKED`` on
PostgreSQL, so several nodes share the queue). Parsing runs outside any
transaction; the remaining stages and ``apply`` run in one transaction per
message, so what the stages read is what apply writes against.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import and_, or_, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from maildesk.config import Settings
from maildesk.db.database import Database, is_transient
from maildesk.db.models import Blob, Disposition, Intake, IntakeState
from maildesk.domain.signing import Signer
from maildesk.outbound.notices import Notices
from maildesk.pipeline.apply import Applier
from maildesk.pipeline.context import HUMAN_KINDS, MessageContext, Stop, StopKind
from maildesk.pipeline.stages import DB_STAGES, StageDeps, parse_stage

log = logging.getLogger("maildesk.pipeline")


@dataclass(frozen=True)
class Outcome:
    intake_id: int
    disposition: Disposition | None  # None: left pending (temporary failure)
    ticket_number: int | None = None
    automated: bool = False
    reason: str = ""


@dataclass
class Summary:
    counts: Counter[str] = field(default_factory=Counter)

    def add(self, outcome: Outcome) -> None:
        key = str(outcome.disposition) if outcome.disposition else "pending"
        self.counts[key] += 1
        if outcome.automated:
            self.counts["auto_replies"] += 1

    def as_dict(self) -> dict[str, int]:
        return {
            "created": self.counts["created"],
            "threaded": self.counts["threaded"],
            "duplicates": self.counts["duplicate"],
            "auto_replies": self.counts["auto_replies"],
            "quarantined": self.counts["quarantined"],
            "pending": self.counts["pending"],
        }


class Worker:
    def __init__(
        self,
        db: Database,
        settings: Settings,
        signer: Signer,
        clock: Callable[[], datetime],
        node_name: str,
        notices: Notices | None = None,
    ) -> None:
        self.db = db
        self.notices = notices
        self.settings = settings
        self.clock = clock
        self.node = node_name
        self.deps = StageDeps(settings, signer, clock)

    # -- claiming ---------------------------------------------------------
    def claim(self, limit: int = 32) -> list[int]:
        """Claim up to ``limit`` messages that are due, oldest first."""
        now = self.clock()
        stale = now - timedelta(seconds=self.settings.pipeline.claim_timeout_seconds)
        due = or_(
            and_(
                Intake.state == IntakeState.PENDING,
                or_(Intake.not_before.is_(None), Intake.not_before <= now),
            ),
            and_(Intake.state == IntakeState.PROCESSING, Intake.claimed_at < stale),
        )
        stmt = select(Intake).where(due).order_by(Intake.id).limit(limit)
        if not self.db.is_sqlite:
            stmt = stmt.with_for_update(skip_locked=True)
        claimed: list[int] = []
        with self.db.transaction() as session:
            for row in session.scalars(stmt):
                if row.attempts >= self.settings.pipeline.max_attempts:
                    self._quarantine(
                        session,
                        row,
                        f"gave up after {row.attempts} attempts; last error: {row.last_error}",
                    )
                    continue
                row.state, row.claimed_by, row.claimed_at = IntakeState.PROCESSING, self.node, now
                row.attempts += 1
                claimed.append(row.id)
        return claimed

    def release_own_claims(self) -> int:
        """At start: what this node had claimed when it died goes back to the queue."""
        with self.db.transaction() as session:
            rows = session.scalars(
                select(Intake).where(
                    Intake.state == IntakeState.PROCESSING, Intake.claimed_by == self.node
                )
            ).all()
            for row in rows:
                row.state, row.claimed_by, row.claimed_at = IntakeState.PENDING, None, None
            return len(rows)

    def _quarantine(self, session: Session, row: Intake, reason: str) -> None:
        row.state, row.disposition = IntakeState.QUARANTINED, Disposition.QUARANTINED
        row.quarantine_reason, row.processed_at, row.claimed_by = reason, self.clock(), None
        Applier(self.settings, self.clock()).event(session, "quarantined", reason, intake=row)
        log.warning("intake=%s quarantined: %s", row.id, reason)

    # -- processing -------------------------------------------------------
    def process(self, intake_id: int) -> Outcome:
        """Run one claimed message through the pipeline; never raises for a bad message."""
        try:
            ctx = self._load(intake_id)
            stop = parse_stage(ctx, self.deps)
            return self._decide_and_apply(ctx, stop)
        except Exception as exc:
            if is_transient(exc):
                return self._postpone(intake_id, exc)
            log.exception("intake=%s failed", intake_id)
            return self._fail(intake_id, f"processing failed: {type(exc).__name__}: {exc}")

    def _load(self, intake_id: int) -> MessageContext:
        with self.db.transaction() as session:
            row = session.get(Intake, intake_id)
            if row is None:
                raise LookupError(f"no intake row {intake_id}")
            blob = session.get(Blob, row.raw_sha256)
            if blob is None:
                raise LookupError(f"raw bytes of intake {intake_id} are missing")
            return MessageContext(
                intake_id=row.id,
                raw=bytes(blob.data),
                envelope_from=row.envelope_from,
                envelope_to=tuple(row.envelope_to or ()),
                source=row.source,
                received_at=row.received_at,
                # `quarantine release` leaves the disposition set: process it whatever.
                forced=row.disposition == Disposition.QUARANTINED,
            )

    def _decide_and_apply(
        self, ctx: MessageContext, stop: Stop | None, retry: bool = True
    ) -> Outcome:
        try:
            with self.db.transaction() as session:
                intake = session.get(Intake, ctx.intake_id)
                assert intake is not None
                applier = Applier(self.settings, self.clock(), self.notices)
                for _name, stage in DB_STAGES:
                    if stop is not None:
                        break
                    stop = stage(ctx, session, self.deps)
                automated = ctx.verdict is not None and ctx.verdict.kind not in HUMAN_KINDS
                if stop is not None:
                    applier.stop(session, ctx, intake, stop)
                    stopped = (
                        Disposition.DUPLICATE
                        if stop.kind is StopKind.DUPLICATE
                        else Disposition.QUARANTINED
                    )
                    log.info("intake=%s %s: %s", ctx.intake_id, stopped, stop.reason)
                    return Outcome(ctx.intake_id, stopped, automated=automated, reason=stop.reason)
                ticket = applier.apply(session, ctx, intake)
                disposition = intake.disposition
                assert ctx.thread is not None
                log.info(
                    "intake=%s ticket=%s %s: %s",
                    ctx.intake_id,
                    ticket.number,
                    disposition,
                    ctx.thread.evidence,
                )
                return Outcome(
                    ctx.intake_id, disposition, ticket.number, automated, ctx.thread.evidence
                )
        except IntegrityError:
            # Another node stored the same message or id at the same moment:
            # decide again against what it wrote.
            if not retry:
                raise
            ctx.notes.clear()
            return self._decide_and_apply(ctx, None, retry=False)

    def _postpone(self, intake_id: int, exc: BaseException) -> Outcome:
        reason = f"temporary failure, will retry: {exc}"
        log.warning("intake=%s %s", intake_id, reason)
        delay = timedelta(seconds=self.settings.pipeline.retry_delay_seconds)
        try:
            with self.db.transaction() as session:
                row = session.get(Intake, intake_id)
                if row is not None:
                    row.state, row.claimed_by = IntakeState.PENDING, None
                    row.not_before, row.last_error = self.clock() + delay, str(exc)[:2000]
        except SQLAlchemyError:
            pass  # the claim times out and the message is picked up again
        return Outcome(intake_id, None, reason=reason)

    def _fail(self, intake_id: int, reason: str) -> Outcome:
        with self.db.transaction() as session:
            row = session.get(Intake, intake_id)
            if row is not None:
                self._quarantine(session, row, reason)
        return Outcome(intake_id, Disposition.QUARANTINED, reason=reason)

    def drain(
        self,
        *,
        on_outcome: Callable[[Outcome], None] | None = None,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> Summary:
        """Process everything due now; returns counts. Used by ingest and the daemon."""
        summary = Summary()
        while not should_stop():
            batch = self.claim()
            if not batch:
                break
            for intake_id in batch:
                outcome = self.process(intake_id)
                summary.add(outcome)
                if on_outcome is not None:
                    on_outcome(outcome)
        return summary
