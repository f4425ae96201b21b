"""Assignment over 1,000 simulated tickets: spread, load, shifts, absences, caps, fallback."""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime, timedelta

from maildesk.config import AgentSettings, GroupSettings, Settings
from maildesk.people import Directory
from maildesk.routing.assign import choose, eligible

MONDAY = datetime(2026, 3, 2, 0, 0, tzinfo=UTC)
OFFICE = {d: "09:00-17:00" for d in ("mon", "tue", "wed", "thu", "fri")}


def team(strategy: str, *, max_open: int | None = None, **extra: object) -> Settings:
    return Settings.model_validate(
        {
            "groups": [
                {"name": "L1", "strategy": strategy, "max_open": max_open, **extra},
            ],
            "agents": [
                {"name": "ann", "addresses": ["ann@x.test"], "groups": ["L1"]},
                {
                    "name": "ben",
                    "addresses": ["ben@x.test"],
                    "groups": ["L1"],
                    "hours": OFFICE,
                    "timezone": "Europe/Berlin",
                    "skills": ["billing"],
                },
                {
                    "name": "cat",
                    "addresses": ["cat@x.test"],
                    "groups": ["L1"],
                    "hours": {"mon": "06:00-14:00", "wed": "06:00-14:00", "sat": "10:00-18:00"},
                    "max_open_tickets": 4,
                },
                {
                    "name": "dan",
                    "addresses": ["dan@x.test"],
                    "groups": ["L1"],
                    "absences": [{"start": "2026-03-03", "end": "2026-03-05"}],
                    "skills": ["billing"],
                },
                {
                    "name": "eve",
                    "addresses": ["eve@x.test"],
                    "groups": ["L1"],
                    "hours": {"tue": "20:00-23:59", "thu": "20:00-23:59"},
                    "timezone": "America/New_York",
                },
                {"name": "boss", "addresses": ["boss@x.test"]},
            ],
        }
    )


def test_round_robin_spreads_within_one_when_everyone_is_available() -> None:
    settings = team("round_robin")
    directory = Directory.from_settings(settings)
    group = settings.groups[0]
    members = directory.members("L1")
    counts: Counter[str] = Counter()
    last = None
    for _ in range(1000):
        result = choose(group, members, open_counts={}, on_shift=lambda a: True, last_assigned=last)
        assert result.agent is not None and result.rule == "round_robin"
        counts[result.agent] += 1
        last = result.agent
    assert set(counts) == {m.name for m in members}
    assert max(counts.values()) - min(counts.values()) <= 1


def test_round_robin_with_shifts_spreads_within_one_among_those_on_shift() -> None:
    """Over a week, each hour's tickets rotate among the agents on shift in that hour."""
    settings = team("round_robin", default_responsible="boss")
    directory = Directory.from_settings(settings)
    group, members = settings.groups[0], directory.members("L1")
    last = None
    per_shift_set: dict[frozenset[str], Counter[str]] = {}
    for i in range(1000):
        now = MONDAY + timedelta(minutes=10 * i)
        on = frozenset(a.name for a in members if directory.on_shift(a, now))
        result = choose(
            group,
            members,
            open_counts={},
            on_shift=lambda a, now=now, d=directory: d.on_shift(a, now),
            last_assigned=last,
        )
        assert result.agent is not None
        if not on:
            assert result.agent == "boss" and result.rule == "default_responsible"
            continue
        assert result.agent in on, f"{result.agent} chosen at {now} but not on shift"
        per_shift_set.setdefault(on, Counter())[result.agent] += 1
        last = result.agent
    for on, counts in per_shift_set.items():
        if sum(counts.values()) >= len(on):  # a full round at least
            spread = [counts.get(name, 0) for name in on]
            assert max(spread) - min(spread) <= 1, (on, counts)


