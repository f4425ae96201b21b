"""Agents, their mail clients, and a look into the outbox, for the issue 5 tests."""

from __future__ import annotations

import email
import email.policy
import threading
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import Any

from sqlalchemy import select

from maildesk.app import App
from maildesk.db.models import Blob, Event, Outbox, Ticket
from tests.conftest import FrozenClock, make_settings
from tests.daemon_harness import Received, RelaySink

AGENTS = [
    {
        "name": "bob",
        "display_name": "Bob Agent",
        "addresses": ["bob@agents.test"],
        "groups": ["L1"],
    },
    {
        "name": "carol",
        "display_name": "Carol Agent",
        "addresses": ["carol@agents.test"],
        "groups": ["L2"],
    },
]
GROUPS = [{"name": "L1"}, {"name": "L2"}]
AGENT_ADDRESSES = {"bob@agents.test", "carol@agents.test"}


def agent_app(tmp_path: Path, database_url: str, clock: FrozenClock, **overrides: Any) -> App:
    rules = tmp_path / "rules"
    rules.mkdir(exist_ok=True)
    defaults: dict[str, Any] = {
        "agents": AGENTS,
        "groups": GROUPS,
        "routing": {"default_group": "L1", "rules_dir": str(rules)},
    }
    settings = make_settings(tmp_path, database_url, **{**defaults, **overrides})
    return App.build(settings, clock=clock)


@dataclass
class Sent:
    purpose: str
    recipients: list[str]
    raw: bytes

    @property
    def msg(self) -> EmailMessage:
        parsed = email.message_from_bytes(self.raw, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed

    @property
    def text(self) -> str:
        body = self.msg.get_body(("plain",))
        return body.get_content() if body is not None else ""


def outbox(app: App) -> list[Sent]:
    with app.db.transaction() as session:
        rows = session.execute(
            select(Outbox.purpose, Outbox.recipients, Blob.data)
            .join(Blob, Blob.sha256 == Outbox.raw_sha256)
            .order_by(Outbox.id)
        ).all()
    return [Sent(p, list(r), bytes(d)) for p, r, d in rows]


def to(app: App, address: str, purpose: str | None = None) -> list[Sent]:
    return [
        s
        for s in outbox(app)
        if address in s.recipients and (purpose is None or s.purpose == purpose)
    ]


def reply_address(notice: Sent) -> str:
    value = str(notice.msg["Reply-To"])
    return value.rpartition("<")[2].rstrip(">").strip()


def client_reply(
    notice: Sent,
    body: str,
    *,
    style: str = "thunderbird",
    sender: str = "Bob Agent <bob@agents.test>",
    to_addr: str | None = None,
    headers: dict[str, str] | None = None,
    attachment: tuple[str, str, bytes] | None = None,
) -> bytes:
    """A reply to ``notice`` as Thunderbird, Outlook or Gmail writes one (text + quote)."""
    parent = notice.msg
    original = notice.text
    quoted = "\n".join("> " + line if line else ">" for line in original.splitlines())
    date = "Mon, 2 Mar 2026 09:00:00 +0000"
    if style == "thunderbird":
        text = f"{body}\n\nOn 02.03.26 09:00, Support wrote:\n{quoted}\n"
        html = None
    elif style == "outlook":
        text = (
            f"{body}\n\n________________________________\nFrom: Support <support@example.com>\n"
            f"Sent: Monday, March 2, 2026 9:00 AM\nTo: Bob Agent <bob@agents.test>\n"
            f"Subject: {parent['Subject']}\n\n{original}\n"
        )
        html = None
    else:  # gmail: text with a quote and an HTML part with div.gmail_quote
        text = f"{body}\n\nOn Mon, Mar 2, 2026 at 9:00 AM Support <support@example.com> wrote:\n\n{quoted}\n"
        paras = "".join(f"<p>{line}</p>" for line in body.splitlines() if line)
        html = (
            f'<div dir="ltr">{paras}</div><br><div class="gmail_quote">'
            f'<div class="gmail_attr">On Mon, Mar 2, 2026 at 9:00 AM Support wrote:<br></div>'
            f'<blockquote class="gmail_quote">{original}</blockquote></div>'
        )
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to_addr or reply_address(notice)
    msg["Subject"] = "Re: " + str(parent["Subject"])
    msg["Date"] = date
    msg["Message-ID"] = make_msgid(domain="agents.test")
    msg["In-Reply-To"] = str(parent["Message-ID"])
    msg["References"] = " ".join(
        filter(None, [str(parent.get("References") or ""), str(parent["Message-ID"])])
    )
    if style == "thunderbird":
        msg["User-Agent"] = "Mozilla/5.0 Thunderbird/115.8.0"
    elif style == "outlook":
        msg["X-Mailer"] = "Microsoft Outlook 16.0"
        msg["Thread-Index"] = "AdqMxyz0123456789abcdefABCDEF=="
    for name, value in (headers or {}).items():
        msg[name] = value
    msg.set_content(text)
    if html is not None:
        msg.add_alternative(html, subtype="html")
    if attachment is not None:
        name, ctype, data = attachment
        ctype, _, charset = ctype.partition("; charset=")
        maintype, subtype = ctype.split("/")
        params = {"charset": charset} if charset else None
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=name, params=params)
    return msg.as_bytes()


def plain_mail(sender: str, to_addr: str, subject: str, body: str, **headers: str) -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, to_addr, subject
    msg["Date"] = format_datetime(__import__("datetime").datetime(2026, 3, 2, 9, 0).astimezone())
    msg["Message-ID"] = make_msgid(domain="x.test")
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    msg.set_content(body)
    return msg.as_bytes()


def ticket_number(app: App, number: int = 1) -> Ticket:
    """Ticket ``number``, detached (its fields as committed)."""
    with app.db.transaction() as session:
        ticket = session.scalars(select(Ticket).where(Ticket.number == number)).one()
        session.expunge(ticket)
        return ticket


def events_of_kind(app: App, kind: str) -> list[Event]:
    with app.db.transaction() as session:
        rows = list(session.scalars(select(Event).where(Event.kind == kind).order_by(Event.id)))
        session.expunge_all()
        return rows


def wait_for_sent(relay: RelaySink, rcpt: str, subject_part: str) -> Sent:
    """The first mail the relay got for ``rcpt`` with ``subject_part`` in its Subject,
    waited for (daemon tests)."""

    def found(got: list[Received]) -> Received | None:
        return next(
            (r for r in got if rcpt in r.rcpt_tos and subject_part in str(r.message["Subject"])),
            None,
        )

    hit = found(relay.wait_for(lambda got: found(got) is not None))
    assert hit is not None
    return Sent("", list(hit.rcpt_tos), hit.raw)


def in_thread(work: Callable[[], object]) -> Callable[[], None]:
    """Start ``work`` as another node would; give it a second (it finishes, or it waits
    for our lock). Returns what waits for it to finish."""
    done: list[object] = []
    thread = threading.Thread(target=lambda: done.append(work()))
    thread.start()
    thread.join(timeout=1.0)

    def finish() -> None:
        thread.join(timeout=60)
        assert done, "the other node did not finish"

    return finish
