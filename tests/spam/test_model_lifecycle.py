"""The live model's file across crashes and damage: every lesson learned once, none lost."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from sqlalchemy import select

import maildesk.spam.feedback as feedback
from maildesk.app import App
from maildesk.db.models import Intake, SharedModel, SpamFeedback
from maildesk.shared_models import held_version, publish
from maildesk.spam.feedback import SpamLabel, record_feedback
from maildesk.spam.jobs import SpamNotLearned, learn_now, take_shared_model
from maildesk.spam.model import SpamFilter
from maildesk.spam.scoring import SEED_MODEL, ScorerSpec, SpamScorer
from tests.mailfactory import deliver, make_mail

SEED = SpamFilter.load(SEED_MODEL)


class Killed(BaseException):
    """kill -9: nothing after it runs, no except clause sees it."""


def live(app: App) -> Path:
    return app.settings.data_dir / "spam-model.npz"


def mark(app: App, message_id: str, label: SpamLabel) -> None:
    deliver(app, make_mail(message_id=message_id, subject=f"About {message_id}"))
    with app.db.transaction() as session:
        intake = session.scalars(select(Intake).where(Intake.header_message_id == message_id)).one()
        record_feedback(session, intake_id=intake.id, label=label, source="cli", actor="ops")


def shared(app: App) -> SpamFilter:
    """The model the database holds, which every node takes."""
    with app.db.transaction() as session:
        row = session.get(SharedModel, "spam")
        assert row is not None
        data = bytes(row.data)
    copy = app.settings.data_dir / "shared-copy.npz"
    copy.write_bytes(data)
    return SpamFilter.load(copy)


def test_a_learner_killed_before_its_publish_committed_learns_nothing_twice(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    mark(app, "first@customer.test", SpamLabel.SPAM)
    assert learn_now(app) == 1  # shared version 1
    mark(app, "second@customer.test", SpamLabel.SPAM)

    def killed(*_args: object, **_kwargs: object) -> int:
        raise Killed  # the model is learned and saved; the database never heard of it

    monkeypatch.setattr(feedback, "publish", killed)
    with pytest.raises(Killed):
        learn_now(app)
    monkeypatch.undo()
    # The restart: take the shared model, learn what is still pending.
    take_shared_model(app)
    assert learn_now(app) == 1
    for model in (SpamFilter.load(live(app)), shared(app)):  # this node's and every node's
        assert (model.trained_spam, model.seen) == (SEED.trained_spam + 2, SEED.seen + 2)


def test_a_damaged_copy_is_taken_again_from_the_database_not_the_seed_published(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    mark(app, "first@customer.test", SpamLabel.SPAM)
    assert learn_now(app) == 1  # shared version 1: the seed and one lesson
    live(app).write_bytes(b"\x00garbage: a disk that lost the file")
    mark(app, "second@customer.test", SpamLabel.HAM)
    with caplog.at_level(logging.INFO, logger="maildesk.spam"):
        assert learn_now(app) == 1
    # The lesson learned before the damage is kept, here and for every node.
    model = shared(app)
    assert (model.trained_spam, model.trained_ham) == (SEED.trained_spam + 1, SEED.trained_ham + 1)
    assert SpamFilter.load(live(app)).seen == model.seen == SEED.seen + 2
    assert held_version(live(app)) == 2


def test_a_daemon_starting_on_a_damaged_copy_scores_with_the_shared_model(app: App) -> None:
    mark(app, "first@customer.test", SpamLabel.SPAM)
    assert learn_now(app) == 1
    live(app).write_bytes(b"\x00garbage")
    take_shared_model(app)  # at start
    scorer = SpamScorer(ScorerSpec(live(app), SEED_MODEL))
    from maildesk.pipeline.parse import parse_message

    score = scorer.score(parse_message(make_mail(subject="Anything")))
    assert score is not None and score.model.startswith(f"live v{SEED.seen + 1} ")


def test_a_shared_model_of_another_feature_version_is_not_replaced_by_the_seed(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    from dataclasses import replace

    mark(app, "first@customer.test", SpamLabel.SPAM)
    assert learn_now(app) == 1  # shared version 1
    # A node already running a newer maildesk publishes a model of a feature
    # version this one does not know: it cannot read it, and must not learn
    # over it from the seed, which would throw away what every node learned.
    newer = SpamFilter.load(live(app))
    newer.features = replace(newer.features, version=99)
    upgraded = app.settings.data_dir / "newer.npz"
    newer.save(upgraded)
    with app.db.transaction() as session:
        assert publish(session, upgraded, 1, node="node-new", now=app.clock()) == 2
    mark(app, "second@customer.test", SpamLabel.HAM)
    with caplog.at_level(logging.INFO, logger="maildesk.spam"), pytest.raises(SpamNotLearned):
        learn_now(app)
    assert any("another feature version" in r.getMessage() for r in caplog.records)
    with app.db.transaction() as session:
        row = session.get(SharedModel, "spam")
        assert row is not None and (row.version, row.updated_by) == (2, "node-new")
        assert bytes(row.data) == upgraded.read_bytes()
        pending = session.scalars(select(SpamFeedback).where(SpamFeedback.learned_at.is_(None)))
        assert len(pending.all()) == 1  # for the node that reads it
