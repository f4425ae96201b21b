"""Spam feedback as ops give it: `spam mark`, releasing spam from quarantine; learned once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from maildesk.cli import main
from maildesk.db.models import Intake, Message, Outbox, SpamFeedback, Ticket
from maildesk.spam.model import SpamFilter
from tests.conftest import write_cli_config
from tests.mailfactory import make_mail


def config_file(tmp_path: Path, database_url: str, spam: str) -> Path:
    path, data_dir = tmp_path / "maildesk.toml", tmp_path / "data"
    return write_cli_config(path, data_dir, database_url, f"[spam]\n{spam}\n", "spam-test")


def cli(config: Path, *args: str, stdin: bytes | None = None) -> Result:
    result = CliRunner().invoke(
        main, ["--config", str(config), *args], input=stdin, catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    return result


def rows(database_url: str, model: type[Any]) -> list[Any]:
    engine = create_engine(database_url)
    with Session(engine) as session:
        found: list[Any] = list(session.scalars(select(model)))
    engine.dispose()
    return found


@pytest.fixture
def everything_is_spam(tmp_path: Path, database_url: str) -> Path:
    return config_file(tmp_path, database_url, "unsure_at = 0.0\nspam_at = 0.0")


def test_releasing_spam_from_quarantine_makes_a_ticket_and_learns_ham_once(
    everything_is_spam: Path, tmp_path: Path, database_url: str
) -> None:
    mail = make_mail(message_id="held@customer.test", subject="Order 1234 status")
    cli(everything_is_spam, "ingest", "-", stdin=mail)
    [intake] = rows(database_url, Intake)
    assert (intake.quarantine_reason or "").startswith("spam:")
    assert rows(database_url, Ticket) == []

    out = cli(everything_is_spam, "quarantine", "release", str(intake.id)).output
    assert "created 1" in out and "learned 1" in out
    [ticket] = rows(database_url, Ticket)
    assert not ticket.possible_spam  # released by ops: not filtered again
    [feedback] = rows(database_url, SpamFeedback)
    assert (feedback.label, feedback.source) == ("ham", "quarantine_release")
    assert feedback.learned_at is not None
    live = SpamFilter.load(tmp_path / "data" / "spam-model.npz")
    seed_ham = SpamFilter.load(Path(__file__).parents[2] / "spam_model" / "seed.npz").trained_ham
    assert live.trained_ham == seed_ham + 1
    # The same verdict again is not a second lesson.
    out = cli(everything_is_spam, "spam", "mark", "ham", "held@customer.test").output
    assert "already known" in out and "learned 0" in out
    assert SpamFilter.load(tmp_path / "data" / "spam-model.npz").trained_ham == seed_ham + 1


def test_marking_a_possible_spam_ticket_ham_sends_its_acknowledgement(
    tmp_path: Path, database_url: str
) -> None:
    config = config_file(tmp_path, database_url, "unsure_at = 0.0\nspam_at = 1.0")
    cli(config, "ingest", "-", stdin=make_mail(message_id="maybe@customer.test"))
    [ticket] = rows(database_url, Ticket)
    assert ticket.possible_spam and rows(database_url, Outbox) == []
    out = cli(config, "spam", "mark", "ham", "<maybe@customer.test>").output
    assert "released" in out
    [ticket] = rows(database_url, Ticket)
    assert not ticket.possible_spam
    [ack] = rows(database_url, Outbox)
    assert ack.purpose == "ack" and ack.recipients == ["alice@customer.test"]


@pytest.mark.parametrize(
    "headers",
    [{"Auto-Submitted": "auto-replied"}, {"List-Id": "<users.lists.test>", "Precedence": "list"}],
    ids=["auto-reply", "list-mail"],
)
def test_marking_automated_possible_spam_ham_never_answers_it(
    tmp_path: Path, database_url: str, headers: dict[str, str]
) -> None:
    """An auto-reply or a list's mail flagged possible spam, then marked ham: a ticket as
    it was, still not answered (MAIL-RULES §3: answering an autoresponder is a loop)."""
    config = config_file(tmp_path, database_url, "unsure_at = 0.0\nspam_at = 1.0")
    mail = make_mail(message_id="auto@customer.test", headers=headers)
    cli(config, "ingest", "-", stdin=mail)
    [ticket] = rows(database_url, Ticket)
    assert ticket.possible_spam

    assert "released" in cli(config, "spam", "mark", "ham", "<auto@customer.test>").output

    [ticket] = rows(database_url, Ticket)
    assert not ticket.possible_spam
    assert [row.purpose for row in rows(database_url, Outbox) if row.purpose == "ack"] == []


def test_marking_a_ticket_spam_closes_it_and_a_correction_is_learned_again(
    tmp_path: Path, database_url: str
) -> None:
    config = config_file(tmp_path, database_url, "enabled = true")
    cli(config, "ingest", "-", stdin=make_mail(message_id="x@customer.test"))
    out = cli(config, "spam", "mark", "spam", "x@customer.test").output
    assert "closed as spam" in out and "learned 1" in out
    [ticket] = rows(database_url, Ticket)
    assert ticket.status == "closed"
    out = cli(config, "spam", "mark", "ham", "x@customer.test").output
    assert "learned 1" in out
    [feedback] = rows(database_url, SpamFeedback)
    assert feedback.label == "ham"
    status = cli(config, "spam", "status", "--model", str(tmp_path / "data" / "spam-model.npz"))
    assert "loaded" in status.output
    # Each learning published a version of the shared model; this node holds the newest.
    status = cli(config, "spam", "status")
    assert "shared version: 2 in the database, 2 on this node" in status.output


def test_spam_why_shows_the_recorded_verdict_and_the_tokens_behind_the_score_now(
    everything_is_spam: Path, database_url: str
) -> None:
    mail = make_mail(message_id="held@customer.test", subject="Zanzibarish offer")
    cli(everything_is_spam, "ingest", "-", stdin=mail)

    out = cli(everything_is_spam, "spam", "why", "<held@customer.test>", "--top", "1000").output
    lines = out.splitlines()
    assert lines[0].startswith("<held@customer.test> (intake ")
    assert "on arrival: p=" in lines[1] and "quarantined as spam" in lines[1]
    assert lines[2].startswith("now: p=") and "(spam) by the seed v" in lines[2]
    assert any(line.endswith("  Hello") for line in lines)  # a word of the body, named

    cli(everything_is_spam, "quarantine", "release", str(rows(database_url, Intake)[0].id))
    out = cli(everything_is_spam, "spam", "why", "held@customer.test").output
    assert "released from quarantine" in out  # the second arrival's record
    assert "by the live v" in out  # the release taught the live model

    unknown = CliRunner().invoke(main, ["--config", str(everything_is_spam), "spam", "why", "x@y"])
    assert unknown.exit_code == 1 and "no stored message with Message-ID <x@y>" in unknown.output


def test_mail_without_a_message_id_is_found_by_its_synthetic_id_or_intake_id(
    tmp_path: Path, database_url: str
) -> None:
    config = config_file(tmp_path, database_url, "")
    lines = make_mail(subject="Printer on fire").split(b"\n")
    cli(config, "ingest", "-", stdin=b"\n".join(x for x in lines if b"Message-ID" not in x))
    [message] = [m for m in rows(database_url, Message) if m.from_addr == "alice@customer.test"]
    assert message.header_message_id is None
    shown = message.dedupe_key  # what `tickets show` gives as its Message-ID

    by_key = cli(config, "spam", "why", shown).output
    assert by_key.startswith("no Message-ID (intake 1)") and "on arrival: p=" in by_key
    assert cli(config, "spam", "why", "1").output == by_key  # by intake id
    assert "intake 1 " in cli(config, "explain", shown).output  # the guard's record, too
    missing = CliRunner().invoke(main, ["--config", str(config), "spam", "why", "99"])
    assert missing.exit_code == 1 and "no stored message with intake id 99" in missing.output


def test_marking_held_spam_ham_releases_it_to_a_ticket(
    everything_is_spam: Path, database_url: str
) -> None:
    """`spam mark ham` on mail the filter held is the release ops meant, not only a
    lesson: without it the mail stayed held and expired after the retention days."""
    cli(everything_is_spam, "ingest", "-", stdin=make_mail(message_id="held@customer.test"))
    assert rows(database_url, Ticket) == []
    out = cli(everything_is_spam, "spam", "mark", "ham", "held@customer.test").output
    assert "released from quarantine" in out and "created 1" in out and "learned 1" in out
    [ticket] = rows(database_url, Ticket)
    assert not ticket.possible_spam
    [ack] = rows(database_url, Outbox)
    assert ack.purpose == "ack" and ack.recipients == ["alice@customer.test"]
    [feedback] = rows(database_url, SpamFeedback)
    assert feedback.label == "ham"


def test_a_spam_verdict_corrected_to_ham_reopens_the_ticket_it_closed(
    tmp_path: Path, database_url: str
) -> None:
    """A ticket closed by a spam verdict given by mistake comes back as it was; one an
    agent closed after the verdict stays closed."""
    config = config_file(tmp_path, database_url, "enabled = true")
    cli(config, "ingest", "-", stdin=make_mail(message_id="x@customer.test"))
    cli(config, "tickets", "set-status", "1", "open")
    cli(config, "spam", "mark", "spam", "x@customer.test")
    out = cli(config, "spam", "mark", "ham", "x@customer.test").output
    assert "reopened" in out
    [ticket] = rows(database_url, Ticket)
    assert (ticket.status, ticket.possible_spam, ticket.closed_at) == ("open", False, None)

    cli(config, "spam", "mark", "spam", "x@customer.test")
    cli(config, "tickets", "set-status", "1", "resolved")  # a later decision of its own
    cli(config, "spam", "mark", "ham", "x@customer.test")
    [ticket] = rows(database_url, Ticket)
    assert (ticket.status, ticket.possible_spam) == ("resolved", False)
