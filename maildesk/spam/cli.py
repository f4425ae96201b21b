"""``maildesk spam ...`` commands (a click group the main CLI registers)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import click

from maildesk.pipeline.parse import ParseError, parse_message
from maildesk.spam.bands import Thresholds
from maildesk.spam.evaluate import IndexFormatError, Protocol, evaluate_index
from maildesk.spam.explain import Explanation
from maildesk.spam.explain import explain as explain_score
from maildesk.spam.model import ModelLoadError, SpamFilter
from maildesk.spam.scoring import SEED_MODEL, ScorerSpec, SpamScorer

SEED_PATH = Path(__file__).resolve().parents[2] / "spam_model" / "seed.npz"
DEFAULT_MODEL = Path("spam-model.npz")
EMPTY_START, SEED_START, LIVE_START = "empty", "seed", "live"
TOP_PARTS = click.option(
    "--top",
    type=click.IntRange(min=1),
    default=12,
    show_default=True,
    help="How many parts of a score to list, largest first.",
)


def _message_files(paths: tuple[Path, ...]) -> list[Path]:
    """Files given directly, plus every regular file under given directories."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.is_file()))
        else:
            files.append(path)
    return files


def _load(model_path: Path) -> SpamFilter:
    model, note = SpamFilter.load_or_seed(model_path, SEED_PATH)
    click.echo(note, err=True)
    return model


def _named_model(path: Path, option: str) -> SpamFilter:
    """A model file the command line names: it loads, or the command stops, naming it.

    Only the installation's own live model falls back to the seed (as the daemon
    does); scores or figures of the seed under another model's name would mislead.
    """
    try:
        return SpamFilter.load(path)
    except ModelLoadError as exc:
        raise click.BadParameter(str(exc), param_hint=option) from exc


def _start_model(ctx: click.Context, start: str) -> SpamFilter:
    """The model ``spam eval --start`` names: empty, the shipped seed, the live one, a file.

    It must load: an evaluation that quietly fell back to the seed would report
    the seed's figures under another model's name.
    """
    if start == EMPTY_START:
        return SpamFilter()
    spec = None
    if start == LIVE_START:
        from maildesk.cli import build_app

        spec = ScorerSpec.from_settings(build_app(ctx).settings)
        if spec is None:
            raise click.BadParameter(
                "the spam filter is off (spam.enabled = false)", param_hint="--start"
            )
        path = spec.live_path
    else:
        path = SEED_PATH if start == SEED_START else Path(start)
    model = _named_model(path, "--start")
    if spec is not None:  # as the daemon scores: with the verdicts the installation trusts
        model.read_verdicts(spec.verdict_headers, spec.authserv_ids)
    click.echo(
        f"starting from {path}: {model.trained_spam} spam and {model.trained_ham} ham learned",
        err=True,
    )
    return model


@click.group("spam")
def spam() -> None:
    """Train, score and evaluate the learning spam filter."""


