"""Over-size IMAP mail: header-only quarantine entry, and one notice per policy."""

from __future__ import annotations

import base64
import email
import logging
from collections.abc import Iterator
from email.header import decode_header, make_header
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from maildesk.app import App
from maildesk.db.database import StorageUnavailable
from maildesk.db.models import Blob, Event, Intake, IntakeState, Outbox
from maildesk.db.outage import Outage
from maildesk.intake import oversize
from maildesk.intake.oversize import EVENT, queue_notices, run_once
from maildesk.intake.store import Envelope
from tests.conftest import FrozenClock, make_settings
from tests.daemon_harness import RelaySink
from tests.dovecot_harness import Dovecot, dovecot_server
from tests.intake.test_imap import Runner, crlf, mail, wait_until
from tests.mailfactory import make_mail
from tests.outbound.test_bounces import drain_to

USER = "support"
LIMIT = 10_000
BIG_BODY = ("y" * 76 + "\n") * 400
# A Message-ID as Exchange Online writes it: longer than a header line of 78.
OUTLOOK_ID = "DB9PR08MB6588D2C8E8B2A0A1B7E9F6C3C4F29@DB9PR08MB6588.eurprd08.prod.outlook.com"


@pytest.fixture
def dovecot() -> Iterator[Dovecot]:
    with dovecot_server(USER) as server:
        yield server


def build_app(tmp_path: Path, database_url: str, clock: FrozenClock, block: dict[str, Any]) -> App:
    settings = make_settings(tmp_path, database_url, imap=[block])
    return App.build(settings, clock=clock)


def read_in(app: App, dovecot: Dovecot, count: int) -> None:
    """Let the real poller store ``count`` messages, then run the pipeline on them."""
    runner = Runner()
    intake = runner.start(app, app.settings.imap[0].model_dump())
    try:
        wait_until(lambda: intake_count(app) == count, f"{count} stored")
    finally:
        runner.stop(intake)
    app.worker().drain()


def intake_count(app: App) -> int:
    with app.db.transaction() as session:
        return len(session.scalars(select(Intake.id)).all())


def outbox(app: App) -> list[Message]:
    with app.db.transaction() as session:
        rows = session.scalars(select(Outbox).where(Outbox.purpose == "too_large")).all()
        return [
            email.message_from_bytes(bytes(session.get_one(Blob, r.raw_sha256).data)) for r in rows
        ]


def events(app: App) -> list[str]:
    with app.db.transaction() as session:
        return list(session.scalars(select(Event.reason).where(Event.kind == EVENT)))


def notify(app: App) -> int:
    with app.db.transaction() as session:
        return queue_notices(session, app.notices(), app.clock())


def test_sender_of_an_over_size_message_is_told_once(
    tmp_path: Path, database_url: str, clock: FrozenClock, dovecot: Dovecot
) -> None:
    block = dovecot.mailbox(
        USER, max_message_bytes=LIMIT, oversize_notice="sender", post_action="none"
    )
    app = build_app(tmp_path, database_url, clock, block)
    try:
        big = mail(1, subject="Scans attached", body=BIG_BODY, message_id="big-1@customer.test")
        dovecot.append(USER, big)
        read_in(app, dovecot, 1)
        with app.db.transaction() as session:
            row = session.scalars(select(Intake)).one()
            assert row.state is IntakeState.QUARANTINED
            reason = row.quarantine_reason or ""
            assert reason.startswith("too large to fetch from IMAP")
            assert f"original size {len(big)} bytes" in reason
            kept = bytes(session.get_one(Blob, row.raw_sha256).data)
        assert b"Subject: Scans attached" in kept and b"yyyy" not in kept

        assert notify(app) == 1
        assert notify(app) == 0  # the next pass: already told
        (notice,) = outbox(app)
        assert notice["To"] == "alice@customer.test"
        assert notice["From"].endswith("<support@example.com>")
        assert notice["Subject"] == "Your message was too large: Scans attached"
        assert notice["In-Reply-To"] == "<big-1@customer.test>"
        assert notice["Auto-Submitted"] == "auto-replied"
        payload = notice.get_payload(decode=True)
        assert isinstance(payload, bytes)
        body = payload.decode()
        assert f"({len(big)} bytes)" in body and f"{LIMIT}" in body
        assert events(app) == ["too_large notice queued"]
    finally:
        app.db.dispose()


