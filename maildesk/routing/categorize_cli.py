"""``maildesk categorize``: train and evaluate the learned category model from a CSV."""

from __future__ import annotations

import json
from pathlib import Path

import click

from maildesk.routing.categorize import CategoryModel, Evaluation, evaluate, read_labelled_csv

DEFAULT_MODEL_PATH = Path("category_model.npz")


def _read(csv_path: Path, text_col: str, label_col: str) -> tuple[list[str], list[str]]:
    try:
        texts, labels = read_labelled_csv(csv_path, text_col, label_col)
    except (ValueError, UnicodeDecodeError) as exc:
        raise click.UsageError(str(exc)) from exc
    if len(set(labels)) < 2:
        raise click.UsageError(f"{csv_path}: need at least two distinct labels in {label_col!r}")
    return texts, labels


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
    default=DEFAULT_MODEL_PATH,
    show_default=True,
    help="Model file to write (.npz, no pickle).",
)
def train_command(csv_path: Path, text_col: str, label_col: str, out: Path) -> None:
    """Train a new category model from labelled history."""
    texts, labels = _read(csv_path, text_col, label_col)
    model = CategoryModel()
    model.train(texts, labels)
    model.save(out)
    click.echo(
        f"trained on {len(texts)} tickets, {len(model.labels)} labels; "
        f"version {model.version}; wrote {out}"
    )


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
