"""Hand-made messages for tests, produced the way a mail client would."""

from __future__ import annotations

import itertools
from email.message import EmailMessage
from email.utils import format_datetime

from maildesk.app import App
from maildesk.intake.store import Envelope
from maildesk.pipeline.runner import Summary

_counter = itertools.count(1)


def make_mail(
    *,
    sender: str = "Alice Customer <alice@customer.test>",
    to: str = "support@example.com",
    subject: str = "Printer on fire",
    body: str = "Hello, my printer is on fire.\n",
    message_id: str | None = None,
    in_reply_to: str | None = None,
    references: list[str] | None = None,
    cc: str | None = None,
    headers: dict[str, str] | None = None,
    date: str | None = None,
) -> bytes:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    if cc:
        msg["Cc"] = cc
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{message_id or f'm{next(_counter)}.test@customer.test'}>"
    if in_reply_to:
        msg["In-Reply-To"] = f"<{in_reply_to}>"
    if references:
        msg["References"] = " ".join(f"<{r}>" for r in references)
    if date:
        msg["Date"] = date
    else:
        from datetime import UTC, datetime

        msg["Date"] = format_datetime(datetime(2026, 3, 2, 8, 0, tzinfo=UTC))
    for name, value in (headers or {}).items():
        msg[name] = value
    msg.set_content(body)
    return msg.as_bytes()


def reply_to(original: bytes, **kwargs: object) -> bytes:
    """A reply as a client writes it: Re: subject, In-Reply-To and References."""
    import email

    parent = email.message_from_bytes(original)
    parent_id = parent["Message-ID"].strip("<> ")
    refs = [r.strip("<>") for r in (parent.get("References") or "").split()] + [parent_id]
    subject = parent["Subject"]
    kwargs.setdefault("subject", subject if subject.lower().startswith("re:") else f"Re: {subject}")
    kwargs.setdefault("in_reply_to", parent_id)
    kwargs.setdefault("references", refs)
    return make_mail(**kwargs)  # type: ignore[arg-type]


def deliver(
    app: App,
    raw: bytes,
    *,
    source: str = "smtp",
    rcpt: tuple[str, ...] = ("support@example.com",),
    mail_from: str | None = "alice@customer.test",
) -> Summary:
    """Store one message as a receiver would, then run the worker until idle."""
    app.intake().store(raw, Envelope(source=source, mail_from=mail_from, rcpt_to=rcpt))
    return app.worker().drain()
