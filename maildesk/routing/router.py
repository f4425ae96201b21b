"""The route stage: rules, then the learned models, decided before apply writes.

:class:`Router` holds what ops may change while the daemon runs (the rules,
reloaded on SIGHUP keeping the last good set on error; the model files,
reloaded when they change). :func:`route_stage` only reads and stores its
decision on the context; :func:`apply_route` (called by the one writer)
puts it on the ticket, then assigns.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session

from maildesk.config import Settings
from maildesk.people import Directory
from maildesk.pipeline.deadline import DeadlineExceeded, deadline
from maildesk.routing.facts import build_facts, business_calendar
from maildesk.routing.match import Facts, RouteResult, evaluate
from maildesk.routing.models import Guess, ModelSlot, model_slots
from maildesk.routing.rules import KnownNames, RuleHolder, RulesError, RuleSet

if TYPE_CHECKING:
    from maildesk.pipeline.context import MessageContext
    from maildesk.pipeline.stages import StageDeps

log = logging.getLogger("maildesk.routing")
DEFAULT_RULES_DIR = Path("rules")


def known_names(settings: Settings, templates_dir: Path | None = None) -> KnownNames:
    """What the rules may name: the configured agents, groups, policies ... (none if none).

    Templates are checked only when ``templates_dir`` is given.
    """
    templates: frozenset[str] | None = None
    if templates_dir is not None:
        templates = frozenset(
            p.name.split(".customer.")[0] for p in templates_dir.glob("*.customer.*.j2")
        )
    return KnownNames(
        agents=frozenset(a.name for a in settings.agents),
        groups=frozenset(g.name for g in settings.groups),
        sla_policies=frozenset(p.name for p in settings.sla.policies),
        templates=templates,
        organisations=frozenset(o.name for o in settings.organisations),
        tiers=frozenset(o.tier for o in settings.organisations if o.tier),
    )


def rules_dir(settings: Settings) -> Path:
    return settings.routing.rules_dir or DEFAULT_RULES_DIR


class RulesTimeout(Exception):
    """The rules took longer than ``routing.rules_time_limit_seconds`` on one message."""


@dataclass
class RouteDecision:
    """The route stage's result for one message."""

    facts: Facts
    result: RouteResult
    directory: Directory
    guesses: list[Guess] = field(default_factory=list)


class Router:
    def __init__(
        self,
        settings: Settings,
        directory: Callable[[], Directory],
        templates_dir: Path | None = None,
    ) -> None:
        self.settings = settings
        self._directory = directory
        self._templates_dir = templates_dir
        self.holder = RuleHolder(rules_dir(settings), known_names(settings, templates_dir))
        self.calendar = business_calendar(settings)
        self.models: dict[str, ModelSlot] = model_slots(settings)

    @property
    def directory(self) -> Directory:
        return self._directory()

    @property
    def rules(self) -> RuleSet:
        return self.holder.current

    def reload(self) -> RulesError | None:
        """Load the rules again; on error keep the last good set and log why.

        An error on the first load is only returned: there are no last good
        rules, and whoever routes mail refuses to start with it (exit 78).
        """
        self.holder.known = known_names(self.settings, self._templates_dir)  # templates change too
        had_rules = self.holder.loaded
        error = self.holder.reload()
        if error is not None:
            if had_rules:
                log.error("rules not reloaded, keeping the last good rules: %s", error)
        else:
            log.info("rules loaded: %d from %s", len(self.rules.rules), self.holder.folder)
        return error

    def decide(self, ctx: MessageContext, *, follow_up: bool, automated: bool) -> RouteDecision:
        facts = build_facts(
            ctx.message,
            envelope_to=ctx.envelope_to,
            settings=self.settings,
            directory=self.directory,
            calendar=self.calendar,
            at=ctx.received_at,
            spam=ctx.spam,
            follow_up=follow_up,
        )
        limit = self.settings.routing.rules_time_limit_seconds
        try:
            with deadline(limit):  # a backtracking regex must not hold the worker
                result = evaluate(self.rules, facts)
        except DeadlineExceeded:
            raise RulesTimeout(f"the rules took longer than the {limit:g} s time limit") from None
        decision = RouteDecision(facts, result, self.directory)
        if not follow_up and not automated:
            text = f"{facts.subject}\n{facts.body}"
            for name, slot in self.models.items():
                if name in result.fields:
                    continue  # a rule decided: the model is not asked
                guess = slot.guess(text)
                if guess is not None:
                    decision.guesses.append(guess)
        return decision


def route_stage(ctx: MessageContext, _session: Session, deps: StageDeps) -> None:
    """Rules and models for a message that starts a ticket (or a follow-up rules ask for)."""
    router: Router | None = getattr(deps, "router", None)
    ctx.route = None
    if router is None or not deps.settings.routing.enabled or ctx.thread is None:
        return None
    verdict = ctx.verdict
    automated = verdict is not None and not verdict.answerable
    follow_up = ctx.thread.ticket_id is not None
    try:
        ctx.route = router.decide(ctx, follow_up=follow_up, automated=automated)
    except Exception as exc:  # a routing bug must not lose the message: it goes unrouted
        log.exception("intake=%s routing failed", ctx.intake_id)
        ctx.note("routing", f"not routed: {type(exc).__name__}: {exc}")
    return None
