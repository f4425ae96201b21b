"""Scoring inbound mail with the live spam model, beside parsing.

Scoring is pure CPU work on the parsed message, so it runs where parsing
runs: in the parse child during a bulk import (overlapped with applying the
previous batch), in-process otherwise. Each process keeps one scorer per
model location and reloads it when the live model file changes on disk, so a
model saved after learning is picked up without a restart.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from maildesk.config import Settings
from maildesk.domain.message import ParsedMessage
from maildesk.spam.bands import Band, Thresholds

if TYPE_CHECKING:
    from maildesk.spam.model import SpamFilter

log = logging.getLogger("maildesk.spam")

SEED_MODEL = Path(__file__).resolve().parents[2] / "spam_model" / "seed.npz"
LIVE_MODEL_NAME = "spam-model.npz"


@dataclass(frozen=True, slots=True)
class ScorerSpec:
    """Where the models are and which thresholds apply: all a process needs to score."""

    live_path: Path
    seed_path: Path
    unsure_at: float | None = None
    spam_at: float | None = None
    verdict_headers: tuple[str, ...] = ()  # spam.trusted_verdict_headers
    authserv_ids: tuple[str, ...] = ()  # agent_mail.trusted_authserv_ids

    @classmethod
    def from_settings(cls, settings: Settings) -> ScorerSpec | None:
        spam = settings.spam
        if not spam.enabled:
            return None
        return cls(
            live_path=spam.model_path or settings.data_dir / LIVE_MODEL_NAME,
            seed_path=spam.seed_path or SEED_MODEL,
            unsure_at=spam.unsure_at,
            spam_at=spam.spam_at,
            verdict_headers=spam.trusted_verdict_headers,
            authserv_ids=settings.agent_mail.trusted_authserv_ids,
        )

    def load(self) -> tuple[SpamFilter, str]:
        """The live model, else the seed, reading the verdicts this installation trusts.

        Which headers are trusted is the installation's to say, not the model
        file's: it applies to the seed and to a model learned elsewhere alike.
        Raises ModelLoadError when neither loads.
        """
        from maildesk.spam.model import SpamFilter  # sklearn: import on use

        model, note = SpamFilter.load_or_seed(self.live_path, self.seed_path)
        model.read_verdicts(self.verdict_headers, self.authserv_ids)
        return model, note

    def thresholds(self, model: SpamFilter) -> Thresholds:
        """The installation's bands (spam.unsure_at / spam_at), else the model's own."""
        own = model.thresholds
        return Thresholds(
            self.unsure_at if self.unsure_at is not None else own.unsure_at,
            self.spam_at if self.spam_at is not None else own.spam_at,
        )


@dataclass(frozen=True, slots=True)
class SpamScore:
    """One message's score, as recorded on its event."""

    probability: float
    band: Band
    model: str  # which model scored it: "live" or "seed", with what it had learned
    version: int = 0  # the model's version: how many messages it has learned in all


class SpamScorer:
    def __init__(self, spec: ScorerSpec) -> None:
        self.spec = spec
        self._model: SpamFilter | None = None
        self._stamp: tuple[int, int] | None = None
        self._label = ""

    def score(self, msg: ParsedMessage) -> SpamScore | None:
        """The message's score, or None when no model can be loaded (logged)."""
        model = self._current()
        if model is None:
            return None
        verdict = model.score(msg)
        band = self.spec.thresholds(model).band(verdict.probability)
        return SpamScore(verdict.probability, band, self._label, model.seen)

    def load(self) -> None:
        """Load the model now rather than on the first message."""
        self._current()

    def model(self) -> SpamFilter | None:
        """The model :meth:`score` uses now (None when none can be loaded)."""
        return self._current()

    def _current(self) -> SpamFilter | None:
        stamp = _stamp(self.spec.live_path)
        if self._model is not None and stamp == self._stamp:
            return self._model
        from maildesk.spam.model import ModelLoadError  # sklearn: import on use

        try:
            model, note = self.spec.load()
        except ModelLoadError as exc:
            if self._model is None:
                log.error("spam filter off: no usable model (%s)", exc)
            return self._model
        fell_back = "falling back" in note
        (log.warning if fell_back and stamp is not None else log.info)("%s", note)
        source = "seed" if fell_back or stamp is None else "live"
        self._model, self._stamp = model, stamp
        self._label = (
            f"{source} v{model.seen} ({model.trained_spam} spam / {model.trained_ham} ham learned)"
        )
        return model


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_mtime_ns, info.st_size


# One scorer per model location in each process: the parse child has no App to
# hold it, and loading a model per batch would cost more than scoring the batch.
# The few used last are kept (a daemon uses one): each holds its model, tens of
# MB, and a process that meets many locations (tests, tools) must not keep them all.
_SCORERS: OrderedDict[ScorerSpec, SpamScorer] = OrderedDict()
SCORERS_KEPT = 4


def scorer_for(spec: ScorerSpec) -> SpamScorer:
    scorer = _SCORERS.get(spec)
    if scorer is None:
        scorer = _SCORERS[spec] = SpamScorer(spec)
        while len(_SCORERS) > SCORERS_KEPT:
            _SCORERS.popitem(last=False)
    else:
        _SCORERS.move_to_end(spec)
    return scorer
