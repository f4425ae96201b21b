"""Named read queries used by the pipeline stages and the CLI."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import NamedTuple

from sqlalchemy import ColumnElement, and_, bindparam, func, or_, select
from sqlalchemy.orm import Session

from maildesk.db.models import (
    Contact,
    Conversation,
    Direction,
    Event,
    IdOrigin,
    Intake,
    IntakeState,
    KnownMessageId,
    Message,
    MessageKind,
    Outbox,
    Participant,
    Ticket,
    TicketLink,
    TicketStatus,
)
from maildesk.domain.address import mailbox_spellings
from maildesk.domain.rawheader import bounded_key
from maildesk.domain.subject import normalize_subject

OPEN_STATUSES = (TicketStatus.NEW, TicketStatus.OPEN, TicketStatus.PENDING)
MAX_MERGE_HOPS = 20
# tickets.number is an INTEGER column: 32 bits on PostgreSQL.
MAX_TICKET_NUMBER = 2**31 - 1
# The link from a ticket opened by a reply to an ended ticket, to that ticket.
FOLLOW_UP_OF = "follow_up_of"


def outbox_recipients(session: Session, row: Outbox) -> list[str]:
    """Everyone the outbox row's mail went to (a partial delivery narrows ``recipients``)."""
    message = session.get(Message, row.message_pk) if row.message_pk is not None else None
    if message is None:
        return list(row.recipients)
    return [*message.to_addrs, *(message.cc_addrs or [])]


class StoredMessage(NamedTuple):
    """What dedupe needs of a stored message."""

    id: int
    ticket_id: int
    body_hash: str | None
    kind: MessageKind
    from_addr: str
    auto_kind: str | None  # the guard's verdict when not "human" ("list": a list's copy)


class KnownId(NamedTuple):
    """What threading needs of a known Message-ID (a row of known_message_ids)."""

    message_id: str
    ticket_id: int
    origin: IdOrigin


_STORED_MESSAGE = select(
    Message.id,
    Message.ticket_id,
    Message.body_hash,
    Message.kind,
    Message.from_addr,
    Message.auto_kind,
)
_KNOWN_ID = select(KnownMessageId.message_id, KnownMessageId.ticket_id, KnownMessageId.origin)


def message_by_dedupe_key(session: Session, key: str) -> StoredMessage | None:
    row = session.execute(_STORED_MESSAGE.where(Message.dedupe_key == key)).first()
    return StoredMessage(*row) if row is not None else None


def messages_by_dedupe_keys(session: Session, keys: Sequence[str]) -> dict[str, StoredMessage]:
    stmt = select(Message.dedupe_key, *_STORED_MESSAGE.selected_columns)
    rows = session.execute(stmt.where(Message.dedupe_key.in_(keys)))
    return {key: StoredMessage(*row) for key, *row in rows}


def quarantined_copies(
    session: Session, raw_sha256s: Sequence[str], before_id: int
) -> dict[str, int]:
    """For each of these raw hashes, the oldest quarantined intake row holding those bytes."""
    stmt = (
        select(Intake.raw_sha256, func.min(Intake.id))
        .where(
            Intake.raw_sha256.in_(raw_sha256s),
            Intake.state == IntakeState.QUARANTINED,
            Intake.id < before_id,
        )
        .group_by(Intake.raw_sha256)
    )
    return {digest: int(pk) for digest, pk in session.execute(stmt)}


LATE_ACK = "ack_late"  # the event of an acknowledgement decided after the ticket started


def unacknowledged_start(session: Session, ticket_id: int, message_pk: int) -> bool:
    """Whether the ticket started with this message and no acknowledgement has been
    queued for it, nor decided late (:data:`LATE_ACK`), in this transaction too; nor
    has an agent answered it meanwhile (an acknowledgement after the answer says
    nothing she does not know)."""
    first = session.scalar(select(func.min(Message.id)).where(Message.ticket_id == ticket_id))
    if first != message_pk:
        return False
    acked = select(Outbox.id).where(
        Outbox.ticket_id == ticket_id, Outbox.purpose.in_(("ack", "agent_reply"))
    )
    late = select(Event.id).where(Event.ticket_id == ticket_id, Event.kind == LATE_ACK)
    return session.scalar(acked.limit(1)) is None and session.scalar(late.limit(1)) is None


def known_ids(session: Session, ids: Sequence[str]) -> dict[str, KnownId]:
    """The subset of ``ids`` some ticket knows, keyed by id."""
    if not ids:
        return {}
    rows = session.execute(_KNOWN_ID.where(KnownMessageId.message_id.in_(ids)))
    return {row.message_id: KnownId(*row) for row in rows}


