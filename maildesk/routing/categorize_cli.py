"""``maildesk categorize``: train and evaluate the learned category model from a CSV."""

from __future__ import annotations

import json
import math
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import click

from maildesk.routing.categorize import CategoryModel, Evaluation, evaluate, read_labelled_csv


def _read(csv_path: Path, text_col: str, label_col: str) -> tuple[list[str], list[str]]:
    try:
        texts, labels = read_labelled_csv(csv_path, text_col, label_col)
    except (ValueError, UnicodeDecodeError) as exc:
        raise click.UsageError(str(exc)) from exc
    if len(set(labels)) < 2:
        raise click.UsageError(f"{csv_path}: need at least two distinct labels in {label_col!r}")
    return texts, labels


def _check_split(csv_path: Path, labels: list[str], split: float) -> None:
    """A stratified split needs two tickets of every label and room for each on both sides."""
    counts = Counter(labels)
    rare = sorted(label for label, n in counts.items() if n < 2)
    if rare:
        raise click.UsageError(
            f"{csv_path}: to hold some out for testing, every label needs at least two "
            f"tickets; only one of: {', '.join(rare)}"
        )
    n_test = math.ceil(split * len(labels))
    if min(n_test, len(labels) - n_test) < len(counts):
        raise click.UsageError(
            f"{csv_path}: {len(labels)} tickets split {1 - split:g}/{split:g} leave fewer than "
            f"one per label ({len(counts)} labels) on one side; change --split or add tickets"
        )


_csv_option = click.option(
    "--csv",
    "csv_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="CSV file with a header row.",
)
_text_option = click.option("--text-col", required=True, help="Column holding the ticket text.")
_label_option = click.option("--label-col", required=True, help="Column holding the category.")


@click.group("categorize")
def categorize() -> None:
    """Learned ticket categorization."""


@categorize.command("train")
@_csv_option
@_text_option
@_label_option
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Model file to write (.npz, no pickle). Default: the daemon's category model "
    "(routing.category_model, else <data_dir>/category-model.npz), shared with every node.",
)
@click.option(
    "--replace",
    is_flag=True,
    help="Replace the category model in use (and the corrections agents taught it).",
)
@click.pass_context
def train_command(
    ctx: click.Context,
    csv_path: Path,
    text_col: str,
    label_col: str,
    out: Path | None,
    replace: bool,
) -> None:
    """Train a new category model from labelled history."""
    texts, labels = _read(csv_path, text_col, label_col)
    model = CategoryModel()
    model.train(texts, labels)
    trained = (
        f"trained on {len(texts)} tickets, {len(model.labels)} labels; version {model.version}"
    )
    if out is not None:
        model.save(out)
        click.echo(f"{trained}; wrote {out}")
        return
    path, shared = _install(ctx, model, replace=replace)
    click.echo(
        f"{trained}; wrote {path}, the model the route stage uses "
        f"(shared version {shared}: every node takes it within a minute)"
    )


def _install(ctx: click.Context, model: CategoryModel, *, replace: bool) -> tuple[Path, int]:
    """Make ``model`` the daemon's category model and publish it to every node.

    One already in use holds what agents taught it: replaced only when asked.
    """
    from sqlalchemy import select

    from maildesk.cli import build_app
    from maildesk.db.models import SharedModel
    from maildesk.routing.models import model_slots
    from maildesk.shared_models import PublishConflict, publish, settle

    app = build_app(ctx)
    try:
        slot = model_slots(app.settings)["category"]
        assert slot.path is not None
        slot.path.parent.mkdir(parents=True, exist_ok=True)
        with app.db.transaction() as session:
            based_on = session.scalar(
                select(SharedModel.version).where(SharedModel.name == slot.field)
            )
            if (based_on is not None or slot.path.exists()) and not replace:
                raise click.ClickException(
                    f"a category model is in use ({slot.path}, with what agents taught it): "
                    "--replace to replace it, or --out FILE to write another file"
                )
            model.save(slot.path)
            try:
                version = publish(
                    session,
                    slot.path,
                    based_on,
                    node=app.settings.effective_node_name,
                    now=datetime.now(UTC),
                    name=slot.field,
                )
            except PublishConflict as exc:
                raise click.ClickException(f"{exc}; run the command again") from exc
        settle(slot.path, version)
        return slot.path, version
    finally:
        app.db.dispose()


@categorize.command("eval")
@_csv_option
@_text_option
@_label_option
@click.option(
    "--split",
    type=click.FloatRange(0.01, 0.99),
    default=0.2,
    show_default=True,
    help="Held-out fraction (stratified).",
)
@click.option("--seed", type=int, default=42, show_default=True, help="Split seed.")
@click.option(
    "--baseline/--no-baseline",
    default=True,
    show_default=True,
    help="Also train a batch TF-IDF + LinearSVC baseline.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def eval_command(
    csv_path: Path,
    text_col: str,
    label_col: str,
    split: float,
    seed: int,
    baseline: bool,
    as_json: bool,
) -> None:
    """Report accuracy and macro-F1 on a held-out split."""
    texts, labels = _read(csv_path, text_col, label_col)
    _check_split(csv_path, labels, split)
    result = evaluate(texts, labels, test_size=split, seed=seed, baseline=baseline)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
    else:
        click.echo(format_evaluation(result))


def format_evaluation(result: Evaluation) -> str:
    """Human-readable table of an :class:`Evaluation`."""
    lines = [
        f"train {result.n_train} / test {result.n_test} tickets, {len(result.labels)} labels",
        f"{'model':<48} {'accuracy':>8} {'macro-F1':>8} {'train/s':>9}",
    ]
    for scores in (result.incremental, result.baseline):
        if scores is not None:
            lines.append(
                f"{scores.name:<48} {scores.accuracy:>8.4f} {scores.macro_f1:>8.4f} "
                f"{scores.train_tickets_per_second:>9.0f}"
            )
    if result.f1_ratio is not None:
        lines.append(f"macro-F1 ratio incremental/baseline: {result.f1_ratio:.4f}")
    return "\n".join(lines)
