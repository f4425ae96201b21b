"""A person's erasure (``maildesk privacy forget``): every ticket they asked, their
mail on others' tickets, and every record naming them; a salted-hash audit event.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any

from sqlalchemy import Text, cast, func, or_, select
from sqlalchemy.orm import Session

from maildesk.db.database import Database
from maildesk.db.models import (
    Blob,
    Contact,
    DeliveryFailureNotice,
    Direction,
    Event,
    Intake,
    Message,
    MessageKind,
    Outbox,
    Participant,
    Rating,
    SpamFeedback,
    Suppression,
    Ticket,
)
from maildesk.privacy.erase import (
    SETTLED,
    Counts,
    _delete,
    _delete_intake_rows,
    _delete_messages,
    delete_unreferenced_blobs,
    delete_unreferenced_contacts,
    erase_ticket,
    in_retried_transaction,
    lock_tickets,
    ticket_family,
)

log = logging.getLogger("maildesk.privacy")
ERASED_EVENT = "privacy_erased"
ERASED = "(erased)"  # what an erased address is replaced with in another's audit trail


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
            Intake.ticket_id.is_(None), Intake.message_pk.is_(None), Intake.state.in_(SETTLED)
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
