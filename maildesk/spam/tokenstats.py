"""Bogofilter/SpamBayes-style token statistics: Robinson's f(w) and Fisher combining.

Counts live in two fixed-size arrays indexed by the hashed feature index, so
memory never grows with the vocabulary. For a message with distinct features
``w``, each feature's spamminess is Robinson's smoothed estimate

    p(w) = (s/Ns) / (s/Ns + h/Nh),  f(w) = (S*x + n*p(w)) / (S + n),  n = s + h

and the features far enough from neutral (|f - 0.5| >= min_dev) are combined
with Fisher's chi-square method (Robinson 2003)::

    S = 1 - C(-2 sum ln(1 - f), 2k),  H = 1 - C(-2 sum ln f, 2k),  I = (1 + S - H) / 2

where C is the chi-square survival function. I is 0 for clear ham, 1 for
clear spam and about 0.5 both when there is no evidence and when the evidence
conflicts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy.special import gammaincc

_F_CLIP = 1e-6


@dataclass(frozen=True, slots=True)
class TokenStatsConfig:
    """Robinson's smoothing strength ``robs`` and prior ``robx``; neutral-band half width."""

    robs: float = 0.0178
    robx: float = 0.52
    min_dev: float = 0.1

    def __post_init__(self) -> None:
        if not (self.robs > 0 and 0 < self.robx < 1 and 0 <= self.min_dev < 0.5):
            raise ValueError("token stats need robs > 0, 0 < robx < 1, 0 <= min_dev < 0.5")

    def to_json(self) -> dict[str, object]:
        return {"robs": self.robs, "robx": self.robx, "min_dev": self.min_dev}

    @classmethod
    def from_json(cls, data: dict[str, object]) -> TokenStatsConfig:
        values: dict[str, float] = {}
        for key, default in (("robs", 0.0178), ("robx", 0.52), ("min_dev", 0.1)):
            value = data.get(key, default)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"token stats {key!r} must be a number")
            values[key] = float(value)
        return cls(**values)


class TokenStats:
    """Per-feature spam/ham document counts in a fixed hashed space."""

    def __init__(self, n_features: int, config: TokenStatsConfig | None = None) -> None:
        self.config = config or TokenStatsConfig()
        # Both counts of a feature side by side: scoring reads them for a few
        # hundred scattered features, one memory fetch each instead of two.
        self._counts: NDArray[np.int32] = np.zeros((n_features, 2), dtype=np.int32)
        self.n_spam = 0
        self.n_ham = 0

    @property
    def spam_counts(self) -> NDArray[np.int32]:
        """Spam messages that had each feature (a view: writes go to the counts)."""
        return self._counts[:, 0]

    @property
    def ham_counts(self) -> NDArray[np.int32]:
        """Ham messages that had each feature (a view: writes go to the counts)."""
        return self._counts[:, 1]

    def _read(self, idx: NDArray[np.int64]) -> tuple[NDArray[np.int32], NDArray[np.int32]]:
        """The spam and the ham counts of ``idx``, from one gather."""
        both = self._counts.take(idx, axis=0)
        return both[:, 0], both[:, 1]

    def spamicity(self, idx: NDArray[np.int64]) -> float:
        """Robinson-Fisher indicator I in [0, 1] for distinct feature indices ``idx``."""
        return self._spamicity(*self._read(idx))

    def log_count_ratio(self, idx: NDArray[np.int64], smoothing: float) -> NDArray[np.float64]:
        """Smoothed ``log(P(token | spam) / P(token | ham))`` of each index (NBSVM's r).

        Each count gets ``smoothing`` added, so a token seen in one class only
        has a large but finite ratio, and an unseen one has about 0.
        """
        return self._log_count_ratio(*self._read(idx), smoothing)

    def evidence(
        self, idx: NDArray[np.int64], smoothing: float
    ) -> tuple[float, NDArray[np.float64]]:
        """:meth:`spamicity` and :meth:`log_count_ratio` from one read of the counts."""
        spam, ham = self._read(idx)
        return self._spamicity(spam, ham), self._log_count_ratio(spam, ham, smoothing)

    def _spamicity(self, spam: NDArray[np.int32], ham: NDArray[np.int32]) -> float:
        if self.n_spam == 0 or self.n_ham == 0 or spam.size == 0:
            return 0.5
        cfg = self.config
        seen = np.flatnonzero(spam | ham)
        if seen.size == 0:
            return 0.5
        spam, ham = spam[seen], ham[seen]
        n = (spam + ham).astype(np.float64)
        ps = spam * (1.0 / self.n_spam)
        p = ps / (ps + ham * (1.0 / self.n_ham))
        f = (cfg.robs * cfg.robx + n * p) / (cfg.robs + n)
        f = f[np.abs(f - 0.5) >= cfg.min_dev]
        if f.size == 0:
            return 0.5
        # np.clip, but without its per-call overhead (a tenth of this function).
        np.minimum(np.maximum(f, _F_CLIP, out=f), 1.0 - _F_CLIP, out=f)
        # C(x, 2k) = Q(k, x / 2), the regularised upper incomplete gamma function.
        q_spam = gammaincc(f.size, -np.log1p(-f).sum())
        q_ham = gammaincc(f.size, -np.log(f).sum())
        return (1.0 + float(q_ham) - float(q_spam)) / 2.0

    def _log_count_ratio(
        self, spam: NDArray[np.int32], ham: NDArray[np.int32], smoothing: float
    ) -> NDArray[np.float64]:
        in_spam = (spam + smoothing) / (self.n_spam + 2.0 * smoothing)
        in_ham = (ham + smoothing) / (self.n_ham + 2.0 * smoothing)
        return np.log(in_spam) - np.log(in_ham)

    def learn(self, idx: NDArray[np.int64], is_spam: bool) -> None:
        """Count one message (its distinct features) as spam or ham."""
        if is_spam:
            self._counts[idx, 0] += 1
            self.n_spam += 1
        else:
            self._counts[idx, 1] += 1
            self.n_ham += 1

    def nonzero(self) -> tuple[NDArray[np.int32], NDArray[np.uint32], NDArray[np.uint32]]:
        """Sparse form for saving: indices with any count, and both counts there."""
        where = np.flatnonzero((self._counts > 0).any(axis=1)).astype(np.int32)
        return (
            where,
            self.spam_counts[where].astype(np.uint32),
            self.ham_counts[where].astype(np.uint32),
        )

    def restore(
        self,
        where: NDArray[np.int64],
        spam: NDArray[np.int64],
        ham: NDArray[np.int64],
        n_spam: int,
        n_ham: int,
    ) -> None:
        """Inverse of :meth:`nonzero`; raises ValueError on inconsistent arrays."""
        size = self._counts.shape[0]
        if not (
            where.ndim == spam.ndim == ham.ndim == 1 and where.shape == spam.shape == ham.shape
        ):
            raise ValueError("token count arrays have mismatched shapes")
        if where.size and (int(where.min()) < 0 or int(where.max()) >= size):
            raise ValueError("token count index out of range")
        if n_spam < 0 or n_ham < 0:
            raise ValueError("negative message counts")
        if spam.size and (int(spam.max()) > n_spam or int(ham.max()) > n_ham):
            raise ValueError("a token count exceeds its message count")
        self._counts[:] = 0
        self._counts[where, 0] = spam.astype(np.int32)
        self._counts[where, 1] = ham.astype(np.int32)
        self.n_spam = n_spam
        self.n_ham = n_ham
