"""Evaluate a rule set against the facts of one message. Pure: no I/O, no clock.

Files are visited in order; within a file every matching rule applies (``match =
"all"``, the default) or only the first (``match = "first"``). Later rules
override earlier ones for single-valued fields; tags and watchers accumulate. A
matching rule with ``stop = true`` ends the evaluation. A ``queue`` condition
sees the queue as set so far (address default, then earlier rules).
"""

from __future__ import annotations

import copy
import fnmatch
import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from maildesk.routing.fold import fold_text
from maildesk.routing.language import detect_language
from maildesk.routing.rules import Condition, MatchMode, Rule, RuleSet

BODY_LIMIT = 100_000  # characters of body a regex or keyword sees


@dataclass
class Facts:
    """What rules can test about one message (built by :mod:`maildesk.routing.facts`).

    Treated as read-only; :func:`evaluate` works on a copy (its queue moves as rules set it).
    """

    recipients: tuple[str, ...] = ()
    queue: str | None = None
    sender: str = ""
    sender_forged: str | None = None  # our MTA found the From not the sender's own (dmarc=fail)
    organisation: str | None = None
    tier: str | None = None
    subject: str = ""
    body: str = ""
    headers: tuple[tuple[str, str], ...] = ()  # (lower-case name, value)
    language_hint: str | None = None  # given: used as is; else detected when a rule asks
    attachments: tuple[tuple[str, str], ...] = ()  # (filename, content type)
    spam_band: str = "unknown"
    business_hours: bool = True
    follow_up: bool = False  # joins an existing ticket

    @cached_property
    def language(self) -> str | None:
        """Detected only when a rule tests it (a few stopword counts, but per message)."""
        if self.language_hint is not None:
            return self.language_hint
        return detect_language(f"{self.subject}\n{self.body}")

    @property
    def sender_domain(self) -> str:
        return self.sender.rpartition("@")[2]

    @cached_property
    def keyword_subject(self) -> str:
        return fold_text(self.subject)

    @cached_property
    def keyword_body(self) -> str:
        """Folded once per message, however many keyword conditions read it."""
        return fold_text(self.body[:BODY_LIMIT])


@dataclass(frozen=True)
class Matched:
    rule: Rule
    reasons: tuple[str, ...]


SCALARS = ("queue", "category", "priority", "type", "sla_policy", "group", "agent")


@dataclass
class RouteResult:
    """What the rules decided, and which rule decided each field."""

    matched: list[Matched] = field(default_factory=list)
    fields: dict[str, str] = field(default_factory=dict)
    set_by: dict[str, str] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    watchers: dict[str, str] = field(default_factory=dict)  # agent -> rule
    ack_template: str | None = None
    ack_suppressed_by: str | None = None
    escalate: bool | str = False
    escalate_by: str | None = None
    stopped_by: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "matched": [m.rule.name for m in self.matched],
            "fields": dict(self.fields),
            "set_by": dict(self.set_by),
            "tags": list(self.tags),
            "watchers": list(self.watchers),
            "ack_template": self.ack_template,
            "ack_suppressed_by": self.ack_suppressed_by,
            "escalate": self.escalate,
            "stopped_by": self.stopped_by,
        }


def evaluate(rules: RuleSet, facts: Facts) -> RouteResult:
    result = RouteResult()
    current = copy.copy(facts)  # keeps a language already detected
    for rule_file in rules.files:
        for rule in rule_file.rules:
            if facts.follow_up and not rule.follow_ups:
                continue
            ok, reasons = check(rule.when, current)
            if not ok:
                continue
            result.matched.append(Matched(rule, tuple(reasons)))
            _apply(rule, result)
            current.queue = result.fields.get("queue", current.queue)
            if rule.stop:
                result.stopped_by = rule.name
                return result
            if rule_file.mode is MatchMode.FIRST:
                break
    return result


def _apply(rule: Rule, result: RouteResult) -> None:
    then = rule.then
    for name in SCALARS:
        value = getattr(then, name)
        if value is not None:
            result.fields[name] = value
            result.set_by[name] = rule.name
    for tag in then.tags:
        if tag not in result.tags:
            result.tags.append(tag)
    for agent in then.watchers:
        result.watchers.setdefault(agent, rule.name)
    if then.ack is False:
        result.ack_suppressed_by, result.ack_template = rule.name, None
    if then.ack_template is not None:
        result.ack_template, result.ack_suppressed_by = then.ack_template, None
    if then.escalate:
        result.escalate, result.escalate_by = then.escalate, rule.name


