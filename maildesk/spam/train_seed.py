"""Build the shipped seed model: ``python -m maildesk.spam.train_seed --out spam_model/``.

Trains an empty model on every message of a TREC index (default: the
SpamAssassin public corpus index) in index order, then saves ``seed.npz``.
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from maildesk.spam.evaluate import load_messages, read_index
from maildesk.spam.model import SpamFilter


def _default_index() -> Path:
    corpus = os.environ.get("MAILDESK_CORPUS")
    base = Path(corpus) if corpus else Path(__file__).resolve().parents[3] / "shared" / "corpus"
    return base / "spamassassin" / "index"


@click.command()
@click.option("--index", type=click.Path(exists=True, path_type=Path), default=None)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("spam_model"))
def main(index: Path | None, out: Path) -> None:
    index = index or _default_index()
    messages, failed = load_messages(read_index(index))
    model = SpamFilter()
    for msg, is_spam in messages:
        model.learn(msg, is_spam)
    model.save(out / "seed.npz")
    (out / "seed.npz").chmod(0o644)  # shipped read-only data, not a secret
    click.echo(
        f"seed: {model.trained_spam} spam + {model.trained_ham} ham from {index} "
        f"({failed} unparsable) -> {out / 'seed.npz'}"
    )


if __name__ == "__main__":
    main()