@spam.command("train")
@click.option("--spam", "spam_paths", multiple=True, type=click.Path(exists=True, path_type=Path))
@click.option("--ham", "ham_paths", multiple=True, type=click.Path(exists=True, path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=DEFAULT_MODEL)
@click.option("--fresh", is_flag=True, help="Start from an empty model, not from --out/seed.")
def train(
    spam_paths: tuple[Path, ...], ham_paths: tuple[Path, ...], out: Path, fresh: bool
) -> None:
    """Learn messages (files or directories) as spam / ham and save the model."""
    if fresh:
        model = SpamFilter()
    elif out.exists():  # go on from it; anything else there is not ours to write over
        try:
            model = SpamFilter.load(out)
        except ModelLoadError as exc:
            raise click.BadParameter(
                f"{str(exc).rstrip('.')}; left as it is "
                "(--fresh starts an empty model and writes over it)",
                param_hint="--out",
            ) from exc
    else:
        model = _load(out)
    labelled = [(p, True) for p in _message_files(spam_paths)]
    labelled += [(p, False) for p in _message_files(ham_paths)]
    labelled.sort(key=lambda item: str(item[0]))  # interleave classes deterministically
    learned = skipped = 0
    for path, is_spam in labelled:
        try:
            model.learn(parse_message(path.read_bytes()), is_spam)
            learned += 1
        except (ParseError, OSError) as exc:
            skipped += 1
            click.echo(f"skipped {path}: {exc}", err=True)
    model.save(out)
    click.echo(f"learned {learned} messages ({skipped} skipped); saved {out}")


def _scoring_model(ctx: click.Context, model_path: Path | None) -> tuple[SpamFilter, Thresholds]:
    """The model ``spam score`` uses, with its bands: the file given, else the installation's.

    Without --model that is what the daemon and ``spam why`` score with: the live
    model of the data directory (else the seed), its thresholds and trusted verdicts.
    """
    if model_path is None:
        from maildesk.cli import build_app

        spec = ScorerSpec.from_settings(build_app(ctx).settings)
        if spec is not None:
            try:
                model, note = spec.load()
            except ModelLoadError as exc:
                raise click.ClickException(f"no usable spam model: {exc}") from exc
            click.echo(note, err=True)
            return model, spec.thresholds(model)
        model = _load(DEFAULT_MODEL)  # the filter is off: a model file here, else the seed
    else:
        model = _named_model(model_path, "--model")
    return model, model.thresholds


@spam.command("score")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option(
    "--model",
    "model_path",
    type=click.Path(path_type=Path),
    default=None,
    help="A model file to score with instead of the installation's live model.",
)
@click.option(
    "--explain",
    is_flag=True,
    help="Also print the largest parts of each score: the tokens that pushed it up or down.",
)
@TOP_PARTS
@click.pass_context
def score(
    ctx: click.Context, files: tuple[Path, ...], model_path: Path | None, explain: bool, top: int
) -> None:
    """Print probability and band for each message file."""
    model, bands = _scoring_model(ctx, model_path)
    for path in _message_files(files):
        try:
            msg = parse_message(path.read_bytes())
        except ParseError as exc:
            click.echo(f"{path}\tunparsable\t{exc}")
            continue
        why = explain_score(model, msg) if explain else None
        probability = (why.verdict if why is not None else model.score(msg)).probability
        click.echo(f"{path}\t{probability:.4f}\t{bands.band(probability).value}")
        if why is not None:
            _echo_parts(why, top)


def _echo_parts(why: Explanation, top: int) -> None:
    """The score and its ``top`` largest parts, then the rest as one line."""
    click.echo(f"  score {why.margin:+.2f}; positive leans spam, negative ham")
    for reason in why.reasons[:top]:
        click.echo(f"  {reason.share:+7.2f}  {reason.what}")
    if len(why.reasons) > top:
        rest = sum(reason.share for reason in why.reasons[top:])
        click.echo(f"  {rest:+7.2f}  the other {len(why.reasons) - top} parts together")


@spam.command("why")
@click.argument("message_id", metavar="MESSAGE-ID|INTAKE-ID")
@TOP_PARTS
@click.pass_context
def why(ctx: click.Context, message_id: str, top: int) -> None:
    """Why the filter scores a stored message as it does.

    The message is named by its Message-ID (or the synthetic one a ticket shows
    for mail that had none), or by its intake id, as `quarantine list` shows it.

    Prints what was recorded when the message arrived, then the score of the
    installation's model as it is now (it may have learned since) taken apart
    into the tokens that pushed it up or down, largest first. For a held spam
    or a possible-spam ticket; reads the stored message, changes nothing.
    """
    from maildesk.cli import build_app
    from maildesk.db import queries
    from maildesk.db.models import Blob, Intake
    from maildesk.terminal import printable

    app = build_app(ctx)
    spec = ScorerSpec.from_settings(app.settings)
    if spec is None:
        raise click.ClickException("the spam filter is off (spam.enabled = false)")
    wanted = message_id.strip().strip("<>")
    with app.db.transaction() as session:
        intake: Intake | None
        if wanted.isdigit():  # a Message-ID always has an "@"
            intake = session.get(Intake, int(wanted))
            missing = f"no stored message with intake id {wanted}"
        else:
            found = queries.intakes_for_message_id(session, wanted)
            intake = found[-1] if found else None
            missing = f"no stored message with Message-ID <{wanted}>"
        if intake is None:
            raise click.ClickException(missing)
        blob = session.get(Blob, intake.raw_sha256)
        raw = bytes(blob.data) if blob is not None else b""
        recorded = [
            e.reason for e in queries.events_for_intake(session, intake.id) if e.kind == "spam"
        ]
    try:
        msg = parse_message(raw)
    except ParseError as exc:
        raise click.ClickException(f"intake {intake.id} does not parse: {exc}") from exc
    scorer = SpamScorer(spec)  # the installation's thresholds, as the daemon scores
    now, model = scorer.score(msg), scorer.model()
    if now is None or model is None:
        raise click.ClickException("no usable spam model (see the log line above)")
    named = f"<{intake.header_message_id}>" if intake.header_message_id else "no Message-ID"
    click.echo(printable(f"{named} (intake {intake.id})"))
    for reason in recorded or ["not scored"]:
        click.echo(printable(f"on arrival: {reason}"))
    click.echo(f"now: p={now.probability:.3f} ({now.band}) by the {now.model} model")
    _echo_parts(explain_score(model, msg), top)


@spam.command("mark")
@click.argument("label", type=click.Choice(["spam", "ham"]))
@click.argument("message_id")
@click.pass_context
def mark(ctx: click.Context, label: str, message_id: str) -> None:
    """Tell the filter what a stored message is (by its Message-ID), and learn it.

    Ham releases a possible-spam ticket (and sends its acknowledgement), or mail
    held in quarantine as spam (it becomes a ticket, as `quarantine release`
    makes it); spam closes the ticket. Each message is learned once per label.
    """
    from maildesk.cli import build_app, learn_spam_feedback, release_quarantined, spam_feedback
    from maildesk.db import queries
    from maildesk.db.models import IntakeState
    from maildesk.spam.feedback import SpamLabel, settle_ticket
    from maildesk.spam.quarantine import is_spam_quarantine

    app = build_app(ctx, pipeline=True)  # a release processes the mail, ham acknowledges it
    wanted = message_id.strip().strip("<>")
    with app.db.transaction() as session:
        intakes = queries.intakes_for_message_id(session, wanted)
        if not intakes:
            raise click.ClickException(f"no stored message with Message-ID <{wanted}>")
        intake = intakes[0]
        # The ticket is locked first, then the ledger row: the order an agent's
        # #spam/#ham takes (its mail's ticket is locked when it is threaded).
        done = settle_ticket(
            session, intake, SpamLabel(label), app.notices(), app.clock(), actor="cli"
        )
        news = spam_feedback(app, session, intake.raw_sha256, label, "cli")
        held = intake.state == IntakeState.QUARANTINED and is_spam_quarantine(intake)
        release = label == SpamLabel.HAM and held
        if release:
            done = "released from quarantine"
    click.echo(f"<{wanted}> marked {label}" + ("" if news else " (already known)") + f"; {done}")
    if release:
        release_quarantined(ctx, intake.id)
    else:
        learn_spam_feedback(app)


@spam.command("status")
@click.option(
    "--model",
    "model_path",
    type=click.Path(path_type=Path),
    default=None,
    help="A model file to inspect instead of the installation's live model.",
)
@click.pass_context
def status(ctx: click.Context, model_path: Path | None) -> None:
    """Show which model is in use, its version, what it has learned and when it was saved."""
    seed_path, pending, shared = SEED_PATH, None, None
    if model_path is not None:
        model = _named_model(model_path, "--model")
        note = (
            f"spam model: loaded {model_path} "
            f"({model.trained_spam} spam / {model.trained_ham} ham trained)"
        )
    else:
        from maildesk.cli import build_app
        from maildesk.shared_models import SPAM, held_version, shared_version
        from maildesk.spam.feedback import feedback_counts

        app = build_app(ctx)
        spec = ScorerSpec.from_settings(app.settings)
        if spec is None:
            click.echo("spam filter: off (spam.enabled = false)")
            return
        model_path, seed_path = spec.live_path, spec.seed_path or SEED_MODEL
        with app.db.transaction() as session:
            pending = feedback_counts(session)
        shared = shared_version(app.db, SPAM)
        try:
            model, note = SpamFilter.load_or_seed(model_path, seed_path)
        except ModelLoadError as exc:
            raise click.ClickException(f"no usable model: {exc}") from exc
    click.echo(note)
    meta = model.metadata()
    live = "falling back" not in note
    click.echo(f"model: {'live ' + str(model_path) if live else 'seed ' + str(seed_path)}")
    click.echo(f"version: {meta['seen']}")
    click.echo(f"trained: {meta['trained_spam']} spam, {meta['trained_ham']} ham")
    for key in ("trained_spam", "trained_ham", "seen", "updated_at", "thresholds"):
        click.echo(f"{key}: {meta[key]}")
    if live:
        saved = datetime.fromtimestamp(model_path.stat().st_mtime, UTC)
        click.echo(f"last saved: {saved.isoformat(timespec='seconds')}")
    else:
        click.echo("last saved: never (no live model yet)")
    if pending is not None:
        click.echo("feedback: " + ", ".join(f"{count} {what}" for what, count in pending.items()))
        held = held_version(model_path) if model_path.exists() else None
        click.echo(
            f"shared version: {shared if shared is not None else 'none yet'} in the database, "
            f"{held if held is not None else 'none'} on this node"
        )


@spam.command("eval")
@click.option(
    "--index", "index", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option("--protocol", type=click.Choice([p.value for p in Protocol]), default="online")
@click.option("--limit", type=int, default=None, help="Only the first N index lines.")
@click.option("--json", "as_json", is_flag=True)
@click.option(
    "--start",
    default=EMPTY_START,
    show_default=True,
    metavar="empty|seed|live|FILE",
    help=(
        "The model the run starts from: empty (the TREC protocol, as other filters "
        "are measured), seed (the shipped seed: what a new installation would do on "
        "this mail; no measure on the SpamAssassin corpus, which the seed learned), "
        "live (this installation's live model) or a saved model file. A model is "
        "read, never written."
    ),
)
@click.pass_context
def eval_(
    ctx: click.Context, index: Path, protocol: str, limit: int | None, as_json: bool, start: str
) -> None:
    """Evaluate a model on a TREC index (online: classify, then learn), by default from empty."""

    def progress(done: int) -> None:
        if done % 5000 == 0:
            click.echo(f"eval: {done} messages", err=True)

    model = _start_model(ctx, start)
    try:
        result = evaluate_index(index, Protocol(protocol), model, limit=limit, progress=progress)
    except IndexFormatError as exc:
        raise click.BadParameter(str(exc), param_hint="--index") from exc
    if as_json:
        click.echo(json.dumps({"start": start, **result.as_dict()}))
        return
    click.echo(
        f"{result.protocol} from {start}: {result.messages} messages "
        f"({result.spam} spam, {result.ham} ham, {result.unparsable} unparsable)\n"
        f"FP% {result.fp_pct:.2f}  FN% {result.fn_pct:.2f}  unsure% {result.unsure_pct:.2f}  "
        f"(1-ROCA)% {result.one_minus_roca_pct:.4f}  messages/s {result.messages_per_s:.0f}"
        f"  messages/CPU-s {result.cpu_messages_per_s:.0f}"
    )
