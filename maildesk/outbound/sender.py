"""Drains the outbox: claims due rows, hands them to a transport, records the result.

A row is claimed in its own transaction before sending and marked sent right
after, so each mail is sent once in normal operation; a crash in between can
repeat it, and then only with the same bytes and Message-ID.

A claim older than the claim timeout counts as abandoned (its node died) and
may be taken by another node. So the claim is renewed just before each
delivery (a row that waited in a batch behind slow deliveries and was taken
meanwhile is left to its new holder) and kept fresh while the delivery runs,
however long a large mail takes to a slow relay.
"""

from __future__ import annotations

import contextlib
import logging
import os
import smtplib
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import NamedTuple, Protocol

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from maildesk.config import OutboundSettings
from maildesk.connection_watch import CommandOverdue, ConnectionWatch
from maildesk.db.database import (
    Database,
    is_transient,
    is_unavailable,
    retry_on_lock_conflict,
)
from maildesk.db.models import Blob, Event, Outbox, OutboxState, Suppression
from maildesk.db.outage import Outage
from maildesk.domain.address import plain_mailbox
from maildesk.metrics import Metrics
from maildesk.outbound import unrecorded
from maildesk.outbound.agent_notices import overtaken
from maildesk.outbound.compose import needs_smtputf8
from maildesk.outbound.delivery_failed import Undelivered
from maildesk.outbound.dkim_sign import DkimSigner
from maildesk.outbound.suppression import no_such_mailbox, suppress
from maildesk.outbound.unrecorded import Delivery, Failure

log = logging.getLogger("maildesk.outbound")


# A delivery may take relay_deadline_seconds plus a second per this many bytes
# of the mail.
RELAY_MIN_BYTES_PER_SECOND = 16 * 1024
# While a delivery runs its claim is renewed this many times per claim timeout.
CLAIM_RENEWALS_PER_TIMEOUT = 4
# How often the record of a delivery is tried when other nodes' transactions cross it.
RECORD_ATTEMPTS = 4


class TemporaryFailure(Exception):
    """Try again later (4xx, connection refused, timeout)."""


class PartialDelivery(TemporaryFailure):
    """The relay took the mail for some recipients and said 4xx for ``later``.

    ``refused``: what it refused for good (5xx) in the same delivery, if anything.
    """

    def __init__(self, later: list[str], reply: str, refused: PartlyRefused | None = None) -> None:
        super().__init__(reply)
        self.later = later
        self.refused = refused


class PermanentFailure(Exception):
    """Will never succeed as it is (5xx); recorded with the server's reply.

    ``dead``: recipients the relay said have no such mailbox (suppressed).
    """

    def __init__(self, reply: str, dead: list[str] | None = None) -> None:
        super().__init__(reply)
        self.dead = dead or []


class PartlyRefused(Exception):
    """The relay took the mail for some recipients and refused ``refused`` for good (5xx)."""

    def __init__(self, refused: list[str], reply: str, dead: list[str] | None = None) -> None:
        super().__init__(reply)
        self.refused = refused
        self.dead = dead or []


class MaildirUnavailable(Exception):
    """The local Maildir cannot be written (its disk is full, it is read-only): no mail's fault.

    Nothing was delivered, so nothing is recorded: the sender gives its claims
    back and waits with a growing delay, as for a database outage, instead of
    counting an attempt against each mail in turn.
    """


class Transport(Protocol):
    def send(self, envelope_from: str, recipients: list[str], raw: bytes) -> None: ...