def test_the_notice_quotes_a_hostile_subject_bounded_and_names_an_outlook_id_as_it_is(
    tmp_path: Path, database_url: str, clock: FrozenClock, dovecot: Dovecot, relay: RelaySink
) -> None:
    """The notice repeated the whole Subject and From name (a 100 kB header made a
    quarter-megabyte notice, to whatever address the sender chose), and wrote an
    Outlook-length Message-ID RFC 2047-encoded, so no client threaded it."""
    block = dovecot.mailbox(
        USER, max_message_bytes=LIMIT, oversize_notice="sender", post_action="none"
    )
    app = build_app(tmp_path, database_url, clock, block)
    huge = " ".join(f"w{n:05d}" for n in range(8_000))  # 56 kB of words
    try:
        big = mail(
            1,
            sender=f'"{huge}" <alice@customer.test>',
            subject=f"Scans {huge}",
            body=BIG_BODY,
            message_id=OUTLOOK_ID,
        )
        dovecot.append(USER, big)
        read_in(app, dovecot, 1)
        assert notify(app) == 1
        drain_to(app, relay)
        [sent] = relay.received
        notice = sent.message
        assert sent.rcpt_tos == ["alice@customer.test"]
        assert len(sent.raw) < 20_000, f"notice of {len(sent.raw)} bytes"
        subject = str(make_header(decode_header(str(notice["Subject"]))))
        assert subject.startswith("Your message was too large: Scans w00000 w00001")
        assert notice["In-Reply-To"] == f"<{OUTLOOK_ID}>"
        assert notice["References"] == f"<{OUTLOOK_ID}>"
    finally:
        app.db.dispose()


def test_no_notice_to_automated_mail_or_when_the_policy_is_none(
    tmp_path: Path, database_url: str, clock: FrozenClock, dovecot: Dovecot
) -> None:
    block = dovecot.mailbox(
        USER, max_message_bytes=LIMIT, oversize_notice="sender", post_action="none"
    )
    app = build_app(tmp_path, database_url, clock, block)
    try:
        bounce = make_mail(body=BIG_BODY, headers={"Auto-Submitted": "auto-generated"})
        dovecot.append(USER, crlf(bounce))
        read_in(app, dovecot, 1)
        assert notify(app) == 0
        assert outbox(app) == []
        (reason,) = events(app)
        assert "automated mail" in reason
    finally:
        app.db.dispose()

    quiet = build_app(tmp_path / "quiet", database_url, clock, {**block, "oversize_notice": "none"})
    try:
        dovecot.append(USER, mail(3, body=BIG_BODY))
        read_in(quiet, dovecot, 2)
        assert notify(quiet) == 0
        assert outbox(quiet) == []
        assert any("policy is none" in r for r in events(quiet))
    finally:
        quiet.db.dispose()


FORGED = "mx.example.com; spf=fail smtp.mailfrom=evil.test; dmarc=fail header.from=bank.test"
# A subject encoded twice, its inner word holding a CR LF and a header (CVE-2024-6923).
INJECTED = (
    "=?utf-8?b?" + base64.b64encode(b"=?utf-8?q?Scans=0D=0ABcc=3A_x=40evil=2Etest?=").decode()
)


