"""A folder changed under a running poller (deleted, created again) against a real Dovecot."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from imapclient import SEEN

from maildesk.app import App
from tests.dovecot_harness import Dovecot, dovecot_server
from tests.intake.test_imap import (
    USER,
    Runner,
    flags_of,
    folder_state,
    idle_everywhere,
    mail,
    stored,
    wait_until,
)


@pytest.fixture
def dovecot() -> Iterator[Dovecot]:
    with dovecot_server(USER) as server:
        with server.client(USER) as client:
            client.create_folder("Support")
        yield server


@pytest.mark.parametrize("idle", [True, False])
def test_a_folder_recreated_while_selected_is_read_again_at_the_next_reconciliation(
    app: App, dovecot: Dovecot, runner: Runner, idle: bool
) -> None:
    """Deleted and created again by a person while the poller had it selected: the
    session still answered SEARCH from the old folder (no notice, no error), so
    none of the new folder's mail was read until maildesk was restarted."""
    sent = [mail(n) for n in range(2)]
    for raw in sent:
        dovecot.append(USER, raw, folder="Support")
    block = dovecot.mailbox(USER, folders=["Support"], idle=idle, poll_interval_seconds=1)
    intake = runner.start(app, block)
    wait_until(lambda: len(stored(app)) == 2, "the first two stored")
    before = folder_state(app, folder="Support")
    if idle:
        idle_everywhere(intake)
    with dovecot.client(USER) as client:
        client.delete_folder("Support")
        client.create_folder("Support")
    fresh = mail(9)
    for raw in [*sent, fresh]:  # the same two again, and one new
        dovecot.append(USER, raw, folder="Support")

    wait_until(lambda: len(stored(app)) == 3, "the new folder's new mail stored", timeout=20)
    assert stored(app)[-1][1] == fresh
    after = wait_until(
        lambda: (s := folder_state(app, folder="Support")) and s.last_uid == 3 and s,
        "the new folder read to its end",
    )
    assert before is not None and after.uidvalidity != before.uidvalidity
    wait_until(
        lambda: all(SEEN in f for f in flags_of(dovecot, "Support").values()),
        "the new folder's mail flagged",
    )
    assert len(stored(app)) == 3
