"""``maildesk rules check|test``: validate the rules folder, or dry-run one message.

Neither touches the database: ``test`` prints which rules matched and why,
the resulting fields and what the learned models would say.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path

import click

from maildesk.config import EX_CONFIG, ConfigError, Settings, load_settings
from maildesk.outbound.templates import default_templates_dir
from maildesk.people import Directory
from maildesk.pipeline.context import MessageContext
from maildesk.pipeline.parse import ParseError, parse_message
from maildesk.routing.router import Router, RulesTimeout
from maildesk.routing.router import rules_dir as configured_rules_dir
from maildesk.routing.rules import RuleSet
from maildesk.terminal import printable

EX_DATAERR = 65


def _settings(ctx: click.Context) -> Settings:
    obj = ctx.obj or {}
    try:
        return load_settings(obj.get("config"), obj.get("data_dir"))
    except ConfigError as exc:
        click.echo(f"maildesk: {exc}", err=True)
        sys.exit(EX_CONFIG)


def _router(settings: Settings, folder: Path | None) -> tuple[Router, RuleSet]:
    if folder is not None:
        settings = settings.model_copy(
            update={"routing": settings.routing.model_copy(update={"rules_dir": folder})}
        )
    directory = Directory.from_settings(settings)
    router = Router(settings, lambda: directory, default_templates_dir(settings.templates_dir))
    error = router.holder.reload()
    if error is not None:  # bad configuration, as `maildesk run` says at start
        click.echo(f"maildesk: {error}", err=True)
        sys.exit(EX_CONFIG)
    return router, router.rules


def _arrival_time(_ctx: click.Context, _param: click.Parameter, value: str | None) -> datetime:
    """``--at``: an ISO 8601 time (UTC when it names no offset); now when not given."""
    if value is None:
        return datetime.now(UTC)
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not an ISO 8601 time (such as 2024-05-06T09:30:00+02:00)"
        ) from None
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


_dir_option = click.option(
    "--rules-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Rules folder (default: [routing].rules_dir, else ./rules).",
)


@click.group("rules")
def rules() -> None:
    """Routing rules: validate them or try them on a message."""


@rules.command("check")
@_dir_option
@click.pass_context
def check_command(ctx: click.Context, rules_dir: Path | None) -> None:
    """Validate every rules file; exit 78 naming file, rule and key on the first error."""
    settings = _settings(ctx)
    _unused, rule_set = _router(settings, rules_dir)
    for rule_file in rule_set.files:
        click.echo(f"{rule_file.path}: {len(rule_file.rules)} rules (match = {rule_file.mode})")
    folder = rules_dir or configured_rules_dir(settings)
    click.echo(f"ok: {len(rule_set.rules)} rules in {folder}")


@rules.command("test")
@click.argument("message", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_dir_option
@click.option("--to", "rcpt", multiple=True, help="Envelope recipient (repeatable).")
@click.option(
    "--at",
    default=None,
    metavar="TIME",
    callback=_arrival_time,
    help="Time of arrival, ISO 8601 (default: now).",
)
@click.option("--follow-up", is_flag=True, help="Treat it as a reply joining a ticket.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
def test_command(
    ctx: click.Context,
    message: Path,
    rules_dir: Path | None,
    rcpt: tuple[str, ...],
    at: datetime,
    follow_up: bool,
    as_json: bool,
) -> None:
    """Show which rules MESSAGE matches, why, and the resulting fields. Writes nothing."""
    settings = _settings(ctx)
    router, _rules = _router(settings, rules_dir)
    raw = message.read_bytes()
    context = MessageContext(
        intake_id=0, raw=raw, envelope_from=None, envelope_to=rcpt, source="file", received_at=at
    )
    try:
        context.parsed = parse_message(raw, time_limit=settings.pipeline.parse_time_limit_seconds)
    except ParseError as exc:
        click.echo(f"maildesk: {message}: cannot parse: {exc.reason}", err=True)
        sys.exit(EX_DATAERR)
    try:
        decision = router.decide(context, follow_up=follow_up, automated=False)
    except RulesTimeout as exc:
        click.echo(f"maildesk: {message}: {exc}", err=True)
        sys.exit(EX_DATAERR)
    result = decision.result
    guesses = [
        {
            "field": g.field,
            "label": g.label,
            "confidence": round(g.confidence, 4),
            "model_version": g.version,
            "applied": g.label is not None and g.confidence >= settings.routing.min_confidence,
        }
        for g in decision.guesses
    ]
    if as_json:
        out = result.as_dict()
        out["why"] = {m.rule.name: list(m.reasons) for m in result.matched}
        out["facts"] = {
            "sender": decision.facts.sender,
            "organisation": decision.facts.organisation,
            "tier": decision.facts.tier,
            "language": decision.facts.language,
            "spam_band": decision.facts.spam_band,
            "business_hours": decision.facts.business_hours,
            "queue": decision.facts.queue,
        }
        out["models"] = guesses
        click.echo(json.dumps(out, indent=2, default=str))
        return
    facts = decision.facts
    click.echo(
        printable(
            f"message: {message.name}: from {facts.sender or '-'}, "
            f"language {facts.language or '?'}, organisation {facts.organisation or '-'}, "
            f"{'in' if facts.business_hours else 'outside'} business hours"
        )
    )
    if not result.matched:
        click.echo("no rule matched")
    for matched in result.matched:
        click.echo(f"matched {matched.rule.name} ({matched.rule.file})")
        for reason in matched.reasons:
            click.echo(printable(f"  because {reason}"))
    if result.stopped_by:
        click.echo(f"stopped by {result.stopped_by}")
    for name, value in result.fields.items():
        click.echo(f"{name} = {value}    (rule {result.set_by[name]})")
    if result.tags:
        click.echo(f"tags += {', '.join(result.tags)}")
    if result.watchers:
        click.echo(f"watchers += {', '.join(result.watchers)}")
    if result.ack_suppressed_by:
        click.echo(f"acknowledgement suppressed (rule {result.ack_suppressed_by})")
    elif result.ack_template:
        click.echo(f"acknowledgement template = {result.ack_template}")
    if result.escalate:
        click.echo(f"escalate = {result.escalate}    (rule {result.escalate_by})")
    for guess in guesses:
        state = "applied" if guess["applied"] else "not applied"
        click.echo(
            f"model {guess['model_version']}: {guess['field']} {guess['label']} "
            f"({guess['confidence']:.2f}, {state} at {settings.routing.min_confidence:.2f})"
        )
