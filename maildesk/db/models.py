"""Typed SQLAlchemy 2 models: data only, no behaviour.

Raw messages and attachments live in ``blobs``, keyed by their sha256, so
every node sharing a PostgreSQL database sees the same bytes and a file name
taken from a mail is never a path.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Enum,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

# The SLA target rows still counting (status running or paused): see ix_sla_targets_live_due.
SLA_LIVE_STATUSES = ("running", "paused")
SLA_LIVE_PREDICATE = "status IN ('running', 'paused')"
# Intake rows held in quarantine as spam (maildesk.spam.quarantine), and for other reasons.
QUARANTINED_SPAM = "state = 'quarantined' AND quarantine_reason LIKE 'spam:%'"
QUARANTINED_OTHER = "state = 'quarantined' AND quarantine_reason NOT LIKE 'spam:%'"
# Tickets not resolved or closed: see ix_tickets_open_status_group.
OPEN_TICKETS_PREDICATE = "status IN ('new', 'open', 'pending')"


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite keeps no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime(),
        dict[str, Any]: JSON,
        list[str]: JSON,
    }


def _enum(cls: type[enum.Enum]) -> Enum:
    return Enum(cls, native_enum=False, length=24, values_callable=lambda e: [m.value for m in e])


class IntakeState(enum.StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    DONE = "done"
    QUARANTINED = "quarantined"
    RELEASED = "released"  # quarantined, then deliberately dropped by ops


class Disposition(enum.StrEnum):
    CREATED = "created"
    THREADED = "threaded"
    DUPLICATE = "duplicate"
    QUARANTINED = "quarantined"


class TicketStatus(enum.StrEnum):
    NEW = "new"
    OPEN = "open"
    PENDING = "pending"
    RESOLVED = "resolved"
    CLOSED = "closed"


class Priority(enum.StrEnum):
    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"
    URGENT = "urgent"


class Direction(enum.StrEnum):
    INBOUND = "inbound"
    OUTBOUND = "outbound"


class MessageKind(enum.StrEnum):
    CUSTOMER = "customer"
    AGENT_REPLY = "agent_reply"
    INTERNAL_NOTE = "internal_note"
    AUTO = "auto"


class ParticipantRole(enum.StrEnum):
    REQUESTER = "requester"
    CC = "cc"
    AGENT = "agent"


class IdOrigin(enum.StrEnum):
    """Where a Message-ID a ticket knows came from."""

    INBOUND = "inbound"  # a message we stored
    OUTBOUND = "outbound"  # a message we sent
    REFERENCED = "referenced"  # named in References of a message we stored
    # The same two for a message that joined its ticket on a From anyone can forge
    # (subject tag, Thread-Index, sender and subject): a reply naming one threads
    # there, but proves nothing (adds no participants). Added after 0001: stored as text.
    UNPROVEN = "unproven"
    UNPROVEN_REFERENCED = "unproven_referenced"


class Blob(Base):
    __tablename__ = "blobs"
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class Intake(Base):
    """One received message: the durable store, the work queue and quarantine."""

    __tablename__ = "intake"
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    received_at: Mapped[datetime]
    source: Mapped[str] = mapped_column(String(16))  # file, stdin, smtp, lmtp, imap
    source_ref: Mapped[str] = mapped_column(Text, default="")
    envelope_from: Mapped[str | None] = mapped_column(Text)
    envelope_to: Mapped[list[str]] = mapped_column(default=list)
    raw_sha256: Mapped[str] = mapped_column(ForeignKey("blobs.sha256"), index=True)
    size: Mapped[int] = mapped_column(BigInteger)
    header_message_id: Mapped[str | None] = mapped_column(String(998), index=True)
    state: Mapped[IntakeState] = mapped_column(_enum(IntakeState), default=IntakeState.PENDING)
    disposition: Mapped[Disposition | None] = mapped_column(_enum(Disposition))
    attempts: Mapped[int] = mapped_column(default=0)
    claimed_by: Mapped[str | None] = mapped_column(String(128))
    claimed_at: Mapped[datetime | None]
    not_before: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    quarantine_reason: Mapped[str | None] = mapped_column(Text)
    processed_at: Mapped[datetime | None]
    message_pk: Mapped[int | None] = mapped_column(ForeignKey("messages.id"), index=True)
    ticket_id: Mapped[int | None] = mapped_column(ForeignKey("tickets.id"))

    __table_args__ = (
        Index("ix_intake_state_id", "state", "id"),
        # The quarantine, spam (kept for its retention days, many) apart from the rest
        # (held for ops, few): the metrics and `maildesk status` count the spam from
        # its index alone and read only the rest's reasons, not every held row's.
        Index(
            "ix_intake_quarantined_spam",
            "id",
            postgresql_where=text(QUARANTINED_SPAM),
            sqlite_where=text(QUARANTINED_SPAM),
        ),
        Index(
            "ix_intake_quarantined_other",
            "id",
            postgresql_where=text(QUARANTINED_OTHER),
            sqlite_where=text(QUARANTINED_OTHER),
        ),
    )


class Contact(Base):
    __tablename__ = "contacts"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime]


class Ticket(Base):
    __tablename__ = "tickets"
    id: Mapped[int] = mapped_column(primary_key=True)
    number: Mapped[int | None] = mapped_column(unique=True)
    subject: Mapped[str] = mapped_column(Text, default="")
    normalized_subject: Mapped[str] = mapped_column(Text, default="", index=True)
    status: Mapped[TicketStatus] = mapped_column(_enum(TicketStatus), default=TicketStatus.NEW)
    priority: Mapped[Priority] = mapped_column(_enum(Priority), default=Priority.NORMAL)
    category: Mapped[str | None] = mapped_column(String(120))
    queue: Mapped[str | None] = mapped_column(String(120))
    requester_id: Mapped[int | None] = mapped_column(ForeignKey("contacts.id"), index=True)
    assignee: Mapped[str | None] = mapped_column(String(120))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    last_inbound_at: Mapped[datetime | None]
    resolved_at: Mapped[datetime | None]
    closed_at: Mapped[datetime | None]
    merged_into_id: Mapped[int | None] = mapped_column(ForeignKey("tickets.id"))
    support_addresses: Mapped[list[str]] = mapped_column(default=list)
    # Routing and people (issues 5-8): the owning group, the request type
    # (question, incident, change...), free tags, the SLA policy chosen for it,
    # the requester's organisation, and the spam filter's "possible spam" flag.
    group: Mapped[str | None] = mapped_column(String(120))
    ticket_type: Mapped[str | None] = mapped_column(String(60))
    tags: Mapped[list[str]] = mapped_column(default=list)
    sla_policy: Mapped[str | None] = mapped_column(String(120))
    organisation: Mapped[str | None] = mapped_column(String(200))
    possible_spam: Mapped[bool] = mapped_column(default=False)

    requester: Mapped[Contact | None] = relationship(foreign_keys=[requester_id])
    messages: Mapped[list[Message]] = relationship(
        back_populates="ticket", order_by="Message.id", foreign_keys="Message.ticket_id"
    )

    # The number is the id, and our mails carry it signed: a deleted ticket's
    # number must never be given again (SQLite reuses the highest rowid otherwise).
    __table_args__ = (
        # Only the open tickets (a few of the million ever made): the metrics and
        # `maildesk status` count them by status and group at every scrape.
        Index(
            "ix_tickets_open_status_group",
            "status",
            "group",
            postgresql_where=text(OPEN_TICKETS_PREDICATE),
            sqlite_where=text(OPEN_TICKETS_PREDICATE),
        ),
        Index("ix_tickets_created_at", "created_at"),  # a report's period
        {"sqlite_autoincrement": True},
    )


class Participant(Base):
    __tablename__ = "participants"
    id: Mapped[int] = mapped_column(primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"))
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id"))
    role: Mapped[ParticipantRole] = mapped_column(_enum(ParticipantRole))
    __table_args__ = (UniqueConstraint("ticket_id", "contact_id", name="uq_participant"),)

    contact: Mapped[Contact] = relationship()


class Watcher(Base):
    """An agent who follows a ticket (a co-executor): gets its notifications."""

    __tablename__ = "watchers"
    id: Mapped[int] = mapped_column(primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"), index=True)
    agent: Mapped[str] = mapped_column(String(120))
    added_by: Mapped[str] = mapped_column(String(120), default="")  # agent, rule:<name>, ...
    created_at: Mapped[datetime]
    __table_args__ = (UniqueConstraint("ticket_id", "agent", name="uq_watcher"),)


class Rating(Base):
    """A customer's rating of a resolved ticket, sent to a signed rating address (issue 5)."""

    __tablename__ = "ratings"
    id: Mapped[int] = mapped_column(primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"), index=True)
    score: Mapped[int]
    contact: Mapped[str] = mapped_column(String(320), default="")
    message_pk: Mapped[int | None] = mapped_column(ForeignKey("messages.id"))
    created_at: Mapped[datetime]


class HeldAgentMail(Base):
    """Commands from an agent's new (non-reply) mail, waiting for a signed "reply to apply"."""

    __tablename__ = "held_agent_mail"
    id: Mapped[int] = mapped_column(primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"), index=True)
    agent: Mapped[str] = mapped_column(String(120))
    intake_id: Mapped[int | None] = mapped_column(ForeignKey("intake.id"))
    commands: Mapped[list[str]] = mapped_column(default=list)
    # pending, applied, refused (a command failed as it was applied: none were), expired
    state: Mapped[str] = mapped_column(String(16), default="pending")
    created_at: Mapped[datetime]
    decided_at: Mapped[datetime | None]


class Message(Base):
    __tablename__ = "messages"
    id: Mapped[int] = mapped_column(primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"), index=True)
    # The key used for duplicate detection: the header Message-ID, a synthetic
    # one from the content hash when there is none, or the id plus a body hash
    # suffix when two different messages share one header Message-ID.
    dedupe_key: Mapped[str] = mapped_column(String(998), unique=True)
    header_message_id: Mapped[str | None] = mapped_column(Text)
    direction: Mapped[Direction] = mapped_column(_enum(Direction))
    kind: Mapped[MessageKind] = mapped_column(_enum(MessageKind))
    from_addr: Mapped[str] = mapped_column(String(320), default="")
    from_name: Mapped[str] = mapped_column(Text, default="")
    to_addrs: Mapped[list[str]] = mapped_column(default=list)
    cc_addrs: Mapped[list[str]] = mapped_column(default=list)
    delivered_to: Mapped[list[str]] = mapped_column(default=list)
    subject: Mapped[str] = mapped_column(Text, default="")
    date: Mapped[datetime | None]
    text_body: Mapped[str] = mapped_column(Text, default="")
    html_body: Mapped[str | None] = mapped_column(Text)
    raw_sha256: Mapped[str | None] = mapped_column(ForeignKey("blobs.sha256"))
    body_hash: Mapped[str | None] = mapped_column(String(64))
    auto_kind: Mapped[str | None] = mapped_column(String(24))
    created_at: Mapped[datetime]

    ticket: Mapped[Ticket] = relationship(back_populates="messages", foreign_keys=[ticket_id])
    attachments: Mapped[list[Attachment]] = relationship(order_by="Attachment.id")

    __table_args__ = (Index("ix_messages_created_at_kind", "created_at", "kind"),)  # replies sent


class KnownMessageId(Base):
    """Every Message-ID a ticket knows, for threading lookups (MAIL-RULES §2 rule 2)."""

    __tablename__ = "known_message_ids"
    id: Mapped[int] = mapped_column(primary_key=True)
    message_id: Mapped[str] = mapped_column(String(998), unique=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"), index=True)
    origin: Mapped[IdOrigin] = mapped_column(_enum(IdOrigin))


class Conversation(Base):
    """Outlook Thread-Index conversation keys (MAIL-RULES §2 rule 5)."""

    __tablename__ = "conversations"
    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(64), unique=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"), index=True)


class Attachment(Base):
    __tablename__ = "attachments"
    id: Mapped[int] = mapped_column(primary_key=True)
    message_pk: Mapped[int] = mapped_column(ForeignKey("messages.id"), index=True)
    filename: Mapped[str] = mapped_column(Text, default="")  # display only, never a path
    content_type: Mapped[str] = mapped_column(String(255), default="application/octet-stream")
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(ForeignKey("blobs.sha256"))
    content_id: Mapped[str | None] = mapped_column(Text)
    inline: Mapped[bool] = mapped_column(default=False)


class TicketLink(Base):
    __tablename__ = "ticket_links"
    id: Mapped[int] = mapped_column(primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"), index=True)
    other_ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"), index=True)
    kind: Mapped[str] = mapped_column(String(24))  # follow_up_of, quoted_by_stranger, merged
    created_at: Mapped[datetime]


class Event(Base):
    """An audit row for every decision, with its reason and evidence."""

    __tablename__ = "events"
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    at: Mapped[datetime]
    kind: Mapped[str] = mapped_column(String(40))
    ticket_id: Mapped[int | None] = mapped_column(ForeignKey("tickets.id"), index=True)
    intake_id: Mapped[int | None] = mapped_column(ForeignKey("intake.id"), index=True)
    message_pk: Mapped[int | None] = mapped_column(ForeignKey("messages.id"))
    reason: Mapped[str] = mapped_column(Text, default="")
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)

    __table_args__ = (Index("ix_events_at_kind", "at", "kind"),)  # status changes in a period


class OutboxState(enum.StrEnum):
    QUEUED = "queued"
    SENT = "sent"
    FAILED = "failed"  # permanent failure, with the server's reply
    SUPPRESSED = "suppressed"  # recipient on the suppression list
    DROPPED = "dropped"  # an agent notice held for their shift that the ticket overtook


class Outbox(Base):
    """A mail to send, written in the same transaction as the change that caused it."""

    __tablename__ = "outbox"
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    created_at: Mapped[datetime]
    ticket_id: Mapped[int | None] = mapped_column(ForeignKey("tickets.id"), index=True)
    message_pk: Mapped[int | None] = mapped_column(ForeignKey("messages.id"))
    purpose: Mapped[str] = mapped_column(String(40))  # template event: ack, resolved, ...
    message_id: Mapped[str] = mapped_column(String(998), unique=True)
    envelope_from: Mapped[str] = mapped_column(Text)
    recipients: Mapped[list[str]] = mapped_column(default=list)
    # The first recipient, lower-cased: what per-sender rate limits count by.
    recipient_key: Mapped[str] = mapped_column(String(320), default="")
    raw_sha256: Mapped[str] = mapped_column(ForeignKey("blobs.sha256"))
    state: Mapped[OutboxState] = mapped_column(_enum(OutboxState), default=OutboxState.QUEUED)
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime]
    claimed_by: Mapped[str | None] = mapped_column(String(128))
    claimed_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    sent_at: Mapped[datetime | None]
    # Mail to the customer side that an agent caused (their answer, the resolution
    # mail of their "#status resolved"): the agent told if it is not delivered.
    # "" for an agent not known by name (an answer queued before 0009); None: nobody's.
    author: Mapped[str | None] = mapped_column(String(120))

    __table_args__ = (
        Index("ix_outbox_state_next", "state", "next_attempt_at"),
        Index("ix_outbox_rate", "recipient_key", "purpose", "created_at"),
    )


class DeliveryFailureNotice(Base):
    """An outbox row whose author was told it was not delivered: one notice per mail.

    Written before the notice is queued; the unique ``outbox_id`` makes a second
    failure signal for the same mail (our relay's refusal, then a bounce; two
    bounces; two nodes at once) a no-op.
    """

    __tablename__ = "delivery_failure_notices"
    id: Mapped[int] = mapped_column(primary_key=True)
    outbox_id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), ForeignKey("outbox.id"), unique=True
    )
    agents: Mapped[list[str]] = mapped_column(default=list)  # who was told
    created_at: Mapped[datetime]


class Suppression(Base):
    """Addresses we must not mail (hard bounces), until ``until``."""

    __tablename__ = "suppressions"
    id: Mapped[int] = mapped_column(primary_key=True)
    address: Mapped[str] = mapped_column(String(320), unique=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime]
    until: Mapped[datetime]


class SharedModel(Base):
    """A learned model every node uses (the live spam model): the database is its source.

    Each node keeps a copy in its data directory for its scorers; ``version``
    goes up by one with every publish, which only succeeds against the
    version it was based on (compare and swap), so two nodes learning at once
    never overwrite each other's lessons.
    """

    __tablename__ = "shared_models"
    name: Mapped[str] = mapped_column(String(40), primary_key=True)
    version: Mapped[int]
    data: Mapped[bytes] = mapped_column(LargeBinary)
    updated_at: Mapped[datetime]
    updated_by: Mapped[str] = mapped_column(String(200), default="")


class SpamFeedback(Base):
    """What people said a message is: trains the spam model once per message and label.

    Keyed by the raw bytes' hash, so two copies of one message are one lesson. A
    relabel (ham after spam) clears ``learned_at`` and is learned again.
    """

    __tablename__ = "spam_feedback"
    id: Mapped[int] = mapped_column(primary_key=True)
    raw_sha256: Mapped[str] = mapped_column(ForeignKey("blobs.sha256"), unique=True)
    label: Mapped[str] = mapped_column(String(8))  # spam | ham
    source: Mapped[str] = mapped_column(String(40))  # cli, quarantine_release, agent, imap_junk
    actor: Mapped[str] = mapped_column(String(320), default="")
    created_at: Mapped[datetime]
    learned_at: Mapped[datetime | None]


class RoutingState(Base):
    """Per group: the agent who got the last round-robin ticket (issue 7)."""

    __tablename__ = "routing_state"
    id: Mapped[int] = mapped_column(primary_key=True)
    group_name: Mapped[str] = mapped_column(String(120), unique=True)
    last_agent: Mapped[str | None] = mapped_column(String(120))
    updated_at: Mapped[datetime]


class ImapFolderState(Base):
    """Per IMAP folder: how far it has been stored, and which node reads it now.

    ``last_uid`` is the highest UID stored under ``uidvalidity``; ``acted_uid``
    the highest UID whose post-action (flag/move/delete) has been applied.
    ``copied_uids`` (an IMAP sequence set, ``"3:7,9"``) names the UIDs above
    ``acted_uid`` already copied into ``move_to`` on a server without MOVE, whose
    \\Deleted and EXPUNGE may still be tried again: they are not copied twice. The
    lease (``lease_holder`` until ``lease_expires_at``) lets one node at a time
    read the folder; another takes over once it has expired.
    """

    __tablename__ = "imap_folder_state"
    id: Mapped[int] = mapped_column(primary_key=True)
    mailbox: Mapped[str] = mapped_column(String(200))
    folder: Mapped[str] = mapped_column(String(500))
    uidvalidity: Mapped[int] = mapped_column(BigInteger, default=0)
    last_uid: Mapped[int] = mapped_column(BigInteger, default=0)
    acted_uid: Mapped[int] = mapped_column(BigInteger, default=0)
    copied_uids: Mapped[str] = mapped_column(Text, default="", server_default="")
    lease_holder: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None]
    updated_at: Mapped[datetime | None]
    __table_args__ = (UniqueConstraint("mailbox", "folder", name="uq_imap_folder"),)


