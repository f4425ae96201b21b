"""A merge moves messages into a ticket: its escalation ledger follows its exchanges.

Next-response instances are numbered by exchange, in time order. The messages
of a ticket merged in can add exchanges before the ones the ledger already
names, renumbering them: the exchange whose breach was sent as instance 0
becomes instance 1, and was escalated again. So a merge moves each of the
kept ticket's next-response ledger rows to the number its exchange has now.
"""

from __future__ import annotations

import bisect
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from maildesk.db.models import Message, MessageKind, SlaEscalation, Ticket
from maildesk.sla.facts import timeline
from maildesk.sla.policy import Target, next_response_starts


def exchange_starts(session: Session, ticket: Ticket, now: datetime) -> list[datetime]:
    """When each of ``ticket``'s next-response instances began, by instance number."""
    messages = session.execute(
        select(Message.created_at, Message.kind)
        .where(
            Message.ticket_id == ticket.id,
            Message.kind.in_((MessageKind.CUSTOMER, MessageKind.AGENT_REPLY)),
        )
        .order_by(Message.id)
    ).all()
    events = timeline(ticket.created_at, [(at, MessageKind(kind)) for at, kind in messages], [])
    return next_response_starts(events, max(now, *(e.at for e in events)))


def renumber_escalations(
    session: Session, ticket_id: int, before: list[datetime], after: list[datetime]
) -> None:
    """Move the ledger's next-response rows of ``ticket_id`` from the exchange numbers
    of ``before`` to those of ``after`` (the exchange under way when each began)."""
    moves = {}
    for number, start in enumerate(before):
        now_number = bisect.bisect_right(after, start) - 1
        if now_number > number:
            moves[number] = now_number
    # Highest first: a number moves up, never onto a row not yet moved.
    for number, now_number in sorted(moves.items(), reverse=True):
        session.execute(
            update(SlaEscalation)
            .where(
                SlaEscalation.ticket_id == ticket_id,
                SlaEscalation.target == str(Target.NEXT_RESPONSE),
                SlaEscalation.instance == number,
            )
            .values(instance=now_number)
            .execution_options(synchronize_session=False)
        )
