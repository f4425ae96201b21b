"""A wall-clock bound around a block of pure-Python work.

In the main thread the block is interrupted: a one-shot ``ITIMER_REAL``
timer delivers SIGALRM and the handler raises :class:`DeadlineExceeded`
(between bytecodes; a single long C call finishes first). The previous
SIGALRM handler and any pending timer are restored on exit, so deadlines
nest. In any other thread Python cannot deliver signals, so the block runs
to its end and :class:`DeadlineExceeded` is raised on exit if it took too
long — the caller still learns that the limit was broken, but late.
"""

from __future__ import annotations

import signal
import threading
import time
from types import FrameType, TracebackType
from typing import Any

_MIN_TIMER = 1e-6


class DeadlineExceeded(BaseException):
    """The guarded block ran longer than its deadline.

    A ``BaseException`` (like ``KeyboardInterrupt``) on purpose: parser
    libraries wrap code in ``except Exception``, which would swallow the
    interruption and let the hostile input keep running.
    """

    def __init__(self, seconds: float) -> None:
        super().__init__(f"deadline of {seconds:g} s exceeded")
        self.seconds = seconds


def _can_interrupt() -> bool:
    return hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()


class Deadline:
    """Context manager: raise :class:`DeadlineExceeded` if the block exceeds ``seconds``."""

    def __init__(self, seconds: float) -> None:
        if seconds <= 0:
            raise ValueError("deadline must be positive")
        self.seconds = seconds
        self._start = 0.0
        self._expires = 0.0
        self._armed = False
        self._old_handler: Any = None
        self._old_delay = 0.0
        self._old_interval = 0.0

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self._start

    def __enter__(self) -> Deadline:
        self._start = time.monotonic()
        self._expires = self._start + self.seconds
        if _can_interrupt():
            self._old_handler = signal.signal(signal.SIGALRM, self._on_alarm)
            old_delay, old_interval = signal.setitimer(signal.ITIMER_REAL, 0)
            self._old_delay, self._old_interval = old_delay, old_interval
            # An outer timer due earlier keeps its time; our handler passes it on.
            delay = min(self.seconds, old_delay) if old_delay > 0 else self.seconds
            signal.setitimer(signal.ITIMER_REAL, delay)
            self._armed = True
        return self

    def _on_alarm(self, signum: int, frame: FrameType | None) -> None:
        if time.monotonic() >= self._expires - 1e-3:
            raise DeadlineExceeded(self.seconds)
        # The outer timer fired first: hand the signal to its owner and
        # re-arm ours for the time we have left.
        self._old_delay = 0.0
        signal.setitimer(signal.ITIMER_REAL, max(self._expires - time.monotonic(), _MIN_TIMER))
        if callable(self._old_handler):
            self._old_handler(signum, frame)

    def _disarm(self) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, self._old_handler)
        if self._old_delay > 0:
            remaining = max(self._old_delay - self.elapsed, _MIN_TIMER)
            signal.setitimer(signal.ITIMER_REAL, remaining, self._old_interval)
        self._armed = False

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._armed:
            self._disarm()
        elif exc_type is None and self.elapsed > self.seconds:
            raise DeadlineExceeded(self.seconds)


def deadline(seconds: float) -> Deadline:
    """``with deadline(2.0): ...`` — see :class:`Deadline`."""
    return Deadline(seconds)
