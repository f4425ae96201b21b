"""`maildesk report`: figures equal those worked out independently from the same events.

Calendar Mon–Fri 10:00–19:00 Europe/Berlin; week of Mon 2 March 2026.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from maildesk.app import App
from maildesk.cli import main
from maildesk.db.models import Rating, Ticket, TicketStatus
from maildesk.reports.data import collect
from maildesk.reports.render import Format, Kind, render
from maildesk.sla.calendar import BusinessCalendar, CalendarConfig
from maildesk.sla.sweep import build_calendars
from maildesk.tickets import change_status
from tests.conftest import FrozenClock
from tests.sla.slahelp import OFFICE, agent_reply, berlin, new_ticket, sla_app, sweeper

CAL = BusinessCalendar(CalendarConfig.model_validate(OFFICE))
SLA = {
    "default_policy": "standard",
    "policies": [
        {
            "name": "standard",
            "first_response": {"minutes": 240, "calendar": "office"},
            "resolution": {"minutes": 1440, "calendar": "office"},
        },
        {"name": "fast", "first_response": {"minutes": 60, "calendar": "office"}},
    ],
    "rules": [{"category": "billing", "policy": "fast"}],
}
NOW = berlin(2026, 3, 9, 12, 0)
# (created, first reply or None, resolved or None, pause (from, to) or None, category, mailbox, agent)
CASES = [
    (berlin(2026, 3, 2, 9, 0), berlin(2026, 3, 2, 11, 30), berlin(2026, 3, 3, 12, 0), None, None, "support", "bob"),
    (berlin(2026, 3, 2, 18, 0), berlin(2026, 3, 3, 15, 0), None, None, "billing", "billing", "carol"),
    (berlin(2026, 3, 3, 10, 15), berlin(2026, 3, 3, 10, 45), berlin(2026, 3, 6, 17, 0),
     (berlin(2026, 3, 4, 10, 0), berlin(2026, 3, 5, 16, 0)), None, "support", "bob"),
    (berlin(2026, 3, 4, 20, 0), berlin(2026, 3, 5, 10, 20), None, None, "billing", "billing", "bob"),
    (berlin(2026, 3, 5, 14, 0), None, None, None, None, "support", "carol"),
    (berlin(2026, 3, 6, 12, 0), berlin(2026, 3, 6, 18, 59), berlin(2026, 3, 6, 19, 30), None, "hardware", "support", "dave"),
]  # fmt: skip


def nearest_rank(values: list[float], p: int) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[math.ceil(p * len(ordered) / 100) - 1]


def build(app: App, clock: FrozenClock) -> list[int]:
    ids = []
    for n, (created, reply, resolved, pause, category, mailbox, agent) in enumerate(CASES):
        ticket = new_ticket(app, clock, created, subject=f"Case {n}", to=f"{mailbox}@example.com")
        ids.append(ticket.id)
        with app.db.transaction() as session:
            t = session.get(Ticket, ticket.id)
            assert t is not None
            t.category, t.assignee, t.support_addresses = (
                category,
                agent,
                [f"{mailbox}@example.com"],
            )
        if reply:
            agent_reply(app, ticket.id, reply, f"{agent}@example.com")
        changes = [(pause[0], TicketStatus.PENDING), (pause[1], TicketStatus.OPEN)] if pause else []
        if resolved:
            changes.append((resolved, TicketStatus.RESOLVED))
        for at, status in changes:
            clock.now = at
            with app.db.transaction() as session:
                t = session.get(Ticket, ticket.id)
                assert t is not None
                change_status(session, t, status, at, None, actor="test")
    clock.now = NOW
    return ids


def expected() -> dict[str, object]:
    frt: dict[str, list[float]] = {"standard": [], "fast": []}
    res: list[float] = []
    targets = {"standard": 0, "fast": 0}
    breached = {"standard": 0, "fast": 0}
    for created, reply, resolved, pause, category, _m, _a in CASES:
        policy = "fast" if category == "billing" else "standard"
        limit = 60 if policy == "fast" else 240
        paused = CAL.business_minutes_between(*pause) if pause else 0.0
        fr = CAL.business_minutes_between(created, reply or NOW)  # no pause before replies here
        targets[policy] += 1
        breached[policy] += fr > limit
        if reply:
            frt[policy].append(fr)
        if policy == "standard":
            used = CAL.business_minutes_between(created, resolved or NOW) - paused
            targets[policy] += 1
            breached[policy] += used > 1440
            if resolved:
                res.append(used)
    everything = frt["standard"] + frt["fast"]
    return {
        "frt": {p: nearest_rank(everything, p) for p in (50, 75, 90, 95)},
        "frt_count": len(everything),
        "res": {p: nearest_rank(res, p) for p in (50, 90)},
        "targets": targets,
        "breached": breached,
        "fast_frt_p50": nearest_rank(frt["fast"], 50),
    }


def test_report_figures_match_an_independent_computation(
    tmp_path: Path, database_url: str, clock: FrozenClock
) -> None:
    app = sla_app(tmp_path, database_url, clock, SLA)
    build(app, clock)
    want = expected()
    with app.db.transaction() as session:
        data = collect(
            session, app.settings, app.directory, build_calendars(app.settings),
            berlin(2026, 3, 2, 0, 0), berlin(2026, 3, 9, 0, 0), NOW,
        )  # fmt: skip
    out = json.loads(render(data, Kind.SLA, Format.JSON))["sla"]
    assert out["tickets"] == len(CASES)
    frt = out["first_response_minutes"]
    assert frt["count"] == want["frt_count"]
    assert {p: frt[f"p{p}"] for p in (50, 75, 90, 95)} == pytest.approx(want["frt"])
    res = out["resolution_minutes"]
    assert (res["p50"], res["p90"]) == pytest.approx((want["res"][50], want["res"][90]))  # type: ignore[index]
    policies = {p["policy"]: p for p in out["policies"]}
    assert {k: v["targets"] for k, v in policies.items()} == want["targets"]
    assert {k: v["breached"] for k, v in policies.items()} == want["breached"]
    assert policies["fast"]["frt_p50"] == pytest.approx(want["fast_frt_p50"])
    # Open now: case 1, 3 (billing, answered) and 4 (never answered: overdue).
    assert out["backlog"] == 3
    # Case 4: 14:00-19:00 Thursday is already 300 > 240 minutes; its resolution is not due yet.
    assert [(o["target"], o["assignee"]) for o in out["overdue"]] == [("first_response", "carol")]
    agents = {a["agent"]: a for a in json.loads(render(data, Kind.AGENTS, Format.JSON))["agents"]}
    assert (
        agents["bob"]["replies"],
        agents["bob"]["open_assigned"],
        agents["bob"]["resolved"],
    ) == (3, 1, 2)
    assert (agents["carol"]["replies"], agents["carol"]["open_assigned"]) == (1, 2)
    cats = json.loads(render(data, Kind.CATEGORIES, Format.JSON))["categories"]
    assert cats == [
        {"category": "(none)", "tickets": 3},
        {"category": "billing", "tickets": 2},
        {"category": "hardware", "tickets": 1},
    ]
    volume = json.loads(render(data, Kind.VOLUME, Format.JSON))["volume"]
    assert volume["per_mailbox"] == [
        {"mailbox": "billing@example.com", "tickets": 2},
        {"mailbox": "support@example.com", "tickets": 4},
    ]
    assert sum(d["tickets"] for d in volume["per_day"]) == len(CASES)
    assert volume["ratings"] == {"tickets_rated": 0, "average": None, "per_score": []}


def test_report_counts_each_rated_ticket_once_by_its_last_rating(
    tmp_path: Path, database_url: str, clock: FrozenClock
) -> None:
    app = sla_app(tmp_path, database_url, clock, SLA)
    ids = build(app, clock)
    inside, before = berlin(2026, 3, 4, 12, 0), berlin(2026, 2, 20, 12, 0)
    with app.db.transaction() as session:
        for ticket_id, score, at in (
            (ids[0], 2, inside),
            (ids[0], 5, inside.replace(hour=13)),  # the customer changed their mind
            (ids[1], 4, inside),
            (ids[2], 1, before),  # outside the period
        ):
            session.add(Rating(ticket_id=ticket_id, score=score, contact="c@x.org", created_at=at))
    with app.db.transaction() as session:
        data = collect(
            session, app.settings, app.directory, build_calendars(app.settings),
            berlin(2026, 3, 2, 0, 0), berlin(2026, 3, 9, 0, 0), NOW,
        )  # fmt: skip
    ratings = json.loads(render(data, Kind.VOLUME, Format.JSON))["volume"]["ratings"]
    assert ratings == {
        "tickets_rated": 2,
        "average": 4.5,
        "per_score": [{"score": 4, "tickets": 1}, {"score": 5, "tickets": 1}],
    }
    html = render(data, Kind.VOLUME, Format.HTML)
    assert "2 tickets rated, average 4.5" in html


def _config(tmp_path: Path, database_url: str) -> Path:
    path = tmp_path / "maildesk.toml"
    path.write_text(
        f"""
