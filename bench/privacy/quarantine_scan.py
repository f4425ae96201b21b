"""How long `privacy forget` takes to find a person's mail in quarantine (N rows).

Usage: .venv/bin/python bench/privacy/quarantine_scan.py [N] [DATABASE_URL]

N quarantined messages of about 8 KB (spam from many senders); a few are the
person's by envelope, a few name them only in their bytes (one in U-labels).
The search as it was (every blob read row by row, searched in Python) and as
it is (SQL finds the candidates) must find the same rows.
"""

from __future__ import annotations

import hashlib
import random
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from maildesk.db.database import Database
from maildesk.db.models import Blob, Intake, IntakeState
from maildesk.privacy.erase import SETTLED
from maildesk.privacy.forget import _their_loose_intake
from maildesk.privacy.match import Person

TARGET = "anna@xn--bcher-kva.example"


def old_search(session: Session, address: str) -> list[int]:
    """The search before: each quarantined row's blob read and searched in Python."""
    needle = address.encode()
    found = []
    rows = session.execute(
        select(Intake.id, Intake.envelope_from, Intake.raw_sha256).where(
            Intake.ticket_id.is_(None), Intake.message_pk.is_(None), Intake.state.in_(SETTLED)
        )
    )
    for intake_id, envelope_from, digest in rows:
        if (envelope_from or "").strip().strip("<>").lower() == address:
            found.append(intake_id)
            continue
        data = session.scalar(select(Blob.data).where(Blob.sha256 == digest))
        if data is not None and needle in bytes(data).lower():
            found.append(intake_id)
    return found


def mail(n: int, rng: random.Random) -> tuple[str, bytes]:
    sender = f"seller{rng.randrange(500)}@spam{n % 37}.test"
    if n % 997 == 0:
        sender = TARGET.upper()
    body = "".join(rng.choice("abcdefghij klmnop\n") for _ in range(8000))
    named = f"Cc: Anna <{TARGET}>\r\n" if n % 1499 == 7 else ""
    raw = (
        f"From: <{sender}>\r\nTo: support@example.com\r\n{named}Subject: offer {n}\r\n"
        f"Message-ID: <q{n}@spam.test>\r\n\r\n{body}"
    ).encode()
    if n % 1499 == 8:
        raw += "\r\nwrite to Anna@Bücher.example\r\n".encode()
    envelope = sender if n % 2 else f"bounce{n}@relay.test"
    return envelope, raw


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    tmp = Path(tempfile.mkdtemp())
    url = sys.argv[2] if len(sys.argv) > 2 else f"sqlite:///{tmp / 'bench.sqlite3'}"
    db = Database(url)
    db.upgrade()
    rng = random.Random(7)
    now = datetime(2026, 3, 9, 12, tzinfo=UTC)
    blobs, rows = [], []
    for i in range(n):
        envelope, raw = mail(i, rng)
        digest = hashlib.sha256(raw).hexdigest()
        blobs.append({"sha256": digest, "size": len(raw), "data": raw})
        rows.append(
            {
                "received_at": now,
                "source": "smtp",
                "envelope_from": envelope,
                "raw_sha256": digest,
                "size": len(raw),
                "state": IntakeState.QUARANTINED,
                "quarantine_reason": "spam: p=0.99",
            }
        )
    with db.transaction() as session:
        session.execute(insert(Blob), blobs)
        session.execute(insert(Intake), rows)
    timings = {}
    for name, search in (
        ("row by row (before)", lambda s: old_search(s, TARGET)),
        ("SQL candidates (now)", lambda s: _their_loose_intake(s, Person.of(TARGET))),
    ):
        with db.transaction() as session:
            start = time.perf_counter()
            found = search(session)
            timings[name] = (time.perf_counter() - start, sorted(found))
    (_t0, before), (_t1, found_now) = timings.values()
    print(f"{n} quarantined rows on {url.split(':', 1)[0]}")
    for name, (seconds, found) in timings.items():
        print(f"  {name:22} {seconds * 1000:8.1f} ms  {len(found)} found")
    u_labels = sum(1 for i in range(n) if i % 1499 == 8 and i % 997)  # not hers by envelope
    assert set(before) <= set(found_now), "the new search lost a row the old one found"
    assert len(found_now) - len(before) == u_labels, "found more than the U-label spellings"
    print(f"  same rows found, and {u_labels} more naming her domain in U-labels")
    db.dispose()


if __name__ == "__main__":
    main()
