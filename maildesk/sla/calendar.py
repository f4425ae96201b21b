"""Business calendars: opening hours in a time zone, holidays and exceptions.

Business hours are local wall-clock hours: a ``02:00-04:00`` window on the
night the clocks go forward lasts one hour, on the night they go back three.
A window boundary that falls into a DST gap snaps to the instant the clock
jumps; one that falls into a repeated hour takes its first occurrence.

All arithmetic runs on UTC instants, one open window at a time (never minute
by minute). Inputs must be aware datetimes (any zone); results are UTC, since
an instant in a repeated local hour (fold=1) never compares equal to an
instant in another zone (PEP 495). Precedence for a day: an exception
covering the date, else a holiday (closed), else the weekly hours of its
weekday.
"""

from __future__ import annotations

import bisect
import enum
import functools
import itertools
import math
import re
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated, Any, NamedTuple, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import holidays
from pydantic import BaseModel, ConfigDict, PlainValidator, field_validator, model_validator

MINUTES_PER_DAY = 24 * 60
DEFAULT_MAX_CLOSED_DAYS = 3 * 366
_INTERVAL_RE = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")
_WINDOW_CACHE_DAYS = 4096
# Whole days' open time is summed in runs grown by at least this many days at a time.
_DAY_TOTALS_GROWTH = 366


class CalendarClosedError(ValueError):
    """The calendar has no open time within the search bound."""


class NaiveDatetimeError(ValueError):
    """A datetime without a time zone was given where an instant is needed."""


class DaySpecial(enum.StrEnum):
    """The two words allowed instead of a list of intervals."""

    CLOSED = "closed"
    ALL_DAY = "24h"


class OpeningInterval(NamedTuple):
    """Local opening hours of one day, in minutes after midnight (end may be 1440)."""

    start_minute: int
    end_minute: int

    def __str__(self) -> str:
        return f"{_fmt_minute(self.start_minute)}-{_fmt_minute(self.end_minute)}"