data_dir = "{tmp_path / "data"}"
database_url = "{database_url}"
support_addresses = ["support@example.com", "billing@example.com"]
mail_domain = "example.com"
installation_secret = "test-secret"

[[groups]]
name = "l1"
lead = "carol"
[[agents]]
name = "bob"
addresses = ["bob@example.com"]
groups = ["l1"]
[[agents]]
name = "carol"
addresses = ["carol@example.com"]
groups = ["l1"]
[[agents]]
name = "dave"
addresses = ["dave@example.com"]

[calendars.office]
timezone = "Europe/Berlin"
hours = {{ mon = "10:00-19:00", tue = "10:00-19:00", wed = "10:00-19:00", thu = "10:00-19:00", fri = "10:00-19:00" }}

[sla]
default_policy = "standard"
[[sla.policies]]
name = "standard"
first_response = {{ minutes = 240, calendar = "office" }}
resolution = {{ minutes = 1440, calendar = "office" }}
[[sla.policies]]
name = "fast"
first_response = {{ minutes = 60, calendar = "office" }}
[[sla.rules]]
category = "billing"
policy = "fast"
""",
        encoding="utf-8",
    )
    return path


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_cli_formats_and_html_charts_render_in_a_browser(
    tmp_path: Path, database_url: str, clock: FrozenClock
) -> None:
    app = sla_app(tmp_path, database_url, clock, SLA)
    build(app, clock)
    config = str(_config(tmp_path, database_url))
    runner = CliRunner()
    period = ["--from", "2026-03-02", "--to", "2026-03-08", "--now", "2026-03-09T11:00:00"]
    csv_out = runner.invoke(main, ["--config", config, "report", "sla", *period, "--format", "csv"])
    assert csv_out.exit_code == 0, csv_out.output
    assert csv_out.output.splitlines()[0].startswith("policy,tickets,targets,breached,breach_rate")
    table = runner.invoke(main, ["--config", config, "report", "agents", *period])
    assert table.exit_code == 0 and "open_assigned" in table.output and "carol" in table.output
    html_path = tmp_path / "report.html"
    out = runner.invoke(
        main, ["--config", config, "report", "volume", *period, "--format", "html", "-o", str(html_path)]
    )  # fmt: skip
    assert out.exit_code == 0, out.output
    html = html_path.read_text(encoding="utf-8")
    assert "<script" not in html and "http://" not in html.replace("http://www.w3.org/2000/svg", "")
    browser = _chromium()
    if browser is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is needed in CI (.ci/test-services installs it)")
        pytest.skip("chromium not installed")
    dom = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", html_path.as_uri()],
        capture_output=True, text=True, timeout=120, check=True,
        env={**os.environ, "HOME": str(tmp_path)},
    ).stdout  # fmt: skip
    for chart in ("chart-volume", "chart-frt", "chart-breaches", "chart-load"):
        assert f'id="{chart}"' in dom
    assert dom.count('class="bar"') >= 7 + 8  # a bar per day of the week and per FRT bucket
    assert "carol" in dom


def test_tickets_list_overdue_highlights_late_tickets(
    tmp_path: Path, database_url: str, clock: FrozenClock
) -> None:
    app = sla_app(tmp_path, database_url, clock, SLA)
    ids = build(app, clock)
    sweeper(app).run()
    config = str(_config(tmp_path, database_url))
    result = CliRunner().invoke(
        main, ["--config", config, "tickets", "list", "--overdue", "--json"]
    )
    assert result.exit_code == 0, result.output
    late = json.loads(result.output)
    with app.db.transaction() as session:
        numbers = dict(session.execute(select(Ticket.id, Ticket.number)).all())
    assert [t["number"] for t in late] == [numbers[ids[4]]]
    assert late[0]["overdue"]["target"] == "first_response"
    plain = CliRunner().invoke(main, ["--config", config, "tickets", "list"])
    assert sum("LATE: first response late since" in line for line in plain.output.splitlines()) == 1
