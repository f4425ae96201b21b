"""Parsing in a second process, overlapped with applying the previous batch.

Parsing is CPU work that needs no database; applying is mostly database and
ORM work. On a machine with two or more cores a bulk import runs them side by
side: while batch N is applied, batch N+1 is parsed in a child process (with
its own SIGALRM deadline, as the child parses in its main thread). Small
batches, as the daemon makes them, are parsed in-process: a round trip to the
child would only add latency. If the child dies, the batch is parsed in-process.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from maildesk.config import PipelineSettings
from maildesk.pipeline.context import MessageContext, Stop
from maildesk.pipeline.stages import parse_stage

log = logging.getLogger("maildesk.pipeline")

Parsed = list[tuple[MessageContext, Stop | None]]

# Below this many messages a batch is parsed in-process.
MIN_BATCH_FOR_CHILD = 16


def parse_batch(batch: Sequence[MessageContext], limits: PipelineSettings) -> Parsed:
    """Parse every message of a batch; runs in the child or in-process."""
    return [(ctx, parse_stage(ctx, limits)) for ctx in batch]


class ParsePool:
    def __init__(self, limits: PipelineSettings) -> None:
        self.limits = limits
        self._executor: ProcessPoolExecutor | None = None
        self.enabled = limits.parse_in_child and (os.cpu_count() or 1) > 1

    def submit(self, batch: list[MessageContext]) -> Callable[[], Parsed]:
        """Start parsing ``batch``; call the result to wait for it."""
        if not batch or not self.enabled or len(batch) < MIN_BATCH_FOR_CHILD:
            done = parse_batch(batch, self.limits)
            return lambda: done
        future: Future[Parsed] = self._pool().submit(parse_batch, batch, self.limits)

        def result() -> Parsed:
            try:
                return future.result()
            except BrokenProcessPool:
                log.warning("parse process died; parsing %d messages in-process", len(batch))
                self.close()
                return parse_batch(batch, self.limits)

        return result

    def _pool(self) -> ProcessPoolExecutor:
        if self._executor is None:
            # spawn, not fork: the daemon has threads (listeners, scheduler).
            context = multiprocessing.get_context("spawn")
            self._executor = ProcessPoolExecutor(max_workers=1, mp_context=context)
        return self._executor

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
