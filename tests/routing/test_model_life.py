"""The learned category model's life: first lessons, a damaged file, training it for the daemon."""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from maildesk.app import App
from maildesk.cli import main
from maildesk.config import load_settings
from maildesk.routing.categorize import CategoryModel
from maildesk.routing.models import CATEGORY_MODEL_NAME, ModelSlot, pull_models
from maildesk.shared_models import held_version, pull, shared_version
from tests.agents.agenthelp import client_reply, events_of_kind, reply_address, ticket_number, to
from tests.conftest import FrozenClock, make_settings, write_cli_config
from tests.mailfactory import deliver, make_mail

AGENTS = [{"name": "bob", "addresses": ["bob@agents.test"], "groups": ["L1"]}]
GROUPS = [{"name": "L1"}]

TONER = ("Toner empty", "The toner cartridge of the printer is empty.")
VPN = ("VPN drops", "The vpn tunnel drops every hour.")
INVOICE = ("Invoice wrong", "My invoice shows the wrong amount.")
PASSWORD = ("Password reset", "I forgot my password and cannot log in.")


@pytest.fixture
def app(tmp_path: Path, database_url: str, clock: FrozenClock) -> Iterator[App]:
    rules = tmp_path / "rules"
    rules.mkdir()
    settings = make_settings(
        tmp_path,
        database_url,
        agents=AGENTS,
        groups=GROUPS,
        routing={"default_group": "L1", "rules_dir": str(rules)},
    )
    application = App.build(settings, clock=clock)
    yield application
    application.db.dispose()


def model_path(app: App) -> Path:
    return app.settings.data_dir / CATEGORY_MODEL_NAME


def new_ticket(app: App, mail: tuple[str, str], number: int) -> None:
    subject, body = mail
    deliver(app, make_mail(subject=subject, body=body, message_id=f"t{number}@customer.test"))
    assert ticket_number(app, number).subject == subject


def bob_sets_category(app: App, number: int, category: str) -> None:
    """bob answers the new-ticket notice of ticket ``number`` with ``#category``."""
    notice = next(
        n for n in to(app, "bob@agents.test", "new_ticket") if f"#{number}]" in n.msg["Subject"]
    )
    body = f"#category {category}\n\nThanks, we are on it.\n"
    deliver(app, client_reply(notice, body), rcpt=(reply_address(notice),), mail_from="bob@x")
    assert f"applied: #category {category}" in to(app, "bob@agents.test", "agent_result")[-1].text
    assert ticket_number(app, number).category == category


def test_a_first_correction_does_not_put_every_new_ticket_in_its_category(app: App) -> None:
    # A fresh installation: no model yet. The first #category creates one that knows
    # one category; a model with nothing to choose between has no confidence.
    new_ticket(app, INVOICE, 1)
    bob_sets_category(app, 1, "billing")
    assert CategoryModel.load(model_path(app)).labels == ("billing",)

    new_ticket(app, PASSWORD, 2)
    assert ticket_number(app, 2).category is None
    [guess] = events_of_kind(app, "categorized")  # ticket 1 came before any model
    assert guess.data["applied"] is False and guess.data["confidence"] < 0.6


def test_a_correction_on_a_damaged_model_file_keeps_what_was_learned(
    app: App, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for number, mail, category in ((1, TONER, "printing"), (2, VPN, "network")):
        new_ticket(app, mail, number)
        bob_sets_category(app, number, category)
    path = model_path(app)
    path.write_bytes(path.read_bytes()[:200])  # damaged on disk (truncated)

    new_ticket(app, PASSWORD, 3)
    with caplog.at_level(logging.ERROR, logger="maildesk.routing"):
        bob_sets_category(app, 3, "access")
    assert "category model not loaded" in caplog.text
    # The lesson is learned on what was learned before, not on an empty model
    # that would then be published to every node.
    local = CategoryModel.load(path)
    assert set(local.labels) == {"printing", "network", "access"}
    other_node = tmp_path / "other" / CATEGORY_MODEL_NAME
    other_node.parent.mkdir()
    pull(app.db, other_node, "category")
    shared = CategoryModel.load(other_node)
    assert set(shared.labels) == {"printing", "network", "access"}
    assert shared.predict("the printer toner is empty").top_label == "printing"
    assert shared.predict("the vpn tunnel drops").top_label == "network"


def test_a_damaged_model_file_is_taken_again_from_the_database(app: App) -> None:
    for number, mail, category in ((1, TONER, "printing"), (2, VPN, "network")):
        new_ticket(app, mail, number)
        bob_sets_category(app, number, category)
    path = model_path(app)
    held = held_version(path)
    path.write_bytes(b"not a model at all")

    pull_models(app.db, app.settings)  # what the scheduler does every minute
    assert held_version(path) == held == shared_version(app.db, "category")
    assert set(CategoryModel.load(path).labels) == {"printing", "network"}
    new_ticket(app, ("Printer toner", "the printer toner cartridge is empty again"), 3)
    assert ticket_number(app, 3).category == "printing"


# -- maildesk categorize --------------------------------------------------------------

HISTORY = {
    "printing": ["printer toner empty", "paper jam in the printer", "printer cartridge leaks"],
    "network": ["vpn tunnel drops", "wifi keeps disconnecting", "network share unreachable"],
    "access": ["password reset please", "account locked out", "cannot log in password"],
}


def _write_history(path: Path, per_label: int = 10, long_text: str = "") -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["Body", "Category"])
        for label, texts in HISTORY.items():
            for i in range(per_label):
                writer.writerow([f"{texts[i % len(texts)]} {long_text}", label])


