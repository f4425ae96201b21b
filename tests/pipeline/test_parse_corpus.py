"""parse_message over the whole shared corpus: never anything but ParseError."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from maildesk.pipeline.parse import ParseError, parse_message

SPAMASSASSIN_FOLDERS = ("easy-ham-1", "easy-ham-2", "hard-ham-1", "spam-1", "spam-2")


def corpus_root() -> Path:
    env = os.environ.get("MAILDESK_CORPUS")
    root = Path(env) if env else Path(__file__).resolve().parents[2] / "../shared/corpus"
    if not root.is_dir():
        pytest.skip(f"mail corpus not found at {root} (set MAILDESK_CORPUS)")
    return root.resolve()


def spamassassin_files(root: Path) -> list[Path]:
    return [
        p
        for folder in SPAMASSASSIN_FOLDERS
        for p in sorted((root / "spamassassin" / folder).iterdir())
    ]


def fixture_files(root: Path) -> list[Path]:
    lines = (root / "fixtures" / "MANIFEST.tsv").read_text(encoding="utf-8").splitlines()
    rows = [line.split("\t") for line in lines[1:] if line.strip()]
    return [root / "fixtures" / row[1] for row in rows]


def parse_all(files: list[Path]) -> tuple[int, list[str], list[Path]]:
    """(parse errors, unexpected exceptions, messages without text or attachment)."""
    parse_errors = 0
    unexpected: list[str] = []
    empty: list[Path] = []
    for path in files:
        try:
            message = parse_message(path.read_bytes())
        except ParseError:
            parse_errors += 1
        except Exception as exc:
            unexpected.append(f"{path}: {type(exc).__name__}: {exc}")
        else:
            if not message.text.strip() and not message.attachments:
                empty.append(path)
    return parse_errors, unexpected, empty


@pytest.mark.slow
def test_spamassassin_corpus_parses() -> None:
    files = spamassassin_files(corpus_root())
    assert len(files) > 6000
    parse_errors, unexpected, empty = parse_all(files)
    assert unexpected == []
    usable = len(files) - parse_errors - len(empty)
    assert usable >= 0.99 * len(files), f"{parse_errors} errors, {len(empty)} empty: {empty[:5]}"


@pytest.mark.slow
def test_fixture_corpus_never_raises_anything_but_parse_error() -> None:
    files = fixture_files(corpus_root())
    assert len(files) > 1500
    _, unexpected, _ = parse_all(files)
    assert unexpected == []
