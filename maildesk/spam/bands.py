"""Spam bands and their thresholds: light, so the pipeline can name them without sklearn."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Band(enum.StrEnum):
    HAM = "ham"
    UNSURE = "unsure"
    SPAM = "spam"


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Probability cut points: < ``unsure_at`` is ham, >= ``spam_at`` is spam."""

    unsure_at: float = 0.5
    spam_at: float = 0.97

    def __post_init__(self) -> None:
        if not 0.0 <= self.unsure_at <= self.spam_at <= 1.0:
            raise ValueError("thresholds must satisfy 0 <= unsure_at <= spam_at <= 1")

    def band(self, probability: float) -> Band:
        if probability >= self.spam_at:
            return Band.SPAM
        if probability >= self.unsure_at:
            return Band.UNSURE
        return Band.HAM
