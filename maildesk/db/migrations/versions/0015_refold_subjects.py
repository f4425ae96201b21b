"""tickets.normalized_subject recomputed with today's subject folding

Threading rule 6 (same sender, same normalised subject) compares a new mail's
normalised subject with the one stored on the ticket when it was opened. The
folding was widened (NFKC as well as casefold, a ticket tag at the end of the
subject stripped), so a ticket opened before that kept the old form and a
customer's reply, folded the new way, missed it and opened a second ticket.
Only rows whose value changes are written.

This migration calls the package's ``normalize_subject``, so it writes what the
maildesk being installed compares with. A later change of the folding needs a
migration like this one.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07 23:50:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from maildesk.domain.subject import normalize_subject

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BATCH = 1000
_TICKETS = sa.table(
    "tickets",
    sa.column("id", sa.Integer),
    sa.column("subject", sa.Text),
    sa.column("normalized_subject", sa.Text),
)


def upgrade() -> None:
    conn = op.get_bind()
    last_id = 0
    while True:
        rows = conn.execute(
            sa.select(_TICKETS.c.id, _TICKETS.c.subject, _TICKETS.c.normalized_subject)
            .where(_TICKETS.c.id > last_id)
            .order_by(_TICKETS.c.id)
            .limit(_BATCH)
        ).all()
        if not rows:
            return
        changed = [
            {"row_id": row_id, "folded": folded}
            for row_id, subject, stored in rows
            if (folded := normalize_subject(subject or "")[:2000]) != stored
        ]
        if changed:
            conn.execute(
                _TICKETS.update()
                .where(_TICKETS.c.id == sa.bindparam("row_id"))
                .values(normalized_subject=sa.bindparam("folded")),
                changed,
            )
        last_id = rows[-1][0]


def downgrade() -> None:
    """Nothing to undo: the older maildesk reads the new form as a subject like any other."""
