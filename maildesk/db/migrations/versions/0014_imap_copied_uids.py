"""imap_folder_state.copied_uids: UIDs already copied into move_to

On a server without MOVE a move is COPY, then \\Deleted and EXPUNGE. When the
STORE or EXPUNGE was refused (or the connection dropped, or the daemon was
restarted) after the COPY went through, the move was tried again from the
COPY, and the mail lay in move_to twice. The UIDs copied are now recorded.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07 15:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("imap_folder_state") as batch:
        batch.add_column(sa.Column("copied_uids", sa.Text(), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("imap_folder_state") as batch:
        batch.drop_column("copied_uids")
