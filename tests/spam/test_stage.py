"""The spam stage in the real pipeline: quarantine, possible spam, exemptions, no outbound."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from sqlalchemy import select

from maildesk.app import App
from maildesk.db.models import Event, Intake, IntakeState, Outbox, Ticket, TicketStatus
from maildesk.pipeline.parse import parse_message
from maildesk.spam.bands import Band
from maildesk.spam.scoring import SEED_MODEL, ScorerSpec, SpamScorer
from maildesk.tickets import change_status
from tests.conftest import FrozenClock, make_settings
from tests.mailfactory import deliver, make_mail, reply_to


def first_in_band(corpus: Path, folder: str, band: Band) -> bytes:
    """A corpus message the shipped seed model puts in ``band`` (found, not hard-coded)."""
    scorer = SpamScorer(ScorerSpec(Path("/nonexistent/live.npz"), SEED_MODEL))
    for path in sorted((corpus / "spamassassin" / folder).iterdir())[:200]:
        raw = path.read_bytes().split(b"\n", 1)[1]  # drop the mbox From_ line
        score = scorer.score(parse_message(raw))
        if score is not None and score.band is band:
            return raw
    raise AssertionError(f"no {band} message among the first 200 of {folder}")


def outbox_rows(app: App) -> list[Outbox]:
    with app.db.transaction() as session:
        return list(session.scalars(select(Outbox)))


def spam_events(app: App) -> list[Event]:
    with app.db.transaction() as session:
        return list(session.scalars(select(Event).where(Event.kind == "spam")))


def test_spam_is_quarantined_and_produces_no_mail_of_any_kind(
    app: App, corpus: Path, tmp_path: Path
) -> None:
    spam = first_in_band(corpus, "spam-2", Band.SPAM)
    summary = deliver(app, spam, mail_from=None).as_dict()
    assert summary["quarantined"] == 1 and summary["created"] == 0, summary
    with app.db.transaction() as session:
        intake = session.scalars(select(Intake)).one()
        assert intake.state is IntakeState.QUARANTINED
        assert (intake.quarantine_reason or "").startswith("spam: p=")
        assert session.scalars(select(Ticket)).all() == []
    assert outbox_rows(app) == []
    # Nothing reaches the wire either: drain the outbox into the app's outbox Maildir.
    app.sender().drain()
    maildir = app.settings.data_dir / "outbox-maildir"
    assert not maildir.exists() or not [p for p in maildir.rglob("*") if p.is_file()]
    # The same path does send for ham: the check above can see mail when there is some.
    deliver(app, make_mail(subject="Login fails after password reset"))
    app.sender().drain()
    assert len([p for p in maildir.rglob("*") if p.is_file()]) == 1


def test_ham_is_acknowledged_and_its_score_recorded(app: App) -> None:
    ham = make_mail(
        subject="Login fails after password reset",
        body="Hi,\n\nsince I reset my password yesterday I cannot log in to the portal.\n"
        "The error says the account is locked. Could you have a look?\n\nThanks,\nAlice\n",
    )
    assert deliver(app, ham).as_dict()["created"] == 1
    [ack] = outbox_rows(app)
    assert ack.purpose == "ack"
    [event] = spam_events(app)
    assert event.data["band"] == "ham" and 0 <= event.data["probability"] < 0.5
    assert "seed" in event.reason  # no live model yet: the shipped seed scored it


def test_unsure_mail_becomes_a_flagged_ticket_without_acknowledgement(
    tmp_path: Path, database_url: str, clock: FrozenClock
) -> None:
    settings = make_settings(tmp_path, database_url, spam={"unsure_at": 0.0, "spam_at": 1.0})
    app = App.build(settings, clock=clock)
    try:
        deliver(app, make_mail(subject="Cheap meds, act now"))
        with app.db.transaction() as session:
            ticket = session.scalars(select(Ticket)).one()
            assert ticket.possible_spam
            held = session.scalars(select(Event).where(Event.kind.startswith("ack"))).one()
            assert held.kind == "ack_held" and "possible spam" in held.reason
            # Nor does any other automatic customer mail go out for it (here: resolving).
            change_status(session, ticket, TicketStatus.RESOLVED, clock(), app.notices(), actor="a")
        assert outbox_rows(app) == []
        with app.db.transaction() as session:
            skipped = session.scalars(select(Event).where(Event.kind == "resolved_skipped")).one()
            assert "possible spam" in skipped.reason
    finally:
        app.db.dispose()


def test_a_reply_that_joins_a_ticket_is_never_filtered(
    tmp_path: Path, database_url: str, clock: FrozenClock
) -> None:
    # Everything scores spam here; the reply still lands on its ticket.
    strict = {"unsure_at": 0.0, "spam_at": 0.0}
    app = App.build(make_settings(tmp_path, database_url, spam=strict), clock=clock)
    try:
        first = make_mail(message_id="start@customer.test", subject="Invoice question")
        app_lenient = App.build(
            make_settings(tmp_path, database_url, spam={"enabled": False}), clock=clock
        )
        assert deliver(app_lenient, first).as_dict()["created"] == 1
        app_lenient.db.dispose()
        summary = deliver(app, reply_to(first, body="WIN A PRIZE NOW")).as_dict()
        assert summary["threaded"] == 1 and summary["quarantined"] == 0, summary
        [event] = spam_events(app)
        assert "joins an existing ticket" in event.reason
    finally:
        app.db.dispose()


@pytest.mark.parametrize(
    ("allow", "sender"),
    [
        ({"allow_domains": ["partner.example"]}, "alerts@eu.partner.example"),
        ({"allow_addresses": ["Bot@Vendor.example"]}, "bot@vendor.example"),
    ],
)
def test_allow_listed_senders_are_not_filtered(
    tmp_path: Path, database_url: str, clock: FrozenClock, allow: dict[str, list[str]], sender: str
) -> None:
    spam = {"unsure_at": 0.0, "spam_at": 0.0, **allow}
    app = App.build(make_settings(tmp_path, database_url, spam=spam), clock=clock)
    try:
        summary = deliver(app, make_mail(sender=sender, subject="Monitoring alert")).as_dict()
        assert summary["created"] == 1, summary
        assert "allow_" in spam_events(app)[0].reason
    finally:
        app.db.dispose()


def test_an_agents_from_address_alone_does_not_pass_the_filter(
    tmp_path: Path, database_url: str, clock: FrozenClock
) -> None:
    # Everything scores spam here. Spammers forge From = a staff address all the time:
    # only mail whose sender authentication passed at our own MTA is let through.
    spam = {"unsure_at": 0.0, "spam_at": 0.0}
    settings = make_settings(
        tmp_path,
        database_url,
        spam=spam,
        agents=[{"name": "bob", "addresses": ["bob@example.com"]}],
        agent_mail={"trusted_authserv_ids": ["mx.example.com"]},
    )
    app = App.build(settings, clock=clock)
    try:
        forged = make_mail(sender="Bob <bob@example.com>", subject="Invoice overdue, pay now")
        assert deliver(app, forged).as_dict()["quarantined"] == 1
        passed = (
            "mx.example.com; dkim=pass header.d=example.com; spf=pass smtp.mailfrom=example.com"
        )
        elsewhere = "evil.example; dkim=pass header.d=example.com"  # not our MTA: ignored
        untrusted = make_mail(
            sender="Bob <bob@example.com>",
            subject="Printer in room 4",
            headers={"Authentication-Results": elsewhere},
        )
        assert deliver(app, untrusted).as_dict()["quarantined"] == 1
        real = make_mail(
            sender="Bob <bob@example.com>",
            subject="Printer in room 4",
            headers={"Authentication-Results": passed},
        )
        assert deliver(app, real).as_dict()["created"] == 1
        reasons = [e.reason for e in spam_events(app)]
        assert "not filtered: authenticated mail from agent bob (dkim, spf passed)" in reasons[-1]
        assert all("not filtered" not in r for r in reasons[:-1])
    finally:
        app.db.dispose()


def test_a_customer_an_agent_answered_is_not_filtered_a_mere_earlier_sender_is(
    tmp_path: Path, database_url: str, clock: FrozenClock
) -> None:
    from tests.agents.agenthelp import agent_app, client_reply, reply_address, to

    lenient = agent_app(tmp_path, database_url, clock, spam={"enabled": False})
    try:
        deliver(lenient, make_mail(sender="alice@customer.test", subject="VPN drops"))
        deliver(lenient, make_mail(sender="mallory@spam.test", subject="Great offer"))
        notice = to(lenient, "bob@agents.test", "new_ticket")[0]  # alice's ticket, #1
        answer = client_reply(notice, "Please update the client.\n")
        deliver(lenient, answer, rcpt=(reply_address(notice),), mail_from="bob@agents.test")
        assert to(lenient, "alice@customer.test", "agent_reply")
    finally:
        lenient.db.dispose()
    # Everything scores spam now.
    strict = agent_app(tmp_path, database_url, clock, spam={"unsure_at": 0.0, "spam_at": 0.0})
    try:
        new = make_mail(sender="Alice <Alice@Customer.test>", subject="Another question")
        assert deliver(strict, new).as_dict()["created"] == 1
        assert "alice@customer.test is a customer we answered on ticket #1" in (
            spam_events(strict)[-1].reason
        )
        again = make_mail(sender="mallory@spam.test", subject="Another great offer")
        assert deliver(strict, again).as_dict()["quarantined"] == 1  # wrote before, never answered
    finally:
        strict.db.dispose()


def test_a_corrupt_live_model_falls_back_to_the_seed_with_a_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, corpus: Path
) -> None:
    live = tmp_path / "spam-model.npz"
    live.write_bytes(b"PK\x03\x04 not really a model")
    scorer = SpamScorer(ScorerSpec(live, SEED_MODEL))
    with caplog.at_level(logging.WARNING, logger="maildesk.spam"):
        score = scorer.score(parse_message(make_mail()))
    assert score is not None and score.model.startswith("seed")
    assert any("falling back to the seed" in r.getMessage() for r in caplog.records)


def test_the_scorer_picks_up_a_newly_saved_live_model(tmp_path: Path) -> None:
    from maildesk.spam.model import SpamFilter

    live = tmp_path / "spam-model.npz"
    scorer = SpamScorer(ScorerSpec(live, SEED_MODEL))
    msg = parse_message(make_mail(subject="quarterly numbers"))
    first = scorer.score(msg)
    assert first is not None and first.model.startswith("seed")
    model = SpamFilter.load(SEED_MODEL)
    for _ in range(3):
        model.learn(msg, is_spam=True)
    model.save(live)
    second = scorer.score(msg)
    assert second is not None and second.model.startswith("live")
    assert second.probability > first.probability
