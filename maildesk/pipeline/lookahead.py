"""Batch lookahead: the dedupe and threading lookups of a whole batch, fetched at once.

A batch is applied in one transaction. Instead of SELECTs per message (its
dedupe key, the Message-IDs it names, an open ticket with its sender and
subject), the runner fetches the answers for every message of the batch up
front, and apply tells the lookahead what it writes, so a later message of
the same batch sees an earlier one exactly as it would through the database.
Tickets are kept as live ORM objects, so status and time changes made during
the batch are seen as they are.

It is only valid while the batch is all-or-nothing: the runner does not use
it when it falls back to one savepoint per message. A merge rewrites rows it
holds, so merge_tickets tells it (:meth:`Lookahead.merged`).
Lookups it does not cover return None and the caller asks the database.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from maildesk.db import queries
from maildesk.db.models import Contact, IdOrigin, Ticket
from maildesk.db.queries import KnownId, StoredMessage
from maildesk.domain.address import mailbox_spellings
from maildesk.domain.author import customer_address
from maildesk.domain.rawheader import body_hash
from maildesk.domain.subject import normalize_subject
from maildesk.pipeline.context import MessageContext

SESSION_KEY = "maildesk.lookahead"
_CHUNK = 500  # stay far below SQLite's bound-parameter limit


class Lookahead:
    def __init__(self) -> None:
        self.active = True
        self._messages: dict[str, StoredMessage] = {}
        self._message_keys: set[str] = set()
        self._ids: dict[str, KnownId] = {}
        self._id_keys: set[str] = set()
        self._contact_ids: dict[str, int | None] = {}  # email -> contact id (None: no contact)
        self._tickets: dict[int, Ticket] = {}  # candidates: prefetched or written in the batch
        self._window_start: datetime | None = None
        self._quarantined: dict[str, int] = {}  # raw sha256 -> oldest quarantined intake
        self._quarantine_checked: set[str] = set()

    # -- lifecycle --------------------------------------------------------
    @classmethod
    def attach(
        cls, session: Session, batch: Sequence[MessageContext], subject_window: timedelta
    ) -> Lookahead:
        """Prefetch for ``batch`` and make it visible to the stages through ``session``."""
        lookahead = cls()
        keys: list[str] = []
        ids: list[str] = []
        senders: set[str] = set()
        subjects: set[str] = set()
        for ctx in batch:
            if ctx.parsed is None or ctx.arrived_at is None:
                continue
            keys.extend(dedupe_candidates(ctx))
            ids.extend(referenced_ids(ctx))
            msg = ctx.parsed
            author = customer_address(msg)
            if author and author.addr:
                senders.update(mailbox_spellings(author.addr))
                subjects.add(normalize_subject(msg.subject))
                start = ctx.arrived_at - subject_window
                if lookahead._window_start is None or start < lookahead._window_start:
                    lookahead._window_start = start
        lookahead._prefetch(session, keys, ids)
        digests = [c.raw_sha256 for c in batch if c.raw_sha256]
        if digests:
            last = max(c.intake_id for c in batch)  # the oldest copy is what each compares
            for chunk in _chunks(list(dict.fromkeys(digests))):
                lookahead._quarantined.update(queries.quarantined_copies(session, chunk, last))
            lookahead._quarantine_checked.update(digests)
        lookahead._prefetch_tickets(session, sorted(senders), sorted(subjects - {""}))
        session.info[SESSION_KEY] = lookahead
        return lookahead

    @staticmethod
    def of(session: Session) -> Lookahead | None:
        found = session.info.get(SESSION_KEY)
        return found if isinstance(found, Lookahead) and found.active else None

    @staticmethod
    def detach(session: Session) -> None:
        session.info.pop(SESSION_KEY, None)

    def invalidate(self) -> None:
        """What it holds may be untrue (rows rewritten by a merge, or a savepoint rolled
        back what it was told): ask the database from now on."""
        self.active = False

    def _prefetch(self, session: Session, keys: list[str], ids: list[str]) -> None:
        unique_keys = list(dict.fromkeys(keys))
        for chunk in _chunks(unique_keys):
            self._messages.update(queries.messages_by_dedupe_keys(session, chunk))
        self._message_keys.update(unique_keys)
        unique_ids = list(dict.fromkeys(ids))
        for chunk in _chunks(unique_ids):
            self._ids.update(queries.known_ids(session, chunk))
        self._id_keys.update(unique_ids)

    def _prefetch_tickets(self, session: Session, emails: list[str], subjects: list[str]) -> None:
        """Contacts of the batch's senders, and their tickets a subject could join."""
        for chunk in _chunks(emails):
            stmt = select(Contact.email, Contact.id).where(Contact.email.in_(chunk))
            self._contact_ids.update((email, cid) for email, cid in session.execute(stmt))
        for email in emails:
            self._contact_ids.setdefault(email, None)
        contact_ids = [cid for cid in self._contact_ids.values() if cid is not None]
        if not contact_ids or not subjects or self._window_start is None:
            return
        # Updated before the earliest window start and untouched by the batch: cannot
        # match. A merged ticket may: it stands for its survivor (followed when read).
        tickets = select(Ticket).where(
            Ticket.requester_id.in_(contact_ids),
            Ticket.normalized_subject.in_(subjects),
            or_(
                and_(Ticket.merged_into_id.is_(None), Ticket.updated_at >= self._window_start),
                Ticket.merged_into_id.is_not(None),
            ),
        )
        for ticket in session.scalars(tickets):
            self._tickets[ticket.id] = ticket

    # -- reads ------------------------------------------------------------
    def covers_message(self, key: str) -> bool:
        return key in self._message_keys

    def message(self, key: str) -> StoredMessage | None:
        return self._messages.get(key)

    def known_ids(self, ids: Iterable[str]) -> dict[str, KnownId] | None:
        """The known subset of ``ids``, or None when some id was not prefetched."""
        wanted = list(ids)
        if not self._id_keys.issuperset(wanted):
            return None
        return {mid: self._ids[mid] for mid in wanted if mid in self._ids}

    def quarantined_copy(self, raw_sha256: str, intake_id: int) -> int | None:
        """The oldest quarantined intake (before ``intake_id``) with the same bytes.

        Raises KeyError when the hash was not prefetched.
        """
        if raw_sha256 not in self._quarantine_checked:
            raise KeyError(raw_sha256)
        found = self._quarantined.get(raw_sha256)
        return found if found is not None and found < intake_id else None

    def covers_sender(self, sender: str, since: datetime) -> bool:
        window = self._window_start
        known = all(form in self._contact_ids for form in mailbox_spellings(sender))
        return known and window is not None and since >= window

    def open_ticket_by_sender_subject(
        self, session: Session, sender: str, normalized_subject: str, since: datetime
    ) -> Ticket | None:
        """As :func:`queries.open_ticket_by_sender_subject`, from the batch's tickets."""
        forms = (self._contact_ids.get(form) for form in mailbox_spellings(sender))
        contact_ids = {cid for cid in forms if cid is not None}
        if not contact_ids:
            return None
        matches = [
            t
            for t in self._tickets.values()
            if t.requester_id in contact_ids and t.normalized_subject == normalized_subject
        ]
        return queries.newest_open_survivor(session, matches, since)

    # -- what apply wrote -------------------------------------------------
    def quarantined(self, raw_sha256: str, intake_id: int) -> None:
        """apply put these bytes in quarantine."""
        if raw_sha256 and raw_sha256 not in self._quarantined:
            self._quarantined[raw_sha256] = intake_id
            self._quarantine_checked.add(raw_sha256)

    def contact(self, email: str, contact_id: int) -> None:
        """A contact apply upserted (keyed exactly as stored, as the query compares)."""
        self._contact_ids[email] = contact_id

    def merged(self, source: Ticket, target: Ticket) -> None:
        """``source``'s messages and ids now belong to ``target`` (as merge_tickets wrote)."""
        source_id, target_id = source.id, target.id
        self.touched(source)
        self.touched(target)
        for key, row in self._messages.items():
            if row.ticket_id == source_id:
                self._messages[key] = row._replace(ticket_id=target_id)
        for mid, known in self._ids.items():
            if known.ticket_id == source_id:
                self._ids[mid] = known._replace(ticket_id=target_id)

    def touched(self, ticket: Ticket) -> None:
        """A ticket the batch created or changed: a candidate for later messages."""
        self._tickets[ticket.id] = ticket

    def stored_message(self, key: str, row: StoredMessage) -> None:
        self._messages[key] = row
        self._message_keys.add(key)

    def remembered_ids(self, rows: Iterable[KnownId]) -> None:
        """Insert-if-absent, as the statement apply ran."""
        for row in rows:
            self._ids.setdefault(row.message_id, row)
            self._id_keys.add(row.message_id)

    def promoted(self, message_id: str, origin: IdOrigin) -> None:
        """An id first seen in References now belongs to a stored message (``origin``)."""
        row = self._ids.get(message_id)
        if row is not None and row.origin in (IdOrigin.REFERENCED, IdOrigin.UNPROVEN_REFERENCED):
            self._ids[message_id] = row._replace(origin=origin)


def dedupe_candidates(ctx: MessageContext) -> list[str]:
    """The dedupe keys dedupe may look up for this message (plain and collision)."""
    from maildesk.pipeline.stages import bounded_key, synthetic_message_id

    msg = ctx.message
    if ctx.body_hash is None:
        ctx.body_hash = body_hash(ctx.raw)
    key = bounded_key(msg.message_id or synthetic_message_id(msg, ctx.body_hash))
    return [key, bounded_key(f"{key}#{ctx.body_hash[:16]}")]


def referenced_ids(ctx: MessageContext) -> list[str]:
    msg = ctx.message
    own = [msg.message_id] if msg.message_id else []
    return [*msg.in_reply_to, *msg.references, *own]


def _chunks(values: list[str]) -> Iterable[list[str]]:
    for start in range(0, len(values), _CHUNK):
        yield values[start : start + _CHUNK]
