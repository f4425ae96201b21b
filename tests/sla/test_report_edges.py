"""`maildesk report` as ops and managers meet it: the period it names, mail text in a
terminal, small breach rates, a busy year, and errors worth a message."""

from __future__ import annotations

import json
import unicodedata
from datetime import UTC, datetime
from pathlib import Path

from click.testing import CliRunner
from sqlalchemy import JSON, Integer, String, insert, literal, select

from maildesk.cli import main
from maildesk.db.database import Database
from maildesk.db.models import Ticket, TicketStatus, UTCDateTime
from maildesk.tickets import change_status
from tests.conftest import FrozenClock, write_cli_config
from tests.sla.slahelp import agent_reply, berlin, new_ticket, sla_app
from tests.sla.test_report import SLA, _config

PERIOD = ["--from", "2026-03-02", "--to", "2026-03-08", "--now", "2026-03-09T11:00:00"]


def _report(config: Path, *args: str, tty: bool = False) -> str:
    # tty: as on an operator's terminal, where click passes escape sequences through
    result = CliRunner().invoke(main, ["--config", str(config), "report", *args], color=tty)
    assert result.exit_code == 0, result.output
    return result.output


def _columns(text: str) -> int:
    """Terminal columns: East Asian wide characters take two."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def test_table_and_html_name_the_last_day_asked_for(
    tmp_path: Path, database_url: str, clock: FrozenClock
) -> None:
    sla_app(tmp_path, database_url, clock, SLA)
    config = _config(tmp_path, database_url)
    table = _report(config, "agents", *PERIOD)
    assert table.splitlines()[0] == "agents report 2026-03-02 .. 2026-03-08"
    html_path = tmp_path / "r.html"
    _report(config, "volume", *PERIOD, "--format", "html", "-o", str(html_path))
    html = html_path.read_text(encoding="utf-8")
    assert "<title>maildesk volume report 2026-03-02 – 2026-03-08</title>" in html
    days = json.loads(_report(config, "volume", *PERIOD, "--format", "json"))["volume"]["per_day"]
    assert (days[0]["day"], days[-1]["day"]) == ("2026-03-02", "2026-03-08")


def test_terminal_table_shows_mail_text_escaped_aligned_and_cut(
    tmp_path: Path, database_url: str, clock: FrozenClock
) -> None:
    app = sla_app(tmp_path, database_url, clock, SLA)
    subject = "Invoice\x1b[2J\x1b[31m 請求書の件 " + "x" * 300
    new_ticket(app, clock, berlin(2026, 3, 5, 11, 0), subject=subject)  # never answered: late
    out = _report(_config(tmp_path, database_url), "sla", *PERIOD, tty=True)
    assert "\x1b" not in out  # the screen is not cleared nor recoloured
    assert "Invoice\\x1b[2J\\x1b[31m 請求書の件" in out
    lines = out.splitlines()
    head = lines.index("overdue (late now)") + 1
    header, rows = lines[head], lines[head + 1 :]
    assert len(rows) == 1 and rows[0].startswith("1 "), rows  # first response late
    at = header.index("policy")
    for row in rows:
        assert _columns(row[: row.index("standard")]) == at  # the columns line up
        assert _columns(row) < 160  # a 300-character subject does not wrap every line


def test_small_breach_rate_is_not_shown_as_zero(
    tmp_path: Path, database_url: str, clock: FrozenClock
) -> None:
    sla = {
        "default_policy": "standard",
        "policies": [
            {"name": "standard", "first_response": {"minutes": 240, "calendar": "office"}}
        ],
    }
    app = sla_app(tmp_path, database_url, clock, sla)
    for n in range(21):
        at = berlin(2026, 3, 2 + n % 5, 11, n)
        ticket = new_ticket(app, clock, at, subject=f"Case {n}")
        if n:  # the first one is never answered: 1 breach in 21
            agent_reply(app, ticket.id, at.replace(hour=12))
    config = _config(tmp_path, database_url)
    text = config.read_text(encoding="utf-8").split("[sla]")[0]
    config.write_text(
        text + '[sla]\ndefault_policy = "standard"\n[[sla.policies]]\nname = "standard"\n'
        'first_response = { minutes = 240, calendar = "office" }\n',
        encoding="utf-8",
    )
    data = json.loads(_report(config, "sla", *PERIOD, "--format", "json"))["sla"]
    assert (data["policies"][0]["targets"], data["policies"][0]["breached"]) == (21, 1)
    table = _report(config, "sla", *PERIOD)
    row = next(line for line in table.splitlines() if line.startswith("standard "))
    assert row.split()[:5] == ["standard", "21", "21", "1", "4.8%"]  # 1 in 21, not "0.0"
    html_path = tmp_path / "r.html"
    _report(config, "sla", *PERIOD, "--format", "html", "-o", str(html_path))
    html = html_path.read_text(encoding="utf-8")
    assert "<td>standard</td><td>21</td><td>21</td><td>1</td><td>4.8%</td>" in html


def test_unwritable_output_or_impossible_day_is_a_clear_error(
    tmp_path: Path, database_url: str, clock: FrozenClock
) -> None:
    sla_app(tmp_path, database_url, clock, SLA)
    config = str(_config(tmp_path, database_url))
    missing = tmp_path / "no-such-dir" / "report.html"
    result = CliRunner().invoke(
        main, ["--config", config, "report", "sla", "--format", "html", "-o", str(missing)]
    )
    assert result.exit_code == 73, (result.output, result.exception)
    assert f"cannot write {missing}" in result.output
    for days in (["--to", "9999-12-31"], ["--to", "0001-01-01"]):
        result = CliRunner().invoke(main, ["--config", config, "report", "volume", *days])
        assert result.exit_code == 2, (days, result.output, result.exception)
        assert "Invalid value" in result.output


def test_a_year_with_more_tickets_than_one_statement_takes_parameters(
    tmp_path: Path, database_url: str
) -> None:
    """PostgreSQL takes at most 65535 bound parameters in one statement."""
    count = 65_536
    config = write_cli_config(tmp_path / "maildesk.toml", tmp_path / "data", database_url)
    n = select(literal(1, Integer).label("i")).cte("n", recursive=True)
    n = n.union_all(select(n.c.i + 1).where(n.c.i < count))
    created = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
    columns = {
        Ticket.number: n.c.i,
        Ticket.subject: literal("busy", String),
        Ticket.normalized_subject: literal("busy", String),
        Ticket.status: literal("closed", String),  # not in the open backlog: one read
        Ticket.priority: literal("normal", String),
        Ticket.created_at: literal(created, UTCDateTime()),
        Ticket.updated_at: literal(created, UTCDateTime()),
        Ticket.support_addresses: literal(["support@example.com"], JSON),
        Ticket.tags: literal([], JSON),
        Ticket.possible_spam: literal(False),
    }
    db = Database(database_url)
    with db.transaction() as session:
        session.execute(insert(Ticket).from_select(list(columns), select(*columns.values())))
    db.dispose()
    result = CliRunner().invoke(
        main,
        ["--config", str(config), "report", "volume", "--from", "2025-01-01", "--to", "2025-12-31",
         "--now", "2026-01-01T00:00:00", "--format", "json"],
    )  # fmt: skip
    assert result.exit_code == 0, (result.output[-500:], result.exception)
    assert json.loads(result.output)["volume"]["tickets"] == count


def test_resolutions_count_for_who_resolved_them_in_the_week_they_happened(
    tmp_path: Path, database_url: str, clock: FrozenClock
) -> None:
    """A ticket resolved, reopened by the customer and resolved again by a colleague
    a week later counts in each week, for whoever resolved it then."""
    app = sla_app(tmp_path, database_url, clock, SLA)
    first = new_ticket(app, clock, berlin(2026, 3, 2, 10, 0), subject="Printer")
    left_open = new_ticket(app, clock, berlin(2026, 3, 3, 10, 0), subject="VPN")
    steps = [
        (first.id, berlin(2026, 3, 3, 12, 0), "bob", TicketStatus.RESOLVED, "agent:bob"),
        (first.id, berlin(2026, 3, 10, 9, 0), "carol", TicketStatus.OPEN, "customer"),
        (first.id, berlin(2026, 3, 11, 12, 0), "carol", TicketStatus.RESOLVED, "agent:carol"),
        (left_open.id, berlin(2026, 3, 4, 12, 0), "bob", TicketStatus.RESOLVED, "agent:bob"),
        (left_open.id, berlin(2026, 3, 5, 9, 0), "bob", TicketStatus.OPEN, "customer"),
        # The clock resolves a pending ticket: it counts for its assignee of the time.
        (left_open.id, berlin(2026, 3, 12, 9, 0), "dave", TicketStatus.RESOLVED, "auto-close"),
        (left_open.id, berlin(2026, 3, 13, 9, 0), "carol", TicketStatus.OPEN, "customer"),
    ]
    for ticket_id, at, assignee, status, actor in steps:
        clock.now = at
        with app.db.transaction() as session:
            ticket = session.get(Ticket, ticket_id)
            assert ticket is not None
            ticket.assignee = assignee
            change_status(session, ticket, status, at, None, actor=actor)
    config = _config(tmp_path, database_url)

    def resolved(start: str, end: str) -> dict[str, int]:
        period = ["--from", start, "--to", end, "--now", "2026-03-20T12:00:00"]
        out = json.loads(_report(config, "agents", *period, "--format", "json"))["agents"]
        return {a["agent"]: a["resolved"] for a in out if a["resolved"]}

    assert resolved("2026-03-02", "2026-03-08") == {"bob": 2}
    assert resolved("2026-03-09", "2026-03-15") == {"carol": 1, "dave": 1}
