"""Mail the filter calls spam makes no outbound mail of any kind (issue 6), on every path.

Everything scores spam here (unsure_at = spam_at = 0). Each test first opens ticket
#1 for alice with the filter off (the installation's normal life), then delivers
spam from a stranger: quarantined as spam, nothing queued, nothing added to #1.
The agent stage runs before the spam stage, so mail that only looks like an agent's
(a forged From, a forged reply address) used to be held as agent mail, and the real
agent warned, or its commands sent to them to confirm, whatever the filter said.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from maildesk.app import App
from maildesk.db.models import Intake, IntakeState, Message, MessageKind
from tests.agents.agenthelp import agent_app, outbox, plain_mail, ticket_number
from tests.conftest import FrozenClock
from tests.mailfactory import deliver, make_mail, reply_to

EVERYTHING_IS_SPAM = {"unsure_at": 0.0, "spam_at": 0.0}


def _with_ticket_one(tmp_path: Path, database_url: str, clock: FrozenClock) -> App:
    """Ticket #1 (alice's, assigned to bob) made with the filter off; the strict app."""
    lenient = agent_app(tmp_path, database_url, clock, spam={"enabled": False})
    try:
        deliver(lenient, make_mail(message_id="first@customer.test", subject="VPN drops"))
        assert ticket_number(lenient).assignee == "bob"
    finally:
        lenient.db.dispose()
    return agent_app(tmp_path, database_url, clock, spam=EVERYTHING_IS_SPAM)


def _last_intake(app: App) -> Intake:
    with app.db.transaction() as session:
        row = session.scalars(select(Intake).order_by(Intake.id.desc())).first()
        assert row is not None
        session.expunge(row)
        return row


def _assert_held_as_spam(app: App) -> None:
    held = _last_intake(app)
    assert held.state is IntakeState.QUARANTINED
    assert (held.quarantine_reason or "").startswith("spam:"), held.quarantine_reason


def _new_mail(app: App, before: int) -> list[tuple[str, list[str]]]:
    return [(s.purpose, s.recipients) for s in outbox(app)[before:]]


@pytest.mark.parametrize("vector", ["reply address", "in-reply-to"])
def test_spam_to_a_forged_agent_reply_address_warns_no_agent(
    tmp_path: Path, database_url: str, clock: FrozenClock, vector: str
) -> None:
    """A stranger's spam to ``support+a-1-<garbage>@`` (an agent reply address for #1
    whose signature is not ours), or with In-Reply-To ``<md.a.1.x.y@...>`` (an agent
    Message-ID for #1, forged): no agent claim by its From, no ticket joined."""
    app = _with_ticket_one(tmp_path, database_url, clock)
    try:
        before = len(outbox(app))
        if vector == "reply address":
            rcpt = "support+a-1-0123456789abcdef@example.com"
            spam = make_mail(
                sender="Mallory <mallory@spam.test>", to=rcpt, subject="Cheap meds, act now"
            )
        else:
            rcpt = "support@example.com"
            spam = make_mail(
                sender="Mallory <mallory@spam.test>",
                subject="Re: Cheap meds, act now",
                in_reply_to="md.a.1.0123456789.abcdef@example.com",
            )
        deliver(app, spam, rcpt=(rcpt,), mail_from="mallory@spam.test")
        assert _new_mail(app, before) == [], "spam made outbound mail"
        _assert_held_as_spam(app)
    finally:
        app.db.dispose()


@pytest.mark.parametrize(
    "body",
    [
        "Best prices on meds, click here\n",
        "#priority urgent\n\nBest prices on meds: http://pills.spam.test/\n",
    ],
    ids=["plain", "with-a-command"],
)
def test_spam_under_an_agents_from_naming_a_ticket_warns_no_agent_and_notes_nothing(
    tmp_path: Path, database_url: str, clock: FrozenClock, body: str
) -> None:
    """From: bob (forged), ``[Support #1]`` in the subject, no reference of ours. Plain,
    the thread stage makes it a new ticket linked to #1 (bob is no participant of it),
    and it was held as forged agent mail, bob warned; with a ``#priority`` line, the
    agent stage made it a "reply to apply" request on #1, its text a note there."""
    app = _with_ticket_one(tmp_path, database_url, clock)
    try:
        before = len(outbox(app))
        spam = plain_mail(
            "Bob Agent <bob@agents.test>",
            "support@example.com",
            "[Support #1] Cheap meds, act now",
            body,
        )
        deliver(app, spam, mail_from="bob@agents.test")
        assert _new_mail(app, before) == [], "spam made outbound mail"
        with app.db.transaction() as session:
            kinds = list(session.scalars(select(Message.kind).where(Message.ticket_id == 1)))
        assert MessageKind.INTERNAL_NOTE not in kinds, "spam kept as a note on ticket #1"
        _assert_held_as_spam(app)
    finally:
        app.db.dispose()


