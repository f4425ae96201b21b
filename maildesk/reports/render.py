"""Report output: aligned text tables, CSV, JSON, and one self-contained HTML file."""

from __future__ import annotations

import csv
import enum
import io
import json
from collections.abc import Sequence
from html import escape
from typing import Any

from maildesk.reports.data import ReportData
from maildesk.reports.svg import bar_chart


class Kind(enum.StrEnum):
    SLA = "sla"
    AGENTS = "agents"
    CATEGORIES = "categories"
    VOLUME = "volume"


class Format(enum.StrEnum):
    TABLE = "table"
    CSV = "csv"
    JSON = "json"
    HTML = "html"


def rows(data: ReportData, kind: Kind) -> list[dict[str, Any]]:
    """The main table of a report kind (what CSV holds)."""
    if kind is Kind.SLA:
        return list(data.sla["policies"])
    if kind is Kind.AGENTS:
        return list(data.agents)
    if kind is Kind.CATEGORIES:
        return list(data.categories)
    return list(data.volume["per_mailbox"])


def as_json(data: ReportData, kind: Kind) -> dict[str, Any]:
    section = {
        Kind.SLA: data.sla,
        Kind.AGENTS: data.agents,
        Kind.CATEGORIES: data.categories,
        Kind.VOLUME: data.volume,
    }[kind]
    return {
        "report": str(kind),
        "from": data.start.isoformat(),
        "to": data.end.isoformat(),
        "generated_at": data.now.isoformat(),
        kind.value: section,
    }


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}" if not value.is_integer() else f"{value:.0f}"
    return str(value)


def table(items: Sequence[dict[str, Any]], title: str = "") -> str:
    if not items:
        return f"{title}\n(none)\n" if title else "(none)\n"
    headers = list(items[0])
    cells = [[_fmt(item.get(h)) for h in headers] for item in items]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    lines = [title] if title else []
    lines.append("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines) + "\n"


def as_table(data: ReportData, kind: Kind) -> str:
    head = f"{kind} report {data.start:%Y-%m-%d} .. {data.end:%Y-%m-%d}\n\n"
    if kind is not Kind.SLA:
        return head + table(rows(data, kind))
    sla = data.sla
    summary = [
        {"measure": name, **{k: v for k, v in sla[key].items()}}
        for name, key in (
            ("first response", "first_response_minutes"),
            ("resolution", "resolution_minutes"),
        )
    ]
    out = head + table(summary, "business minutes (nearest-rank percentiles)")
    out += "\n" + table(rows(data, kind), "per policy")
    out += f"\nopen backlog: {sla['backlog']}\n\n"
    out += table(sla["overdue"], "overdue (late now)")
    return out


def as_csv(data: ReportData, kind: Kind) -> str:
    items = rows(data, kind)
    buffer = io.StringIO()
    if items:
        writer = csv.DictWriter(buffer, fieldnames=list(items[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(items)
    return buffer.getvalue()


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1000px}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;
text-align:left}th{background:#f3f3f3}tr.late td{background:#fde2e1}
.charts{display:flex;flex-wrap:wrap;gap:1em}
"""


def _html_table(items: Sequence[dict[str, Any]], row_class: str = "") -> str:
    if not items:
        return "<p>(none)</p>"
    headers = list(items[0])
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join(
        f'<tr class="{row_class}">'
        + "".join(f"<td>{escape(_fmt(i.get(h)))}</td>" for h in headers)
        + "</tr>"
        for i in items
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def as_html(data: ReportData, kind: Kind) -> str:
    """The whole report (every section and the four charts) as one file, no scripts."""
    sla = data.sla
    charts = [
        bar_chart(
            "chart-volume",
            "New tickets per day",
            [(d["day"], d["tickets"]) for d in data.volume["per_day"]],
        ),
        bar_chart(
            "chart-frt",
            "Time to first response (business minutes)",
            [(b["bucket"], b["tickets"]) for b in sla["frt_distribution"]],
        ),
        bar_chart(
            "chart-breaches",
            "SLA breaches per week",
            [(w["week"], w["breaches"]) for w in sla["breaches_per_week"]],
        ),
        bar_chart(
            "chart-load",
            "Open tickets per agent",
            [(a["agent"], a["open_assigned"]) for a in data.agents],
        ),
    ]
    summary = [
        {"measure": name, **sla[key]}
        for name, key in (
            ("first response", "first_response_minutes"),
            ("resolution", "resolution_minutes"),
        )
    ]
    ratings = data.volume["ratings"]
    title = f"maildesk {kind} report {data.start:%Y-%m-%d} – {data.end:%Y-%m-%d}"
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{escape(title)}</h1><p>Generated {escape(data.now.isoformat())}; "
        f"{data.volume['tickets']} tickets created in the period, "
        f"open backlog {sla['backlog']}.</p>"
        f'<div class="charts">{"".join(charts)}</div>'
        "<h2>SLA</h2><h3>Business minutes</h3>"
        + _html_table(summary)
        + "<h3>Per policy</h3>"
        + _html_table(sla["policies"])
        + "<h3>Overdue now</h3>"
        + _html_table(sla["overdue"], "late")
        + "<h2>Agents</h2>"
        + _html_table(data.agents)
        + "<h2>Categories</h2>"
        + _html_table(data.categories)
        + "<h2>Mailboxes</h2>"
        + _html_table(data.volume["per_mailbox"])
        + "<h2>Customer ratings</h2>"
        + f"<p>{ratings['tickets_rated']} tickets rated, average {_fmt(ratings['average'])}.</p>"
        + _html_table(ratings["per_score"])
        + "</body></html>\n"
    )


def render(data: ReportData, kind: Kind, fmt: Format) -> str:
    if fmt is Format.JSON:
        return json.dumps(as_json(data, kind), ensure_ascii=False, indent=2) + "\n"
    if fmt is Format.CSV:
        return as_csv(data, kind)
    if fmt is Format.HTML:
        return as_html(data, kind)
    return as_table(data, kind)
