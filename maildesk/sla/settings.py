"""The ``[sla]`` configuration: policies with escalation, selection rules, auto-close.

Pure pydantic models; cross references (calendar, group and agent names) are
checked by :func:`check_sla_references`, which ``Settings`` calls so an error
names the dotted key.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

from pydantic import BaseModel, ConfigDict, Field, model_validator

from maildesk.sla.policy import SlaPolicy, Target

_TEMPLATE = r"^[A-Za-z0-9][\w\-]*$"
# Reassign to the group the ticket's current group escalates to.
ESCALATES_TO = "escalates_to"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NotifyWhom(enum.StrEnum):
    ASSIGNEE = "assignee"
    GROUP = "group"  # the group's list address, else every member
    LEAD = "lead"  # the lead of the ticket's group
    WATCHERS = "watchers"


class Level(enum.StrEnum):
    WARNING = "warning"
    BREACH = "breach"


class EscalationSettings(_Model):
    """What happens at one level (warning or breach) of a policy's targets."""

    targets: tuple[Target, ...] = tuple(Target)  # which targets this level applies to
    notify: tuple[NotifyWhom, ...] = (NotifyWhom.ASSIGNEE,)
    template: str = Field(default="", pattern=rf"^$|{_TEMPLATE}")  # default: sla_<level>
    raise_priority: bool = False  # one step up (low -> normal -> high -> urgent)
    reassign_to_group: str | None = None  # a group name, or "escalates_to"
    add_watchers: tuple[str, ...] = ()  # agent names


class PolicySettings(SlaPolicy):
    """An SLA policy (targets, warning share, pause statuses) with its escalation."""

    warning: EscalationSettings = EscalationSettings()
    breach: EscalationSettings = EscalationSettings(notify=(NotifyWhom.ASSIGNEE, NotifyWhom.LEAD))

    def escalation(self, level: Level) -> EscalationSettings:
        return self.warning if level is Level.WARNING else self.breach


class SelectionRule(_Model):
    """Chooses ``policy`` for a ticket when every condition given matches."""

    policy: str = Field(min_length=1)
    organisation: str | None = None
    tier: str | None = None
    domain: str | None = None  # requester's mail domain (or a parent domain)
    contact: str | None = None  # requester's address
    priority: str | None = Field(default=None, pattern=r"^(low|normal|high|urgent)$")
    category: str | None = None
    queue: str | None = None
    subject_token: str | None = Field(default=None, min_length=1)  # e.g. a coupon code

    @model_validator(mode="after")
    def _has_condition(self) -> SelectionRule:
        fields = self.model_fields_set - {"policy"}
        if not any(getattr(self, f) is not None for f in fields):
            raise ValueError("a rule needs at least one condition besides policy")
        return self


class AutoCloseSettings(_Model):
    """Sweeps that move idle tickets on; a value left unset switches that step off."""

    resolved_close_days: float | None = Field(default=None, gt=0)
    pending_resolve_days: float | None = Field(default=None, gt=0)
    pending_reminder_days: float | None = Field(default=None, gt=0)
    reminder_template: str = Field(default="pending_reminder", pattern=_TEMPLATE)
    resolve_template: str = Field(default="auto_resolved", pattern=_TEMPLATE)

    @model_validator(mode="after")
    def _reminder_first(self) -> AutoCloseSettings:
        remind, resolve = self.pending_reminder_days, self.pending_resolve_days
        if remind is not None and (resolve is None or remind >= resolve):
            raise ValueError("pending_reminder_days needs a larger pending_resolve_days")
        return self