class MaildirTransport:
    """The embedded default: outbound mail lands in a local Maildir to look at."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def send(self, envelope_from: str, recipients: list[str], raw: bytes) -> None:
        """Deliver as a Maildir delivery agent does: write in tmp/, fsync, rename into new/.

        The row is marked sent once this returns, so the file must survive a
        power loss (Python's mailbox.Maildir does not fsync). Raises
        :class:`MaildirUnavailable` when the file cannot be written whole (a full
        disk): what was written of it is removed, nothing is in ``new/``.
        """
        eol = b"\r\n" if b"\r\n" in raw[:4096] else b"\n"  # the message's own line ends
        trace = f"Return-Path: <{envelope_from}>", f"X-Maildesk-Rcpt: {', '.join(recipients)}"
        data = b"".join(line.encode() + eol for line in trace) + raw
        name = f"{time.time_ns()}.M{uuid.uuid4().hex}P{os.getpid()}.{socket.gethostname()}"
        tmp = self.path / "tmp" / name
        try:
            for sub in ("tmp", "new", "cur"):
                (self.path / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.rename(tmp, self.path / "new" / name)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise MaildirUnavailable(f"cannot write to {self.path}: {exc.strerror or exc}") from exc
        directory = os.open(self.path / "new", os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


class SmtpTransport:
    def __init__(
        self, settings: OutboundSettings, password: str, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self.settings = settings
        self.password = password
        self.ssl_context = ssl_context or ssl.create_default_context()
        self._lock = threading.Lock()
        self._watches: set[ConnectionWatch] = set()

    def cut(self) -> None:
        """Cut the deliveries in progress (on stop): each fails as a temporary failure.

        The mail stays queued and is sent again, with the same bytes and
        Message-ID, however far the relay had got with it.
        """
        with self._lock:
            watches = list(self._watches)
        for watch in watches:
            watch.cut()

    def _connect(self, watch: ConnectionWatch) -> smtplib.SMTP:
        s = self.settings
        client: smtplib.SMTP
        if s.relay_security == "tls":
            client = smtplib.SMTP_SSL(timeout=s.relay_timeout_seconds, context=self.ssl_context)
        else:
            client = smtplib.SMTP(timeout=s.relay_timeout_seconds)
        watch.attach(lambda: client.sock)  # the greeting, too, is within the deadline
        client.connect(s.relay_host, s.relay_port)
        client.ehlo_or_helo_if_needed()
        if s.relay_security == "starttls":
            client.starttls(context=self.ssl_context)
            client.ehlo()
        if s.relay_user:
            client.login(s.relay_user, self.password)
        return client

    def send(self, envelope_from: str, recipients: list[str], raw: bytes) -> None:
        """Hand one mail to the relay within ``relay_deadline_seconds`` (and time for its size).

        The socket timeout bounds only the silence between two reads; the
        deadline bounds the whole delivery, so a relay that trickles its
        replies cannot stall the outbox.
        """
        for_size = len(raw) / RELAY_MIN_BYTES_PER_SECOND
        watch = ConnectionWatch(self.settings.relay_deadline_seconds, "relay_deadline_seconds")
        with self._lock:
            self._watches.add(watch)
        try:
            with watch.command("delivery to the relay", extra_seconds=for_size):
                self._deliver(watch, envelope_from, recipients, raw)
        except CommandOverdue as exc:
            raise TemporaryFailure(str(exc)) from exc
        finally:
            with self._lock:
                self._watches.discard(watch)

    def _deliver(
        self, watch: ConnectionWatch, envelope_from: str, recipients: list[str], raw: bytes
    ) -> None:
        try:
            client = self._connect(watch)
        except smtplib.SMTPAuthenticationError as exc:
            raise TemporaryFailure(
                f"relay refused our login: {exc.smtp_code} {exc.smtp_error!r}"
            ) from exc
        except (OSError, smtplib.SMTPException) as exc:
            raise TemporaryFailure(f"cannot reach relay: {exc}") from exc
        needs = smtputf8_needed_for(envelope_from, recipients, raw)
        try:
            options: list[str] = []
            if needs is not None:
                if not client.has_extn("smtputf8"):
                    raise PermanentFailure(f"the relay does not offer SMTPUTF8, needed for {needs}")
                options = ["SMTPUTF8", "BODY=8BITMIME"]  # RFC 6531 s. 3.4
            refused = client.sendmail(envelope_from, recipients, raw, mail_options=options)
        except UnicodeEncodeError as exc:  # not for smtputf8_needed_for; no relay takes it
            raise PermanentFailure(
                f"cannot give the relay {[envelope_from, *recipients]!r}: {exc}"
            ) from exc
        except smtplib.SMTPRecipientsRefused as exc:
            reply = _replies(exc.recipients)
            later, gone = _split_refusals(exc.recipients, "refused")
            if not later:
                raise PermanentFailure(reply, _dead(exc.recipients)) from exc
            if gone is not None:  # 4xx for some, 5xx for others: only the first are tried again
                raise PartialDelivery(later, reply, gone) from exc
            raise TemporaryFailure(reply) from exc
        except smtplib.SMTPResponseException as exc:
            reply = f"{exc.smtp_code} {exc.smtp_error!r}"
            if exc.smtp_code >= 500:
                raise PermanentFailure(reply) from exc
            raise TemporaryFailure(reply) from exc
        except (OSError, smtplib.SMTPException) as exc:
            raise TemporaryFailure(f"relay connection failed: {exc}") from exc
        finally:
            try:
                client.quit()
            except (OSError, smtplib.SMTPException):
                client.close()
        if refused:
            replies = _replies(refused)
            log.warning("relay refused some recipients: %s", replies)
            # Those refused for good are recorded (a dead mailbox suppressed) now, not retried.
            later, for_good = _split_refusals(refused, "taken for the other recipients")
            if later:  # the others have it; these are owed it still
                raise PartialDelivery(later, f"taken for the other recipients; {replies}", for_good)
            assert for_good is not None
            raise for_good


def smtputf8_needed_for(envelope_from: str, recipients: list[str], raw: bytes) -> str | None:
    """What needs SMTPUTF8 in this mail (RFC 6531): an address beyond ASCII in the
    envelope, else header fields in UTF-8 (RFC 6532); None when it is plain 7-bit mail.
    """
    for address in (envelope_from, *recipients):
        if needs_smtputf8(address):
            return address
    ends = [at for at in (raw.find(b"\r\n\r\n"), raw.find(b"\n\n")) if at >= 0]
    if not raw[: min(ends, default=len(raw))].isascii():
        return "its header fields in UTF-8"
    return None


def _dead(refused: dict[str, tuple[int, bytes]]) -> list[str]:
    """The refused recipients whose reply says their mailbox does not exist."""
    return [rcpt for rcpt, (code, reply) in refused.items() if no_such_mailbox(code, reply)]


def _replies(refused: dict[str, tuple[int, bytes]]) -> str:
    """The relay's answers, one ``rcpt: code 'text'`` per recipient."""
    return "; ".join(f"{rcpt}: {code} {msg!r}" for rcpt, (code, msg) in refused.items())


def _split_refusals(
    refused: dict[str, tuple[int, bytes]], context: str
) -> tuple[list[str], PartlyRefused | None]:
    """The recipients refused for now (4xx: tried again), and those refused for good (5xx)
    as a :class:`PartlyRefused` whose text starts with ``context``, if there are any."""
    later = [rcpt for rcpt, (code, _msg) in refused.items() if code < 500]
    never = {rcpt: said for rcpt, said in refused.items() if said[0] >= 500}
    if not never:
        return later, None
    return later, PartlyRefused(list(never), f"{context}; {_replies(never)}", _dead(never))


class Attempt(NamedTuple):
    """What one delivery attempt did, recorded (again, after a lock conflict) from these."""

    live: list[str]  # the recipients it went to: those not suppressed
    blocked: set[str]  # the suppressed ones
    error: Exception | None
    refused: PartlyRefused | None  # taken for some recipients, refused for others

    def journal_form(self) -> Delivery:
        """As :mod:`maildesk.outbound.unrecorded` keeps it on disk."""
        error: Failure | None = None
        if isinstance(self.error, PartialDelivery):
            error = Failure("partial", str(self.error), self.error.later, [])
        elif isinstance(self.error, PermanentFailure):
            error = Failure("permanent", str(self.error), [], self.error.dead)
        elif self.error is not None:
            error = Failure("temporary", str(self.error), [], [])
        refused = None
        if self.refused is not None:
            r = self.refused
            refused = Failure("refused", str(r), r.refused, r.dead)
        return Delivery(self.live, sorted(self.blocked), error, refused)

    @classmethod
    def from_journal(cls, delivery: Delivery) -> Attempt:
        error: Exception | None = None
        if (failure := delivery.error) is not None:
            if failure.kind == "partial":
                error = PartialDelivery(failure.recipients, failure.reply)
            elif failure.kind == "permanent":
                error = PermanentFailure(failure.reply, failure.dead)
            else:
                error = TemporaryFailure(failure.reply)
        refused = None
        if (r := delivery.refused) is not None:
            refused = PartlyRefused(r.recipients, r.reply, r.dead)
        return cls(delivery.live, set(delivery.blocked), error, refused)


@dataclass
class DrainResult:
    sent: int = 0
    retried: int = 0
    failed: int = 0
    suppressed: int = 0
    dropped: int = 0  # agent notices held for a shift that the ticket overtook
    # Seconds from queued to sent, of each mail sent (for the metrics).
    delivery_seconds: list[float] = field(default_factory=list)


# Told, in the sender's transaction, of a mail our relay refused or we gave up on
# (maildesk.outbound.delivery_failed.DeliveryFailedNotifier).
UndeliveredHook = Callable[[Session, Outbox, Undelivered], None]


class OutboxSender:
    def __init__(
        self,
        db: Database,
        transport: Transport,
        settings: OutboundSettings,
        clock: Callable[[], datetime],
        node: str,
        claim_timeout: timedelta = timedelta(minutes=10),
        *,
        dkim: DkimSigner | None = None,
        undelivered: UndeliveredHook | None = None,
        metrics: Metrics | None = None,
        journal: Path | None = None,
    ) -> None:
        self.db = db
        self.transport = transport
        self.settings = settings
        self.clock = clock
        self.node = node
        self.claim_timeout = claim_timeout
        self.dkim = dkim  # signs each attempt's bytes; the stored blob stays unsigned
        self.undelivered = undelivered
        self.metrics = metrics
        self.outage = Outage(log, "outbox sender")
        self.maildir_outage = Outage(log, "outbox sender", resource="the Maildir")
        # What a database outage kept from being written: deliveries made (recorded
        # before anything else, so the mail is not sent again; kept in ``journal``
        # too, for a restart) and claims not sent.
        self.journal = journal
        kept = unrecorded.load(journal) if journal is not None else {}
        self._unrecorded = {i: Attempt.from_journal(d) for i, d in kept.items()}
        self._journal_stale = False  # the journal could not be written (a full disk)
        self._unsent: set[int] = set()

    def cut_deliveries(self) -> None:
        """Cut a delivery still running (on stop, after a grace): it is retried later."""
        cut = getattr(self.transport, "cut", None)
        if cut is not None:
            cut()

    def release_own_claims(self) -> int:
        """At start: mail this node was sending when it died is sent again (same Message-ID).

        First the deliveries the relay took but the database could not record
        before the stop are recorded (from the journal): those are not sent again.
        """
        if self.journal is not None:
            unrecorded.warn_of_others(self.journal)
        self._record_unrecorded(DrainResult())
        with self.db.transaction() as session:
            rows = session.scalars(
                select(Outbox).where(
                    Outbox.state == OutboxState.QUEUED, Outbox.claimed_by == self.node
                )
            ).all()
            for row in rows:
                row.claimed_by = row.claimed_at = None
            return len(rows)

    def _claim(self, limit: int) -> list[int]:
        now = self.clock()
        stmt = (
            select(Outbox)
            .where(
                Outbox.state == OutboxState.QUEUED,
                Outbox.next_attempt_at <= now,
                or_(Outbox.claimed_at.is_(None), Outbox.claimed_at < now - self.claim_timeout),
            )
            .order_by(Outbox.id)
            .limit(limit)
        )
        if not self.db.is_sqlite:
            stmt = stmt.with_for_update(skip_locked=True)
        with self.db.transaction() as session:
            rows = list(session.scalars(stmt))
            for row in rows:
                row.claimed_by, row.claimed_at = self.node, now
            return [row.id for row in rows]

    def _renew_claim(self, outbox_id: int) -> bool:
        """Make this node's claim on a queued row fresh; False if it is no longer ours."""
        with self.db.transaction() as session:
            renewed = session.execute(
                update(Outbox)
                .where(
                    Outbox.id == outbox_id,
                    Outbox.state == OutboxState.QUEUED,
                    Outbox.claimed_by == self.node,
                )
                .values(claimed_at=self.clock())
            )
            return bool(renewed.rowcount)  # type: ignore[attr-defined]

    @contextlib.contextmanager
    def _claim_kept(self, outbox_id: int) -> Iterator[None]:
        """Renew the claim in the background while the body runs (a long delivery)."""
        every = self.claim_timeout.total_seconds() / CLAIM_RENEWALS_PER_TIMEOUT
        done = threading.Event()

        def keep() -> None:
            while not done.wait(every):
                try:
                    self._renew_claim(outbox_id)
                except Exception:  # the database is away: the delivery goes on regardless
                    log.warning("outbox=%s: could not renew the claim", outbox_id, exc_info=True)

        renewer = threading.Thread(target=keep, name=f"outbox-claim-{outbox_id}", daemon=True)
        renewer.start()
        try:
            yield
        finally:
            done.set()
            renewer.join()

    def _suppressed(self, recipients: list[str]) -> set[str]:
        """The recipients (lower case) on the suppression list, in any spelling it keeps."""
        now = self.clock()
        forms = {r.lower(): {r.lower(), plain_mailbox(r)} for r in recipients}
        with self.db.transaction() as session:
            rows = set(
                session.scalars(
                    select(Suppression.address).where(
                        and_(
                            Suppression.address.in_(set().union(*forms.values())),
                            Suppression.until > now,
                        )
                    )
                )
            )
        return {r for r, spellings in forms.items() if spellings & rows}

    def drain(
        self, limit: int = 50, should_stop: Callable[[], bool] = lambda: False
    ) -> DrainResult:
        """Send up to ``limit`` due mails; on ``should_stop`` only the one in hand is finished.

        The claims not yet sent go back at once, so a stop (SIGTERM) waits for
        one delivery, not for a whole batch at a slow relay.
        """
        result = DrainResult()
        if not (self.outage.ready() and self.maildir_outage.ready()):  # wait out the backoff
            return result
        try:
            self._catch_up(result)
            claimed = self._claim(limit)
        except Exception as exc:
            if not is_unavailable(exc):
                raise
            self.outage.failed(exc)
            return result
        self.outage.succeeded()
        for n, outbox_id in enumerate(claimed):
            try:
                if should_stop():
                    self._release(claimed[n:])
                    break
                dropped = result.dropped
                self._send_one(outbox_id, result)
                if result.dropped > dropped and self.metrics is not None:
                    self.metrics.delivered("dropped")  # committed by now
            except MaildirUnavailable as exc:
                self.maildir_outage.failed(exc)
                self._give_back(claimed[n:])
                break
            except Exception as exc:
                if is_transient(exc):  # given back (or recorded) at the next drain
                    self._unsent.update(i for i in claimed[n:] if i not in self._unrecorded)
                if not is_unavailable(exc):
                    raise
                self.outage.failed(exc)
                break
        return result

    def _give_back(self, outbox_ids: list[int]) -> None:
        """Claims not sent go back now, or at the next drain if the database cannot take it."""
        try:
            self._release(outbox_ids)
        except Exception as exc:
            if not is_transient(exc):
                raise
            self._unsent.update(outbox_ids)

    def _catch_up(self, result: DrainResult) -> None:
        """Write what an outage kept from being written; raises while it lasts."""
        if self._journal_stale:
            self._keep_unrecorded()
        self._record_unrecorded(result)
        if self._unsent:
            self._release(sorted(self._unsent))
            self._unsent.clear()

    def _record_unrecorded(self, result: DrainResult) -> None:
        for outbox_id, attempt in list(self._unrecorded.items()):
            self._record(outbox_id, attempt, result)
            del self._unrecorded[outbox_id]
            self._keep_unrecorded()
            log.info("outbox=%s: delivery recorded after the database came back", outbox_id)

    def _keep_unrecorded(self) -> None:
        """The journal says what ``_unrecorded`` says (nothing written when it is off).

        A journal that cannot be written (its disk is full) is said once and
        tried again at each drain: meanwhile this process still knows what it
        delivered, only a stop before the database records it sends it again.
        """
        if self.journal is None:
            return
        forms = {i: a.journal_form() for i, a in self._unrecorded.items()}
        try:
            unrecorded.save(self.journal, forms)
        except OSError as exc:
            if not self._journal_stale:
                log.error(
                    "%s: cannot write the deliveries not yet recorded (%s): a stop before "
                    "the database records outbox %s sends them again; trying again",
                    self.journal,
                    exc.strerror or exc,
                    ", ".join(str(i) for i in sorted(self._unrecorded)),
                )
            self._journal_stale = True
            return
        if self._journal_stale:
            log.warning(
                "%s: the journal of deliveries not yet recorded is up to date again", self.journal
            )
        self._journal_stale = False

    def _release(self, outbox_ids: list[int]) -> None:
        with self.db.transaction() as session:
            session.execute(
                update(Outbox)
                .where(
                    Outbox.id.in_(outbox_ids),
                    Outbox.state == OutboxState.QUEUED,
                    Outbox.claimed_by == self.node,
                )
                .values(claimed_by=None, claimed_at=None)
            )

    def _send_one(self, outbox_id: int, result: DrainResult) -> None:
        if not self._renew_claim(outbox_id):
            log.info(
                "outbox=%s: taken over by another node while it waited in this batch", outbox_id
            )
            return
        with self.db.transaction() as session:
            row = session.get(Outbox, outbox_id)
            if row is None:  # erased (`maildesk privacy`) since the claim was renewed
                log.info("outbox=%s: erased before it was sent", outbox_id)
                return
            if (why := overtaken(session, row)) is not None:
                self._drop(session, row, why)
                result.dropped += 1
                return
            blob = session.get(Blob, row.raw_sha256)
            if blob is None:  # erased after the row was read (PostgreSQL: each statement
                # sees what is committed when it runs): nothing to send, nothing to record.
                # A rewritten mail (a spam digest without an erased person) is still
                # queued with new bytes: our claim goes, so the next drain sends it.
                log.info("outbox=%s: its bytes changed before it was sent", outbox_id)
                session.execute(
                    update(Outbox)
                    .where(Outbox.id == outbox_id, Outbox.claimed_by == self.node)
                    .values(claimed_by=None, claimed_at=None)
                )
                return
            raw = bytes(blob.data)
            envelope_from, recipients = row.envelope_from, list(row.recipients)
            context = f"outbox={row.id} ticket={row.ticket_id}"
        blocked = self._suppressed(recipients)
        live = [r for r in recipients if r.lower() not in blocked]
        error: Exception | None = None
        refused: PartlyRefused | None = None
        if live:
            wire = self.dkim.sign(raw, context) if self.dkim is not None else raw
            try:
                with self._claim_kept(outbox_id):
                    self.transport.send(envelope_from, live, wire)
            except PartlyRefused as exc:  # sent, but not to everyone
                refused = exc
            except PartialDelivery as exc:  # sent to some, later for some, never for some
                error, refused = exc, exc.refused
            except (TemporaryFailure, PermanentFailure) as exc:
                error = exc
            self.maildir_outage.succeeded()  # a transport that answered at all
        attempt = Attempt(live, blocked, error, refused)
        try:
            self._record(outbox_id, attempt, result)
        except Exception as exc:
            if is_transient(exc):
                # Sent but not recorded: the claim stays this node's, recorded at the
                # next drain before any claim, so the mail is not sent a second time.
                self._unrecorded[outbox_id] = attempt
                self._keep_unrecorded()
            raise

    def _record(self, outbox_id: int, attempt: Attempt, result: DrainResult) -> None:
        """Record what the delivery did, in one transaction; again after a lock conflict.

        The mail is out (or refused) already: were this transaction lost to a
        deadlock with another node's (a bounce for the same address, a merge), the
        row would stay claimed and be delivered a second time once its claim
        expired. Rolled back whole, it is recomputed from the same facts.
        """

        def once() -> DrainResult:
            counted = DrainResult()
            self._record_once(outbox_id, attempt, counted)
            return counted

        what = f"outbox={outbox_id}: recording the delivery"
        counted = retry_on_lock_conflict(once, attempts=RECORD_ATTEMPTS, what=what)
        for name in ("sent", "retried", "failed", "suppressed"):
            setattr(result, name, getattr(result, name) + getattr(counted, name))
        self._count(counted)

    def _count(self, done: DrainResult) -> None:
        """One recorded attempt in the metrics (after its commit)."""
        if self.metrics is None:
            return
        for seconds in done.delivery_seconds:
            self.metrics.delivered("sent", seconds)
        for result, count in (
            ("deferred", done.retried),
            ("failed", done.failed),
            ("suppressed", done.suppressed),
        ):
            for _ in range(count):
                self.metrics.delivered(result)

    def _record_once(self, outbox_id: int, attempt: Attempt, result: DrainResult) -> None:
        live, blocked, error, refused = attempt
        with self.db.transaction() as session:
            row = session.get(Outbox, outbox_id)
            if row is None:  # erased (`maildesk privacy`) while it was being delivered
                log.info("outbox=%s: erased while it was delivered; nothing to record", outbox_id)
                return
            if row.state != OutboxState.QUEUED:
                # Recorded already: a journal entry whose record committed just before
                # the daemon died, or a delivery of another node after our claim ran out.
                log.info("outbox=%s: already %s; not recorded again", outbox_id, row.state)
                return
            row.attempts += 1
            row.claimed_by = row.claimed_at = None
            now = self.clock()
            if not live:
                row.state, row.last_error = (
                    OutboxState.SUPPRESSED,
                    f"suppressed: {', '.join(blocked)}",
                )
                result.suppressed += 1
                log.info(
                    "outbox=%s ticket=%s suppressed: %s", row.id, row.ticket_id, row.last_error
                )
            elif error is None:
                row.state, row.sent_at = OutboxState.SENT, now
                notes = [f"suppressed: {', '.join(blocked)}"] if blocked else []
                if refused is not None:
                    notes.append(str(refused))
                    self._not_delivered(
                        session, row, refused.refused, str(refused), now, refused.dead
                    )
                row.last_error = "; ".join(notes)[:4000] or None
                result.sent += 1
                result.delivery_seconds.append((now - row.created_at).total_seconds())
                log.info("outbox=%s ticket=%s sent to %s", row.id, row.ticket_id, ", ".join(live))
            elif isinstance(error, PermanentFailure) or self._too_old(row, now):
                row.state, row.last_error = OutboxState.FAILED, str(error)[:4000]
                result.failed += 1
                why = "" if isinstance(error, PermanentFailure) else "gave up retrying: "
                dead = error.dead if isinstance(error, PermanentFailure) else []
                failed = live
                if isinstance(error, PartialDelivery):  # the others have it
                    failed = [*error.later, *(refused.refused if refused is not None else [])]
                    dead = refused.dead if refused is not None else []
                self._not_delivered(session, row, failed, f"{why}{error}", now, dead)
                log.warning(
                    "outbox=%s ticket=%s failed permanently: %s", row.id, row.ticket_id, error
                )
            else:
                if isinstance(error, PartialDelivery):
                    row.recipients = error.later  # the same mail, to those still owed it
                    if refused is not None:  # and never to these: said, and not retried
                        self._not_delivered(
                            session, row, refused.refused, str(refused), now, refused.dead
                        )
                row.last_error = str(error)[:4000]
                row.next_attempt_at = now + self.backoff(row.attempts)
                result.retried += 1
                log.info(
                    "outbox=%s ticket=%s retry at %s: %s",
                    row.id,
                    row.ticket_id,
                    row.next_attempt_at,
                    error,
                )

    def _drop(self, session: Session, row: Outbox, why: str) -> None:
        """Not sent, for good, and said on the ticket (a notice the ticket overtook)."""
        row.state, row.last_error = OutboxState.DROPPED, why[:4000]
        row.claimed_by = row.claimed_at = None
        session.add(
            Event(
                at=self.clock(),
                kind="notice_dropped",
                reason=why[:4000],
                ticket_id=row.ticket_id,
                message_pk=row.message_pk,
                data={"outbox": row.id, "purpose": row.purpose, "recipients": row.recipients},
            )
        )
        log.info("outbox=%s ticket=%s dropped: %s", row.id, row.ticket_id, why)

    def _not_delivered(
        self,
        session: Session,
        row: Outbox,
        recipients: list[str],
        why: str,
        now: datetime,
        dead: list[str],
    ) -> None:
        """Say so on the ticket, and tell the agent whose mail it was (``undelivered``).

        ``dead``: recipients our relay said have no such mailbox. Our own relay's
        answer is no one else's to forge, so they are suppressed as a bounce would.
        """
        session.add(
            Event(
                at=now,
                kind="outbound_failed",
                reason=f"{row.purpose} to {', '.join(recipients)} not delivered: {why}"[:4000],
                ticket_id=row.ticket_id,
                message_pk=row.message_pk,
                data={"outbox": row.id, "attempts": row.attempts, "recipients": recipients},
            )
        )
        until = now + timedelta(days=self.settings.suppression_days)
        # In one order on every path (the bounce's too), against crossing row locks.
        for address in sorted(dict.fromkeys(dead), key=str.lower):
            suppress(session, address, until, f"no such mailbox (outbox {row.id})", now)
            session.add(
                Event(
                    at=now,
                    kind="suppressed",
                    reason=f"{address}: no such mailbox, says our relay: "
                    f"not mailed again until {until:%Y-%m-%d}",
                    ticket_id=row.ticket_id,
                    data={"outbox": row.id},
                )
            )
        if self.undelivered is not None:
            self.undelivered(session, row, Undelivered(tuple(recipients), why, "relay"))

    def backoff(self, attempts: int) -> timedelta:
        seconds = min(
            self.settings.retry_base_seconds * 2 ** max(attempts - 1, 0),
            self.settings.retry_max_seconds,
        )
        return timedelta(seconds=seconds)

    def _too_old(self, row: Outbox, now: datetime) -> bool:
        return now - row.created_at > timedelta(hours=self.settings.give_up_after_hours)


def build_transport(settings: OutboundSettings, data_dir: Path, password: str) -> Transport:
    if settings.transport == "smtp":
        return SmtpTransport(settings, password)
    return MaildirTransport(settings.maildir or data_dir / "outbox-maildir")
