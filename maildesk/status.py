"""`maildesk status`: is anything waiting, failing or held that ops should look at?

The database's figures (:mod:`maildesk.db.figures`, the same the metrics
endpoint exports) and the IMAP pollers' health file, judged against a few
thresholds. What is judged, and why:

* mail stored but not processed for longer than ``pending_minutes``: the
  pipeline is stuck or too slow (no daemon running, a database problem);
* outbound mail due for longer than ``outbox_minutes``: the relay refuses or
  cannot be reached, or no daemon sends;
* outbound mail queued in the last 24 hours that failed for good: someone was
  not answered (older failures stay listed in the figures, not judged);
* mail held in quarantine for a reason other than spam: it waits for ops
  (`maildesk quarantine retry|release`); spam held is the filter working;
* an IMAP folder failing several times in a row;
* a file system the daemon writes to (the data directory, the outbound
  Maildir) nearly full: the daemon cannot say so itself, it has no room to
  write it (intake answers 4xx, outbound mail waits, both until there is room).
* stored IMAP mail whose flag/move/delete the server refused for a reason that
  may pass (a full ``move_to`` folder): it is tried again, but piles up in the
  folder until someone acts (deletes mail, raises the quota).

Tickets past an SLA due time are shown, not judged: they are the agents' to act on.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maildesk.db.figures import Figures

SCHEMA_VERSION = 1
IMAP_HEALTH_FILE = "imap-health.json"
IMAP_FAILURES = 3  # failures in a row of a folder before it is something to look at


@dataclass(frozen=True)
class Thresholds:
    pending_minutes: float = 10.0
    outbox_minutes: float = 15.0
    # Free space below this (or below DISK_FREE_SHARE of a smaller file system) is a problem.
    disk_free_mb: float = 64.0


DISK_FREE_SHARE = 0.05


def read_imap_health(data_dir: Path) -> list[dict[str, Any]]:
    """The folders of ``<data_dir>/imap-health.json`` (none when there is no such file)."""
    try:
        folders = json.loads((data_dir / IMAP_HEALTH_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return [f for f in folders if isinstance(f, dict)] if isinstance(folders, list) else []


def problems(
    figures: Figures,
    imap: list[dict[str, Any]],
    limits: Thresholds = Thresholds(),
    outbound: str = "the relay refuses or cannot be reached",
) -> list[str]:
    """What ops should look at, one sentence each; empty when all is well.

    ``outbound`` says what keeps outbound mail waiting, by the transport in use.
    """
    found = []
    age = figures.intake_oldest_pending_age_seconds
    if age is not None and age > limits.pending_minutes * 60:
        found.append(
            f"{figures.intake_pending + figures.intake_processing} mail(s) not processed, "
            f"the oldest stored {age / 60:.0f} minutes ago (more than {limits.pending_minutes:g})"
        )
    due = figures.outbox_oldest_due_age_seconds
    if due is not None and due > limits.outbox_minutes * 60:
        found.append(
            f"outbound mail due for {due / 60:.0f} minutes (more than {limits.outbox_minutes:g}): "
            f"{outbound} (`maildesk outbox list`)"
        )
    if figures.outbox_failed_last_day:
        found.append(
            f"{figures.outbox_failed_last_day} outbound mail(s) of the last 24 hours failed "
            "for good (`maildesk outbox list --state failed`)"
        )
    held = {k: n for k, n in figures.quarantine.items() if k != "spam" and n}
    if held:
        reasons = ", ".join(f"{n} {k}" for k, n in sorted(held.items()))
        found.append(f"mail held in quarantine ({reasons}): `maildesk quarantine list`")
    for folder in imap:
        failures = int(folder.get("consecutive_failures") or 0)
        if failures >= IMAP_FAILURES:
            found.append(
                f"IMAP {folder.get('mailbox')}/{folder.get('folder')}: {failures} failures "
                f"in a row: {folder.get('last_error') or folder.get('status')}"
            )
        waiting = int(folder.get("post_action_waiting") or 0)
        if waiting:
            found.append(
                f"IMAP {folder.get('mailbox')}/{folder.get('folder')}: {waiting} stored "
                "message(s) wait for their post-action, refused by the server and tried "
                f"again: {folder.get('post_action_waiting_reason')}"
            )
    return found


def disk_problems(
    places: Iterable[tuple[str, Path]], limits: Thresholds = Thresholds()
) -> list[str]:
    """One sentence per file system of ``places`` (what, path) with too little room left.

    Free space is what an unprivileged process may use (``f_bavail``): the
    daemon does not run as root. A path not made yet is judged by its parent.
    """
    found, seen = [], set()
    for what, path in places:
        probe = path
        while not probe.exists() and probe.parent != probe:
            probe = probe.parent
        try:
            device = os.stat(probe).st_dev
            fs = os.statvfs(probe)
        except OSError:
            continue
        if device in seen:
            continue
        seen.add(device)
        free, size = fs.f_bavail * fs.f_frsize, fs.f_blocks * fs.f_frsize
        if free < min(limits.disk_free_mb * 2**20, size * DISK_FREE_SHARE):
            found.append(
                f"{what} {path}: its file system is (nearly) full ({free / 2**20:.1f} MiB free "
                f"of {size / 2**20:.0f} MiB): make room"
            )
    return found


def status_json(figures: Figures, imap: list[dict[str, Any]], found: list[str]) -> dict[str, Any]:
    """`maildesk status --json` (README, JSON formats)."""
    return {
        "schema": SCHEMA_VERSION,
        "at": figures.at.isoformat(),
        "healthy": not found,
        "problems": found,
        "database": figures.as_json(),
        "imap": [
            {
                key: folder.get(key)
                for key in (
                    "mailbox",
                    "folder",
                    "status",
                    "consecutive_failures",
                    "last_ok_at",
                    "last_error",
                    "post_action_waiting",
                    "post_action_waiting_reason",
                )
            }
            for folder in imap
        ],
    }
