"""The sweep's SLA target rows: what a batch's tickets should have, and the writes to get there.

A pass computes every target of every ticket it walks, but from one pass to the
next almost none of them change: rewriting them all (a DELETE and an INSERT of
every row of every open ticket, each pass) was most of the time a steady pass
spent in the database. Only rows whose values differ are written: changed ones
updated in place, new ones inserted, vanished ones deleted.

A running target's ``elapsed_minutes`` grows with the clock, so it is not
compared (every running row would differ every pass): the row holds it as of its
``computed_at``, the pass that last wrote it. Nothing but a person looking at the
table reads either; what the commands show comes from ``status`` and ``due_at``.
Every other column is compared as stored.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.orm import Session

from maildesk.db.models import SlaTargetRow, Ticket, TicketStatus
from maildesk.sla.facts import among
from maildesk.sla.policy import SlaEvaluation, TargetStatus

ENDED = "ended"  # a target of a closed ticket that was never satisfied

# A target row's unique key: ticket id, target, instance.
RowKey = tuple[int, str, int]

# The columns a change of which is a change of the row (elapsed_minutes: see above).
_COMPARED = (
    "policy",
    "status",
    "started_at",
    "warn_at",
    "due_at",
    "satisfied_at",
    "breached",
    "target_minutes",
)
_KEY = ("ticket_id", "target", "instance")
# By primary key, run as one executemany on the connection (not the ORM's bulk path).
_UPDATE = update(SlaTargetRow).where(SlaTargetRow.id == bindparam("row_id"))


@dataclass(frozen=True, slots=True)
class WantedRow:
    """One target row as this pass computed it."""

    values: dict[str, object]
    running: bool  # its clock runs now: elapsed_minutes moves on without a change

    @property
    def key(self) -> RowKey:
        return tuple(self.values[column] for column in _KEY)  # type: ignore[return-value]


def wanted_rows(
    ticket: Ticket, policy: str, evaluation: SlaEvaluation, now: datetime
) -> list[WantedRow]:
    """The target rows of ``ticket`` as of ``now``."""
    closed = ticket.status is TicketStatus.CLOSED
    return [
        WantedRow(
            {
                "ticket_id": ticket.id,
                "target": str(s.target),
                "instance": s.instance,
                "policy": policy,
                "status": ENDED
                if closed and s.status is not TargetStatus.SATISFIED
                else str(s.status),
                "started_at": s.started_at,
                "warn_at": s.warn_at,
                "due_at": s.due_at,
                "satisfied_at": s.satisfied_at,
                "breached": s.breached,
                "elapsed_minutes": s.elapsed_minutes,
                "target_minutes": s.target_minutes,
                "computed_at": now,
            },
            running=s.status is TargetStatus.RUNNING,
        )
        for s in evaluation.states()
    ]


@dataclass(frozen=True, slots=True)
class StoredRow:
    id: int
    compared: tuple[object, ...]
    elapsed_minutes: float

    def differs(self, wanted: WantedRow) -> bool:
        values = wanted.values
        if self.compared != tuple(values[column] for column in _COMPARED):
            return True
        return not wanted.running and self.elapsed_minutes != values["elapsed_minutes"]


def stored_rows(session: Session, ticket_ids: list[int]) -> dict[RowKey, StoredRow]:
    """The target rows stored for ``ticket_ids``, by key (one query)."""
    columns = [getattr(SlaTargetRow, column) for column in _COMPARED]
    rows = session.execute(
        select(
            SlaTargetRow.id,
            SlaTargetRow.ticket_id,
            SlaTargetRow.target,
            SlaTargetRow.instance,
            SlaTargetRow.elapsed_minutes,
            *columns,
        ).where(among(SlaTargetRow.ticket_id, ticket_ids))
    )
    return {(row[1], row[2], row[3]): StoredRow(row[0], tuple(row[5:]), row[4]) for row in rows}


def write_rows(
    session: Session, stored: dict[RowKey, StoredRow], wanted: Iterable[WantedRow]
) -> None:
    """Make the stored rows of a batch's tickets the ``wanted`` ones, writing only differences.

    A stored row not wanted (the ticket was skipped, or its policy lost the
    target) is deleted, as a pass that rewrote everything would have dropped it.
    """
    inserts: list[dict[str, object]] = []
    updates: list[dict[str, object]] = []
    kept: set[RowKey] = set()
    for row in wanted:
        key = row.key
        kept.add(key)
        old = stored.get(key)
        if old is None:
            inserts.append(row.values)
        elif old.differs(row):
            changed = {k: v for k, v in row.values.items() if k not in _KEY}
            updates.append({"row_id": old.id, **changed})
    vanished = [old.id for key, old in stored.items() if key not in kept]
    if vanished:
        session.execute(delete(SlaTargetRow).where(among(SlaTargetRow.id, vanished)))
    if updates:
        session.connection().execute(_UPDATE, updates)
    if inserts:
        # None values written as NULLs: left out, they would split the rows into
        # groups by the columns they have, an INSERT each (one per row, mostly).
        session.execute(insert(SlaTargetRow).execution_options(render_nulls=True), inserts)
