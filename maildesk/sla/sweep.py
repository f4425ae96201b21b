"""The SLA sweep: recompute due times, escalate exactly once, auto-close.

Each pass walks the tickets that are not closed in batches. A batch is one
transaction that (on PostgreSQL) locks its tickets ``FOR UPDATE SKIP LOCKED``,
so several nodes share the work; the ledger's unique key
``(ticket, target, level, instance)`` is what makes each escalation fire once
even if two nodes do reach the same ticket: the ledger row is inserted first
(``ON CONFLICT DO NOTHING``) and only the node whose insert took acts, in the
same transaction as its outbox rows. A pass after downtime fires everything
that came due meanwhile and marks what fired later than
``sla.late_after_seconds`` as late.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING

from sqlalchemy import and_, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from maildesk.config import Settings
from maildesk.db.database import Database, is_transient, is_unavailable
from maildesk.db.models import SlaEscalation, SlaTargetRow, Ticket, TicketStatus
from maildesk.db.outage import Outage
from maildesk.outbound.notices import Notices
from maildesk.people import Directory
from maildesk.sla.actions import Escalation, EscalationActions
from maildesk.sla.calendar import BusinessCalendar
from maildesk.sla.facts import TicketHistory, among, load_histories
from maildesk.sla.policy import CustomerMessage, SlaEvaluation, TargetState, TargetStatus, evaluate
from maildesk.sla.rows import WantedRow, stored_rows, wanted_rows, write_rows
from maildesk.sla.select import select_policy
from maildesk.sla.settings import Level, PolicySettings
from maildesk.tickets import change_status

if TYPE_CHECKING:
    from maildesk.app import App

log = logging.getLogger("maildesk.sla")

AUTO_CLOSE = "auto_close"
_LIVE = (TargetStatus.RUNNING.value, TargetStatus.PAUSED.value)


@dataclass
class SweepResult:
    tickets: int = 0
    fired: int = 0
    late: int = 0
    auto_closed: int = 0

    def add(self, other: SweepResult) -> None:
        self.tickets += other.tickets
        self.fired += other.fired
        self.late += other.late
        self.auto_closed += other.auto_closed


def build_calendars(settings: Settings) -> dict[str, BusinessCalendar]:
    return {name: BusinessCalendar(cfg) for name, cfg in settings.calendars.items()}


def claim_ledger(session: Session, values: dict[str, object]) -> bool:
    """Insert a ledger row unless its key exists; True when this call inserted it.

    On PostgreSQL a concurrent insert of the same key waits for the other
    transaction and then does nothing, so exactly one node gets True.
    """
    conn = session.connection()
    dialect_insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    stmt = (
        dialect_insert(SlaEscalation)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["ticket_id", "target", "level", "instance"])
        .returning(SlaEscalation.id)
    )
    return conn.execute(stmt).first() is not None


# A ledger row's unique key: ticket id, target, level, instance.
LedgerKey = tuple[object, ...]
_KEY = ("ticket_id", "target", "level", "instance")


def claimed_keys(session: Session, ticket_ids: list[int]) -> frozenset[LedgerKey]:
    """The ledger keys already taken for ``ticket_ids``."""
    rows = session.execute(
        select(
            SlaEscalation.ticket_id,
            SlaEscalation.target,
            SlaEscalation.level,
            SlaEscalation.instance,
        ).where(among(SlaEscalation.ticket_id, ticket_ids))
    )
    return frozenset(tuple(row) for row in rows)


class TicketWrites:
    """What the sweep writes for one ticket, in a savepoint of the batch's transaction.

    The savepoint is begun before the first write, so a ticket with nothing new
    to fire costs no round trip; and a ledger key the batch found taken is not
    claimed again (the insert would do nothing). A ticket that fails is rolled
    back to its savepoint: its ledger rows, outbox rows and status changes.
    """

    def __init__(self, session: Session, claimed: frozenset[LedgerKey]) -> None:
        self._session = session
        self._claimed = claimed
        self._savepoint = ExitStack()
        self._begun = False

    def session(self) -> Session:
        """The session, inside this ticket's savepoint."""
        if not self._begun:
            self._savepoint.enter_context(self._session.begin_nested())
            self._begun = True
        return self._session

    def claim(self, values: dict[str, object]) -> bool:
        """:func:`claim_ledger`, known False without asking when the key was taken."""
        if tuple(values[column] for column in _KEY) in self._claimed:
            return False
        return claim_ledger(self.session(), values)

    def __enter__(self) -> TicketWrites:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Commits the savepoint, or rolls it back on an error.
        self._savepoint.__exit__(exc_type, exc, tb)


