"""The agents' tests: an app with the agents and groups of :mod:`tests.agents.agenthelp`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from maildesk.app import App
from tests.agents.agenthelp import agent_app
from tests.conftest import FrozenClock
from tests.daemon_harness import DaemonProcess, RelaySink


@pytest.fixture
def app(tmp_path: Path, database_url: str, clock: FrozenClock) -> Iterator[App]:
    application = agent_app(tmp_path, database_url, clock)
    yield application
    application.db.dispose()


# The daemon tests' agent: Bob of group L1, every ticket's group.
DAEMON_AGENTS = """
[routing]
default_group = "L1"
rules_dir = "{rules}"

[[groups]]
name = "L1"

[[agents]]
name = "bob"
display_name = "Bob Agent"
addresses = ["bob@agents.test"]
groups = ["L1"]
"""


@pytest.fixture
def daemon(tmp_path: Path, relay: RelaySink) -> Iterator[DaemonProcess]:
    """A real ``maildesk run`` with agent Bob, sending through ``relay``."""
    rules = tmp_path / "rules"
    rules.mkdir()
    extra = DAEMON_AGENTS.format(rules=rules)
    proc = DaemonProcess(tmp_path, relay_port=relay.port, extra_config=extra).start()
    yield proc
    if proc.proc is not None and proc.proc.poll() is None:
        proc.kill()
