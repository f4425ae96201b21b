"""who caused a customer mail, and whether they were told it was not delivered

outbox.author: the agent whose answer (or command) a mail to the customer side
is. Answers queued before this revision get "" (an agent, name unknown), so a
failure of one still reaches the ticket's assignee or group.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-14 12:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.add_column(sa.Column("author", sa.String(length=120), nullable=True))
    op.execute("UPDATE outbox SET author = '' WHERE purpose = 'agent_reply'")
    op.create_table(
        "delivery_failure_notices",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column(
            "outbox_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("agents", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["outbox_id"], ["outbox.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("outbox_id"),
    )


def downgrade() -> None:
    op.drop_table("delivery_failure_notices")
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("author")
