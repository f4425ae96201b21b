"""Tell the agent whose mail to the customer side was not delivered (MAIL-RULES §5).

With no web UI, an ``outbound_failed`` event on the ticket is seen by nobody:
the agent believes the customer has the answer. So the agent who caused the
mail (its ``author``: their answer, the resolution mail of their ``#status
resolved``; else the assignee, else the group) gets one ``delivery_failed``
notice, signed for them like every agent notice, so they can answer on the
ticket (a corrected ``#cc``, the answer again).

Once per mail, whichever signal comes first: our relay's refusal, the sender
giving up, or a bounce. Never for mail nobody wrote (acknowledgements, SLA
reminders, ops mail) nor for mail to agents: a notice about a notice would loop.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from maildesk.db import queries
from maildesk.db.models import DeliveryFailureNotice, Event, Message, Outbox, Suppression, Ticket
from maildesk.db.upsert import inserted_once
from maildesk.domain.bounces import Undeliverable
from maildesk.outbound.agent_notices import TEXT_LIMIT, AgentNotices
from maildesk.outbound.compose import one_line
from maildesk.outbound.notices import Notices
from maildesk.people import Directory

# How much of what the relay or the bounce said the agent is shown.
SAID_LIMIT = 500


@dataclass(frozen=True, slots=True)
class Undelivered:
    """Who did not get an outbox row's mail, and what the relay or the bounce said."""

    recipients: tuple[str, ...]
    said: str
    by: str  # "relay" (our relay refused it, or the sender gave up) or "bounce"


def trimmed(said: str) -> str:
    """One line, at most :data:`SAID_LIMIT` characters: a diagnostic for a person."""
    line = one_line(said)
    return line if len(line) <= SAID_LIMIT else line[: SAID_LIMIT - 1] + "…"


class DeliveryFailedNotifier:
    """Called where a mail is found undelivered: the sender and the bounce handling."""

    def __init__(self, notices: Notices) -> None:
        self.notices = notices

    def __call__(self, session: Session, row: Outbox, undelivered: Undelivered) -> None:
        """Queue the notice about ``row`` in the caller's transaction, unless one was."""
        if row.author is None or row.ticket_id is None or not undelivered.recipients:
            return
        if not self._first_notice(session, row):
            return
        found = session.get(Ticket, row.ticket_id)
        if found is None:
            return
        ticket = queries.surviving_ticket(session, found)  # where the agent answers now
        directory = Directory.from_settings(self.notices.settings)
        told = AgentNotices(self.notices, directory).delivery_failed(
            session, ticket, row.author, self._failure(session, row, undelivered)
        )
        session.execute(
            update(DeliveryFailureNotice)
            .where(DeliveryFailureNotice.outbox_id == row.id)
            .values(agents=told)
        )
        if not told:
            session.add(
                Event(
                    at=self.notices.clock(),
                    kind="delivery_failed_untold",
                    reason=f"{row.purpose} (outbox {row.id}) not delivered to "
                    f"{', '.join(undelivered.recipients)}: no agent to tell",
                    ticket_id=ticket.id,
                    data={"outbox": row.id},
                )
            )

    def bounced(self, session: Session, outbox_ids: Iterable[int], report: Undeliverable) -> None:
        """A bounce returned the mail of these outbox rows: tell for each what failed."""
        failed = set(report.undelivered)
        said = "; ".join(report.said)
        for outbox_id in outbox_ids:
            row = session.get(Outbox, outbox_id)
            if row is None:
                continue
            mailed = [a.lower() for a in queries.outbox_recipients(session, row)]
            recipients = tuple(a for a in dict.fromkeys(mailed) if a in failed)
            self(session, row, Undelivered(recipients, said, "bounce"))

    def _first_notice(self, session: Session, row: Outbox) -> bool:
        """Claim the one notice about ``row``: False if another signal (or node) has it.

        The unique ``outbox_id`` decides; on PostgreSQL a second node's insert waits
        for the first's commit, then does nothing.
        """
        values = {"outbox_id": row.id, "agents": [], "created_at": self.notices.clock()}
        return inserted_once(session, DeliveryFailureNotice, values, ["outbox_id"])

    def _failure(
        self, session: Session, row: Outbox, undelivered: Undelivered
    ) -> dict[str, object]:
        """What the template says: which mail, to whom, what was said, who is suppressed."""
        now = self.notices.clock()
        suppressed = session.execute(
            select(Suppression.address, Suppression.until).where(
                Suppression.address.in_([a.lower() for a in undelivered.recipients]),
                Suppression.until > now,
            )
        ).all()
        message = session.get(Message, row.message_pk) if row.message_pk is not None else None
        return {
            "purpose": row.purpose,
            "author": row.author,
            "queued_at": f"{row.created_at:%Y-%m-%d %H:%M} UTC",
            "recipients": list(undelivered.recipients),
            "by": undelivered.by,
            "said": trimmed(undelivered.said),
            "suppressed": [
                {"address": address, "until": f"{until:%Y-%m-%d}"} for address, until in suppressed
            ],
            "text": (message.text_body if message is not None else "")[:TEXT_LIMIT],
        }