def test_train_writes_the_model_the_daemon_uses_and_every_node_takes(
    tmp_path: Path, database_url: str, clock: FrozenClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    history = tmp_path / "history.csv"
    _write_history(history)
    config = write_cli_config(tmp_path / "maildesk.toml", tmp_path / "data", database_url)
    args = ["--config", str(config), "categorize", "train", "--csv", str(history)]
    result = CliRunner().invoke(main, [*args, "--text-col", "Body", "--label-col", "Category"])
    assert result.exit_code == 0, result.output

    settings = load_settings(str(config))
    app = App.build(settings, clock=clock)
    try:
        deliver(app, make_mail(subject="Paper jam", body="the printer has a paper jam"))
        assert ticket_number(app, 1).category == "printing"
        # A second node (its own data directory) takes the trained model from the database.
        other = settings.model_copy(update={"data_dir": tmp_path / "node-b"})
        other.data_dir.mkdir()
        pull_models(app.db, other)
        node_b = CategoryModel.load(other.data_dir / CATEGORY_MODEL_NAME)
        assert node_b.predict("my password is locked").top_label == "access"
    finally:
        app.db.dispose()
    # Now a model is in use: training again replaces it only when asked to.
    again = CliRunner().invoke(main, [*args, "--text-col", "Body", "--label-col", "Category"])
    assert again.exit_code == 1 and "--replace" in again.output
    replaced = CliRunner().invoke(
        main, [*args, "--text-col", "Body", "--label-col", "Category", "--replace"]
    )
    assert replaced.exit_code == 0, replaced.output


def test_eval_on_too_little_history_says_why(tmp_path: Path) -> None:
    history = tmp_path / "history.csv"
    history.write_text("Body,Category\nprinter jam,printing\ntoner empty,printing\nvpn,network\n")
    args = ["categorize", "eval", "--csv", str(history), "--text-col", "Body"]
    result = CliRunner().invoke(main, [*args, "--label-col", "Category", "--no-baseline"])
    assert result.exit_code == 2, result.output
    assert "network" in result.output and "at least two" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_train_takes_a_ticket_longer_than_the_csv_modules_field_limit(tmp_path: Path) -> None:
    history, out = tmp_path / "history.csv", tmp_path / "model.npz"
    _write_history(history, long_text="word " * 40_000)  # 200 KB of text in one field
    args = ["categorize", "train", "--csv", str(history), "--text-col", "Body"]
    result = CliRunner().invoke(main, [*args, "--label-col", "Category", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert set(CategoryModel.load(out).labels) == set(HISTORY)


def _two_nodes(tmp_path: Path) -> tuple[ModelSlot, ModelSlot]:
    """The category model slot of node A and of node B, each with its own directory."""
    nodes = (
        ModelSlot("category", tmp_path / "a" / CATEGORY_MODEL_NAME),
        ModelSlot("category", tmp_path / "b" / CATEGORY_MODEL_NAME),
    )
    for slot in nodes:
        assert slot.path is not None
        slot.path.parent.mkdir()
    return nodes


def _labels_after_node_b_publishes(
    app: App, node_a: ModelSlot, node_b: ModelSlot
) -> tuple[str, ...]:
    """Node B learns and publishes a correction; the labels node A's model has once it
    pulls (B's model, unless A wrongly believes it holds that version already)."""
    with app.db.transaction() as session:
        node_b.learn("the vpn drops every hour", "network", session=session, node="b")
    assert node_a.path is not None
    pull(app.db, node_a.path, "category")
    return CategoryModel.load(node_a.path).labels


def test_a_correction_whose_transaction_rolls_back_leaves_the_node_taking_the_next_model(
    app: App, tmp_path: Path
) -> None:
    """Node A learns a correction, then its transaction fails (a later step of the same
    mail); node B publishes its own. A must take B's model, not believe it already
    holds that version number."""
    node_a, node_b = _two_nodes(tmp_path)
    with pytest.raises(RuntimeError), app.db.transaction() as session:
        node_a.learn("the printer has a paper jam", "printing", session=session, node="a")
        raise RuntimeError("a later step of this mail failed")
    assert _labels_after_node_b_publishes(app, node_a, node_b) == ("network",)


def test_a_correction_in_a_released_savepoint_whose_transaction_rolls_back_is_not_held(
    app: App, tmp_path: Path
) -> None:
    """A savepoint released (an agent's commands all applied) is no commit: when the
    transaction around it rolls back, node A must not hold the version it published."""
    node_a, node_b = _two_nodes(tmp_path)
    with pytest.raises(RuntimeError), app.db.transaction() as session:
        with session.begin_nested():
            node_a.learn("the printer has a paper jam", "printing", session=session, node="a")
        raise RuntimeError("a later step of this mail failed")
    assert _labels_after_node_b_publishes(app, node_a, node_b) == ("network",)


def test_two_corrections_in_a_savepoint_rolled_back_leave_the_node_taking_the_next_model(
    app: App, tmp_path: Path
) -> None:
    """Two lessons to one model in one agent mail that is then undone (a savepoint
    rolled back): neither stays in node A's copy, which takes node B's model next."""
    node_a, node_b = _two_nodes(tmp_path)
    with app.db.transaction() as session:
        node_a.learn("the password expired", "access", session=session, node="a")
    with app.db.transaction() as session, pytest.raises(RuntimeError), session.begin_nested():
        node_a.learn("the printer has a paper jam", "printing", session=session, node="a")
        node_a.learn("the printer toner is empty", "supplies", session=session, node="a")
        raise RuntimeError("a later command of this mail failed")
    assert set(_labels_after_node_b_publishes(app, node_a, node_b)) == {"access", "network"}
