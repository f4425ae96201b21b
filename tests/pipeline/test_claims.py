"""A message another node took over is applied once, by that node.

A claim older than ``pipeline.claim_timeout_seconds`` counts as abandoned:
another node takes the message and processes it. The node that had it (slow,
not dead: a batch of messages that take long to parse) must then leave it
alone, not decide about it a second time.
"""

from __future__ import annotations

from sqlalchemy import func, select

from maildesk.app import App
from maildesk.db.models import Disposition, Event, Intake, Outbox, Ticket
from maildesk.intake.store import Envelope
from maildesk.pipeline.runner import Worker
from tests.conftest import FrozenClock
from tests.mailfactory import make_mail


def worker(app: App, node: str) -> Worker:
    return Worker(
        app.db, app.settings, app.signer, app.clock, node, notices=app.notices(), router=app.router
    )


def test_a_message_taken_over_while_this_node_parsed_it_is_not_applied_again(
    app: App, clock: FrozenClock
) -> None:
    app.intake().store(
        make_mail(message_id="slow@customer.test"),
        Envelope(source="smtp", mail_from="alice@customer.test", rcpt_to=("support@example.com",)),
    )
    slow, other = worker(app, "node-a"), worker(app, "node-b")
    try:
        parsed = slow.parse_pool.submit(slow.claim())
        clock.advance(seconds=app.settings.pipeline.claim_timeout_seconds + 1)
        assert other.drain().as_dict()["created"] == 1  # node-a looked dead: node-b took it

        assert slow.apply_parsed(parsed()) == []  # node-a comes back: nothing left to it
    finally:
        slow.parse_pool.close()
        other.parse_pool.close()

    with app.db.transaction() as session:
        [intake] = session.scalars(select(Intake)).all()
        assert intake.disposition is Disposition.CREATED  # not overwritten as a duplicate
        assert intake.claimed_by is None
        assert session.scalar(select(func.count()).select_from(Ticket)) == 1
        assert session.scalar(select(func.count()).select_from(Outbox)) == 1  # one acknowledgement
        kinds = session.scalars(select(Event.kind).where(Event.intake_id == intake.id)).all()
        assert "duplicate" not in kinds
