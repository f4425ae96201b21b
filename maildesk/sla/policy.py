"""SLA targets over a ticket's timeline: pure, with an injected ``now``.

The ticket clock runs while the ticket is neither in a pausing status (see
:attr:`SlaPolicy.pause_statuses`) nor resolved. Each target instance counts
only running time, in business or calendar time, so a pause moves its due
time by exactly the paused business time.

- First response: from creation to the first agent reply.
- Next response: from the first customer message after an agent reply to the
  next agent reply; one instance per such exchange.
- Resolution: from creation; satisfied while resolved, resumes on reopen with
  the time already used.

Timeline rules: events are taken in time order (ties keep list order) and
events after ``now`` are ignored. Only :class:`TicketReopened` reopens a
resolved ticket; it makes the ticket active (follow it with a
:class:`StatusChanged` when it reopens into a pausing status). Callers pass
only public agent replies, not internal notes.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from pydantic import BaseModel, ConfigDict, Field, field_validator

from maildesk.sla.calendar import BusinessCalendar, CalendarTime, NaiveDatetimeError, TimeScale


class Target(enum.StrEnum):
    FIRST_RESPONSE = "first_response"
    NEXT_RESPONSE = "next_response"
    RESOLUTION = "resolution"


class TimeBasis(enum.StrEnum):
    BUSINESS = "business"  # open hours of the named calendar
    CALENDAR = "calendar"  # plain elapsed time, around the clock


class TargetStatus(enum.StrEnum):
    RUNNING = "running"
    PAUSED = "paused"  # pausing status, or (response targets) ticket resolved
    SATISFIED = "satisfied"


class UnknownCalendarError(KeyError):
    """A policy names a calendar that is not configured."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TargetPolicy(_Model):
    """One target: how many minutes, counted how, on which calendar.

    ``calendar`` names a configured calendar; it is only used for business time.
    """

    # At most a year of minutes: a due time a typo put centuries away cost the
    # sweep seconds per ticket and then overflowed, failing its whole batch.
    minutes: float = Field(gt=0, le=525_600)
    basis: TimeBasis = TimeBasis.BUSINESS
    calendar: str = "default"

    @field_validator("minutes")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("minutes must be finite")
        return value


class SlaPolicy(_Model):
    """Targets of one policy; a target left out does not apply."""

    name: str = Field(min_length=1)
    first_response: TargetPolicy | None = None
    next_response: TargetPolicy | None = None
    resolution: TargetPolicy | None = None
    warning_share: float | None = Field(default=0.8, gt=0, lt=1)
    pause_statuses: frozenset[str] = frozenset({"pending"})

    def target(self, target: Target) -> TargetPolicy | None:
        return {
            Target.FIRST_RESPONSE: self.first_response,
            Target.NEXT_RESPONSE: self.next_response,
            Target.RESOLUTION: self.resolution,
        }[target]

    def calendar_names(self) -> frozenset[str]:
        """Calendars this policy needs (for checking the config at load time)."""
        return frozenset(
            spec.calendar
            for t in Target
            if (spec := self.target(t)) is not None and spec.basis is TimeBasis.BUSINESS
        )


# -- timeline events --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TicketCreated:
    at: datetime


@dataclass(frozen=True, slots=True)
class CustomerMessage:
    at: datetime


@dataclass(frozen=True, slots=True)
class AgentReply:
    """A public reply by an agent (not an internal note)."""

    at: datetime


@dataclass(frozen=True, slots=True)
class StatusChanged:
    """The ticket moved to ``status``; it pauses the clock if in ``pause_statuses``."""

    at: datetime
    status: str


@dataclass(frozen=True, slots=True)
class TicketResolved:
    at: datetime


@dataclass(frozen=True, slots=True)
class TicketReopened:
    at: datetime


TicketEvent = (
    TicketCreated | CustomerMessage | AgentReply | StatusChanged | TicketResolved | TicketReopened
)