class SlaSettings(_Model):
    enabled: bool = True
    default_policy: str | None = None  # None: tickets no rule matches have no SLA
    pause_statuses: frozenset[str] = frozenset({"pending"})  # policies may override
    policies: tuple[PolicySettings, ...] = ()
    rules: tuple[SelectionRule, ...] = ()
    sweep_interval_seconds: float = Field(default=60.0, gt=0)
    # An escalation that fires more than this after it was due is marked late.
    late_after_seconds: float = Field(default=300.0, ge=0)
    hold_until_working_hours: bool = False
    auto_close: AutoCloseSettings = AutoCloseSettings()

    @model_validator(mode="after")
    def _policies(self) -> SlaSettings:
        names = [p.name for p in self.policies]
        if len(set(names)) != len(names):
            raise ValueError("sla.policies: a policy name appears twice")
        pausable = {"new", "open", "pending"}
        bad = self.pause_statuses - pausable
        if bad:
            raise ValueError(f"sla.pause_statuses: {sorted(bad)[0]!r} cannot pause the clock")
        for i, policy in enumerate(self.policies):
            if bad := policy.pause_statuses - pausable:
                raise ValueError(
                    f"sla.policies.{i}.pause_statuses: {sorted(bad)[0]!r} cannot pause the clock"
                )
        # A policy without its own pause_statuses takes the [sla] one.
        policies = tuple(
            p
            if "pause_statuses" in p.model_fields_set
            else p.model_copy(update={"pause_statuses": self.pause_statuses})
            for p in self.policies
        )
        object.__setattr__(self, "policies", policies)  # frozen: set once, while validating
        return self

    def policy(self, name: str | None) -> PolicySettings | None:
        return next((p for p in self.policies if p.name == name), None)


def named_templates(sla: SlaSettings) -> list[tuple[str, str, str]]:
    """(dotted key, template name, audience) of each template the SLA jobs will render.

    Only templates named explicitly, and auto-close ones only for a step that is on:
    a missing one is found by the sweep, which then sends nothing (a notice
    skipped, a ticket resolved without telling the customer).
    """
    found = []
    for i, policy in enumerate(sla.policies):
        for level in Level:
            if template := policy.escalation(level).template:
                found.append((f"sla.policies.{i}.{level}.template", template, "agent"))
    auto = sla.auto_close
    if auto.pending_reminder_days is not None:
        found.append(("sla.auto_close.reminder_template", auto.reminder_template, "customer"))
    if auto.pending_resolve_days is not None:
        found.append(("sla.auto_close.resolve_template", auto.resolve_template, "customer"))
    return found


def check_sla_references(
    sla: SlaSettings,
    calendars: Iterable[str],
    groups: Iterable[str],
    agents: Iterable[str],
    organisation_policies: Iterable[tuple[str, str | None]],
) -> None:
    """Raise ValueError naming the dotted key of the first unknown reference."""
    known_cal, known_groups, known_agents = set(calendars), set(groups), set(agents)
    policies = {p.name for p in sla.policies}
    for i, policy in enumerate(sla.policies):
        for target in Target:
            spec = policy.target(target)
            if spec is not None and spec.basis == "business" and spec.calendar not in known_cal:
                raise ValueError(
                    f"sla.policies.{i}.{target}.calendar: unknown calendar {spec.calendar!r}"
                    f" (configured: {sorted(known_cal) or 'none'})"
                )
        for level in Level:
            esc = policy.escalation(level)
            group = esc.reassign_to_group
            if group is not None and group != ESCALATES_TO and group not in known_groups:
                raise ValueError(
                    f"sla.policies.{i}.{level}.reassign_to_group: unknown group {group!r}"
                )
            for agent in esc.add_watchers:
                if agent not in known_agents:
                    raise ValueError(
                        f"sla.policies.{i}.{level}.add_watchers: unknown agent {agent!r}"
                    )
    if sla.default_policy is not None and sla.default_policy not in policies:
        raise ValueError(f"sla.default_policy: unknown policy {sla.default_policy!r}")
    for i, rule in enumerate(sla.rules):
        if rule.policy not in policies:
            raise ValueError(f"sla.rules.{i}.policy: unknown policy {rule.policy!r}")
    for i, (org, name) in enumerate(organisation_policies):  # in [[organisations]] order
        if name is not None and name not in policies:
            raise ValueError(
                f"organisations.{i}.sla_policy: {org!r} has unknown sla_policy {name!r}"
            )