def first_known_reference(
    session: Session, ids: Sequence[str], found: dict[str, KnownId] | None = None
) -> tuple[str, KnownId] | None:
    """The first of ``ids`` (in the caller's order) that a ticket knows.

    Ids of messages we stored or sent win over ids only seen in References.
    ``found`` is the result of :func:`known_ids` when the caller has it already.
    """
    found = known_ids(session, ids) if found is None else found
    ranks = (
        (IdOrigin.INBOUND, IdOrigin.OUTBOUND, IdOrigin.UNPROVEN),
        (IdOrigin.REFERENCED, IdOrigin.UNPROVEN_REFERENCED),
    )
    for wanted in ranks:
        for mid in ids:
            row = found.get(mid)
            if row is not None and row.origin in wanted:
                return mid, row
    return None


def ticket_by_number(session: Session, number: int) -> Ticket | None:
    """The ticket with this number; None for a number no ticket can have.

    Numbers come from mail (a subject tag, a command): one beyond the column's
    INTEGER (another helpdesk's tag, a typo) must not fail the query on PostgreSQL.
    """
    if not 0 <= number <= MAX_TICKET_NUMBER:
        return None
    return session.scalars(select(Ticket).where(Ticket.number == number)).first()


def locked_ticket(session: Session, ticket_id: int) -> Ticket:
    """The ticket re-read and locked until commit.

    Autoflushes first, so this transaction's own changes to it are kept. On
    SQLite every transaction holds the database's write lock from its BEGIN
    (IMMEDIATE), so what this session has read is current: no query at all.

    On PostgreSQL the lock is ``FOR NO KEY UPDATE``: it orders every writer that
    locks the ticket, but not the foreign-key checks of rows that only name it
    (an event, an outbox row the sender or another node writes). With ``FOR
    UPDATE`` those wait for this transaction while it may wait for them (the
    bounce suppressing the address the sender just suppressed): a deadlock.
    """
    if session.connection().dialect.name == "sqlite":
        return session.get_one(Ticket, ticket_id)
    stmt = select(Ticket).where(Ticket.id == ticket_id).with_for_update(key_share=True)
    return session.scalars(stmt.execution_options(populate_existing=True)).one()


def surviving_ticket(session: Session, ticket: Ticket, *, lock: bool = False) -> Ticket:
    """Follow merges to the ticket that holds the conversation now.

    With ``lock`` each ticket on the way is re-read locked (:func:`locked_ticket`).
    """
    seen = {ticket.id}
    for _ in range(MAX_MERGE_HOPS):
        if ticket.merged_into_id is None:
            return ticket
        target = (
            locked_ticket(session, ticket.merged_into_id)
            if lock
            else session.get(Ticket, ticket.merged_into_id)
        )
        if target is None or target.id in seen:
            return ticket
        seen.add(target.id)
        ticket = target
    return ticket


def newest_follow_up(session: Session, ticket_id: int) -> int | None:
    """The id of the newest ticket opened as a follow-up of ticket ``ticket_id``, or None."""
    return session.scalars(
        select(TicketLink.ticket_id)
        .where(TicketLink.other_ticket_id == ticket_id, TicketLink.kind == FOLLOW_UP_OF)
        .order_by(TicketLink.id.desc())
        .limit(1)
    ).first()


def is_participant(session: Session, ticket: Ticket, address: str) -> bool:
    """Whether ``address`` (in any spelling of its domain) is the requester or a participant."""
    spellings = mailbox_spellings(address)
    if ticket.requester is not None and ticket.requester.email in spellings:
        return True
    stmt = (
        select(Participant.id)
        .join(Contact, Contact.id == Participant.contact_id)
        .where(Participant.ticket_id == ticket.id, Contact.email.in_(spellings))
    )
    return session.scalars(stmt).first() is not None


def ticket_by_conversation(session: Session, key: str) -> Ticket | None:
    # Conversation rows are written with Core, never left pending in the session:
    # no need to flush the batch's ticket changes first (an autoflush per message).
    with session.no_autoflush:
        row = session.scalars(select(Conversation).where(Conversation.key == key)).first()
        return session.get(Ticket, row.ticket_id) if row else None


def _open_or_merged(*also: ColumnElement[bool]) -> ColumnElement[bool]:
    """A ticket that may take a reply itself (open, unmerged, and ``also``), or a merged
    one, which :func:`newest_open_survivor` follows to the ticket it survives in."""
    return or_(
        and_(Ticket.status.in_(OPEN_STATUSES), Ticket.merged_into_id.is_(None), *also),
        Ticket.merged_into_id.is_not(None),
    )


