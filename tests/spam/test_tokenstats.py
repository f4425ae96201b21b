"""Robinson-Fisher token statistics: the chi-square tail, the indicator, persistence checks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chi2

from maildesk.spam.tokenstats import TokenStats, TokenStatsConfig


def ids(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def robinson_fisher(spam: np.ndarray, ham: np.ndarray, n_spam: int, n_ham: int) -> float:
    """The indicator written out from Robinson (2003) with scipy's chi-square tail."""
    config = TokenStatsConfig()
    p = (spam / n_spam) / (spam / n_spam + ham / n_ham)
    n = spam + ham
    f = (config.robs * config.robx + n * p) / (config.robs + n)
    f = np.clip(f[np.abs(f - 0.5) >= config.min_dev], 1e-6, 1 - 1e-6)
    s = 1 - chi2.sf(-2 * np.log1p(-f).sum(), 2 * f.size)
    h = 1 - chi2.sf(-2 * np.log(f).sum(), 2 * f.size)
    return float((1 + s - h) / 2)


@pytest.mark.parametrize("tokens", [3, 40, 400, 3000])
def test_indicator_is_robinsons_fisher_combination(tokens: int) -> None:
    """Many tokens pulling both ways (as in long mail) as well as a few."""
    rng = np.random.default_rng(tokens)
    stats = TokenStats(4096)
    spam_counts = rng.integers(0, 30, size=tokens)
    ham_counts = rng.integers(0, 30, size=tokens)
    spam_counts[ham_counts + spam_counts == 0] = 1
    where = rng.choice(4096, size=tokens, replace=False).astype(np.int64)
    stats.restore(where, spam_counts, ham_counts, 30, 30)
    expected = robinson_fisher(spam_counts, ham_counts, 30, 30)
    assert stats.spamicity(np.sort(where)) == pytest.approx(expected, rel=1e-9, abs=1e-12)


SPAM_WORDS = ids(1, 2, 3, 4)
HAM_WORDS = ids(10, 11, 12, 13)


def trained_stats() -> TokenStats:
    stats = TokenStats(64)
    for _ in range(5):
        stats.learn(SPAM_WORDS, True)
        stats.learn(HAM_WORDS, False)
    return stats


def test_empty_stats_are_neutral() -> None:
    assert TokenStats(64).spamicity(SPAM_WORDS) == 0.5


def test_learned_tokens_decide_the_indicator() -> None:
    stats = trained_stats()
    assert stats.spamicity(SPAM_WORDS) > 0.99
    assert stats.spamicity(HAM_WORDS) < 0.01
    assert stats.spamicity(ids(40, 41)) == 0.5  # never seen: no evidence


def test_conflicting_evidence_is_unsure() -> None:
    both = np.concatenate([SPAM_WORDS, HAM_WORDS])
    assert trained_stats().spamicity(both) == pytest.approx(0.5, abs=0.05)


@settings(max_examples=60, deadline=None)
@given(
    spam=st.lists(st.integers(0, 31), max_size=20),
    ham=st.lists(st.integers(0, 31), max_size=20),
    probe=st.lists(st.integers(0, 31), min_size=1, max_size=20, unique=True),
    min_dev=st.floats(0.0, 0.45),
)
def test_indicator_is_a_probability(
    spam: list[int], ham: list[int], probe: list[int], min_dev: float
) -> None:
    stats = TokenStats(32, TokenStatsConfig(min_dev=min_dev))
    stats.learn(np.unique(np.array(spam, dtype=np.int64)), True)
    stats.learn(np.unique(np.array(ham, dtype=np.int64)), False)
    assert 0.0 <= stats.spamicity(np.array(sorted(probe), dtype=np.int64)) <= 1.0


def test_log_count_ratio_is_the_smoothed_evidence_of_each_token() -> None:
    stats = trained_stats()  # 5 spam with SPAM_WORDS, 5 ham with HAM_WORDS
    stats.learn(ids(1, 10), True)  # token 10 once in spam too: 1 of 6 spam, 5 of 5 ham
    ratio = stats.log_count_ratio(ids(1, 10, 40), smoothing=0.1)
    assert ratio[0] == pytest.approx(np.log((6.1 / 6.2) / (0.1 / 5.2)))  # spam only
    assert ratio[1] == pytest.approx(np.log((1.1 / 6.2) / (5.1 / 5.2)))  # mostly ham
    assert ratio[0] > 3 and ratio[1] < -1
    assert abs(ratio[2]) < 0.2  # never seen: about no evidence
    # The model reads both from one pass over the counts: the same figures.
    spamicity, both = stats.evidence(ids(1, 10, 40), smoothing=0.1)
    assert spamicity == stats.spamicity(ids(1, 10, 40))
    assert both.tolist() == ratio.tolist()


def test_nonzero_restore_round_trip() -> None:
    stats = trained_stats()
    where, spam, ham = stats.nonzero()
    copy = TokenStats(64)
    copy.restore(where.astype(np.int64), spam.astype(np.int64), ham.astype(np.int64), 5, 5)
    assert copy.spamicity(SPAM_WORDS) == stats.spamicity(SPAM_WORDS)
    assert copy.spamicity(HAM_WORDS) == stats.spamicity(HAM_WORDS)


@pytest.mark.parametrize(
    ("where", "spam", "ham", "n_spam"),
    [
        (ids(70), ids(1), ids(0), 1),  # index outside the space
        (ids(1), ids(3), ids(0), 2),  # more spam tokens than spam messages
        (ids(1, 2), ids(1), ids(0), 1),  # mismatched lengths
    ],
)
def test_restore_rejects_inconsistent_arrays(
    where: np.ndarray, spam: np.ndarray, ham: np.ndarray, n_spam: int
) -> None:
    with pytest.raises(ValueError):
        TokenStats(64).restore(where, spam, ham, n_spam, 0)


def test_config_rejects_out_of_range_values() -> None:
    with pytest.raises(ValueError):
        TokenStatsConfig(min_dev=0.5)
    with pytest.raises(ValueError):
        TokenStatsConfig(robx=1.0)
    config = TokenStatsConfig(robs=0.1, robx=0.4, min_dev=0.2)
    assert TokenStatsConfig.from_json(config.to_json()) == config
