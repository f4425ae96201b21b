"""A process keeps the spam scorers it used last, not every one it ever met."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

from maildesk.pipeline.parse import parse_message
from maildesk.spam.scoring import SCORERS_KEPT, SEED_MODEL, ScorerSpec, SpamScorer, scorer_for
from tests.mailfactory import make_mail


def test_a_process_meeting_many_model_locations_keeps_only_the_last_few(tmp_path: Path) -> None:
    """Each scorer holds its model (tens of MB): a tool or a test run that meets a new
    data directory per task kept every one of them before, gigabytes after a thousand."""
    message = parse_message(make_mail())
    daemon = ScorerSpec(tmp_path / "daemon" / "spam-model.npz", SEED_MODEL)
    own = scorer_for(daemon)
    own.score(message)
    gone: list[weakref.ref[SpamScorer]] = []
    for n in range(SCORERS_KEPT * 3):
        spec = ScorerSpec(tmp_path / f"dir{n}" / "spam-model.npz", SEED_MODEL)
        scorer = scorer_for(spec)
        scorer.score(message)
        gone.append(weakref.ref(scorer))
        assert scorer_for(daemon) is own  # the one in use stays, and is not loaded again
    del scorer
    gc.collect()
    alive = [ref for ref in gone if ref() is not None]
    assert len(alive) < SCORERS_KEPT, f"{len(alive)} of {len(gone)} scorers kept"
