"""Routing as ops and agents meet it: broken rules at start, hostile subjects, two nodes."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import select
from sqlalchemy.orm import Session

from maildesk import service
from maildesk.app import App
from maildesk.cli import main
from maildesk.db.models import Blob, Event, Outbox, Ticket
from maildesk.pipeline.deadline import DeadlineExceeded, deadline
from maildesk.routing import assign_db
from tests.conftest import FrozenClock, make_settings
from tests.mailfactory import deliver, make_mail
from tests.routing.test_route_stage import PEOPLE, build, events_of, ticket_of

BROKEN = '[[rule]]\nname = "oops"\nwhen = { subject_regex = "([" }\n'


def _config(tmp_path: Path, rules: Path) -> Path:
    path = tmp_path / "maildesk.toml"
    path.write_text(
        f'data_dir = "{tmp_path / "data"}"\ninstallation_secret = "test-secret"\n'
        f'[routing]\nrules_dir = "{rules}"\n',
        encoding="utf-8",
    )
    return path


def test_run_with_a_broken_rules_file_exits_78_naming_file_rule_and_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At start there are no last good rules to keep: running with none would route nothing."""
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "10-bad.toml").write_text(BROKEN)
    started: list[bool] = []
    monkeypatch.setattr(service.Daemon, "run", lambda self: started.append(True) or 0)
    result = CliRunner().invoke(main, ["--config", str(_config(tmp_path, rules)), "run"])
    assert not started, "the daemon started without its rules"
    assert result.exit_code == 78, result.output
    assert f"{rules / '10-bad.toml'}: rule 'oops': when.subject_regex" in result.output


def test_check_reports_a_broken_rules_file(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "10-bad.toml").write_text(BROKEN)
    result = CliRunner().invoke(main, ["--config", str(_config(tmp_path, rules)), "check"])
    assert result.exit_code == 78, "the same exit code as `run` gives for it: " + result.output
    assert f"FAIL rules: {rules / '10-bad.toml'}: rule 'oops': when.subject_regex" in result.output


BACKTRACKING = """
[[rule]]
name = "words-then-colon"
when = { subject_regex = '^(\\w+\\s?)+:' }
then = { category = "prefixed" }

[[rule]]
name = "invoice"
when = { subject_keywords = "invoice" }
then = { queue = "billing" }
"""


def test_a_backtracking_rule_on_a_hostile_subject_does_not_hang_the_worker(
    tmp_path: Path, database_url: str, clock: FrozenClock
) -> None:
    """The message is still taken (unrouted, with the reason) and the next one is routed."""
    app = build(tmp_path, database_url, clock, rules=BACKTRACKING)
    hostile = make_mail(sender="h@customer.test", subject="invoice " + "a" * 60 + "!")
    try:
        with deadline(30.0):
            deliver(app, hostile, mail_from="h@customer.test")
    except DeadlineExceeded:
        pytest.fail("one subject held the worker for 30 s in the route stage")
    ticket = ticket_of(app, 1)
    assert ticket.category is None
    with app.db.transaction() as session:
        notes = session.scalars(select(Event.reason).where(Event.kind == "routing")).all()
    assert any("time limit" in n for n in notes), notes
    deliver(app, make_mail(sender="i@customer.test", subject="invoice 7"), mail_from="i@x.test")
    assert ticket_of(app, 2).queue == "billing"