def test_spam_that_looks_automated_ours_or_a_reply_makes_no_mail(
    tmp_path: Path, database_url: str, clock: FrozenClock
) -> None:
    """Automated-looking spam, a From of our own, an In-Reply-To naming an id nobody
    stored or signed, two support addresses and a forged signed ticket address, a
    file import: each is quarantined as spam, nothing is queued."""
    app = _with_ticket_one(tmp_path, database_url, clock)
    try:
        before = len(outbox(app))
        cases = [
            make_mail(
                sender="mallory@spam.test",
                subject="Out of office: pills",
                headers={"Auto-Submitted": "auto-replied"},
            ),
            make_mail(
                sender="mallory@spam.test",
                subject="pills",
                headers={"Precedence": "bulk", "List-Id": "<x.spam.test>"},
            ),
            make_mail(sender="Support <support@example.com>", subject="Account suspended"),
            make_mail(
                sender="mallory@spam.test",
                subject="Re: pills",
                in_reply_to="nobody@unknown.test",
                references=["nobody@unknown.test"],
            ),
            make_mail(sender="MAILER-DAEMON@spam.test", subject="Undelivered Mail: pills"),
            make_mail(sender="mallory@spam.test", subject="[Support #1] pills"),
        ]
        for raw in cases:
            deliver(app, raw, mail_from="mallory@spam.test")
            _assert_held_as_spam(app)
        deliver(
            app,
            make_mail(sender="mallory@spam.test", subject="pills 2"),
            rcpt=("support@example.com", "support+t-1-00000000@example.com"),
        )
        _assert_held_as_spam(app)
        deliver(app, make_mail(sender="mallory@spam.test", subject="pills 3"), source="file")
        _assert_held_as_spam(app)
        assert _new_mail(app, before) == []
    finally:
        app.db.dispose()


def test_spam_retried_from_quarantine_is_scored_again_and_makes_no_mail(
    tmp_path: Path, database_url: str, clock: FrozenClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``quarantine retry`` (not release) of held spam: scored again, held again, no mail.
    (Ops run it with the daemon's config: the filter as strict as the daemon's.)"""
    from tests.spam.test_release import desk, held, mail_out, ops

    app = desk(tmp_path, database_url, clock, EVERYTHING_IS_SPAM)
    try:
        deliver(app, make_mail(sender="mallory@spam.test", subject="pills"))
        run = ops(app, tmp_path, clock, monkeypatch)
        assert "quarantined 1" in run("quarantine", "retry", str(held(app)))
        _assert_held_as_spam(app)
        assert mail_out(app) == []
    finally:
        app.db.dispose()


def test_an_agents_note_to_the_internal_address_is_kept_when_their_domain_vouches_for_it(
    tmp_path: Path, database_url: str, clock: FrozenClock
) -> None:
    """The filter decides for mail only its From calls an agent's. Bob's note to the
    internal address, with our MTA's DKIM and DMARC pass for his domain, is his note
    whatever it scores; the same mail without them is a stranger's spam."""
    lenient = agent_app(tmp_path, database_url, clock, spam={"enabled": False})
    first = make_mail(message_id="first@customer.test", subject="VPN drops")
    try:
        deliver(lenient, first)
    finally:
        lenient.db.dispose()
    trusting = {
        "internal_addresses": ["internal@example.com"],
        "trusted_authserv_ids": ["mx.example.com"],
    }
    app = agent_app(tmp_path, database_url, clock, spam=EVERYTHING_IS_SPAM, agent_mail=trusting)
    passed = "mx.example.com; dkim=pass header.d=agents.test; dmarc=pass header.from=agents.test"
    try:
        for n, headers in enumerate(({"Authentication-Results": passed}, {})):
            note = reply_to(
                first,
                sender="Bob Agent <bob@agents.test>",
                body="Vendor bug VX-1234 is the cause.\n",
                message_id=f"note{n}@agents.test",
                headers=headers,
            )
            deliver(app, note, rcpt=("internal@example.com",), mail_from="bob@agents.test")
        with app.db.transaction() as session:
            kinds = list(session.scalars(select(Message.kind).where(Message.ticket_id == 1)))
        assert kinds.count(MessageKind.INTERNAL_NOTE) == 1
        _assert_held_as_spam(app)
    finally:
        app.db.dispose()
