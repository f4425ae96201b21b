"""Agents, groups and organisations: config validation and directory lookups."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from maildesk.config import ConfigError, load_settings
from maildesk.people import Directory

PEOPLE = """
[[groups]]
name = "L1"
escalates_to = "L2"
lead = "bob"

[[groups]]
name = "L2"
tier = 2

[[agents]]
name = "alice"
display_name = "Alice A."
addresses = ["Alice@Corp.example"]
groups = ["L1"]
timezone = "Europe/Oslo"
hours = { mon = "09:00-17:00", tue = "09:00-17:00" }
absences = [{ start = 2026-12-24, end = 2026-12-26 }]

[[agents]]
name = "bob"
addresses = ["bob@corp.example", "bob@home.example"]
groups = ["L1", "L2"]

[[organisations]]
name = "ACME"
domains = ["acme.example"]
tier = "gold"
"""


def load(tmp_path: Path, text: str) -> Directory:
    path = tmp_path / "maildesk.toml"
    path.write_text(text)
    return Directory.from_settings(load_settings(str(path)))


def test_directory_finds_agents_by_address_tag_and_case_insensitive(tmp_path: Path) -> None:
    directory = load(tmp_path, PEOPLE)
    alice = directory.agent_by_address("alice+x@corp.EXAMPLE")
    assert alice is not None and alice.name == "alice"
    assert directory.agent_by_address("mallory@corp.example") is None
    assert [a.name for a in directory.members("L1")] == ["alice", "bob"]
    assert [a.name for a in directory.members("L2")] == ["bob"]


def test_organisation_matches_subdomains_but_not_lookalikes(tmp_path: Path) -> None:
    directory = load(tmp_path, PEOPLE)
    org = directory.organisation_for("jo@mail.acme.example")
    assert org is not None and org.tier == "gold"
    assert directory.organisation_for("jo@notacme.example") is None


def test_shift_respects_hours_time_zone_and_absence(tmp_path: Path) -> None:
    directory = load(tmp_path, PEOPLE)
    alice = directory.agent("alice")
    assert alice is not None
    # Monday 2026-11-23 08:30 UTC is 09:30 in Oslo: on shift.
    assert directory.on_shift(alice, datetime(2026, 11, 23, 8, 30, tzinfo=UTC))
    # 07:30 UTC is 08:30 in Oslo: not yet.
    assert not directory.on_shift(alice, datetime(2026, 11, 23, 7, 30, tzinfo=UTC))
    # Wednesday: no hours that day.
    assert not directory.on_shift(alice, datetime(2026, 11, 25, 10, 0, tzinfo=UTC))
    # Monday 2026-12-28 would be on shift; the absence ends on the 26th.
    assert directory.on_shift(alice, datetime(2026, 12, 28, 9, 0, tzinfo=UTC))
    assert directory.is_absent(alice, datetime(2026, 12, 25, 9, 0, tzinfo=UTC))
    bob = directory.agent("bob")
    assert bob is not None and directory.on_shift(bob, datetime(2026, 11, 25, 3, 0, tzinfo=UTC))


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        (
            '[[agents]]\nname = "carol"\naddresses = ["c@x.example"]\ngroups = ["L9"]\n',
            "unknown group",
        ),
        ('[[agents]]\nname = "carol"\naddresses = ["ALICE@corp.example"]\n', "appears twice"),
        ('[[agents]]\nname = "L1"\naddresses = ["c@x.example"]\n', "both an agent and a group"),
        (
            '[[agents]]\nname = "carol"\naddresses = ["c@x.example"]\ntimezone = "Mars/Base"\n',
            "time zone",
        ),
        ('[[groups]]\nname = "L3"\nlead = "nobody"\n', "unknown lead"),
    ],
)
def test_inconsistent_people_are_config_errors(tmp_path: Path, extra: str, reason: str) -> None:
    path = tmp_path / "maildesk.toml"
    path.write_text(PEOPLE + extra)
    with pytest.raises(ConfigError) as err:
        load_settings(str(path))
    assert reason in str(err.value)
    assert str(path) in str(err.value)


def test_mail_held_for_an_absent_agent_waits_for_their_return(tmp_path: Path) -> None:
    """Inside her hours but on leave: held until her first hour back, not sent now."""
    extra = """
[[agents]]
name = "carol"
addresses = ["carol@corp.example"]
timezone = "Europe/Oslo"
hours = { mon = "09:00-17:00", tue = "09:00-17:00", wed = "09:00-17:00" }
absences = [{ start = 2026-11-23, end = 2026-11-24 }]

[[agents]]
name = "dan"
addresses = ["dan@corp.example"]
absences = [{ start = 2026-11-23, end = 2026-11-23 }]
"""
    directory = load(tmp_path, PEOPLE + extra)
    carol, dan = directory.agent("carol"), directory.agent("dan")
    assert carol is not None and dan is not None
    monday = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)  # 11:00 in Oslo, inside her hours
    assert not directory.on_shift(carol, monday)
    # Wednesday 09:00 in Oslo, the first hour after her leave.
    assert directory.next_on_shift(carol, monday) == datetime(2026, 11, 25, 8, 0, tzinfo=UTC)
    # No weekly hours: on shift again from the day after the absence.
    assert directory.next_on_shift(dan, monday) == datetime(2026, 11, 24, 0, 0, tzinfo=UTC)
    # Not absent: the next opening of the hours, as before.
    tuesday_evening = datetime(2026, 11, 24, 18, 0, tzinfo=UTC)
    alice = directory.agent("alice")
    assert alice is not None
    assert directory.next_on_shift(alice, tuesday_evening) == datetime(
        2026, 11, 30, 8, 0, tzinfo=UTC
    )
