"""A person's entries taken out of the stored spam digests (``maildesk privacy forget``).

A digest lists many senders' spam, so it is rewritten, not deleted: the one
still queued goes out without the erased entries, and the copy we keep of
one sent forgets them too. The row itself stays, with its Message-ID: it is
what keeps the day to one digest.

An entry is the shipped template's ``#<intake id>`` line with the indented
lines under it; it goes when its id is one of the erased quarantine entries
or it names the address. Any other line naming the address (a template
laid out otherwise) keeps the line with the address replaced.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from email.message import EmailMessage
from email.parser import BytesParser

from sqlalchemy import select
from sqlalchemy.orm import Session

from maildesk.db.models import Blob, Outbox
from maildesk.intake.store import put_blob
from maildesk.outbound.compose import WIRE_POLICY
from maildesk.privacy.match import mention_re
from maildesk.spam.quarantine import DIGEST_PURPOSE

ERASED = "(erased)"
_ENTRY = re.compile(r"#(\d+)\b")


def redact_text(text: str, intake_ids: Collection[int], spellings: Collection[str]) -> str:
    """The digest's text without the entries of ``intake_ids`` or naming ``spellings``."""
    mention = mention_re(spellings)
    out: list[str] = []
    lines = text.splitlines(keepends=True)
    i = 0
    while i < len(lines):
        start = _ENTRY.match(lines[i])
        if start is None:
            out.append(mention.sub(ERASED, lines[i]))
            i += 1
            continue
        end = i + 1
        while end < len(lines) and lines[end][:1] in (" ", "\t") and lines[end].strip():
            end += 1
        entry = "".join(lines[i:end])
        if int(start.group(1)) in intake_ids or mention.search(entry):
            out.append(f"#{start.group(1)}  {ERASED} on request\n")
        else:
            out.append(entry)
        i = end
    return "".join(out)


def redact_digest(
    raw: bytes, intake_ids: Collection[int], spellings: Collection[str]
) -> bytes | None:
    """The digest mail rewritten without those entries; None when it has none of them."""
    message = BytesParser(policy=WIRE_POLICY).parsebytes(raw)
    assert isinstance(message, EmailMessage)
    body = message.get_body(("plain",))
    if body is None:
        return None
    text = body.get_content()
    redacted = redact_text(text, intake_ids, spellings)
    if redacted == text:
        return None
    body.set_content(redacted)
    return message.as_bytes()


def redact_digests(
    session: Session,
    intake_ids: Collection[int],
    spellings: Collection[str],
    *,
    write: bool = True,
) -> tuple[int, set[str]]:
    """Rewrite every stored digest that lists those entries (queued, sent or failed).

    Returns how many digests named them and the digests of the bytes replaced
    (for the caller to delete once nothing refers to them). ``write=False``
    only counts.
    """
    rows = session.execute(
        select(Outbox.id, Blob.sha256, Blob.data)
        .join(Blob, Blob.sha256 == Outbox.raw_sha256)
        .where(Outbox.purpose == DIGEST_PURPOSE)
        .order_by(Outbox.id)
    ).all()
    count, replaced = 0, set()
    for outbox_id, digest, data in rows:
        redacted = redact_digest(bytes(data), intake_ids, spellings)
        if redacted is None:
            continue
        count += 1
        if write:
            row = session.get_one(Outbox, outbox_id)
            row.raw_sha256 = put_blob(session, redacted)
            replaced.add(digest)
    if write:
        session.flush()
    return count, replaced