def test_no_notice_to_a_forged_sender_nor_a_header_from_a_subject_encoded_twice(
    tmp_path: Path, database_url: str, clock: FrozenClock, dovecot: Dovecot
) -> None:
    """A From our MTA found failing DMARC is forged: the acknowledgement of such mail is
    not sent (no backscatter), and the notice, which repeats the forger's subject and
    name to the address he chose, was. A subject encoded twice put its own Bcc line
    into the notice."""
    block = dovecot.mailbox(
        USER, max_message_bytes=LIMIT, oversize_notice="sender", post_action="none"
    )
    trusting = {"trusted_authserv_ids": ["mx.example.com"]}
    settings = make_settings(tmp_path, database_url, imap=[block], agent_mail=trusting)
    app = App.build(settings, clock=clock)
    try:
        forged = make_mail(
            sender="Victim <victim@bank.test>",
            subject="Your account is locked: call +1 555 0100",
            body=BIG_BODY,
            headers={"Authentication-Results": FORGED},
        )
        dovecot.append(USER, crlf(forged))
        dovecot.append(USER, crlf(make_mail(subject=INJECTED + "?=", body=BIG_BODY)))
        read_in(app, dovecot, 2)
        assert notify(app) == 1
        (notice,) = outbox(app)
        assert notice["To"] == "alice@customer.test"
        assert notice["Bcc"] is None
        forged_sender = "dmarc=fail (bank.test): the sender is likely forged (no backscatter)"
        assert sorted(events(app)) == [
            "no too_large notice: " + forged_sender,
            "too_large notice queued",
        ]
    finally:
        app.db.dispose()


@pytest.mark.parametrize(
    "spam", [{"unsure_at": 0.0, "spam_at": 0.0}, {"unsure_at": 0.0, "spam_at": 1.0}]
)
def test_no_notice_to_the_sender_of_mail_the_spam_filter_holds(
    tmp_path: Path, database_url: str, clock: FrozenClock, dovecot: Dovecot, spam: dict[str, float]
) -> None:
    """Spam makes no mail of any kind (issue 6): the notice went to whoever sent a mail
    too large to fetch, spam or not. The header is all there is to score; "unsure"
    sends nothing either, as nothing goes to an unsure sender until release."""
    block = dovecot.mailbox(
        USER, max_message_bytes=LIMIT, oversize_notice="sender", post_action="none"
    )
    settings = make_settings(tmp_path, database_url, imap=[block], spam=spam)
    app = App.build(settings, clock=clock)
    try:
        dovecot.append(USER, mail(1, subject="Scans attached", body=BIG_BODY))
        read_in(app, dovecot, 1)
        assert notify(app) == 0
        assert outbox(app) == []
        (reason,) = events(app)
        band = "spam" if spam["spam_at"] == 0.0 else "unsure"
        assert reason.startswith("no too_large notice: the spam filter's verdict on its header")
        assert f"({band})" in reason
    finally:
        app.db.dispose()


def test_one_hostile_sender_does_not_block_the_other_notices(
    tmp_path: Path, database_url: str, clock: FrozenClock
) -> None:
    """A sender no To header can name (a non-ASCII local part) is skipped; it used
    to roll back every pass, and nobody was told for the two days of lookback."""
    block = {
        "host": "127.0.0.1",
        "user": "support",
        "password": "x",
        "max_message_bytes": 10_000,
        "oversize_notice": "sender",
    }
    app = App.build(make_settings(tmp_path, database_url, imap=[block]), clock=clock)
    key = app.settings.imap[0].key
    try:
        senders = ["J\u00f6rg <j\u00f6rg@customer.test>", "Bo <bo@customer.test>"]
        for n, sender in enumerate(senders):
            header = make_mail(sender=sender, message_id=f"big{n}@customer.test").split(b"\n\n")[0]
            raw = b"X-Maildesk-Truncated: original size 99999 bytes\r\n" + header + b"\r\n\r\n"
            intake_id = app.intake().store(raw, Envelope(source="imap", rcpt_to=()))
            with app.db.transaction() as session:
                row = session.get_one(Intake, intake_id)
                row.source_ref = f"{key}/INBOX/{n + 1}"
                row.state = IntakeState.QUARANTINED
                row.quarantine_reason = "too large to fetch from IMAP: original size 99999 bytes"
                row.processed_at = clock.now
        for _ in range(3):  # the scheduler runs this every 10 seconds
            run_once(app)
        with app.db.transaction() as session:
            told = [r.recipients for r in session.scalars(select(Outbox))]
        assert told == [["bo@customer.test"]]
    finally:
        app.db.dispose()


