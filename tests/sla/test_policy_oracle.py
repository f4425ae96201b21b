"""SLA evaluation against a minute-by-minute walk over a ticket's timeline.

The oracle knows only the contract: a target's clock runs in the calendar's
open minutes while the ticket is neither pausing nor resolved, from the
instance's start until it is satisfied; the due time is the end of the
minute in which the used time reaches the target (counting on from ``now``
as if nothing changed); breached means more used than the target.
Calendar: Mon-Fri 09:00-13:00 UTC (the calendar's own maths is checked
against its oracle in test_calendar_oracle.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from maildesk.sla.calendar import BusinessCalendar, CalendarConfig
from maildesk.sla.policy import (
    AgentReply,
    CustomerMessage,
    SlaPolicy,
    StatusChanged,
    Target,
    TargetState,
    TargetStatus,
    TicketCreated,
    TicketEvent,
    TicketReopened,
    TicketResolved,
    evaluate,
)

MINUTE = timedelta(minutes=1)
CALENDAR = BusinessCalendar(
    CalendarConfig.model_validate(
        {
            "timezone": "UTC",
            "hours": {d: "09:00-13:00" for d in ("mon", "tue", "wed", "thu", "fri")},
        }
    )
)
MONDAY = datetime(2024, 6, 3, tzinfo=UTC)


def is_open(minute: datetime) -> bool:
    return minute.weekday() < 5 and 9 <= minute.hour < 13


ACTIONS = ("customer", "agent", "pending", "open", "resolve", "reopen")


@st.composite
def histories(draw: st.DrawFn) -> tuple[list[TicketEvent], datetime]:
    t = MONDAY + timedelta(minutes=15 * draw(st.integers(0, 4 * 24 * 4)))
    events: list[TicketEvent] = [TicketCreated(t), CustomerMessage(t)]
    resolved = False
    for _ in range(draw(st.integers(0, 10))):
        t += timedelta(minutes=15 * draw(st.integers(0, 40)))
        action = draw(st.sampled_from(ACTIONS))
        if action == "customer":
            events.append(CustomerMessage(t))
            if resolved:  # a reply to a resolved ticket reopens it
                events += [TicketReopened(t), StatusChanged(t, "open")]
                resolved = False
        elif action == "agent":
            events.append(AgentReply(t))
        elif action in ("pending", "open") and not resolved:
            events.append(StatusChanged(t, action))
        elif action == "resolve" and not resolved:
            events.append(TicketResolved(t))
            resolved = True
        elif action == "reopen" and resolved:
            status = draw(st.sampled_from(["open", "pending"]))
            events += [TicketReopened(t), StatusChanged(t, status)]
            resolved = False
    now = t + timedelta(minutes=draw(st.integers(0, 3 * 24 * 60)))
    return events, now


@dataclass
class Expected:
    start: datetime
    end: datetime | None
    elapsed: int
    due_at: datetime | None
    warn_at: datetime | None
    status: TargetStatus


def walk(
    events: list[TicketEvent], now: datetime, start: datetime, end: datetime | None, target: int
) -> Expected:
    """Count running open minutes of one instance, minute by minute."""

    def running_after(instant: datetime) -> bool:
        paused = resolved = False
        for event in events:
            if event.at > instant:
                break
            if isinstance(event, StatusChanged):
                paused = event.status == "pending"
            elif isinstance(event, TicketResolved):
                resolved, paused = True, False
            elif isinstance(event, TicketReopened):
                resolved, paused = False, False
        return not paused and not resolved

    stop = end if end is not None else now
    used = 0
    due_at = warn_at = None
    minute = start
    warn = target * 4 // 5
    while minute < stop:
        if is_open(minute) and running_after(minute):
            used += 1
            if used == warn:
                warn_at = minute + MINUTE
            if used == target:
                due_at = minute + MINUTE
        minute += MINUTE
    elapsed = used
    if end is None and running_after(now):
        status = TargetStatus.RUNNING
        while due_at is None:  # the clock runs on as it runs now
            if is_open(minute):
                used += 1
                if used == warn:
                    warn_at = minute + MINUTE
                if used == target:
                    due_at = minute + MINUTE
            minute += MINUTE
    else:
        status = TargetStatus.PAUSED if end is None else TargetStatus.SATISFIED
    return Expected(start, end, elapsed, due_at, warn_at, status)


def expected_instances(
    events: list[TicketEvent], now: datetime
) -> dict[tuple[Target, int], tuple[datetime, datetime | None]]:
    created = events[0].at
    found: dict[tuple[Target, int], tuple[datetime, datetime | None]] = {}
    replies = [e.at for e in events if isinstance(e, AgentReply)]
    found[Target.FIRST_RESPONSE, 0] = (created, replies[0] if replies else None)
    number, waiting, answered = 0, None, False
    for event in events:
        if isinstance(event, AgentReply):
            answered = True
            if waiting is not None:
                found[Target.NEXT_RESPONSE, number] = (waiting, event.at)
                number, waiting = number + 1, None
        elif isinstance(event, CustomerMessage) and answered and waiting is None:
            waiting = event.at
    if waiting is not None:
        found[Target.NEXT_RESPONSE, number] = (waiting, None)
    resolved_at = None
    for event in events:
        if isinstance(event, TicketResolved):
            resolved_at = event.at
        elif isinstance(event, TicketReopened):
            resolved_at = None
    found[Target.RESOLUTION, 0] = (created, resolved_at)
    return found


POLICY = SlaPolicy.model_validate(
    {
        "name": "p",
        "first_response": {"minutes": 60, "calendar": "office"},
        "next_response": {"minutes": 120, "calendar": "office"},
        "resolution": {"minutes": 600, "calendar": "office"},
    }
)


@settings(max_examples=80, deadline=None)
@given(histories())
def test_evaluation_matches_a_minute_walk(history: tuple[list[TicketEvent], datetime]) -> None:
    events, now = history
    evaluation = evaluate(POLICY, events, now, {"office": CALENDAR})
    got: dict[tuple[Target, int], TargetState] = {
        (s.target, s.instance): s for s in evaluation.states()
    }
    wanted = expected_instances(events, now)
    assert set(got) == set(wanted)
    for key, (start, end) in wanted.items():
        spec = POLICY.target(key[0])
        assert spec is not None
        target = int(spec.minutes)
        exp = walk(events, now, start, end, target)
        state = got[key]
        assert (state.started_at, state.satisfied_at, state.status) == (start, end, exp.status)
        assert state.elapsed_minutes == exp.elapsed, key
        assert state.breached == (exp.elapsed > target), key
        if exp.status is not TargetStatus.SATISFIED:
            assert state.due_at == exp.due_at, key
        assert state.warn_at == exp.warn_at, key
        horizon = end if end is not None else now
        assert state.warned == (exp.warn_at is not None and horizon >= exp.warn_at), key
