"""Deleting a ticket with everything that names it (the tickets merged into it too).

One ticket (with the tickets merged into it) is deleted in one transaction:
a crash half-way leaves whole tickets, and running the same erasure again
finishes it. Raw bytes are content-addressed and may be shared (one mail to
two support addresses, the same attachment in two tickets): a blob goes only
once nothing refers to it any more.

Used by :mod:`maildesk.privacy.forget` (a person's erasure request) and
:mod:`maildesk.privacy.retention` (tickets closed long ago).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy import delete, exists, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from maildesk.db.database import Database, retry_on_lock_conflict
from maildesk.db.models import (
    Attachment,
    Blob,
    Contact,
    Conversation,
    DeliveryFailureNotice,
    Event,
    HeldAgentMail,
    Intake,
    IntakeState,
    KnownMessageId,
    Message,
    Outbox,
    Participant,
    Rating,
    SlaEscalation,
    SlaTargetRow,
    SpamFeedback,
    Ticket,
    TicketLink,
    Watcher,
)

log = logging.getLogger("maildesk.privacy")
# A ticket transaction that loses to another writer (a deadlock PostgreSQL broke,
# a row naming the ticket committed meanwhile) is done again from the start.
ATTEMPTS = 5
# Intake rows still to be processed are not touched: the worker holds them.
SETTLED = (IntakeState.DONE, IntakeState.QUARANTINED, IntakeState.RELEASED)

T = TypeVar("T")


@dataclass
class Counts:
    """What an erasure deleted (or, in a dry run, would delete)."""

    tickets: int = 0
    messages: int = 0
    intake: int = 0
    outbox: int = 0
    digests: int = 0  # spam digests rewritten without the erased person's entries
    ratings: int = 0
    suppressions: int = 0
    contacts: int = 0
    blobs: int = 0
    numbers: list[int] = field(default_factory=list)

    def add(self, other: Counts) -> None:
        for name in ("tickets", "messages", "intake", "outbox", "digests", "ratings"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.suppressions += other.suppressions
        self.contacts += other.contacts
        self.blobs += other.blobs
        self.numbers.extend(other.numbers)

    def as_dict(self) -> dict[str, int]:
        return {
            "tickets": self.tickets,
            "messages": self.messages,
            "intake": self.intake,
            "outbox": self.outbox,
            "digests": self.digests,
            "ratings": self.ratings,
            "suppressions": self.suppressions,
            "contacts": self.contacts,
            "blobs": self.blobs,
        }


def in_retried_transaction(db: Database, work: Callable[[Session], T]) -> T:
    """Run ``work`` in a transaction of its own; again after losing to another writer.

    An ``IntegrityError`` is such a loss too: a row naming what we delete was
    committed between our reads and the delete (a new event on the ticket), so
    the next try reads it and deletes it with the rest.
    """

    def once() -> T:
        with db.transaction() as session:
            return work(session)

    return retry_on_lock_conflict(once, attempts=ATTEMPTS, what="erasure", also=(IntegrityError,))


# -- one ticket ---------------------------------------------------------------
def ticket_family(session: Session, ticket_id: int) -> list[int]:
    """The ticket and every ticket merged into it (at any depth)."""
    family, frontier = {ticket_id}, {ticket_id}
    while frontier:
        children = set(
            session.scalars(select(Ticket.id).where(Ticket.merged_into_id.in_(frontier)))
        )
        frontier = children - family
        family |= frontier
    return sorted(family)


def lock_tickets(session: Session, ids: list[int], *, skip_locked: bool = False) -> list[int]:
    """Lock the tickets to delete (PostgreSQL; SQLite holds the write lock from BEGIN).

    ``FOR UPDATE``, the lock a delete takes anyway, taken first: the pipeline,
    the SLA sweep and the sender wait for this transaction, then find the ticket
    gone (a reply threads to a new ticket). With ``skip_locked`` (retention on
    several nodes) the ids another transaction holds are left out.
    """
    if session.connection().dialect.name == "sqlite":
        return ids
    stmt = select(Ticket.id).where(Ticket.id.in_(ids)).order_by(Ticket.id)
    stmt = stmt.with_for_update(skip_locked=skip_locked)
    return list(session.scalars(stmt))


def _delete(session: Session, model: Any, *criteria: Any) -> int:
    result = session.execute(
        delete(model).where(or_(*criteria)).execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)


def delete_unreferenced_blobs(session: Session, digests: Iterable[str]) -> int:
    """Delete those of ``digests`` that no row refers to any more."""
    wanted = sorted({d for d in digests if d})
    if not wanted:
        return 0
    referenced = or_(
        exists().where(Intake.raw_sha256 == Blob.sha256),
        exists().where(Message.raw_sha256 == Blob.sha256),
        exists().where(Outbox.raw_sha256 == Blob.sha256),
        exists().where(Attachment.sha256 == Blob.sha256),
        exists().where(SpamFeedback.raw_sha256 == Blob.sha256),
    )
    result = session.execute(
        delete(Blob)
        .where(Blob.sha256.in_(wanted), ~referenced)
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)


def delete_unreferenced_contacts(session: Session, contact_ids: Iterable[int]) -> int:
    """Delete those contacts no ticket names any more (as requester or participant)."""
    wanted = sorted(set(contact_ids))
    if not wanted:
        return 0
    used = or_(
        exists().where(Ticket.requester_id == Contact.id),
        exists().where(Participant.contact_id == Contact.id),
    )
    result = session.execute(
        delete(Contact)
        .where(Contact.id.in_(wanted), ~used)
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)


def _delete_messages(session: Session, message_ids: list[int]) -> tuple[set[str], int, int]:
    """Delete messages with their attachments and every row naming them.

    Returns the blob digests they used, and how many intake and outbox rows went.
    """
    if not message_ids:
        return set(), 0, 0
    digests = set(session.scalars(select(Message.raw_sha256).where(Message.id.in_(message_ids))))
    digests |= set(
        session.scalars(select(Attachment.sha256).where(Attachment.message_pk.in_(message_ids)))
    )
    keys = set(
        session.scalars(select(Message.dedupe_key).where(Message.id.in_(message_ids)))
    ) | set(session.scalars(select(Message.header_message_id).where(Message.id.in_(message_ids))))
    intake = list(
        session.execute(
            select(Intake.id, Intake.raw_sha256).where(Intake.message_pk.in_(message_ids))
        )
    )
    intake_ids = [row.id for row in intake]
    digests |= {row.raw_sha256 for row in intake}
    outbox = list(
        session.execute(
            select(Outbox.id, Outbox.raw_sha256).where(Outbox.message_pk.in_(message_ids))
        )
    )
    outbox_ids = [row.id for row in outbox]
    digests |= {row.raw_sha256 for row in outbox}
    _delete_intake_rows(session, intake_ids)
    if outbox_ids:
        _delete(session, DeliveryFailureNotice, DeliveryFailureNotice.outbox_id.in_(outbox_ids))
        _delete(session, Outbox, Outbox.id.in_(outbox_ids))
    _delete(session, Event, Event.message_pk.in_(message_ids))
    _delete(session, Rating, Rating.message_pk.in_(message_ids))
    _delete(session, Attachment, Attachment.message_pk.in_(message_ids))
    _delete(session, KnownMessageId, KnownMessageId.message_id.in_({k for k in keys if k}))
    _delete(session, Message, Message.id.in_(message_ids))
    return {d for d in digests if d}, len(intake_ids), len(outbox_ids)


def _delete_intake_rows(session: Session, intake_ids: list[int]) -> None:
    if not intake_ids:
        return
    _delete(session, Event, Event.intake_id.in_(intake_ids))
    _delete(session, HeldAgentMail, HeldAgentMail.intake_id.in_(intake_ids))
    _delete(session, Intake, Intake.id.in_(intake_ids))


def erase_ticket(session: Session, ticket_id: int, *, skip_locked: bool = False) -> Counts | None:
    """Delete the ticket, the tickets merged into it, and everything that names them.

    None when the ticket is gone already or (``skip_locked``) another node holds it.
    """
    family = ticket_family(session, ticket_id)
    locked = lock_tickets(session, family, skip_locked=skip_locked)
    if not locked or (skip_locked and len(locked) < len(family)):
        return None
    family = ticket_family(session, ticket_id)  # as it is now that it is locked
    tickets = list(session.scalars(select(Ticket).where(Ticket.id.in_(family))))
    if not tickets:
        return None
    counts = Counts(tickets=len(tickets), numbers=sorted(t.number for t in tickets if t.number))
    people = {t.requester_id for t in tickets if t.requester_id is not None}
    people |= set(
        session.scalars(select(Participant.contact_id).where(Participant.ticket_id.in_(family)))
    )
    message_ids = list(session.scalars(select(Message.id).where(Message.ticket_id.in_(family))))
    digests, intake_count, outbox_count = _delete_messages(session, message_ids)
    counts.messages = len(message_ids)
    # What names the tickets and no message: mail of the ticket without a message
    # (a notice, a duplicate), bytes of its copies stored again, its bookkeeping.
    intake = list(
        session.execute(select(Intake.id, Intake.raw_sha256).where(Intake.ticket_id.in_(family)))
    )
    copies = list(
        session.execute(
            select(Intake.id, Intake.raw_sha256).where(
                Intake.raw_sha256.in_(sorted(digests)),
                Intake.ticket_id.is_(None),
                Intake.state.in_(SETTLED),
            )
        )
    )
    intake += copies
    digests |= {row.raw_sha256 for row in intake}
    _delete_intake_rows(session, sorted({row.id for row in intake}))
    outbox = list(
        session.execute(select(Outbox.id, Outbox.raw_sha256).where(Outbox.ticket_id.in_(family)))
    )
    digests |= {row.raw_sha256 for row in outbox}
    outbox_ids = [row.id for row in outbox]
    if outbox_ids:
        _delete(session, DeliveryFailureNotice, DeliveryFailureNotice.outbox_id.in_(outbox_ids))
        _delete(session, Outbox, Outbox.id.in_(outbox_ids))
    counts.intake = intake_count + len(intake)
    counts.outbox = outbox_count + len(outbox_ids)
    counts.ratings = _delete(session, Rating, Rating.ticket_id.in_(family))
    _delete(session, SpamFeedback, SpamFeedback.raw_sha256.in_(sorted(digests)))
    _delete(session, Event, Event.ticket_id.in_(family))
    _delete(session, HeldAgentMail, HeldAgentMail.ticket_id.in_(family))
    for model in (KnownMessageId, Conversation, Participant, Watcher, SlaTargetRow, SlaEscalation):
        _delete(session, model, model.ticket_id.in_(family))
    _delete(
        session,
        TicketLink,
        TicketLink.ticket_id.in_(family),
        TicketLink.other_ticket_id.in_(family),
    )
    session.execute(
        update(Ticket)
        .where(Ticket.id.in_(family))
        .values(merged_into_id=None)
        .execution_options(synchronize_session=False)
    )
    _delete(session, Ticket, Ticket.id.in_(family))
    counts.contacts = delete_unreferenced_contacts(session, people)
    counts.blobs = delete_unreferenced_blobs(session, digests)
    session.expunge_all()
    return counts
