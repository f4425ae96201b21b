"""The suppression list: addresses we must not mail for a while (hard bounces).

Two sources put an address there: a bounce that returns a mail of ours to it
(the pipeline), and our own relay answering that the mailbox does not exist
(the sender). Both go through :func:`suppress`.
"""

from __future__ import annotations

import re
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from maildesk.db.models import Suppression
from maildesk.db.upsert import insert_ignore
from maildesk.domain.address import overlong_address, plain_mailbox

# RFC 3463 "bad destination mailbox address" (5.1.1), "bad destination system
# address" (5.1.2) and RFC 7505's null MX (5.1.10): the address itself is dead.
# Other 5xx (5.7.1 relay access denied, a policy, our own misconfiguration)
# say nothing about the address and must not cut a customer off.
_NO_SUCH_MAILBOX = re.compile(rb"(?<![\d.])5\.1\.(?:1|2|10)(?![\d.])")


def no_such_mailbox(code: int, reply: bytes) -> bool:
    """Whether an SMTP reply says the recipient's address does not exist."""
    return 500 <= code < 600 and _NO_SUCH_MAILBOX.search(reply) is not None


def suppress(session: Session, address: str, until: datetime, reason: str, now: datetime) -> None:
    """Put ``address`` on the suppression list until ``until`` (insert or extend).

    An address longer than RFC 5321 allows is never mailed (see ``wire_address``),
    so none bounces: it is not put there, and never cut short to another's.
    """
    if overlong_address(address) is not None:
        return
    address = plain_mailbox(address)  # "alice"@ is alice@: one row, found for either
    insert_ignore(
        session,
        Suppression,
        {"address": address, "reason": "", "created_at": now, "until": until},
        ["address"],
    )
    row = session.scalars(select(Suppression).where(Suppression.address == address)).one()
    row.until, row.reason = until, reason[:500]
