"""Write the route stage's decision onto the ticket (called from the one writer).

Order: rule fields, tags and watchers (each matched rule an event with its
evidence), then a model's guess where no rule or address default set the field
and the confidence clears ``routing.min_confidence`` (confidence and model
version on the event, applied or not), then escalation, then assignment.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from maildesk.config import Settings
from maildesk.db.models import Event, Priority, Ticket, Watcher
from maildesk.db.upsert import insert_ignore
from maildesk.routing.assign_db import Record, assign_ticket
from maildesk.routing.escalate import EscalationError, Notify, escalate
from maildesk.routing.router import RouteDecision

TICKET_FIELD = {"type": "ticket_type", "agent": "assignee"}


def apply_route(
    session: Session,
    ticket: Ticket,
    decision: RouteDecision,
    *,
    settings: Settings,
    now: datetime,
    record: Record,
    created: bool,
    reopened: bool,
    automated: bool,
    notify: Notify | None = None,
) -> None:
    directory = decision.directory
    if created and ticket.organisation is None:
        ticket.organisation = decision.facts.organisation
    _apply_rules(session, ticket, decision, now, record)
    if created:
        _apply_guesses(ticket, decision, settings, record)
    result = decision.result
    if result.escalate and not created and _escalated_by(session, ticket, result.escalate_by):
        # A follow-up rule sees every reply: ``escalate = true`` once more would send
        # the ticket a tier further each time, away from the agent working on it.
        record(
            "escalate_skipped",
            f"rule {result.escalate_by} escalated this ticket before: not again",
            {"rule": result.escalate_by},
        )
    elif result.escalate:
        _escalations(session).add((ticket.id, result.escalate_by))
        to = result.escalate if isinstance(result.escalate, str) else None
        try:
            escalate(
                session,
                ticket,
                to,
                actor=f"rule:{result.escalate_by}",
                settings=settings,
                directory=directory,
                now=now,
                record=record,
                notify=notify,
            )
            return  # escalate assigned it within the new group
        except EscalationError as exc:
            record("escalate_failed", f"rule {result.escalate_by}: {exc}", {})
    if automated:
        return
    if "agent" in result.fields:
        agent = result.fields["agent"]
        record(
            "assigned",
            f"assigned to {agent}: rule {result.set_by['agent']}",
            {"agent": agent, "group": ticket.group, "rule": f"rule:{result.set_by['agent']}"},
        )
        return
    if created or reopened:
        assign_ticket(
            session,
            ticket,
            settings=settings,
            directory=directory,
            now=now,
            record=record,
            reopened=reopened,
        )


def _escalations(session: Session) -> set[tuple[int, str | None]]:
    """(ticket, rule) escalations of this transaction, whose events may still be buffered."""
    found: set[tuple[int, str | None]] = session.info.setdefault("rule_escalations", set())
    return found


def _escalated_by(session: Session, ticket: Ticket, rule: str | None) -> bool:
    """Whether ``rule`` escalated ``ticket`` before (in this transaction or earlier)."""
    if (ticket.id, rule) in _escalations(session):
        return True
    actors = session.scalars(
        select(Event.data).where(Event.ticket_id == ticket.id, Event.kind == "escalated")
    ).all()
    return any(isinstance(d, dict) and d.get("actor") == f"rule:{rule}" for d in actors)


def _apply_rules(
    session: Session, ticket: Ticket, decision: RouteDecision, now: datetime, record: Record
) -> None:
    result = decision.result
    for matched in result.matched:
        rule = matched.rule
        sets = {k: v for k, v in result.fields.items() if result.set_by.get(k) == rule.name}
        record(
            "rule_matched",
            f"rule {rule.name} ({rule.file}): " + "; ".join(matched.reasons),
            {"rule": rule.name, "file": rule.file, "why": list(matched.reasons), "set": sets},
        )
    for name, value in result.fields.items():
        if name == "priority":
            ticket.priority = Priority(value)
        else:
            setattr(ticket, TICKET_FIELD.get(name, name), value)
    if result.tags:
        ticket.tags = list(dict.fromkeys([*(ticket.tags or []), *result.tags]))
    if result.watchers:
        rows = [
            {"ticket_id": ticket.id, "agent": a, "added_by": f"rule:{r}", "created_at": now}
            for a, r in result.watchers.items()
        ]
        insert_ignore(session, Watcher, rows, ["ticket_id", "agent"])
        for agent, rule_name in result.watchers.items():
            record("watcher_added", f"{agent} watches: rule {rule_name}", {"agent": agent})


def _apply_guesses(
    ticket: Ticket, decision: RouteDecision, settings: Settings, record: Record
) -> None:
    threshold = settings.routing.min_confidence
    for guess in decision.guesses:
        column = guess.field
        current = getattr(ticket, column)
        applied = current is None and guess.label is not None and guess.confidence >= threshold
        data: dict[str, Any] = {
            "field": column,
            "label": guess.label,
            "confidence": round(guess.confidence, 4),
            "model_version": guess.version,
            "threshold": threshold,
            "applied": applied,
        }
        if applied:
            setattr(ticket, column, guess.label)
            why = f"model {guess.version}: {column} {guess.label} ({guess.confidence:.2f})"
        elif current is not None:
            why = f"model suggests {guess.label} ({guess.confidence:.2f}); kept {column} {current}"
        else:
            why = (
                f"model suggests {guess.label} ({guess.confidence:.2f}), "
                f"below {threshold:.2f}: not applied"
            )
        record("categorized" if column == "category" else f"{column}_predicted", why, data)
