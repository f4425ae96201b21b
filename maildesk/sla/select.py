"""Which SLA policy applies to a ticket: pure, over facts the caller gathered.

Order: a policy set on the ticket itself (``tickets.sla_policy``, by an agent
or a routing rule) -> the first ``[[sla.rules]]`` entry whose conditions all
match -> the requester organisation's ``sla_policy`` -> ``sla.default_policy``.
"""

from __future__ import annotations

from dataclasses import dataclass

from maildesk.sla.settings import PolicySettings, SelectionRule, SlaSettings


@dataclass(frozen=True, slots=True)
class TicketFacts:
    """What policy selection looks at (lower-cased addresses)."""

    explicit_policy: str | None
    requester: str | None
    organisation: str | None
    tier: str | None
    organisation_policy: str | None
    priority: str
    category: str | None
    queue: str | None
    subject: str


@dataclass(frozen=True, slots=True)
class Selection:
    policy: PolicySettings
    reason: str


def _domain_matches(address: str | None, domain: str) -> bool:
    if not address:
        return False
    host = address.rpartition("@")[2].lower()
    domain = domain.lower().lstrip(".")
    return host == domain or host.endswith("." + domain)


def rule_matches(rule: SelectionRule, facts: TicketFacts) -> bool:
    checks = (
        rule.organisation is None or rule.organisation == facts.organisation,
        rule.tier is None or rule.tier == facts.tier,
        rule.domain is None or _domain_matches(facts.requester, rule.domain),
        rule.contact is None or rule.contact.lower() == (facts.requester or ""),
        rule.priority is None or rule.priority == facts.priority,
        rule.category is None or rule.category == facts.category,
        rule.queue is None or rule.queue == facts.queue,
        rule.subject_token is None or rule.subject_token.lower() in facts.subject.lower(),
    )
    return all(checks)


def select_policy(sla: SlaSettings, facts: TicketFacts) -> Selection | None:
    """The policy for a ticket and why; None when no policy applies."""
    explicit = sla.policy(facts.explicit_policy)
    if explicit is not None:
        return Selection(explicit, "set on the ticket")
    for index, rule in enumerate(sla.rules):
        if rule_matches(rule, facts):
            policy = sla.policy(rule.policy)
            if policy is not None:
                return Selection(policy, f"sla.rules.{index}")
    org_policy = sla.policy(facts.organisation_policy)
    if org_policy is not None:
        return Selection(org_policy, f"organisation {facts.organisation}")
    default = sla.policy(sla.default_policy)
    if default is not None:
        return Selection(default, "default policy")
    return None
