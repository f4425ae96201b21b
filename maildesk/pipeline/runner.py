"""The pipeline worker: claims stored messages oldest first and runs the stages.

Claiming is its own short transaction (``FOR UPDATE SKIP LOCKED`` on
PostgreSQL, so several nodes share the queue). Parsing runs outside any
transaction; the remaining stages and ``apply`` run in one transaction per
message, so what the stages read is what apply writes against.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import and_, or_, select, text, update
from sqlalchemy.exc import IntegrityError, NoResultFound, SQLAlchemyError
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from maildesk.config import Settings
from maildesk.db.database import (
    Database,
    error_summary,
    is_lock_conflict,
    is_transient,
    is_unavailable,
    retry_on_lock_conflict,
)
from maildesk.db.models import Blob, Disposition, Intake, IntakeState
from maildesk.db.upsert import savepoint
from maildesk.domain.autodetect import AutoKind
from maildesk.domain.signing import Signer
from maildesk.metrics import Metrics
from maildesk.outbound.notices import Notices
from maildesk.pipeline.apply import Applier
from maildesk.pipeline.context import HUMAN_KINDS, MessageContext, Stop, StopKind
from maildesk.pipeline.lookahead import Lookahead
from maildesk.pipeline.parsepool import Parsed, ParsePool
from maildesk.pipeline.stages import (
    DB_STAGES,
    StageDeps,
    acknowledged_as_first,
    conversation_keys,
    copy_of_quarantined,
)
from maildesk.routing.router import Router
from maildesk.spam.quarantine import SPAM_REASON_PREFIX
from maildesk.spam.scoring import ScorerSpec

log = logging.getLogger("maildesk.pipeline")
FIRST_BATCH = 16
# A batch that loses a lock conflict (PostgreSQL broke a deadlock by failing it) is
# applied again at once this many times before it is put back for later.
LOCK_CONFLICT_RETRIES = 3
# The first key of the two-key advisory locks on conversations ("mdth"): a space
# apart from the run lock's one-key lock.
CONVERSATION_LOCK_SPACE = 0x6D647468
# In ascending order, so two batches sharing keys never wait on each other crosswise.
_LOCK_CONVERSATIONS = text(
    "SELECT pg_advisory_xact_lock(:space, k) FROM "
    "(SELECT DISTINCT k FROM unnest(CAST(:keys AS integer[])) AS k ORDER BY k OFFSET 0) AS keys"
)


@dataclass(frozen=True)
class Outcome:
    intake_id: int
    disposition: Disposition | None  # None: left pending (temporary failure)
    ticket_number: int | None = None
    automated: bool = False
    reason: str = ""
    # For the metrics: what else the pipeline found (possible_spam, auto_reply, ...),
    # when the mail was stored, and agent commands applied / not applied.
    flags: tuple[str, ...] = ()
    received_at: datetime | None = None
    commands: tuple[int, int] = (0, 0)

    @property
    def metric_disposition(self) -> str:
        if self.disposition is None:
            return "postponed"
        if self.disposition is Disposition.QUARANTINED and self.reason.startswith(
            SPAM_REASON_PREFIX
        ):
            return "spam"
        return str(self.disposition)


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
        router: Router | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.db = db
        self.notices = notices
        self.metrics = metrics
        self.settings = settings
        self.clock = clock
        self.node = node_name
        self.deps = StageDeps(settings, signer, clock, router)
        self.parse_pool = ParsePool(settings.pipeline, ScorerSpec.from_settings(settings))
        # Claims a temporary failure could not put back (the database was away
        # then, too): put back before anything else is claimed.
        self._unreleased: dict[int, BaseException] = {}
        # Messages of a batch applied one by one that met a temporary failure of
        # their own (a statement timeout): put back, counted, once the rest commits.
        self._deferred: dict[int, BaseException] = {}

    # -- claiming ---------------------------------------------------------
    def claim(self, limit: int = 64) -> list[MessageContext]:
        """Claim up to ``limit`` due messages, oldest first, and load their raw bytes."""
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
        claimed: list[MessageContext] = []
        with self.db.transaction() as session:
            rows = list(session.scalars(stmt))
            wanted = {r.raw_sha256 for r in rows}
            blobs = {
                digest: data
                for digest, data in session.execute(
                    select(Blob.sha256, Blob.data).where(Blob.sha256.in_(wanted))
                ).all()
            }
            taken: list[int] = []
            for row in rows:
                if row.attempts >= self.settings.pipeline.max_attempts:
                    self._quarantine(
                        session,
                        row,
                        f"gave up after {row.attempts} attempts; last error: {row.last_error}",
                    )
                    continue
                taken.append(row.id)
                # Mirror the bulk UPDATE below on the loaded rows, without dirtying them.
                for name, value in (
                    ("state", IntakeState.PROCESSING),
                    ("claimed_by", self.node),
                    ("claimed_at", now),
                    ("attempts", row.attempts + 1),
                ):
                    set_committed_value(row, name, value)
                claimed.append(
                    MessageContext(
                        intake_id=row.id,
                        raw=bytes(blobs.get(row.raw_sha256) or b""),
                        raw_sha256=row.raw_sha256,
                        envelope_from=row.envelope_from,
                        envelope_to=tuple(row.envelope_to or ()),
                        source=row.source,
                        received_at=row.received_at,
                        # `quarantine release` leaves the disposition set: process it whatever.
                        forced=row.disposition == Disposition.QUARANTINED,
                    )
                )
            if taken:
                # One statement for the batch, not one UPDATE per row.
                session.execute(
                    update(Intake)
                    .where(Intake.id.in_(taken))
                    .values(
                        state=IntakeState.PROCESSING,
                        claimed_by=self.node,
                        claimed_at=now,
                        attempts=Intake.attempts + 1,
                    )
                    .execution_options(synchronize_session=False)
                )
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

    def release_claims_of_dead_commands(self, prefix: str, alive: Callable[[int], bool]) -> int:
        """Claims of one-off commands (``<prefix><pid>``) whose process is gone go back now.

        A killed `ingest` leaves its batch claimed, under a name no one takes back
        before ``claim_timeout_seconds``; ``alive`` says whether a pid still runs here.
        """
        with self.db.transaction() as session:
            rows = session.scalars(
                select(Intake).where(
                    Intake.state == IntakeState.PROCESSING,
                    Intake.claimed_by.startswith(prefix, autoescape=True),
                )
            ).all()
            released = 0
            for row in rows:
                name = row.claimed_by or ""
                pid = name[len(prefix) :]
                # A name cut at the column's 128 characters may have lost digits.
                if len(name) >= 128 or not pid.isdigit() or alive(int(pid)):
                    continue
                row.state, row.claimed_by, row.claimed_at = IntakeState.PENDING, None, None
                released += 1
            return released

    def _quarantine(self, session: Session, row: Intake, reason: str) -> None:
        row.state, row.disposition = IntakeState.QUARANTINED, Disposition.QUARANTINED
        row.quarantine_reason, row.processed_at, row.claimed_by = reason, self.clock(), None
        applier = Applier(self.settings, self.clock())
        applier.event(session, "quarantined", reason, intake=row)
        applier.flush_events(session)
        log.warning("intake=%s quarantined: %s", row.id, reason)

    # -- processing -------------------------------------------------------
    def apply_parsed(self, parsed: Parsed) -> list[Outcome]:
        """Decide and apply a parsed batch in one transaction.

        The batch is applied optimistically in one go. If any message fails,
        the batch is rolled back and applied again with a savepoint per
        message, so the bad one rolls back alone and is quarantined. A
        temporary failure (database locked or down) puts the whole batch back.
        A lock conflict with another node (a deadlock PostgreSQL broke by
        failing this side) is applied again at once: the other side has its
        locks now, and this batch waits for them instead of crossing them.
        """
        batch = [ctx for ctx, _stop in parsed]
        stops = {ctx.intake_id: stop for ctx, stop in parsed}
        try:
            return self._apply_retrying(batch, stops, isolated=False)
        except Exception as exc:
            if (
                is_unavailable(exc)
                or is_lock_conflict(exc)
                or (is_transient(exc) and len(batch) == 1)
            ):
                return [self._postpone(ctx.intake_id, exc) for ctx in batch]
            # Also a temporary failure such as a statement timeout: one message may
            # have earned it, and must not spend its neighbours' attempts.
            log.info("batch of %d rolled back (%s); applying one by one", len(batch), exc)
        for ctx in batch:
            ctx.reset_decisions()
        try:
            outcomes = self._apply_retrying(batch, stops, isolated=True)
        except Exception as exc:
            if not is_transient(exc):
                raise
            return [self._postpone(ctx.intake_id, exc) for ctx in batch]
        deferred, self._deferred = self._deferred, {}
        return [
            self._postpone(o.intake_id, deferred[o.intake_id]) if o.intake_id in deferred else o
            for o in outcomes
        ]

    def _apply_retrying(
        self, batch: list[MessageContext], stops: dict[int, Stop | None], *, isolated: bool
    ) -> list[Outcome]:
        """:meth:`_apply_batch`, again at once after a lock conflict (up to a few times)."""

        def forget_decisions() -> None:
            for ctx in batch:
                ctx.reset_decisions()

        first = batch[0].intake_id if batch else "-"
        return retry_on_lock_conflict(
            lambda: self._apply_batch(batch, stops, isolated=isolated),
            attempts=LOCK_CONFLICT_RETRIES + 1,
            what=f"batch of {len(batch)} (intake {first}...)",
            before_again=forget_decisions,
        )

    def _apply_batch(
        self, batch: list[MessageContext], stops: dict[int, Stop | None], *, isolated: bool
    ) -> list[Outcome]:
        self._deferred = {}  # what an earlier try of this batch deferred was rolled back
        with self.db.transaction() as session:
            applier = Applier(self.settings, self.clock(), self.notices)
            intakes = self._still_claimed(session, batch)
            batch = [ctx for ctx in batch if ctx.intake_id in intakes]
            self._lock_conversations(session, [c for c in batch if stops[c.intake_id] is None])
            if not isolated:
                # All or nothing: prefetch the batch's lookups, write its events once.
                window = timedelta(days=self.settings.threading.subject_window_days)
                Lookahead.attach(session, [c for c in batch if stops[c.intake_id] is None], window)
                applier.defer_events = True
            outcomes = []
            try:
                for ctx in batch:
                    intake = intakes[ctx.intake_id]
                    stop = stops[ctx.intake_id]
                    if isolated:
                        outcomes.append(self._process_one(session, applier, ctx, intake, stop))
                    else:
                        outcomes.append(self._decide_and_apply(session, applier, ctx, intake, stop))
                applier.flush_events(session, final=True)
            finally:
                Lookahead.detach(session)
            return outcomes

    def _still_claimed(self, session: Session, batch: list[MessageContext]) -> dict[int, Intake]:
        """The batch's intake rows this node still holds, locked for this transaction.

        A claim older than ``claim_timeout_seconds`` may be taken over by
        another node (this one looked dead: a batch of messages that are slow
        to parse, a long pause); what it took is its to apply, not applied
        here a second time. The rows are locked in id order, so two nodes
        never wait on each other's rows crosswise.
        """
        query = (
            select(Intake)
            .where(Intake.id.in_([ctx.intake_id for ctx in batch]))
            .order_by(Intake.id)
        )
        if not self.db.is_sqlite:
            query = query.with_for_update()
        held = {}
        for row in session.scalars(query):
            if row.state is IntakeState.PROCESSING and row.claimed_by == self.node:
                held[row.id] = row
            else:
                log.info("intake=%s: taken over by another node while this one had it", row.id)
        return held

    def _lock_conversations(self, session: Session, batch: list[MessageContext]) -> None:
        """Lock, until commit, the conversations the batch's messages may join or start.

        READ COMMITTED lets two nodes each decide "new ticket" for a reply and
        its parent (or for one mail received by both) when neither sees the
        other's uncommitted rows: two tickets, two acknowledgements. With the
        keys locked first, the second node waits for the first to commit and
        then reads what it wrote. SQLite has one writer at a time already.
        """
        if self.db.is_sqlite or not batch:
            return
        keys = {_lock_key(key) for ctx in batch for key in conversation_keys(ctx)}
        if keys:
            session.execute(
                _LOCK_CONVERSATIONS, {"space": CONVERSATION_LOCK_SPACE, "keys": sorted(keys)}
            )

    def _process_one(
        self,
        session: Session,
        applier: Applier,
        ctx: MessageContext,
        intake: Intake,
        parse_stop: Stop | None,
    ) -> Outcome:
        for attempt in (1, 2):
            try:
                with savepoint(session):
                    return self._decide_and_apply(session, applier, ctx, intake, parse_stop)
            except (IntegrityError, NoResultFound) as exc:
                # Another node stored the same message or id at the same moment, or
                # erased the ticket it threads to (``privacy forget``, retention):
                # decide again against what it wrote.
                applier.discard_events()
                ctx.reset_decisions()
                if attempt == 2:
                    # Twice is no race any more: say what the database said.
                    log.warning("intake=%s failed twice: %s", ctx.intake_id, exc)
                    reason = f"conflicting concurrent writes twice: {error_summary(exc)}"
                    return self._fail(session, intake, reason)
            except Exception as exc:
                if is_unavailable(exc) or is_lock_conflict(exc):
                    raise  # the whole batch waits (or is applied again)
                applier.discard_events()
                if is_transient(exc):  # e.g. its statement timed out: later, counted
                    ctx.reset_decisions()
                    self._deferred[ctx.intake_id] = exc
                    reason = f"temporary failure: {error_summary(exc)}"
                    return Outcome(ctx.intake_id, None, reason=reason)
                log.exception("intake=%s failed", ctx.intake_id)  # the whole of it: here only
                return self._fail(session, intake, f"processing failed: {error_summary(exc)}")
        raise AssertionError("unreachable")

    def _decide_and_apply(
        self,
        session: Session,
        applier: Applier,
        ctx: MessageContext,
        intake: Intake,
        stop: Stop | None,
    ) -> Outcome:
        if stop is not None and stop.kind is StopKind.QUARANTINE:
            stop = copy_of_quarantined(ctx, session) or stop
        for _name, stage in DB_STAGES:
            if stop is not None:
                break
            stop = stage(ctx, session, self.deps)
        automated = ctx.verdict is not None and ctx.verdict.kind not in HUMAN_KINDS
        if stop is not None:
            held = acknowledged_as_first(ctx, session, self.deps) if stop.acknowledge_late else None
            applier.stop(session, ctx, intake, stop, held=held)
            stopped = (
                Disposition.DUPLICATE
                if stop.kind is StopKind.DUPLICATE
                else Disposition.QUARANTINED
            )
            log.info("intake=%s %s: %s", ctx.intake_id, stopped, stop.reason)
            return Outcome(
                ctx.intake_id,
                stopped,
                automated=automated,
                reason=stop.reason,
                flags=_flags(ctx),
                received_at=intake.received_at,
            )
        ticket = applier.apply(session, ctx, intake)
        assert ctx.thread is not None
        log.info(
            "intake=%s ticket=%s %s: %s",
            ctx.intake_id,
            ticket.number,
            intake.disposition,
            ctx.thread.evidence,
        )
        return Outcome(
            ctx.intake_id,
            intake.disposition,
            ticket.number,
            automated,
            ctx.thread.evidence,
            flags=_flags(ctx),
            received_at=intake.received_at,
            commands=(ctx.commands_applied, ctx.commands_failed),
        )

    def _postpone(self, intake_id: int, exc: BaseException) -> Outcome:
        """Put the message back for later.

        ``max_attempts`` is there for mail that keeps failing the worker. A lock
        conflict with other nodes' transactions, or the database being away
        (down, restarted, connections killed, SQLite locked by another process),
        is nobody's fault and does not count as an attempt (MAIL-RULES §1: a
        temporary failure is retried, never quarantined). If the database is
        still away, the claim is put back by this worker once it is there again.
        """
        reason = f"temporary failure, will retry: {error_summary(exc)}"
        if is_unavailable(exc):  # the outage itself is said once, by the loop (Outage)
            log.info("intake=%s put back, database unavailable", intake_id)
        else:
            log.warning("intake=%s temporary failure, will retry: %s", intake_id, exc)
        if self._unreleased:  # a put-back failed just now: the database is away still
            self._unreleased[intake_id] = exc
            return Outcome(intake_id, None, reason=reason)
        try:
            self._put_back(intake_id, exc)
        except SQLAlchemyError:
            self._unreleased[intake_id] = exc
        return Outcome(intake_id, None, reason=reason)

    def _put_back(
        self, intake_id: int, exc: BaseException, *, delay: timedelta | None = None
    ) -> None:
        if delay is None:
            delay = timedelta(seconds=self.settings.pipeline.retry_delay_seconds)
        with self.db.transaction() as session:
            row = session.get(Intake, intake_id)
            if row is not None and row.claimed_by == self.node:
                row.state, row.claimed_by = IntakeState.PENDING, None
                row.not_before, row.last_error = self.clock() + delay, error_summary(exc, 2000)
                if is_lock_conflict(exc) or is_unavailable(exc):
                    row.attempts = max(row.attempts - 1, 0)

    def put_back_unreleased(self) -> None:
        """Put back the claims a temporary failure left with this node; raises while the
        database is still away."""
        for intake_id, exc in list(self._unreleased.items()):
            self._put_back(intake_id, exc, delay=timedelta(0))  # waited out with the outage
            del self._unreleased[intake_id]

    def _fail(self, session: Session, intake: Intake, reason: str) -> Outcome:
        with session.begin_nested():
            self._quarantine(session, intake, reason)
        return Outcome(
            intake.id, Disposition.QUARANTINED, reason=reason, received_at=intake.received_at
        )

    def drain(
        self,
        *,
        on_outcome: Callable[[Outcome], None] | None = None,
        should_stop: Callable[[], bool] = lambda: False,
        batch_size: int = 64,
    ) -> Summary:
        """Process everything due now; returns counts. Used by ingest and the daemon.

        A batch is one write transaction: the daemon uses small batches so the
        SQLite write lock is never held long while listeners wait to store.
        """
        summary = Summary()
        self.put_back_unreleased()
        # A small first batch: nothing is applied until it is parsed, so the
        # pipeline fills sooner (the parser works one batch ahead of apply).
        batch = self.claim(min(batch_size, FIRST_BATCH))
        parsed = self.parse_pool.submit(batch)
        failure: Exception | None = None
        while batch:
            # Claim and start parsing the next batch before applying this one.
            upcoming: list[MessageContext] = []
            if failure is None and not should_stop():
                try:
                    upcoming = self.claim(batch_size)
                except Exception as exc:
                    if not is_transient(exc):
                        raise
                    failure = exc  # the batch in hand is applied (or put back) first
            upcoming_parsed = self.parse_pool.submit(upcoming)
            for outcome in self.apply_parsed(parsed()):
                summary.add(outcome)
                self._count(outcome)
                if on_outcome is not None:
                    on_outcome(outcome)
            batch, parsed = upcoming, upcoming_parsed
        if failure is not None:
            raise failure
        return summary

    def _count(self, outcome: Outcome) -> None:
        """The outcome in the metrics: after its commit, so a rolled-back try counts never."""
        if self.metrics is None:
            return
        latency = None
        if outcome.disposition is not None and outcome.received_at is not None:
            latency = (self.clock() - outcome.received_at).total_seconds()
        self.metrics.message_finished(outcome.metric_disposition, outcome.flags, latency)
        self.metrics.commands(*outcome.commands)

    def close(self) -> None:
        self.parse_pool.close()


def _flags(ctx: MessageContext) -> tuple[str, ...]:
    flags = ["possible_spam"] if ctx.possible_spam else []
    if ctx.verdict is not None and ctx.verdict.kind is not AutoKind.HUMAN:
        flags.append(str(ctx.verdict.kind))
    return tuple(flags)


def _lock_key(key: str) -> int:
    """A signed 32-bit advisory lock key for ``key`` (a collision only serialises more)."""
    digest = hashlib.blake2b(key.encode("utf-8", "replace"), digest_size=4).digest()
    return int.from_bytes(digest, "big", signed=True)
