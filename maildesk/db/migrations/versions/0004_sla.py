"""SLA due times, escalation ledger (issue 8)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22 12:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_AT = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "sla_targets",
        sa.Column("id", _ID, nullable=False),
        sa.Column("ticket_id", sa.Integer(), nullable=False),
        sa.Column("target", sa.String(length=24), nullable=False),
        sa.Column("instance", sa.Integer(), nullable=False),
        sa.Column("policy", sa.String(length=120), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("started_at", _AT, nullable=False),
        sa.Column("warn_at", _AT, nullable=True),
        sa.Column("due_at", _AT, nullable=True),
        sa.Column("satisfied_at", _AT, nullable=True),
        sa.Column("breached", sa.Boolean(), nullable=False),
        sa.Column("elapsed_minutes", sa.Float(), nullable=False),
        sa.Column("target_minutes", sa.Float(), nullable=False),
        sa.Column("computed_at", _AT, nullable=False),
        sa.ForeignKeyConstraint(["ticket_id"], ["tickets.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("ticket_id", "target", "instance", name="uq_sla_target"),
    )
    op.create_index("ix_sla_targets_ticket_id", "sla_targets", ["ticket_id"])
    op.create_index("ix_sla_targets_due_at", "sla_targets", ["due_at"])
    op.create_table(
        "sla_escalations",
        sa.Column("id", _ID, nullable=False),
        sa.Column("ticket_id", sa.Integer(), nullable=False),
        sa.Column("target", sa.String(length=24), nullable=False),
        sa.Column("level", sa.String(length=16), nullable=False),
        sa.Column("instance", sa.BigInteger(), nullable=False),
        sa.Column("policy", sa.String(length=120), nullable=False),
        sa.Column("due_at", _AT, nullable=False),
        sa.Column("fired_at", _AT, nullable=False),
        sa.Column("late", sa.Boolean(), nullable=False),
        sa.Column("node", sa.String(length=128), nullable=False),
        sa.Column("actions", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["ticket_id"], ["tickets.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("ticket_id", "target", "level", "instance", name="uq_sla_escalation"),
    )
    op.create_index("ix_sla_escalations_ticket_id", "sla_escalations", ["ticket_id"])


def downgrade() -> None:
    op.drop_index("ix_sla_escalations_ticket_id", table_name="sla_escalations")
    op.drop_table("sla_escalations")
    op.drop_index("ix_sla_targets_due_at", table_name="sla_targets")
    op.drop_index("ix_sla_targets_ticket_id", table_name="sla_targets")
    op.drop_table("sla_targets")
