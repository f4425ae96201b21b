"""SLA targets over ticket timelines, with an injected ``now``.

Calendar used throughout: Mon–Fri 10:00–19:00 Europe/Berlin, no holidays.
Fri 7 June 2024, Mon 10 June and Tue 11 June are ordinary working days.
Expected instants are worked out by hand in the comments.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from maildesk.sla.calendar import BusinessCalendar, CalendarConfig, NaiveDatetimeError
from maildesk.sla.policy import (
    AgentReply,
    CustomerMessage,
    SlaEvaluation,
    SlaPolicy,
    StatusChanged,
    Target,
    TargetStatus,
    TicketCreated,
    TicketEvent,
    TicketReopened,
    TicketResolved,
    UnknownCalendarError,
    evaluate,
)

BERLIN = ZoneInfo("Europe/Berlin")
OFFICE = BusinessCalendar(
    CalendarConfig.model_validate(
        {
            "timezone": "Europe/Berlin",
            "hours": {d: "10:00-19:00" for d in ("mon", "tue", "wed", "thu", "fri")},
        }
    )
)
CALENDARS = {"office": OFFICE}


def at(day: int, hour: int, minute: int = 0) -> datetime:
    """An instant in June 2024, Berlin time."""
    return datetime(2024, 6, day, hour, minute, tzinfo=BERLIN)


def policy(**targets: Any) -> SlaPolicy:
    return SlaPolicy.model_validate({"name": "standard", **targets})


def business(minutes: float) -> dict[str, Any]:
    return {"minutes": minutes, "basis": "business", "calendar": "office"}


FOUR_HOUR_FIRST = policy(first_response=business(240))
CREATED_FRIDAY = TicketCreated(at(7, 18, 30))


def run(sla: SlaPolicy, events: list[TicketEvent], now: datetime) -> SlaEvaluation:
    return evaluate(sla, events, now, CALENDARS)


def first(sla: SlaPolicy, events: list[TicketEvent], now: datetime) -> Any:
    state = run(sla, events, now).first_response
    assert state is not None
    return state


# -- the acceptance example -----------------------------------------------------


def test_created_friday_evening_is_due_monday() -> None:
    # 30 min on Friday (18:30-19:00), 210 min on Monday from 10:00 -> 13:30.
    state = first(FOUR_HOUR_FIRST, [CREATED_FRIDAY], now=at(7, 18, 45))
    assert state.due_at == at(10, 13, 30)
    assert state.status is TargetStatus.RUNNING
    assert not state.breached


def test_pending_monday_to_tuesday_moves_due_by_the_paused_business_time() -> None:
    events: list[TicketEvent] = [
        CREATED_FRIDAY,
        StatusChanged(at(10, 11), "pending"),
        StatusChanged(at(10, 11) + timedelta(days=1), "open"),
    ]
    # Used before the pause: 30 (Fri) + 60 (Mon 10-11) = 90; 150 left from Tue 11:00.
    # Paused business time: Mon 11-19 (480) + Tue 10-11 (60) = 540; Mon 13:30 + 540
    # business minutes = 330 to Mon 19:00 + 210 from Tue 10:00 = Tue 13:30 too.
    state = first(FOUR_HOUR_FIRST, events, now=at(11, 12))
    assert state.due_at == at(11, 13, 30)
    assert state.elapsed_minutes == pytest.approx(90 + 60)
    assert not state.breached


def test_while_pending_the_due_time_is_unknown_and_not_breached() -> None:
    events: list[TicketEvent] = [CREATED_FRIDAY, StatusChanged(at(10, 11), "pending")]
    state = first(FOUR_HOUR_FIRST, events, now=at(10, 16))  # past the original 13:30
    assert state.status is TargetStatus.PAUSED
    assert state.due_at is None
    assert state.elapsed_minutes == pytest.approx(90)
    assert not state.breached


# -- first response ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "breached", "elapsed"),
    [
        (at(10, 12), False, 30 + 120),
        (at(10, 13, 30), False, 240),  # exactly on time is in time
        (at(10, 14), True, 30 + 240),
        (at(8, 12), False, 30),  # Saturday reply: no business time used since Friday
    ],
)
def test_agent_reply_satisfies_first_response(
    reply: datetime, breached: bool, elapsed: float
) -> None:
    state = first(FOUR_HOUR_FIRST, [CREATED_FRIDAY, AgentReply(reply)], now=at(12, 12))
    assert state.status is TargetStatus.SATISFIED
    assert state.satisfied_at == reply
    assert state.due_at is None
    assert state.breached is breached
    assert state.elapsed_minutes == pytest.approx(elapsed)


@pytest.mark.parametrize(
    ("now", "warned", "breached"),
    [
        (at(10, 12, 41), False, False),
        # 80% of 240 = 192: 30 on Friday + 162 from Monday 10:00 = 12:42.
        (at(10, 12, 42), True, False),
        (at(10, 13, 30), True, False),
        (at(10, 13, 31), True, True),
    ],
)
def test_warning_and_breach_as_of_now(now: datetime, warned: bool, breached: bool) -> None:
    state = first(FOUR_HOUR_FIRST, [CREATED_FRIDAY], now=now)
    assert state.warn_at == at(10, 12, 42)
    assert state.warned is warned
    assert state.breached is breached


def test_warning_moves_with_a_pause_too() -> None:
    events: list[TicketEvent] = [
        CREATED_FRIDAY,
        StatusChanged(at(10, 11), "pending"),
        StatusChanged(at(11, 11), "open"),
    ]
    # 90 used before the pause; 192 - 90 = 102 more from Tue 11:00 = 12:42.
    assert first(FOUR_HOUR_FIRST, events, now=at(11, 11)).warn_at == at(11, 12, 42)


def test_breached_before_the_pause_stays_breached() -> None:
    events: list[TicketEvent] = [CREATED_FRIDAY, StatusChanged(at(10, 15), "pending")]
    state = first(FOUR_HOUR_FIRST, events, now=at(10, 16))
    assert state.status is TargetStatus.PAUSED
    assert state.breached
    assert state.due_at == at(10, 13, 30)


def test_only_configured_statuses_pause_the_clock() -> None:
    sla = policy(first_response=business(240), pause_statuses=["waiting_on_customer"])
    events: list[TicketEvent] = [CREATED_FRIDAY, StatusChanged(at(10, 11), "pending")]
    assert first(sla, events, now=at(10, 12)).due_at == at(10, 13, 30)
    events = [CREATED_FRIDAY, StatusChanged(at(10, 11), "waiting_on_customer")]
    assert first(sla, events, now=at(10, 12)).status is TargetStatus.PAUSED


def test_events_after_now_are_not_seen_yet() -> None:
    state = first(FOUR_HOUR_FIRST, [CREATED_FRIDAY, AgentReply(at(10, 12))], now=at(10, 11))
    assert state.status is TargetStatus.RUNNING
    assert state.satisfied_at is None


# -- next response ----------------------------------------------------------------


NEXT_TWO_HOURS = policy(first_response=business(240), next_response=business(120))


def test_customer_message_after_a_reply_starts_next_response() -> None:
    events: list[TicketEvent] = [
        TicketCreated(at(10, 10)),
        CustomerMessage(at(10, 10, 5)),  # before any reply: still the first response
        AgentReply(at(10, 10, 30)),
        CustomerMessage(at(10, 18)),
        CustomerMessage(at(10, 18, 30)),  # same open next response
    ]
    result = run(NEXT_TWO_HOURS, events, now=at(11, 12))
    assert len(result.next_responses) == 1
    state = result.next_responses[0]
    assert state.started_at == at(10, 18)
    # 60 on Monday (18-19), 60 from Tuesday 10:00 -> 11:00; now is 12:00.
    assert state.due_at == at(11, 11)
    assert state.breached
    assert result.current(Target.NEXT_RESPONSE) is state


def test_each_exchange_gets_its_own_next_response() -> None:
    events: list[TicketEvent] = [
        TicketCreated(at(10, 10)),
        AgentReply(at(10, 10, 30)),
        CustomerMessage(at(10, 18)),
        AgentReply(at(11, 10, 45)),
        CustomerMessage(at(11, 15)),
    ]
    result = run(NEXT_TWO_HOURS, events, now=at(11, 15, 30))
    done, open_ = result.next_responses
    assert (done.status, done.satisfied_at, done.breached) == (
        TargetStatus.SATISFIED,
        at(11, 10, 45),
        False,
    )
    assert done.elapsed_minutes == pytest.approx(60 + 45)
    assert (open_.instance, open_.status, open_.due_at) == (1, TargetStatus.RUNNING, at(11, 17))


def test_no_next_response_without_a_reply_first() -> None:
    events: list[TicketEvent] = [TicketCreated(at(10, 10)), CustomerMessage(at(10, 11))]
    assert run(NEXT_TWO_HOURS, events, now=at(10, 12)).next_responses == ()


# -- resolution ------------------------------------------------------------------


TEN_HOUR_RESOLUTION = policy(first_response=business(240), resolution=business(600))


def test_resolution_stops_at_resolved_and_resumes_on_reopen() -> None:
    events: list[TicketEvent] = [
        TicketCreated(at(10, 10)),
        TicketResolved(at(10, 14)),
        TicketReopened(at(11, 10)),
    ]
    resolved = run(TEN_HOUR_RESOLUTION, events, now=at(10, 16)).resolution
    assert resolved is not None
    assert (resolved.status, resolved.satisfied_at, resolved.due_at) == (
        TargetStatus.SATISFIED,
        at(10, 14),
        None,
    )
    assert resolved.elapsed_minutes == pytest.approx(240)
    reopened = run(TEN_HOUR_RESOLUTION, events, now=at(11, 12)).resolution
    assert reopened is not None
    # 240 used on Monday, 360 left from Tuesday 10:00 -> 16:00.
    assert (reopened.status, reopened.due_at) == (TargetStatus.RUNNING, at(11, 16))
    assert reopened.elapsed_minutes == pytest.approx(240 + 120)


def test_resolved_ticket_does_not_run_its_response_clock() -> None:
    events: list[TicketEvent] = [TicketCreated(at(10, 10)), TicketResolved(at(10, 11))]
    state = first(TEN_HOUR_RESOLUTION, events, now=at(12, 10))
    assert state.status is TargetStatus.PAUSED
    assert not state.breached
    assert state.elapsed_minutes == pytest.approx(60)


def test_pending_then_resolved_then_reopened_runs_again() -> None:
    events: list[TicketEvent] = [
        TicketCreated(at(10, 10)),
        StatusChanged(at(10, 11), "pending"),
        TicketResolved(at(10, 12)),
        TicketReopened(at(11, 10)),
    ]
    state = run(TEN_HOUR_RESOLUTION, events, now=at(11, 11)).resolution
    assert state is not None
    assert state.status is TargetStatus.RUNNING
    assert state.elapsed_minutes == pytest.approx(60 + 60)


# -- calendar time -------------------------------------------------------------


def test_calendar_time_target_counts_nights_and_weekends() -> None:
    sla = policy(resolution={"minutes": 24 * 60, "basis": "calendar"})
    events: list[TicketEvent] = [
        CREATED_FRIDAY,
        StatusChanged(at(8, 10), "pending"),
        StatusChanged(at(8, 12), "open"),
    ]
    state = run(sla, events, now=at(8, 13)).resolution
    assert state is not None
    # Due Sat 18:30, plus the two paused hours.
    assert state.due_at == at(8, 20, 30)


def test_calendar_time_target_across_spring_forward() -> None:
    sla = policy(resolution={"minutes": 24 * 60, "basis": "calendar"})
    created = datetime(2024, 3, 30, 12, tzinfo=BERLIN)  # 11:00 UTC
    state = run(sla, [TicketCreated(created)], now=created).resolution
    assert state is not None
    # 24 real hours later is 11:00 UTC, which is 13:00 CEST.
    assert state.due_at == datetime(2024, 3, 31, 13, tzinfo=BERLIN)


def test_targets_not_in_the_policy_are_absent() -> None:
    result = run(FOUR_HOUR_FIRST, [CREATED_FRIDAY, AgentReply(at(10, 11))], now=at(10, 12))
    assert result.resolution is None
    assert result.next_responses == ()
    assert [s.target for s in result.states()] == [Target.FIRST_RESPONSE]


# -- errors ------------------------------------------------------------------------


def test_unknown_calendar_is_named() -> None:
    sla = policy(first_response={"minutes": 60, "calendar": "night-shift"})
    with pytest.raises(UnknownCalendarError, match="night-shift"):
        run(sla, [CREATED_FRIDAY], now=at(10, 12))
    assert sla.calendar_names() == {"night-shift"}


def test_timeline_must_start_with_creation() -> None:
    with pytest.raises(ValueError, match="TicketCreated"):
        run(FOUR_HOUR_FIRST, [AgentReply(at(10, 11))], now=at(10, 12))


def test_naive_times_are_rejected() -> None:
    with pytest.raises(NaiveDatetimeError):
        run(FOUR_HOUR_FIRST, [TicketCreated(datetime(2024, 6, 7, 18, 30))], now=at(10, 12))
    with pytest.raises(NaiveDatetimeError):
        run(FOUR_HOUR_FIRST, [CREATED_FRIDAY], now=datetime(2024, 6, 10, 12))


@pytest.mark.parametrize(
    ("data", "where"),
    [
        ({"first_response": {"minutes": 0}}, ("first_response", "minutes")),
        ({"first_response": {"minutes": 60, "basis": "lunar"}}, ("first_response", "basis")),
        ({"warning_share": 1.5}, ("warning_share",)),
        ({"reply_within": 60}, ("reply_within",)),
    ],
)
def test_policy_config_errors_name_the_key(data: dict[str, Any], where: tuple[str, ...]) -> None:
    with pytest.raises(ValidationError) as info:
        SlaPolicy.model_validate({"name": "p", **data})
    assert info.value.errors()[0]["loc"] == where


# -- properties -------------------------------------------------------------------

# Two weeks of instants from Mon 3 June 2024 00:00 Berlin, on a minute grid.
WEEK_START = at(3, 0)
offsets = st.integers(min_value=0, max_value=14 * 24 * 60)
target_minutes = st.integers(min_value=1, max_value=3000)


def minute(offset: int) -> datetime:
    return WEEK_START + timedelta(minutes=offset)


@settings(max_examples=150, deadline=None)
@given(created=offsets, pause_from=offsets, pause_length=offsets, minutes=target_minutes)
def test_pause_time_is_excluded_and_moves_the_due_time(
    created: int, pause_from: int, pause_length: int, minutes: int
) -> None:
    assume(pause_from > created and pause_length > 0)
    start, p, q = minute(created), minute(pause_from), minute(pause_from + pause_length)
    sla = policy(first_response=business(minutes))
    plain = first(sla, [TicketCreated(start)], now=q)
    paused = first(
        sla,
        [TicketCreated(start), StatusChanged(p, "pending"), StatusChanged(q, "open")],
        now=q,
    )
    paused_business = OFFICE.business_minutes_between(p, q)
    assert paused.elapsed_minutes == pytest.approx(plain.elapsed_minutes - paused_business)
    due_plain = OFFICE.add_business_minutes(start, minutes)
    if p < due_plain:
        # The pause shifts the due time by exactly the paused business time.
        assert paused.due_at == OFFICE.add_business_minutes(due_plain, paused_business)
        assert OFFICE.business_minutes_between(start, paused.due_at) == pytest.approx(
            minutes + paused_business
        )
    else:
        # Paused only at or after the due time: nothing moves. Paused exactly at
        # it (in business time), the target was used, not exceeded: not breached.
        assert paused.due_at == due_plain
        assert paused.breached == (OFFICE.business_minutes_between(due_plain, p) > 0)


@settings(max_examples=100, deadline=None)
@given(created=offsets, reply_after=offsets, minutes=target_minutes)
def test_breached_exactly_when_reply_comes_after_the_due_time(
    created: int, reply_after: int, minutes: int
) -> None:
    start, reply = minute(created), minute(created + reply_after)
    sla = policy(first_response=business(minutes))
    state = first(sla, [TicketCreated(start), AgentReply(reply)], now=reply)
    used = OFFICE.business_minutes_between(start, reply)
    assert state.elapsed_minutes == pytest.approx(used)
    assert state.breached == (used > minutes)


@settings(max_examples=100, deadline=None)
@given(created=offsets, later=offsets, minutes=target_minutes)
def test_elapsed_grows_with_now_and_due_time_does_not_move(
    created: int, later: int, minutes: int
) -> None:
    start = minute(created)
    sla = policy(first_response=business(minutes))
    early = first(sla, [TicketCreated(start)], now=start)
    late = first(sla, [TicketCreated(start)], now=start + timedelta(minutes=later))
    assert late.elapsed_minutes >= early.elapsed_minutes
    assert late.due_at == early.due_at
    assert early.due_at is not None and early.due_at.tzinfo is UTC