def _fmt_minute(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


def _parse_interval(text: str) -> OpeningInterval:
    match = _INTERVAL_RE.match(text)
    if not match:
        raise ValueError(f"{text!r} is not an interval like '10:00-19:00'")
    sh, sm, eh, em = (int(g) for g in match.groups())
    if sh > 23 or sm > 59 or em > 59 or eh > 24 or (eh == 24 and em != 0):
        raise ValueError(f"{text!r} has an impossible time of day")
    start, end = sh * 60 + sm, eh * 60 + em
    if end < start:
        # A night shift: hours belong to one local day, so it is two intervals on two
        # days (a holiday on the second day then closes its morning part, as it should).
        raise ValueError(
            f"interval {text!r} ends before it starts; a night shift across midnight is "
            f"'{_fmt_minute(start)}-24:00' on this day and '00:00-{_fmt_minute(end)}' on the next"
        )
    if end == start:
        raise ValueError(f"interval {text!r} ends when it starts")
    return OpeningInterval(start, end)


def parse_day_hours(value: Any) -> tuple[OpeningInterval, ...]:
    """Parse ``"closed"``, ``"24h"``, one ``"HH:MM-HH:MM"`` or a list of them.

    Intervals are sorted; touching ones are merged, overlapping ones rejected.
    """
    if isinstance(value, tuple) and all(isinstance(v, OpeningInterval) for v in value):
        return value
    if isinstance(value, str):
        word = value.strip().lower()
        if word == DaySpecial.CLOSED:
            return ()
        if word == DaySpecial.ALL_DAY:
            return (OpeningInterval(0, MINUTES_PER_DAY),)
        value = [value]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ValueError("expected 'closed', '24h' or a list of 'HH:MM-HH:MM' intervals")
    parsed = sorted(_parse_interval(v) for v in value)
    merged: list[OpeningInterval] = []
    for interval in parsed:
        if merged and interval.start_minute < merged[-1].end_minute:
            raise ValueError(f"intervals {merged[-1]} and {interval} overlap")
        if merged and interval.start_minute == merged[-1].end_minute:
            merged[-1] = OpeningInterval(merged[-1].start_minute, interval.end_minute)
        else:
            merged.append(interval)
    return tuple(merged)


DayHours = Annotated[tuple[OpeningInterval, ...], PlainValidator(parse_day_hours)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WeeklyHours(_Model):
    """Opening hours per weekday; a weekday left out is closed."""

    mon: DayHours = ()
    tue: DayHours = ()
    wed: DayHours = ()
    thu: DayHours = ()
    fri: DayHours = ()
    sat: DayHours = ()
    sun: DayHours = ()

    def for_weekday(self, weekday: int) -> tuple[OpeningInterval, ...]:
        """Hours for ``date.weekday()`` (0 = Monday)."""
        days = (self.mon, self.tue, self.wed, self.thu, self.fri, self.sat, self.sun)
        return days[weekday]


class HolidaySettings(_Model):
    """Explicit holiday dates and/or public holidays from the ``holidays`` library."""

    dates: tuple[date, ...] = ()
    country: str | None = None
    subdivision: str | None = None

    @field_validator("country")
    @classmethod
    def _known_country(cls, value: str | None) -> str | None:
        if value is not None and value not in holidays.list_supported_countries():
            raise ValueError(f"unknown holiday country {value!r} (use an ISO 3166-1 code)")
        return value

    @model_validator(mode="after")
    def _known_subdivision(self) -> HolidaySettings:
        if self.subdivision is None:
            return self
        if self.country is None:
            raise ValueError("subdivision needs a country")
        try:
            holidays.country_holidays(self.country, subdiv=self.subdivision)
        except NotImplementedError as exc:
            raise ValueError(f"unknown subdivision {self.subdivision!r} of {self.country}") from exc
        return self


class ExceptionKind(enum.StrEnum):
    """What an exception does to the days it covers."""

    CLOSED = "closed"  # closed although it would be open
    WORKING_DAY = "working_day"  # open with the given hours (e.g. a transferred Saturday)
    CHANGED_HOURS = "changed_hours"  # open, but with different hours


class CalendarException(_Model):
    """Overrides weekly hours and holidays for ``start`` .. ``end`` (inclusive)."""

    start: date
    end: date | None = None
    kind: ExceptionKind
    hours: DayHours | None = None
    note: str = ""

    @property
    def last_day(self) -> date:
        return self.end if self.end is not None else self.start

    @model_validator(mode="after")
    def _consistent(self) -> CalendarException:
        if self.last_day < self.start:
            raise ValueError(f"end {self.last_day} is before start {self.start}")
        if self.kind is ExceptionKind.CLOSED and self.hours:
            raise ValueError("a 'closed' exception takes no hours")
        if self.kind is not ExceptionKind.CLOSED and not self.hours:
            raise ValueError(f"a '{self.kind}' exception needs opening hours")
        return self

    def hours_for_day(self) -> tuple[OpeningInterval, ...]:
        return self.hours or ()


class CalendarConfig(_Model):
    """One business calendar as written in the config file."""

    timezone: str = "UTC"
    hours: WeeklyHours
    holidays: HolidaySettings = HolidaySettings()
    exceptions: tuple[CalendarException, ...] = ()

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r} (use an IANA name)") from exc
        return value

    @field_validator("exceptions")
    @classmethod
    def _no_overlap(cls, value: tuple[CalendarException, ...]) -> tuple[CalendarException, ...]:
        ordered = sorted(value, key=lambda e: e.start)
        for before, after in itertools.pairwise(ordered):
            if after.start <= before.last_day:
                raise ValueError(
                    f"exceptions {before.start}..{before.last_day} and "
                    f"{after.start}..{after.last_day} overlap"
                )
        return value


_ALL_WEEK = WeeklyHours.model_validate({d: "24h" for d in WeeklyHours.model_fields})

Window = tuple[datetime, datetime]
_DAY = timedelta(days=1)


class TimeScale(Protocol):
    """How a target's clock runs: business hours of a calendar, or plain elapsed time."""

    def add_business_time(self, start: datetime, amount: timedelta) -> datetime: ...
    def business_time_between(self, a: datetime, b: datetime) -> timedelta: ...
    def add_business_minutes(self, start: datetime, minutes: float) -> datetime: ...
    def business_minutes_between(self, a: datetime, b: datetime) -> float: ...
    def is_open(self, at: datetime) -> bool: ...
    def next_open(self, at: datetime) -> datetime: ...


def _utc(value: datetime, name: str = "datetime") -> datetime:
    if value.tzinfo is UTC:
        return value
    if value.tzinfo is None or value.utcoffset() is None:
        raise NaiveDatetimeError(f"{name} must be timezone-aware, got naive {value.isoformat()}")
    return value.astimezone(UTC)


def _minutes_to_delta(minutes: float) -> timedelta:
    if not math.isfinite(minutes) or minutes < 0:
        raise ValueError(f"business minutes must be a finite number >= 0, got {minutes!r}")
    return timedelta(minutes=minutes)


def _delta_to_minutes(amount: timedelta) -> float:
    return amount / timedelta(minutes=1)


def _wall_to_utc(day: date, minute: int, zone: ZoneInfo) -> datetime:
    """The instant the local clock shows ``minute`` on ``day`` (gap: when it jumps)."""
    if minute >= MINUTES_PER_DAY:
        day, minute = day + timedelta(days=1), minute - MINUTES_PER_DAY
    wall = datetime.combine(day, time(minute // 60, minute % 60))
    later = wall.replace(tzinfo=zone).astimezone(UTC)  # fold=0: first occurrence
    if later.astimezone(zone).replace(tzinfo=None) == wall:
        return later
    # ``wall`` does not exist (clocks jumped forward over it): find the jump,
    # which lies between the two readings of ``wall`` (whole seconds in tzdata).
    lo = int(wall.replace(tzinfo=zone, fold=1).astimezone(UTC).timestamp())
    hi = int(later.timestamp())
    lo_offset = datetime.fromtimestamp(lo, zone).utcoffset()
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid, zone).utcoffset() == lo_offset:
            lo = mid
        else:
            hi = mid
    return datetime.fromtimestamp(hi, UTC)


class _DayTotals(NamedTuple):
    """Running open time of consecutive local days, and where they are closed.

    ``sums[i]`` is the open time of the days from ordinal ``base`` up to, not
    including, ``base + i``; ``closed`` holds the runs of days without open
    time as ``(first, last)`` ordinals, in order.
    """

    base: int
    sums: tuple[timedelta, ...]
    closed: tuple[tuple[int, int], ...]

    @property
    def end(self) -> int:
        """The last day ordinal covered."""
        return self.base + len(self.sums) - 2

    def covers(self, lo: int, hi: int) -> bool:
        """Whether ``sums`` has the entries for ordinals ``lo`` and ``hi``."""
        return bool(self.sums) and self.base <= lo and hi < self.base + len(self.sums)

    def closed_runs_between(self, lo: int, hi: int) -> Iterator[tuple[int, int]]:
        """The closed runs with a day in ``lo``..``hi``."""
        index = bisect.bisect_left(self.closed, (lo, lo))
        if index and self.closed[index - 1][1] >= lo:
            index -= 1
        for run in itertools.islice(self.closed, index, None):
            if run[0] > hi:
                return
            yield run


def _closed_runs(base: int, sums: list[timedelta]) -> tuple[tuple[int, int], ...]:
    runs: list[tuple[int, int]] = []
    for index in range(len(sums) - 1):
        if sums[index + 1] == sums[index]:
            day = base + index
            if runs and runs[-1][1] == day - 1:
                runs[-1] = (runs[-1][0], day)
            else:
                runs.append((day, day))
    return tuple(runs)


class BusinessCalendar:
    """Business-time arithmetic over a :class:`CalendarConfig`.

    ``max_closed_days`` bounds the search for the next open window, so a
    calendar that never opens raises :class:`CalendarClosedError` instead of
    looping forever.
    """

    def __init__(
        self, config: CalendarConfig, *, max_closed_days: int = DEFAULT_MAX_CLOSED_DAYS
    ) -> None:
        self.config = config
        self.zone = ZoneInfo(config.timezone)
        self.max_closed_days = max_closed_days
        self._holiday_dates = frozenset(config.holidays.dates)
        self._public_holidays: holidays.HolidayBase | None = None
        if config.holidays.country is not None:
            self._public_holidays = holidays.country_holidays(
                config.holidays.country, subdiv=config.holidays.subdivision
            )
        self._exceptions = tuple(sorted(config.exceptions, key=lambda e: e.start))
        self._windows_on = functools.lru_cache(maxsize=_WINDOW_CACHE_DAYS)(self._compute_windows)
        # Replaced whole, never changed in place, so a reader in another thread sees one.
        self._day_totals = _DayTotals(0, (), ())

    @classmethod
    def always_open(cls, timezone: str = "UTC") -> BusinessCalendar:
        """A 24/7 calendar: every local day open from midnight to midnight."""
        return cls(CalendarConfig(timezone=timezone, hours=_ALL_WEEK))

    # -- days ---------------------------------------------------------------

    def is_holiday(self, day: date) -> bool:
        if day in self._holiday_dates:
            return True
        return self._public_holidays is not None and day in self._public_holidays

    def hours_on(self, day: date) -> tuple[OpeningInterval, ...]:
        """Local opening hours of ``day`` after exceptions and holidays."""
        for exception in self._exceptions:
            if exception.start > day:
                break
            if day <= exception.last_day:
                return exception.hours_for_day()
        if self.is_holiday(day):
            return ()
        return self.config.hours.for_weekday(day.weekday())

    def windows_on(self, day: date) -> tuple[Window, ...]:
        """Open windows of local ``day`` as ``(start, end)`` UTC instants."""
        return self._windows_on(day)

    def _compute_windows(self, day: date) -> tuple[Window, ...]:
        windows = []
        for interval in self.hours_on(day):
            start = _wall_to_utc(day, interval.start_minute, self.zone)
            end = _wall_to_utc(day, interval.end_minute, self.zone)
            if end > start:
                windows.append((start, end))
        return tuple(windows)

    def _local_day(self, instant: datetime) -> date:
        return instant.astimezone(self.zone).date()

    def _windows_from(self, instant: datetime) -> Iterator[Window]:
        """Open windows ending after ``instant``, clipped to start no earlier than it.

        Raises CalendarClosedError after ``max_closed_days`` days without any
        open time.
        """
        day = self._local_day(instant) - timedelta(days=1)
        cursor = instant
        closed_days = 0
        while True:
            found = False
            for start, end in self.windows_on(day):
                start = max(start, cursor)
                if end <= start:
                    continue
                found = True
                cursor = end
                yield start, end
            closed_days = 0 if found else closed_days + 1
            self._check_closed_days(closed_days, instant, day)
            day += timedelta(days=1)

    # -- instants -----------------------------------------------------------

    def is_open(self, at: datetime) -> bool:
        instant = _utc(at, "at")
        day = self._local_day(instant)
        return any(
            start <= instant < end
            for d in (day - timedelta(days=1), day, day + timedelta(days=1))
            for start, end in self.windows_on(d)
        )

    def next_open(self, at: datetime) -> datetime:
        """``at`` itself when open, else the start of the next open window."""
        start, _ = next(self._windows_from(_utc(at, "at")))
        return start

    def add_business_time(self, start: datetime, amount: timedelta) -> datetime:
        """The earliest instant at which ``amount`` of open time has passed since ``start``.

        Adding zero returns the instant ``start`` (even when closed); a positive
        amount that exactly uses up a window ends at that window's close.
        """
        cursor = since = _utc(start, "start")
        if amount < timedelta(0):
            raise ValueError(f"cannot add negative business time {amount}")
        if amount == timedelta(0):
            return cursor
        # The days around ``start``'s, window by window from ``start``; as in
        # business_time_between, a day two or more after it lies wholly after it.
        first = self._local_day(cursor)
        remaining, closed_days = amount, 0
        for day in (first - _DAY, first, first + _DAY):
            found = False
            for window_start, window_end in self.windows_on(day):
                window_start = max(window_start, cursor)
                if window_end <= window_start:
                    continue
                found = True
                if remaining <= window_end - window_start:
                    return window_start + remaining
                remaining -= window_end - window_start
                cursor = window_end
            closed_days = 0 if found else closed_days + 1
            self._check_closed_days(closed_days, since, day)
        # Then whole days, jumped over by the running totals to the day the time runs out.
        day, remaining = self._day_using_up(first + 2 * _DAY, remaining, closed_days, since)
        for window_start, window_end in self.windows_on(day):
            if remaining <= window_end - window_start:
                return window_start + remaining
            remaining -= window_end - window_start
        raise AssertionError("unreachable: the running totals said this day has the time")

    def _check_closed_days(self, closed_days: int, since: datetime, day: date) -> None:
        if closed_days > self.max_closed_days:
            raise CalendarClosedError(
                f"calendar has no open time between {since.isoformat()} and "
                f"{day.isoformat()} ({self.max_closed_days} closed days in a row)"
            )

    def _day_using_up(
        self, first: date, amount: timedelta, closed_before: int, since: datetime
    ) -> tuple[date, timedelta]:
        """The day from ``first`` on whose windows (all whole) use up ``amount`` > 0 of
        open time, and how much of it is left for that day.

        ``closed_before`` closed days come right before ``first``; more than
        ``max_closed_days`` in a row before that day raise CalendarClosedError.
        """
        lo = first.toordinal()
        totals = self._day_totals
        if not totals.covers(lo, lo + 1):
            totals = self._grow_day_totals(lo, lo + 1)
        while True:
            goal = totals.sums[lo - totals.base] + amount
            index = bisect.bisect_left(totals.sums, goal, lo=lo - totals.base)
            stop = totals.base + index - 1 if index < len(totals.sums) else totals.end
            # Closed runs before that day (or, not found yet, up to the last day known).
            for run_start, run_end in totals.closed_runs_between(lo, stop):
                carried = closed_before if run_start <= lo else 0
                run = min(run_end, stop) - max(run_start, lo) + 1 + carried
                if run > self.max_closed_days:
                    fired = max(run_start, lo) + self.max_closed_days - carried
                    self._check_closed_days(run, since, date.fromordinal(fired))
            if index < len(totals.sums):
                used = totals.sums[index - 1] - totals.sums[lo - totals.base]
                return date.fromordinal(stop), amount - used
            if totals.end >= date.max.toordinal() - 1:
                raise OverflowError(f"adding {amount} of business time passes year 9999")
            totals = self._grow_day_totals(lo, totals.end + 2)

    def business_time_between(self, a: datetime, b: datetime) -> timedelta:
        """Open time in ``[a, b)``; negative (the open time in ``[b, a)``) when b < a."""
        start, end = _utc(a, "a"), _utc(b, "b")
        if end < start:
            return -self.business_time_between(b, a)
        first, last = self._local_day(start), self._local_day(end)
        if (last - first).days < 4:
            return self._open_time_of_days(first - _DAY, last + _DAY, start, end)
        # A day two or more after ``start``'s and before ``end``'s lies wholly inside:
        # its windows count whole, from running totals, instead of one day at a time.
        return (
            self._open_time_of_days(first - _DAY, first + _DAY, start, end)
            + self._whole_days_open_time(first + 2 * _DAY, last - 2 * _DAY)
            + self._open_time_of_days(last - _DAY, last + _DAY, start, end)
        )

    def _open_time_of_days(
        self, day: date, last_day: date, start: datetime, end: datetime
    ) -> timedelta:
        """Open time in ``[start, end)`` of the windows of local days ``day``..``last_day``."""
        total = timedelta(0)
        while day <= last_day:
            for window_start, window_end in self.windows_on(day):
                overlap = min(window_end, end) - max(window_start, start)
                if overlap > timedelta(0):
                    total += overlap
            day += _DAY
        return total

    def _whole_days_open_time(self, first: date, last: date) -> timedelta:
        """Open time of local days ``first``..``last``, every window whole."""
        lo, hi = first.toordinal(), last.toordinal() + 1
        totals = self._day_totals
        if not totals.covers(lo, hi):
            totals = self._grow_day_totals(lo, hi)
        return totals.sums[hi - totals.base] - totals.sums[lo - totals.base]

    def _grow_day_totals(self, lo: int, hi: int) -> _DayTotals:
        """Running totals covering day ordinals ``lo`` to ``hi``, kept for later calls."""

        def day_open(ordinal: int) -> timedelta:
            windows = self.windows_on(date.fromordinal(ordinal))
            return sum((end - start for start, end in windows), timedelta(0))

        def run(first: int, stop: int) -> list[timedelta]:
            out = [timedelta(0)]
            for ordinal in range(first, stop):
                out.append(out[-1] + day_open(ordinal))
            return out

        base, totals = self._day_totals.base, self._day_totals.sums
        if not totals:
            new_base, merged = lo, run(lo, hi)
        else:
            old_end = base + len(totals) - 1
            new_base = max(1, min(lo, base - _DAY_TOTALS_GROWTH)) if lo < base else base
            left = run(new_base, base)
            merged = left[:-1] + [total + left[-1] for total in totals]
            if hi > old_end:
                stop = min(max(hi, old_end + _DAY_TOTALS_GROWTH), date.max.toordinal())
                for ordinal in range(old_end, stop):
                    merged.append(merged[-1] + day_open(ordinal))
        grown = _DayTotals(new_base, tuple(merged), _closed_runs(new_base, merged))
        self._day_totals = grown
        return grown

    def add_business_minutes(self, start: datetime, minutes: float) -> datetime:
        """:meth:`add_business_time` in minutes (float, >= 0)."""
        return self.add_business_time(start, _minutes_to_delta(minutes))

    def business_minutes_between(self, a: datetime, b: datetime) -> float:
        """Business minutes from ``a`` to ``b``; zero or negative when ``b <= a``."""
        return _delta_to_minutes(self.business_time_between(a, b))


class CalendarTime:
    """Plain elapsed time (no business hours) for targets measured in calendar time.

    Unlike adding a timedelta to a zoneinfo datetime (which is wall-clock
    arithmetic), this counts real elapsed time across DST changes.
    """

    def add_business_time(self, start: datetime, amount: timedelta) -> datetime:
        if amount < timedelta(0):
            raise ValueError(f"cannot add negative time {amount}")
        return _utc(start, "start") + amount

    def business_time_between(self, a: datetime, b: datetime) -> timedelta:
        return _utc(b, "b") - _utc(a, "a")

    def add_business_minutes(self, start: datetime, minutes: float) -> datetime:
        return self.add_business_time(start, _minutes_to_delta(minutes))

    def business_minutes_between(self, a: datetime, b: datetime) -> float:
        return _delta_to_minutes(self.business_time_between(a, b))

    def is_open(self, at: datetime) -> bool:
        _utc(at, "at")
        return True

    def next_open(self, at: datetime) -> datetime:
        return _utc(at, "at")
