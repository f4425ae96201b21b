"""The ``spam`` click group, driven through CliRunner."""

from __future__ import annotations

import json
from email.message import EmailMessage
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from maildesk.cli import main
from maildesk.spam.cli import spam


def write_mail(path: Path, sender: str, subject: str, body: str) -> Path:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = "support@desk.test"
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{path.stem}@{sender.split('@')[1]}>"
    msg.set_content(body)
    path.write_bytes(msg.as_bytes())
    return path


def make_corpus(root: Path) -> tuple[list[Path], list[Path]]:
    spam_dir, ham_dir = root / "spam", root / "ham"
    spam_dir.mkdir()
    ham_dir.mkdir()
    spams = [
        write_mail(
            spam_dir / f"s{i}.eml",
            f"promo{i}@deals.biz",
            "CHEAP MEDS $99!!!",
            f"Buy pills now http://pills{i}.deals.biz/order unsubscribe {i}",
        )
        for i in range(6)
    ]
    hams = [
        write_mail(
            ham_dir / f"h{i}.eml",
            f"user{i}@corp.org",
            f"Ticket {i}: printer jam",
            f"Hello, printer {i} in room B jams on every job. Thanks, User",
        )
        for i in range(6)
    ]
    return spams, hams


def train_fresh(root: Path) -> Path:
    """Train an empty model on :func:`make_corpus` through the CLI; returns its file."""
    make_corpus(root)
    out = root / "model.npz"
    args = ["train", "--spam", str(root / "spam"), "--ham", str(root / "ham")]
    result = CliRunner().invoke(spam, [*args, "--out", str(out), "--fresh"])
    assert result.exit_code == 0, result.output
    assert "learned 12 messages" in result.output and out.exists()
    return out


def test_train_then_score_ranks_spam_above_ham(tmp_path: Path) -> None:
    out = train_fresh(tmp_path)
    runner = CliRunner()
    probe_spam = write_mail(
        tmp_path / "ps.eml",
        "new@deals.biz",
        "CHEAP MEDS $49!!!",
        "Buy pills now http://pills9.deals.biz/order unsubscribe",
    )
    probe_ham = write_mail(
        tmp_path / "ph.eml",
        "new@corp.org",
        "Ticket 77: printer jam",
        "Hello, printer 7 in room C jams on every job. Thanks",
    )
    result = runner.invoke(spam, ["score", "--model", str(out), str(probe_spam), str(probe_ham)])
    assert result.exit_code == 0, result.output
    lines = [line.split("\t") for line in result.stdout.splitlines()]
    probs = {Path(cols[0]).name: float(cols[1]) for cols in lines}
    assert probs["ps.eml"] > probs["ph.eml"]
    assert lines[0][2] in {"ham", "unsure", "spam"}


def test_status_reports_seed_fallback_when_live_model_missing(
    tmp_path: Path, database_url: str
) -> None:
    config = tmp_path / "maildesk.toml"
    config.write_text(
        f'data_dir = "{tmp_path / "data"}"\ndatabase_url = "{database_url}"\n'
        'support_addresses = ["support@example.com"]\ninstallation_secret = "status-test"\n'
    )
    result = CliRunner().invoke(main, ["--config", str(config), "spam", "status"])
    assert result.exit_code == 0, result.output
    assert "spam-model.npz does not exist; falling back to the seed" in result.output
    assert "trained_spam:" in result.output


def _refused(result: Result, *named: str) -> None:
    """A usage error (exit 2) that names what is wrong, not a traceback."""
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output
    for text in named:
        assert text in result.output


def test_a_model_named_on_the_command_line_must_load(tmp_path: Path) -> None:
    """--model is what the user asked for: no quiet fallback to the seed's scores."""
    probe = write_mail(tmp_path / "ps.eml", "new@deals.biz", "CHEAP MEDS", "Buy pills now")
    missing = tmp_path / "nope.npz"
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"not a model")
    runner = CliRunner()
    for model, why in ((missing, "nope.npz does not exist"), (broken, "not a readable model")):
        _refused(runner.invoke(spam, ["score", "--model", str(model), str(probe)]), "--model", why)
        _refused(runner.invoke(spam, ["status", "--model", str(model)]), "--model", why)
    status = runner.invoke(spam, ["status", "--model", str(train_fresh(tmp_path))])
    assert status.exit_code == 0, status.output
    assert "trained: 6 spam, 6 ham" in status.output and "falling back" not in status.output


