"""Online evaluation on a bounded slice of the SpamAssassin corpus (real mail)."""

from __future__ import annotations

import tracemalloc
from email.message import EmailMessage
from pathlib import Path

import pytest

from maildesk.spam.evaluate import EvalResult, Protocol, evaluate_index, read_index


def _write_message(path: Path, label: str, line: str, lines: int) -> int:
    msg = EmailMessage()
    msg["From"] = f"{label}@sender.test"
    msg["To"] = "support@example.com"
    msg["Subject"] = f"a {label} message"
    msg["Message-ID"] = f"<{label}@sender.test>"
    msg.set_content((line + "\n") * lines)
    raw = bytes(msg)
    path.write_bytes(raw)
    return len(raw)


def _write_index(tmp_path: Path, count: int, lines: int) -> int:
    """An index alternating one spam and one ham file; returns the bytes it lists."""
    sizes = {
        "spam": _write_message(tmp_path / "spam.eml", "spam", "cheap pills, order now " * 3, lines),
        "ham": _write_message(tmp_path / "ham.eml", "ham", "the nightly build failed again", lines),
    }
    labels = ["spam" if number % 2 else "ham" for number in range(count)]
    (tmp_path / "index").write_text("".join(f"{label} {label}.eml\n" for label in labels))
    return sum(sizes[label] for label in labels)


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


def _traced_online_eval(folder: Path, count: int) -> tuple[EvalResult, int, int]:
    """(result, traced peak bytes, bytes listed) of an online run over ``count`` big messages."""
    folder.mkdir()
    listed = _write_index(folder, count=count, lines=16000)  # about 1.2 MB each
    tracemalloc.start()
    try:
        result = evaluate_index(folder / "index", Protocol.ONLINE)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak, listed


def test_a_long_index_is_evaluated_one_message_at_a_time(tmp_path: Path) -> None:
    """A corpus much larger than this one (TREC 2007 has 75,419 messages) must fit in memory."""
    _, short_peak, short_listed = _traced_online_eval(tmp_path / "short", 4)
    result, peak, listed = _traced_online_eval(tmp_path / "long", 60)
    assert (result.messages, result.spam, result.ham, result.unparsable) == (60, 30, 30, 0)
    assert result.fp_pct == 0.0 and result.one_minus_roca_pct < 5.0  # it did learn them
    # Holding the parsed messages would grow the peak by more than the bytes the
    # extra 56 messages take (each keeps its raw source); one at a time, the peak
    # stays where the model's own arrays put it.
    growth = peak - short_peak
    assert growth < 0.2 * (listed - short_listed), f"peak grew {growth / 1e6:.0f} MB"


def test_split_protocol_learns_the_first_half_and_scores_the_rest(tmp_path: Path) -> None:
    _write_index(tmp_path, count=40, lines=20)
    (tmp_path / "index").write_text(
        (tmp_path / "index").read_text() + "spam missing.eml\nham empty.eml\n"
    )
    (tmp_path / "empty.eml").write_bytes(b"")
    result = evaluate_index(tmp_path / "index", Protocol.SPLIT)
    # 42 lines: 21 learned, the remaining 19 readable ones scored, two reported.
    assert (result.messages, result.spam, result.ham) == (19, 10, 9)
    assert result.unparsable == 2
    assert result.fp_pct == 0.0 and result.fn_pct == 0.0
