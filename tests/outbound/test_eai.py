"""Customers with internationalised addresses (RFC 6531/6532), end to end.

Our listeners take SMTPUTF8, so jörg@example.de can open a ticket; his
acknowledgement and the agents' answers must reach him too. A local part beyond
ASCII has no ASCII form: such mail goes out with SMTPUTF8 and its header fields
in UTF-8, to a relay that offers SMTPUTF8; a relay that does not fails it for
good, with the reason, and the agent whose answer it was is told. A customer
whose only non-ASCII is the domain (anna@bücher.example) still gets plain 7-bit
mail at the domain's A-labels.
"""

from __future__ import annotations

import email
import email.policy
import smtplib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import dkim
import pytest
from click.testing import CliRunner
from sqlalchemy import select

from maildesk.app import App
from maildesk.cli import main
from maildesk.config import ListenerSettings
from maildesk.db.models import Contact, Event, Outbox, OutboxState, Ticket
from maildesk.outbound.dkim_sign import load_keys
from maildesk.outbound.suppression import suppress
from tests.agents.agenthelp import agent_app, client_reply, reply_address, to
from tests.conftest import FrozenClock, write_cli_config
from tests.daemon_harness import Received, RelaySink, free_port
from tests.intake.test_smtp_listener import start
from tests.mailfactory import deliver
from tests.outbound.test_dkim import dns, openssl_key

JOERG = "jörg@example.de"
ANNA_IDN = "anna@bücher.example"
ANNA_WIRE = "anna@xn--bcher-kva.example"
BOB = "bob@agents.test"
NO_SMTPUTF8 = f"the relay does not offer SMTPUTF8, needed for {JOERG}"


@dataclass
class Utf8Relay(RelaySink):
    """A real relay on loopback (offering SMTPUTF8 unless told not to) that records the
    MAIL parameters of each mail it takes (but SIZE, which smtplib gives any relay)."""

    options: list[list[str]] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.options.append([o for o in envelope.mail_options if not o.startswith("SIZE=")])
        return await super().handle_DATA(server, session, envelope)

    def to(self, address: str) -> list[Received]:
        return [mail for mail in self.received if address in mail.rcpt_tos]


@pytest.fixture
def relay() -> Iterator[Utf8Relay]:
    sink = Utf8Relay()
    sink.start()
    yield sink
    sink.stop()


@pytest.fixture
def plain_relay() -> Iterator[Utf8Relay]:
    """A relay as before RFC 6531: no SMTPUTF8."""
    sink = Utf8Relay(smtputf8=False)
    sink.start()
    yield sink
    sink.stop()


def desk(tmp_path: Path, database_url: str, clock: FrozenClock, relay: RelaySink) -> App:
    """The agents' app, its outbox sent by the daemon's sender to ``relay``."""
    return agent_app(
        tmp_path, database_url, clock, outbound={"transport": "smtp", "relay_port": relay.port}
    )


def eai_mail(sender: str, subject: str, body: str, message_id: str) -> bytes:
    """A customer's mail as an EAI mail client writes it: header fields in UTF-8."""
    msg = EmailMessage(policy=email.policy.SMTPUTF8)
    msg["From"] = sender
    msg["To"] = "support@example.com"
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{message_id}>"
    msg["Date"] = "Mon, 02 Mar 2026 08:00:00 +0000"
    msg.set_content(body)
    return msg.as_bytes()


def by_smtp(app: App, raw: bytes, mail_from: str, rcpt: str = "support@example.com") -> None:
    """Hand ``raw`` to our real SMTP listener with SMTPUTF8, then run the worker."""
    port = free_port()
    controller: Any = start(app, ListenerSettings(protocol="smtp", port=port))
    try:
        with smtplib.SMTP("127.0.0.1", port) as client:
            client.sendmail(mail_from, [rcpt], raw, mail_options=["SMTPUTF8", "BODY=8BITMIME"])
    finally:
        controller.stop()
    app.worker().drain()