def test_train_does_not_write_over_a_file_that_is_not_a_model(tmp_path: Path) -> None:
    make_corpus(tmp_path)
    other = tmp_path / "notes.txt"
    other.write_bytes(b"someone's notes, not a model")
    result = CliRunner().invoke(
        spam, ["train", "--ham", str(tmp_path / "ham"), "--out", str(other)]
    )
    _refused(result, "--out", "notes.txt", "--fresh")
    assert other.read_bytes() == b"someone's notes, not a model"


def test_eval_online_json_on_a_small_index(tmp_path: Path) -> None:
    spams, hams = make_corpus(tmp_path)
    index = tmp_path / "index"
    lines = []
    for s, h in zip(spams, hams, strict=True):
        lines += [f"spam {s.relative_to(tmp_path)}", f"ham {h.relative_to(tmp_path)}"]
    index.write_text("\n".join(lines) + "\n")
    result = CliRunner().invoke(
        spam, ["eval", "--index", str(index), "--protocol", "online", "--json"]
    )
    assert result.exit_code == 0, result.output
    figures = json.loads(result.stdout)
    assert figures["messages"] == 12 and figures["spam"] == 6 and figures["ham"] == 6
    for key in ("fp_pct", "fn_pct", "unsure_pct", "one_minus_roca_pct", "messages_per_s"):
        assert key in figures


def _probe_index(root: Path) -> Path:
    """An index of new mail like :func:`make_corpus`'s, which no model has learned."""
    probes = root / "probes"
    probes.mkdir()
    lines = []
    for i in range(4):
        spam_file = write_mail(
            probes / f"ps{i}.eml",
            f"offer{i}@deals.biz",
            "CHEAP MEDS $59!!!",
            f"Buy pills now http://pills{i + 20}.deals.biz/order unsubscribe {i}",
        )
        ham_file = write_mail(
            probes / f"ph{i}.eml",
            f"staff{i}@corp.org",
            f"Ticket {i + 40}: printer jam",
            f"Hello, printer {i + 40} in room D jams on every job. Thanks, Staff",
        )
        lines += [f"spam probes/{spam_file.name}", f"ham probes/{ham_file.name}"]
    index = root / "probe-index"
    index.write_text("\n".join(lines) + "\n")
    return index


def test_eval_can_start_from_a_saved_model_and_leaves_it_unchanged(tmp_path: Path) -> None:
    model_file = train_fresh(tmp_path)
    saved = model_file.read_bytes()
    index = _probe_index(tmp_path)
    runner = CliRunner()
    base = ["eval", "--index", str(index), "--json"]
    from_empty = json.loads(runner.invoke(spam, base).stdout)
    result = runner.invoke(spam, [*base, "--start", str(model_file)])
    assert result.exit_code == 0, result.output
    from_model = json.loads(result.stdout)
    assert from_empty["start"] == "empty" and from_model["start"] == str(model_file)
    # An empty model cannot call the first spam spam; one that learned the kind can.
    assert from_empty["fn_pct"] > 0
    assert from_model["fn_pct"] == 0 and from_model["fp_pct"] == 0
    assert "starting from" in result.stderr and "6 spam and 6 ham learned" in result.stderr
    assert model_file.read_bytes() == saved  # the run learned in memory only