def open_ticket_by_sender_subject(
    session: Session, sender: str, normalized_subject: str, since: datetime
) -> Ticket | None:
    """Newest open ticket of this requester (any spelling of the address's domain) with
    this subject, active since ``since``.

    A ticket of theirs merged into another stands for the ticket it survives in
    (MAIL-RULES §2: merged tickets forward their threading), so the customer's own
    subject still finds their conversation after an agent merged it away.
    """
    stmt = (
        select(Ticket)
        .join(Contact, Contact.id == Ticket.requester_id)
        .where(
            Contact.email.in_(mailbox_spellings(sender)),
            Ticket.normalized_subject == normalized_subject,
            _open_or_merged(Ticket.updated_at >= since),
        )
    )
    return newest_open_survivor(session, session.scalars(stmt), since)


def open_ticket_by_our_subject(
    session: Session, sender: str, normalized_subject: str, since: datetime
) -> Ticket | None:
    """Newest open ticket of this requester to whom we sent, since ``since``, a mail whose
    subject normalises to ``normalized_subject``.

    A reply to our mail (the acknowledgement's "We received your request: ...") whose
    client dropped the headers and our tag carries our wording, not the ticket's
    subject. Only mail we sent to this sender counts, so nobody else's mail joins.
    """
    spellings = mailbox_spellings(sender)
    stmt = (
        select(Ticket, Message.subject, Message.to_addrs)
        .join(Contact, Contact.id == Ticket.requester_id)
        .join(Message, Message.ticket_id == Ticket.id)
        .where(
            Contact.email.in_(spellings),
            Message.direction == Direction.OUTBOUND,
            Message.created_at >= since,
            _open_or_merged(),
        )
    )
    wanted = set(spellings)
    candidates = (
        ticket
        for ticket, subject, to_addrs in session.execute(stmt)
        if normalize_subject(subject) == normalized_subject
        and wanted.intersection(a.lower() for a in to_addrs or ())
    )
    return newest_open_survivor(session, candidates, since)


def newest_open_survivor(
    session: Session, candidates: Iterable[Ticket], since: datetime
) -> Ticket | None:
    """Of ``candidates`` (merged ones followed to their survivor), the newest ticket that
    is open and active since ``since``."""
    found: dict[int, Ticket] = {}
    for ticket in candidates:
        if ticket.merged_into_id is not None:
            ticket = surviving_ticket(session, ticket)
        if (
            ticket.merged_into_id is None
            and ticket.status in OPEN_STATUSES
            and ticket.updated_at >= since
        ):
            found[ticket.id] = ticket
    return max(found.values(), key=lambda t: t.updated_at, default=None)


def intakes_for_message_id(session: Session, message_id: str) -> list[Intake]:
    """Intakes with this header Message-ID, else the one whose ticket message has it as
    its key: a mail without a Message-ID is shown under the synthetic one it was given."""
    message_id = bounded_key(message_id)  # as stored (an id over 998 characters)
    stmt = select(Intake).where(Intake.header_message_id == message_id).order_by(Intake.id)
    found = list(session.scalars(stmt))
    if found:
        return found
    keyed = select(Message.id).where(Message.dedupe_key == message_id).scalar_subquery()
    return list(session.scalars(select(Intake).where(Intake.message_pk == keyed)))


def events_for_intake(session: Session, intake_id: int) -> list[Event]:
    stmt = select(Event).where(Event.intake_id == intake_id).order_by(Event.id)
    return list(session.scalars(stmt))


def events_for_ticket(session: Session, ticket_id: int) -> list[Event]:
    stmt = select(Event).where(Event.ticket_id == ticket_id).order_by(Event.id)
    return list(session.scalars(stmt))


def last_customer_message(session: Session, ticket: Ticket) -> Message | None:
    """The ticket's newest mail from the customer side (not automated, not an agent's)."""
    return session.scalars(
        select(Message)
        .where(
            Message.ticket_id == ticket.id,
            Message.direction == Direction.INBOUND,
            Message.kind == MessageKind.CUSTOMER,
        )
        .order_by(Message.id.desc())
        .limit(1)
    ).first()


# Built once: this runs for every message the filter would hold or flag.
_ANSWERED = (
    select(Ticket.number)
    .join(Contact, Contact.id == Ticket.requester_id)
    .join(Message, Message.ticket_id == Ticket.id)
    .where(
        Contact.email == bindparam("sender_email"),
        Message.kind == MessageKind.AGENT_REPLY,
        Ticket.possible_spam.is_(False),
    )
    .limit(1)
)


def answered_customer(session: Session, sender: str) -> int | None:
    """The number of a ticket of ``sender``'s that an agent answered, or None.

    A known participant is one we have had a conversation with: an agent
    replied to their ticket. Merely having written before is not enough
    (a spammer who once got through the "unsure" band would be let in).
    """
    # No autoflush: the rows this reads are written with Core, never left pending,
    # and flushing the batch's ticket changes before every lookup cost more than it.
    # Core on the connection: the ORM's execution path cost as much as the query.
    number = session.connection().execute(_ANSWERED, {"sender_email": sender.lower()}).scalar()
    return None if number is None else int(number)