def parsed(raw: bytes) -> EmailMessage:
    """An RFC 6532 message as a reader sees it: its header fields decoded as UTF-8."""
    msg = email.message_from_string(raw.decode("utf-8"), policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def header_lines(raw: bytes, name: bytes) -> bytes:
    head = raw.partition(b"\r\n\r\n")[0]
    unfolded = head.replace(b"\r\n ", b" ").replace(b"\r\n\t", b" ")
    return b"\n".join(line for line in unfolded.split(b"\r\n") if line.startswith(name + b":"))


def text_of(msg: EmailMessage) -> str:
    body = msg.get_body(("plain",))
    assert body is not None
    return str(body.get_content())


def jörg_opens_a_ticket(app: App) -> None:
    raw = eai_mail(f"Jörg Müller <{JOERG}>", "Drucker brennt", "Mein Drucker brennt.\n", "j1@x.de")
    by_smtp(app, raw, JOERG)


def bob_answers(app: App, body: str) -> None:
    [notice] = to(app, BOB, "new_ticket")
    deliver(app, client_reply(notice, body), rcpt=(reply_address(notice),), mail_from=BOB)


def test_a_customer_with_a_utf8_address_gets_his_acknowledgement_with_smtputf8(
    tmp_path: Path, database_url: str, clock: FrozenClock, relay: Utf8Relay
) -> None:
    """Through our listener in, through the relay out: the envelope names jörg as he is,
    the mail is given with SMTPUTF8, and its To is RFC 6532 UTF-8, not an encoded-word."""
    app = desk(tmp_path, database_url, clock, relay)
    jörg_opens_a_ticket(app)
    with app.db.transaction() as session:
        [ticket] = session.scalars(select(Ticket)).all()
        requester = session.get(Contact, ticket.requester_id)
        assert requester is not None and requester.email == JOERG

    app.sender().drain()
    [ack] = relay.to(JOERG)
    assert ack.rcpt_tos == [JOERG]
    assert ack.mail_from.startswith("support+") and ack.mail_from.isascii()  # VERP stays ASCII
    assert relay.options[relay.received.index(ack)] == ["SMTPUTF8", "BODY=8BITMIME"]
    assert header_lines(ack.raw, b"To") == "To: Jörg Müller <jörg@example.de>".encode()
    msg = parsed(ack.raw)
    assert [(a.display_name, a.username, a.domain) for a in msg["To"].addresses] == [
        ("Jörg Müller", "jörg", "example.de")
    ]
    assert str(msg["Reply-To"]).isascii() and "#1]" in str(msg["Subject"])
    assert "[ref:md-1-" in text_of(msg)
    with app.db.transaction() as session:
        assert [r.state for r in session.scalars(select(Outbox))] == [OutboxState.SENT] * 2


def test_an_agents_answer_reaches_the_utf8_customer_and_his_reply_threads(
    tmp_path: Path, database_url: str, clock: FrozenClock, relay: Utf8Relay
) -> None:
    app = desk(tmp_path, database_url, clock, relay)
    jörg_opens_a_ticket(app)
    app.sender().drain()
    bob_answers(app, "Hallo Jörg,\n\nbitte ziehen Sie den Stecker.\n")
    app.sender().drain()

    _ack, answer = relay.to(JOERG)
    assert relay.options[relay.received.index(answer)] == ["SMTPUTF8", "BODY=8BITMIME"]
    msg = parsed(answer.raw)
    assert "bitte ziehen Sie den Stecker." in text_of(msg)
    assert "bob@agents.test" not in answer.raw.decode("utf-8")
    assert msg["To"].addresses[0].addr_spec == JOERG

    # He answers from his mail client without References: his address and the
    # subject find the ticket (rule 6), and tickets show names him as he is.
    reply = eai_mail(f"Jörg Müller <{JOERG}>", "AW: Drucker brennt", "Danke!\n", "j2@x.de")
    by_smtp(app, reply, JOERG)
    with app.db.transaction() as session:
        assert len(session.scalars(select(Ticket)).all()) == 1
    config = write_cli_config(tmp_path / "cli.toml", tmp_path / "cli", app.settings.database_url)
    shown = CliRunner().invoke(main, ["--config", str(config), "tickets", "show", "1"])
    assert shown.exit_code == 0, shown.output
    assert JOERG in shown.output and "Danke!" in shown.output


def test_without_smtputf8_at_the_relay_the_mail_fails_with_why_and_the_agent_is_told(
    tmp_path: Path, database_url: str, clock: FrozenClock, plain_relay: Utf8Relay
) -> None:
    app = desk(tmp_path, database_url, clock, plain_relay)
    jörg_opens_a_ticket(app)
    app.sender().drain()
    bob_answers(app, "Hallo Jörg,\n\nbitte ziehen Sie den Stecker.\n")
    app.sender().drain()  # the answer fails; Bob's notice is queued
    app.sender().drain()  # and goes out

    assert plain_relay.to(JOERG) == []
    with app.db.transaction() as session:
        rows = {r.purpose: r for r in session.scalars(select(Outbox)) if r.recipients == [JOERG]}
        assert set(rows) == {"ack", "agent_reply"}
        assert all(r.state is OutboxState.FAILED for r in rows.values())
        assert all(r.last_error == NO_SMTPUTF8 for r in rows.values())
        failed = session.scalars(select(Event.reason).where(Event.kind == "outbound_failed"))
        assert any(NO_SMTPUTF8 in reason for reason in failed)
    [notice] = [m for m in plain_relay.to(BOB) if b"NOT delivered" in m.raw]
    text = text_of(parsed(notice.raw))
    assert f"NOT delivered to: {JOERG}" in text and NO_SMTPUTF8 in text
    assert "bitte ziehen Sie den Stecker." in text


def test_only_mail_that_needs_it_goes_with_smtputf8_an_idn_domain_stays_7bit(
    tmp_path: Path, database_url: str, clock: FrozenClock, relay: Utf8Relay
) -> None:
    """On the same relay, anna@bücher.example's acknowledgement is 7-bit mail to the
    A-label domain without SMTPUTF8; jörg's goes with it."""
    app = desk(tmp_path, database_url, clock, relay)
    anna = eai_mail(f"Anna <{ANNA_IDN}>", "Frage", "Eine Frage.\n", "a1@x.test")
    deliver(app, anna, mail_from=ANNA_IDN)
    jörg_opens_a_ticket(app)
    app.sender().drain()

    [to_anna] = relay.to(ANNA_WIRE)
    assert relay.options[relay.received.index(to_anna)] == []
    assert to_anna.raw.isascii()
    assert header_lines(to_anna.raw, b"To") == f"To: Anna <{ANNA_WIRE}>".encode()
    [to_jörg] = relay.to(JOERG)
    assert relay.options[relay.received.index(to_jörg)] == ["SMTPUTF8", "BODY=8BITMIME"]


def test_the_maildir_transport_writes_the_utf8_mail_as_it_is(
    tmp_path: Path, database_url: str, clock: FrozenClock
) -> None:
    maildir = tmp_path / "outbox-maildir"
    app = agent_app(
        tmp_path, database_url, clock, outbound={"transport": "maildir", "maildir": str(maildir)}
    )
    jörg_opens_a_ticket(app)
    app.sender().drain()
    written = [path.read_bytes() for path in (maildir / "new").iterdir()]
    [ack] = [raw for raw in written if f"X-Maildesk-Rcpt: {JOERG}".encode() in raw]
    assert header_lines(ack, b"To") == "To: Jörg Müller <jörg@example.de>".encode()
    assert "#1]" in str(parsed(ack)["Subject"])


def test_a_utf8_acknowledgement_is_dkim_signed_and_verifies_at_the_relay(
    tmp_path: Path, database_url: str, clock: FrozenClock, relay: Utf8Relay
) -> None:
    key = openssl_key(tmp_path / "example.com.key", "genrsa", "2048")
    keys = [{"domain": "example.com", "selector": "md1", "private_key_file": str(key)}]
    outbound = {"transport": "smtp", "relay_port": relay.port, "dkim": keys}
    app = agent_app(tmp_path, database_url, clock, outbound=outbound)
    records = {k.dns_name: k.txt_value for k in load_keys(app.settings)}
    jörg_opens_a_ticket(app)
    app.sender().drain()
    [ack] = relay.to(JOERG)
    assert ack.raw.startswith(b"DKIM-Signature:")
    assert dkim.verify(ack.raw, dnsfunc=dns(records))
    changed = ack.raw.replace("Jörg Müller".encode(), "Jürg Müller".encode(), 1)
    assert not dkim.verify(changed, dnsfunc=dns(records))


def test_an_idn_customer_s_acknowledgements_are_rate_limited_and_suppressed_by_wire_address(
    tmp_path: Path, database_url: str, clock: FrozenClock, relay: Utf8Relay
) -> None:
    """The outbox and the bounces know anna by her A-labels, her contact by its U-labels:
    the per-sender limit (5 an hour) and a suppression still apply to her."""
    app = desk(tmp_path, database_url, clock, relay)
    for n in range(6):
        mail = eai_mail(f"Anna <{ANNA_IDN}>", f"Frage {n}", "Eine Frage.\n", f"a{n}@x.test")
        deliver(app, mail, mail_from=ANNA_IDN)
    with app.db.transaction() as session:
        acks = session.scalars(select(Outbox).where(Outbox.purpose == "ack")).all()
        assert [row.recipients for row in acks] == [[ANNA_WIRE]] * 5
        skipped = session.scalars(select(Event.reason).where(Event.kind == "ack_skipped")).all()
        assert any("rate limit" in reason for reason in skipped)
        suppress(session, ANNA_WIRE, clock.now + timedelta(days=30), "no such mailbox", clock.now)

    clock.advance(hours=2)
    deliver(app, eai_mail(f"Anna <{ANNA_IDN}>", "Noch eine", "?\n", "a9@x.test"))
    with app.db.transaction() as session:
        assert len(session.scalars(select(Outbox).where(Outbox.purpose == "ack")).all()) == 5
        skipped = session.scalars(select(Event.reason).where(Event.kind == "ack_skipped")).all()
        assert any(f"{ANNA_IDN} is suppressed" in reason for reason in skipped)
