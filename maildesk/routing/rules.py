"""Routing rules: read ``rules/*.toml``, validate, and build an immutable rule set.

Pure apart from reading the files: no database, no clock. Files are read in
file-name order and rules in file order. Every problem raises
:class:`RulesError` naming the file, the rule and the key, so ops can find it.
The format and the match semantics are documented in ``rules/README.md``.
"""

from __future__ import annotations

import enum
import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from maildesk.config import ConfigError
from maildesk.routing.fold import fold_text

PRIORITIES = ("low", "normal", "high", "urgent")
SPAM_BANDS = ("ham", "unsure", "spam", "unknown")
_NAME = re.compile(r"^[A-Za-z0-9][\w.\-]*$")
_TEMPLATE = re.compile(r"^[a-z0-9][a-z0-9_\-]*$")
_LANGUAGE = re.compile(r"^[a-z]{2}$")
MAX_PATTERN = 1000


class RulesError(ConfigError, ValueError):
    """A rules file problem: ``file: rule NAME: key: reason``.

    Bad configuration like any other: the CLI exits 78 (EX_CONFIG) with it.
    ``key`` is the key within the rule (``then.agent``).
    """

    def __init__(self, file: str, rule: str, key: str, reason: str) -> None:
        where = [f"rule {rule!r}"] if rule else []
        if key:
            where.append(key)
        super().__init__(file, ": ".join(where), reason)
        self.rule, self.key = rule, key


class MatchMode(enum.StrEnum):
    ALL = "all"  # every matching rule of the file applies (later ones override)
    FIRST = "first"  # the first matching rule of the file ends that file


@dataclass(frozen=True)
class Condition:
    """One node of a condition tree: a leaf test or a combinator (all/any/not)."""

    op: str  # a leaf key, or "all" / "any" / "not"
    value: Any = None  # the leaf's validated value
    children: tuple[Condition, ...] = ()


@dataclass(frozen=True)
class Actions:
    queue: str | None = None
    category: str | None = None
    priority: str | None = None
    type: str | None = None
    tags: tuple[str, ...] = ()
    sla_policy: str | None = None
    group: str | None = None
    agent: str | None = None
    watchers: tuple[str, ...] = ()
    ack_template: str | None = None
    ack: bool | None = None  # False suppresses the acknowledgement
    escalate: bool | str = False  # True: the group's escalates_to; a name: that group


@dataclass(frozen=True)
class Rule:
    name: str
    file: str
    when: Condition
    then: Actions
    stop: bool = False
    follow_ups: bool = False  # also for replies that join an existing ticket
    description: str = ""


@dataclass(frozen=True)
class RuleFile:
    path: str
    mode: MatchMode
    rules: tuple[Rule, ...]


@dataclass(frozen=True)
class RuleSet:
    files: tuple[RuleFile, ...] = ()
    source: str = ""  # the folder they came from

    @property
    def rules(self) -> tuple[Rule, ...]:
        return tuple(r for f in self.files for r in f.rules)


@dataclass(frozen=True)
class KnownNames:
    """Names rules may refer to; None means "not checked".

    An empty set is a configuration that has none: every name is unknown
    (a rule's agent with no ``[[agents]]`` configured would be given tickets).
    """

    agents: frozenset[str] | None = None
    groups: frozenset[str] | None = None
    sla_policies: frozenset[str] | None = None
    templates: frozenset[str] | None = None
    organisations: frozenset[str] | None = None
    tiers: frozenset[str] | None = None


def _unknown(what: str, name: str, allowed: frozenset[str], kind: str) -> str:
    known = f"known: {', '.join(sorted(allowed))}" if allowed else f"no {kind} configured"
    return f"unknown {what} {name!r} ({known})"


LEAF_KEYS = frozenset(
    {
        "to",
        "queue",
        "from",
        "from_domain",
        "organisation",
        "tier",
        "subject_regex",
        "body_regex",
        "subject_keywords",
        "body_keywords",
        "keywords",
        "header",
        "language",
        "has_attachment",
        "attachment_type",
        "spam_band",
        "business_hours",
        "subject_token",
    }
)
_RULE_KEYS = frozenset({"name", "description", "when", "then", "stop", "follow_ups"})
_FILE_KEYS = frozenset({"match", "rule"})
_ACTION_KEYS = frozenset(Actions.__dataclass_fields__)


@dataclass
class _Where:
    file: str
    rule: str = ""
    known: KnownNames = field(default_factory=KnownNames)

    def error(self, key: str, reason: str) -> RulesError:
        return RulesError(self.file, self.rule, key, reason)


