"""Feedback as other features give it (the record_feedback API), learned in the background."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from sqlalchemy import select

from maildesk.app import App
from maildesk.db.models import Event, Intake, Message, SpamFeedback, Ticket
from maildesk.spam.feedback import FeedbackError, SpamLabel, record_feedback
from maildesk.spam.jobs import SpamNotLearned, learn_now, on_shutdown
from maildesk.spam.model import SpamFilter
from maildesk.spam.scoring import SEED_MODEL
from tests.conftest import FrozenClock, make_settings
from tests.mailfactory import deliver, make_mail

SEED = SpamFilter.load(SEED_MODEL)


def live_model(app: App) -> SpamFilter:
    return SpamFilter.load(app.settings.data_dir / "spam-model.npz")


def test_feedback_names_a_message_by_intake_or_message_and_is_learned_once(app: App) -> None:
    deliver(app, make_mail(message_id="one@customer.test"))
    deliver(app, make_mail(message_id="two@customer.test", subject="Second"))
    with app.db.transaction() as session:
        first, second = session.scalars(select(Intake).order_by(Intake.id)).all()
        message_pk = second.message_pk
        assert message_pk is not None
        # An agent's #spam on the first, an IMAP Junk move of the second.
        spam = SpamLabel.SPAM
        assert record_feedback(session, intake_id=first.id, label=spam, source="agent", actor="bob")
        assert record_feedback(
            session, message_pk=message_pk, label=spam, source="imap_junk", actor="bob"
        )
        # The same verdict from another source is not a second lesson.
        assert not record_feedback(
            session, intake_id=second.id, label=spam, source="cli", actor="bob"
        )
    assert learn_now(app) == 2
    assert learn_now(app) == 0
    model = live_model(app)
    assert model.trained_spam == SEED.trained_spam + 2
    assert model.seen == SEED.seen + 2  # the version scorers record
    with app.db.transaction() as session:
        ledger = session.scalars(select(SpamFeedback).order_by(SpamFeedback.id)).all()
        assert [(f.source, f.actor) for f in ledger] == [("agent", "bob"), ("imap_junk", "bob")]
        assert all(f.learned_at is not None for f in ledger)
        # A correction is news again, and learned again.
        assert record_feedback(
            session, message_pk=message_pk, label="ham", source="agent", actor="carol"
        )
    assert learn_now(app) == 1
    assert live_model(app).trained_ham == SEED.trained_ham + 1


def test_feedback_about_nothing_stored_is_refused(app: App) -> None:
    with app.db.transaction() as session:
        with pytest.raises(FeedbackError):
            record_feedback(session, intake_id=999, label=SpamLabel.HAM, source="cli", actor="x")
        with pytest.raises(FeedbackError):
            record_feedback(session, label=SpamLabel.HAM, source="cli", actor="x")


def test_a_corrupt_live_model_is_relearned_from_the_seed_with_a_log_line(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    deliver(app, make_mail(message_id="c@customer.test"))
    live = app.settings.data_dir / "spam-model.npz"
    live.write_bytes(b"\x00garbage, a half-written file from a crashed disk")
    with app.db.transaction() as session:
        intake = session.scalars(select(Intake)).one()
        record_feedback(session, intake_id=intake.id, label="spam", source="cli", actor="ops")
    with caplog.at_level(logging.INFO, logger="maildesk.spam"):
        assert learn_now(app) == 1
    assert any("falling back to the seed model" in r.getMessage() for r in caplog.records)
    assert live_model(app).trained_spam == SEED.trained_spam + 1  # readable again


def test_spam_score_band_and_model_version_are_recorded(
    tmp_path: Path, database_url: str, clock: FrozenClock
) -> None:
    strict = {"unsure_at": 0.0, "spam_at": 0.0}
    app = App.build(make_settings(tmp_path, database_url, spam=strict), clock=clock)
    try:
        deliver(app, make_mail(subject="You won"))
        with app.db.transaction() as session:
            [event] = session.scalars(select(Event).where(Event.kind == "spam")).all()
            assert event.intake_id is not None and event.ticket_id is None
            assert event.data["band"] == "spam"
            assert event.data["model"] == "seed"
            assert event.data["model_version"] == SEED.seen
            assert session.scalars(select(Ticket)).all() == []
            assert session.scalars(select(Message)).all() == []
    finally:
        app.db.dispose()


def test_a_failed_learning_run_is_a_failure_the_scheduler_sees_and_loses_nothing(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    deliver(app, make_mail(message_id="f@customer.test"))
    live = app.settings.data_dir / "spam-model.npz"
    live.mkdir()  # the model cannot be written there: a full or broken disk
    with app.db.transaction() as session:
        intake = session.scalars(select(Intake)).one()
        record_feedback(session, intake_id=intake.id, label="spam", source="cli", actor="ops")
    # Raised, so the job's last success (metrics, `maildesk status`) does not move.
    with pytest.raises(SpamNotLearned):
        learn_now(app)
    with caplog.at_level(logging.ERROR, logger="maildesk.spam"):
        on_shutdown(app)  # the daemon still stops, saying what it could not learn
    assert any("stays pending" in r.getMessage() for r in caplog.records)
    with app.db.transaction() as session:
        assert session.scalars(select(SpamFeedback.learned_at)).one() is None
    live.rmdir()
    assert learn_now(app) == 1
    assert live_model(app).trained_spam == SEED.trained_spam + 1
