"""Parsing in a second process, overlapped with applying the previous batch.

Parsing is CPU work that needs no database; applying is mostly database and
ORM work. On a machine with two or more cores a bulk import runs them side by
side: while batch N is applied, batch N+1 is parsed in a child process (with
its own SIGALRM deadline, as the child parses in its main thread). Small
batches, as the daemon makes them, are parsed in-process: a round trip to the
child would only add latency. If the child dies, the batch is parsed in-process.

The children are spawned, never forked, even by a bulk import with no other
thread (forking would save each child about a second of imports): a forked
child holds a copy of the parent's open SQLite connection, and SQLite forbids
carrying one across fork() (closed in the child, it may checkpoint and remove
the WAL the parent still writes).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from datetime import datetime

from maildesk.config import PipelineSettings
from maildesk.domain.message import ParsedMessage
from maildesk.domain.rawheader import body_hash
from maildesk.pipeline.context import EventNote, MessageContext, Stop
from maildesk.pipeline.spam import score_message
from maildesk.pipeline.stages import parse_stage
from maildesk.spam.scoring import ScorerSpec, SpamScore, scorer_for

log = logging.getLogger("maildesk.pipeline")

Parsed = list[tuple[MessageContext, Stop | None]]

# Below this many messages a batch is parsed in-process.
MIN_BATCH_FOR_CHILD = 16
PARSE_CHILDREN = 2


def parse_batch(
    batch: Sequence[MessageContext], limits: PipelineSettings, spam: ScorerSpec | None = None
) -> Parsed:
    """Parse (and spam-score) every message of a batch; runs in the child or in-process."""
    parsed: Parsed = []
    scorer = scorer_for(spam) if spam is not None else None
    for ctx in batch:
        stop = parse_stage(ctx, limits)
        if stop is None:
            # Dedupe's hash of the raw body: here, beside parsing, not on apply's path.
            ctx.body_hash = body_hash(ctx.raw)
            if scorer is not None:
                score_message(ctx, scorer)
        parsed.append((ctx, stop))
    return parsed


@dataclass(frozen=True, slots=True)
class _ChildResult:
    """What parsing adds to a context: all that travels back from the child (not the raw)."""

    parsed: ParsedMessage | None
    arrived_at: datetime | None
    body_hash: str | None
    spam: SpamScore | None
    notes: list[EventNote]
    stop: Stop | None


def _parse_in_child(
    batch: Sequence[MessageContext], limits: PipelineSettings, spam: ScorerSpec | None
) -> list[_ChildResult]:
    return [
        _ChildResult(ctx.parsed, ctx.arrived_at, ctx.body_hash, ctx.spam, ctx.notes, stop)
        for ctx, stop in parse_batch(batch, limits, spam)
    ]


def _die_with_parent(parent: int) -> None:
    """In a child: be killed when the process that started it dies, however it dies.

    A killed `ingest` (SIGTERM, its own time limit) or daemon would otherwise
    leave its parse children behind for good, each holding the model in memory
    and the parent's stdout and stderr open (an MTA reading them waits on).
    Linux sends the signal when the *thread* that started the child ends: the
    pool is started by the thread that submits to it (the worker's, or the
    command's main thread), which lives as long as the pool; a pool broken
    otherwise is noticed and the batch parsed in-process.
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG (Linux)
    except (OSError, AttributeError):  # not Linux: the parent's exit hooks still end them
        return
    if os.getppid() != parent:  # it died before the line above
        os._exit(0)


def _warm_child(spam: ScorerSpec | None) -> None:
    if spam is not None:
        scorer_for(spam).load()


def _merge(batch: Sequence[MessageContext], results: list[_ChildResult]) -> Parsed:
    for ctx, result in zip(batch, results, strict=True):
        ctx.parsed, ctx.arrived_at, ctx.spam = result.parsed, result.arrived_at, result.spam
        ctx.body_hash = result.body_hash
        ctx.notes = result.notes
    return [(ctx, result.stop) for ctx, result in zip(batch, results, strict=True)]


class ParsePool:
    def __init__(self, limits: PipelineSettings, spam: ScorerSpec | None = None) -> None:
        self.limits = limits
        self.spam = spam
        self._executor: ProcessPoolExecutor | None = None
        self.enabled = limits.parse_in_child and (os.cpu_count() or 1) > 1

    def submit(self, batch: list[MessageContext]) -> Callable[[], Parsed]:
        """Start parsing ``batch``; call the result to wait for it."""
        if not batch or not self.enabled or len(batch) < MIN_BATCH_FOR_CHILD:
            done = parse_batch(batch, self.limits, self.spam)
            return lambda: done
        # Split across the children: parsing and scoring cost more than applying.
        step = -(-len(batch) // PARSE_CHILDREN)
        parts = [batch[i : i + step] for i in range(0, len(batch), step)]
        pool = self._pool()
        futures: list[Future[list[_ChildResult]]] = [
            pool.submit(_parse_in_child, part, self.limits, self.spam) for part in parts
        ]

        def result() -> Parsed:
            try:
                return [
                    item
                    for part, future in zip(parts, futures, strict=True)
                    for item in _merge(part, future.result())
                ]
            except BrokenProcessPool:
                log.warning("parse process died; parsing %d messages in-process", len(batch))
                self.close()
                return parse_batch(batch, self.limits, self.spam)

        return result

    def warm_up(self) -> None:
        """Start the children (and load the spam model there) before the first batch.

        A bulk import calls this before reading its files, so the second or two a
        child needs to start is spent while the files are read and stored.
        """
        if self.enabled:
            pool = self._pool()
            for _ in range(PARSE_CHILDREN):
                pool.submit(_warm_child, self.spam)

    def _pool(self) -> ProcessPoolExecutor:
        if self._executor is None:
            # spawn, not fork: the daemon has threads (listeners, scheduler), and see above.
            self._executor = ProcessPoolExecutor(
                max_workers=PARSE_CHILDREN,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_die_with_parent,
                initargs=(os.getpid(),),
            )
        return self._executor

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
