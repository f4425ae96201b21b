"""SLA test set-up: an office calendar, agents, policies, and tickets made by real mail."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select

from maildesk.app import App
from maildesk.db.models import Message, MessageKind, SlaTargetRow, Ticket, TicketStatus
from maildesk.sla.sweep import SlaSweeper
from maildesk.tickets import change_status
from tests.conftest import FrozenClock, make_settings
from tests.mailfactory import deliver, make_mail

BERLIN = ZoneInfo("Europe/Berlin")
OFFICE = {
    "timezone": "Europe/Berlin",
    "hours": {d: "10:00-19:00" for d in ("mon", "tue", "wed", "thu", "fri")},
}
AGENTS = [
    {"name": "bob", "addresses": ["bob@example.com"], "groups": ["l1"]},
    {"name": "carol", "addresses": ["carol@example.com"], "groups": ["l1"]},
    {"name": "dave", "addresses": ["dave@example.com"], "groups": ["l2"]},
]
GROUPS = [
    {"name": "l1", "lead": "carol", "escalates_to": "l2"},
    {"name": "l2", "lead": "dave", "address": "l2-team@example.com"},
]


def berlin(*args: int) -> datetime:
    return datetime(*args, tzinfo=BERLIN)  # type: ignore[misc]


def sla_app(
    tmp_path: Path,
    database_url: str,
    clock: FrozenClock,
    sla: dict[str, Any] | None = None,
    agents: list[dict[str, Any]] | None = None,
) -> App:
    sla = sla or {
        "default_policy": "standard",
        "policies": [
            {
                "name": "standard",
                "first_response": {"minutes": 240, "calendar": "office"},
                "resolution": {"minutes": 1440, "calendar": "office"},
                "warning": {"notify": ["assignee"], "targets": ["first_response"]},
                "breach": {"notify": ["assignee"], "targets": ["first_response"]},
            }
        ],
    }
    settings = make_settings(
        tmp_path,
        database_url,
        calendars={"office": OFFICE},
        agents=agents or AGENTS,
        groups=GROUPS,
        sla=sla,
    )
    return App.build(settings, clock=clock)


def new_ticket(app: App, clock: FrozenClock, at: datetime, **mail: Any) -> Ticket:
    """A ticket created by delivering a customer mail at ``at`` (the clock moves there)."""
    clock.now = at
    deliver(app, make_mail(**mail))
    with app.db.transaction() as session:
        return session.scalars(select(Ticket).order_by(Ticket.id.desc())).first()  # type: ignore[return-value]


def agent_reply(app: App, ticket_id: int, at: datetime, agent: str = "bob@example.com") -> None:
    """A public agent reply stored on the ticket (as the agent-mail path stores it)."""
    _store_message(app, ticket_id, at, MessageKind.AGENT_REPLY, agent)


def customer_message(
    app: App, ticket_id: int, at: datetime, sender: str = "alice@customer.test"
) -> None:
    """A customer's follow-up stored on the ticket (as threading stores it)."""
    _store_message(app, ticket_id, at, MessageKind.CUSTOMER, sender)


def _store_message(app: App, ticket_id: int, at: datetime, kind: MessageKind, sender: str) -> None:
    with app.db.transaction() as session:
        session.add(
            Message(
                ticket_id=ticket_id,
                dedupe_key=f"{kind}-{ticket_id}-{at.timestamp()}@example.com",
                direction="outbound" if kind is MessageKind.AGENT_REPLY else "inbound",
                kind=kind,
                from_addr=sender,
                subject="Re",
                created_at=at,
            )
        )


def sweeper(app: App, **kwargs: Any) -> SlaSweeper:
    return SlaSweeper(
        app.db, app.settings, app.notices(), lambda: app.directory, app.clock, "test", **kwargs
    )


def target_row(app: App, ticket_id: int, target: str, instance: int = 0) -> SlaTargetRow:
    with app.db.transaction() as session:
        return session.scalars(
            select(SlaTargetRow).where(
                SlaTargetRow.ticket_id == ticket_id,
                SlaTargetRow.target == target,
                SlaTargetRow.instance == instance,
            )
        ).one()


def set_status(app: App, ticket_id: int, status: TicketStatus, *, notify: bool = False) -> None:
    """Change the ticket's status by hand (as `maildesk tickets set-status` does)."""
    with app.db.transaction() as session:
        ticket = session.get_one(Ticket, ticket_id)
        notices = app.notices() if notify else None
        change_status(session, ticket, status, app.clock(), notices, actor="test")
