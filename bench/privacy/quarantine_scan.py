"""How long `privacy forget` takes to find a person's mail in quarantine (N rows).

Usage: .venv/bin/python bench/privacy/quarantine_scan.py [N] [DATABASE_URL]

N quarantined messages of about 8 KB (spam from many senders), written as spam
is: a quarter each plain, base64, quoted-printable and multipart with both, half
with an RFC 2047 subject. A few are the person's by envelope, a few name them
only in their bytes: in U-labels, in a base64 part, in a quoted-printable line
broken inside the address, in an encoded-word Cc. The search as it was at first
(every blob read row by row, its plain bytes searched in Python) and as it is
(SQL finds the candidates, Python decodes those) are timed; the one now finds
what the first did and the mail naming her only in those other forms.
"""

from __future__ import annotations

import base64
import hashlib
import quopri
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


def _body(n: int, text: str) -> tuple[str, str]:
    """The body of mail ``n`` in its transfer encoding, and the headers saying which."""
    if n % 4 == 1:
        encoded = base64.encodebytes(text.encode()).decode()
        return (
            "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64",
            encoded,
        )
    if n % 4 == 2:
        encoded = quopri.encodestring(text.encode()).decode()
        kind = (
            "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable"
        )
        return kind, encoded
    if n % 4 == 3:
        html = base64.encodebytes(f"<p>{text}</p>".encode()).decode()
        plain = quopri.encodestring(text.encode()).decode()
        body = (
            "--b\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Transfer-Encoding: quoted-printable\r\n\r\n{plain}\r\n"
            "--b\r\nContent-Type: text/html; charset=utf-8\r\n"
            f"Content-Transfer-Encoding: base64\r\n\r\n{html}\r\n--b--\r\n"
        )
        return 'Content-Type: multipart/alternative; boundary="b"', body
    return "Content-Type: text/plain; charset=us-ascii", text


def mail(n: int, rng: random.Random) -> tuple[str, bytes]:
    sender = f"seller{rng.randrange(500)}@spam{n % 37}.test"
    if n % 997 == 0:
        sender = TARGET.upper()
    text = "".join(rng.choice("abcdefghij klmnop\n") for _ in range(6000))
    hidden = n % 1499
    named = f"Cc: Anna <{TARGET}>\r\n" if hidden == 7 else ""
    if hidden == 8:
        text += "\nwrite to Anna@Bücher.example\n"
    if n == 9:  # base64 (n % 4 == 1)
        text += f"\n---- Forwarded ----\nFrom: Anna <{TARGET}>\n"
    if n == 11:
        named = f"Cc: =?utf-8?b?{base64.b64encode(TARGET.encode()).decode()}?=\r\n"
    kind, body = _body(n, text)
    if n == 10:  # quoted-printable (n % 4 == 2), a soft line break inside the address
        body += f"\r\nFrom: Anna <{TARGET[:8]}=\r\n{TARGET[8:]}>\r\n"
    subject = f"offer {n}" if n % 2 else f"=?utf-8?q?Angebot_f=C3=BCr_Sie_{n}?="
    raw = (
        f"From: <{sender}>\r\nTo: support@example.com\r\n{named}Subject: {subject}\r\n"
        f"Message-ID: <q{n}@spam.test>\r\nMIME-Version: 1.0\r\n{kind}\r\n\r\n{body}"
    ).encode()
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
    hidden = {i for i in range(n) if (i % 1499 == 8 or i in (9, 10, 11)) and i % 997}
    assert set(before) <= set(found_now), "the new search lost a row the old one found"
    assert len(found_now) - len(before) == len(hidden), "found more than the hidden spellings"
    print(f"  same rows found, and {len(hidden)} more naming her in U-labels or encoded")
    db.dispose()


if __name__ == "__main__":
    main()
