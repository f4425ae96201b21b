"""agents, groups and routing: ticket columns and watchers

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 12:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _ticket_columns() -> tuple[sa.Column[object], ...]:
    return (
        sa.Column("group", sa.String(length=120), nullable=True),
        sa.Column("ticket_type", sa.String(length=60), nullable=True),
        sa.Column("tags", sa.JSON(), nullable=False, server_default="[]"),
        sa.Column("sla_policy", sa.String(length=120), nullable=True),
        sa.Column("organisation", sa.String(length=200), nullable=True),
        sa.Column("possible_spam", sa.Boolean(), nullable=False, server_default=sa.false()),
    )


def upgrade() -> None:
    with op.batch_alter_table("tickets") as batch:
        for column in _ticket_columns():
            batch.add_column(column)
    op.create_table(
        "watchers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("ticket_id", sa.Integer(), nullable=False),
        sa.Column("agent", sa.String(length=120), nullable=False),
        sa.Column("added_by", sa.String(length=120), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["ticket_id"], ["tickets.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("ticket_id", "agent", name="uq_watcher"),
    )
    op.create_index("ix_watchers_ticket_id", "watchers", ["ticket_id"])
    # Issue 5: customer ratings and agents' commands waiting for confirmation.
    op.create_table(
        "ratings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("ticket_id", sa.Integer(), nullable=False),
        sa.Column("score", sa.Integer(), nullable=False),
        sa.Column("contact", sa.String(length=320), nullable=False),
        sa.Column("message_pk", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["ticket_id"], ["tickets.id"]),
        sa.ForeignKeyConstraint(["message_pk"], ["messages.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_ratings_ticket_id", "ratings", ["ticket_id"])
    op.create_table(
        "held_agent_mail",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("ticket_id", sa.Integer(), nullable=False),
        sa.Column("agent", sa.String(length=120), nullable=False),
        sa.Column("intake_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("commands", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["ticket_id"], ["tickets.id"]),
        sa.ForeignKeyConstraint(["intake_id"], ["intake.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_held_agent_mail_ticket_id", "held_agent_mail", ["ticket_id"])


def downgrade() -> None:
    op.drop_index("ix_held_agent_mail_ticket_id", table_name="held_agent_mail")
    op.drop_table("held_agent_mail")
    op.drop_index("ix_ratings_ticket_id", table_name="ratings")
    op.drop_table("ratings")
    op.drop_index("ix_watchers_ticket_id", table_name="watchers")
    op.drop_table("watchers")
    with op.batch_alter_table("tickets") as batch:
        for column in reversed(_ticket_columns()):
            batch.drop_column(column.name)