class SlaTargetRow(Base):
    """One SLA target instance of a ticket as last computed by the SLA sweep (issue 8).

    Recomputed from the ticket's messages and status events, so changing the
    priority, policy or status moves ``due_at`` on the next sweep. A pass writes
    only the rows whose values changed (:mod:`maildesk.sla.rows`): ``computed_at``
    is the pass that last wrote the row, and a running target's ``elapsed_minutes``
    is as of then.
    """

    __tablename__ = "sla_targets"
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"), index=True)
    target: Mapped[str] = mapped_column(String(24))  # first_response, next_response, resolution
    instance: Mapped[int] = mapped_column(default=0)
    policy: Mapped[str] = mapped_column(String(120))
    status: Mapped[str] = mapped_column(String(16))  # running, paused, satisfied
    started_at: Mapped[datetime]
    warn_at: Mapped[datetime | None]
    due_at: Mapped[datetime | None] = mapped_column(index=True)
    satisfied_at: Mapped[datetime | None]
    breached: Mapped[bool] = mapped_column(default=False)
    elapsed_minutes: Mapped[float] = mapped_column(default=0.0)
    target_minutes: Mapped[float] = mapped_column(default=0.0)
    computed_at: Mapped[datetime]
    __table_args__ = (
        UniqueConstraint("ticket_id", "target", "instance", name="uq_sla_target"),
        # Only targets still running or paused: the few of the open tickets, not the
        # satisfied ones of every ticket ever. The sweep's candidates and `tickets
        # list` (LATE, --overdue) read these; only the sweep writes this table.
        Index(
            "ix_sla_targets_live_due",
            "due_at",
            "ticket_id",
            postgresql_where=text(SLA_LIVE_PREDICATE),
            sqlite_where=text(SLA_LIVE_PREDICATE),
        ),
    )


class SlaEscalation(Base):
    """The ledger of escalations (and auto-close steps): each row fires exactly once.

    Written first, in the same transaction as the outbox rows and ticket
    changes it causes; the unique key makes a second node's insert a no-op.
    """

    __tablename__ = "sla_escalations"
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"), index=True)
    target: Mapped[str] = mapped_column(String(24))  # a target, or auto_close
    level: Mapped[str] = mapped_column(String(16))  # warning, breach, reminder, resolve, close
    instance: Mapped[int] = mapped_column(BigInteger, default=0)
    policy: Mapped[str] = mapped_column(String(120), default="")
    due_at: Mapped[datetime]  # when it should have fired
    fired_at: Mapped[datetime]
    late: Mapped[bool] = mapped_column(default=False)
    node: Mapped[str] = mapped_column(String(128), default="")
    actions: Mapped[list[str]] = mapped_column(default=list)
    __table_args__ = (
        UniqueConstraint("ticket_id", "target", "level", "instance", name="uq_sla_escalation"),
    )
