"""Deliveries the relay took whose record the database could not take, kept on disk.

A mail handed to the relay is out. When the database is away at that moment,
the sender keeps what the delivery did and writes it at its next drain, before
it claims anything (``OutboxSender._catch_up``). This file keeps the same across
a stop or a crash of the daemon, so the restarted one records those deliveries
before it gives back its claims, instead of sending the mails a second time.

One JSON file per node in the data directory, replaced whole
(:func:`maildesk.atomic.write_atomic`) and removed once it is empty; it holds
outbox ids, addresses and the relay's replies, never a mail.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, NamedTuple

from maildesk.atomic import write_atomic

log = logging.getLogger("maildesk.outbound")
FORMAT = 1


class Failure(NamedTuple):
    """What the relay said when it did not take the mail for everyone."""

    kind: str  # "temporary", "partial" (4xx for ``later``), "permanent", "refused" (5xx for some)
    reply: str
    recipients: list[str]  # "partial": still owed the mail; "refused": refused for good
    dead: list[str]  # "permanent"/"refused": those with no such mailbox


class Delivery(NamedTuple):
    """One delivery attempt as the journal keeps it."""

    live: list[str]
    blocked: list[str]
    error: Failure | None
    refused: Failure | None


def journal_path(data_dir: Path, node: str) -> Path:
    """The daemon's journal, named for its node (nodes may share a data directory)."""
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in node)
    return data_dir / f"outbox-unrecorded-{safe}.json"


def warn_of_others(path: Path) -> None:
    """Say so when the data directory holds another node's journal.

    Only the node it is named for reads it: left by this node under its old
    ``node_name``, its mails are sent again once that name's claims expire.
    """
    for other in sorted(path.parent.glob("outbox-unrecorded-*.json")):
        if other.name != path.name:
            log.warning(
                "%s: deliveries not yet recorded by another node_name; this node (%s) does not "
                "read it. If it was this node's old name, run once with that name so they "
                "are recorded, or they are sent again",
                other,
                path.name,
            )


def save(path: Path, deliveries: dict[int, Delivery]) -> None:
    """Replace the journal with ``deliveries`` (removed when there are none)."""
    if not deliveries:
        path.unlink(missing_ok=True)
        return
    body = {
        "format": FORMAT,
        "deliveries": {str(outbox_id): _to_json(d) for outbox_id, d in deliveries.items()},
    }
    write_atomic(path, json.dumps(body, ensure_ascii=False).encode(), mode=0o600)


def load(path: Path) -> dict[int, Delivery]:
    """The journal's deliveries; none when there is no journal.

    A journal that cannot be read is renamed aside with an error line: its
    mails may be sent a second time once their claims expire, the one thing
    it was there to prevent, but the daemon runs.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    try:
        body = json.loads(raw)
        if body.get("format") != FORMAT:
            raise ValueError(f"format {body.get('format')!r}, expected {FORMAT}")
        return {int(k): _from_json(v) for k, v in body["deliveries"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        aside = path.with_name(path.name + ".unreadable")
        path.replace(aside)
        log.error(
            "%s: cannot read the deliveries not yet recorded (%s); moved to %s", path, exc, aside
        )
        return {}


def _to_json(delivery: Delivery) -> dict[str, Any]:
    return {
        "live": delivery.live,
        "blocked": delivery.blocked,
        "error": delivery.error._asdict() if delivery.error else None,
        "refused": delivery.refused._asdict() if delivery.refused else None,
    }


def _from_json(data: dict[str, Any]) -> Delivery:
    def failure(value: dict[str, Any] | None) -> Failure | None:
        if value is None:
            return None
        return Failure(
            str(value["kind"]),
            str(value["reply"]),
            [str(a) for a in value["recipients"]],
            [str(a) for a in value["dead"]],
        )

    return Delivery(
        [str(a) for a in data["live"]],
        [str(a) for a in data["blocked"]],
        failure(data["error"]),
        failure(data["refused"]),
    )
