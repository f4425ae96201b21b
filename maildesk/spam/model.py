"""The learning spam filter: hashed features -> three learners -> calibrated band.

Three incremental learners read one hashed feature vector (chosen on the
comparison in ``spam_model/MODEL_CARD.md``); the token statistics and the
evidence-scaled learner read its word tokens only, not its character n-grams
(see ``FeatureExtractor``):

* scikit-learn's ``SGDClassifier(loss="log_loss", learning_rate="constant",
  eta0=8).partial_fit`` on the vector (discriminative; a constant step measured
  better online than the decaying "optimal" schedule, which stops adapting as
  mail drifts);
* bogofilter/SpamBayes-style token counts with Robinson's f(w) and Fisher
  chi-square combining (:mod:`maildesk.spam.tokenstats`), which learns from a
  handful of examples and so carries the early, sparse-data phase;
* a second ``SGDClassifier`` on the word tokens each scaled by its smoothed log
  count ratio from those counts (NBSVM, Wang & Manning 2012): a token's weight
  starts from the evidence the counts already hold, and the learner corrects it.
  Fisher combining abstains (I = 0.5) on exactly the borderline mail, where
  both of its tails saturate; this learner does not.

The score is ``lr_margin + nb_weight * nb_margin + token_weight *
clip(logit(I), +-12) / 12``. Token counts learn every message; both SGD
learners learn with a thick threshold (only messages whose pre-update score is
wrong or within ``thick_margin`` of the boundary), which measured better than
training on everything. An online Platt scaler, fitted on the score each
message had *before* it was learned, maps it to a probability, so the
probability stays calibrated as the model drifts.

Persistence never uses pickle: one ``.npz`` holding the non-zero weights and a
JSON metadata blob, loaded with ``allow_pickle=False``, written atomically.
"""

from __future__ import annotations

import enum
import io
import json
import math
import warnings
import zipfile
import zlib
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
from numpy.typing import NDArray

from maildesk.atomic import write_atomic
from maildesk.domain.message import ParsedMessage
from maildesk.spam.bands import Band, Thresholds
from maildesk.spam.features import FeatureConfig, FeatureExtractor, MessageFeatures
from maildesk.spam.tokenstats import TokenStats, TokenStatsConfig

if TYPE_CHECKING:
    import scipy.sparse as sp
    from sklearn.linear_model import SGDClassifier

FORMAT_VERSION = 2
_LOGIT_CLIP = 12.0
MODEL_KIND = "maildesk-spam-sgd"


class TrainPolicy(enum.StrEnum):
    """When ``learn`` updates the SGD weights (calibrator and token counts always learn)."""

    EVERYTHING = "everything"
    ON_ERROR = "on-error"  # only when the pre-update band was wrong or unsure
    THICK = "thick"  # train-on-error plus a margin: |margin| < thick_margin


_NB_KEYS = ("nb_weight", "nb_eta0", "nb_smoothing")