def test_a_sender_with_a_utf8_address_is_told_in_utf8_and_at_the_wire_domain(
    tmp_path: Path, database_url: str, clock: FrozenClock
) -> None:
    """RFC 6531/6532: jörg gets the notice, his address in UTF-8 in the To header (sent
    with SMTPUTF8), an IDN domain in A-labels, as every other customer mail does."""
    block = {"host": "127.0.0.1", "user": "support", "password": "x", "max_message_bytes": 10_000,
             "oversize_notice": "sender"}  # fmt: skip
    app = App.build(make_settings(tmp_path, database_url, imap=[block]), clock=clock)
    key = app.settings.imap[0].key
    try:
        header = (
            "X-Maildesk-Truncated: original size 99999 bytes\r\nFrom: Jörg <jörg@bücher.test>\r\n"
            "To: support@example.com\r\nSubject: Big\r\nMessage-ID: <big@customer.test>\r\n\r\n"
        )
        intake_id = app.intake().store(header.encode(), Envelope(source="imap", rcpt_to=()))
        with app.db.transaction() as session:
            row = session.get_one(Intake, intake_id)
            row.source_ref = f"{key}/INBOX/1"
            row.state = IntakeState.QUARANTINED
            row.quarantine_reason = "too large to fetch from IMAP: original size 99999 bytes"
            row.processed_at = clock.now
        run_once(app)
        with app.db.transaction() as session:
            [(recipients, data)] = session.execute(
                select(Outbox.recipients, Blob.data).join(Blob, Blob.sha256 == Outbox.raw_sha256)
            ).all()
        assert recipients == ["jörg@xn--bcher-kva.test"]
        assert "To: jörg@xn--bcher-kva.test\r\n".encode() in bytes(data)
    finally:
        app.db.dispose()


class RecordingStore:
    """The real store, noting how many bytes of mail each transaction held."""

    def __init__(self, app: App) -> None:
        self.inner = app.intake()
        self.held: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def store_many(self, items: Any) -> None:
        self.held.append(sum(len(raw) for raw, _envelope in items))
        self.inner.store_many(items)


def test_a_backlog_of_large_messages_is_never_held_in_memory_all_at_once(
    app: App, dovecot: Dovecot, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fifty messages near max_message_bytes would be gigabytes held in one transaction.

    The budget is made small here (32 MiB in the daemon) so that a few
    messages of 60 KB show it; every message still comes in, each once.
    """
    from maildesk.intake import imap

    monkeypatch.setattr(imap, "STORE_BYTES", 150_000)
    for n in range(8):
        dovecot.append(USER, mail(n, body=f"big {n}\n" + BIG_BODY * 2))
    store = RecordingStore(app)
    runner = Runner()
    intake = runner.start(app, dovecot.mailbox(USER, post_action="flag"), store=store)  # type: ignore[arg-type]
    try:
        wait_until(lambda: intake_count(app) == 8, "8 stored")
    finally:
        runner.stop(intake)
    assert sum(store.held) > 8 * 60_000
    assert max(store.held) <= 150_000, store.held
    with app.db.transaction() as session:
        refs = session.scalars(select(Intake.source_ref)).all()
    assert len(set(refs)) == 8


def test_the_notice_pass_waits_out_a_database_outage_with_one_line(
    tmp_path: Path,
    database_url: str,
    clock: FrozenClock,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The pass runs every ten seconds: while the database was away it logged a traceback
    each time and counted as a success of the job."""
    block = {"host": "127.0.0.1", "user": "support", "password": "x", "oversize_notice": "sender"}
    app = App.build(make_settings(tmp_path, database_url, imap=[block]), clock=clock)
    outage = Outage(logging.getLogger("maildesk.intake.oversize"), "over-size notices", base=60)
    tries: list[int] = []

    def away(*_args: Any) -> int:
        tries.append(1)
        raise StorageUnavailable("database unavailable: connection refused")

    try:
        monkeypatch.setattr(oversize, "queue_notices", away)
        for _ in range(3):
            assert run_once(app, outage) == 0
        assert len(tries) == 1 and outage.down  # waited out, not tried every round
        assert [r for r in caplog.records if r.exc_info] == []
        said = [r for r in caplog.records if "database unavailable" in r.getMessage()]
        assert len(said) == 1
        monkeypatch.undo()
        outage.next_try = 0.0  # its wait is over
        assert run_once(app, outage) == 0  # nothing to tell, and a success
        assert not outage.down
    finally:
        app.db.dispose()
