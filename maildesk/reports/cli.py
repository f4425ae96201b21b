"""`maildesk report sla|agents|categories|volume --from --to --format ...`."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import click

from maildesk.reports.data import collect
from maildesk.reports.render import Format, Kind, render, sections
from maildesk.sla.sweep import build_calendars

EX_CANTCREAT = 73  # sysexits: the output file cannot be created


def _day_start(value: date) -> datetime:
    return datetime.combine(value, time(0), tzinfo=UTC)


@click.command("report")
@click.argument("kind", type=click.Choice([k.value for k in Kind]))
@click.option(
    "--from",
    "start",
    type=click.DateTime(["%Y-%m-%d"]),
    default=None,
    help="First day (UTC), default: 30 days ago.",
)
@click.option(
    "--to",
    "end",
    type=click.DateTime(["%Y-%m-%d"]),
    default=None,
    help="Last day, inclusive (UTC), default: today.",
)
@click.option("--format", "fmt", type=click.Choice([f.value for f in Format]), default="table")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option(
    "--now",
    "as_of",
    type=click.DateTime(),
    default=None,
    hidden=True,
    help="Evaluate as of this UTC instant (for reproducible reports).",
)
@click.pass_context
def report(
    ctx: click.Context,
    kind: str,
    start: datetime | None,
    end: datetime | None,
    fmt: str,
    output: Path | None,
    as_of: datetime | None,
) -> None:
    """Service figures: SLA (first response/resolution, breaches, overdue), agents,
    categories, volume. HTML is one self-contained file with charts (all sections)."""
    from maildesk.cli import build_app

    app = build_app(ctx)
    now = as_of.replace(tzinfo=UTC) if as_of else app.clock()
    last = end.date() if end else now.date()
    try:
        first = start.date() if start else last - timedelta(days=29)
        after_last = _day_start(last + timedelta(days=1))
    except OverflowError:
        raise click.BadParameter("the period runs outside the calendar (years 1-9999)") from None
    if first > last:
        raise click.BadParameter("--from is after --to")
    with app.db.transaction() as session:
        data = collect(
            session,
            app.settings,
            app.directory,
            build_calendars(app.settings),
            _day_start(first),
            after_last,
            now,
            sections(Kind(kind), Format(fmt)),
        )
    text = render(data, Kind(kind), Format(fmt))
    if output is not None:
        try:
            output.write_text(text, encoding="utf-8")
        except OSError as exc:
            click.echo(f"maildesk: cannot write {output}: {exc.strerror or exc}", err=True)
            ctx.exit(EX_CANTCREAT)
    else:
        click.echo(text, nl=False)