@dataclass(frozen=True, slots=True)
class LearnerConfig:
    """Hyper-parameters of the three learners, their mix, and the training policy.

    ``token_weight`` 0 turns the token-statistics learner off, ``nb_weight`` 0
    the evidence-scaled one (both 0: the first SGD learner alone).
    """

    loss: str = "log_loss"
    alpha: float = 1e-7
    learning_rate: str = "constant"
    eta0: float = 8.0
    policy: TrainPolicy = TrainPolicy.THICK
    thick_margin: float = 8.0
    token_weight: float = 8.0
    token_stats: TokenStatsConfig = field(default_factory=TokenStatsConfig)
    nb_weight: float = 1.0  # the evidence-scaled learner; 0 turns it off
    nb_eta0: float = 4.0
    nb_smoothing: float = 0.1  # added to each count in the log count ratio

    def to_json(self) -> dict[str, object]:
        return {
            "loss": self.loss,
            "alpha": self.alpha,
            "learning_rate": self.learning_rate,
            "eta0": self.eta0,
            "policy": self.policy.value,
            "thick_margin": self.thick_margin,
            "token_weight": self.token_weight,
            "token_stats": self.token_stats.to_json(),
            "nb_weight": self.nb_weight,
            "nb_eta0": self.nb_eta0,
            "nb_smoothing": self.nb_smoothing,
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> LearnerConfig:
        loss = data.get("loss", "log_loss")
        alpha = data.get("alpha", 1e-7)
        rate = data.get("learning_rate", "constant")
        eta0 = data.get("eta0", 8.0)
        thick = data.get("thick_margin", 8.0)
        weight = data.get("token_weight", 8.0)
        stats = data.get("token_stats", {})
        # Absent in models saved before the evidence-scaled learner: it starts
        # there with no weights, so the model scores exactly as it did.
        defaults = cls()
        nb: dict[str, float] = {}
        for key in _NB_KEYS:
            value = data.get(key, getattr(defaults, key))
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ValueError(f"{key} must be a number >= 0")
            nb[key] = float(value)
        if loss not in ("log_loss", "modified_huber", "hinge"):
            raise ValueError(f"unsupported loss {loss!r}")
        if rate not in ("constant", "optimal", "invscaling", "adaptive"):
            raise ValueError(f"unsupported learning_rate {rate!r}")
        if isinstance(eta0, bool) or not isinstance(eta0, int | float) or not eta0 > 0:
            raise ValueError("eta0 must be a positive number")
        if (
            not isinstance(alpha, int | float)
            or not isinstance(thick, int | float)
            or not isinstance(weight, int | float)
        ):
            raise ValueError("alpha, thick_margin and token_weight must be numbers")
        if not isinstance(stats, dict):
            raise ValueError("token_stats must be an object")
        if not nb["nb_eta0"] or not nb["nb_smoothing"]:
            raise ValueError("nb_eta0 and nb_smoothing must be positive")
        return cls(
            loss=str(loss),
            alpha=float(alpha),
            learning_rate=str(rate),
            eta0=float(eta0),
            policy=TrainPolicy(str(data.get("policy", TrainPolicy.THICK.value))),
            thick_margin=float(thick),
            token_weight=float(weight),
            token_stats=TokenStatsConfig.from_json(stats),
            nb_weight=nb["nb_weight"],
            nb_eta0=nb["nb_eta0"],
            nb_smoothing=nb["nb_smoothing"],
        )


class MarginParts(NamedTuple):
    """One message's margin taken apart: what each feature adds, and the rest."""

    indices: NDArray[np.int64]  # the message's features, as in MessageFeatures
    shares: NDArray[np.float64]  # what each adds through the two SGD learners
    spamicity: float  # the token statistics' indicator I (0.5: no evidence)
    token_term: float  # what I adds
    bias: float  # the learners' intercepts


@dataclass(frozen=True, slots=True)
class SpamVerdict:
    probability: float
    band: Band


class ModelLoadError(Exception):
    """The model file is missing, unreadable, not ours, or would need unpickling."""


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


class _LinearLearner:
    """One scikit-learn ``SGDClassifier`` that learns one sparse row at a time.

    Scoring reads :attr:`coef` and :attr:`intercept` directly. The estimator is
    made on the first learn (a process that only scores never imports
    scikit-learn) and, after :meth:`restore`, is handed the state
    ``partial_fit`` needs to go on where the saved model stopped.
    """

    def __init__(self, n_features: int, learner: LearnerConfig, eta0: float) -> None:
        self._n_features = n_features
        self._params = {
            "loss": learner.loss,
            "alpha": learner.alpha,
            "learning_rate": learner.learning_rate,
            "eta0": eta0,
        }
        self._clf: SGDClassifier | None = None
        self._restored_t: float | None = None
        self.coef: NDArray[np.float64] = np.zeros(n_features)
        self.intercept = 0.0

    def decision(self, idx: NDArray[np.int64], values: NDArray[np.float64]) -> float:
        return float(self.coef[idx] @ values) + self.intercept

    def learn(self, row: sp.csr_matrix, is_spam: bool) -> None:
        clf = self._estimator()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            clf.partial_fit(row, [int(is_spam)], classes=[0, 1])
        self.coef = clf.coef_[0]
        self.intercept = float(clf.intercept_[0])

    @property
    def t(self) -> float:
        """scikit-learn's step counter, saved so a loaded model steps on as it would have."""
        if self._clf is not None:
            return float(getattr(self._clf, "t_", 1.0))
        return self._restored_t if self._restored_t is not None else 1.0

    def nonzero(self) -> tuple[NDArray[np.int32], NDArray[np.float64]]:
        where = np.flatnonzero(self.coef).astype(np.int32)
        return where, self.coef[where].astype(np.float64)

    def restore(
        self, indices: NDArray[np.int64], values: NDArray[np.float64], intercept: float, t: float
    ) -> None:
        """Inverse of :meth:`nonzero`; raises ValueError on inconsistent arrays."""
        if indices.ndim != 1 or indices.shape != values.shape:
            raise ValueError("weight arrays have mismatched shapes")
        if indices.size and (indices.min() < 0 or indices.max() >= self._n_features):
            raise ValueError("weight index out of range")
        if not np.all(np.isfinite(values)):
            raise ValueError("non-finite weights")
        coef = np.zeros(self._n_features)
        coef[indices] = values
        self.coef, self.intercept = coef, intercept
        self._clf, self._restored_t = None, t

    def _estimator(self) -> SGDClassifier:
        if self._clf is None:
            from sklearn.linear_model import SGDClassifier

            clf = SGDClassifier(**self._params)
            if self._restored_t is not None:
                clf.classes_ = np.array([0, 1])
                clf.coef_ = self.coef.reshape(1, -1)
                clf.intercept_ = np.array([self.intercept])
                clf.t_ = self._restored_t
                clf.n_features_in_ = self._n_features
            self._clf = clf
        return self._clf


class SpamFilter:
    """Score and learn messages; owns its weights and nothing else (no I/O until save)."""

    _CALIB_RATE = 0.02

    def __init__(
        self,
        features: FeatureConfig | None = None,
        learner: LearnerConfig | None = None,
        thresholds: Thresholds | None = None,
    ) -> None:
        self.features = features or FeatureConfig()
        self.learner = learner or LearnerConfig()
        self.thresholds = thresholds or Thresholds()
        self._extractor = FeatureExtractor(self.features)
        n_features = self.features.n_features
        self._sgd = _LinearLearner(n_features, self.learner, self.learner.eta0)
        self._nb = _LinearLearner(n_features, self.learner, self.learner.nb_eta0)
        self._stats = TokenStats(n_features, self.learner.token_stats)
        self._calib_a = 1.0
        self._calib_b = 0.0
        self.trained_spam = 0
        self.trained_ham = 0
        self.seen = 0
        self.updated_at: str | None = None

    def read_verdicts(self, headers: tuple[str, ...], authserv_ids: tuple[str, ...]) -> None:
        """Read our own MTA's verdicts in ``headers`` as features (none: read none)."""
        self.features = replace(
            self.features, trusted_verdict_headers=headers, trusted_authserv_ids=authserv_ids
        )
        self._extractor = FeatureExtractor(self.features)

    # -- scoring -----------------------------------------------------------------
    def margin(self, msg: ParsedMessage) -> float:
        """Raw combined score, higher is spammier (feature extraction included)."""
        return self.margin_of(self.features_of(msg))

    def features_of(self, msg: ParsedMessage) -> MessageFeatures:
        """The feature vector the model reads, to score and then learn without extracting twice."""
        return self._extractor.extract(msg)

    def margin_of(self, features: MessageFeatures) -> float:
        return self._margin(features, *self._evidence(features))

    def _margin(
        self, features: MessageFeatures, spamicity: float, nb_values: NDArray[np.float64] | None
    ) -> float:
        score = self._sgd.decision(features.indices, features.values)
        if nb_values is not None:
            score += self.learner.nb_weight * self._nb.decision(features.counted, nb_values)
        return score + self._token_term(spamicity)

    def _token_term(self, spamicity: float) -> float:
        """The token statistics' part of the score: their indicator I as a clipped logit."""
        if spamicity == 0.5:
            return 0.0
        logit = math.log(max(spamicity, 1e-12) / max(1.0 - spamicity, 1e-12))
        clipped = max(-_LOGIT_CLIP, min(_LOGIT_CLIP, logit))
        return self.learner.token_weight * clipped / _LOGIT_CLIP

    def contributions(self, features: MessageFeatures) -> MarginParts:
        """The margin taken apart (their sum is :meth:`margin_of`), to explain a verdict."""
        spamicity, nb_values = self._evidence(features)
        shares = self._sgd.coef[features.indices] * features.values
        bias = self._sgd.intercept
        if nb_values is not None:
            at = np.searchsorted(features.indices, features.counted)
            shares[at] += self.learner.nb_weight * self._nb.coef[features.counted] * nb_values
            bias += self.learner.nb_weight * self._nb.intercept
        return MarginParts(features.indices, shares, spamicity, self._token_term(spamicity), bias)

    def _evidence(self, features: MessageFeatures) -> tuple[float, NDArray[np.float64] | None]:
        """What the token counts say, read once: the indicator I and the word tokens'
        values scaled by their log count ratio.

        I is 0.5 (no evidence) when the token statistics are off, the values None
        when the evidence-scaled learner is.
        """
        counted, learner = features.counted, self.learner
        if not learner.nb_weight:
            return (self._stats.spamicity(counted) if learner.token_weight else 0.5), None
        spamicity, ratio = self._stats.evidence(counted, learner.nb_smoothing)
        values = features.values[np.searchsorted(features.indices, counted)]
        return (spamicity if learner.token_weight else 0.5), values * ratio

    def probability_of(self, margin: float) -> float:
        return _sigmoid(self._calib_a * margin + self._calib_b)

    def score(self, msg: ParsedMessage) -> SpamVerdict:
        probability = self.probability_of(self.margin(msg))
        return SpamVerdict(probability, self.thresholds.band(probability))

    # -- learning ----------------------------------------------------------------
    def learn(self, msg: ParsedMessage, is_spam: bool) -> None:
        """Learn the true label of one message (call once per message)."""
        self.learn_features(self.features_of(msg), is_spam)

    def learn_features(self, features: MessageFeatures, is_spam: bool) -> None:
        """:meth:`learn` for a message whose features :meth:`features_of` gave."""
        spamicity, nb_values = self._evidence(features)  # the counts before this message
        margin = self._margin(features, spamicity, nb_values)
        self._update_calibration(margin, is_spam)
        self.seen += 1
        if self.learner.token_weight or nb_values is not None:
            self._stats.learn(features.counted, is_spam)  # counts mean something over all mail
        if self._should_train(margin, is_spam):
            self._sgd.learn(self._extractor.row(features.indices, features.values), is_spam)
            if nb_values is not None:
                self._nb.learn(self._extractor.row(features.counted, nb_values), is_spam)
        if is_spam:
            self.trained_spam += 1
        else:
            self.trained_ham += 1
        self.updated_at = datetime.now(UTC).isoformat(timespec="seconds")

    def _should_train(self, margin: float, is_spam: bool) -> bool:
        if self.trained_spam + self.trained_ham == 0:
            return True
        signed = margin if is_spam else -margin
        policy = self.learner.policy
        if policy is TrainPolicy.EVERYTHING:
            return True
        if policy is TrainPolicy.ON_ERROR:
            band = self.thresholds.band(self.probability_of(margin))
            return band is Band.UNSURE or (band is Band.SPAM) != is_spam
        return signed < self.learner.thick_margin

    def _update_calibration(self, margin: float, is_spam: bool) -> None:
        """One SGD step of Platt scaling on the pre-update margin."""
        if self.trained_spam + self.trained_ham == 0:
            return
        p = _sigmoid(self._calib_a * margin + self._calib_b)
        grad = (1.0 if is_spam else 0.0) - p
        clipped = max(-10.0, min(10.0, margin))
        self._calib_a = max(0.05, self._calib_a + self._CALIB_RATE * grad * clipped)
        self._calib_b += self._CALIB_RATE * grad

    # -- persistence -------------------------------------------------------------
    def _learners(self) -> tuple[tuple[str, _LinearLearner], ...]:
        """Both SGD learners with the prefix of their arrays and metadata keys in a file."""
        return (("", self._sgd), ("nb_", self._nb))

    def metadata(self) -> dict[str, object]:
        return {
            "kind": MODEL_KIND,
            "format_version": FORMAT_VERSION,
            "features": self.features.to_json(),
            "learner": self.learner.to_json(),
            "thresholds": {
                "unsure_at": self.thresholds.unsure_at,
                "spam_at": self.thresholds.spam_at,
            },
            **{prefix + "intercept": learner.intercept for prefix, learner in self._learners()},
            **{prefix + "sgd_t": learner.t for prefix, learner in self._learners()},
            "calibration": {"a": self._calib_a, "b": self._calib_b},
            "token_messages": {"spam": self._stats.n_spam, "ham": self._stats.n_ham},
            "trained_spam": self.trained_spam,
            "trained_ham": self.trained_ham,
            "seen": self.seen,
            "updated_at": self.updated_at,
        }

    def save(self, path: Path | str) -> None:
        """Write atomically (:func:`maildesk.atomic.write_atomic`)."""
        target = Path(path)
        weights: dict[str, Any] = {}
        for prefix, learner in self._learners():
            weights[prefix + "indices"], weights[prefix + "values"] = learner.nonzero()
        meta = json.dumps(self.metadata(), sort_keys=True).encode()
        where, spam_counts, ham_counts = self._stats.nonzero()
        buffer = io.BytesIO()
        np.savez_compressed(
            buffer,
            **weights,
            count_indices=where,
            spam_counts=spam_counts,
            ham_counts=ham_counts,
            meta=np.frombuffer(meta, dtype=np.uint8),
        )
        write_atomic(target, buffer.getvalue(), mode=0o600)

    @classmethod
    def load(cls, path: Path | str) -> SpamFilter:
        """Load a model written by :meth:`save`; raises ModelLoadError on anything else."""
        try:
            with np.load(Path(path), allow_pickle=False) as data:
                arrays = {key: np.asarray(data[key]) for key in _ARRAYS}
                # Absent in models saved before the evidence-scaled learner.
                arrays.update({key: np.asarray(data[key]) for key in _NB_ARRAYS if key in data})
                meta = json.loads(bytes(np.asarray(data["meta"], dtype=np.uint8)).decode())
        except FileNotFoundError as exc:
            raise ModelLoadError(f"model file {path} does not exist") from exc
        except (ValueError, KeyError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
            raise ModelLoadError(f"model file {path} is not a readable model: {exc}") from exc
        try:
            return cls._from_parts(arrays, meta)
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise ModelLoadError(f"model file {path} is inconsistent: {exc}") from exc

    @classmethod
    def _from_parts(cls, arrays: dict[str, NDArray[np.generic]], meta: object) -> SpamFilter:
        if not isinstance(meta, dict) or meta.get("kind") != MODEL_KIND:
            raise ValueError("not a maildesk spam model")
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"unsupported format_version {meta.get('format_version')!r}")
        features = FeatureConfig.from_json(_dict(meta, "features"))
        learner = LearnerConfig.from_json(_dict(meta, "learner"))
        thr = _dict(meta, "thresholds")
        thresholds = Thresholds(float(_num(thr, "unsure_at")), float(_num(thr, "spam_at")))
        model = cls(features, learner, thresholds)
        calib = _dict(meta, "calibration")
        model._calib_a = float(_num(calib, "a"))
        model._calib_b = float(_num(calib, "b"))
        model.trained_spam = int(_num(meta, "trained_spam"))
        model.trained_ham = int(_num(meta, "trained_ham"))
        model.seen = int(_num(meta, "seen"))
        counted = _dict(meta, "token_messages")
        model._stats.restore(
            arrays["count_indices"].astype(np.int64),
            arrays["spam_counts"].astype(np.int64),
            arrays["ham_counts"].astype(np.int64),
            int(_num(counted, "spam")),
            int(_num(counted, "ham")),
        )
        updated = meta.get("updated_at")
        model.updated_at = updated if isinstance(updated, str) else None
        for prefix, linear in model._learners():
            if prefix + "indices" in arrays:  # the evidence learner's are absent in older files
                linear.restore(
                    arrays[prefix + "indices"].astype(np.int64),
                    arrays[prefix + "values"].astype(np.float64),
                    float(_num(meta, prefix + "intercept")),
                    float(_num(meta, prefix + "sgd_t")),
                )
        return model

    @classmethod
    def load_or_seed(cls, live_path: Path | str, seed_path: Path | str) -> tuple[SpamFilter, str]:
        """The live model, else the shipped seed, with a one-line note for the log."""
        try:
            model = cls.load(live_path)
        except ModelLoadError as exc:
            seed = cls.load(seed_path)
            return seed, f"spam model: {exc}; falling back to the seed model {seed_path}"
        return model, (
            f"spam model: loaded {live_path} "
            f"({model.trained_spam} spam / {model.trained_ham} ham trained)"
        )


_ARRAYS = ("indices", "values", "count_indices", "spam_counts", "ham_counts")
_NB_ARRAYS = ("nb_indices", "nb_values")


def _dict(data: dict[str, object], key: str) -> dict[str, object]:
    value = data.get(key)
    if not isinstance(value, dict):
        raise ValueError(f"metadata {key!r} missing or not an object")
    return value


def _num(data: dict[str, object], key: str) -> float:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"metadata {key!r} missing or not a finite number")
    return float(value)


__all__ = [
    "Band",
    "LearnerConfig",
    "MarginParts",
    "ModelLoadError",
    "SpamFilter",
    "SpamVerdict",
    "Thresholds",
    "TrainPolicy",
]
