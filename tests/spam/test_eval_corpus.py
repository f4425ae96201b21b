"""Online evaluation on a bounded slice of the SpamAssassin corpus (real mail)."""

from __future__ import annotations

from pathlib import Path

import pytest

from maildesk.spam.evaluate import Protocol, evaluate_index, read_index


@pytest.mark.slow
def test_online_eval_on_corpus_slice_is_far_better_than_chance(corpus: Path) -> None:
    index = corpus / "spamassassin" / "index"
    if not index.exists():
        pytest.skip(f"{index} not found")
    result = evaluate_index(index, Protocol.ONLINE, limit=1500)
    assert result.messages + result.unparsable == 1500
    assert result.spam > 300 and result.ham > 900
    # Sanity, not the acceptance bar: random scoring gives 50 % (1-ROCA) and
    # calling everything spam gives 100 % FP.
    assert result.one_minus_roca_pct < 2.0
    assert result.fp_pct < 1.0
    assert result.fn_pct < 60.0


def test_read_index_resolves_paths_relative_to_the_index(tmp_path: Path) -> None:
    (tmp_path / "index").write_text("spam a/1.txt\nham b/2.txt\n\n")
    entries = read_index(tmp_path / "index")
    assert [(e.label.value, e.path) for e in entries] == [
        ("spam", tmp_path / "a" / "1.txt"),
        ("ham", tmp_path / "b" / "2.txt"),
    ]
