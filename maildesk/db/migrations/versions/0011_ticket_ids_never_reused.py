"""ticket numbers are never given twice on SQLite (AUTOINCREMENT)

A ticket's number is its id, and every mail we sent for it carries that
number, signed: in its Message-ID, its reply address, its body marker. Once
tickets can be deleted (`maildesk privacy forget|purge`, retention), SQLite
would give the highest deleted id to the next new ticket, and a customer's
late reply to a mail of the erased ticket would thread onto a stranger's.
PostgreSQL sequences never go back: nothing to do there.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07 06:30:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    # The copy keeps every id; sqlite_sequence starts at the highest of them.
    with op.batch_alter_table(
        "tickets", recreate="always", table_kwargs={"sqlite_autoincrement": True}
    ):
        pass


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    with op.batch_alter_table(
        "tickets", recreate="always", table_kwargs={"sqlite_autoincrement": False}
    ):
        pass
