"""Deleting a ticket with everything that names it, and a person with everything about them.

One ticket (with the tickets merged into it) is deleted in one transaction:
a crash half-way leaves whole tickets, and running the same erasure again
finishes it. Raw bytes are content-addressed and may be shared (one mail to
two support addresses, the same attachment in two tickets): a blob goes only
once nothing refers to it any more.

Used by ``maildesk privacy forget`` (a person's erasure request), ``maildesk
privacy purge`` and the daily retention job (tickets closed long ago).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any, TypeVar

from sqlalchemy import Text, cast, delete, exists, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from maildesk.db.database import Database, is_lock_conflict
from maildesk.db.models import (
    Attachment,
    Blob,
    Contact,
    Conversation,
    DeliveryFailureNotice,
    Direction,
    Event,
    HeldAgentMail,
    Intake,
    IntakeState,
    KnownMessageId,
    Message,
    MessageKind,
    Outbox,
    Participant,
    Rating,
    SlaEscalation,
    SlaTargetRow,
    SpamFeedback,
    Suppression,
    Ticket,
    TicketLink,
    TicketStatus,
    Watcher,
)

log = logging.getLogger("maildesk.privacy")
# A ticket transaction that loses to another writer (a deadlock PostgreSQL broke,
# a row naming the ticket committed meanwhile) is done again from the start.
ATTEMPTS = 5
ERASED_EVENT = "privacy_erased"
PURGED_EVENT = "retention_purged"
ERASED = "(erased)"  # what an erased address is replaced with in another's audit trail
# Intake rows still to be processed are not touched: the worker holds them.
_SETTLED = (IntakeState.DONE, IntakeState.QUARANTINED, IntakeState.RELEASED)

T = TypeVar("T")


@dataclass
class Counts:
    """What an erasure deleted (or, in a dry run, would delete)."""

    tickets: int = 0
    messages: int = 0
    intake: int = 0
    outbox: int = 0
    ratings: int = 0
    suppressions: int = 0
    contacts: int = 0
    blobs: int = 0
    numbers: list[int] = field(default_factory=list)

    def add(self, other: Counts) -> None:
        for name in ("tickets", "messages", "intake", "outbox", "ratings", "suppressions"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.contacts += other.contacts
        self.blobs += other.blobs
        self.numbers.extend(other.numbers)

    def as_dict(self) -> dict[str, int]:
        return {
            "tickets": self.tickets,
            "messages": self.messages,
            "intake": self.intake,
            "outbox": self.outbox,
            "ratings": self.ratings,
            "suppressions": self.suppressions,
            "contacts": self.contacts,
            "blobs": self.blobs,
        }


def in_retried_transaction(db: Database, work: Callable[[Session], T]) -> T:
    """Run ``work`` in a transaction of its own; again after losing to another writer."""
    for attempt in range(1, ATTEMPTS + 1):
        try:
            with db.transaction() as session:
                return work(session)
        except IntegrityError:
            # A row naming what we delete was committed between our reads and the
            # delete (a new event on the ticket): read again, with it.
            if attempt == ATTEMPTS:
                raise
        except Exception as exc:
            if not is_lock_conflict(exc) or attempt == ATTEMPTS:
                raise
        log.info("erasure lost a conflict with another writer; again (%d)", attempt)
    raise AssertionError("unreachable")


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
                Intake.state.in_(_SETTLED),
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


# -- one person -----------------------------------------------------------------
def normalise(address: str) -> str:
    return address.strip().removeprefix("<").removesuffix(">").strip().lower()


def address_hash(address: str, salt: str) -> str:
    return hashlib.sha256(f"{salt}:{normalise(address)}".encode()).hexdigest()


def previous_erasures(session: Session, address: str) -> list[Event]:
    """The audit records of earlier erasures of ``address`` (compared by salted hash)."""
    rows = session.scalars(select(Event).where(Event.kind == ERASED_EVENT).order_by(Event.id))
    return [
        row
        for row in rows
        if row.data.get("salt")
        and row.data.get("address_hash") == address_hash(address, str(row.data["salt"]))
    ]


@dataclass
class Plan:
    """What ``forget`` finds about one address."""

    address: str
    contact_id: int | None = None
    tickets: list[int] = field(default_factory=list)  # requested by them: deleted whole
    cc_tickets: list[int] = field(default_factory=list)  # they were only a participant
    cc_messages: list[int] = field(default_factory=list)  # what they wrote on those
    intake: list[int] = field(default_factory=list)  # their mail on no ticket (quarantine)
    outbox: list[int] = field(default_factory=list)  # mail to them not on their tickets
    ratings: int = 0
    suppressions: int = 0
    ticket_messages: int = 0
    ticket_count: int = 0  # with the tickets merged into them

    def summary(self) -> dict[str, int]:
        return {
            "tickets": self.ticket_count,
            "messages": self.ticket_messages + len(self.cc_messages),
            "participations": len(self.cc_tickets),
            "intake": len(self.intake),
            "outbox": len(self.outbox),
            "ratings": self.ratings,
            "suppressions": self.suppressions,
        }


def _mentions(column: Any, address: str) -> Any:
    """A pre-filter on a JSON list column (the exact test is done in Python)."""
    return cast(column, Text).contains(address, autoescape=True)


def _their_loose_intake(session: Session, address: str) -> list[int]:
    """Their mail that is on no ticket: quarantined, released, or a copy recorded as such."""
    needle = address.encode()
    found = []
    rows = session.execute(
        select(Intake.id, Intake.envelope_from, Intake.raw_sha256).where(
            Intake.ticket_id.is_(None), Intake.message_pk.is_(None), Intake.state.in_(_SETTLED)
        )
    )
    for intake_id, envelope_from, digest in rows:
        if normalise(envelope_from or "") == address:
            found.append(intake_id)
            continue
        data = session.scalar(select(Blob.data).where(Blob.sha256 == digest))
        if data is not None and needle in bytes(data).lower():
            found.append(intake_id)
    return found


def _root(session: Session, ticket_id: int) -> int:
    """The ticket ``ticket_id`` was merged into, followed to the end."""
    seen = {ticket_id}
    while True:
        parent = session.scalar(select(Ticket.merged_into_id).where(Ticket.id == ticket_id))
        if parent is None or parent in seen:
            return ticket_id
        seen.add(parent)
        ticket_id = parent


def plan_forget(session: Session, address: str, *, whole_cc_tickets: bool = False) -> Plan:
    address = normalise(address)
    plan = Plan(address)
    plan.contact_id = session.scalar(select(Contact.id).where(func.lower(Contact.email) == address))
    requested: set[int] = set()
    shared: set[int] = set()
    if plan.contact_id is not None:
        # The requester column, not the participant role: a merge copies the
        # requester of the merged ticket onto the survivor as a participant.
        requested = set(
            session.scalars(select(Ticket.id).where(Ticket.requester_id == plan.contact_id))
        )
        shared = set(
            session.scalars(
                select(Participant.ticket_id).where(Participant.contact_id == plan.contact_id)
            )
        )
    # Tickets they wrote on without being a participant (a stranger's reply).
    shared |= set(
        session.scalars(select(Message.ticket_id).where(func.lower(Message.from_addr) == address))
    )
    if whole_cc_tickets:
        requested |= shared
    # A ticket of theirs merged into another of theirs goes with that one (and
    # whatever else was merged into it); merged into someone else's, only its
    # stub goes, and they are taken off the survivor like a Cc'd person.
    plan.tickets = sorted(
        {root if root in requested else t for t in requested for root in [_root(session, t)]}
    )
    erased = {i for t in plan.tickets for i in ticket_family(session, t)}
    plan.ticket_count = len(erased)
    plan.ticket_messages = (
        session.scalar(
            select(func.count()).select_from(Message).where(Message.ticket_id.in_(erased))
        )
        or 0
    )
    plan.cc_tickets = sorted(shared - erased)
    if plan.cc_tickets:
        plan.cc_messages = _theirs_on(session, plan.cc_tickets, address)
    plan.intake = _their_loose_intake(session, address)
    candidates = session.execute(
        select(Outbox.id, Outbox.recipients, Outbox.ticket_id).where(
            or_(Outbox.recipient_key == address, _mentions(Outbox.recipients, address))
        )
    )
    plan.outbox = [
        row.id
        for row in candidates
        if row.ticket_id not in erased and address in {normalise(r) for r in row.recipients}
    ]
    plan.ratings = (
        session.scalar(
            select(func.count())
            .select_from(Rating)
            .where(func.lower(Rating.contact) == address, Rating.ticket_id.not_in(erased))
        )
        or 0
    )
    plan.suppressions = (
        session.scalar(
            select(func.count())
            .select_from(Suppression)
            .where(func.lower(Suppression.address) == address)
        )
        or 0
    )
    return plan


def _theirs_on(session: Session, ticket_ids: list[int], address: str) -> list[int]:
    """On someone else's tickets: what they wrote, and our notices that quote or name them.

    A notice to the agents carries the customer's text under "<address> wrote";
    an acknowledgement or notice to them is theirs too. Agents' answers stay.
    """
    generated = (Message.kind == MessageKind.AUTO) & (Message.direction == Direction.OUTBOUND)
    stmt = select(Message.id).where(
        Message.ticket_id.in_(ticket_ids),
        or_(
            func.lower(Message.from_addr) == address,
            generated & func.lower(Message.text_body).contains(address, autoescape=True),
            generated & _mentions(Message.to_addrs, address),
        ),
    )
    return sorted(session.scalars(stmt))


def _scrub(text: str, address: str) -> str:
    return re.sub(re.escape(address), ERASED, text, flags=re.IGNORECASE)


def _leave_ticket(session: Session, ticket_id: int, address: str, contact_id: int | None) -> int:
    """Take them off a ticket someone else asked: their messages, bytes and participation.

    The requester's own mails that name them (a Cc header) stay: they are the
    requester's record; the stored recipient lists forget them.
    """
    if not lock_tickets(session, [ticket_id]):
        return 0
    mine = _theirs_on(session, [ticket_id], address)
    digests, _intake, _outbox = _delete_messages(session, mine)
    if contact_id is not None:
        _delete(
            session,
            Participant,
            (Participant.ticket_id == ticket_id) & (Participant.contact_id == contact_id),
        )
    named = session.scalars(
        select(Message).where(
            Message.ticket_id == ticket_id,
            or_(_mentions(Message.to_addrs, address), _mentions(Message.cc_addrs, address)),
        )
    )
    for message in named:
        message.to_addrs = [a for a in message.to_addrs if normalise(a) != address]
        message.cc_addrs = [a for a in message.cc_addrs if normalise(a) != address]
    # The ticket's audit trail keeps what happened, not to whom (a failed
    # delivery's recipients, a decision's evidence).
    noted = session.scalars(
        select(Event).where(
            Event.ticket_id == ticket_id,
            or_(
                func.lower(Event.reason).contains(address, autoescape=True),
                func.lower(cast(Event.data, Text)).contains(address, autoescape=True),
            ),
        )
    )
    for event in noted:
        event.reason = _scrub(event.reason, address)
        event.data = json.loads(_scrub(json.dumps(event.data), address))
    _delete(session, SpamFeedback, SpamFeedback.raw_sha256.in_(sorted(digests)))
    delete_unreferenced_blobs(session, digests)
    session.flush()
    session.expunge_all()
    return len(mine)


def _forget_loose(session: Session, plan: Plan) -> Counts:
    """Their rows on no ticket of theirs: quarantine, outbox, ratings, suppression, contact."""
    counts = Counts()
    address = plan.address
    intake = list(
        session.execute(
            select(Intake.id, Intake.raw_sha256).where(
                Intake.id.in_(plan.intake), Intake.ticket_id.is_(None)
            )
        )
    )
    digests = {row.raw_sha256 for row in intake}
    _delete_intake_rows(session, [row.id for row in intake])
    counts.intake = len(intake)
    outbox = list(
        session.execute(select(Outbox.id, Outbox.raw_sha256).where(Outbox.id.in_(plan.outbox)))
    )
    digests |= {row.raw_sha256 for row in outbox}
    if outbox:
        ids = [row.id for row in outbox]
        _delete(session, DeliveryFailureNotice, DeliveryFailureNotice.outbox_id.in_(ids))
        counts.outbox = _delete(session, Outbox, Outbox.id.in_(ids))
    counts.ratings = _delete(session, Rating, func.lower(Rating.contact) == address)
    counts.suppressions = _delete(session, Suppression, func.lower(Suppression.address) == address)
    _delete(session, SpamFeedback, SpamFeedback.raw_sha256.in_(sorted(digests)))
    if plan.contact_id is not None:
        _delete(session, Participant, Participant.contact_id == plan.contact_id)
        counts.contacts = delete_unreferenced_contacts(session, [plan.contact_id])
    counts.blobs = delete_unreferenced_blobs(session, digests)
    return counts


def forget(
    db: Database,
    address: str,
    *,
    actor: str,
    now: Callable[[], datetime],
    whole_cc_tickets: bool = False,
) -> Counts:
    """Erase everything held about ``address``; one transaction per ticket, then the rest.

    Ends with an audit event that holds a salted hash of the address, never the
    address: a later request can be confirmed (:func:`previous_erasures`).
    """
    address = normalise(address)
    with db.transaction() as session:
        plan = plan_forget(session, address, whole_cc_tickets=whole_cc_tickets)
    total = Counts()
    for ticket_id in plan.tickets:
        done = in_retried_transaction(db, partial(erase_ticket, ticket_id=ticket_id))
        if done is not None:
            total.add(done)
            log.info("erasure: ticket(s) %s deleted", done.numbers)
    for ticket_id in plan.cc_tickets:
        leave = partial(
            _leave_ticket, ticket_id=ticket_id, address=address, contact_id=plan.contact_id
        )
        total.messages += in_retried_transaction(db, leave)
    numbers, total.numbers = total.numbers, []

    def rest(session: Session) -> Counts:
        loose = _forget_loose(session, plan)
        salt = secrets.token_hex(16)
        session.add(
            Event(
                at=now(),
                kind=ERASED_EVENT,
                reason=(
                    f"erased data of {address_hash(address, salt)[:16]} by {actor}: "
                    f"{total.tickets} tickets, {total.messages} messages"
                ),
                data={
                    "address_hash": address_hash(address, salt),
                    "salt": salt,
                    "by": actor,
                    "tickets": total.tickets,
                    "messages": total.messages,
                    "participations": len(plan.cc_tickets),
                },
            )
        )
        return loose

    total.add(in_retried_transaction(db, rest))
    log.info(
        "erasure by %s: %d tickets (%s), %d messages, %d participations",
        actor,
        total.tickets,
        ", ".join(f"#{n}" for n in numbers) or "none",
        total.messages,
        len(plan.cc_tickets),
    )
    return total


# -- retention --------------------------------------------------------------------
def expired_tickets(
    session: Session, cutoff: datetime, among: list[int] | None = None
) -> list[int]:
    """Tickets closed, or resolved and left so, before ``cutoff`` (merged ones go with theirs)."""
    stmt = (
        select(Ticket.id)
        .where(
            Ticket.merged_into_id.is_(None),
            or_(
                (Ticket.status == TicketStatus.CLOSED)
                & (func.coalesce(Ticket.closed_at, Ticket.updated_at) < cutoff),
                (Ticket.status == TicketStatus.RESOLVED)
                & (func.coalesce(Ticket.resolved_at, Ticket.updated_at) < cutoff),
            ),
            Ticket.updated_at < cutoff,
        )
        .order_by(Ticket.id)
    )
    if among is not None:
        stmt = stmt.where(Ticket.id.in_(among))
    return list(session.scalars(stmt))


def purge(
    db: Database,
    older_than_days: float,
    *,
    now: Callable[[], datetime],
    actor: str,
    should_stop: Callable[[], bool] = lambda: False,
) -> Counts:
    """Delete tickets closed more than ``older_than_days`` ago; safe on several nodes at once.

    Each ticket is deleted in its own transaction, re-checked once locked (a
    reply may have reopened it); a ticket another node is deleting is skipped.
    """
    total = Counts()
    if older_than_days <= 0:
        return total
    cutoff = now() - timedelta(days=older_than_days)
    with db.transaction() as session:
        candidates = expired_tickets(session, cutoff)
    for ticket_id in candidates:
        if should_stop():
            break

        def one(session: Session, ticket_id: int = ticket_id) -> Counts | None:
            if not lock_tickets(session, [ticket_id], skip_locked=True):
                return None
            if not expired_tickets(session, cutoff, [ticket_id]):  # reopened meanwhile
                return None
            return erase_ticket(session, ticket_id, skip_locked=True)

        done = in_retried_transaction(db, one)
        if done is not None:
            total.add(done)
    if total.tickets:

        def audit(session: Session) -> None:
            session.add(
                Event(
                    at=now(),
                    kind=PURGED_EVENT,
                    reason=(
                        f"retention by {actor}: {total.tickets} tickets closed over "
                        f"{older_than_days:g} days, {total.messages} messages deleted"
                    ),
                    data={
                        "by": actor,
                        "days": older_than_days,
                        **total.as_dict(),
                        "numbers": total.numbers,
                    },
                )
            )

        in_retried_transaction(db, audit)
        log.info(
            "retention: %d tickets closed over %g days deleted (%d messages)",
            total.tickets,
            older_than_days,
            total.messages,
        )
    return total


def dry_purge(db: Database, older_than_days: float, now: datetime) -> Counts:
    """What :func:`purge` would delete now."""
    counts = Counts()
    if older_than_days <= 0:
        return counts
    with db.transaction() as session:
        for ticket_id in expired_tickets(session, now - timedelta(days=older_than_days)):
            family = ticket_family(session, ticket_id)
            counts.tickets += len(family)
            counts.messages += (
                session.scalar(
                    select(func.count()).select_from(Message).where(Message.ticket_id.in_(family))
                )
                or 0
            )
    return counts