def test_two_nodes_assigning_at_once_do_not_both_give_the_same_agent(
    tmp_path: Path, database_url: str, clock: FrozenClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Round robin across nodes: node b assigns between node a's read of the cursor and its write."""
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    a = build(tmp_path / "a", database_url, clock, rules="")
    b = build(tmp_path / "b", database_url, clock, rules="")
    try:
        original = assign_db.last_round_robin
        runner: list[threading.Thread] = []

        def paused(session: Session, group: str) -> str | None:
            last = original(session, group)
            if not runner:
                mail = make_mail(sender="b@customer.test", subject="from node b")
                thread = threading.Thread(target=lambda: deliver(b, mail, mail_from="b@x.test"))
                runner.append(thread)
                thread.start()
                thread.join(timeout=2.0)  # PostgreSQL: it finishes; SQLite: it waits for us
            return last

        monkeypatch.setattr(assign_db, "last_round_robin", paused)
        deliver(a, make_mail(sender="a@customer.test", subject="from node a"), mail_from="a@x.test")
        assert runner, "node b never ran"
        runner[0].join(timeout=60)
        with a.db.transaction() as session:
            rows: list[Any] = list(session.execute(select(Ticket.subject, Ticket.assignee)))
        assert len(rows) == 2, rows
        assert {r.assignee for r in rows} == {"ann", "ben"}, rows
    finally:
        a.db.dispose()
        b.db.dispose()


VIP = """
[[rule]]
name = "gold"
when = { tier = "gold" }
then = { priority = "urgent", watchers = ["watcher"] }

[[rule]]
name = "vip-direct"
when = { from_domain = "acme.example" }
then = { agent = "cy" }
"""


@pytest.mark.parametrize(("dmarc", "vip"), [("fail", False), ("pass", True)])
def test_a_from_our_mta_found_forged_gets_no_vip_routing(
    tmp_path: Path, database_url: str, clock: FrozenClock, dmarc: str, vip: bool
) -> None:
    """Anyone can write a gold customer's From; our MTA's dmarc=fail says this one did."""
    folder = tmp_path / "rules"
    folder.mkdir()
    (folder / "10-vip.toml").write_text(VIP)
    settings = make_settings(
        tmp_path,
        database_url,
        routing={"rules_dir": folder, "default_group": "L1"},
        agent_mail={"trusted_authserv_ids": ["mx.example.com"]},
        **PEOPLE,
    )
    app = App.build(settings, clock=clock)
    results = (
        f"mx.example.com; spf=pass smtp.mailfrom=evil.test; dmarc={dmarc} header.from=acme.example"
    )
    mail = make_mail(
        sender="Boss <boss@acme.example>",
        subject="wire the money",
        headers={"Authentication-Results": results},
    )
    deliver(app, mail, mail_from="x@evil.test")
    ticket = ticket_of(app, 1)
    seen = (ticket.priority, ticket.assignee, ticket.organisation)
    assert seen == (("urgent", "cy", "ACME") if vip else ("normal", seen[1], None)), seen
    assert (ticket.assignee == "cy") is vip


def test_sighup_takes_a_new_template_and_the_rule_that_names_it(
    tmp_path: Path, database_url: str, clock: FrozenClock
) -> None:
    """Ops add templates/ack_vip.customer.txt.j2 and a rule using it, then reload."""
    app = build(tmp_path, database_url, clock)
    (tmp_path / "templates" / "ack_vip.customer.txt.j2").write_text(
        "Subject: VIP desk\n\nThe VIP desk has ticket {{ ticket.number }}.\n"
    )
    (tmp_path / "rules" / "20-vip.toml").write_text(
        '[[rule]]\nname = "vip-ack"\nwhen = { subject_keywords = "vip" }\n'
        'then = { ack_template = "ack_vip" }\n'
    )
    assert app.reload() is None
    deliver(app, make_mail(sender="v@customer.test", subject="vip here"), mail_from="v@x.test")
    assert "vip-ack" in [e.data["rule"] for e in events_of(app, 1, "rule_matched")]
    with app.db.transaction() as session:
        acks = select(Outbox).where(Outbox.purpose == "ack", Outbox.ticket_id == 1)
        blob = session.get(Blob, session.scalars(acks).one().raw_sha256)
        assert blob is not None and b"The VIP desk has ticket 1" in bytes(blob.data)


def test_a_reload_without_a_template_every_mail_needs_keeps_the_last_good_ones(
    tmp_path: Path, database_url: str, clock: FrozenClock
) -> None:
    """Deleting ack.customer.* while the daemon runs used to quarantine every new mail."""
    app = build(tmp_path, database_url, clock)
    app.check_pipeline()  # as `maildesk run` does at start: every template compiled, in memory
    for name in ("ack.customer.txt.j2", "ack.customer.html.j2"):
        (tmp_path / "templates" / name).unlink()
    assert app.reload() is None  # the rules are fine
    assert any("no template ack.customer.txt.j2" in e for e in app.template_errors)
    deliver(app, make_mail(sender="a@customer.test", subject="hello"), mail_from="a@customer.test")
    with app.db.transaction() as session:
        assert session.scalars(select(Outbox).where(Outbox.purpose == "ack")).one()


def test_run_with_a_template_that_does_not_compile_exits_78_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As with rules: at start there are no last good templates to keep."""
    from maildesk.outbound.templates import default_templates_dir

    templates = tmp_path / "templates"
    shutil.copytree(default_templates_dir(None), templates)
    ack = templates / "ack.customer.txt.j2"
    ack.write_text(ack.read_text() + "\n{% if %}broken\n")
    rules = tmp_path / "rules"
    rules.mkdir()
    config = _config(tmp_path, rules)
    config.write_text(f'templates_dir = "{templates}"\n' + config.read_text())
    started: list[bool] = []
    monkeypatch.setattr(service.Daemon, "run", lambda self: started.append(True) or 0)
    result = CliRunner().invoke(main, ["--config", str(config), "run"])
    assert not started, "the daemon started with a template that cannot render"
    assert result.exit_code == 78, result.output
    assert "ack.customer.txt.j2 line" in result.output
