"""a partial index on the SLA targets still counting

sla_targets keeps a row per target of every ticket ever swept; only those of
open tickets are running or paused. The sweep's candidate query (every batch)
and `tickets list` (LATE, --overdue) looked for those by reading the whole
table. The index holds only the live rows, and only the sweep writes the table:
no message insert pays for it.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-20 12:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_LIVE = "status IN ('running', 'paused')"


def upgrade() -> None:
    op.create_index(
        "ix_sla_targets_live_due",
        "sla_targets",
        ["due_at", "ticket_id"],
        unique=False,
        postgresql_where=sa.text(_LIVE),
        sqlite_where=sa.text(_LIVE),
    )


def downgrade() -> None:
    op.drop_index("ix_sla_targets_live_due", table_name="sla_targets")
