"""The calendar's window arithmetic against a slow, obviously correct oracle.

The oracle walks UTC minute by minute. It needs only the documented meaning
of wall-clock business hours: a window ``s-e`` of local day ``D`` is open
from the first instant the local clock has reached ``(D, s)`` to the first
instant it has reached ``(D, e)``. So a minute is open exactly when the
*highest* local wall time shown so far (the clock's running maximum: after
the clocks go back it stays put until the repeated hour is over) lies in
an opening interval of its own date. That gives, with no special cases, a
window start in a DST gap snapping to the jump, a boundary in a repeated
hour taking its first occurrence, and a day skipped altogether (Samoa,
30 December 2011) having no hours.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import holidays
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from maildesk.sla.calendar import BusinessCalendar, CalendarClosedError, CalendarConfig

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
MINUTE = timedelta(minutes=1)

# (zone, a UTC instant near one of its clock changes)
ZONE_SWITCHES = [
    ("Europe/Berlin", datetime(2024, 3, 31, 1, tzinfo=UTC)),  # 02:00 -> 03:00
    ("Europe/Berlin", datetime(2024, 10, 27, 1, tzinfo=UTC)),  # 03:00 -> 02:00
    ("America/New_York", datetime(2024, 3, 10, 7, tzinfo=UTC)),
    ("America/New_York", datetime(2024, 11, 3, 6, tzinfo=UTC)),
    ("Australia/Lord_Howe", datetime(2024, 4, 6, 15, tzinfo=UTC)),  # half-hour DST
    ("Asia/Kathmandu", datetime(2024, 6, 1, tzinfo=UTC)),  # +05:45, no DST
    ("America/Sao_Paulo", datetime(2018, 11, 4, 3, tzinfo=UTC)),  # midnight -> 01:00
    ("America/Havana", datetime(2024, 11, 3, 5, tzinfo=UTC)),  # 01:00 -> 00:00
    ("Pacific/Apia", datetime(2011, 12, 30, 10, tzinfo=UTC)),  # 30 Dec 2011 never happened
    ("Europe/Dublin", datetime(2024, 3, 31, 1, tzinfo=UTC)),  # negative DST in tzdata
    ("Pacific/Kiritimati", datetime(2024, 12, 31, 10, tzinfo=UTC)),  # +14: a day ahead of UTC
]


@st.composite
def day_hours(draw: st.DrawFn) -> list[str] | str:
    """'closed', '24h' or up to three sorted, disjoint intervals on a 15-minute grid."""
    kind = draw(st.sampled_from(["closed", "24h", "list", "list", "list"]))
    if kind != "list":
        return kind
    marks = sorted(draw(st.sets(st.integers(0, 96), min_size=2, max_size=6)))
    if len(marks) % 2:
        marks = marks[:-1]
    text = []
    for start, end in zip(marks[::2], marks[1::2], strict=True):
        s, e = start * 15, end * 15
        text.append(f"{s // 60:02d}:{s % 60:02d}-{e // 60:02d}:{e % 60:02d}")
    return text


def _parse(value: list[str] | str) -> list[tuple[int, int]]:
    if value == "closed":
        return []
    if value == "24h":
        return [(0, 1440)]
    out = []
    for item in value:
        a, b = item.split("-")
        out.append((int(a[:2]) * 60 + int(a[3:]), int(b[:2]) * 60 + int(b[3:])))
    return out


class Oracle:
    """Open minutes by the running maximum of the local wall clock."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.zone = ZoneInfo(config["timezone"])
        self.weekly = [_parse(config["hours"].get(d, "closed")) for d in DAYS]
        hol = config.get("holidays", {})
        self.dates = {date.fromisoformat(d) for d in hol.get("dates", ())}
        self.public = (
            holidays.country_holidays(hol["country"], subdiv=hol.get("subdivision"))
            if "country" in hol
            else None
        )
        self.exceptions = [
            (
                date.fromisoformat(e["start"]),
                date.fromisoformat(e.get("end", e["start"])),
                _parse(e.get("hours", "closed")),
            )
            for e in config.get("exceptions", ())
        ]

    def intervals(self, day: date) -> list[tuple[int, int]]:
        for start, end, hours in self.exceptions:
            if start <= day <= end:
                return hours
        if day in self.dates or (self.public is not None and day in self.public):
            return []
        return self.weekly[day.weekday()]

    def open_minutes(self, a: datetime, b: datetime) -> list[bool]:
        """For each minute from ``a`` (whole UTC minute) to ``b``: open or not."""
        t = a - timedelta(hours=3)  # long enough before to know the running maximum
        high = datetime.min
        out = []
        while t < b:
            wall = t.astimezone(self.zone).replace(tzinfo=None)
            high = max(high, wall)
            if t >= a:
                minute = high.hour * 60 + high.minute
                out.append(any(s <= minute < e for s, e in self.intervals(high.date())))
            t += MINUTE
        return out


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[dict[str, Any], datetime, int]:
    zone, switch = draw(st.sampled_from(ZONE_SWITCHES))
    hours = {d: draw(day_hours()) for d in DAYS}
    config: dict[str, Any] = {"timezone": zone, "hours": hours}
    local_day = switch.astimezone(ZoneInfo(zone)).date()
    if draw(st.booleans()):
        config["holidays"] = {
            "dates": [str(local_day + timedelta(days=draw(st.integers(-2, 2))))],
        }
        if zone == "Europe/Berlin":
            config["holidays"] |= {"country": "DE", "subdivision": "BY"}
        elif zone == "America/New_York":
            config["holidays"] |= {"country": "US", "subdivision": "NY"}
    if draw(st.booleans()):
        config["exceptions"] = [
            {
                "start": str(local_day + timedelta(days=draw(st.integers(-1, 1)))),
                "kind": "changed_hours",
                "hours": draw(day_hours().filter(lambda h: h not in ("closed", []))),
            }
        ]
    start = switch + timedelta(minutes=draw(st.integers(-36 * 60, 12 * 60)))
    return config, start, draw(st.integers(1, 48 * 60))


