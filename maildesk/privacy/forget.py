"""A person's erasure (``maildesk privacy forget``): every ticket they asked, their
mail on others' tickets, and every record naming them; a salted-hash audit event.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial

from sqlalchemy import and_, func, or_, select
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
from maildesk.privacy.match import Person, mailbox_key
from maildesk.spam.digest_erasure import redact_digests

log = logging.getLogger("maildesk.privacy")
ERASED_EVENT = "privacy_erased"
ERASED = "(erased)"  # what an erased address is replaced with in another's audit trail
# Candidate mail read for the exact test this many blobs at a time (memory, not speed).
BLOB_BATCH = 200


def _salted(salt: str, text: str) -> str:
    return hashlib.sha256(f"{salt}:{text}".encode()).hexdigest()


def address_hash(address: str, salt: str) -> str:
    """The same for every spelling of one mailbox (:func:`mailbox_key`)."""
    return _salted(salt, mailbox_key(address))


def previous_erasures(session: Session, address: str) -> list[Event]:
    """The audit records of earlier erasures of ``address`` (compared by salted hash).

    Records written before the key was the A-label form hashed the address in
    lower case as asked: an internationalised domain's U-label spelling matches them.
    """
    person = Person.of(address)
    rows = session.scalars(select(Event).where(Event.kind == ERASED_EVENT).order_by(Event.id))
    return [
        row
        for row in rows
        if (salt := str(row.data.get("salt") or ""))
        and row.data.get("address_hash") in {_salted(salt, s) for s in person.spellings}
    ]


@dataclass
class Plan:
    """What ``forget`` finds about one address."""

    person: Person
    contact_ids: list[int] = field(default_factory=list)  # one per spelling stored
    tickets: list[int] = field(default_factory=list)  # requested by them: deleted whole
    cc_tickets: list[int] = field(default_factory=list)  # they were only a participant
    cc_messages: list[int] = field(default_factory=list)  # what they wrote on those
    intake: list[int] = field(default_factory=list)  # their mail on no ticket (quarantine)
    outbox: list[int] = field(default_factory=list)  # mail to them not on their tickets
    digests: int = 0  # spam digests listing their quarantined mail
    ratings: int = 0
    suppressions: int = 0
    ticket_messages: int = 0
    ticket_count: int = 0  # with the tickets merged into them
    ticket_intake: int = 0  # the mail received and sent on those tickets, as the
    ticket_outbox: int = 0  # erasure counts it (what was stored again included)

    def summary(self) -> dict[str, int]:
        return {
            "tickets": self.ticket_count,
            "messages": self.ticket_messages + len(self.cc_messages),
            "participations": len(self.cc_tickets),
            "intake": self.ticket_intake + len(self.intake),
            "outbox": self.ticket_outbox + len(self.outbox),
            "digests": self.digests,
            "ratings": self.ratings,
            "suppressions": self.suppressions,
        }


def _their_loose_intake(session: Session, person: Person) -> list[int]:
    """Their mail that is on no ticket: quarantined, released, or a copy recorded as such.

    Theirs by envelope sender or by an address a reader of the mail finds in it.
    SQL finds the candidates (the envelope's local part; the bytes searched in the
    database for a spelling or an encoding), so only those rows and blobs come to
    Python for the exact test, a batch of blobs at a time.
    """
    loose = (Intake.ticket_id.is_(None), Intake.message_pk.is_(None), Intake.state.in_(SETTLED))
    by_envelope = session.execute(
        select(Intake.id, Intake.envelope_from).where(
            *loose, person.local_part_in(Intake.envelope_from)
        )
    )
    found = {intake_id for intake_id, sender in by_envelope if person.owns(sender)}
    dialect = session.connection().dialect.name
    by_bytes = [
        (intake_id, digest)
        for intake_id, digest in session.execute(
            select(Intake.id, Intake.raw_sha256)
            .join(Blob, Blob.sha256 == Intake.raw_sha256)
            .where(*loose, person.in_bytes(Blob.data, dialect))
        )
        if intake_id not in found
    ]
    digests = sorted({digest for _id, digest in by_bytes})
    naming = set()
    for start in range(0, len(digests), BLOB_BATCH):
        batch = digests[start : start + BLOB_BATCH]
        rows = session.execute(select(Blob.sha256, Blob.data).where(Blob.sha256.in_(batch)))
        naming |= {digest for digest, data in rows if person.mail_names(bytes(data))}
    found |= {intake_id for intake_id, digest in by_bytes if digest in naming}
    return sorted(found)


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
    person = Person.of(address)
    plan = Plan(person)
    plan.contact_ids = sorted(session.scalars(select(Contact.id).where(person.is_(Contact.email))))
    # The requester column, not the participant role: a merge copies the
    # requester of the merged ticket onto the survivor as a participant.
    requested = set(
        session.scalars(select(Ticket.id).where(Ticket.requester_id.in_(plan.contact_ids)))
    )
    shared = set(
        session.scalars(
            select(Participant.ticket_id).where(Participant.contact_id.in_(plan.contact_ids))
        )
    )
    # Tickets they wrote on without being a participant (a stranger's reply).
    shared |= set(session.scalars(select(Message.ticket_id).where(person.is_(Message.from_addr))))
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
    ticket_intake, plan.ticket_outbox = _ticket_mail(session, erased)
    plan.cc_tickets = sorted(shared - erased)
    if plan.cc_tickets:
        plan.cc_messages = _theirs_on(session, plan.cc_tickets, person)
    plan.intake = _their_loose_intake(session, person)
    plan.ticket_intake = len(ticket_intake - set(plan.intake))  # a copy is counted once
    candidates = session.execute(
        select(Outbox.id, Outbox.recipients, Outbox.ticket_id).where(
            or_(person.is_(Outbox.recipient_key), person.in_json(Outbox.recipients))
        )
    )
    plan.outbox = [
        row.id
        for row in candidates
        if row.ticket_id not in erased and any(person.owns(r) for r in row.recipients)
    ]
    plan.digests, _ = redact_digests(session, plan.intake, person.spellings, write=False)
    plan.ratings = (
        session.scalar(
            select(func.count())
            .select_from(Rating)
            .where(person.is_(Rating.contact), Rating.ticket_id.not_in(erased))
        )
        or 0
    )
    plan.suppressions = (
        session.scalar(
            select(func.count()).select_from(Suppression).where(person.is_(Suppression.address))
        )
        or 0
    )
    return plan


def _ticket_mail(session: Session, erased: set[int]) -> tuple[set[int], int]:
    """Intake rows (ids) and the number of outbox rows that go with the ``erased``
    tickets, as :func:`maildesk.privacy.erase.erase_ticket` finds what it deletes: by
    ticket or message, and the copies of their bytes stored again outside any ticket."""
    if not erased:
        return set(), 0
    messages = select(Message.id).where(Message.ticket_id.in_(erased))
    on_tickets = or_(Intake.ticket_id.in_(erased), Intake.message_pk.in_(messages))
    copies = and_(
        Intake.ticket_id.is_(None),
        Intake.message_pk.is_(None),
        Intake.state.in_(SETTLED),
        Intake.raw_sha256.in_(select(Message.raw_sha256).where(Message.ticket_id.in_(erased))),
    )
    intake = set(session.scalars(select(Intake.id).where(or_(on_tickets, copies))))
    outbox = session.scalar(
        select(func.count())
        .select_from(Outbox)
        .where(or_(Outbox.ticket_id.in_(erased), Outbox.message_pk.in_(messages)))
    )
    return intake, outbox or 0


def _theirs_on(session: Session, ticket_ids: list[int], person: Person) -> list[int]:
    """On someone else's tickets: what they wrote, and our notices that quote or name them.

    A notice to the agents carries the customer's text under "<address> wrote";
    an acknowledgement or notice to them is theirs too. Agents' answers stay.
    """
    generated = (Message.kind == MessageKind.AUTO) & (Message.direction == Direction.OUTBOUND)
    stmt = select(Message.id, Message.from_addr, Message.text_body, Message.to_addrs).where(
        Message.ticket_id.in_(ticket_ids),
        or_(
            person.is_(Message.from_addr),
            generated & person.in_text(Message.text_body),
            generated & person.in_json(Message.to_addrs),
        ),
    )
    # The SQL filters are wider (``ann@x`` is in ``joann@x``): the exact test here.
    return sorted(
        row.id
        for row in session.execute(stmt)
        if person.owns(row.from_addr)
        or person.named_in(row.text_body)
        or any(person.owns(a) for a in row.to_addrs or ())
    )


def _scrub(text: str, person: Person) -> str:
    return person.scrub(text, ERASED)


def _leave_ticket(session: Session, ticket_id: int, person: Person, contact_ids: list[int]) -> int:
    """Take them off a ticket someone else asked: their messages, bytes and participation.

    The requester's own mails that name them (a Cc header) stay: they are the
    requester's record; the stored recipient lists forget them.
    """
    if not lock_tickets(session, [ticket_id]):
        return 0
    mine = _theirs_on(session, [ticket_id], person)
    digests, _intake, _outbox = _delete_messages(session, mine)
    _delete(
        session,
        Participant,
        (Participant.ticket_id == ticket_id) & Participant.contact_id.in_(contact_ids),
    )
    named = session.scalars(
        select(Message).where(
            Message.ticket_id == ticket_id,
            or_(person.in_json(Message.to_addrs), person.in_json(Message.cc_addrs)),
        )
    )
    for message in named:
        message.to_addrs = [a for a in message.to_addrs if not person.owns(a)]
        message.cc_addrs = [a for a in message.cc_addrs if not person.owns(a)]
    # The ticket's audit trail keeps what happened, not to whom (a failed
    # delivery's recipients, a decision's evidence).
    noted = session.scalars(
        select(Event).where(
            Event.ticket_id == ticket_id,
            or_(person.in_text(Event.reason), person.in_json(Event.data)),
        )
    )
    for event in noted:
        event.reason = _scrub(event.reason, person)
        event.data = json.loads(_scrub(json.dumps(event.data, ensure_ascii=False), person))
    _delete(session, SpamFeedback, SpamFeedback.raw_sha256.in_(sorted(digests)))
    delete_unreferenced_blobs(session, digests)
    session.flush()
    session.expunge_all()
    return len(mine)


def _forget_loose(session: Session, plan: Plan) -> Counts:
    """Their rows on no ticket of theirs: quarantine, outbox, ratings, suppression, contact."""
    counts = Counts()
    person = plan.person
    intake = list(
        session.execute(
            select(Intake.id, Intake.raw_sha256).where(
                Intake.id.in_(plan.intake), Intake.ticket_id.is_(None)
            )
        )
    )
    digests = {row.raw_sha256 for row in intake}
    # Spam digests listing them: what is current now, not what the plan saw.
    counts.digests, replaced = redact_digests(session, plan.intake, person.spellings)
    digests |= replaced
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
    counts.ratings = _delete(session, Rating, person.is_(Rating.contact))
    counts.suppressions = _delete(session, Suppression, person.is_(Suppression.address))
    _delete(session, SpamFeedback, SpamFeedback.raw_sha256.in_(sorted(digests)))
    if plan.contact_ids:
        _delete(session, Participant, Participant.contact_id.in_(plan.contact_ids))
        counts.contacts = delete_unreferenced_contacts(session, plan.contact_ids)
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
    with db.transaction() as session:
        plan = plan_forget(session, address, whole_cc_tickets=whole_cc_tickets)
    key = plan.person.key
    total = Counts()
    for ticket_id in plan.tickets:
        done = in_retried_transaction(db, partial(erase_ticket, ticket_id=ticket_id))
        if done is not None:
            total.add(done)
            log.info("erasure: ticket(s) %s deleted", done.numbers)
    for ticket_id in plan.cc_tickets:
        leave = partial(
            _leave_ticket, ticket_id=ticket_id, person=plan.person, contact_ids=plan.contact_ids
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
                    f"erased data of {address_hash(key, salt)[:16]} by {actor}: "
                    f"{total.tickets} tickets, {total.messages} messages"
                ),
                data={
                    "address_hash": address_hash(key, salt),
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
