"""One loop's view of an outage (the database, a full disk): said once, retried with a
growing delay."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

# The longest wait between two tries while the database stays away.
MAX_DELAY_SECONDS = 60.0


class Outage:
    """Tracks whether the database (or another ``resource``) is away for one loop.

    The first failure is logged once as "database unavailable", its end once as
    "available again"; meanwhile each failure doubles the wait before the next
    try (from ``base`` up to ``ceiling``), so a loop neither spins nor floods the
    log with one warning per message per second.
    """

    def __init__(
        self,
        log: logging.Logger,
        what: str,
        *,
        base: float = 1.0,
        ceiling: float = MAX_DELAY_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
        resource: str = "database",
    ) -> None:
        self.log = log
        self.what = what
        self.resource = resource
        self.base = max(base, 0.1)
        self.ceiling = max(ceiling, self.base)
        self.monotonic = monotonic
        self.since: float | None = None  # when it went away; None while it is there
        self.delay = 0.0
        self.next_try = 0.0

    @property
    def down(self) -> bool:
        return self.since is not None

    def ready(self) -> bool:
        """True when it is time to try the database (always, while it is up)."""
        return self.since is None or self.monotonic() >= self.next_try

    def failed(self, exc: BaseException) -> float:
        """Note one failed try; the seconds to wait before the next one."""
        now = self.monotonic()
        if self.since is None:
            self.since, self.delay = now, self.base
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
            self.log.warning(
                "%s: %s unavailable, retrying with backoff (every %.0fs at most): %s",
                self.what,
                self.resource,
                self.ceiling,
                first_line,
            )
        else:
            self.delay = min(self.delay * 2, self.ceiling)
            self.log.debug("%s: %s still unavailable: %s", self.what, self.resource, exc)
        self.next_try = now + self.delay
        return self.delay

    def succeeded(self) -> None:
        """Note a try that worked: says once that the outage is over."""
        if self.since is not None:
            self.log.warning(
                "%s: %s available again after %.1fs",
                self.what,
                self.resource,
                self.monotonic() - self.since,
            )
        self.since, self.delay, self.next_try = None, 0.0, 0.0