def test_eval_from_the_seed_and_from_an_unreadable_model(tmp_path: Path) -> None:
    index = _probe_index(tmp_path)
    runner = CliRunner()
    result = runner.invoke(spam, ["eval", "--index", str(index), "--start", "seed"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("online from seed: 8 messages (4 spam, 4 ham")
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"not a model")
    result = runner.invoke(spam, ["eval", "--index", str(index), "--start", str(broken)])
    assert result.exit_code == 2  # a usage error, not figures of some other model
    assert "--start" in result.output and "broken.npz" in result.output


def test_eval_from_the_installation_live_model(tmp_path: Path, database_url: str) -> None:
    config = tmp_path / "maildesk.toml"
    config.write_text(
        f'data_dir = "{tmp_path / "data"}"\ndatabase_url = "{database_url}"\n'
        'support_addresses = ["support@example.com"]\ninstallation_secret = "eval-test"\n'
    )
    index = _probe_index(tmp_path)
    args = ["--config", str(config), "spam", "eval", "--index", str(index), "--start", "live"]
    runner = CliRunner()
    missing = runner.invoke(main, args)
    assert missing.exit_code == 2 and "spam-model.npz does not exist" in missing.output
    live = tmp_path / "data" / "spam-model.npz"
    live.parent.mkdir(exist_ok=True)
    train_fresh(tmp_path).rename(live)
    result = runner.invoke(main, [*args, "--json"])
    assert result.exit_code == 0, result.output
    assert f"starting from {live}" in result.stderr
    assert json.loads(result.stdout)["fn_pct"] == 0


def test_eval_rejects_a_malformed_index(tmp_path: Path) -> None:
    index = tmp_path / "index"
    index.write_text("maybe some/file\n")
    result = CliRunner().invoke(spam, ["eval", "--index", str(index)])
    _refused(result, "--index", f"{index}:1: expected 'spam|ham <path>'")


def test_eval_rejects_a_binary_file_or_a_folder_as_index(tmp_path: Path) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(bytes(range(256)) * 8)
    result = CliRunner().invoke(spam, ["eval", "--index", str(junk)])
    _refused(result, "--index", f"{junk}: not a text index")
    result = CliRunner().invoke(spam, ["eval", "--index", str(tmp_path)])
    _refused(result, "--index", "is a directory")


def test_score_explain_names_what_pushed_each_score(tmp_path: Path) -> None:
    out = train_fresh(tmp_path)
    probe = write_mail(tmp_path / "ps.eml", "new@deals.biz", "CHEAP MEDS", "Buy pills now")
    result = CliRunner().invoke(
        spam, ["score", "--model", str(out), "--explain", "--top", "5", str(probe)]
    )
    assert result.exit_code == 0, result.output
    first, summary, *parts = result.stdout.splitlines()
    assert first.startswith(f"{probe}\t") and first.endswith("\tspam")
    assert summary.startswith("  score +")
    assert len(parts) == 6 and parts[-1].endswith("parts together")
    named = [line.split(maxsplit=1) for line in parts[:5]]
    sizes = [abs(float(share)) for share, _ in named]
    assert sizes == sorted(sizes, reverse=True)
    assert any(what in {"from:deals.biz", "s:CHEAP", "pills"} for _, what in named)


def test_score_without_model_uses_the_installation_live_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """README: `spam score --explain FILE` does for a file what `spam why` does for a
    stored mail, with the model as it is now: the live one in the data directory."""
    config = tmp_path / "maildesk.toml"
    config.write_text(
        f'data_dir = "{tmp_path / "data"}"\n'
        'support_addresses = ["support@example.com"]\ninstallation_secret = "score-test"\n'
    )
    live = tmp_path / "data" / "spam-model.npz"
    live.parent.mkdir()
    train_fresh(tmp_path).rename(live)
    monkeypatch.chdir(tmp_path)  # no ./spam-model.npz here: only the live model counts
    probe = write_mail(tmp_path / "ps.eml", "new@deals.biz", "CHEAP MEDS", "Buy pills now")
    runner = CliRunner()
    by_live = runner.invoke(spam, ["score", "--model", str(live), str(probe)])
    result = runner.invoke(main, ["--config", str(config), "spam", "score", str(probe)])
    assert result.exit_code == 0, result.output
    assert result.stdout == by_live.stdout
    assert "falling back to the seed" not in result.stderr
