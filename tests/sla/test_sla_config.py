"""The [calendars] and [sla] config: references checked at load time, exit 78 naming the key."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from maildesk.config import ConfigError, load_settings

CALENDAR = """
[calendars.office]
timezone = "Europe/Berlin"
hours = { mon = "10:00-19:00", tue = "10:00-19:00" }
holidays = { country = "DE", subdivision = "BE", dates = [2026-12-24] }
exceptions = [{ start = 2026-05-09, kind = "working_day", hours = "10:00-15:00" }]
"""
PEOPLE = """
[[groups]]
name = "l1"
escalates_to = "l2"
[[groups]]
name = "l2"
[[agents]]
name = "alice"
addresses = ["alice@example.com"]
"""
POLICY = """
[sla]
default_policy = "standard"
pause_statuses = ["pending"]
[[sla.policies]]
name = "standard"
first_response = { minutes = 240, calendar = "office" }
resolution = { minutes = 2700, calendar = "office" }
pause_statuses = ["pending", "open"]
[sla.policies.breach]
notify = ["assignee", "lead", "group"]
raise_priority = true
reassign_to_group = "escalates_to"
add_watchers = ["alice"]
[[sla.policies]]
name = "special"
first_response = { minutes = 60, basis = "calendar" }
[[sla.rules]]
policy = "special"
subject_token = "PRIORITY-2026"
[sla.auto_close]
resolved_close_days = 7
pending_reminder_days = 10
pending_resolve_days = 14
"""


def _load(tmp_path: Path, text: str) -> object:
    path = tmp_path / "maildesk.toml"
    path.write_text(text, encoding="utf-8")
    return load_settings(str(path))


def test_a_full_sla_config_loads(tmp_path: Path) -> None:
    settings = _load(tmp_path, CALENDAR + PEOPLE + POLICY)
    sla = settings.sla  # type: ignore[attr-defined]
    standard, special = sla.policies
    assert standard.pause_statuses == {"pending", "open"}
    assert special.pause_statuses == {"pending"}  # inherited from [sla]
    assert standard.breach.reassign_to_group == "escalates_to"
    assert sla.auto_close.pending_resolve_days == 14


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        (POLICY, "sla.policies.0.first_response.calendar", "unknown calendar 'office'"),
        (
            CALENDAR + PEOPLE + POLICY.replace('"escalates_to"\n', '"l9"\n'),
            "sla.policies.0.breach.reassign_to_group",
            "unknown group 'l9'",
        ),
        (
            CALENDAR
            + PEOPLE
            + POLICY.replace('default_policy = "standard"', 'default_policy = "x"'),
            "sla.default_policy",
            "unknown policy 'x'",
        ),
        (
            CALENDAR + PEOPLE + POLICY.replace('["alice"]', '["mallory"]'),
            "sla.policies.0.breach.add_watchers",
            "unknown agent 'mallory'",
        ),
        (
            CALENDAR
            + PEOPLE
            + POLICY.replace("pending_reminder_days = 10", "pending_reminder_days = 20"),
            "sla.auto_close",
            "pending_reminder_days",
        ),
        (
            CALENDAR.replace("Europe/Berlin", "Mars/Olympus") + PEOPLE + POLICY,
            "calendars.office.timezone",
            "unknown time zone",
        ),
        (
            CALENDAR + PEOPLE + POLICY.replace("raise_priority", "raise_prio"),
            "sla.policies.0.breach.raise_prio",
            "unknown key",
        ),
    ],
)
def test_bad_sla_config_names_the_key(tmp_path: Path, text: str, key: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, text)
    assert key in str(info.value) and reason in str(info.value)


def test_unknown_calendar_exits_78(tmp_path: Path) -> None:
    path = tmp_path / "maildesk.toml"
    path.write_text(f'data_dir = "{tmp_path}"\n' + POLICY, encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "maildesk", "--config", str(path), "check"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 78
    assert (
        f"{path}: sla.policies.0.first_response.calendar: unknown calendar 'office'"
        in result.stdout + result.stderr
    )


def test_calendar_without_weekly_hours_is_a_config_error(tmp_path: Path) -> None:
    # It would load, and every sweep would then fail on CalendarClosedError.
    never = CALENDAR.replace('hours = { mon = "10:00-19:00", tue = "10:00-19:00" }', "hours = {}")
    assert never != CALENDAR
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, never + PEOPLE + POLICY)
    assert "calendars.office.hours" in str(info.value) and "never open" in str(info.value)


def test_a_policys_own_pause_statuses_are_checked_too(tmp_path: Path) -> None:
    # Like sla.pause_statuses: a typo would silently never pause this policy's clock.
    typo = POLICY.replace('pause_statuses = ["pending", "open"]', 'pause_statuses = ["Pending"]')
    assert typo != POLICY
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, CALENDAR + PEOPLE + typo)
    message = str(info.value)
    assert "sla.policies.0.pause_statuses" in message and "cannot pause the clock" in message


def test_a_target_centuries_away_is_a_config_error(tmp_path: Path) -> None:
    # A typo of a few zeros: its due time cost the sweep seconds per ticket, then overflowed.
    far = re.sub(r"minutes = \d+", "minutes = 1000000000", POLICY, count=1)
    assert far != POLICY
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, CALENDAR + PEOPLE + far)
    assert "minutes" in str(info.value)


def test_an_agent_never_on_shift_is_a_config_error(tmp_path: Path) -> None:
    # Mail held for her "until her next shift" would wait for a shift that never comes.
    never = PEOPLE.replace(
        'addresses = ["alice@example.com"]', 'addresses = ["alice@example.com"]\nhours = {}'
    )
    assert never != PEOPLE
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, CALENDAR + never + POLICY)
    assert "agents.0.hours: alice is never on shift" in str(info.value)


def test_a_night_shift_across_midnight_is_a_config_error_that_says_how_to_write_it(
    tmp_path: Path,
) -> None:
    # Hours are per local day; a 22:00-06:00 shift is two intervals on two days, which
    # also lets a holiday on the second day close its morning part.
    night = CALENDAR.replace('mon = "10:00-19:00"', 'mon = "22:00-06:00"')
    assert night != CALENDAR
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, night + PEOPLE + POLICY)
    message = str(info.value)
    assert "calendars.office.hours.mon" in message and "22:00-06:00" in message
    assert "'22:00-24:00'" in message and "'00:00-06:00'" in message
