"""Why the filter scored a message as it did: the largest parts of its margin, named.

The two SGD learners are linear, so each feature's share of the margin is
exact; the token statistics' Fisher indicator is not, and shows as one part.
A feature is named by the tokens that hash to it (more than one on a
collision); character n-grams are summed per field rather than listed one by
one. For ops and agents asking why a mail sat in quarantine (``maildesk spam
score --explain``): token text comes from hostile mail, so anything not
printable is shown escaped.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from maildesk.domain.message import ParsedMessage
from maildesk.spam.features import field_char_ngram_indices, token_groups, token_index
from maildesk.spam.model import SpamFilter, SpamVerdict
from maildesk.terminal import printable

SUBJECT_SENDER_NGRAMS = "character n-grams of the subject and sender"
MESSAGE_ID_NGRAMS = "character n-grams of the Message-ID"
OTHER_FEATURES = "other features (body character n-grams)"


@dataclass(frozen=True, slots=True)
class Reason:
    """One part of the margin: positive leans spam, negative leans ham."""

    what: str
    share: float


@dataclass(frozen=True, slots=True)
class Explanation:
    verdict: SpamVerdict
    margin: float
    reasons: tuple[Reason, ...]  # every part, largest first; their shares sum to the margin


def explain(model: SpamFilter, msg: ParsedMessage) -> Explanation:
    """Score ``msg`` and take its margin apart into named reasons."""
    features = model.features_of(msg)
    parts = model.contributions(features)
    margin = model.margin_of(features)
    names = _feature_names(model, msg)
    shares: dict[str, float] = defaultdict(float)
    for index, share in zip(parts.indices.tolist(), parts.shares.tolist(), strict=True):
        if share:
            shares[names.get(index, OTHER_FEATURES)] += share
    if parts.token_term:
        shares[f"token statistics (indicator {parts.spamicity:.3f})"] += parts.token_term
    if parts.bias:
        shares["learners' intercepts"] += parts.bias
    reasons = sorted((Reason(what, share) for what, share in shares.items()), key=_size)
    probability = model.probability_of(margin)
    verdict = SpamVerdict(probability, model.thresholds.band(probability))
    return Explanation(verdict, margin, tuple(reasons))


def _size(reason: Reason) -> tuple[float, str]:
    return (-abs(reason.share), reason.what)


def _feature_names(model: SpamFilter, msg: ParsedMessage) -> dict[int, str]:
    """Each feature index of ``msg`` -> the tokens (or n-gram group) behind it."""
    config = model.features
    tokens: dict[int, set[str]] = defaultdict(set)
    content, head = token_groups(msg, config)
    for token in {*content, *head}:
        tokens[token_index(token, config.n_features)].add(printable(token))
    names = {index: " | ".join(sorted(found)) for index, found in tokens.items()}
    content_grams, id_grams = field_char_ngram_indices(msg, config)
    for grams, group in ((id_grams, MESSAGE_ID_NGRAMS), (content_grams, SUBJECT_SENDER_NGRAMS)):
        for index in np.unique(grams).tolist():
            if index not in tokens:  # a token sharing the index names it
                names[index] = group
    return names
