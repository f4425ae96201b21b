"""Fixtures shared by the IMAP intake tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.intake.test_imap import Runner


@pytest.fixture
def runner() -> Iterator[Runner]:
    """Starts ImapIntake instances for a test; stops whatever is still running at the end."""
    r = Runner()
    yield r
    for intake in list(r.running):
        r.stop(intake)
