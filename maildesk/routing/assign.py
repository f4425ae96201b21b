"""Automatic assignment: choose an agent of a group for a ticket.

:func:`choose` is pure: it gets the group's members, their open-ticket counts,
who is on shift now, the round-robin cursor and the preferred agents
(reopen/sticky) and returns the agent with the reason. :mod:`assign_db`
gathers those inputs from the database and records the result.

Eligible means: on shift now (weekly hours in their time zone, not absent) and
below their open-ticket cap (the agent's ``max_open_tickets``, else the group's
``max_open``; none means no cap). When nobody is eligible the default
responsible (the group's, else the queue's) gets the ticket, whatever their
shift or load; without one the ticket waits until someone is eligible
(:mod:`maildesk.routing.waiting`).

A ticket with no group (no rule, queue group or default group gave it one, and
its queue has no default responsible) is assigned in the pool :func:`all_agents`:
the agents in no group or in one that assigns by itself
(``Directory.without_group``), round robin, each agent's own cap. Without it
such a ticket would reach nobody, since agents work only from their mail.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from maildesk.config import AgentSettings, GroupSettings


class Strategy(enum.StrEnum):
    ROUND_ROBIN = "round_robin"
    LEAST_OPEN = "least_open"
    SKILL = "skill"
    NONE = "none"


@dataclass(frozen=True)
class Assignment:
    agent: str | None
    reason: str
    rule: str  # reopen, sticky, round_robin, least_open, skill, default_responsible, none


ALL_AGENTS = "*"  # the pool's name: its routing_state row; no group can be named so


def all_agents() -> GroupSettings:
    """The pool of a ticket with no group: every agent, round robin, no group cap."""
    return GroupSettings.model_construct(name=ALL_AGENTS)


def is_all_agents(group: GroupSettings) -> bool:
    return group.name == ALL_AGENTS


def _within(group: GroupSettings) -> str:
    return "among all agents" if is_all_agents(group) else f"in {group.name}"


def cap_of(agent: AgentSettings, group: GroupSettings) -> int | None:
    return agent.max_open_tickets if agent.max_open_tickets is not None else group.max_open


def eligible(
    members: Sequence[AgentSettings],
    group: GroupSettings,
    open_counts: Mapping[str, int],
    on_shift: Callable[[AgentSettings], bool],
) -> tuple[list[AgentSettings], list[str]]:
    """Members who may take a ticket now, and why the others may not."""
    ok, why_not = [], []
    for agent in members:
        cap = cap_of(agent, group)
        count = open_counts.get(agent.name, 0)
        if not on_shift(agent):
            why_not.append(f"{agent.name} off shift")
        elif cap is not None and count >= cap:
            why_not.append(f"{agent.name} at cap ({count}/{cap})")
        else:
            ok.append(agent)
    return ok, why_not


def _rotation(members: Sequence[AgentSettings], last: str | None) -> list[AgentSettings]:
    """Members in round-robin order, starting after ``last``."""
    names = [m.name for m in members]
    if last not in names:
        return list(members)
    start = names.index(last) + 1
    return [*members[start:], *members[:start]]


def choose(
    group: GroupSettings,
    members: Sequence[AgentSettings],
    *,
    open_counts: Mapping[str, int],
    on_shift: Callable[[AgentSettings], bool],
    last_assigned: str | None = None,
    category: str | None = None,
    previous: str | None = None,
    previous_why: str = "",
    previous_agent: AgentSettings | None = None,
    default_responsible: str | None = None,
) -> Assignment:
    """The agent for one ticket of ``group``, with the reason.

    ``previous`` is an agent the ticket should go back to if available: the
    last assignee of a reopened ticket, or (sticky groups) the agent of the
    customer's last ticket. ``previous_agent`` is that agent when they are not
    a member of ``group`` (a ticket given to them by hand): available on the
    same terms (on shift, under their cap), but never in the rotation.
    """
    ok, why_not = eligible(members, group, open_counts, on_shift)
    counts = {a.name: open_counts.get(a.name, 0) for a in ok}
    prefix = ""
    if previous is not None:
        rule = "reopen" if previous_why == "reopened" else "sticky"
        outside = [previous_agent] if previous_agent is not None else []
        back = [*ok, *eligible(outside, group, open_counts, on_shift)[0]]
        if any(a.name == previous for a in back):
            return Assignment(previous, f"{previous_why}: back to {previous}", rule)
        prefix = f"{previous_why}: {previous} not available; "
        why_not.insert(0, f"{previous_why}: {previous} not available")
    strategy = Strategy(group.strategy)
    picked: AgentSettings | None = None
    how = str(strategy)
    if ok and strategy is not Strategy.NONE:
        allowed = {a.name for a in ok}
        ring = [a for a in _rotation(members, last_assigned) if a.name in allowed]
        if strategy is Strategy.ROUND_ROBIN:
            picked = ring[0]
            detail = f"round robin {_within(group)} after {last_assigned or 'nobody'}"
        else:
            pool = ring
            detail = f"fewest open tickets {_within(group)}"
            if strategy is Strategy.SKILL:
                skilled = [a for a in ring if category and category in a.skills]
                if skilled:
                    pool, detail = skilled, f"skill {category!r}, then fewest open tickets"
                else:
                    detail = f"nobody on shift with skill {category!r}: fewest open tickets"
            picked = min(pool, key=lambda a: counts[a.name])  # ties: rotation order
            detail += f" ({counts[picked.name]} open)"
        return Assignment(picked.name, prefix + detail, how)
    if strategy is Strategy.NONE:
        return Assignment(None, f"group {group.name} assigns by hand", "none")
    reason = f"nobody eligible {_within(group)} ({'; '.join(why_not) or 'no members'})"
    if default_responsible is not None:
        return Assignment(
            default_responsible, f"{reason}: default responsible", "default_responsible"
        )
    return Assignment(None, reason + "; no default responsible: left unassigned", "none")
