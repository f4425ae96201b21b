"""insert_row: the row it returns behaves as one loaded from the database."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import event, select
from sqlalchemy.orm import Session

from maildesk.app import App
from maildesk.db.models import Ticket, TicketStatus
from maildesk.db.upsert import insert_row

AT = datetime(2024, 3, 1, 9, 0, tzinfo=UTC)


def _new_ticket(session: Session) -> Ticket:
    return insert_row(
        session,
        Ticket,
        subject="Printer on fire",
        normalized_subject="printer on fire",
        status=TicketStatus.NEW,
        created_at=AT,
        updated_at=AT,
        support_addresses=[],
    )


def test_inserted_row_is_persistent_complete_and_unchanged(app: App) -> None:
    statements: list[str] = []
    with app.db.transaction() as session:
        ticket = _new_ticket(session)
        assert ticket in session and ticket.id is not None
        event.listen(
            session.connection(),
            "before_cursor_execute",
            lambda _c, _cur, sql, *_a: statements.append(sql),
        )
        # Every column is there, defaults included: reading them runs no SQL.
        assert (ticket.subject, ticket.status, ticket.possible_spam) == (
            "Printer on fire",
            TicketStatus.NEW,
            False,
        )
        assert ticket.support_addresses == [] and ticket.merged_into_id is None
        assert session.get(Ticket, ticket.id) is ticket
        # Nothing is pending: a flush writes nothing.
        assert not session.dirty and not session.new
        session.flush()
        assert statements == []


def test_changes_to_an_inserted_row_are_written(app: App) -> None:
    with app.db.transaction() as session:
        ticket = _new_ticket(session)
        ticket.number = ticket.id
        ticket.support_addresses = ["help@example.org"]
        assert ticket in session.dirty
        ticket_id = ticket.id
    with app.db.transaction() as session:
        number, addresses = session.execute(
            select(Ticket.number, Ticket.support_addresses).where(Ticket.id == ticket_id)
        ).one()
    assert (number, addresses) == (ticket_id, ["help@example.org"])
