"""The one writer: turns a decided context into rows, in the caller's transaction."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Table, bindparam, insert, select, update
from sqlalchemy.orm import Session

from maildesk.agents.writer import after_hold, apply_agent_mail
from maildesk.config import Settings
from maildesk.db.models import (
    Contact,
    Conversation,
    Direction,
    Disposition,
    Event,
    IdOrigin,
    Intake,
    IntakeState,
    KnownMessageId,
    Message,
    MessageKind,
    Participant,
    ParticipantRole,
    Ticket,
    TicketLink,
    TicketStatus,
)
from maildesk.db.queries import LATE_ACK, KnownId, StoredMessage
from maildesk.db.upsert import insert_ignore, insert_row, upsert_contact
from maildesk.domain.address import MAX_UNUSABLE_NOTES, base_address, elided, overlong_address
from maildesk.domain.author import customer_address, list_author, shown_sender
from maildesk.domain.authresults import failed_dmarc, no_backscatter, passed_dmarc
from maildesk.domain.autodetect import AutoKind
from maildesk.domain.bounces import undeliverable
from maildesk.domain.message import Address, ParsedMessage
from maildesk.domain.subject import normalize_subject
from maildesk.domain.threadindex import conversation_key
from maildesk.intake.store import store_attachments
from maildesk.outbound.agent_notices import EscalationNotifier, notify_after_customer_mail
from maildesk.outbound.delivery_failed import DeliveryFailedNotifier
from maildesk.outbound.notices import Notices
from maildesk.outbound.suppression import suppress
from maildesk.pipeline.context import HUMAN_KINDS, MessageContext, Stop, StopKind, ThreadRule
from maildesk.pipeline.lookahead import Lookahead
from maildesk.routing.apply_route import apply_route
from maildesk.spam.quarantine import is_spam_quarantine
from maildesk.tickets import merge_tickets

MAX_ID = 998
CONTACTS: Table = Contact.__table__  # type: ignore[assignment]
_KNOWN: Table = KnownMessageId.__table__  # type: ignore[assignment]
_PROMOTE_ID = (
    update(_KNOWN)
    .where(
        _KNOWN.c.message_id == bindparam("promoted_id"),
        _KNOWN.c.origin.in_([IdOrigin.REFERENCED, IdOrigin.UNPROVEN_REFERENCED]),
    )
    .values(origin=bindparam("stored_origin"))
)
# The contacts already on a ticket, and their roles.
_ROLES = (
    select(Contact.email, Participant.role)
    .join(Participant, Participant.contact_id == Contact.id)
    .where(Participant.ticket_id == bindparam("ticket_id"))
)


class Applier:
    """Writes ticket, message, attachments, ids, links and events for one message."""

    def __init__(self, settings: Settings, now: datetime, notices: Notices | None = None) -> None:
        self.settings = settings
        self.now = now
        self.notices = notices
        self._events: list[dict[str, Any]] = []
        self._contacts: dict[str, int] = {}
        # An all-or-nothing batch writes its events once, at the end (see the runner).
        self.defer_events = False

    def event(
        self,
        session: Session,
        kind: str,
        reason: str,
        *,
        intake: Intake,
        ticket: Ticket | None = None,
        message: Message | None = None,
        data: dict[str, Any] | None = None,
    ) -> None:
        """Buffer an event; :meth:`flush_events` writes the buffer in one statement."""
        self._events.append(
            {
                "at": self.now,
                "kind": kind,
                "reason": reason,
                "intake_id": intake.id,
                "ticket_id": ticket.id if ticket else None,
                "message_pk": message.id if message else None,
                "data": data or {},
            }
        )

    def discard_events(self) -> None:
        """Forget buffered events of a message whose savepoint rolled back."""
        self._events = []
        self._contacts.clear()

    def flush_events(self, session: Session, *, final: bool = False) -> None:
        if self._events and (final or not self.defer_events):
            session.connection().execute(insert(Event), self._events)
            self._events = []

    def stop(
        self,
        session: Session,
        ctx: MessageContext,
        intake: Intake,
        stop: Stop,
        *,
        held: Stop | None = None,
    ) -> None:
        """Record a flow that ended early: a duplicate or a quarantined message.

        ``held``: the spam filter's quarantine of a duplicate to acknowledge late.
        """
        for note in ctx.notes:
            self.event(session, note.kind, note.reason, intake=intake, data=note.data)
        if stop.kind is StopKind.DUPLICATE:
            ticket = (
                session.get(Ticket, stop.duplicate_of_ticket) if stop.duplicate_of_ticket else None
            )
            message = (
                session.get(Message, stop.duplicate_of_message)
                if stop.duplicate_of_message
                else None
            )
            new_addresses = self._record_addresses(ticket, message, ctx.envelope_to)
            reason = stop.reason + (
                f"; also addressed to {', '.join(new_addresses)}" if new_addresses else ""
            )
            self.event(session, "duplicate", reason, intake=intake, ticket=ticket, message=message)
            if stop.acknowledge_late and ticket is not None and message is not None:
                self._acknowledge_late(session, ctx, intake, ticket, message, held)
            intake.state, intake.disposition = IntakeState.DONE, Disposition.DUPLICATE
            intake.message_pk = message.id if message else None
            intake.ticket_id = ticket.id if ticket else None
        else:
            self.event(session, "quarantined", stop.reason, intake=intake)
            intake.state, intake.disposition = IntakeState.QUARANTINED, Disposition.QUARANTINED
            if (lookahead := Lookahead.of(session)) is not None:
                lookahead.quarantined(intake.raw_sha256, intake.id)
            intake.quarantine_reason = stop.reason
            after_hold(self, session, ctx, intake)  # issue 5: tell the real agent
        intake.processed_at = self.now
        intake.claimed_by = None
        self.flush_events(session)

    def _record_addresses(
        self, ticket: Ticket | None, message: Message | None, addresses: Iterable[str]
    ) -> list[str]:
        """One mail to two support addresses: the second address goes on the ticket."""
        own = self.settings.own_addresses
        new = [a for a in dict.fromkeys(x.lower() for x in addresses) if a in own]
        added: list[str] = []
        if ticket is not None:
            known = list(ticket.support_addresses or [])
            added = [a for a in new if a not in known]
            if added:
                ticket.support_addresses = known + added
        if message is not None:
            seen = list(message.delivered_to or [])
            extra = [a for a in new if a not in seen]
            if extra:
                message.delivered_to = seen + extra
        return added

    def apply(self, session: Session, ctx: MessageContext, intake: Intake) -> Ticket:
        if ctx.agent is not None:  # issue 5: agent mail, ratings, internal notes
            return apply_agent_mail(self, session, ctx, intake)
        msg = ctx.message
        decision = ctx.thread
        verdict = ctx.verdict
        assert decision is not None and verdict is not None and ctx.dedupe_key is not None
        automated = verdict.kind not in HUMAN_KINDS
        author = customer_address(msg)
        requester = self._contact(session, author) if author and author.addr else None
        if author is not None and msg.from_ is not None and author.addr != msg.from_.addr:
            ctx.note(
                "customer",
                f"list mail: From {msg.from_.addr} is the list's own address; "
                f"the customer is {author.addr} (X-Original-From / Reply-To)",
                list_address=msg.from_.addr,
                customer=author.addr,
            )
        at = ctx.arrival

        if decision.ticket_id is None:
            ticket = self._new_ticket(session, ctx, requester, automated, at)
            created = True
        else:
            found = ctx.tickets.get(decision.ticket_id) or session.get(Ticket, decision.ticket_id)
            assert found is not None
            ticket, created = found, False
        assignee_before = ticket.assignee

        message = self.insert_inbound(
            session,
            ctx,
            intake,
            ticket,
            MessageKind.AUTO if automated else MessageKind.CUSTOMER,
            msg.text,
            msg.html,
            auto_kind=None if verdict.kind is AutoKind.HUMAN else str(verdict.kind),
        )
        # Only a mail that proves it belongs here (a new ticket, or a reply naming an id we
        # stored or signed) adds people: a subject tag, Thread-Index or sender+subject match
        # rests on a From anyone can forge, and must not subscribe a stranger to the answers.
        proven = created or (
            decision.rule
            in (ThreadRule.REFERENCES, ThreadRule.SIGNED_REFERENCE, ThreadRule.BODY_MARKER)
            and decision.proven_by_reference
        )
        forged = self._forged_sender(ctx)
        # A new ticket whose From our MTA found forged: a reply naming its ids would
        # otherwise subscribe whoever forged it to the answers given to that From.
        self._remember_ids(session, ctx, ticket, proven=proven and forged is None)
        if proven:
            cc = self._mailboxes(session, intake, ticket, msg.cc if forged is None else ())
            left_out = self._participants(session, ticket, requester, cc, created)
            if left_out:
                cap = self.settings.agent_mail.max_cc_participants
                self.event(
                    session,
                    "cc_not_added",
                    f"{len(left_out)} Cc address(es) not added: the ticket has its "
                    f"{cap} Cc participants (agent_mail.max_cc_participants)",
                    intake=intake,
                    ticket=ticket,
                    data={"addresses": left_out[:100]},
                )
        delivered = [*ctx.envelope_to, *(a.addr for a in (*msg.to, *msg.cc))]
        self._record_addresses(ticket, None, [base_address(a) for a in delivered])
        if created:
            self._address_defaults(session, ctx, intake, ticket)

        for note in ctx.notes:
            self.event(
                session,
                note.kind,
                note.reason,
                intake=intake,
                ticket=ticket,
                message=message,
                data=note.data,
            )
        self.event(
            session,
            "created" if created else "threaded",
            decision.evidence,
            intake=intake,
            ticket=ticket,
            message=message,
            data={"rule": str(decision.rule)},
        )
        if decision.link_to is not None:
            session.add(
                TicketLink(
                    ticket_id=ticket.id,
                    other_ticket_id=decision.link_to,
                    kind=decision.link_kind or "related",
                    created_at=self.now,
                )
            )
        if decision.merge_candidate is not None:
            self._merge_early_reply(session, ctx, intake, ticket, decision.merge_candidate)
        if decision.reopen:
            ticket.status = TicketStatus.OPEN
            ticket.resolved_at = None
            self.event(
                session,
                "reopened",
                "customer replied within the reopen window",
                intake=intake,
                ticket=ticket,
                message=message,
            )
        elif not created and not automated and ticket.status == TicketStatus.PENDING:
            ticket.status = TicketStatus.OPEN
            self.event(
                session,
                "status",
                "customer replied to a pending ticket: open",
                intake=intake,
                ticket=ticket,
            )

        # A new ticket's group hears of an escalation by the new-ticket notice below;
        # a reply's escalation notice is the one notice its new group gets about it.
        escalation = None if created or self.notices is None else EscalationNotifier(self.notices)
        if ctx.route is not None:  # issue 7: rules, learned fields, assignment
            apply_route(
                session,
                ticket,
                ctx.route,
                settings=self.settings,
                now=self.now,
                record=lambda kind, reason, data: self.event(
                    session, kind, reason, intake=intake, ticket=ticket, data=data
                ),
                created=created,
                reopened=decision.reopen,
                automated=automated,
                notify=escalation,
            )
        if verdict.kind is AutoKind.BOUNCE:
            self._suppress(session, ctx, intake, ticket, message)
        written = self._written(ctx)
        if created and self.notices is not None:
            self._acknowledge(session, ctx, ticket, message, requester, forged)
        if self.notices is not None and not automated:  # issue 5: tell the agents
            notify_after_customer_mail(
                session,
                self.notices,
                ticket,
                message,
                created=created,
                reopened=decision.reopen,
                assignee_before=None if created else assignee_before,
                written_at=written,
                told=escalation.told if escalation is not None else (),
                extra=self._reply_to_shown(msg, author),
            )

        ticket.updated_at = max(ticket.updated_at, at)
        if not automated:
            ticket.last_inbound_at = at
        intake.state = IntakeState.DONE
        intake.disposition = Disposition.CREATED if created else Disposition.THREADED
        intake.message_pk, intake.ticket_id = message.id, ticket.id
        if ctx.forced and ticket.possible_spam and is_spam_quarantine(intake):
            # Released spam is ham: the possible-spam ticket it joins (a follow-up
            # the customer sent meanwhile) is released with it, and acknowledged.
            from maildesk.spam.feedback import SpamLabel, settle_ticket  # imports the pipeline

            settle_ticket(
                session, intake, SpamLabel.HAM, self.notices, self.now, actor="quarantine release"
            )
        intake.processed_at = self.now
        intake.claimed_by = None
        self.flush_events(session)
        return ticket

    def _written(self, ctx: MessageContext) -> datetime:
        """When the mail counts as written, for the acknowledgement's age and the agents'
        notices. Released from quarantine by ops: it waited there on us, not in an old
        mailbox."""
        return self.now if ctx.forced and ctx.source != "file" else ctx.arrival

    def _acknowledge(
        self,
        session: Session,
        ctx: MessageContext,
        ticket: Ticket,
        message: Message,
        requester: int | None,
        forged: str | None,
        *,
        quote: str | None = None,
    ) -> None:
        """Queue the acknowledgement of the mail that starts ``ticket``, or record why not."""
        assert self.notices is not None and ctx.verdict is not None
        verdict = ctx.verdict
        why = f"{verdict.kind}: " + "; ".join(verdict.reasons)
        max_age = timedelta(hours=self.settings.acknowledgements.max_age_hours)
        if self.now - self._written(ctx) > max_age:
            hours = self.settings.acknowledgements.max_age_hours
            why = f"written {ctx.arrival:%Y-%m-%d %H:%M} UTC, more than {hours:g} hours ago"
            answerable = False
        elif forged is not None and self.settings.acknowledgements.skip_dmarc_fail:
            why, answerable = no_backscatter(forged), False
        elif requester is None and (unusable := _unusable_sender(ctx.message)) is not None:
            why, answerable = unusable, False
        elif ctx.route is not None and ctx.route.result.ack_suppressed_by:
            why, answerable = f"suppressed by rule {ctx.route.result.ack_suppressed_by}", False
        else:
            answerable = verdict.answerable
        template = ctx.route.result.ack_template if ctx.route is not None else None
        dmarc_passed = self._sender_passed_dmarc(ctx)
        if answerable and (ctx.possible_spam or ticket.possible_spam):
            # Every other check passed: what a release sends (spam.feedback.settle_ticket).
            self.notices.hold_acknowledgement(
                session, ticket, template, dmarc_passed=dmarc_passed, quote=quote
            )
            return
        self.notices.acknowledge(
            session,
            ticket,
            message,
            answerable,
            why,
            template,
            dmarc_passed=dmarc_passed,
            quote=quote,
        )

    def _acknowledge_late(
        self,
        session: Session,
        ctx: MessageContext,
        intake: Intake,
        ticket: Ticket,
        message: Message,
        held: Stop | None,
    ) -> None:
        """Her own copy after the list's copy that started the ticket unacknowledged
        (:func:`maildesk.pipeline.stages.acknowledged_as_first`): the acknowledgement
        her copy would have had first, through every check of one (``held``: the spam
        filter quarantines her copy). The agents were told of the ticket already. The
        filter unsure of her copy flags the ticket, as it would have flagged it first: the
        acknowledgement waits for its release, as a flagged ticket's does."""
        if self.notices is None:
            return
        reason = (
            f"her own copy of <{ctx.message.message_id}> came after the list's copy that "
            "started the ticket, which as list mail is never answered: her acknowledgement "
            "decided now, as if her copy had come first"
        )
        if held is None and ctx.possible_spam and not ticket.possible_spam:
            ticket.possible_spam = True
            reason += "; the spam filter is unsure of her copy: the ticket is now possible spam"
        # Written at once, not with the batch's events: another copy of the mail later
        # in this batch must find it decided (queries.unacknowledged_start).
        session.add(
            Event(
                at=self.now,
                kind=LATE_ACK,
                reason=reason,
                intake_id=intake.id,
                ticket_id=ticket.id,
                message_pk=message.id,
                data={},
            )
        )
        if held is not None:
            self.notices.acknowledge(session, ticket, message, False, held.reason)
            return
        forged = self._forged_sender(ctx)
        # Her text, not the list's copy stored with its footer.
        self._acknowledge(
            session, ctx, ticket, message, ticket.requester_id, forged, quote=ctx.message.text
        )

    def _reply_to_shown(self, msg: ParsedMessage, author: Address | None) -> dict[str, Any]:
        """A Reply-To the agents are shown: answers never go to it by itself (README,
        "Who the customer is"), but an agent who trusts it can ``#cc`` it."""
        shown = [
            shown_sender(a.name, a.addr)
            for a in msg.reply_to
            if a.addr
            and (author is None or a.addr != author.addr)
            and not self.settings.is_own_address(a.addr)
        ]
        return {"reply_to": shown[:5]} if shown else {}

    def _address_defaults(
        self, session: Session, ctx: MessageContext, intake: Intake, ticket: Ticket
    ) -> None:
        """A new ticket takes the queue and category of the addresses it came in on.

        The queue is the one its rules saw (:func:`maildesk.routing.facts.queue_for`).
        """
        addresses = ticket.support_addresses or []
        found = {
            name: self.settings.first_address_default(addresses, name)
            for name in ("queue", "category")
        }
        if (queue := found["queue"]) is not None:
            ticket.queue = ticket.queue or queue[1]
        if (category := found["category"]) is not None:
            ticket.category = ticket.category or category[1]
        taken = [f"arrived at {hit[0]}: {name} {hit[1]}" for name, hit in found.items() if hit]
        if taken:
            self.event(
                session,
                "address_defaults",
                "; ".join(taken),
                intake=intake,
                ticket=ticket,
            )

    def _merge_early_reply(
        self, session: Session, ctx: MessageContext, intake: Intake, ticket: Ticket, other_id: int
    ) -> None:
        """A reply to this message arrived first and started its own ticket: join them.

        Only when that ticket is untouched by agents (new/open, unassigned, no
        agent reply or note) and shares people with this message, so a forged
        "parent" cannot pull someone else's conversation into a ticket.
        """
        other = session.get(Ticket, other_id)
        if other is None or other.merged_into_id is not None:
            return
        touched = session.scalar(
            select(Message.id).where(
                Message.ticket_id == other.id,
                Message.kind.in_([MessageKind.AGENT_REPLY, MessageKind.INTERNAL_NOTE]),
            )
        )
        if touched or other.assignee or other.status not in (TicketStatus.NEW, TicketStatus.OPEN):
            return
        msg = ctx.message
        ours = {a.addr for a in (*msg.to, *msg.cc)} | ({msg.from_.addr} if msg.from_ else set())
        if (author := list_author(msg)) is not None:
            ours.add(author.addr)
        theirs: set[str] = set()
        for frm, to, cc in session.execute(
            select(Message.from_addr, Message.to_addrs, Message.cc_addrs).where(
                Message.ticket_id == other.id, Message.direction == Direction.INBOUND
            )
        ).all():
            theirs |= {frm, *(to or []), *(cc or [])}
        shared = (ours & theirs) - {""} - self.settings.own_addresses
        if not shared:
            return
        merge_tickets(
            session,
            other,
            ticket,
            self.now,
            reason=f"<{msg.message_id}> is the parent of a reply that arrived first "
            f"(shared addresses: {', '.join(sorted(shared)[:3])})",
        )

    def _forged_sender(self, ctx: MessageContext) -> str | None:
        """Why our MTA's sender authentication says the From is not the sender's own.

        Read whatever ``acknowledgements.skip_dmarc_fail`` says: that setting only
        decides the acknowledgement, not who a forged mail may add to the ticket.
        """
        ids = self.settings.agent_mail.trusted_authserv_ids
        if not (ids and ctx.parsed):
            return None
        return failed_dmarc(ctx.parsed.header_all("Authentication-Results"), ids)

    def _sender_passed_dmarc(self, ctx: MessageContext) -> bool:
        ids = self.settings.agent_mail.trusted_authserv_ids
        headers = ctx.parsed.header_all("Authentication-Results") if ctx.parsed else []
        return bool(ids) and passed_dmarc(headers, ids) is not None

    def _suppress(
        self,
        session: Session,
        ctx: MessageContext,
        intake: Intake,
        ticket: Ticket,
        message: Message,
    ) -> None:
        """A hard bounce puts the failed recipient on the suppression list, with expiry,
        and the agent whose mail it returns is told (once per mail).

        Only a recipient of the mail of ours that the bounce returns (``ctx.bounced_to``):
        a report naming anyone else, or no mail of ours, is anyone's to write.
        """
        until = self.now + timedelta(days=self.settings.outbound.suppression_days)
        report = undeliverable(ctx.message, ctx.bounced_to)
        if report.strangers:
            self.event(
                session,
                "suppression_refused",
                f"the bounce names {', '.join(report.strangers[:5])} but returns no mail of "
                "ours to them: not suppressed",
                data={"addresses": list(report.strangers[:100])},
                intake=intake,
                ticket=ticket,
                message=message,
            )
        if report.failed:
            self.event(
                session,
                "bounce_not_suppressed",
                f"not delivered, but the address may be fine: {'; '.join(report.failed[:5])}",
                data={"failures": list(report.failed[:100])},
                intake=intake,
                ticket=ticket,
                message=message,
            )
        # In one order on every path (the sender's too), against crossing row locks.
        for address in sorted(dict.fromkeys(report.dead), key=str.lower):
            why = f"bounced (intake {intake.id}, ticket #{ticket.number})"
            suppress(session, address, until, why, self.now)
            self.event(
                session,
                "suppressed",
                f"{address} bounced: not mailed again until {until:%Y-%m-%d}",
                intake=intake,
                ticket=ticket,
                message=message,
            )
        if self.notices is not None:  # after suppressing: the notice says until when
            DeliveryFailedNotifier(self.notices).bounced(session, ctx.bounced_outbox, report)

    def _new_ticket(
        self,
        session: Session,
        ctx: MessageContext,
        requester: int | None,
        automated: bool,
        at: datetime,
    ) -> Ticket:
        msg = ctx.message
        status = TicketStatus.NEW
        if automated:
            status = TicketStatus(self.settings.threading.unmatched_auto_status)
        ticket = insert_row(
            session,
            Ticket,
            subject=msg.subject[:2000],
            normalized_subject=normalize_subject(msg.subject)[:2000],
            status=status,
            requester_id=requester,
            created_at=at,
            updated_at=at,
            closed_at=at if status == TicketStatus.CLOSED else None,
            possible_spam=ctx.possible_spam,
            support_addresses=[],
        )
        ticket.number = ticket.id
        return ticket

    def _contact(self, session: Session, address: Address) -> int:
        """The contact id for an address (one upsert, cached for the batch).

        Never an address longer than RFC 5321 allows: the parse left those out
        (its first 320 characters may be another's address, so none is cut).
        """
        email = address.addr
        contact_id = self._contacts.get(email)
        if contact_id is None:
            contact_id = upsert_contact(session, CONTACTS, email, address.name[:500], self.now)
            self._contacts[email] = contact_id
            if (lookahead := Lookahead.of(session)) is not None:
                lookahead.contact(email, contact_id)
        return contact_id

    def _mailboxes(
        self, session: Session, intake: Intake, ticket: Ticket, cc: Iterable[Address]
    ) -> list[Address]:
        """The Cc that are mailboxes: one longer than RFC 5321 allows would get every
        answer to the ticket, and none can reach it; the ticket says so instead."""
        kept: list[Address] = []
        unusable: list[str] = []
        for address in cc:
            why = overlong_address(address.addr)
            if why is None:
                kept.append(address)
            else:
                unusable.append(f"Cc address {elided(address.addr)} not added: {why}")
        for reason in unusable[:MAX_UNUSABLE_NOTES]:
            self.event(session, "address_unusable", reason, intake=intake, ticket=ticket)
        if len(unusable) > MAX_UNUSABLE_NOTES:
            more = f"and {len(unusable) - MAX_UNUSABLE_NOTES} more Cc address(es) not added"
            self.event(session, "address_unusable", more, intake=intake, ticket=ticket)
        return kept

    def _participants(
        self,
        session: Session,
        ticket: Ticket,
        requester: int | None,
        cc: Iterable[Address],
        created: bool,
    ) -> list[str]:
        """Requester and customer-side Cc become participants (one statement).

        Cc participants get every agent answer, so a ticket has at most
        ``agent_mail.max_cc_participants`` of them: a mail with thousands of
        Cc must not turn each answer into a mailing to addresses a stranger
        chose. Returns the Cc addresses left out.
        """
        rows = []
        if requester is not None:
            is_requester = created or ticket.requester_id == requester
            role = ParticipantRole.REQUESTER if is_requester else ParticipantRole.CC
            rows.append({"ticket_id": ticket.id, "contact_id": requester, "role": role.value})
        wanted = {
            address.addr: address
            for address in cc
            if address.addr
            and "@" in address.addr
            and not self.settings.is_own_address(address.addr)
        }
        left_out: list[str] = []
        if wanted:
            # Core on the connection, as participants and contacts are only ever written
            # (insert_ignore, upsert_contact): through the session, each such query
            # flushed the batch's pending changes first, a third of apply's time.
            roles = session.connection().execute(_ROLES, {"ticket_id": ticket.id}).all()
            present = {email for email, _role in roles}
            ccs = sum(1 for _email, role in roles if role == ParticipantRole.CC)
            room = self.settings.agent_mail.max_cc_participants - ccs
            new = [addr for addr in wanted if addr not in present]
            left_out = new[max(room, 0) :]
            for addr in [a for a in wanted if a in present] + new[: max(room, 0)]:
                contact_id = self._contact(session, wanted[addr])
                rows.append(
                    {
                        "ticket_id": ticket.id,
                        "contact_id": contact_id,
                        "role": ParticipantRole.CC.value,
                    }
                )
        insert_ignore(session, Participant, rows, ["ticket_id", "contact_id"])
        return left_out

    def insert_inbound(
        self,
        session: Session,
        ctx: MessageContext,
        intake: Intake,
        ticket: Ticket,
        kind: MessageKind,
        text: str,
        html: str | None,
        auto_kind: str | None = None,
    ) -> Message:
        """The inbound mail as a ``messages`` row of ``kind`` with its attachments.

        The raw MIME stays linked (``raw_sha256``) whatever ``text`` is kept.
        """
        msg = ctx.message
        assert ctx.dedupe_key is not None
        message = insert_row(
            session,
            Message,
            ticket_id=ticket.id,
            dedupe_key=ctx.dedupe_key,
            header_message_id=msg.message_id,
            direction=Direction.INBOUND,
            kind=kind,
            from_addr=msg.from_.addr if msg.from_ else "",
            from_name=msg.from_.name if msg.from_ else "",
            to_addrs=[a.addr for a in msg.to],
            cc_addrs=[a.addr for a in msg.cc],
            delivered_to=[a.lower() for a in ctx.envelope_to],
            subject=msg.subject,
            date=msg.date,
            text_body=text,
            html_body=html,
            raw_sha256=intake.raw_sha256,
            body_hash=ctx.body_hash,
            auto_kind=auto_kind,
            created_at=self.now,
        )
        if (lookahead := Lookahead.of(session)) is not None:
            lookahead.stored_message(
                ctx.dedupe_key,
                StoredMessage(
                    message.id,
                    ticket.id,
                    ctx.body_hash,
                    message.kind,
                    message.from_addr,
                    message.auto_kind,
                ),
            )
            lookahead.touched(ticket)
        store_attachments(session, message.id, msg.attachments)
        return message

    def _remember_ids(
        self, session: Session, ctx: MessageContext, ticket: Ticket, *, proven: bool
    ) -> None:
        """Our id and every id it references now lead to this ticket (one statement).

        A reply naming a known id adds its sender and Cc as participants, so the
        ids of a mail let in on a forgeable From (subject tag, Thread-Index,
        sender and subject) are remembered as ``UNPROVEN``: replies to it still
        thread here, but subscribe nobody.
        """
        msg = ctx.message
        own, referenced = (
            (IdOrigin.INBOUND, IdOrigin.REFERENCED)
            if proven
            else (IdOrigin.UNPROVEN, IdOrigin.UNPROVEN_REFERENCED)
        )
        known: list[KnownId] = []
        if msg.message_id and len(msg.message_id) <= MAX_ID:
            known.append(KnownId(msg.message_id, ticket.id, own))
        for ref in dict.fromkeys([*msg.in_reply_to, *msg.references]):
            if ref and len(ref) <= MAX_ID and ref != msg.message_id:
                known.append(KnownId(ref, ticket.id, referenced))
        rows = [{**k._asdict(), "origin": k.origin.value} for k in known]
        insert_ignore(session, KnownMessageId, rows, ["message_id"])
        lookahead = Lookahead.of(session)
        if lookahead is not None:
            lookahead.remembered_ids(known)
            if ctx.own_id_was_referenced and msg.message_id:
                lookahead.promoted(msg.message_id, own)
        if ctx.own_id_was_referenced:
            # An id first seen in References becomes a stored message's id.
            # Core on the connection: no ORM rows of this table are pending, and the
            # ORM's bulk-update path cost more than the statement on this hot path.
            session.connection().execute(
                _PROMOTE_ID, {"promoted_id": msg.message_id, "stored_origin": own.value}
            )
        if msg.thread_index:
            key = conversation_key(msg.thread_index)
            if key:
                insert_ignore(session, Conversation, {"key": key, "ticket_id": ticket.id}, ["key"])


def _unusable_sender(msg: ParsedMessage) -> str | None:
    """Why the parse left the sender's address out (no mailbox: too long), or None."""
    return next((why for why in msg.unusable_addresses if why.startswith("From ")), None)
