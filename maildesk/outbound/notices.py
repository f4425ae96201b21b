"""Customer notices: the acknowledgement of a new ticket and the resolution notice.

Loop protection on the sending side lives here: nothing is sent for mail the
guard marked (auto-replies, bounces, lists, our own mail), to suppressed or
own addresses, or past the per-sender hourly and daily limits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.errors import HeaderParseError
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from maildesk.config import Settings
from maildesk.db import queries
from maildesk.db.models import (
    Contact,
    Direction,
    Event,
    Message,
    MessageKind,
    Outbox,
    Suppression,
    Ticket,
)
from maildesk.domain.address import elided, mailbox_key, overlong_address, plain_mailbox
from maildesk.domain.signing import AGENT_MESSAGE_ID_PREFIXES, RefPurpose
from maildesk.outbound.compose import Composer, OutboundMail, Recipient, wire_address
from maildesk.outbound.templates import TemplateRenderer

QUOTE_LIMIT = 4000
ACK_SKIPPED = "ack_skipped"
ACK_HELD = "ack_held"  # possible spam: the acknowledgement a release sends
# What a possible-spam ticket's acknowledgement was recorded as before ACK_HELD existed.
_LEGACY_HELD = "not answered: possible spam: not acknowledged until released"


@dataclass(frozen=True)
class AckDecision:
    """What was decided for a ticket's acknowledgement when it came in."""

    held: bool  # True: held back for possible spam, the rest below to send it with
    reason: str
    template: str | None = None
    dmarc_passed: bool = False
    quote: str | None = None


