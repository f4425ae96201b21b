"""Several nodes on one database learn one spam model (maildesk.shared_models)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from maildesk.app import App
from maildesk.db.models import Intake, SharedModel
from maildesk.shared_models import PublishConflict, held_version, publish
from maildesk.spam.feedback import SpamLabel, record_feedback
from maildesk.spam.jobs import learn_now, take_shared_model
from maildesk.spam.model import SpamFilter
from maildesk.spam.scoring import SEED_MODEL, ScorerSpec, SpamScorer
from tests.conftest import FrozenClock, make_settings
from tests.mailfactory import deliver, make_mail

SEED = SpamFilter.load(SEED_MODEL)


@pytest.fixture
def nodes(tmp_path: Path, database_url: str, clock: FrozenClock) -> Iterator[tuple[App, App]]:
    """Two nodes: one database, a data directory each."""
    apps = tuple(
        App.build(
            make_settings(tmp_path / name, database_url, node_name=name, data_dir=tmp_path / name),
            clock=clock,
        )
        for name in ("node-a", "node-b")
    )
    yield apps  # type: ignore[misc]
    for app in apps:
        app.db.dispose()


def live(app: App) -> Path:
    return app.settings.data_dir / "spam-model.npz"


def mark(app: App, message_id: str, label: SpamLabel) -> None:
    deliver(app, make_mail(message_id=message_id, subject=f"About {message_id}"))
    with app.db.transaction() as session:
        intake = session.scalars(select(Intake).where(Intake.header_message_id == message_id)).one()
        record_feedback(session, intake_id=intake.id, label=label, source="cli", actor="ops")


def test_what_one_node_learns_every_node_scores_with(nodes: tuple[App, App]) -> None:
    a, b = nodes
    mark(a, "first@customer.test", SpamLabel.SPAM)
    assert learn_now(a) == 1
    assert held_version(live(a)) == 1
    assert not live(b).exists()
    take_shared_model(b)  # what the daemon does at start, and learn_now every interval
    assert live(b).read_bytes() == live(a).read_bytes() and held_version(live(b)) == 1
    scorer = SpamScorer(ScorerSpec(live(b), SEED_MODEL))
    msg = make_mail(subject="Anything")
    from maildesk.pipeline.parse import parse_message

    score = scorer.score(parse_message(msg))
    assert score is not None and score.model.startswith(f"live v{SEED.seen + 1} ")

    # Feedback recorded on node b is learned on top of node a's lesson, not instead of it.
    mark(b, "second@customer.test", SpamLabel.HAM)
    assert learn_now(b) == 1
    assert held_version(live(b)) == 2
    learn_now(a)  # nothing pending: only takes version 2
    model = SpamFilter.load(live(a))
    assert (model.trained_spam, model.trained_ham) == (SEED.trained_spam + 1, SEED.trained_ham + 1)
    with a.db.transaction() as session:
        row = session.get(SharedModel, "spam")
        assert row is not None and (row.version, row.updated_by) == (2, "node-b")


def test_a_stale_publish_is_refused(nodes: tuple[App, App], clock: FrozenClock) -> None:
    a, b = nodes
    mark(a, "first@customer.test", SpamLabel.SPAM)
    assert learn_now(a) == 1  # version 1
    SEED.save(live(b))
    with b.db.transaction() as session, pytest.raises(PublishConflict):
        publish(session, live(b), None, node="node-b", now=clock())  # as if there were none
    with a.db.transaction() as session:
        assert publish(session, live(a), 1, node="node-a", now=clock()) == 2
    with b.db.transaction() as session, pytest.raises(PublishConflict):
        publish(session, live(b), 1, node="node-b", now=clock())  # 1 is stale now


def test_the_learner_that_loses_a_race_learns_nothing_twice(
    nodes: tuple[App, App], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = nodes
    mark(a, "first@customer.test", SpamLabel.SPAM)
    mark(b, "second@customer.test", SpamLabel.HAM)
    # node b pulled (nothing yet) just before node a published its lesson.
    import maildesk.spam.feedback as feedback

    real_pull, calls = feedback.pull, []

    def racing_pull(db: object, path: Path) -> int | None:
        calls.append(path)
        if len(calls) == 1:
            assert learn_now(a) == 2  # a wins the race and learns both lessons: version 1
            return None
        return real_pull(db, path)  # type: ignore[arg-type]

    monkeypatch.setattr(feedback, "pull", racing_pull)
    # b's publish is refused; on the retry nothing is pending any more, so no lesson
    # is learned twice into the shared model.
    assert feedback.learn_pending(b.db, ScorerSpec(live(b), SEED_MODEL), b.clock, "node-b") == 0
    assert calls.count(live(b)) == 1  # refused once; then nothing was left to learn
    monkeypatch.undo()
    take_shared_model(b)
    assert held_version(live(b)) == 1
    model = SpamFilter.load(live(b))
    assert (model.trained_spam, model.trained_ham) == (SEED.trained_spam + 1, SEED.trained_ham + 1)
