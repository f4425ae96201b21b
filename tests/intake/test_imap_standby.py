"""A folder another node has taken over is not this node's failure (README: Monitoring).

With several nodes on one PostgreSQL a lease lets one node read a folder. A node
whose connection failed a few times, and whose lease another node then took, stands
by; the folder is read, and fine. Its failures in a row are no longer anybody's:
left in its health file, `maildesk status` on that node said "failing N times in a
row" and exited 1, and `maildesk_imap_folder_consecutive_failures` stayed at N, for
as long as it stood by.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, replace
from datetime import timedelta

import pytest
from sqlalchemy import update

from maildesk.app import App
from maildesk.config import ImapMailboxSettings
from maildesk.db.figures import Figures
from maildesk.db.models import ImapFolderState
from maildesk.intake import imap
from maildesk.intake.imap import FolderHealth, FolderPoller, FolderStatus, PollerDeps
from maildesk.intake.oauth2 import PasswordLogin
from maildesk.status import problems
from tests.conftest import FrozenClock

FAILURES = 4


def test_a_folder_taken_over_by_another_node_is_not_reported_failing_here(
    app: App, clock: FrozenClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(imap, "backoff_delay", lambda _failures: 0.01)
    mailbox = ImapMailboxSettings(host="127.0.0.1", port=1, user="support", lease_seconds=5)
    stop = threading.Event()
    reported: list[FolderHealth] = []

    def on_health(health: FolderHealth) -> None:
        reported.append(replace(health))
        if health.status is FolderStatus.STANDBY:
            stop.set()

    deps = PollerDeps(
        store=app.intake(),
        db=app.db,
        holder="node-a",
        clock=clock,
        stop=stop,
        on_stored=lambda: None,
        on_health=on_health,
    )
    poller = FolderPoller(mailbox, "INBOX", PasswordLogin("support", "secret"), deps)
    tries = 0

    def unreachable() -> None:
        nonlocal tries
        tries += 1
        if tries == FAILURES:  # meanwhile node b, which reaches the server, takes over
            with app.db.transaction() as session:
                session.execute(
                    update(ImapFolderState).values(
                        lease_holder="node-b", lease_expires_at=clock() + timedelta(minutes=5)
                    )
                )
        raise ConnectionRefusedError(111, "Connection refused")

    monkeypatch.setattr(poller, "session", unreachable)
    thread = threading.Thread(target=poller.run, daemon=True)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive(), "the poller never stood by"

    standby = [h for h in reported if h.status is FolderStatus.STANDBY]
    assert standby, [h.status for h in reported]
    assert tries == FAILURES and reported[0].consecutive_failures == 1  # said while it failed
    assert standby[0].consecutive_failures == 0
    assert problems(Figures(at=clock()), [asdict(standby[0])]) == []
