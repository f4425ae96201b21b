"""The SLA sweep and possible spam: nobody's work, and nobody's mail, until released."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from maildesk.app import App
from maildesk.db.models import Intake, Outbox, Ticket
from maildesk.spam.feedback import SpamLabel, settle_ticket
from tests.conftest import FrozenClock, make_settings
from tests.mailfactory import deliver, make_mail
from tests.sla.slahelp import AGENTS, GROUPS, OFFICE, berlin, sweeper

SLA = {
    "default_policy": "standard",
    "policies": [
        {
            "name": "standard",
            "first_response": {"minutes": 60, "calendar": "office"},
            "warning": {"notify": ["group", "lead"], "targets": ["first_response"]},
            "breach": {
                "notify": ["group", "lead"],
                "raise_priority": True,
                "targets": ["first_response"],
            },
        }
    ],
}


def sla_mail(app: App) -> list[tuple[str, list[str]]]:
    with app.db.transaction() as session:
        rows = session.execute(
            select(Outbox.purpose, Outbox.recipients)
            .where(Outbox.purpose.like("sla_%"))
            .order_by(Outbox.id)
        )
        return [(purpose, list(recipients)) for purpose, recipients in rows]


def test_a_possible_spam_ticket_is_not_escalated_until_it_is_released(
    tmp_path: Path, database_url: str, clock: FrozenClock
) -> None:
    """The filter was unsure: no acknowledgement, no new-ticket notice. The sweep used
    to mail its warning and breach to the group and its lead (the spam's subject in
    the agents' inboxes, a signed reply address to it) and raise its priority."""
    settings = make_settings(
        tmp_path,
        database_url,
        calendars={"office": OFFICE},
        agents=AGENTS,
        groups=GROUPS,
        sla=SLA,
        spam={"unsure_at": 0.0, "spam_at": 1.0},
    )
    app = App.build(settings, clock=clock)
    try:
        clock.now = berlin(2026, 3, 9, 10, 0)
        deliver(app, make_mail(subject="Cheap meds, act now"))
        with app.db.transaction() as session:
            ticket = session.scalars(select(Ticket)).one()
            assert ticket.possible_spam
            ticket.group = "l1"
        clock.now = berlin(2026, 3, 9, 12, 0)  # an hour past its first-response target
        assert sweeper(app).run().fired == 0
        assert sla_mail(app) == []
        with app.db.transaction() as session:
            assert str(session.scalars(select(Ticket)).one().priority) == "normal"

        # Ops release it as ham: from now on it is work like any other, overdue already.
        with app.db.transaction() as session:
            intake = session.scalars(select(Intake)).one()
            settle_ticket(session, intake, SpamLabel.HAM, app.notices(), clock(), actor="ops")
        assert sweeper(app).run().fired == 2  # its warning and its breach, once each
        assert sweeper(app).run().fired == 0
        assert sorted(sla_mail(app)) == [
            ("sla_breach", ["bob@example.com"]),
            ("sla_breach", ["carol@example.com"]),
            ("sla_warning", ["bob@example.com"]),
            ("sla_warning", ["carol@example.com"]),
        ]
    finally:
        app.db.dispose()