ORACLE_SETTINGS = settings(max_examples=60, deadline=None)


@ORACLE_SETTINGS
@given(scenarios())
def test_business_minutes_between_matches_a_minute_walk(
    scenario: tuple[dict[str, Any], datetime, int],
) -> None:
    config, start, length = scenario
    calendar = BusinessCalendar(CalendarConfig.model_validate(config))
    end = start + length * MINUTE
    expected = sum(Oracle(config).open_minutes(start, end))
    assert calendar.business_minutes_between(start, end) == expected


@ORACLE_SETTINGS
@given(scenarios(), st.integers(1, 900))
def test_add_business_minutes_matches_a_minute_walk(
    scenario: tuple[dict[str, Any], datetime, int], amount: int
) -> None:
    config, start, length = scenario
    calendar = BusinessCalendar(CalendarConfig.model_validate(config))
    walk = Oracle(config).open_minutes(start, start + length * MINUTE)
    if sum(walk) < amount:
        return  # not within the walked stretch; other examples cover it
    seen = 0
    for index, is_open in enumerate(walk):
        seen += is_open
        if seen == amount:
            expected = start + (index + 1) * MINUTE
            break
    assert calendar.add_business_minutes(start, amount) == expected
    assert calendar.is_open(expected - MINUTE)


@settings(max_examples=25, deadline=None)
@given(scenarios(), st.integers(4 * 24 * 60, 10 * 24 * 60))
def test_business_minutes_between_over_days_matches_a_minute_walk(
    scenario: tuple[dict[str, Any], datetime, int], length: int
) -> None:
    """Spans of days (whole days in the middle count from running totals)."""
    config, start, _ = scenario
    calendar = BusinessCalendar(CalendarConfig.model_validate(config))
    end = start + length * MINUTE
    expected = sum(Oracle(config).open_minutes(start, end))
    assert calendar.business_minutes_between(start, end) == expected


def _window_walk(calendar: BusinessCalendar, a: datetime, b: datetime) -> timedelta:
    """Open time in ``[a, b)``: every local day's windows, clipped, one day at a time."""
    zone = ZoneInfo(calendar.config.timezone)
    day, last = a.astimezone(zone).date() - timedelta(days=1), b.astimezone(zone).date()
    total = timedelta(0)
    while day <= last + timedelta(days=1):
        for start, end in calendar.windows_on(day):
            total += max(timedelta(0), min(end, b) - max(start, a))
        day += timedelta(days=1)
    return total


@settings(max_examples=30, deadline=None)
@given(scenarios(), st.lists(st.tuples(st.integers(-800, 800), st.integers(0, 800)), max_size=6))
def test_spans_of_years_on_one_calendar_match_a_walk_over_its_windows(
    scenario: tuple[dict[str, Any], datetime, int], spans: list[tuple[int, int]]
) -> None:
    """One calendar asked about many spans, earlier and later (as a year's report asks),
    over holidays and clock changes, counts each as a walk over every day would."""
    config, origin, _ = scenario
    calendar = BusinessCalendar(CalendarConfig.model_validate(config))
    for offset, days in spans:
        a = origin + timedelta(days=offset, minutes=offset * 7)
        b = a + timedelta(days=days, minutes=days * 13)
        assert calendar.business_time_between(a, b) == _window_walk(calendar, a, b)
        assert calendar.business_time_between(b, a) == -_window_walk(calendar, a, b)