def load_rules(folder: Path, known: KnownNames | None = None) -> RuleSet:
    """All ``*.toml`` in ``folder`` (a missing folder is an empty rule set)."""
    known = known or KnownNames()
    if not folder.is_dir():
        return RuleSet((), str(folder))
    files = []
    seen: dict[str, str] = {}
    for path in sorted(folder.glob("*.toml"), key=lambda p: p.name):
        rule_file = load_file(path, known)
        for rule in rule_file.rules:
            if rule.name in seen:
                raise RulesError(
                    str(path), rule.name, "name", f"rule name already used in {seen[rule.name]}"
                )
            seen[rule.name] = str(path)
        files.append(rule_file)
    return RuleSet(tuple(files), str(folder))


def load_file(path: Path, known: KnownNames | None = None) -> RuleFile:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RulesError(str(path), "", "", f"cannot read: {exc}") from None
    return parse_rules(text, str(path), known or KnownNames())


def parse_rules(text: str, file: str, known: KnownNames | None = None) -> RuleFile:
    known = known or KnownNames()
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RulesError(file, "", "", f"not valid TOML: {exc}") from None
    where = _Where(file)
    for key in raw:
        if key not in _FILE_KEYS:
            raise where.error(key, "unknown key (expected [[rule]] tables and optional match)")
    mode_text = raw.get("match", "all")
    try:
        mode = MatchMode(mode_text)
    except ValueError:
        raise where.error("match", f"must be 'all' or 'first', not {mode_text!r}") from None
    tables = raw.get("rule", [])
    if not isinstance(tables, list):
        raise where.error("rule", "must be an array of tables ([[rule]])")
    rules = []
    names: set[str] = set()
    for index, table in enumerate(tables, 1):
        where = _Where(file, f"#{index}", known)
        if not isinstance(table, dict):
            raise where.error("rule", "must be a table")
        rule = _rule(table, where, known)
        if rule.name in names:
            raise where.error("name", "appears twice in this file")
        names.add(rule.name)
        rules.append(rule)
    return RuleFile(file, mode, tuple(rules))


def _rule(table: dict[str, Any], where: _Where, known: KnownNames) -> Rule:
    name = table.get("name")
    if not isinstance(name, str) or not _NAME.match(name) or len(name) > 120:
        raise where.error("name", "every rule needs a name (letters, digits, _ . -)")
    where.rule = name
    for key in table:
        if key not in _RULE_KEYS:
            raise where.error(key, "unknown key")
    if "when" not in table:
        raise where.error("when", "missing (use when = {} to match every message)")
    when = _condition(table["when"], where, "when")
    then_raw = table.get("then", {})
    if not isinstance(then_raw, dict):
        raise where.error("then", "must be a table")
    then = _actions(then_raw, where, known)
    stop = _bool(table.get("stop", False), where, "stop")
    follow_ups = _bool(table.get("follow_ups", False), where, "follow_ups")
    description = table.get("description", "")
    if not isinstance(description, str):
        raise where.error("description", "must be a string")
    return Rule(name, where.file, when, then, stop, follow_ups, description)


def _condition(raw: Any, where: _Where, key: str) -> Condition:
    """A table: each key a test or combinator; several keys in one table must all hold."""
    if not isinstance(raw, dict):
        raise where.error(key, "a condition must be a table")
    parts = [_one(k, v, where, f"{key}.{k}") for k, v in raw.items()]
    if len(parts) == 1:
        return parts[0]
    return Condition("all", children=tuple(parts))  # empty: always true


def _one(op: str, value: Any, where: _Where, key: str) -> Condition:
    if op in ("all", "any"):
        if not isinstance(value, list) or not value:
            raise where.error(key, "must be a non-empty array of condition tables")
        return Condition(
            op, children=tuple(_condition(v, where, f"{key}[{i}]") for i, v in enumerate(value))
        )
    if op == "not":
        return Condition("not", children=(_condition(value, where, key),))
    if op not in LEAF_KEYS:
        raise where.error(key, f"unknown condition (known: {', '.join(sorted(LEAF_KEYS))})")
    return Condition(op, _leaf_value(op, value, where, key))


def _leaf_value(op: str, value: Any, where: _Where, key: str) -> Any:
    if op in ("has_attachment", "business_hours"):
        return _bool(value, where, key)
    if op in ("subject_regex", "body_regex", "subject_token"):
        return _regex(value, where, key)
    if op == "header":
        if not isinstance(value, dict) or set(value) != {"name", "regex"}:
            raise where.error(key, "must be a table { name = ..., regex = ... }")
        name = value["name"]
        if not isinstance(name, str) or not re.fullmatch(r"[!-9;-~]+", name):
            raise where.error(f"{key}.name", "must be a header field name")
        return (name.lower(), _regex(value["regex"], where, f"{key}.regex"))
    words = _strings(value, where, key)
    if op in ("subject_keywords", "body_keywords", "keywords"):
        return tuple(fold_text(w) for w in words)
    if op == "to":
        return tuple(w.lower() for w in words)
    if op == "from":
        return tuple(w.lower() for w in words)
    if op == "from_domain":
        return tuple(w.lower().lstrip("@.") for w in words)
    if op == "language":
        for word in words:
            if not _LANGUAGE.match(word):
                raise where.error(key, f"{word!r} is not a two-letter language code")
        return words
    if op == "spam_band":
        for word in words:
            if word not in SPAM_BANDS:
                raise where.error(key, f"{word!r} is not one of {', '.join(SPAM_BANDS)}")
        return words
    if op == "attachment_type":
        return tuple(w.lower() for w in words)
    if op in ("organisation", "tier"):
        allowed = where.known.organisations if op == "organisation" else where.known.tiers
        for word in words:
            if allowed is not None and word not in allowed:
                raise where.error(key, _unknown(op, word, allowed, f"{op}s"))
    return words  # queue, organisation, tier: exact names


