"""The `maildesk` command: thin click wrappers that parse arguments, call services, print."""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import click
from sqlalchemy import func, select
from sqlalchemy.orm import selectinload

from maildesk.app import App
from maildesk.config import EX_CONFIG, ConfigError, Settings, load_settings
from maildesk.db import queries
from maildesk.db.database import (
    SchemaOutOfDate,
    SchemaTooNew,
    StorageUnavailable,
    is_transient,
)
from maildesk.db.figures import Figures, figures_from, reader_engine
from maildesk.db.models import (
    Blob,
    Disposition,
    Intake,
    IntakeState,
    Outbox,
    OutboxState,
    Ticket,
    TicketStatus,
)
from maildesk.intake.files import SourceError, count_messages, iter_messages, read_ahead
from maildesk.logs import configure_logging
from maildesk.pipeline.runner import Summary, Worker
from maildesk.status import (
    Thresholds,
    disk_problems,
    problems,
    read_imap_health,
    status_json,
)
from maildesk.terminal import printable, printable_text
from maildesk.views import (
    SCHEMA_VERSION,
    event_json,
    intake_json,
    outbox_json,
    ticket_json,
    ticket_summary_json,
)

EX_TEMPFAIL = 75
EX_NOINPUT = 66
# A ticket number or intake id: a database row's, so never past a signed 64-bit integer
# (a longer one overflowed SQLite's binding with a traceback).
ROW_ID = click.IntRange(1, 2**63 - 1)
EX_CANTCREAT = 73  # sysexits: an output file cannot be created (as `report -o` exits)
INGEST_BATCH = 1000
APPLY_BATCH = 200  # messages per pipeline transaction in a bulk import
# `ingest -`'s own time limit: well under Postfix's command_time_limit (1000 s).
STDIN_TIME_LIMIT = 300.0


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"maildesk: {message}", err=True)
    sys.exit(code)


class LazyGroup(click.Group):
    """Sub-command groups whose modules (scikit-learn...) load only when used.

    Keeps start-up quick for `ingest -` behind an MTA, which runs once per mail.
    """

    lazy: dict[str, str] = {  # noqa: RUF012 - read-only table
        "spam": "maildesk.spam.cli:spam",
        "categorize": "maildesk.routing.categorize_cli:categorize",
        "report": "maildesk.reports.cli:report",
        "rules": "maildesk.routing.rules_cli:rules",
        "privacy": "maildesk.privacy.cli:privacy",
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.lazy])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy:
            import importlib

            module, attr = self.lazy[cmd_name].split(":")
            command: click.Command = getattr(importlib.import_module(module), attr)
            return command
        return super().get_command(ctx, cmd_name)


@click.group(cls=LazyGroup)
@click.option("--config", "config_path", type=str, default=None, help="Path to maildesk.toml.")
@click.option("--data-dir", type=str, default=None, help="Data directory (overrides the config).")
@click.option(
    "--log-level",
    default=None,
    type=click.Choice(["debug", "info", "warning", "error"]),
    help="Default: info for `run`, warning otherwise.",
)
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text")
@click.pass_context
def main(
    ctx: click.Context,
    config_path: str | None,
    data_dir: str | None,
    log_level: str | None,
    log_format: str,
) -> None:
    """maildesk: an email-centric support ticket daemon."""
    default = "info" if ctx.invoked_subcommand == "run" else "warning"
    configure_logging((log_level or default).upper(), log_format)
    ctx.obj = {"config": config_path, "data_dir": data_dir}


def build_app(
    ctx: click.Context,
    *,
    check_schema: bool = True,
    pipeline: bool = False,
    notices: bool = False,
) -> App:
    """Load config and open the database; exit 78 on bad config, 75 when storage is down.

    ``pipeline`` (a command that processes mail) also checks the templates and the
    routing rules, ``notices`` (one that sends mail) the templates, and exits 78 on
    a problem with them: there are no last good ones to fall back on.
    """
    try:
        settings = load_settings(ctx.obj["config"], ctx.obj["data_dir"])
        app = App.build(settings)
        if pipeline or notices:
            app.check_pipeline(rules=pipeline)
    except ConfigError as exc:
        _fail(str(exc), EX_CONFIG)
    except OSError as exc:  # the data directory cannot be created or written
        where = exc.filename or settings.data_dir
        reason = f"{where}: {exc.strerror or exc}"
        _fail(f"{settings.source}: data_dir: cannot create or write {reason}", EX_CONFIG)
    if check_schema:
        try:
            note = app.db.ensure_schema()
        except SchemaOutOfDate as exc:
            _fail(str(exc), EX_CONFIG)
        except StorageUnavailable as exc:
            _fail(str(exc), EX_TEMPFAIL)
        if note:
            logging.getLogger("maildesk").info(note)
    return app


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, ensure_ascii=False, indent=None, sort_keys=False))