def test_nobody_off_shift_or_absent_is_chosen_and_the_cap_holds() -> None:
    """1,000 tickets over two weeks, random closes: every choice is eligible, caps hold."""
    rng = random.Random(7)
    for strategy in ("round_robin", "least_open", "skill"):
        settings = team(strategy, max_open=6, default_responsible="boss")
        directory = Directory.from_settings(settings)
        group, members = settings.groups[0], directory.members("L1")
        caps = {a.name: a.max_open_tickets or 6 for a in members}
        open_: Counter[str] = Counter()
        last = None
        fallbacks = 0
        for i in range(1000):
            now = MONDAY + timedelta(minutes=20 * i)
            for name in list(open_):  # agents close some of their tickets
                open_[name] -= sum(1 for _ in range(open_[name]) if rng.random() < 0.15)
            category = rng.choice(["billing", "network", None])
            result = choose(
                group,
                members,
                open_counts=dict(open_),
                on_shift=lambda a, now=now, d=directory: d.on_shift(a, now),
                last_assigned=last,
                category=category,
                default_responsible="boss",
            )
            assert result.agent is not None
            if result.agent == "boss":
                fallbacks += 1
                ok, _why = eligible(
                    members, group, open_, lambda a, now=now, d=directory: d.on_shift(a, now)
                )
                assert ok == [], "fell back although someone was eligible"
                continue
            agent = directory.agent(result.agent)
            assert agent is not None
            assert directory.on_shift(agent, now), f"{agent.name} off shift at {now}"
            assert not directory.is_absent(agent, now)
            assert open_[agent.name] < caps[agent.name], f"{agent.name} over cap"
            open_[agent.name] += 1
            last = result.agent
        assert max(open_.values()) <= 6
        assert fallbacks > 0  # weekends: nobody on shift, the default responsible took them
        assert all(v <= caps[k] for k, v in open_.items())


def test_least_open_picks_the_agent_with_fewest_open_tickets() -> None:
    settings = team("least_open")
    directory = Directory.from_settings(settings)
    group, members = settings.groups[0], directory.members("L1")
    rng = random.Random(3)
    open_ = Counter({a.name: rng.randint(0, 20) for a in members})
    always = lambda a: True  # noqa: E731
    for _ in range(1000):
        result = choose(group, members, open_counts=dict(open_), on_shift=always)
        assert result.agent is not None
        ok, _why = eligible(members, group, open_, always)  # cat's own cap is 4
        assert open_[result.agent] == min(open_[a.name] for a in ok)
        open_[result.agent] += 1
        if rng.random() < 0.5:  # someone closes a ticket
            name = rng.choice([n for n, c in open_.items() if c > 0])
            open_[name] -= 1


def test_skill_prefers_skilled_agents_then_falls_back_to_least_open() -> None:
    settings = team("skill")
    directory = Directory.from_settings(settings)
    group, members = settings.groups[0], directory.members("L1")
    at = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)  # Monday: ben and dan on shift
    shift = lambda a: directory.on_shift(a, at)  # noqa: E731
    first = choose(group, members, open_counts={"dan": 1}, on_shift=shift, category="billing")
    assert first.agent == "ben" and "skill 'billing'" in first.reason
    other = choose(group, members, open_counts={"ann": 3}, on_shift=shift, category="network")
    assert other.agent not in (None, "ann") and "nobody on shift with skill" in other.reason


def test_nobody_eligible_goes_to_the_default_responsible_or_stays_unassigned() -> None:
    settings = team("round_robin", max_open=1)
    directory = Directory.from_settings(settings)
    group, members = settings.groups[0], directory.members("L1")
    full = {a.name: 5 for a in members}
    result = choose(
        group, members, open_counts=full, on_shift=lambda a: True, default_responsible="boss"
    )
    assert result.agent == "boss" and result.rule == "default_responsible"
    assert "ann at cap (5/1)" in result.reason
    nobody = choose(group, members, open_counts=full, on_shift=lambda a: True)
    assert nobody.agent is None and "left unassigned" in nobody.reason


def test_reopened_ticket_goes_back_to_its_last_assignee_if_available() -> None:
    settings = team("round_robin")
    directory = Directory.from_settings(settings)
    group, members = settings.groups[0], directory.members("L1")
    back = choose(
        group,
        members,
        open_counts={},
        on_shift=lambda a: True,
        previous="cat",
        previous_why="reopened",
    )
    assert back.agent == "cat" and back.rule == "reopen"
    away = choose(
        group,
        members,
        open_counts={"cat": 4},
        on_shift=lambda a: True,
        previous="cat",
        previous_why="reopened",
        last_assigned="ann",
    )
    assert away.agent == "ben" and "cat not available" in away.reason


def test_group_strategy_none_leaves_tickets_for_the_team() -> None:
    settings = team("none", default_responsible="boss")
    directory = Directory.from_settings(settings)
    group: GroupSettings = settings.groups[0]
    members: tuple[AgentSettings, ...] = directory.members("L1")
    result = choose(
        group, members, open_counts={}, on_shift=lambda a: True, default_responsible="boss"
    )
    assert result.agent is None and "by hand" in result.reason
