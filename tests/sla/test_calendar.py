"""Business-calendar maths: seed-style schedules, DST, year ends, config errors.

Expected instants are worked out by hand in the comments, never by running
the code under test.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from maildesk.sla.calendar import (
    BusinessCalendar,
    CalendarClosedError,
    CalendarConfig,
    CalendarTime,
    NaiveDatetimeError,
)

BERLIN = ZoneInfo("Europe/Berlin")
MOSCOW = ZoneInfo("Europe/Moscow")
NEW_YORK = ZoneInfo("America/New_York")
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri")


def calendar_from(**config: Any) -> BusinessCalendar:
    """A calendar from config data, as it would come from the TOML file."""
    return BusinessCalendar(CalendarConfig.model_validate(config))


def office(zone: str, hours: Any = "10:00-19:00", **extra: Any) -> BusinessCalendar:
    """A Mon–Fri calendar with the same hours every weekday."""
    return calendar_from(timezone=zone, hours={d: hours for d in WEEKDAYS}, **extra)


GERMAN_OFFICE = office("Europe/Berlin", holidays={"country": "DE"})
RUSSIAN_OFFICE = office("Europe/Moscow", holidays={"country": "RU"})
# Russia 2024: Saturday 27 April worked instead of Monday 29/Tuesday 30 April.
TRANSFER_OFFICE = office(
    "Europe/Moscow",
    holidays={"dates": ["2024-05-01"]},
    exceptions=[
        {"start": "2024-04-27", "kind": "working_day", "hours": "10:00-19:00"},
        {"start": "2024-04-29", "end": "2024-04-30", "kind": "closed"},
        {"start": "2024-12-31", "kind": "changed_hours", "hours": ["10:00-15:00"]},
    ],
)
ALWAYS_BERLIN = BusinessCalendar.always_open("Europe/Berlin")


def berlin(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=BERLIN)


def moscow(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=MOSCOW)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


@pytest.mark.parametrize(
    ("calendar", "start", "minutes", "due"),
    [
        # Fri 18:30 + 4h: 30 min Friday, 210 min Monday from 10:00 -> 13:30.
        (GERMAN_OFFICE, berlin(2024, 6, 7, 18, 30), 240, berlin(2024, 6, 10, 13, 30)),
        # Wed 2 Oct 18:00 + 4h: 60 min Wed; Thu 3 Oct is German Unity Day; Fri 10:00 + 180.
        (GERMAN_OFFICE, berlin(2024, 10, 2, 18), 240, berlin(2024, 10, 4, 13)),
        # Year end: Tue 31 Dec 18:00 + 4h: 60 min; 1 Jan holiday; Thu 2 Jan 10:00 + 180.
        (GERMAN_OFFICE, berlin(2024, 12, 31, 18), 240, berlin(2025, 1, 2, 13)),
        # Christmas Eve is a normal day in DE, 25/26 Dec are not: 60 min + Fri 10:00 + 60.
        (GERMAN_OFFICE, berlin(2024, 12, 24, 18), 120, berlin(2024, 12, 27, 11)),
        # Exactly one full day lands on the close, not on the next morning.
        (GERMAN_OFFICE, berlin(2024, 6, 10, 10), 540, berlin(2024, 6, 10, 19)),
        # Started before opening: counting starts at 10:00.
        (GERMAN_OFFICE, berlin(2024, 6, 10, 7, 15), 90, berlin(2024, 6, 10, 11, 30)),
        # Russian New Year holidays run 1-8 Jan 2024: Fri 29 Dec 60 min, Tue 9 Jan 10:00 + 420.
        (RUSSIAN_OFFICE, moscow(2023, 12, 29, 18), 480, moscow(2024, 1, 9, 17)),
        # Transferred Saturday: Fri 60 min, then Sat 27 Apr 10:00 + 180.
        (TRANSFER_OFFICE, moscow(2024, 4, 26, 18), 240, moscow(2024, 4, 27, 13)),
        # From that Saturday: 120 min; Sun, Mon/Tue (closed), Wed 1 May (holiday) -> Thu 12:00.
        (TRANSFER_OFFICE, moscow(2024, 4, 27, 17), 240, moscow(2024, 5, 2, 12)),
        # Changed hours on 31 Dec (10-15): 14:00 + 2h = 60 that day, Wed 1 Jan 2025 10:00 + 60.
        (TRANSFER_OFFICE, moscow(2024, 12, 31, 14), 120, moscow(2025, 1, 1, 11)),
        # 24/7: plain clock.
        (ALWAYS_BERLIN, berlin(2024, 6, 7, 18, 30), 240, berlin(2024, 6, 7, 22, 30)),
        # 24/7 over the spring switch: 22:00 UTC + 4h = 02:00 UTC = 04:00 CEST.
        (ALWAYS_BERLIN, berlin(2024, 3, 30, 23), 240, berlin(2024, 3, 31, 4)),
        # 24/7 over the autumn switch: 21:00 UTC + 4h = 01:00 UTC (02:00 CET, second time).
        (ALWAYS_BERLIN, berlin(2024, 10, 26, 23), 240, utc(2024, 10, 27, 1)),
        # 10,000 business hours = 1111 full 9-hour days + 60 min. Day 1111 is
        # Mon 2024-01-01 + 222 weeks = Mon 2028-04-03; then Tue 10:00 + 60.
        (office("UTC"), utc(2024, 1, 1, 10), 600_000, utc(2028, 4, 4, 11)),
    ],
)
def test_add_business_minutes_table(
    calendar: BusinessCalendar, start: datetime, minutes: float, due: datetime
) -> None:
    assert calendar.add_business_minutes(start, minutes) == due


@pytest.mark.parametrize(
    ("calendar", "a", "b", "minutes"),
    [
        # Fri 20 Dec 12:00 .. Fri 27 Dec 12:00: 420 + 540 (Mon) + 540 (Tue 24th) + 0 + 0 + 120.
        (GERMAN_OFFICE, berlin(2024, 12, 20, 12), berlin(2024, 12, 27, 12), 1620),
        # Whole weekend: nothing.
        (GERMAN_OFFICE, berlin(2024, 6, 8, 0), berlin(2024, 6, 10, 10), 0),
        # Reversed order gives the negative.
        (GERMAN_OFFICE, berlin(2024, 6, 10, 12), berlin(2024, 6, 10, 11), -60),
        # The transferred Saturday counts 9 hours, the closed Monday none.
        (TRANSFER_OFFICE, moscow(2024, 4, 27, 0), moscow(2024, 4, 30, 0), 540),
        # 24/7 Berlin: the spring day has 23 hours, the autumn day 25.
        (ALWAYS_BERLIN, berlin(2024, 3, 31), berlin(2024, 4, 1), 23 * 60),
        (ALWAYS_BERLIN, berlin(2024, 10, 27), berlin(2024, 10, 28), 25 * 60),
        # Instants in different zones are the same instants.
        (GERMAN_OFFICE, utc(2024, 6, 10, 8), moscow(2024, 6, 10, 12), 60),
    ],
)
def test_business_minutes_between_table(
    calendar: BusinessCalendar, a: datetime, b: datetime, minutes: float
) -> None:
    assert calendar.business_minutes_between(a, b) == pytest.approx(minutes)


def sunday_night(zone: str, hours: str | list[str]) -> BusinessCalendar:
    return calendar_from(timezone=zone, hours={"sun": hours})


@pytest.mark.parametrize(
    ("zone", "hours", "day", "minutes"),
    [
        # Berlin springs 02:00 CET -> 03:00 CEST on Sun 31 Mar 2024.
        ("Europe/Berlin", "02:00-04:00", (2024, 3, 31), 60),
        ("Europe/Berlin", "01:00-04:00", (2024, 3, 31), 120),
        ("Europe/Berlin", "02:30-05:00", (2024, 3, 31), 120),  # starts when the clock jumps
        ("Europe/Berlin", "02:00-03:00", (2024, 3, 31), 0),  # the hour that does not exist
        # Berlin falls back 03:00 CEST -> 02:00 CET on Sun 27 Oct 2024.
        ("Europe/Berlin", "02:00-04:00", (2024, 10, 27), 180),
        ("Europe/Berlin", "01:00-04:00", (2024, 10, 27), 240),
        ("Europe/Berlin", "24h", (2024, 10, 27), 25 * 60),
        # New York springs 02:00 EST -> 03:00 EDT on Sun 10 Mar 2024,
        # falls back 02:00 EDT -> 01:00 EST on Sun 3 Nov 2024.
        ("America/New_York", "01:00-03:00", (2024, 3, 10), 60),
        ("America/New_York", "01:00-03:00", (2024, 11, 3), 180),
        ("America/New_York", "24h", (2024, 3, 10), 23 * 60),
        ("America/New_York", ["00:00-01:30", "02:30-06:00"], (2024, 3, 10), 90 + 180),
        # An ordinary Sunday for comparison.
        ("America/New_York", "01:00-03:00", (2024, 3, 17), 120),
    ],
)
def test_dst_days_are_wall_clock_hours(
    zone: str, hours: str | list[str], day: tuple[int, int, int], minutes: float
) -> None:
    calendar = sunday_night(zone, hours)
    tz = ZoneInfo(zone)
    start = datetime(*day, tzinfo=tz)
    end = start.replace(tzinfo=None) + timedelta(days=1)
    assert calendar.business_minutes_between(start, end.replace(tzinfo=tz)) == pytest.approx(
        minutes
    )


def test_add_across_spring_gap_in_open_window() -> None:
    calendar = sunday_night("Europe/Berlin", "01:00-04:00")
    # 01:00 CET (00:00 UTC) + 60 reaches the jump (01:00 UTC = 03:00 CEST), +30 more.
    assert calendar.add_business_minutes(berlin(2024, 3, 31, 1), 90) == utc(2024, 3, 31, 1, 30)


def test_add_across_autumn_repeat_in_open_window() -> None:
    calendar = sunday_night("America/New_York", "01:00-03:00")
    # 01:00 EDT = 05:00 UTC; window ends 03:00 EST = 08:00 UTC; +150 min = 07:30 UTC.
    start = datetime(2024, 11, 3, 1, tzinfo=NEW_YORK)
    assert calendar.add_business_minutes(start, 150) == utc(2024, 11, 3, 7, 30)


def test_open_and_next_open_around_the_spring_gap() -> None:
    calendar = sunday_night("Europe/Berlin", "02:30-05:00")
    before = berlin(2024, 3, 31, 1, 59)
    assert not calendar.is_open(before)
    assert calendar.next_open(before) == utc(2024, 3, 31, 1)  # 03:00 CEST
    assert calendar.is_open(berlin(2024, 3, 31, 3, 0))
    assert not calendar.is_open(berlin(2024, 3, 31, 5, 0))


def test_open_and_next_open_office() -> None:
    assert GERMAN_OFFICE.is_open(berlin(2024, 6, 10, 10))
    assert not GERMAN_OFFICE.is_open(berlin(2024, 6, 10, 19))  # closing time is closed
    assert not GERMAN_OFFICE.is_open(berlin(2024, 10, 3, 12))  # holiday
    assert GERMAN_OFFICE.next_open(berlin(2024, 10, 2, 19, 5)) == berlin(2024, 10, 4, 10)
    open_instant = berlin(2024, 6, 10, 12, 34)
    assert GERMAN_OFFICE.next_open(open_instant) == open_instant
    assert TRANSFER_OFFICE.is_open(moscow(2024, 4, 27, 12))
    assert not TRANSFER_OFFICE.is_open(moscow(2024, 4, 29, 12))


def test_adding_zero_keeps_the_instant_even_when_closed() -> None:
    saturday = berlin(2024, 6, 8, 12)
    assert GERMAN_OFFICE.add_business_minutes(saturday, 0) == saturday


def test_touching_intervals_form_one_opening() -> None:
    calendar = office("UTC", ["12:00-14:00", "10:00-12:00"])
    assert calendar.is_open(utc(2024, 6, 10, 12))
    assert calendar.business_minutes_between(utc(2024, 6, 10), utc(2024, 6, 11)) == 240


def test_calendar_that_never_opens_raises_instead_of_looping() -> None:
    closed = calendar_from(hours={})
    with pytest.raises(CalendarClosedError):
        closed.add_business_minutes(utc(2024, 1, 1), 1)
    with pytest.raises(CalendarClosedError):
        closed.next_open(utc(2024, 1, 1))
    assert closed.business_minutes_between(utc(2024, 1, 1), utc(2030, 1, 1)) == 0


def test_long_closure_is_bounded_but_configurable() -> None:
    config = CalendarConfig.model_validate(
        {
            "hours": {d: "10:00-19:00" for d in WEEKDAYS},
            "exceptions": [{"start": "2024-01-01", "end": "2028-12-31", "kind": "closed"}],
        }
    )
    with pytest.raises(CalendarClosedError):
        BusinessCalendar(config).add_business_minutes(utc(2024, 1, 1), 60)
    # 2029-01-01 is a Monday (1827 days = 261 weeks after Mon 2024-01-01).
    patient = BusinessCalendar(config, max_closed_days=2000)
    assert patient.add_business_minutes(utc(2024, 1, 1), 60) == utc(2029, 1, 1, 11)


def test_naive_datetimes_are_rejected() -> None:
    naive = datetime(2024, 6, 10, 12)
    with pytest.raises(NaiveDatetimeError):
        GERMAN_OFFICE.add_business_minutes(naive, 10)
    with pytest.raises(NaiveDatetimeError):
        GERMAN_OFFICE.business_minutes_between(naive, berlin(2024, 6, 11))
    with pytest.raises(NaiveDatetimeError):
        GERMAN_OFFICE.is_open(naive)
    with pytest.raises(NaiveDatetimeError):
        CalendarTime().add_business_minutes(naive, 10)


@pytest.mark.parametrize("minutes", [-1.0, float("nan"), float("inf")])
def test_bad_minute_counts_are_rejected(minutes: float) -> None:
    with pytest.raises(ValueError, match="finite number >= 0"):
        GERMAN_OFFICE.add_business_minutes(berlin(2024, 6, 10, 12), minutes)


def test_calendar_time_counts_real_elapsed_time_across_dst() -> None:
    plain = CalendarTime()
    assert plain.business_minutes_between(berlin(2024, 3, 31), berlin(2024, 4, 1)) == 23 * 60
    assert plain.add_business_minutes(berlin(2024, 3, 30, 23), 240) == berlin(2024, 3, 31, 4)
    assert plain.is_open(berlin(2024, 3, 31, 3))


@pytest.mark.parametrize(
    ("config", "where", "words"),
    [
        ({"hours": {"mon": ["10:00-12:00", "11:00-13:00"]}}, ("hours", "mon"), "overlap"),
        ({"hours": {"mon": "19:00-10:00"}}, ("hours", "mon"), "ends before"),
        ({"hours": {"mon": "10:00-25:00"}}, ("hours", "mon"), "impossible"),
        ({"hours": {"mon": "ten to seven"}}, ("hours", "mon"), "not an interval"),
        ({"hours": {"funday": "24h"}}, ("hours", "funday"), "Extra inputs"),
        ({"hours": {}, "timezone": "Mars/Olympus"}, ("timezone",), "unknown time zone"),
        ({"hours": {}, "holidays": {"country": "XX"}}, ("holidays", "country"), "XX"),
        ({"hours": {}, "holidays": {"country": "DE", "subdivision": "ZZ"}}, ("holidays",), "ZZ"),
        ({"hours": {}, "holidays": {"subdivision": "BY"}}, ("holidays",), "needs a country"),
        (
            {
                "hours": {},
                "exceptions": [{"start": "2024-05-02", "end": "2024-05-01", "kind": "closed"}],
            },
            ("exceptions", 0),
            "before start",
        ),
        (
            {"hours": {}, "exceptions": [{"start": "2024-05-04", "kind": "working_day"}]},
            ("exceptions", 0),
            "needs opening hours",
        ),
        (
            {
                "hours": {},
                "exceptions": [
                    {"start": "2024-05-01", "end": "2024-05-03", "kind": "closed"},
                    {"start": "2024-05-03", "kind": "changed_hours", "hours": "10:00-12:00"},
                ],
            },
            ("exceptions",),
            "overlap",
        ),
        ({"hours": {}, "exceptions": [{"start": "2024-05-01", "kind": "holiday"}]}, None, "kind"),
    ],
)
def test_config_errors_name_the_key(
    config: dict[str, Any], where: tuple[str | int, ...] | None, words: str
) -> None:
    with pytest.raises(ValidationError) as info:
        CalendarConfig.model_validate(config)
    error = info.value.errors()[0]
    if where is not None:
        assert error["loc"][: len(where)] == where
    assert words in str(info.value)


# -- properties ---------------------------------------------------------------

PROPERTY_CALENDARS = {
    "german office": GERMAN_OFFICE,
    "transfer office": TRANSFER_OFFICE,
    "24/7 Berlin": ALWAYS_BERLIN,
    "Berlin nights across 02-03": calendar_from(
        timezone="Europe/Berlin",
        hours={d: ["00:30-03:30", "20:00-22:00"] for d in (*WEEKDAYS, "sat", "sun")},
    ),
    "New York split day + Sunday night": calendar_from(
        timezone="America/New_York",
        hours={**{d: ["09:00-12:00", "13:00-17:00"] for d in WEEKDAYS}, "sun": "01:00-03:30"},
    ),
}
DST_SWITCHES = [
    utc(2024, 3, 31, 1),  # Berlin spring
    utc(2024, 10, 27, 1),  # Berlin autumn
    utc(2024, 3, 10, 7),  # New York spring
    utc(2024, 11, 3, 6),  # New York autumn
    utc(2024, 12, 31, 23),  # year end
]

calendars = st.sampled_from(sorted(PROPERTY_CALENDARS)).map(PROPERTY_CALENDARS.__getitem__)
instants = st.one_of(
    st.builds(
        lambda base, seconds: base + timedelta(seconds=seconds),
        st.sampled_from(DST_SWITCHES),
        st.integers(min_value=-4 * 86400, max_value=4 * 86400),
    ),
    st.datetimes(
        min_value=datetime(2023, 1, 1), max_value=datetime(2026, 12, 31), timezones=st.just(UTC)
    ),
)
minute_counts = st.floats(min_value=0, max_value=20_000, allow_nan=False, allow_infinity=False)
PROPERTY_SETTINGS = settings(max_examples=150, deadline=None)


@PROPERTY_SETTINGS
@given(calendar=calendars, start=instants, minutes=minute_counts)
def test_adding_then_measuring_returns_the_minutes(
    calendar: BusinessCalendar, start: datetime, minutes: float
) -> None:
    end = calendar.add_business_minutes(start, minutes)
    assert end >= start
    assert calendar.business_minutes_between(start, end) == pytest.approx(minutes, abs=1e-6)


@PROPERTY_SETTINGS
@given(calendar=calendars, start=instants, first=minute_counts, second=minute_counts)
def test_adding_is_monotonic(
    calendar: BusinessCalendar, start: datetime, first: float, second: float
) -> None:
    low, high = sorted((first, second))
    assert calendar.add_business_minutes(start, low) <= calendar.add_business_minutes(start, high)


@PROPERTY_SETTINGS
@given(
    calendar=calendars,
    start=instants,
    first=st.integers(min_value=1, max_value=10_000),
    second=st.integers(min_value=0, max_value=10_000),
)
def test_adding_in_two_steps_equals_adding_once(
    calendar: BusinessCalendar, start: datetime, first: int, second: int
) -> None:
    via = calendar.add_business_minutes(start, first)
    assert calendar.add_business_minutes(via, second) == calendar.add_business_minutes(
        start, first + second
    )


@PROPERTY_SETTINGS
@given(calendar=calendars, a=instants, b=instants, c=instants)
def test_measuring_is_additive_and_bounded_by_real_time(
    calendar: BusinessCalendar, a: datetime, b: datetime, c: datetime
) -> None:
    ab = calendar.business_minutes_between(a, b)
    bc = calendar.business_minutes_between(b, c)
    assert ab + bc == pytest.approx(calendar.business_minutes_between(a, c), abs=1e-6)
    assert calendar.business_minutes_between(b, a) == pytest.approx(-ab)
    real = (b - a) / timedelta(minutes=1)
    assert abs(ab) <= abs(real) + 1e-6


@PROPERTY_SETTINGS
@given(a=instants, b=instants)
def test_always_open_calendar_matches_real_elapsed_time(a: datetime, b: datetime) -> None:
    plain = CalendarTime()
    assert ALWAYS_BERLIN.business_time_between(a, b) == plain.business_time_between(a, b)


@PROPERTY_SETTINGS
@given(calendar=calendars, at=instants)
def test_next_open_is_open_and_nothing_opens_before_it(
    calendar: BusinessCalendar, at: datetime
) -> None:
    first = calendar.next_open(at)
    assert first >= at
    assert calendar.is_open(first)
    assert calendar.business_minutes_between(at, first) == 0