def check(cond: Condition, facts: Facts) -> tuple[bool, list[str]]:
    """Whether the condition holds, and the evidence (why it holds)."""
    if cond.op == "all":
        reasons: list[str] = []
        for child in cond.children:
            ok, why = check(child, facts)
            if not ok:
                return False, []
            reasons += why
        return True, reasons or ["matches every message"]
    if cond.op == "any":
        for child in cond.children:
            ok, why = check(child, facts)
            if ok:
                return True, why
        return False, []
    if cond.op == "not":
        ok, _why = check(cond.children[0], facts)
        return (False, []) if ok else (True, [f"not ({_describe(cond.children[0])})"])
    why_leaf = _leaf(cond.op, cond.value, facts)
    return (why_leaf is not None), ([why_leaf] if why_leaf is not None else [])


def _leaf(op: str, value: Any, f: Facts) -> str | None:
    """Evidence string when the leaf test holds, else None."""
    if op == "to":
        hit = next((r for r in f.recipients if r in value), None)
        return f"sent to {hit}" if hit else None
    if op == "queue":
        return f"queue is {f.queue}" if f.queue in value else None
    if op in ("from", "from_domain") and f.sender_forged:
        return None  # a forged From earns no sender's routing (VIP, direct agent)
    if op == "from":
        hit = next((p for p in value if fnmatch.fnmatchcase(f.sender, p)), None)
        return f"sender {f.sender} matches {hit}" if hit else None
    if op == "from_domain":
        dom = f.sender_domain
        hit = next((d for d in value if dom == d or dom.endswith("." + d)), None)
        return f"sender domain {dom} is {hit}" if hit else None
    if op == "organisation":
        return f"organisation is {f.organisation}" if f.organisation in value else None
    if op == "tier":
        return f"customer tier is {f.tier}" if f.tier in value else None
    if op == "subject_regex":
        m = value.search(f.subject)
        return f"subject matches /{value.pattern}/ ({m.group(0)!r})" if m else None
    if op == "body_regex":
        m = value.search(f.body[:BODY_LIMIT])
        return f"body matches /{value.pattern}/ ({m.group(0)[:60]!r})" if m else None
    if op == "header":
        name, pattern = value
        for hname, hvalue in f.headers:
            if hname == name and (m := pattern.search(hvalue)):
                return f"header {name} matches /{pattern.pattern}/ ({m.group(0)[:60]!r})"
        return None
    if op in ("subject_keywords", "body_keywords", "keywords"):
        texts = {"subject_keywords": [f.keyword_subject], "body_keywords": [f.keyword_body]}
        for text in texts.get(op, [f.keyword_subject, f.keyword_body]):
            hit = _keyword(text, value)
            if hit:
                where = {"subject_keywords": "subject", "body_keywords": "body"}.get(op, "text")
                return f"{where} contains {hit!r}"
        return None
    if op == "language":
        return f"language is {f.language}" if f.language in value else None
    if op == "has_attachment":
        has = bool(f.attachments)
        return (
            (f"has {len(f.attachments)} attachment(s)" if has else "no attachment")
            if (has == value)
            else None
        )
    if op == "attachment_type":
        for filename, ctype in f.attachments:
            for pattern in value:
                if _type_matches(pattern, filename, ctype):
                    return f"attachment {filename or '(unnamed)'} ({ctype}) is {pattern}"
        return None
    if op == "spam_band":
        return f"spam band is {f.spam_band}" if f.spam_band in value else None
    if op == "business_hours":
        if f.business_hours == value:
            return "within business hours" if value else "outside business hours"
        return None
    if op == "subject_token":
        for token in f.subject.split():
            token = token.strip(".,;:()[]<>\"'")
            if value.fullmatch(token):
                return f"subject carries token {token!r}"
        return None
    raise AssertionError(f"unknown condition {op}")


def _keyword(folded: str, words: tuple[str, ...]) -> str | None:
    for word in words:
        if re.search(r"(?<!\w)" + re.escape(word) + r"(?!\w)", folded):
            return word
    return None


def _type_matches(pattern: str, filename: str, ctype: str) -> bool:
    if pattern.startswith("."):
        return filename.lower().endswith(pattern)
    return fnmatch.fnmatchcase(ctype.lower(), pattern)


def _describe(cond: Condition) -> str:
    if cond.children:
        inner = ", ".join(_describe(c) for c in cond.children)
        return f"{cond.op}: {inner}"
    value = cond.value
    if isinstance(value, re.Pattern):
        value = f"/{value.pattern}/"
    elif isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], re.Pattern):
        value = f"{value[0]} /{value[1].pattern}/"
    return f"{cond.op} = {value}"
