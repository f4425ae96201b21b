"""What the stages know about one message as it moves through the pipeline.

Stages fill in the context; only :mod:`maildesk.pipeline.apply` writes to the
database. A stage ends the flow by returning a :class:`Stop`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from maildesk.domain.autodetect import AutoKind, AutoVerdict
from maildesk.domain.message import ParsedMessage

if TYPE_CHECKING:
    from maildesk.spam.scoring import SpamScore

# Mail written by a person (a list post is one too); everything else is automated.
HUMAN_KINDS = (AutoKind.HUMAN, AutoKind.LIST)


class ThreadRule(enum.StrEnum):
    """MAIL-RULES §2, in order; the first that matches decides."""

    REFERENCES = "references"
    SIGNED_REFERENCE = "signed_reference"
    BODY_MARKER = "body_marker"
    SUBJECT_TAG = "subject_tag"
    THREAD_INDEX = "thread_index"
    SENDER_SUBJECT = "sender_subject"
    NEW_TICKET = "new_ticket"


class StopKind(enum.StrEnum):
    DUPLICATE = "duplicate"
    QUARANTINE = "quarantine"


@dataclass(frozen=True)
class Stop:
    kind: StopKind
    reason: str
    duplicate_of_message: int | None = None
    duplicate_of_ticket: int | None = None
    # A duplicate that is her own copy of a mail whose list's copy started the ticket,
    # which was not acknowledged for being list mail: acknowledged now, as if first.
    acknowledge_late: bool = False


@dataclass(frozen=True)
class ThreadDecision:
    """Which ticket the message joins, by which rule, and why.

    ``ticket_id`` None means a new ticket. ``link_to`` names an older ticket
    the new one is linked to (a stranger quoting a number, a follow-up to a
    closed ticket). ``reopen`` is set when a resolved ticket is reopened.
    """

    rule: ThreadRule
    ticket_id: int | None
    evidence: str
    link_to: int | None = None
    link_kind: str | None = None
    reopen: bool = False
    merge_candidate: int | None = None  # a ticket started by a reply that arrived early
    # False when the References matched only ids of mail that joined on a forgeable From.
    proven_by_reference: bool = True


@dataclass(frozen=True)
class EventNote:
    kind: str
    reason: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class MessageContext:
    intake_id: int
    raw: bytes
    envelope_from: str | None
    envelope_to: tuple[str, ...]
    source: str
    received_at: datetime
    forced: bool = False
    raw_sha256: str = ""  # of the stored bytes: an identical copy may sit in quarantine
    arrived_at: datetime | None = None
    parsed: ParsedMessage | None = None
    verdict: AutoVerdict | None = None
    dedupe_key: str | None = None
    body_hash: str | None = None
    thread: ThreadDecision | None = None
    own_id_was_referenced: bool = False  # our Message-ID was known from another's References
    # A bounce: who the mail of ours that it returns went to (from our signed VERP
    # return path or our Message-ID in the returned headers); only they may be suppressed.
    bounced_to: tuple[str, ...] = ()
    bounced_outbox: tuple[int, ...] = ()  # the outbox ids of that mail
    spam: SpamScore | None = None  # set beside parsing when the filter is on
    possible_spam: bool = False  # the spam stage's "unsure": flag the ticket, no acknowledgement
    # Agent commands in the mail: applied, not applied (for the metrics, once committed).
    commands_applied: int = 0
    commands_failed: int = 0
    route: Any = None  # the route stage's RouteDecision (maildesk.routing.router)
    agent: Any = None  # the agent stage's AgentMail (maildesk.agents.stage), issue 5
    # An agent's new mail whose sender authentication passed (DKIM/DMARC/SPF from
    # a trusted host): the only agent mail the spam filter leaves alone.
    authenticated_agent: str | None = None
    # Tickets the stages loaded, kept alive for apply: the session's identity
    # map holds only weak references, so without this each lookup re-selects.
    tickets: dict[int, Any] = field(default_factory=dict)
    notes: list[EventNote] = field(default_factory=list)

    def reset_decisions(self) -> None:
        """Forget what the database stages decided, to decide again after a rollback."""
        self.verdict = None
        self.dedupe_key = None
        self.body_hash = None
        self.thread = None
        self.own_id_was_referenced = False
        self.bounced_to = ()
        self.bounced_outbox = ()
        self.possible_spam = False
        self.commands_applied = self.commands_failed = 0
        self.agent = None
        self.authenticated_agent = None
        self.tickets.clear()
        self.notes = [n for n in self.notes if n.kind == "parse"]

    def note(self, kind: str, reason: str, **data: Any) -> None:
        self.notes.append(EventNote(kind, reason, data))

    @property
    def arrival(self) -> datetime:
        """When the message counts as arrived, for the threading windows (set by parse)."""
        if self.arrived_at is None:
            raise RuntimeError("stage ran before parse")
        return self.arrived_at

    @property
    def message(self) -> ParsedMessage:
        if self.parsed is None:
            raise RuntimeError("stage ran before parse")
        return self.parsed
