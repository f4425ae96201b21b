"""Which refused IMAP post-actions are tried again, and when (pure; no sockets).

A server that answers a flag, move or delete with NO says why in a response
code (RFC 5530, RFC 3501). Some reasons pass on their own or once someone
acts, and the message would otherwise stay unflagged, unmoved or undeleted for
good; the others do not pass by waiting, and the UIDs are passed over (the mail
is stored either way, so nothing is lost):

* tried again: ``OVERQUOTA`` (a MOVE into a full folder: mail is deleted, the
  quota raised), ``UNAVAILABLE`` (a "try again later" failure), ``INUSE`` (a
  lock someone else holds), ``LIMIT`` (a server limit of the moment, such as
  concurrent commands), ``SERVERBUG`` (Dovecot's answer to an internal error such
  as a lock timeout), ``EXPUNGEISSUED`` (another client removed one of the UIDs:
  the retry acts on those still there), ``TRYCREATE`` (``move_to`` was deleted
  meanwhile: the retry runs on a new connection, which creates it again) and
  the non-standard ``THROTTLED`` (Gmail's rate limit);
* passed over: ``NOPERM``, ``CANNOT``, ``AUTHORIZATIONFAILED``, ``EXPIRED``,
  ``PRIVACYREQUIRED``, ``CONTACTADMIN``, ``NONEXISTENT``, ``ALREADYEXISTS``,
  ``CORRUPTION``, ``PARSE``, ``CLIENTBUG`` and any other code: each names a
  state that waiting does not change (a right, the request itself, damaged
  data for an administrator to repair);
* a NO without a code is tried again: it says nothing either way, older
  servers and Exchange send their temporary failures that way, and a retry
  costs one command per wait while passing over loses the action for good.
  The retries are bounded (``post_action_retry_for_seconds``), after which it
  is passed over with one warning. A BAD (the command was malformed) is never
  retried: the same command would be malformed again.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

PASSING_CODES = frozenset(
    {
        "OVERQUOTA",
        "UNAVAILABLE",
        "INUSE",
        "LIMIT",
        "SERVERBUG",
        "EXPUNGEISSUED",
        "TRYCREATE",
        "THROTTLED",
    }
)
NO_CODE = ""  # a NO without a response code
# The wait before the next retry doubles from the mailbox's post_action_retry_seconds up to this.
RETRY_MAX_SECONDS = 3600.0

_CODE = re.compile(r"\[([A-Za-z][A-Za-z0-9-]*)[^\]]*\]")


def refusal_code(error: str) -> str:
    """The response code of a refusal's text (``"move failed: [OVERQUOTA] ..."``), or ''."""
    found = _CODE.search(error)
    return found.group(1).upper() if found else NO_CODE


def is_bad(error: str) -> bool:
    """imaplib's text for a BAD answer (the command itself was wrong)."""
    return "command error: BAD" in error or error.startswith("BAD")


def passes(error: str) -> bool:
    """Whether a refusal with this text may pass, so the post-action is tried again."""
    if is_bad(error):
        return False
    code = refusal_code(error)
    return code == NO_CODE or code in PASSING_CODES


def retry_delay(attempts: int, base_seconds: float) -> float:
    """The wait after the ``attempts``-th refusal in a row: base, 2 x base, ... at most an hour."""
    return min(RETRY_MAX_SECONDS, base_seconds * 2 ** max(0, attempts - 1))


@dataclass
class Waiting:
    """One UID whose post-action the server refused for a reason that may pass."""

    since: datetime  # first refused (or stored, when learned after a restart)
    attempts: int  # refusals so far
    next_at: float  # time.monotonic() of the next try
    reason: str  # the server's last answer


class RetryBook:
    """The UIDs of one folder waiting to have their post-action tried again."""

    def __init__(self, base_seconds: float, give_up_seconds: float) -> None:
        self.base_seconds = base_seconds
        self.give_up_seconds = give_up_seconds
        self.waiting: dict[int, Waiting] = {}

    def __len__(self) -> int:
        return len(self.waiting)

    def __contains__(self, uid: object) -> bool:
        return uid in self.waiting

    def clear(self) -> None:
        self.waiting.clear()

    def lowest(self) -> int | None:
        return min(self.waiting, default=None)

    def refused(
        self,
        uids: list[int],
        reason: str,
        now: datetime,
        monotonic: float,
        stored_at: Mapping[int, datetime],
    ) -> None:
        """Record a passing refusal of ``uids``.

        A UID not waiting yet counts its retries from when it was stored, where
        that is known (after a restart it may be long ago), else from ``now``.
        """
        for uid in uids:
            entry = self.waiting.get(uid)
            if entry is None:
                since = min(stored_at.get(uid, now), now)
                entry = self.waiting[uid] = Waiting(since, 0, monotonic, reason)
            entry.attempts += 1
            entry.reason = reason
            entry.next_at = monotonic + retry_delay(entry.attempts, self.base_seconds)

    def done(self, uids: list[int]) -> None:
        for uid in uids:
            self.waiting.pop(uid, None)

    def due(self, monotonic: float) -> list[int]:
        return sorted(u for u, w in self.waiting.items() if w.next_at <= monotonic)

    def next_at(self) -> float | None:
        return min((w.next_at for w in self.waiting.values()), default=None)

    def expired(self, now: datetime) -> list[int]:
        """UIDs tried for longer than ``give_up_seconds``: taken out of the book."""
        gone = sorted(
            u
            for u, w in self.waiting.items()
            if (now - w.since).total_seconds() >= self.give_up_seconds
        )
        self.done(gone)
        return gone

    def summary(self) -> str:
        """Why the UIDs wait, for the health file: the latest reason and the next try."""
        if not self.waiting:
            return ""
        latest = max(self.waiting.values(), key=lambda w: w.attempts)
        code = refusal_code(latest.reason) or "NO without a code"
        return f"{code}: {latest.reason}"
