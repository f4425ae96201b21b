"""`maildesk privacy`: erase a person's data on request, delete tickets past retention."""

from __future__ import annotations

import os
import sys

import click

from maildesk.cli import _echo_json, _fail, build_app
from maildesk.privacy.forget import forget, plan_forget, previous_erasures
from maildesk.privacy.match import mailbox_key
from maildesk.privacy.retention import dry_purge
from maildesk.privacy.retention import purge as purge_tickets

# A thousand years: further back is before every ticket, and far enough beyond
# (~739,000 days from now) before year 1, where no cutoff date can be computed.
MAX_DAYS = 365_000


def _actor(given: str | None) -> str:
    return given or os.environ.get("SUDO_USER") or os.environ.get("USER") or "ops"


@click.group()
def privacy() -> None:
    """Erase a person on request, and delete tickets closed long ago."""


@privacy.command("forget")
@click.argument("address")
@click.option("--dry-run", is_flag=True, help="Only count what would be erased (the default).")
@click.option("--yes", is_flag=True, help="Erase without asking (needed when not on a terminal).")
@click.option(
    "--cc-tickets",
    type=click.Choice(["leave", "erase"]),
    default="leave",
    show_default=True,
    help="Tickets someone else asked where ADDRESS was only a participant: take ADDRESS "
    "off them (its messages and bytes go), or erase those tickets whole.",
)
@click.option("--by", "actor", default=None, help="Who asked for it, for the audit record.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def forget_command(
    ctx: click.Context,
    address: str,
    dry_run: bool,
    yes: bool,
    cc_tickets: str,
    actor: str | None,
    as_json: bool,
) -> None:
    """Erase everything held about ADDRESS: its tickets, mail, ratings, outbox, quarantine.

    Counts first; erases with --yes (or after confirming on a terminal). An
    audit event keeps a salted hash of the address, never the address.
    """
    address = mailbox_key(address)
    if "@" not in address:
        _fail(f"not an address: {address!r}", 2)
    app = build_app(ctx)
    whole = cc_tickets == "erase"
    with app.db.transaction() as session:
        plan = plan_forget(session, address, whole_cc_tickets=whole)
        before = [row.at.isoformat() for row in previous_erasures(session, address)]
    found = plan.summary()
    if as_json:
        if dry_run or not yes:
            _echo_json({"dry_run": True, **found, "previously_erased": before})
    else:
        click.echo(", ".join(f"{k} {v}" for k, v in found.items()))
        for when in before:
            click.echo(f"erased before on {when}")
    if dry_run:
        return
    if not yes:
        if not sys.stdin.isatty():
            click.echo("dry run: nothing erased (add --yes to erase)", err=True)
            return
        if not click.confirm(f"Erase all of this about {address}?", default=False):
            click.echo("nothing erased", err=True)
            return
    done = forget(app.db, address, actor=_actor(actor), now=app.clock, whole_cc_tickets=whole)
    if as_json:
        _echo_json({"dry_run": False, **done.as_dict(), "previously_erased": before})
    else:
        click.echo("erased: " + ", ".join(f"{k} {v}" for k, v in done.as_dict().items()))


@privacy.command("purge")
@click.option(
    "--older-than",
    "days",
    metavar="DAYS",
    type=click.FloatRange(min=0, min_open=True, max=MAX_DAYS),
    required=True,
    help="Delete tickets closed (or resolved and left so) more than DAYS ago.",
)
@click.option("--dry-run", is_flag=True, help="Only count what would be deleted.")
@click.option("--by", "actor", default=None, help="Who ran it, for the audit record.")
@click.pass_context
def purge_command(ctx: click.Context, days: float, dry_run: bool, actor: str | None) -> None:
    """Delete tickets closed long ago, with all their mail (what retention does daily)."""
    app = build_app(ctx)
    if dry_run:
        counts = dry_purge(app.db, days, app.clock())
        click.echo(f"dry run: would delete {counts.tickets} tickets, {counts.messages} messages")
        return
    done = purge_tickets(app.db, days, now=app.clock, actor=_actor(actor))
    click.echo("deleted: " + ", ".join(f"{k} {v}" for k, v in done.as_dict().items()))
