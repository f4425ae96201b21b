"""indexes for lookups that scanned whole tables on PostgreSQL

ticket_links.other_ticket_id: a reply to an ended ticket finds its follow-up.
intake.raw_sha256: every message's dedupe looks for a quarantined copy of its bytes.
intake.message_pk: the intake row of a stored message (#spam, spam mark, explain).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-10 12:00:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_INDEXES = (
    ("ix_ticket_links_other_ticket_id", "ticket_links", ["other_ticket_id"]),
    ("ix_intake_raw_sha256", "intake", ["raw_sha256"]),
    ("ix_intake_message_pk", "intake", ["message_pk"]),
)


def upgrade() -> None:
    for name, table, columns in _INDEXES:
        op.create_index(name, table, columns, unique=False)


def downgrade() -> None:
    for name, table, _columns in reversed(_INDEXES):
        op.drop_index(name, table_name=table)
