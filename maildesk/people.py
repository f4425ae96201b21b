"""Who is who: agents, groups and customer organisations from the config.

Pure lookups over the validated settings, built once by the composition root
(and again on reload); nothing here reads the database or the clock.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from maildesk.config import AgentSettings, GroupSettings, OrganisationSettings, Settings
from maildesk.domain.address import base_address
from maildesk.sla.calendar import BusinessCalendar, CalendarConfig

# Directories by the id of the settings they were built from (see from_settings).
_BUILT: dict[int, tuple[weakref.ref[Settings], Directory]] = {}


class Directory:
    """Agents by name and address, groups by name, organisations by mail domain."""

    def __init__(
        self,
        agents: Iterable[AgentSettings] = (),
        groups: Iterable[GroupSettings] = (),
        organisations: Iterable[OrganisationSettings] = (),
    ) -> None:
        self.agents: dict[str, AgentSettings] = {a.name: a for a in agents}
        self.groups: dict[str, GroupSettings] = {g.name: g for g in groups}
        self.organisations: tuple[OrganisationSettings, ...] = tuple(organisations)
        self._by_address = {
            base_address(addr): agent for agent in self.agents.values() for addr in agent.addresses
        }
        self._by_domain = {d: org for org in self.organisations for d in org.domains}
        self._shift_calendars: dict[str, BusinessCalendar] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> Directory:
        """The directory of ``settings``, built once per settings object.

        The pipeline's stages and notifiers ask for it per message; a reload
        makes new settings, hence a new directory.
        """
        key = id(settings)
        built = _BUILT.get(key)
        if built is not None and built[0]() is settings:
            return built[1]
        directory = cls(settings.agents, settings.groups, settings.organisations)
        _BUILT[key] = (weakref.ref(settings, lambda _gone: _BUILT.pop(key, None)), directory)
        return directory

    def agent(self, name: str) -> AgentSettings | None:
        return self.agents.get(name)

    def agent_by_address(self, address: str) -> AgentSettings | None:
        """The agent who writes from ``address`` (case and +tag insensitive)."""
        return self._by_address.get(base_address(address))

    def is_agent_address(self, address: str) -> bool:
        return self.agent_by_address(address) is not None

    def group(self, name: str) -> GroupSettings | None:
        return self.groups.get(name)

    def members(self, group: str) -> tuple[AgentSettings, ...]:
        """Agents of ``group`` in config order (the order round robin walks)."""
        return tuple(a for a in self.agents.values() if group in a.groups)

    def without_group(self) -> tuple[AgentSettings, ...]:
        """Who takes a ticket of no group: agents in no group or in one that assigns by
        itself; not those only in groups assigning by hand (specialists, say)."""

        def assigns_by_itself(name: str) -> bool:
            group = self.groups.get(name)
            return group is None or group.strategy != "none"

        return tuple(
            a for a in self.agents.values() if not a.groups or any(map(assigns_by_itself, a.groups))
        )

    def agent_or_group(self, name: str) -> AgentSettings | GroupSettings | None:
        return self.agents.get(name) or self.groups.get(name)

    def organisation_for(self, address: str) -> OrganisationSettings | None:
        """The organisation owning the address's domain or a parent domain of it."""
        domain = address.rpartition("@")[2].lower().rstrip(".")
        while domain:
            if org := self._by_domain.get(domain):
                return org
            domain = domain.partition(".")[2]
        return None

    def is_absent(self, agent: AgentSettings, at: datetime) -> bool:
        day = at.astimezone(ZoneInfo(agent.timezone)).date()
        return any(a.start <= day <= a.end for a in agent.absences)

    def on_shift(self, agent: AgentSettings, at: datetime) -> bool:
        """Working now: inside their weekly hours (if any) and not absent."""
        if self.is_absent(agent, at):
            return False
        if agent.hours is None:
            return True
        return self.shift_calendar(agent).is_open(at)

    def next_on_shift(self, agent: AgentSettings, at: datetime) -> datetime:
        """When the agent is next on shift: inside their hours and past any absence."""
        zone = ZoneInfo(agent.timezone)
        calendar = self.shift_calendar(agent)
        moment = at
        for _ in range(len(agent.absences) + 1):  # each round passes at least one absence
            moment = calendar.next_open(moment)
            day = moment.astimezone(zone).date()
            ends = [a.end for a in agent.absences if a.start <= day <= a.end]
            if not ends:
                return moment
            moment = datetime.combine(max(ends) + timedelta(days=1), time(), zone)
        return calendar.next_open(moment)

    def shift_calendar(self, agent: AgentSettings) -> BusinessCalendar:
        """The agent's working hours as a business calendar (cached per agent)."""
        calendar = self._shift_calendars.get(agent.name)
        if calendar is None:
            if agent.hours is None:
                calendar = BusinessCalendar.always_open(agent.timezone)
            else:
                config = CalendarConfig(timezone=agent.timezone, hours=agent.hours)
                calendar = BusinessCalendar(config)
            self._shift_calendars[agent.name] = calendar
        return calendar
