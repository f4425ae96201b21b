"""A customer's new request that reaches us through a list she Cc'd (MAIL-RULES §1, §3).

Alice writes to support and Cc's her project's list, to which support is subscribed.
Which copy arrives first is chance. The list's copy is list mail: stored, never
answered (§3), whatever its To/Cc say. Her direct copy is her mail, answered. When
the list's copy comes first it starts the ticket unacknowledged; her direct copy that
follows is the same message (stored once, §1), and it gets then the acknowledgement
it would have had first, through every check of the acknowledgement (once, to her).
Before, she was never acknowledged in that order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from maildesk.app import App
from maildesk.db.models import Direction, Event, Intake, Message, Ticket
from maildesk.intake.store import Envelope
from maildesk.outbound.suppression import suppress
from maildesk.pipeline import stages
from maildesk.spam.feedback import SpamLabel, settle_ticket
from tests.agents.agenthelp import (
    AGENT_ADDRESSES,
    agent_app,
    client_reply,
    in_thread,
    outbox,
    reply_address,
    to,
)
from tests.conftest import FrozenClock
from tests.mailfactory import deliver, make_mail

ALICE = "alice@customer.test"
LIST = "users@lists.test"
LIST_BOUNCES = "users-bounces@lists.test"
BODY = "Hello, my printer is on fire.\n"
FOOTER = "--\nUsers mailing list\nhttps://lists.test/users\n"


def _direct(message_id: str = "n1@customer.test") -> bytes:
    return make_mail(message_id=message_id, to="support@example.com", cc=LIST, body=BODY)


def _list_copy(
    message_id: str = "n1@customer.test", *, from_rewritten: bool = True, footer: bool = True
) -> bytes:
    """The list's copy of her mail: her Message-ID, To and Cc, the list's headers and
    footer (unless the list adds none), and (DMARC mitigation) perhaps the list's From
    with her in X-Original-From."""
    rewritten = {"X-Original-From": f"Alice Customer <{ALICE}>", "Reply-To": ALICE}
    return make_mail(
        message_id=message_id,
        sender=f'"Alice Customer via Users" <{LIST}>' if from_rewritten else f"Alice <{ALICE}>",
        to="support@example.com",
        cc=LIST,
        subject="[Users] Printer on fire",
        body=BODY + FOOTER if footer else BODY,
        headers={
            "List-Id": "Users <users.lists.test>",
            "List-Post": f"<mailto:{LIST}>",
            "List-Unsubscribe": "<mailto:users-leave@lists.test>",
            "Precedence": "list",
            **(rewritten if from_rewritten else {}),
        },
    )


@pytest.fixture
def desk(tmp_path: Path, database_url: str, clock: FrozenClock) -> Iterator[App]:
    app = agent_app(tmp_path, database_url, clock)
    yield app
    app.db.dispose()


def _acks(app: App) -> list[list[str]]:
    return [s.recipients for s in outbox(app) if s.purpose == "ack"]


def _late_acks(app: App) -> list[tuple[int | None, int | None]]:
    with app.db.transaction() as session:
        rows = session.execute(
            select(Event.ticket_id, Event.message_pk).where(Event.kind == "ack_late")
        )
        return [(t, m) for t, m in rows.all()]


def _assert_one_acknowledged_request(app: App, *, late: bool) -> None:
    with app.db.transaction() as session:
        assert session.scalars(select(Ticket.number)).all() == [1], "one ticket"
        inbound = session.scalar(
            select(func.count(Message.id)).where(Message.direction == Direction.INBOUND)
        )
        assert inbound == 1, "her mail stored once"
        dispositions = sorted(session.scalars(select(Intake.disposition)).all())
        stored = session.scalar(select(Message.id).where(Message.direction == Direction.INBOUND))
    assert dispositions[0] == "created" and set(dispositions[1:]) == {"duplicate"}
    sent = outbox(app)
    assert _acks(app) == [[ALICE]], "one acknowledgement, to her"
    assert not [s for s in sent if LIST in s.recipients or LIST_BOUNCES in s.recipients]
    told = [s.purpose for agent in AGENT_ADDRESSES for s in to(app, agent)]
    assert told == ["new_ticket"], f"her agent is told once: {told}"
    # Why she was acknowledged after the fact, on the ticket and the message stored.
    assert _late_acks(app) == ([(1, stored)] if late else [])


@pytest.mark.parametrize("from_rewritten", [True, False], ids=["from-rewritten", "from-kept"])
@pytest.mark.parametrize("order", ["list-first", "direct-first"])
def test_her_request_and_its_list_copy_in_either_order_are_one_ticket_acknowledged_once(
    desk: App, clock: FrozenClock, order: str, from_rewritten: bool
) -> None:
    """List first: no acknowledgement for the list's copy, one to her when her own copy
    follows. Direct first: acknowledged at once, the list's copy a duplicate. Either way
    one ticket, her mail stored once, one notice to her agent, nothing to the list; and
    more copies (her MTA's redelivery, the list's) change nothing."""
    copies = [(_direct(), ALICE), (_list_copy(from_rewritten=from_rewritten), LIST_BOUNCES)]
    if order == "list-first":
        copies.reverse()
    first, second = copies
    deliver(desk, first[0], mail_from=first[1])
    assert _acks(desk) == ([] if order == "list-first" else [[ALICE]])
    clock.advance(minutes=1)
    deliver(desk, second[0], mail_from=second[1])
    _assert_one_acknowledged_request(desk, late=order == "list-first")
    clock.advance(minutes=1)
    for raw, mail_from in (first, second):
        deliver(desk, raw, mail_from=mail_from)
    _assert_one_acknowledged_request(desk, late=order == "list-first")


def test_both_copies_and_a_redelivery_in_one_batch(desk: App) -> None:
    """The worker takes the list's copy, her copy and her MTA's redelivery of it in one
    batch (its lookahead): still one acknowledgement, after her copy."""
    intake = desk.intake()
    for raw, mail_from in ((_list_copy(), LIST_BOUNCES), (_direct(), ALICE), (_direct(), ALICE)):
        envelope = Envelope(source="smtp", mail_from=mail_from, rcpt_to=("support@example.com",))
        intake.store(raw, envelope)
    desk.worker().drain()
    _assert_one_acknowledged_request(desk, late=True)


@pytest.mark.parametrize("one_batch", [False, True], ids=["one-by-one", "one-batch"])
@pytest.mark.parametrize("from_rewritten", [True, False], ids=["from-rewritten", "from-kept"])
def test_a_list_that_adds_no_footer_still_gets_her_acknowledged_once(
    desk: App, clock: FrozenClock, from_rewritten: bool, one_batch: bool
) -> None:
    """The list left her mail as it was: its copy, first, has her Message-ID and her very
    body, so her own copy is a duplicate of the same content. It is still the copy we
    answer, and is owed the acknowledgement (before, she never got one)."""
    copies = (
        (_list_copy(from_rewritten=from_rewritten, footer=False), LIST_BOUNCES),
        (_direct(), ALICE),
        (_direct(), ALICE),  # her MTA's redelivery: nothing more
    )
    intake = desk.intake()
    for raw, mail_from in copies:
        envelope = Envelope(source="smtp", mail_from=mail_from, rcpt_to=("support@example.com",))
        intake.store(raw, envelope)
        if not one_batch:
            desk.worker().drain()
            clock.advance(minutes=1)
    desk.worker().drain()
    _assert_one_acknowledged_request(desk, late=True)


@pytest.mark.parametrize("from_rewritten", [True, False], ids=["from-rewritten", "from-kept"])
def test_the_lists_copy_alone_is_stored_and_never_answered(desk: App, from_rewritten: bool) -> None:
    """Her direct copy lost: the list's copy is list mail (MAIL-RULES §3), whatever To
    and Cc say. A ticket for her, no acknowledgement, her agent told."""
    deliver(desk, _list_copy(from_rewritten=from_rewritten), mail_from=LIST_BOUNCES)
    assert _acks(desk) == []
    with desk.db.transaction() as session:
        [ticket] = session.scalars(select(Ticket)).all()
        assert ticket.requester is not None and ticket.requester.email == ALICE
        skipped = session.scalars(select(Event.reason).where(Event.kind == "ack_skipped")).all()
    assert [r.split(":")[:2] for r in skipped] == [["not answered", " list"]]
    assert [s.purpose for agent in AGENT_ADDRESSES for s in to(desk, agent)] == ["new_ticket"]


@pytest.mark.parametrize("check", ["suppressed", "possible-spam"])
def test_the_late_acknowledgement_goes_through_every_check_of_a_first_one(
    tmp_path: Path, database_url: str, clock: FrozenClock, check: str
) -> None:
    """Her copy would not have been acknowledged first (her address on the suppression
    list; the spam filter unsure of her copy, while the list is on its allow list):
    after the list's copy it is not acknowledged either, and the ticket says why
    (held for a release, when it is possible spam)."""
    spam = {"unsure_at": 0.0, "spam_at": 1.0, "allow_addresses": [LIST]}
    app = agent_app(
        tmp_path, database_url, clock, **({"spam": spam} if check != "suppressed" else {})
    )
    try:
        if check == "suppressed":
            with app.db.transaction() as session:
                until = clock() + timedelta(days=30)
                suppress(session, ALICE, until, "bounced", clock())
        deliver(app, _list_copy(), mail_from=LIST_BOUNCES)
        deliver(app, _direct(), mail_from=ALICE)
        assert _acks(app) == []
        with app.db.transaction() as session:
            kinds = session.scalars(
                select(Event.kind).where(Event.kind.startswith("ack")).order_by(Event.id)
            ).all()
            decided = "ack_skipped" if check == "suppressed" else "ack_held"
            last = session.scalars(
                select(Event.reason).where(Event.kind == decided).order_by(Event.id.desc())
            ).first()
        assert kinds == ["ack_skipped", "ack_late", decided]
        assert last is not None
        assert ("suppressed" if check == "suppressed" else "possible spam") in last
    finally:
        app.db.dispose()


def test_the_late_acknowledgement_quotes_her_text_not_the_lists_footer(
    tmp_path: Path, database_url: str, clock: FrozenClock
) -> None:
    """The message stored is the list's copy (its footer added); the acknowledgement
    answers it, and quotes what she wrote, as her copy first would have."""
    app = agent_app(tmp_path, database_url, clock, acknowledgements={"quote_message": "always"})
    try:
        deliver(app, _list_copy(), mail_from=LIST_BOUNCES)
        deliver(app, _direct(), mail_from=ALICE)
        [ack] = [s for s in outbox(app) if s.purpose == "ack"]
        assert ack.recipients == [ALICE]
        assert ack.msg["In-Reply-To"] == "<n1@customer.test>"
        assert "my printer is on fire" in ack.text and "Users mailing list" not in ack.text
    finally:
        app.db.dispose()


def test_no_late_acknowledgement_once_an_agent_has_answered(desk: App) -> None:
    """Her own copy held up for hours, after the agent answered the list's copy: an
    acknowledgement then would tell her nothing, so none goes out."""
    deliver(desk, _list_copy(), mail_from=LIST_BOUNCES)
    [notice] = [s for agent in AGENT_ADDRESSES for s in to(desk, agent, "new_ticket")]
    agent = notice.recipients[0]
    deliver(
        desk,
        client_reply(notice, "Please unplug it.\n", sender=f"Agent <{agent}>"),
        rcpt=(reply_address(notice),),
        mail_from=agent,
    )
    assert [s.purpose for s in to(desk, ALICE)] == ["agent_reply"]

    deliver(desk, _direct(), mail_from=ALICE)

    assert [s.purpose for s in to(desk, ALICE)] == ["agent_reply"]
    assert _late_acks(desk) == []


def test_the_two_copies_on_two_nodes_at_once(
    tmp_path: Path, database_url: str, clock: FrozenClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Node 1 is deciding the list's copy (no ticket committed yet) when node 2 takes her
    copy: node 2 waits for the conversation, then finds the list's copy stored and
    acknowledges her once."""
    apps = agent_app(tmp_path, database_url, clock), agent_app(tmp_path, database_url, clock)
    app, other_node = apps
    try:
        original = stages.decide_thread
        finish: list[Callable[[], None]] = []

        def paused(ctx: Any, session: Any, deps: Any) -> Any:
            decision = original(ctx, session, deps)
            if ctx.message.header_all("List-Id") and not finish:
                finish.append(in_thread(lambda: deliver(other_node, _direct(), mail_from=ALICE)))
            return decision

        monkeypatch.setattr(stages, "decide_thread", paused)
        deliver(app, _list_copy(), mail_from=LIST_BOUNCES)
        assert finish, "her copy never ran"
        finish[0]()
        _assert_one_acknowledged_request(app, late=True)
    finally:
        for each in apps:
            each.db.dispose()


