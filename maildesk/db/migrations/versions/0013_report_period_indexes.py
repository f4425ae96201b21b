"""indexes for the period a report covers

`maildesk report` reads the tickets created, the agent replies sent and the
status changes made in its period. Without these it read the whole tickets,
messages and events tables for a month's figures (seconds at a million
tickets, and the events table grows fastest of all).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07 09:00:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_INDEXES = (
    ("ix_tickets_created_at", "tickets", ["created_at"]),
    ("ix_messages_created_at_kind", "messages", ["created_at", "kind"]),
    ("ix_events_at_kind", "events", ["at", "kind"]),
)


def upgrade() -> None:
    for name, table, columns in _INDEXES:
        op.create_index(name, table, columns, unique=False)


def downgrade() -> None:
    for name, table, _columns in reversed(_INDEXES):
        op.drop_index(name, table_name=table)