# -- db ---------------------------------------------------------------------
@main.group()
def db() -> None:
    """Database schema management."""


@db.command("upgrade")
@click.pass_context
def db_upgrade(ctx: click.Context) -> None:
    """Migrate the database to the schema this maildesk needs."""
    app = build_app(ctx, check_schema=False)
    try:
        before = app.db.current_revision()
        app.db.upgrade()
    except StorageUnavailable as exc:
        _fail(str(exc), EX_TEMPFAIL)
    except SchemaTooNew as exc:
        _fail(str(exc), EX_CONFIG)
    click.echo(f"schema {before or 'empty'} -> {app.db.current_revision()}")


@db.command("status")
@click.pass_context
def db_status(ctx: click.Context) -> None:
    """Show the schema revision of the database and the one this maildesk needs."""
    app = build_app(ctx, check_schema=False)
    try:
        current, head = app.db.current_revision(), app.db.head_revision()
    except StorageUnavailable as exc:
        _fail(str(exc), EX_TEMPFAIL)
    if current is not None and current not in app.db.known_revisions():
        verdict = "newer than this maildesk: run the maildesk that upgraded it"
    else:
        verdict = "ok" if current == head else "run `maildesk db upgrade`"
    click.echo(f"database: {current or 'empty'}; needed: {head}; {verdict}")
    if current != head:
        sys.exit(1)


# -- ingest -----------------------------------------------------------------
@contextmanager
def _progress(total: int | None, enabled: bool) -> Iterator[Callable[[int], None]]:
    if not enabled:
        yield lambda _n: None
        return
    from tqdm import tqdm

    with tqdm(total=total, unit="msg", file=sys.stderr, dynamic_ncols=True) as bar:
        yield bar.update


class _Deadline:
    """``ingest``'s own time limit, below the MTA's (Postfix: command_time_limit, 1000 s).

    Postfix kills a pipe command that outlives its limit and *bounces* the mail.
    A database that hangs instead of failing (a table locked by a migration, a
    server that accepts and never answers) would hold `ingest -` until then.
    At the limit the command exits on its own: 0 when the mail is stored (its
    processing is left to the daemon or the next ingest), 75 otherwise, so the
    MTA tries again later.
    """

    def __init__(self, seconds: float) -> None:
        self.stored: Callable[[], bool] = lambda: False
        self._timer = threading.Timer(seconds, self._expire, args=(seconds,))
        self._timer.daemon = True
        if seconds > 0:
            self._timer.start()

    def _expire(self, seconds: float) -> None:
        if self.stored():
            message = f"time limit of {seconds:g}s reached: stored, processing left pending"
            code = 0
        else:
            message = f"time limit of {seconds:g}s reached before the mail was stored: try later"
            code = EX_TEMPFAIL
        try:
            sys.stderr.write(f"maildesk: {message}\n")
            sys.stderr.flush()
        finally:
            os._exit(code)  # a thread blocked in the database driver cannot be interrupted

    def cancel(self) -> None:
        self._timer.cancel()