class Notices:
    def __init__(
        self,
        settings: Settings,
        composer: Composer,
        renderer: Callable[[], TemplateRenderer],
        clock: Callable[[], datetime],
    ) -> None:
        self.settings = settings
        self.composer = composer
        self._renderer = renderer
        self.clock = clock

    @property
    def renderer(self) -> TemplateRenderer:
        """The current templates: the daemon swaps them on SIGHUP."""
        return self._renderer()

    def support_address_for(self, ticket: Ticket) -> str:
        addresses = ticket.support_addresses or []
        return addresses[0] if addresses else self.settings.support_addresses[0]

    def from_name_for(self, ticket: Ticket) -> str:
        defaults = self.settings.address_defaults(self.support_address_for(ticket))
        return (defaults.from_name if defaults else None) or self.settings.outbound.from_name

    def variables(self, ticket: Ticket, customer: Contact, quote: str = "") -> dict[str, Any]:
        return {
            "ticket": {
                "number": ticket.number,
                "subject": ticket.subject,
                "status": str(ticket.status),
                "priority": str(ticket.priority),
                "category": ticket.category,
            },
            "customer": {"email": customer.email, "name": customer.name},
            "support": {
                "name": self.from_name_for(ticket),
                "address": self.support_address_for(ticket),
            },
            "quote": quote[:QUOTE_LIMIT],
            "reopen_days": self.reopen_days(),
            "rating": self.rating_addresses(ticket),
        }

    def reopen_days(self) -> int:
        """How many days a reply still reopens a resolved ticket, as our mails promise it.

        The reopen window, unless the SLA sweep closes resolved tickets sooner
        (``sla.auto_close.resolved_close_days``): a reply to a closed ticket
        opens a new one, so promising the whole window would be untrue.
        """
        days = self.settings.threading.reopen_window_days
        close = self.settings.sla.auto_close.resolved_close_days
        if self.settings.sla.enabled and close is not None:
            days = min(days, close)
        return int(days)

    def rating_addresses(self, ticket: Ticket) -> list[dict[str, Any]]:
        """Signed ``support+rate-<ticket>-<score>-<sig>@`` addresses, best score first."""
        if ticket.number is None:
            return []
        local, _, domain = self.support_address_for(ticket).rpartition("@")
        top = self.settings.agent_mail.rating_scores
        signer = self.composer.signer
        rate = RefPurpose.RATE
        return [
            {
                "score": score,
                "address": signer.reply_local_part(local, rate, ticket.number, extra=(str(score),))
                + f"@{domain}",
            }
            for score in range(top, 0, -1)
        ]

    def _event(self, session: Session, ticket: Ticket, kind: str, reason: str, **data: Any) -> None:
        session.add(
            Event(at=self.clock(), kind=kind, reason=reason, ticket_id=ticket.id, data=data)
        )

    def blocked_reason(
        self, session: Session, address: str, purpose: str, *, rate_limited: bool = True
    ) -> str | None:
        """Why we must not send ``purpose`` mail to ``address`` now, or None.

        ``rate_limited``: the per-sender limits, for mail that answers incoming mail
        (the only kind a mail loop can drive); not for what an agent or the clock sends.
        """
        address = address.lower()
        if not address or "@" not in address:
            return "no usable sender address"
        if (overlong := overlong_address(address)) is not None:
            return f"{elided(address)}: {overlong}"
        if self.settings.is_own_address(address):  # a sub-address of ours too
            return f"{address} is one of our own addresses"
        local = plain_mailbox(address).rpartition("@")[0]
        if local in ("mailer-daemon", "postmaster") or local.startswith(
            ("noreply", "no-reply", "donotreply")
        ):
            return f"{address} does not take replies"
        # Our outbox and the bounces know the address as it went on the wire (an IDN
        # domain in A-labels); a contact may be known by its U-labels.
        wire = (wire_address(address) or address).lower()
        now = self.clock()
        suppressed = session.scalar(
            select(Suppression.reason)
            .where(
                Suppression.address.in_({address, wire, plain_mailbox(wire)}),
                Suppression.until > now,
            )
            .limit(1)
        )
        if suppressed is not None:
            return f"{address} is suppressed: {suppressed}"
        if not rate_limited:
            return None
        limits = self.settings.acknowledgements
        for window, limit, label in (
            (timedelta(hours=1), limits.per_sender_per_hour, "hour"),
            (timedelta(days=1), limits.per_sender_per_day, "day"),
        ):
            sent = self._recent(session, mailbox_key(wire), purpose, now - window)
            if sent >= limit:
                return f"rate limit: {sent} {purpose} mails to {address} in the last {label}"
        return None

    def _recent(self, session: Session, address: str, purpose: str, since: datetime) -> int:
        return (
            session.scalar(
                select(func.count(Outbox.id)).where(
                    Outbox.recipient_key == address,
                    Outbox.purpose == purpose,
                    Outbox.created_at >= since,
                )
            )
            or 0
        )

    def acknowledge(
        self,
        session: Session,
        ticket: Ticket,
        message: Message,
        answerable: bool,
        why: str,
        template: str | None = None,
        *,
        dmarc_passed: bool = False,
        quote: str | None = None,
    ) -> None:
        """Queue the acknowledgement of a new ticket, or record why not.

        ``template`` (chosen by a routing rule) replaces ``ack`` when it exists.
        ``dmarc_passed``: our own MTA found the From's domain vouching for it.
        ``quote``: the customer's text, when the message stored is not hers as she
        wrote it (a list's copy, with its footer); the message's own otherwise.
        """
        if not self.settings.acknowledgements.enabled:
            return self._event(session, ticket, ACK_SKIPPED, "acknowledgements are disabled")
        if not answerable:
            return self._event(session, ticket, ACK_SKIPPED, f"not answered: {why}")
        customer = ticket.requester
        if customer is None:
            return self._event(session, ticket, ACK_SKIPPED, "no requester address")
        self._queue_notice(
            session,
            ticket,
            customer,
            purpose="ack",
            quote=(quote if quote is not None else message.text_body)
            if self._may_quote(session, customer, dmarc_passed)
            else "",
            answers=message,
            auto_submitted="auto-replied",
            template=template if template and self.renderer.exists(template, "customer") else None,
        )
        return None

    def hold_acknowledgement(
        self,
        session: Session,
        ticket: Ticket,
        template: str | None,
        *,
        dmarc_passed: bool,
        quote: str | None,
    ) -> None:
        """The spam filter was unsure: keep the acknowledgement every other check allowed
        (the routing rule's template, the quote) for the release to send
        (:meth:`acknowledgement_decision`)."""
        data: dict[str, Any] = {"template": template, "dmarc_passed": dmarc_passed}
        if quote is not None:
            data["quote"] = quote[:QUOTE_LIMIT]
        reason = "possible spam: not acknowledged until released"
        self._event(session, ticket, ACK_HELD, reason, **data)

    def acknowledgement_decision(self, session: Session, ticket: Ticket) -> AckDecision | None:
        """The last decision on the acknowledgement of ``ticket``: held for a release or
        skipped (with why); None when none was recorded (or before held ones were: those
        tickets get what a release gave them then)."""
        event = session.scalars(
            select(Event)
            .where(Event.ticket_id == ticket.id, Event.kind.in_((ACK_HELD, ACK_SKIPPED)))
            .order_by(Event.id.desc())
            .limit(1)
        ).first()
        if event is None or event.reason == _LEGACY_HELD:
            return None
        if event.kind == ACK_SKIPPED:
            return AckDecision(held=False, reason=event.reason)
        data = event.data or {}
        return AckDecision(
            held=True,
            reason=event.reason,
            template=data.get("template"),
            dmarc_passed=bool(data.get("dmarc_passed")),
            quote=data.get("quote"),
        )

    def _may_quote(self, session: Session, customer: Contact, dmarc_passed: bool) -> bool:
        """Whether the acknowledgement may carry the message back to its From.

        A forged From would otherwise make us mail a stranger's text (a lure, a
        link) from our own domain to whatever address the stranger chose.
        """
        policy = self.settings.acknowledgements.quote_message
        if policy != "verified":
            return policy == "always"
        return dmarc_passed or queries.answered_customer(session, customer.email) is not None

    def resolved(self, session: Session, ticket: Ticket, *, author: str | None = None) -> None:
        """Queue the resolution notice to the requester (``author``: the agent who resolved)."""
        self.customer_notice(session, ticket, "resolved", author=author)

    def customer_notice(
        self, session: Session, ticket: Ticket, purpose: str, *, author: str | None = None
    ) -> None:
        """Queue the ``<purpose>.customer`` template to the requester (no-op without it).

        ``author``: the agent whose doing it is, told if it is not delivered.
        """
        customer = ticket.requester
        if customer is None or not self.renderer.exists(purpose, "customer"):
            return
        # The customer's own last mail: never an agent's reply or note (their ids are private).
        last = queries.last_customer_message(session, ticket)
        self._queue_notice(
            session,
            ticket,
            customer,
            purpose=purpose,
            quote="",
            answers=last,
            auto_submitted="auto-generated",
            rate_limited=False,  # an agent's or the clock's doing, never a mail's
            author=author,
        )

    def _queue_notice(
        self,
        session: Session,
        ticket: Ticket,
        customer: Contact,
        *,
        purpose: str,
        quote: str,
        answers: Message | None,
        auto_submitted: str,
        template: str | None = None,
        rate_limited: bool = True,
        author: str | None = None,
    ) -> None:
        """Render ``purpose``.customer (or ``template``) and queue it, or record why not."""
        if ticket.possible_spam:  # the spam filter was unsure: no mail until released as ham
            reason = "possible spam: no automatic mail until released"
            return self._event(session, ticket, f"{purpose}_skipped", reason)
        blocked = self.blocked_reason(session, customer.email, purpose, rate_limited=rate_limited)
        if blocked:
            return self._event(session, ticket, f"{purpose}_skipped", blocked)
        support = self.support_address_for(ticket)
        defaults = self.settings.address_defaults(support)
        rendered = self.renderer.render(
            template or purpose,
            "customer",
            self.variables(ticket, customer, quote),
            queue=ticket.queue,
            language=defaults.language if defaults else None,
        )
        mail = OutboundMail(
            purpose=purpose,
            ticket=ticket,
            recipients=[Recipient(customer.email, customer.name)],
            rendered=rendered,
            support_address=support,
            in_reply_to=answers.header_message_id if answers else None,
            references=self._references(session, answers) if answers else (),
            auto_submitted=auto_submitted,
            from_name=self.from_name_for(ticket),
            author=author,
        )
        try:
            row = self.composer.queue(session, mail)
        except (ValueError, TypeError, HeaderParseError) as exc:
            # e.g. a non-ASCII local part our relay could not take: say so, send nothing.
            reason = f"cannot address {customer.email!r}: {type(exc).__name__}: {exc}"
            return self._event(session, ticket, f"{purpose}_skipped", reason)
        self._event(
            session,
            ticket,
            f"{purpose}_queued",
            f"{purpose} queued to {customer.email}",
            outbox=row.id,
        )
        return None

    def _references(self, session: Session, message: Message) -> list[str]:
        """Ids of the conversation the customer side has seen: its mail and ours to it.

        Agents' own mail (replies, notes, confirmations, their out-of-office answers,
        all inbound but not customer mail) and mail to agents (ids "md.a.*", "md.n.*")
        stay out: their ids name the agents' private hosts, or would let a reply
        pass for one to an agent's mail.
        """
        ids = session.scalars(
            select(Message.header_message_id)
            .where(
                Message.ticket_id == message.ticket_id,
                Message.id <= message.id,
                or_(
                    Message.direction == Direction.OUTBOUND,
                    Message.kind == MessageKind.CUSTOMER,
                ),
            )
            .order_by(Message.id)
        ).all()
        return [i for i in ids if i and not i.startswith(AGENT_MESSAGE_ID_PREFIXES)]
