"""Report output: aligned text tables, CSV, JSON, and one self-contained HTML file."""

from __future__ import annotations

import csv
import enum
import io
import json
import unicodedata
from collections.abc import Sequence
from datetime import timedelta
from html import escape
from typing import Any

from maildesk.reports.data import SECTIONS, ReportData
from maildesk.reports.svg import bar_chart
from maildesk.terminal import printable

CELL_COLUMNS = 60  # a terminal table cell (a subject from mail) is cut at this many columns


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


def sections(kind: Kind, fmt: Format) -> frozenset[str]:
    """The figures a report shows: HTML every section, the other formats their kind's."""
    return frozenset(SECTIONS) if fmt is Format.HTML else frozenset({kind.value})


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


def _fmt(value: Any, key: str = "") -> str:
    if value is None:
        return "-"
    if key.endswith("_rate") and isinstance(value, int | float):
        return f"{value * 100:.1f}%"  # 1 breach in 25 is 4.0%, not a rounded "0.0"
    if isinstance(value, float):
        return f"{value:.1f}" if not value.is_integer() else f"{value:.0f}"
    return str(value)


def _period(data: ReportData) -> tuple[str, str]:
    """First and last day of the period, inclusive (``data.end`` is the exclusive end)."""
    return data.start.date().isoformat(), (data.end - timedelta(microseconds=1)).date().isoformat()


def _columns(text: str) -> int:
    """Terminal columns ``text`` takes: wide (CJK) characters two, combining marks none."""
    if text.isascii():
        return len(text)
    return sum(
        0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1
        for c in text
    )


def _cell(text: str) -> str:
    """One line, control characters shown escaped, cut at :data:`CELL_COLUMNS` columns."""
    text = printable(text)
    if _columns(text) <= CELL_COLUMNS:
        return text
    out, used = [], 0
    for char in text:
        used += _columns(char)
        if used > CELL_COLUMNS - 1:
            break
        out.append(char)
    return "".join(out) + "…"


def _pad(text: str, width: int) -> str:
    return text + " " * (width - _columns(text))


def table(items: Sequence[dict[str, Any]], title: str = "") -> str:
    title = printable(title)
    if not items:
        return f"{title}\n(none)\n" if title else "(none)\n"
    headers = [_cell(h) for h in items[0]]
    cells = [[_cell(_fmt(item.get(h), h)) for h in items[0]] for item in items]
    widths = [max(_columns(h), *(_columns(r[i]) for r in cells)) for i, h in enumerate(headers)]
    lines = [title] if title else []
    lines.append("  ".join(_pad(h, w) for h, w in zip(headers, widths, strict=True)))
    lines += ["  ".join(_pad(c, w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines) + "\n"


def as_table(data: ReportData, kind: Kind) -> str:
    first, last = _period(data)
    head = f"{kind} report {first} .. {last}\n\n"
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
        + "".join(f"<td>{escape(_fmt(i.get(h), h))}</td>" for h in headers)
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
    first, last = _period(data)
    title = f"maildesk {kind} report {first} – {last}"
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
