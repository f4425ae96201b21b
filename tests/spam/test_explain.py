"""Explaining a score: exact parts of the margin, named by their tokens, safe to print."""

from __future__ import annotations

import dataclasses

import pytest

from maildesk.spam.explain import SUBJECT_SENDER_NGRAMS, explain
from maildesk.spam.model import SpamFilter
from tests.spam.test_model import HAMMY, SPAMMY, message, trained


def test_the_parts_of_a_margin_add_up_to_it() -> None:
    model = trained()
    for msg in [*SPAMMY, *HAMMY, message("Lunch?", "Shall we meet at noon", "kim@corp.org")]:
        features = model.features_of(msg)
        parts = model.contributions(features)
        whole = float(parts.shares.sum()) + parts.token_term + parts.bias
        assert whole == pytest.approx(model.margin_of(features), abs=1e-9)
        why = explain(model, msg)
        assert sum(r.share for r in why.reasons) == pytest.approx(why.margin, abs=1e-9)
        assert why.verdict == model.score(msg)


def test_the_words_a_model_learned_are_named_on_the_side_they_push() -> None:
    model = trained()
    why = explain(model, message("Cheap pills!!!", "Buy viagra now", "z@pills.biz"))
    assert why.verdict.probability > 0.5
    assert why.reasons == tuple(sorted(why.reasons, key=lambda r: -abs(r.share)))
    pushed_up = {r.what for r in why.reasons if r.share > 0}
    assert {"viagra", "from:pills.biz"} <= pushed_up
    assert any(r.what.startswith("token statistics") and r.share > 0 for r in why.reasons)
    assert any(r.what == SUBJECT_SENDER_NGRAMS for r in why.reasons)
    why = explain(model, message("Printer broken again", "the office printer", "ann@corp.org"))
    pushed_down = {r.what for r in why.reasons if r.share < 0}
    assert {"printer", "from:corp.org"} <= pushed_down


def test_an_empty_model_has_nothing_to_explain_but_says_so() -> None:
    why = explain(SpamFilter(), SPAMMY[0])
    assert why.margin == 0.0 and why.reasons == ()


def test_hostile_tokens_are_escaped_not_printed() -> None:
    hostile = dataclasses.replace(
        SPAMMY[0],
        headers=(("Content-Type", 'text/plain; charset="\x1b[31mred\x07"'),),
    )
    model = SpamFilter()
    model.learn(hostile, True)  # the first message always trains: its tokens get weights
    model.learn(HAMMY[0], False)
    shown = [r.what for r in explain(model, hostile).reasons]
    assert not any("\x1b" in what or "\x07" in what for what in shown)
    assert any(what.startswith("charset:\\x1b[31mred\\x07") for what in shown)
