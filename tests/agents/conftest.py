"""The agents' tests: an app with the agents and groups of :mod:`tests.agents.agenthelp`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from maildesk.app import App
from tests.agents.agenthelp import agent_app
from tests.conftest import FrozenClock


@pytest.fixture
def app(tmp_path: Path, database_url: str, clock: FrozenClock) -> Iterator[App]:
    application = agent_app(tmp_path, database_url, clock)
    yield application
    application.db.dispose()