# -- results ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TargetState:
    """One target instance as of ``now``.

    ``due_at`` is None when satisfied, or while paused before the target was
    used up (the due time is unknown until the clock resumes). ``warn_at`` is
    the instant the warning share is (or was) reached, None if unknown or
    never reached. ``breached`` means more business time than the target was
    used before satisfaction (a reply exactly at ``due_at``, or in the closed
    hours right after it, is in time). ``breach_shows_at`` is when the clock
    first ran past the target: ``due_at`` itself, or the next running open time
    when ``due_at`` is a closing time or the start of a pause.
    """

    target: Target
    instance: int  # 0 for first response/resolution; n-th next response counts from 0
    started_at: datetime
    status: TargetStatus
    due_at: datetime | None
    warn_at: datetime | None
    satisfied_at: datetime | None
    elapsed_minutes: float
    target_minutes: float
    breached: bool
    warned: bool
    breach_shows_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class SlaEvaluation:
    first_response: TargetState | None
    next_responses: tuple[TargetState, ...]
    resolution: TargetState | None

    def states(self) -> Iterator[TargetState]:
        """Every target instance, in target order."""
        if self.first_response is not None:
            yield self.first_response
        yield from self.next_responses
        if self.resolution is not None:
            yield self.resolution

    def current(self, target: Target) -> TargetState | None:
        """The latest instance of ``target`` (None if it never started or does not apply)."""
        if target is Target.NEXT_RESPONSE:
            return self.next_responses[-1] if self.next_responses else None
        return self.first_response if target is Target.FIRST_RESPONSE else self.resolution


# -- evaluation ---------------------------------------------------------------

# The smallest amount of clock past a target (datetimes count in microseconds).
_PAST = timedelta(microseconds=1)

# A stretch of running clock; ``None`` end = still running at ``now``.
_Span = tuple[datetime, datetime | None]


@dataclass(frozen=True, slots=True)
class _Instance:
    target: Target
    number: int
    start: datetime
    end: datetime | None  # satisfied at


@dataclass(slots=True)
class _Timeline:
    running: list[_Span]
    instances: list[_Instance]


def _scan(events: Sequence[TicketEvent], now: datetime, policy: SlaPolicy) -> _Timeline:
    for event in events:
        if event.at.tzinfo is None or event.at.utcoffset() is None:
            raise NaiveDatetimeError(f"event {event!r} has a naive datetime")
    timed = [(e.at.astimezone(UTC), e) for e in events if e.at <= now]
    timed.sort(key=lambda pair: pair[0])  # stable: ties keep list order
    if not timed or not isinstance(timed[0][1], TicketCreated):
        raise ValueError("a ticket timeline must start with TicketCreated (at or before now)")
    if sum(isinstance(e, TicketCreated) for _, e in timed) > 1:
        raise ValueError("a ticket timeline has exactly one TicketCreated")
    created = timed[0][0]
    running: list[_Span] = []
    run_start: datetime | None = created
    paused = resolved = False
    first_reply: datetime | None = None
    resolved_at: datetime | None = None
    next_start: datetime | None = None
    instances: list[_Instance] = []
    next_count = 0

    for at, event in timed[1:]:
        match event:
            case AgentReply():
                if first_reply is None:
                    first_reply = at
                if next_start is not None:
                    instances.append(_Instance(Target.NEXT_RESPONSE, next_count, next_start, at))
                    next_count += 1
                    next_start = None
            case CustomerMessage():
                if first_reply is not None and next_start is None:
                    next_start = at
            case StatusChanged(status=status):
                paused = status in policy.pause_statuses
            case TicketResolved():
                if not resolved:
                    resolved, resolved_at = True, at
                paused = False
            case TicketReopened():
                if resolved:
                    resolved, resolved_at = False, None
                paused = False
        should_run = not paused and not resolved
        if should_run and run_start is None:
            run_start = at
        elif not should_run and run_start is not None:
            if at > run_start:
                running.append((run_start, at))
            run_start = None
    if run_start is not None:
        running.append((run_start, None))

    instances.insert(0, _Instance(Target.FIRST_RESPONSE, 0, created, first_reply))
    if next_start is not None:
        instances.append(_Instance(Target.NEXT_RESPONSE, next_count, next_start, None))
    instances.append(_Instance(Target.RESOLUTION, 0, created, resolved_at))
    return _Timeline(running, instances)


def next_response_starts(events: Sequence[TicketEvent], now: datetime) -> list[datetime]:
    """When each next-response instance began, by instance number as :func:`evaluate`
    numbers them (pauses do not matter to which exchange is which)."""
    timeline = _scan(events, now.astimezone(UTC), SlaPolicy(name="exchanges"))
    return [i.start for i in timeline.instances if i.target is Target.NEXT_RESPONSE]