# -- adding business time over long spans --------------------------------------

DST_SWITCHES = [s for s in ZONE_SWITCHES if s[0] in ("Europe/Berlin", "America/New_York")]


def _add_by_window_walk(
    calendar: BusinessCalendar, start: datetime, amount: timedelta, max_closed_days: int
) -> datetime:
    """``amount`` of open time after ``start``: every local day's windows, one day at a
    time, clipped to ``start``; CalendarClosedError after more than ``max_closed_days``
    days in a row without open time (counted from the day before ``start``'s)."""
    if amount == timedelta(0):
        return start
    zone = ZoneInfo(calendar.config.timezone)
    day = start.astimezone(zone).date() - timedelta(days=1)
    cursor, remaining, closed = start, amount, 0
    while True:
        found = False
        for window_start, window_end in calendar.windows_on(day):
            window_start = max(window_start, cursor)
            if window_end <= window_start:
                continue
            found = True
            if remaining <= window_end - window_start:
                return window_start + remaining
            remaining -= window_end - window_start
            cursor = window_end
        closed = 0 if found else closed + 1
        if closed > max_closed_days:
            raise CalendarClosedError(f"closed {closed} days from {day}")
        day += timedelta(days=1)


@st.composite
def long_scenarios(draw: st.DrawFn) -> tuple[dict[str, Any], datetime, int]:
    """A calendar around a clock change in Berlin or New York, with holidays, a closure
    of days to weeks and a transferred working day, and a start up to ten weeks before
    the change; and the bound on closed days in a row."""
    zone, switch = draw(st.sampled_from(DST_SWITCHES))
    hours = {d: draw(day_hours()) for d in DAYS}
    config: dict[str, Any] = {"timezone": zone, "hours": hours}
    local_day = switch.astimezone(ZoneInfo(zone)).date()
    offsets = st.integers(-80, 40)
    if draw(st.booleans()):
        dates = draw(st.lists(offsets, max_size=6))
        config["holidays"] = {"dates": [str(local_day + timedelta(days=d)) for d in dates]}
        config["holidays"] |= (
            {"country": "DE", "subdivision": "BY"}
            if zone == "Europe/Berlin"
            else {"country": "US", "subdivision": "NY"}
        )
    exceptions: list[dict[str, Any]] = []
    if draw(st.booleans()):
        first = local_day + timedelta(days=draw(offsets))
        last = first + timedelta(days=draw(st.integers(0, 45)))
        exceptions.append({"start": str(first), "end": str(last), "kind": "closed"})
        if draw(st.booleans()):
            working = last + timedelta(days=draw(st.integers(1, 10)))
            hours_then = draw(day_hours().filter(lambda h: h not in ("closed", [])))
            exceptions.append({"start": str(working), "kind": "working_day", "hours": hours_then})
    config["exceptions"] = exceptions
    start = switch + timedelta(minutes=draw(st.integers(-70 * 24 * 60, 10 * 24 * 60)))
    max_closed = draw(st.sampled_from([3 * 366, 60, 20, 6, 5, 4, 3, 2, 1, 0]))
    return config, start, max_closed


def _snap_to_window(calendar: BusinessCalendar, instant: datetime, pick: int) -> datetime:
    """A window boundary of ``instant``'s local day (or ``instant`` when it has none)."""
    day = instant.astimezone(ZoneInfo(calendar.config.timezone)).date()
    bounds = [edge for window in calendar.windows_on(day) for edge in window]
    return bounds[pick % len(bounds)] if bounds else instant


@settings(max_examples=150, deadline=None)
@given(
    long_scenarios(),
    st.one_of(
        st.just(0),
        st.integers(1, 120),
        st.integers(1, 60 * 24 * 60 * 60),  # seconds: up to two months of open time
    ),
    st.one_of(st.none(), st.integers(0, 7)),
    st.booleans(),
)
def test_add_business_time_over_long_spans_matches_a_walk_over_every_day(
    scenario: tuple[dict[str, Any], datetime, int],
    seconds: int,
    snap: int | None,
    exact: bool,
) -> None:
    """Adding days to months of open time (whole days are jumped over) ends where a
    day-by-day walk ends, or both find the calendar closed for too long; ``exact`` asks
    for an amount that runs out exactly at the close of a window some days later."""
    config, start, max_closed = scenario
    calendar = BusinessCalendar(CalendarConfig.model_validate(config), max_closed_days=max_closed)
    if snap is not None:
        start = _snap_to_window(calendar, start, snap)
    amount = timedelta(seconds=seconds)
    if exact:
        later = start + timedelta(days=seconds % 40)
        boundary = max(start, _snap_to_window(calendar, later, 1))
        amount = calendar.business_time_between(start, boundary)
    try:
        expected: datetime | type[CalendarClosedError] = _add_by_window_walk(
            BusinessCalendar(CalendarConfig.model_validate(config)), start, amount, max_closed
        )
    except CalendarClosedError:
        expected = CalendarClosedError
    if expected is CalendarClosedError:
        with pytest.raises(CalendarClosedError):
            calendar.add_business_time(start, amount)
        return
    assert calendar.add_business_time(start, amount) == expected
    # The same calendar, asked again after it has cached running totals further out.
    assert calendar.add_business_time(start, amount) == expected
    assert calendar.add_business_minutes(start, amount / MINUTE) == expected