@main.command()
@click.argument("paths", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
@click.option("--no-process", is_flag=True, help="Only store; leave processing to the daemon.")
@click.option(
    "--progress/--no-progress", default=None, help="Progress bar (default: on a terminal)."
)
@click.option(
    "--time-limit",
    type=click.FloatRange(min=0),
    default=None,
    help=f"Exit by then: 0 if stored, 75 if not (default: {STDIN_TIME_LIMIT:g} s when "
    "reading stdin, under an MTA's own limit; none for files; 0: none).",
)
@click.pass_context
def ingest(
    ctx: click.Context,
    paths: tuple[str, ...],
    as_json: bool,
    no_process: bool,
    progress: bool | None,
    time_limit: float | None,
) -> None:
    """Store and process mail from .eml files, Maildir folders, mbox files, or - (stdin).

    Exit 0 when every message is stored, 75 when storage is unavailable (an
    MTA pipe then retries), 66 when a path cannot be read (or stdin is empty):
    the other paths are still stored, and the summary names the unreadable ones.
    """
    if time_limit is None:
        time_limit = STDIN_TIME_LIMIT if "-" in paths else 0
    deadline = _Deadline(time_limit)
    # Files ops import wait on disk while templates or rules are mended; mail an MTA
    # pipes in would bounce (78 is permanent to Postfix): stored, it waits in quarantine.
    app = build_app(ctx, pipeline=not no_process and "-" not in paths)
    show = progress if progress is not None else sys.stderr.isatty()
    if not no_process:
        from maildesk.spam.jobs import take_shared_model

        take_shared_model(app)  # score with what every node has learned
    worker = app.worker(app.command_node_name)
    if not no_process:
        _release_claims_of_dead_commands(app, worker)
        if any(path != "-" for path in paths):  # one mail is parsed in-process
            worker.parse_pool.warm_up()
    from maildesk.intake.bulk import BulkStorer

    summary = Summary()
    unreadable: list[str] = []
    messages = read_ahead(iter_messages(list(paths), unreadable=unreadable), INGEST_BATCH)
    storer = BulkStorer(app.intake(), messages, INGEST_BATCH)
    deadline.stored = lambda: storer.finished.is_set() and storer.error is None
    total = count_messages(list(paths)) if show else None
    processing = not no_process
    with _progress(total, show) as tick:
        storer.start()
        while True:
            # Read "finished" before draining, so nothing stored after it is missed.
            finished = storer.finished.is_set()
            counting = processing
            before = sum(summary.counts.values()) if counting else storer.stored
            if processing:
                processing = _drain(worker, summary)
            after = sum(summary.counts.values()) if counting else storer.stored
            tick(after - before)
            if finished:
                break
            if after == before:
                storer.wait_for_work(0.5)
    worker.close()
    deadline.cancel()
    stored = storer.stored
    if isinstance(storer.error, StorageUnavailable):
        _fail(f"{storer.error} ({stored} stored before the failure)", EX_TEMPFAIL)
    if isinstance(storer.error, SourceError):
        _fail(f"{storer.error} ({stored} stored before it)", EX_NOINPUT)
    if storer.error is not None:
        raise storer.error
    result: dict[str, Any] = {"stored": stored, **summary.as_dict()}
    if no_process:
        result["pending"] = stored
    if unreadable:
        result["unreadable"] = len(unreadable)
    if as_json:
        _echo_json(result)
    else:
        click.echo(", ".join(f"{k} {v}" for k, v in result.items()))
    if unreadable:
        for why in unreadable:
            click.echo(f"maildesk: not read: {printable_text(why)}", err=True)
        what = "the rest is stored" if stored else "nothing was stored"
        _fail(f"{len(unreadable)} path(s) could not be read; {what}", EX_NOINPUT)


def _release_claims_of_dead_commands(app: App, worker: Worker) -> None:
    """Messages an `ingest` on this host held when it was killed go back to the queue now.

    A command's claims are named ``<node>/cli-<pid>``; nothing else would take
    them back before the claim timeout (10 minutes), so the same import run
    again after a SIGKILL would leave them waiting.
    """
    try:
        released = worker.release_claims_of_dead_commands(f"{app.node_name}/cli-", _pid_alive)
    except Exception as exc:
        if not is_transient(exc):
            raise
        return  # the store says what is wrong with the database
    if released:
        click.echo(f"maildesk: took back {released} message(s) a killed ingest held", err=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _drain(worker: Worker, summary: Summary) -> bool:
    """Process what is stored; False when the database failed and processing stops.

    What is stored is ours whatever happens to its processing (the daemon or
    the next ingest does it): the import goes on storing, and its exit code
    says whether everything was stored, not whether it was processed. An MTA
    pipe must not bounce a mail that is stored.
    """
    try:
        summary.counts.update(worker.drain(batch_size=APPLY_BATCH).counts)
    except Exception as exc:
        if not is_transient(exc):  # a bug, not an outage: its traceback is needed
            traceback.print_exc()
        click.echo(f"maildesk: processing stopped, stored mail stays pending: {exc}", err=True)
        return False
    return True


LIST_LIMIT = 100  # rows `tickets|quarantine|outbox list` print unless --limit says otherwise


def _limit_option(what: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return click.option(
        "--limit",
        type=click.IntRange(min=0),
        default=LIST_LIMIT,
        show_default=True,
        help=f"Show the newest N {what} (0: all of them).",
    )


def _newest(session: Any, stmt: Any, key: Any, limit: int) -> tuple[list[Any], bool]:
    """The newest ``limit`` rows of ``stmt`` by ``key``, oldest first; and whether more exist."""
    if limit == 0:
        return list(session.scalars(stmt.order_by(key))), False
    rows = list(session.scalars(stmt.order_by(key.desc()).limit(limit + 1)))
    return rows[:limit][::-1], len(rows) > limit


def _echo_cut(shown: int, what: str) -> None:
    click.echo(f"maildesk: the newest {shown} {what} shown; --limit N or 0 for more", err=True)


# -- quarantine -------------------------------------------------------------
@main.group()
def quarantine() -> None:
    """Messages that could not be processed, kept with the reason."""


@quarantine.command("list")
@click.option("--json", "as_json", is_flag=True)
@_limit_option("quarantined messages")
@click.pass_context
def quarantine_list(ctx: click.Context, as_json: bool, limit: int) -> None:
    app = build_app(ctx)
    with app.db.transaction() as session:
        held = Intake.state == IntakeState.QUARANTINED
        rows, cut = _newest(session, select(Intake).where(held), Intake.id, limit)
        items = [intake_json(r) for r in rows]
        total = session.scalar(select(func.count()).where(held)) if cut else len(items)
    if as_json:
        _echo_json(items)
    else:
        for item in items:
            mid = item["message_id"] or "-"
            line = f"{item['id']:>8}  {item['received_at'][:19]}  {mid}  {item['reason']}"
            click.echo(printable(line))
        click.echo(f"{total} quarantined")
    if cut:
        _echo_cut(len(items), "quarantined messages")


def _quarantined(session: Any, intake_id: int, *, lock: bool = False) -> Intake:
    # Locked to change it: the spam expiry on another node may be deleting it.
    row = session.get(Intake, intake_id, with_for_update=lock or None)
    if row is None or row.state != IntakeState.QUARANTINED:
        _fail(f"no quarantined message with id {intake_id}", 1)
    return row


@quarantine.command("show")
@click.argument("intake_id", type=ROW_ID)
@click.option("--raw", is_flag=True, help="Print the raw message bytes.")
@click.pass_context
def quarantine_show(ctx: click.Context, intake_id: int, raw: bool) -> None:
    app = build_app(ctx)
    with app.db.transaction() as session:
        row = _quarantined(session, intake_id)
        if raw:
            blob = session.get(Blob, row.raw_sha256)
            sys.stdout.buffer.write(bytes(blob.data) if blob else b"")
            return
        data = intake_json(row)
        data["events"] = [event_json(e) for e in queries.events_for_intake(session, row.id)]
    _echo_json(data)


def _requeue(ctx: click.Context, intake_id: int, *, force: bool) -> None:
    app = build_app(ctx, pipeline=True)
    with app.db.transaction() as session:
        row = _quarantined(session, intake_id, lock=True)
        was_spam = (row.quarantine_reason or "").startswith("spam:")
        row.state, row.attempts, row.not_before = IntakeState.PENDING, 0, None
        row.disposition = Disposition.QUARANTINED if force else None
        if force and was_spam:
            # Releasing mail the filter held is the strongest "this is ham" there is.
            spam_feedback(app, session, row.raw_sha256, "ham", "quarantine_release")
    outcome = app.worker(app.command_node_name).drain()
    click.echo(", ".join(f"{k} {v}" for k, v in outcome.as_dict().items() if v))
    if force and was_spam:
        learn_spam_feedback(app)


def spam_feedback(app: App, session: Any, raw_sha256: str, label: str, source: str) -> bool:
    from maildesk.spam.feedback import SpamLabel, record_feedback

    actor = os.environ.get("SUDO_USER") or os.environ.get("USER") or "ops"
    return record_feedback(
        session,
        raw_sha256=raw_sha256,
        label=SpamLabel(label),
        source=source,
        actor=actor,
        now=app.clock(),
    )


def learn_spam_feedback(app: App) -> None:
    from maildesk.spam.feedback import learn_pending
    from maildesk.spam.scoring import ScorerSpec

    spec = ScorerSpec.from_settings(app.settings)
    if spec is not None:
        learned = learn_pending(app.db, spec, app.clock, app.node_name)
        click.echo(f"spam model: learned {learned} message(s)")


@quarantine.command("retry")
@click.argument("intake_id", type=ROW_ID)
@click.pass_context
def quarantine_retry(ctx: click.Context, intake_id: int) -> None:
    """Run the message through the pipeline again (after a fix or a config change)."""
    _requeue(ctx, intake_id, force=False)


@quarantine.command("release")
@click.argument("intake_id", type=ROW_ID)
@click.pass_context
def quarantine_release(ctx: click.Context, intake_id: int) -> None:
    """Make a ticket of it whatever held it (unparsable mail keeps its raw text)."""
    release_quarantined(ctx, intake_id)


def release_quarantined(ctx: click.Context, intake_id: int) -> None:
    """Release a quarantined message to the pipeline (spam released is learned as ham)."""
    _requeue(ctx, intake_id, force=True)


# -- tickets, explain, export -------------------------------------------------
@main.group()
def tickets() -> None:
    """Look at tickets."""


@tickets.command("list")
@click.option("--status", type=click.Choice([s.value for s in TicketStatus]), default=None)
@click.option("--json", "as_json", is_flag=True)
@click.option("--overdue", is_flag=True, help="Only tickets past an SLA due time.")
@_limit_option("tickets")
@click.pass_context
def tickets_list(
    ctx: click.Context, status: str | None, as_json: bool, overdue: bool, limit: int
) -> None:
    from maildesk.sla.overdue import is_overdue
    from maildesk.sla.overdue import overdue as late_tickets

    app = build_app(ctx)
    now = app.clock()
    with app.db.transaction() as session:
        stmt = (
            select(Ticket)
            .where(Ticket.merged_into_id.is_(None))
            .options(selectinload(Ticket.requester))
        )
        if status:
            stmt = stmt.where(Ticket.status == TicketStatus(status))
        if overdue:
            stmt = stmt.where(is_overdue(now))
        shown, cut = _newest(session, stmt, Ticket.number, limit)
        late = late_tickets(session, now, [t.id for t in shown])
        items = [(ticket_summary_json(t), late.get(t.id)) for t in shown]
    if as_json:
        if overdue:
            for item, why in items:
                item["overdue"] = why.as_json() if why else None
        _echo_json([item for item, _ in items])
    else:
        for t, why in items:
            who = t["requester"] or "-"
            line = f"#{t['number']:<7} {t['status']:<9} {t['priority']:<7} {who:<32} "
            line = printable(line + t["subject"][:60])
            if why is not None:
                line = click.style(f"{line}  LATE: {why.describe(now)}", fg="red", bold=True)
            click.echo(line)
    if cut:
        _echo_cut(len(items), "tickets")


@tickets.command("show")
@click.argument("number", type=ROW_ID)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def tickets_show(ctx: click.Context, number: int, as_json: bool) -> None:
    app = build_app(ctx)
    with app.db.transaction() as session:
        ticket = queries.ticket_by_number(session, number)
        if ticket is None:
            _fail(f"no ticket #{number}", 1)
        data = ticket_json(session, ticket, with_events=True)
    if as_json:
        _echo_json(data)
        return
    click.echo(printable(f"Ticket #{data['number']}: {data['subject']}"))
    click.echo(
        printable(
            f"  status {data['status']}, priority {data['priority']}, "
            f"requester {data['requester'] or '-'}"
        )
    )
    for link in data["links"]:
        click.echo(f"  linked: {link['kind']} #{link['ticket']}")
    for m in data["messages"]:
        when = m["date"] or m["received_at"]
        click.echo("")
        click.echo(printable(f"--- {m['direction']} {m['kind']} from {m['from']} at {when}"))
        click.echo(printable(f"Subject: {m['subject']}"))
        click.echo(printable_text(m["body"].rstrip()[:4000]))


@main.command()
@click.argument("message_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def explain(ctx: click.Context, message_id: str, as_json: bool) -> None:
    """Show the recorded guard and threading decisions for a Message-ID, with evidence."""
    app = build_app(ctx)
    mid = message_id.strip().removeprefix("<").removesuffix(">")
    with app.db.transaction() as session:
        rows = queries.intakes_for_message_id(session, mid)
        report = []
        for row in rows:
            ticket = session.get(Ticket, row.ticket_id) if row.ticket_id else None
            report.append(
                {
                    **intake_json(row),
                    "disposition": str(row.disposition) if row.disposition else None,
                    "ticket": ticket.number if ticket else None,
                    "events": [event_json(e) for e in queries.events_for_intake(session, row.id)],
                }
            )
    if not report:
        _fail(f"no stored message with Message-ID <{mid}>", 1)
    if as_json:
        _echo_json(report)
        return
    for item in report:
        click.echo(
            printable(
                f"intake {item['id']} ({item['source']} {item['source_ref']}) "
                f"-> {item['disposition']}"
                + (f" ticket #{item['ticket']}" if item["ticket"] else "")
            )
        )
        for event in item["events"]:
            click.echo(printable(f"  {event['at'][:19]}  {event['kind']:<20} {event['reason']}"))


@main.command()
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.pass_context
def export(ctx: click.Context, output: Path | None) -> None:
    """Write every ticket with all its messages as JSON Lines (backup/migration format)."""
    app = build_app(ctx)
    try:
        out = output.open("w", encoding="utf-8") if output else sys.stdout
    except OSError as exc:
        _fail(f"cannot write {output}: {exc.strerror or exc}", EX_CANTCREAT)
    count = 0
    try:
        with app.db.transaction() as session:
            ids = session.scalars(select(Ticket.id).order_by(Ticket.number)).all()
            for ticket_id in ids:
                ticket = session.get(Ticket, ticket_id)
                assert ticket is not None
                line = {"schema": SCHEMA_VERSION, **ticket_json(session, ticket, with_events=True)}
                out.write(json.dumps(line, ensure_ascii=False) + "\n")
                count += 1
                session.expunge_all()
    finally:
        if output:
            out.close()
    click.echo(f"exported {count} tickets at {datetime.now(UTC).isoformat()}", err=True)


# -- the daemon and its operations -----------------------------------------
@main.command("run")
@click.pass_context
def run_daemon(ctx: click.Context) -> None:
    """Run the daemon in the foreground: listeners, worker, outbox sender."""
    from maildesk.checks import check_startup
    from maildesk.service import Daemon

    app = build_app(ctx)
    try:
        check_startup(app.settings)
        # At start there are no last good rules or templates to keep.
        app.check_pipeline()
    except ConfigError as exc:
        _fail(str(exc), EX_CONFIG)
    sys.exit(Daemon(app).run())


@main.command()
@click.pass_context
def check(ctx: click.Context) -> None:
    """Validate the config and try every configured connection, one line per check."""
    from maildesk.checks import check_startup, run_checks

    try:
        settings = load_settings(ctx.obj["config"], ctx.obj["data_dir"])
        check_startup(settings)
    except ConfigError as exc:
        click.echo(f"FAIL config: {exc}")
        sys.exit(EX_CONFIG)
    click.echo(f"ok   config: {settings.source}")
    failures = config_failures = 0
    for result in run_checks(settings):
        click.echo(("ok   " if result.ok else "FAIL ") + result.line)
        failures += not result.ok
        config_failures += not result.ok and result.config
    # Templates and rules `maildesk run` refuses to start with: the exit code it gives.
    sys.exit(EX_CONFIG if config_failures else 1 if failures else 0)


@main.group()
def outbox() -> None:
    """Outbound mail waiting, sent or failed."""


@outbox.command("list")
@click.option("--state", type=click.Choice([s.value for s in OutboxState]), default=None)
@click.option("--json", "as_json", is_flag=True)
@_limit_option("outbox rows")
@click.pass_context
def outbox_list(ctx: click.Context, state: str | None, as_json: bool, limit: int) -> None:
    app = build_app(ctx)
    with app.db.transaction() as session:
        stmt = select(Outbox)
        if state:
            stmt = stmt.where(Outbox.state == OutboxState(state))
        rows, cut = _newest(session, stmt, Outbox.id, limit)
        items = [outbox_json(row) for row in rows]
    if as_json:
        _echo_json(items)
    else:
        for item in items:
            to = ",".join(item["recipients"])
            error = item["last_error"] or ""
            line = f"{item['id']:>6} {item['state']:<10} {item['purpose']:<9} {to:<30} {error}"
            click.echo(printable(line))
        click.echo(f"{len(items)} outbox rows" + (" (the newest)" if cut else ""))
    if cut:
        _echo_cut(len(items), "outbox rows")


@outbox.command("drain")
@click.pass_context
def outbox_drain(ctx: click.Context) -> None:
    """Send what is due now (the daemon does this on its own)."""
    app = build_app(ctx)
    try:
        sender = app.sender(app.command_node_name)
    except ConfigError as exc:  # the relay password file or variable
        _fail(str(exc), EX_CONFIG)
    result = sender.drain()
    click.echo(
        f"sent {result.sent}, retry later {result.retried}, "
        f"failed {result.failed}, suppressed {result.suppressed}, dropped {result.dropped}"
    )
    if sender.outage.down:  # what is not sent yet is sent by a later drain
        _fail("database unavailable: drain stopped; the rest stays queued", EX_TEMPFAIL)
    if sender.maildir_outage.down:
        _fail("the Maildir cannot be written: drain stopped; the rest stays queued", EX_TEMPFAIL)


@main.command("status")
@click.option("--json", "as_json", is_flag=True)
@click.option(
    "--pending-minutes",
    type=click.FloatRange(min=0),
    default=Thresholds.pending_minutes,
    show_default=True,
    help="Mail stored and not processed for longer is a problem.",
)
@click.option(
    "--outbox-minutes",
    type=click.FloatRange(min=0),
    default=Thresholds.outbox_minutes,
    show_default=True,
    help="Outbound mail due and not sent for longer is a problem.",
)
@click.option(
    "--disk-free-mb",
    type=click.FloatRange(min=0),
    default=Thresholds.disk_free_mb,
    show_default=True,
    help="Less free space where the daemon writes is a problem (5% of a smaller disk).",
)
@click.pass_context
def status(
    ctx: click.Context,
    as_json: bool,
    pending_minutes: float,
    outbox_minutes: float,
    disk_free_mb: float,
) -> None:
    """What is waiting, held or failing; exit 1 when something needs looking at."""
    app = build_app(ctx)
    engine = reader_engine(app.settings.effective_database_url)
    try:
        figures = figures_from(engine, app.clock())
    except Exception as exc:
        if not is_transient(exc):
            raise
        _fail(f"database unavailable: {exc}", EX_TEMPFAIL)
    finally:
        engine.dispose()
    imap = read_imap_health(app.settings.data_dir)
    limits = Thresholds(pending_minutes, outbox_minutes, disk_free_mb)
    found = problems(figures, imap, limits, _outbound_blocker(app.settings))
    found += disk_problems(_written_places(app), limits)
    if as_json:
        _echo_json(status_json(figures, imap, found))
    else:
        _echo_status(figures, imap)
        for problem in found:
            click.echo(printable(f"PROBLEM {problem}"))
        click.echo("ok" if not found else f"{len(found)} problem(s)")
    sys.exit(1 if found else 0)


def _outbound_maildir(settings: Settings) -> Path | None:
    """The Maildir outbound mail is written to; None when it goes to a relay."""
    if settings.outbound.transport != "maildir":
        return None
    return settings.outbound.maildir or settings.data_dir / "outbox-maildir"


def _outbound_blocker(settings: Settings) -> str:
    """What keeps outbound mail waiting, said for the transport in use."""
    maildir = _outbound_maildir(settings)
    if maildir is not None:
        return f"the Maildir {maildir} cannot be written"
    return "the relay refuses or cannot be reached"


def _written_places(app: App) -> list[tuple[str, Path]]:
    """Where the daemon writes: the data directory, a SQLite database, the outbound Maildir."""
    settings = app.settings
    places = [("data directory", settings.data_dir)]
    if app.db.is_sqlite and app.db.engine.url.database:
        places.append(("database", Path(app.db.engine.url.database).parent))
    if (maildir := _outbound_maildir(settings)) is not None:
        places.append(("outbound Maildir", maildir))
    return places


def _echo_status(figures: Figures, imap: list[dict[str, Any]]) -> None:
    def age(seconds: float | None) -> str:
        return "" if seconds is None else f" (oldest {seconds / 60:.0f} min)"

    held = ", ".join(f"{n} {k}" for k, n in figures.quarantine.items() if n) or "none"
    opened = figures.open_by_status()
    lines = [
        f"intake      {figures.intake_pending} pending, {figures.intake_processing} processing"
        + age(figures.intake_oldest_pending_age_seconds),
        f"quarantine  {figures.quarantined} ({held})",
        f"outbox      {figures.outbox_queued} queued, {figures.outbox_deferred} deferred, "
        f"{figures.outbox_failed} failed ({figures.outbox_failed_last_day} in 24 h)"
        + age(figures.outbox_oldest_due_age_seconds).replace("oldest", "due for"),
        "tickets     "
        + ", ".join(f"{n} {s}" for s, n in opened.items())
        + f"; {sum(figures.tickets_unassigned.values())} unassigned"
        + f"; {figures.tickets_past_sla_due} past an SLA due time",
        f"suppressed  {figures.suppressed_addresses} address(es)",
    ]
    lines += [
        f"imap        {f.get('mailbox')}/{f.get('folder')}: {f.get('status')}"
        + (f", {f.get('consecutive_failures')} failures" if f.get("consecutive_failures") else "")
        + (
            f", {f.get('post_action_waiting')} waiting for their post-action "
            f"({f.get('post_action_waiting_reason')})"
            if f.get("post_action_waiting")
            else ""
        )
        for f in imap
    ]
    for line in lines:
        click.echo(printable(line))


@main.group("dkim")
def dkim_group() -> None:
    """DKIM signing of outbound mail ([[outbound.dkim]] keys)."""


@dkim_group.command("record")
@click.option("--domain", default=None, help="Only the keys of this signing domain.")
@click.option("--selector", default=None, help="Only the key with this selector.")
@click.option("--json", "as_json", is_flag=True, help="Name and value, for a DNS provider's API.")
@click.pass_context
def dkim_record(
    ctx: click.Context, domain: str | None, selector: str | None, as_json: bool
) -> None:
    """Print the DNS TXT record to publish for each configured DKIM key.

    Publish it (and let it propagate) before the key signs mail: until then
    receivers find no key, and DMARC fails as if the mail were unsigned.
    """
    from maildesk.outbound.dkim_sign import load_keys

    try:
        settings = load_settings(ctx.obj["config"], ctx.obj["data_dir"])
        keys = load_keys(settings)
    except ConfigError as exc:
        _fail(str(exc), EX_CONFIG)
    wanted = [
        key
        for key in keys
        if (domain is None or key.domain == domain.lower().rstrip("."))
        and (selector is None or key.selector == selector)
    ]
    if not wanted:
        _fail("no [[outbound.dkim]] key configured" + (" matches" if keys else ""), 1)
    if as_json:
        _echo_json([{"name": key.dns_name, "value": key.txt_value} for key in wanted])
        return
    for key in wanted:
        click.echo(f"; {key.domain} selector {key.selector} ({key.algorithm})")
        click.echo(key.zone_line())


@main.group()
def templates() -> None:
    """Outbound mail templates."""


@templates.command("preview")
@click.argument("name")
@click.option("--ticket", "number", type=int, required=True)
@click.option("--audience", default="customer", show_default=True)
@click.pass_context
def templates_preview(ctx: click.Context, name: str, number: int, audience: str) -> None:
    """Render template NAME for ticket N, as it would be sent, without sending."""
    from maildesk.outbound.compose import OutboundMail, Recipient
    from maildesk.outbound.templates import TemplateMissing

    app = build_app(ctx)
    notices = app.notices()
    name = name.removesuffix(f".{audience}")  # as `check` names it: ack.customer
    with app.db.transaction() as session:
        ticket = queries.ticket_by_number(session, number)
        if ticket is None or ticket.requester is None:
            _fail(f"no ticket #{number} with a requester", 1)
        try:
            rendered = app.renderer.render(
                name, audience, notices.variables(ticket, ticket.requester), queue=ticket.queue
            )
        except TemplateMissing as exc:
            _fail(str(exc), 1)
        mail = OutboundMail(
            purpose=name,
            ticket=ticket,
            recipients=[Recipient(ticket.requester.email, ticket.requester.name)],
            rendered=rendered,
            support_address=notices.support_address_for(ticket),
            from_name=notices.from_name_for(ticket),  # the address's from_name, as sent
        )
        mime = app.composer().build(mail, "preview@maildesk.invalid")
        session.rollback()
    click.echo(mime.as_string())


@tickets.command("set-status")
@click.argument("number", type=ROW_ID)
@click.argument("status", type=click.Choice([s.value for s in TicketStatus]))
@click.pass_context
def tickets_set_status(ctx: click.Context, number: int, status: str) -> None:
    """Change a ticket's status (resolving it sends the resolution notice)."""
    from maildesk.tickets import change_status

    app = build_app(ctx, notices=True)  # resolving sends the resolution notice
    with app.db.transaction() as session:
        ticket = queries.ticket_by_number(session, number)
        if ticket is None:
            _fail(f"no ticket #{number}", 1)
        # The SLA sweep closes and resolves tickets, a customer reply reopens them:
        # decide on the row as it is now, locked until this change is committed.
        ticket = queries.locked_ticket(session, ticket.id)
        change_status(
            session, ticket, TicketStatus(status), app.clock(), app.notices(), actor="cli"
        )
    click.echo(f"ticket #{number}: {status}")


@main.command("systemd-unit")
@click.pass_context
def systemd_unit(ctx: click.Context) -> None:
    """Print a hardened systemd unit (Type=notify) for this installation.

    The unit reads the config this command was given (--config, $MAILDESK_CONFIG,
    ./maildesk.toml), by its absolute path; without one, /etc/maildesk/maildesk.toml.
    Its data directory is --data-dir / $MAILDESK_DATA_DIR, else the config's own
    data_dir where that is absolute (made writable under ProtectSystem=strict),
    else systemd's StateDirectory /var/lib/maildesk.
    """
    from importlib.resources import files

    from maildesk.config import locate_config

    template = files("maildesk").joinpath("data/maildesk.service").read_text(encoding="utf-8")
    argv0 = sys.argv[0] if sys.argv else ""
    if not argv0 or argv0.endswith("__main__.py"):
        command = f"{sys.executable} -m maildesk"
    else:
        command = str(Path(argv0).resolve())
    located = locate_config(ctx.obj["config"]).path
    config = located.resolve() if located is not None else Path("/etc/maildesk/maildesk.toml")
    state_dir = Path("/var/lib/maildesk")
    notes = ""
    override = ctx.obj["data_dir"] or os.environ.get("MAILDESK_DATA_DIR")
    if override:
        data_dir = Path(override).resolve()
    else:
        data_dir = state_dir
        if located is not None:
            try:
                data_dir = load_settings(ctx.obj["config"]).data_dir
            except ConfigError as exc:
                _fail(str(exc), EX_CONFIG)
            if not data_dir.is_absolute():
                notes = (
                    f"# data_dir {data_dir} in {config} is relative (to the working directory);\n"
                    f"# the daemon keeps its data in {state_dir}: give maildesk commands\n"
                    f'# --data-dir {state_dir} too, or set data_dir = "{state_dir}" there.\n'
                )
                data_dir = state_dir
    read_write = "" if data_dir == state_dir else f"ReadWritePaths={data_dir}\n"
    unit = (
        template.replace("{exec}", command)
        .replace("{config}", str(config))
        .replace("{data_dir}", str(data_dir))
        .replace("{read_write}", read_write)
        .replace("{notes}", notes)
    )
    click.echo(unit, nl=False)