class SlaSweeper:
    def __init__(
        self,
        db: Database,
        settings: Settings,
        notices: Notices,
        directory: Callable[[], Directory],
        clock: Callable[[], datetime],
        node: str,
        *,
        batch_size: int = 200,
    ) -> None:
        self.db = db
        self.settings = settings
        self.sla = settings.sla
        self.notices = notices
        self._directory = directory
        self.clock = clock
        self.node = node
        self.batch_size = batch_size
        self.calendars: Mapping[str, BusinessCalendar] = build_calendars(settings)
        self.actions = EscalationActions(settings, notices, directory, clock)
        self._first_run = True  # the catch-up sweep on start always says what it did
        self.outage = Outage(log, "sla sweep")

    @classmethod
    def for_app(cls, app: App) -> SlaSweeper:
        return cls(
            app.db, app.settings, app.notices(), lambda: app.directory, app.clock, app.node_name
        )

    def run(self) -> SweepResult:
        """One pass over every ticket that is not closed (and closed ones not yet final).

        While the database is away the pass is skipped (said once, retried with
        backoff); a batch it cut off is rolled back whole, ledger rows with it,
        so the next pass fires what it had fired, once.
        """
        if not self.sla.enabled or not self.outage.ready():
            return SweepResult()
        try:
            total = self._run()
        except Exception as exc:
            if not is_unavailable(exc):
                raise
            self.outage.failed(exc)
            return SweepResult()
        self.outage.succeeded()
        return total

    def _run(self) -> SweepResult:
        total = SweepResult()
        after = 0
        with self.db.transaction() as session:
            closed = self._closed_with_live_targets(session)
        while True:
            with self.db.transaction() as session:
                batch = self._claim_batch(session, after, closed)
                if not batch:
                    break
                after = batch[-1].id
                total.add(self._sweep_batch(session, batch))
        if total.fired or total.auto_closed or self._first_run:
            log.info(
                "sla sweep: %d tickets, %d escalations fired (%d late), %d auto-close steps",
                total.tickets,
                total.fired,
                total.late,
                total.auto_closed,
            )
        self._first_run = False
        if total.late:
            log.warning("sla sweep caught up: %d escalations fired late (marked late)", total.late)
        return total

    @staticmethod
    def _closed_with_live_targets(session: Session) -> list[int]:
        """Closed tickets whose SLA rows are not final yet (closed since the last pass).

        Read once per pass: as a subquery of every batch's claim, PostgreSQL hashed
        every live SLA row again for each batch (some 350 times a pass at 1M tickets).
        """
        stmt = (
            select(SlaTargetRow.ticket_id)
            .join(Ticket, Ticket.id == SlaTargetRow.ticket_id)
            .where(SlaTargetRow.status.in_(_LIVE), Ticket.status == TicketStatus.CLOSED)
            .distinct()
        )
        return sorted(session.scalars(stmt))

    def _claim_batch(
        self, session: Session, after: int, closed: Collection[int] = ()
    ) -> list[Ticket]:
        """The next tickets after id ``after`` that are not closed, or are among ``closed``.

        A ticket merged into another is a closed stub: it is swept once more when it
        still has live targets, so they end (else they stayed "running" and counted
        as past due in ``maildesk status`` and the metrics for ever).
        """
        stmt = (
            select(Ticket)
            .where(
                Ticket.id > after,
                or_(
                    and_(Ticket.merged_into_id.is_(None), Ticket.status != TicketStatus.CLOSED),
                    among(Ticket.id, closed),
                ),
            )
            .order_by(Ticket.id)
            .limit(self.batch_size)
            # NO KEY: rows naming these tickets (events, outbox) need not wait for the sweep.
            .with_for_update(skip_locked=True, key_share=True)
        )
        return list(session.scalars(stmt))

    def _sweep_batch(self, session: Session, batch: list[Ticket]) -> SweepResult:
        result = SweepResult(tickets=len(batch))
        now = self.clock()
        histories = load_histories(session, batch, self._directory())
        ids = [t.id for t in batch]
        claimed = claimed_keys(session, ids)
        stored = stored_rows(session, ids)
        rows: list[WantedRow] = []
        for history in histories:
            if history.ticket.created_at > now:  # another node's clock runs ahead
                continue
            # One ticket the sweep cannot handle (a bug, a calendar closed for years)
            # is skipped and said so; it must not stop every other ticket's SLA.
            mine = SweepResult()
            try:
                with TicketWrites(session, claimed) as writes:
                    ticket_rows = self._sweep_ticket(writes, history, now, mine)
            except Exception as exc:
                if is_transient(exc):
                    raise
                log.error(
                    "sla sweep: ticket #%s skipped: %s: %s",
                    history.ticket.number,
                    type(exc).__name__,
                    exc,
                )
                continue
            rows += ticket_rows
            result.add(mine)  # its fired, late and auto-close counts (tickets: 0)
        # A skipped ticket's rows go, as they did when every pass rewrote them all.
        write_rows(session, stored, rows)
        return result

    def _sweep_ticket(
        self, writes: TicketWrites, history: TicketHistory, now: datetime, result: SweepResult
    ) -> list[WantedRow]:
        """Escalate and auto-close one ticket; its SLA target rows."""
        rows: list[WantedRow] = []
        selection = select_policy(self.sla, history.facts)
        if selection is not None:
            evaluation = evaluate(selection.policy, history.events, now, self.calendars)
            rows = wanted_rows(history.ticket, selection.policy.name, evaluation, now)
            # Possible spam is nobody's work until released as ham: no escalation
            # (no mail to agents, no priority or group change) before then; what
            # came due meanwhile fires once it is released.
            if (
                history.ticket.status not in (TicketStatus.RESOLVED, TicketStatus.CLOSED)
                and not history.ticket.possible_spam
            ):
                self._escalate(writes, history.ticket, selection.policy, evaluation, now, result)
        result.auto_closed += self._auto_close(writes, history, now)
        return rows

    def _due_levels(
        self, policy: PolicySettings, state: TargetState
    ) -> Iterator[tuple[Level, datetime, datetime]]:
        """Levels to fire: with the due time, and when the sweep could first see them."""
        if state.status is TargetStatus.SATISFIED:
            return
        if state.warned and state.warn_at is not None and state.target in policy.warning.targets:
            yield Level.WARNING, state.warn_at, state.warn_at
        if state.breached and state.due_at is not None and state.target in policy.breach.targets:
            # Nothing breaches while closed: a breach due at closing time shows at opening.
            yield Level.BREACH, state.due_at, state.breach_shows_at or state.due_at

    def _escalate(
        self,
        writes: TicketWrites,
        ticket: Ticket,
        policy: PolicySettings,
        evaluation: SlaEvaluation,
        now: datetime,
        result: SweepResult,
    ) -> None:
        late_after = timedelta(seconds=self.sla.late_after_seconds)
        for state in evaluation.states():
            for level, due_at, shows_at in self._due_levels(policy, state):
                late = now - shows_at > late_after
                claimed = writes.claim(
                    {
                        "ticket_id": ticket.id,
                        "target": str(state.target),
                        "level": str(level),
                        "instance": state.instance,
                        "policy": policy.name,
                        "due_at": due_at,
                        "fired_at": now,
                        "late": late,
                        "node": self.node,
                        "actions": [],
                    },
                )
                if not claimed:
                    continue
                esc = Escalation(ticket, state, level, policy.name, due_at, late)
                session = writes.session()
                done = self.actions.apply(session, esc, policy.escalation(level))
                self._record_actions(
                    session, ticket.id, str(state.target), str(level), state.instance, done
                )
                result.fired += 1
                result.late += late
                log.info(
                    "ticket #%s: sla %s %s (policy %s, due %s)%s: %s",
                    ticket.number,
                    state.target,
                    level,
                    policy.name,
                    due_at.isoformat(),
                    " LATE" if late else "",
                    "; ".join(done) or "-",
                )

    @staticmethod
    def _record_actions(
        session: Session, ticket_id: int, target: str, level: str, instance: int, done: list[str]
    ) -> None:
        session.execute(
            update(SlaEscalation)
            .where(
                SlaEscalation.ticket_id == ticket_id,
                SlaEscalation.target == target,
                SlaEscalation.level == level,
                SlaEscalation.instance == instance,
            )
            .values(actions=done)
            .execution_options(synchronize_session=False)
        )

    # -- auto-close -----------------------------------------------------------

    def _auto_close(self, writes: TicketWrites, history: TicketHistory, now: datetime) -> int:
        ticket, cfg = history.ticket, self.sla.auto_close
        if ticket.status is TicketStatus.RESOLVED and cfg.resolved_close_days is not None:
            since = ticket.resolved_at or ticket.updated_at
            at = since + timedelta(days=cfg.resolved_close_days)
            # One close per resolution: a ticket reopened by hand after its
            # close and resolved again is closed again.
            resolved = [
                f for f in history.statuses if f.new_status() == TicketStatus.RESOLVED.value
            ]
            instance = resolved[-1].id if resolved else 0
            if now >= at and self._claim_auto(writes, ticket, "close", instance, at, now):
                change_status(
                    writes.session(), ticket, TicketStatus.CLOSED, now, None, actor="auto-close"
                )
                return 1
            return 0
        if ticket.status is not TicketStatus.PENDING or cfg.pending_resolve_days is None:
            return 0
        pending = [f for f in history.statuses if f.new_status() == TicketStatus.PENDING.value]
        instance = pending[-1].id if pending else 0
        since = pending[-1].at if pending else ticket.updated_at
        customer = [e.at for e in history.events if isinstance(e, CustomerMessage)]
        since = max([since, *customer])
        steps = 0
        if cfg.pending_reminder_days is not None:
            at = since + timedelta(days=cfg.pending_reminder_days)
            if now >= at and self._claim_auto(writes, ticket, "reminder", instance, at, now):
                self.notices.customer_notice(writes.session(), ticket, cfg.reminder_template)
                steps += 1
        at = since + timedelta(days=cfg.pending_resolve_days)
        if now >= at and self._claim_auto(writes, ticket, "resolve", instance, at, now):
            session = writes.session()
            change_status(session, ticket, TicketStatus.RESOLVED, now, None, actor="auto-close")
            self.notices.customer_notice(session, ticket, cfg.resolve_template)
            steps += 1
        return steps

    def _claim_auto(
        self,
        writes: TicketWrites,
        ticket: Ticket,
        level: str,
        instance: int,
        due: datetime,
        now: datetime,
    ) -> bool:
        late = now - due > timedelta(seconds=self.sla.late_after_seconds)
        claimed = writes.claim(
            {
                "ticket_id": ticket.id,
                "target": AUTO_CLOSE,
                "level": level,
                "instance": instance,
                "policy": "",
                "due_at": due,
                "fired_at": now,
                "late": late,
                "node": self.node,
                "actions": [f"auto-close {level}"],
            },
        )
        if claimed:
            log.info(
                "ticket #%s: auto-close %s (idle since %s)", ticket.number, level, due.isoformat()
            )
        return claimed
