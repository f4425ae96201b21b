"""`maildesk rules check|test` as ops run them, and SIGHUP in a running daemon."""

from __future__ import annotations

import signal
import smtplib
import time
from pathlib import Path

from click.testing import CliRunner

from maildesk.cli import main
from tests.daemon_harness import DaemonProcess
from tests.mailfactory import make_mail

GOOD = """
[[rule]]
name = "billing"
description = "invoices"
when = { any = [ { subject_keywords = "invoice" }, { language = "de" } ] }
then = { queue = "billing", priority = "high", tags = ["money"] }
"""


def config(tmp_path: Path, rules: Path) -> Path:
    path = tmp_path / "maildesk.toml"
    path.write_text(
        f'data_dir = "{tmp_path / "data"}"\n[routing]\nrules_dir = "{rules}"\n', encoding="utf-8"
    )
    return path


def test_check_accepts_good_rules_and_names_the_broken_key(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "10-billing.toml").write_text(GOOD)
    cfg = config(tmp_path, rules)
    ok = CliRunner().invoke(main, ["--config", str(cfg), "rules", "check"])
    assert ok.exit_code == 0, ok.output
    assert "ok: 1 rules" in ok.output
    (rules / "20-bad.toml").write_text(
        '[[rule]]\nname = "vip"\nwhen = {}\nthen = { priority = "asap" }\n'
    )
    bad = CliRunner().invoke(main, ["--config", str(cfg), "rules", "check"])
    assert bad.exit_code == 78, "a broken rules file is bad configuration (EX_CONFIG)"
    assert f"{rules / '20-bad.toml'}: rule 'vip': then.priority: must be one of" in bad.output


def test_check_rejects_names_of_agents_groups_and_policies_none_configured(
    tmp_path: Path,
) -> None:
    """With no [[agents]] at all, a rule's agent used to be taken unchecked (and assigned)."""
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "10-vip.toml").write_text(
        '[[rule]]\nname = "vip"\nwhen = {}\nthen = { agent = "bob", group = "Nope" }\n'
    )
    bad = CliRunner().invoke(main, ["--config", str(config(tmp_path, rules)), "rules", "check"])
    assert bad.exit_code == 78, bad.output
    said = f"{rules / '10-vip.toml'}: rule 'vip': then.agent: unknown name 'bob' (no agents configured)"
    assert said in bad.output
    message = tmp_path / "m.eml"
    message.write_bytes(make_mail(subject="hello", sender="a@customer.test"))
    tested = CliRunner().invoke(
        main, ["--config", str(config(tmp_path, rules)), "rules", "test", str(message)]
    )
    assert tested.exit_code == 78 and said in tested.output, tested.output


def test_test_prints_matches_reasons_and_fields_and_writes_nothing(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "10-billing.toml").write_text(GOOD)
    message = tmp_path / "m.eml"
    message.write_bytes(make_mail(subject="Where is my invoice?", sender="a@customer.test"))
    cfg = config(tmp_path, rules)
    result = CliRunner().invoke(main, ["--config", str(cfg), "rules", "test", str(message)])
    assert result.exit_code == 0, result.output
    assert "matched billing" in result.output
    assert "because subject contains 'invoice'" in result.output
    assert "queue = billing    (rule billing)" in result.output
    assert "tags += money" in result.output
    assert not (tmp_path / "data" / "maildesk.sqlite3").exists()
    as_json = CliRunner().invoke(
        main, ["--config", str(cfg), "rules", "test", "--json", str(message)]
    )
    assert '"priority": "high"' in as_json.output


def test_test_at_a_time_that_is_not_iso_8601_is_a_usage_error(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "10-billing.toml").write_text(GOOD)
    message = tmp_path / "m.eml"
    message.write_bytes(make_mail(subject="Where is my invoice?"))
    cfg = config(tmp_path, rules)
    args = ["--config", str(cfg), "rules", "test", str(message), "--at"]
    bad = CliRunner().invoke(main, [*args, "notatime"])
    assert bad.exit_code == 2, bad.output
    assert "--at" in bad.output and "'notatime' is not an ISO 8601 time" in bad.output
    assert "Traceback" not in bad.output and isinstance(bad.exception, SystemExit)
    good = CliRunner().invoke(main, [*args, "2024-05-06T09:30:00+02:00", "--json"])
    assert good.exit_code == 0, good.output


def test_test_on_a_corpus_message(tmp_path: Path, corpus: Path) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "10-billing.toml").write_text(GOOD)
    german = corpus / "fixtures/james-mime4j/core/src/test/resources/mimetools-testmsgs/german.msg"
    cfg = config(tmp_path, rules)
    result = CliRunner().invoke(main, ["--config", str(cfg), "rules", "test", str(german)])
    assert result.exit_code == 0, result.output
    assert "language de" in result.output and "because language is de" in result.output


def test_daemon_keeps_last_good_rules_after_a_broken_file_on_sighup(tmp_path: Path) -> None:
    rules = tmp_path / "rules"  # the daemon's working directory: ./rules by default
    rules.mkdir()
    (rules / "10-billing.toml").write_text(GOOD)
    relay_port = 9  # nothing listens: outbound mail just waits in the outbox
    daemon = DaemonProcess(tmp_path, relay_port=relay_port).start()
    try:
        (rules / "20-broken.toml").write_text('[[rule]]\nname = "x"\nwhen = { frm = "a" }\n')
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while "keeping the last good rules" not in daemon.log() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "rules/20-broken.toml: rule 'x': when.frm: unknown condition" in daemon.log()
        with smtplib.SMTP("127.0.0.1", daemon.smtp_port) as client:
            client.sendmail(
                "a@customer.test",
                ["support@example.com"],
                make_mail(sender="a@customer.test", subject="invoice 7"),
            )
        shown: dict[str, object] = {}
        while time.monotonic() < deadline:
            listed = daemon.cli("tickets", "list", "--json")
            if listed:
                shown = daemon.cli("tickets", "show", "1", "--json")
                break
            time.sleep(0.2)
        assert shown.get("priority") == "high", shown
        kinds = [e["kind"] for e in shown["events"]]  # type: ignore[index, union-attr]
        assert "rule_matched" in kinds
        assert daemon.proc.poll() is None
    finally:
        assert daemon.terminate() == 0