def _clip(running: list[_Span], start: datetime, end: datetime | None) -> list[_Span]:
    clipped: list[_Span] = []
    for span_start, span_end in running:
        lo = max(span_start, start)
        hi: datetime | None
        if span_end is None:
            hi = end
        elif end is None:
            hi = span_end
        else:
            hi = min(span_end, end)
        if hi is None or hi > lo:
            clipped.append((lo, hi))
    return clipped


def _instant_at(
    scale: TimeScale, spans: list[_Span], times: list[timedelta], amount: timedelta
) -> datetime | None:
    """When the running clock over ``spans`` (``times`` of it in each) reaches
    ``amount``; None if it has not and cannot (no open-ended span)."""
    used = timedelta(0)
    for (start, end), span in zip(spans, times, strict=True):
        if end is None:
            return scale.add_business_time(start, amount - used)
        if used + span >= amount:
            return min(scale.add_business_time(start, amount - used), end)
        used += span
    return None


def _scale_for(
    policy: SlaPolicy, target: Target, spec: TargetPolicy, calendars: Mapping[str, BusinessCalendar]
) -> TimeScale:
    if spec.basis is TimeBasis.CALENDAR:
        return CalendarTime()
    try:
        return calendars[spec.calendar]
    except KeyError:
        raise UnknownCalendarError(
            f"policy {policy.name!r}, target {target}: unknown calendar {spec.calendar!r}"
        ) from None


def _evaluate_instance(
    instance: _Instance,
    spec: TargetPolicy,
    scale: TimeScale,
    timeline: _Timeline,
    warning_share: float | None,
    now: datetime,
) -> TargetState:
    spans = _clip(timeline.running, instance.start, instance.end)
    times = [scale.business_time_between(s, e if e is not None else now) for s, e in spans]
    elapsed = sum(times, timedelta(0))
    target_time = timedelta(minutes=spec.minutes)
    deadline = _instant_at(scale, spans, times, target_time)
    shows_at = (
        _instant_at(scale, spans, times, target_time + _PAST) if deadline is not None else None
    )
    warn_at = None
    if warning_share is not None:
        warn_at = _instant_at(scale, spans, times, timedelta(minutes=spec.minutes * warning_share))
    if instance.end is not None:
        status = TargetStatus.SATISFIED
        horizon = instance.end
    else:
        open_ended = bool(spans) and spans[-1][1] is None
        status = TargetStatus.RUNNING if open_ended else TargetStatus.PAUSED
        horizon = now
    return TargetState(
        target=instance.target,
        instance=instance.number,
        started_at=instance.start,
        status=status,
        due_at=None if status is TargetStatus.SATISFIED else deadline,
        warn_at=warn_at,
        satisfied_at=instance.end,
        elapsed_minutes=elapsed / timedelta(minutes=1),
        target_minutes=spec.minutes,
        # Business time used beyond the target: a reply during closed hours right
        # after the due time is not late, and nothing breaches at night.
        breached=deadline is not None and elapsed > target_time,
        warned=warn_at is not None and horizon >= warn_at,
        breach_shows_at=None if shows_at is None else shows_at - _PAST,
    )


def evaluate(
    policy: SlaPolicy,
    events: Sequence[TicketEvent],
    now: datetime,
    calendars: Mapping[str, BusinessCalendar],
) -> SlaEvaluation:
    """Every SLA target of one ticket as of ``now`` (an aware datetime)."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise NaiveDatetimeError("now must be timezone-aware")
    now = now.astimezone(UTC)
    timeline = _scan(events, now, policy)
    first: TargetState | None = None
    nexts: list[TargetState] = []
    resolution: TargetState | None = None
    for instance in timeline.instances:
        spec = policy.target(instance.target)
        if spec is None:
            continue
        scale = _scale_for(policy, instance.target, spec, calendars)
        state = _evaluate_instance(instance, spec, scale, timeline, policy.warning_share, now)
        if instance.target is Target.FIRST_RESPONSE:
            first = state
        elif instance.target is Target.NEXT_RESPONSE:
            nexts.append(state)
        else:
            resolution = state
    return SlaEvaluation(first, tuple(nexts), resolution)