@settings(max_examples=25, deadline=None)
@given(long_scenarios(), st.integers(1, 4 * 24 * 60))
def test_add_business_minutes_over_days_matches_a_minute_walk(
    scenario: tuple[dict[str, Any], datetime, int], amount: int
) -> None:
    """Days of open minutes across a clock change, holidays and closures: the instant
    the minute walk reaches ``amount`` open minutes."""
    config, start, _ = scenario
    start = start.replace(second=0, microsecond=0)
    # Start a few days before the clock change, so the walk crosses it.
    switch = next(
        s
        for z, s in DST_SWITCHES
        if z == config["timezone"] and abs(s - start) < timedelta(days=90)
    )
    start = min(start, switch - timedelta(days=1))
    calendar = BusinessCalendar(CalendarConfig.model_validate(config))
    walk = Oracle(config).open_minutes(start, start + 21 * 24 * 60 * MINUTE)
    if sum(walk) < amount:
        return  # closed most of these three weeks; the window walk above covers it
    seen = 0
    for index, is_open in enumerate(walk):
        seen += is_open
        if seen == amount:
            expected = start + (index + 1) * MINUTE
            break
    assert calendar.add_business_minutes(start, amount) == expected


def test_a_calendar_closed_for_weeks_is_jumped_to_its_reopening() -> None:
    """Berlin office, Mon-Fri 09:00-17:00, closed 2024-03-04 .. 2024-04-14 (six weeks,
    across the change to summer time on 31 March). 90 minutes from Friday 2024-03-01
    16:00 CET: 60 minutes that day, 30 on Monday 2024-04-15 from 09:00 CEST (07:00 UTC)."""
    calendar = BusinessCalendar(
        CalendarConfig.model_validate(
            {
                "timezone": "Europe/Berlin",
                "hours": {d: "09:00-17:00" for d in ("mon", "tue", "wed", "thu", "fri")},
                "exceptions": [{"start": "2024-03-04", "end": "2024-04-14", "kind": "closed"}],
            }
        )
    )
    friday = datetime(2024, 3, 1, 15, tzinfo=UTC)  # 16:00 CET
    assert calendar.add_business_minutes(friday, 90) == datetime(2024, 4, 15, 7, 30, tzinfo=UTC)
    # 5 business days (40 h) from the same Friday: 1 h that day, then 39 h = four full
    # days (Mon 15 .. Thu 18 April) and 7 h of Friday 19 April: 14:00 UTC (16:00 CEST).
    assert calendar.add_business_minutes(friday, 40 * 60) == datetime(2024, 4, 19, 14, tzinfo=UTC)
    # Closed six weeks in a row is more than a bound of 30 closed days.
    strict = BusinessCalendar(calendar.config, max_closed_days=30)
    with pytest.raises(CalendarClosedError):
        strict.add_business_minutes(friday, 90)


def test_closed_days_in_a_row_count_from_the_day_before_the_start() -> None:
    """Open on Mondays only (UTC). From Friday 2024-06-07 12:00 the days before the
    next opening are Thursday (the day before the start's, where counting begins),
    Friday (nothing open after noon), Saturday and Sunday: four closed in a row, one
    more than a bound of three, although only Sunday lies beyond the start's next day."""
    config = CalendarConfig.model_validate({"timezone": "UTC", "hours": {"mon": "24h"}})
    friday = datetime(2024, 6, 7, 12, tzinfo=UTC)
    with pytest.raises(CalendarClosedError):
        BusinessCalendar(config, max_closed_days=3).add_business_minutes(friday, 30)
    patient = BusinessCalendar(config, max_closed_days=4)
    assert patient.add_business_minutes(friday, 30) == datetime(2024, 6, 10, 0, 30, tzinfo=UTC)