@pytest.mark.parametrize("unsure_of", ["hers", "the-lists"])
def test_a_copy_the_spam_filter_is_unsure_of_flags_the_ticket_and_its_release_acknowledges_her(
    tmp_path: Path, database_url: str, clock: FrozenClock, unsure_of: str
) -> None:
    """The list's copy starts the ticket and the agents hear of it; her own copy follows.
    The filter unsure of either copy: the ticket is possible spam (as her copy first
    would have made it) and her acknowledgement waits. The agent who answers the
    notice with ``#ham`` releases it: she gets that acknowledgement, quoting her text,
    and the agents are not told of the ticket again. (It used to be withheld for good:
    the ticket was not flagged, and a release answered only the list's copy, list
    mail, which is never answered.)"""
    allowed = [LIST] if unsure_of == "hers" else [ALICE]
    spam = {"unsure_at": 0.0, "spam_at": 1.0, "allow_addresses": allowed}
    app = agent_app(
        tmp_path, database_url, clock, spam=spam, acknowledgements={"quote_message": "always"}
    )
    try:
        deliver(app, _list_copy(), mail_from=LIST_BOUNCES)
        with app.db.transaction() as session:
            flagged_by_the_list = session.scalars(select(Ticket.possible_spam)).one()
        assert flagged_by_the_list is (unsure_of == "the-lists")
        notices = [s for agent in AGENT_ADDRESSES for s in to(app, agent, "new_ticket")]
        if unsure_of == "hers":
            [notice] = notices  # the list's copy, not flagged, reached them
        else:
            assert notices == []
        deliver(app, _direct(), mail_from=ALICE)
        with app.db.transaction() as session:
            assert session.scalars(select(Ticket.possible_spam)).one()
        assert _acks(app) == []
        assert _late_acks(app) == [(1, 1)]

        if unsure_of == "hers":
            agent = notice.recipients[0]
            release = client_reply(notice, "#ham\n", sender=f"Agent <{agent}>")
            deliver(app, release, rcpt=(reply_address(notice),), mail_from=agent)
        else:
            with app.db.transaction() as session:
                intake = session.scalars(select(Intake).order_by(Intake.id)).first()
                assert intake is not None
                settle_ticket(session, intake, SpamLabel.HAM, app.notices(), clock(), actor="ops")

        [ack] = [s for s in outbox(app) if s.purpose == "ack"]
        assert ack.recipients == [ALICE]
        assert ack.msg["In-Reply-To"] == "<n1@customer.test>"
        assert "my printer is on fire" in ack.text and "Users mailing list" not in ack.text
        told = [s.purpose for agent in AGENT_ADDRESSES for s in to(app, agent)]
        assert told.count("new_ticket") == 1, told
        with app.db.transaction() as session:
            assert not session.scalars(select(Ticket.possible_spam)).one()
    finally:
        app.db.dispose()
