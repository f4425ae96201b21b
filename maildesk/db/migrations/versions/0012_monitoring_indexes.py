"""partial indexes for the monitoring figures: open tickets, the quarantine

The metrics endpoint and `maildesk status` count, at every scrape, the open
tickets (new, open, pending) by status and group, and the quarantine by
reason. Without these that read the whole tickets table, and every held
row's reason (spam is kept for its retention days). Each index holds only the
few rows it is for, so it stays small as closed tickets pile up.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07 07:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_INDEXES = (
    ("ix_tickets_open_status_group", "tickets", ["status", "group"],
     "status IN ('new', 'open', 'pending')"),
    ("ix_intake_quarantined_spam", "intake", ["id"],
     "state = 'quarantined' AND quarantine_reason LIKE 'spam:%'"),
    ("ix_intake_quarantined_other", "intake", ["id"],
     "state = 'quarantined' AND quarantine_reason NOT LIKE 'spam:%'"),
)  # fmt: skip


def upgrade() -> None:
    for name, table, columns, where in _INDEXES:
        op.create_index(
            name,
            table,
            columns,
            unique=False,
            postgresql_where=sa.text(where),
            sqlite_where=sa.text(where),
        )


def downgrade() -> None:
    for name, table, _columns, _where in reversed(_INDEXES):
        op.drop_index(name, table_name=table)