def _actions(raw: dict[str, Any], where: _Where, known: KnownNames) -> Actions:
    values: dict[str, Any] = {}
    for key, value in raw.items():
        full = f"then.{key}"
        if key not in _ACTION_KEYS:
            raise where.error(full, f"unknown action (known: {', '.join(sorted(_ACTION_KEYS))})")
        if key in ("tags", "watchers"):
            values[key] = _strings(value, where, full)
        elif key == "ack":
            values[key] = _bool(value, where, full)
        elif key == "escalate":
            if not isinstance(value, bool | str):
                raise where.error(full, "must be true or a group name")
            values[key] = value
        else:
            if not isinstance(value, str) or not value.strip() or len(value) > 120:
                raise where.error(full, "must be a non-empty string of at most 120 characters")
            values[key] = value.strip()
    actions = Actions(**values)
    _check_names(actions, where, known)
    return actions


def _check_names(actions: Actions, where: _Where, known: KnownNames) -> None:
    if actions.priority is not None and actions.priority not in PRIORITIES:
        raise where.error("then.priority", f"must be one of {', '.join(PRIORITIES)}")
    if actions.ack_template is not None and not _TEMPLATE.match(actions.ack_template):
        raise where.error("then.ack_template", "must be a template name (a-z, 0-9, _ -)")
    if actions.ack is False and actions.ack_template is not None:
        raise where.error("then.ack", "ack = false and ack_template contradict each other")
    if actions.agent is not None and actions.group is None and actions.escalate:
        raise where.error("then.escalate", "cannot escalate a ticket given to one agent")
    checks: list[tuple[str, Iterable[str], frozenset[str] | None, str]] = [
        ("then.agent", [actions.agent] if actions.agent else [], known.agents, "agents"),
        ("then.watchers", actions.watchers, known.agents, "agents"),
        ("then.group", [actions.group] if actions.group else [], known.groups, "groups"),
        (
            "then.escalate",
            [actions.escalate] if isinstance(actions.escalate, str) else [],
            known.groups,
            "groups",
        ),
        (
            "then.sla_policy",
            [actions.sla_policy] if actions.sla_policy else [],
            known.sla_policies,
            "SLA policies",
        ),
        (
            "then.ack_template",
            [actions.ack_template] if actions.ack_template else [],
            known.templates,
            "customer templates",
        ),
    ]
    for key, names, allowed, kind in checks:
        if allowed is None:
            continue
        for name in names:
            if name not in allowed:
                raise where.error(key, _unknown("name", name, allowed, kind))


def _bool(value: Any, where: _Where, key: str) -> bool:
    if not isinstance(value, bool):
        raise where.error(key, "must be true or false")
    return value


def _strings(value: Any, where: _Where, key: str) -> tuple[str, ...]:
    """A string or a non-empty array of non-empty strings."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        raise where.error(key, "must be a string or a non-empty array of strings")
    for item in items:
        if not isinstance(item, str) or not item.strip():
            raise where.error(key, "must contain non-empty strings only")
    return tuple(i.strip() for i in items)


def _regex(value: Any, where: _Where, key: str) -> re.Pattern[str]:
    if not isinstance(value, str) or not value:
        raise where.error(key, "must be a non-empty regular expression string")
    if len(value) > MAX_PATTERN:
        raise where.error(key, f"longer than {MAX_PATTERN} characters")
    try:
        return re.compile(value, re.IGNORECASE)
    except re.error as exc:
        raise where.error(key, f"bad regular expression: {exc}") from None


@dataclass
class RuleHolder:
    """The live rule set; a failed reload keeps the last good one.

    ``loaded``: a rule set was ever loaded. Until then a failed load leaves no
    rules at all, which is no state to route mail in: at start it is a
    configuration error (exit 78), not a set of last good rules to keep.
    """

    folder: Path
    known: KnownNames = field(default_factory=KnownNames)
    current: RuleSet = field(default_factory=RuleSet)
    last_error: RulesError | None = None
    loaded: bool = False

    def reload(self) -> RulesError | None:
        try:
            self.current = load_rules(self.folder, self.known)
        except RulesError as exc:
            self.last_error = exc
            return exc
        self.last_error = None
        self.loaded = True
        return None
