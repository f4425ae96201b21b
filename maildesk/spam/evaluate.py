"""TREC-style evaluation of the spam filter on an index of ``spam|ham <path>`` lines.

Online protocol: walk the index top to bottom; classify each message, then
learn it with its true label. Split protocol: learn the first part of the
index, then score the rest with the frozen model. Messages are parsed one at
a time as the run reaches them (memory stays flat on long indexes), outside
the clock, so messages/s measures scoring (feature extraction included), not
parsing. Native thread pools (BLAS/OpenMP) are limited to one
thread while a protocol runs: per-message work is far too small to share, and
idle pool threads spinning after each ``partial_fit`` otherwise steal the core
the scorer runs on (measured: 620 -> 1,000 messages/s on two shared cores). Besides wall-clock
messages/s, the scoring thread's CPU time gives messages per CPU-second, which
does not fall when other processes share the machine.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score
from threadpoolctl import threadpool_limits

from maildesk.domain.message import ParsedMessage
from maildesk.pipeline.parse import ParseError, parse_message
from maildesk.spam.features import MessageFeatures
from maildesk.spam.model import Band, SpamFilter


class Protocol(enum.StrEnum):
    ONLINE = "online"
    SPLIT = "split"


class Label(enum.StrEnum):
    SPAM = "spam"
    HAM = "ham"


@dataclass(frozen=True, slots=True)
class IndexEntry:
    label: Label
    path: Path


@dataclass(frozen=True, slots=True)
class EvalResult:
    """Figures in percent except counts and speed. FN counts unsure spam as missed."""

    protocol: str
    messages: int
    spam: int
    ham: int
    unparsable: int
    fp_pct: float
    fn_pct: float
    unsure_pct: float
    one_minus_roca_pct: float
    messages_per_s: float
    cpu_messages_per_s: float = 0.0  # per second of this process's CPU: robust to a busy machine

    def as_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


class IndexFormatError(ValueError):
    """The index file is not ``spam|ham <path>`` lines of UTF-8 text; says where."""


def read_index(index: Path, limit: int | None = None) -> list[IndexEntry]:
    """Parse a TREC index; paths are relative to the index file's directory.

    Raises :class:`IndexFormatError` for a file that is not an index (OSError
    when it cannot be read).
    """
    try:
        text = index.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise IndexFormatError(
            f"{index}: not a text index (byte {exc.start} is not UTF-8)"
        ) from None
    entries: list[IndexEntry] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        label, _, rel = line.strip().partition(" ")
        try:
            entries.append(IndexEntry(Label(label.lower()), index.parent / rel.strip()))
        except ValueError as exc:
            raise IndexFormatError(f"{index}:{number}: expected 'spam|ham <path>'") from exc
        if limit is not None and len(entries) >= limit:
            break
    return entries


def load_messages(
    entries: Iterable[IndexEntry],
) -> tuple[list[tuple[ParsedMessage, bool]], int]:
    """Parse every entry up front; returns (message, is_spam) pairs and the failure count."""
    stream = MessageStream(entries)
    return list(stream), stream.failed


class MessageStream:
    """Index entries parsed one at a time, as they are iterated.

    A protocol run over a stream holds one parsed message at a time, so memory
    stays flat however long the index is (TREC 2007's 75,419 messages parsed up
    front would take gigabytes). ``failed`` counts the entries that could not be
    read or parsed so far; they are left out of the figures and reported.
    """

    def __init__(self, entries: Iterable[IndexEntry]) -> None:
        self._entries = entries
        self.failed = 0

    def __iter__(self) -> Iterator[tuple[ParsedMessage, bool]]:
        for entry in self._entries:
            try:
                yield parse_message(entry.path.read_bytes()), entry.label is Label.SPAM
            except (ParseError, OSError):
                self.failed += 1


def one_minus_roca_pct(scores: list[float], is_spam: list[bool]) -> float:
    """Area above the ROC curve in percent (0 is perfect); NaN with only one class."""
    if len(set(is_spam)) < 2:
        return float("nan")
    return 100.0 * (1.0 - float(roc_auc_score(np.array(is_spam), np.array(scores))))


def figures(
    protocol: Protocol,
    bands: list[Band],
    scores: list[float],
    labels: list[bool],
    unparsable: int,
    scoring_seconds: float,
    scoring_cpu_seconds: float,
) -> EvalResult:
    """One run's figures from each message's band, score and label (any filter's)."""
    spam = sum(labels)
    ham = len(labels) - spam
    fp = sum(1 for b, s in zip(bands, labels, strict=True) if not s and b is Band.SPAM)
    fn = sum(1 for b, s in zip(bands, labels, strict=True) if s and b is not Band.SPAM)
    unsure = sum(1 for b in bands if b is Band.UNSURE)
    return EvalResult(
        protocol=protocol.value,
        messages=len(labels),
        spam=spam,
        ham=ham,
        unparsable=unparsable,
        fp_pct=100.0 * fp / ham if ham else 0.0,
        fn_pct=100.0 * fn / spam if spam else 0.0,
        unsure_pct=100.0 * unsure / len(labels) if labels else 0.0,
        one_minus_roca_pct=one_minus_roca_pct(scores, labels),
        messages_per_s=len(labels) / scoring_seconds if scoring_seconds > 0 else float("inf"),
        cpu_messages_per_s=(
            len(labels) / scoring_cpu_seconds if scoring_cpu_seconds > 0 else float("inf")
        ),
    )


@dataclass
class _Tally:
    """Each scored message's band, margin and label, and the time spent scoring.

    The ROC uses the margin: probabilities saturate and tie at 0 and 1.
    """

    bands: list[Band] = field(default_factory=list)
    margins: list[float] = field(default_factory=list)
    labels: list[bool] = field(default_factory=list)
    seconds: float = 0.0
    cpu_seconds: float = 0.0

    def score(self, model: SpamFilter, msg: ParsedMessage, is_spam: bool) -> MessageFeatures:
        """Score ``msg`` on the clock; returns its features, for learning it afterwards."""
        start, start_cpu = time.perf_counter(), time.thread_time()
        features = model.features_of(msg)
        margin = model.margin_of(features)
        band = model.thresholds.band(model.probability_of(margin))
        self.seconds += time.perf_counter() - start
        self.cpu_seconds += time.thread_time() - start_cpu
        self.bands.append(band)
        self.margins.append(margin)
        self.labels.append(is_spam)
        return features

    def figures(self, protocol: Protocol) -> EvalResult:
        """The run's figures; ``unparsable`` is 0 here, the caller that parsed knows it."""
        return figures(
            protocol, self.bands, self.margins, self.labels, 0, self.seconds, self.cpu_seconds
        )


def run_online(
    model: SpamFilter,
    messages: Iterable[tuple[ParsedMessage, bool]],
    progress: Callable[[int], None] | None = None,
) -> EvalResult:
    """Classify then learn each message in order; the ROC uses the pre-learning margins."""
    tally = _Tally()
    with threadpool_limits(limits=1):
        for number, (msg, is_spam) in enumerate(messages, start=1):
            model.learn_features(tally.score(model, msg, is_spam), is_spam)
            if progress is not None:
                progress(number)
    return tally.figures(Protocol.ONLINE)


def run_split(
    model: SpamFilter,
    messages: Iterable[tuple[ParsedMessage, bool]],
    train_count: int,
) -> EvalResult:
    """Learn the first ``train_count`` messages, then score the rest with the model frozen."""
    tally = _Tally()
    with threadpool_limits(limits=1):
        for number, (msg, is_spam) in enumerate(messages):
            if number < train_count:
                model.learn(msg, is_spam)
            else:
                tally.score(model, msg, is_spam)
    return tally.figures(Protocol.SPLIT)


def evaluate_index(
    index: Path,
    protocol: Protocol,
    model: SpamFilter | None = None,
    limit: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> EvalResult:
    """Run ``protocol`` over the index from ``model`` (default: an empty model).

    Messages are parsed as the run reaches them (:class:`MessageStream`). The
    split protocol learns as many messages as half the index has lines, then
    scores the rest.
    """
    entries = read_index(index, limit)
    stream = MessageStream(entries)
    model = model if model is not None else SpamFilter()
    if protocol is Protocol.ONLINE:
        result = run_online(model, stream, progress=progress)
    else:
        result = run_split(model, stream, train_count=len(entries) // 2)
    return replace(result, unparsable=stream.failed)
