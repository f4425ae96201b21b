"""Tiny inline SVG bar charts: no scripts, no external files, every label escaped."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

WIDTH, HEIGHT = 640, 240
PAD_LEFT, PAD_BOTTOM, PAD_TOP = 40, 48, 24


def bar_chart(chart_id: str, title: str, bars: Sequence[tuple[str, float]]) -> str:
    """A bar chart as an ``<svg>`` element with one ``<rect class="bar">`` per bar."""
    top = max((value for _, value in bars), default=0) or 1
    inner_w = WIDTH - PAD_LEFT - 8
    inner_h = HEIGHT - PAD_BOTTOM - PAD_TOP
    step = inner_w / max(len(bars), 1)
    width = max(step * 0.8, 1)
    parts = [
        f'<svg id="{escape(chart_id)}" class="chart" xmlns="http://www.w3.org/2000/svg" '
        f'width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
        f'<text x="{PAD_LEFT}" y="16" font-size="13" font-weight="bold">{escape(title)}</text>',
        f'<line x1="{PAD_LEFT}" y1="{HEIGHT - PAD_BOTTOM}" x2="{WIDTH - 8}" '
        f'y2="{HEIGHT - PAD_BOTTOM}" stroke="#555"/>',
        f'<text x="{PAD_LEFT - 4}" y="{PAD_TOP + 10}" font-size="10" text-anchor="end">'
        f"{top:g}</text>",
    ]
    label_every = max(1, len(bars) // 16)
    for index, (label, value) in enumerate(bars):
        h = inner_h * value / top
        x = PAD_LEFT + index * step + (step - width) / 2
        y = HEIGHT - PAD_BOTTOM - h
        parts.append(
            f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{width:.1f}" height="{h:.1f}" '
            f'fill="#3a7bd5"><title>{escape(label)}: {value:g}</title></rect>'
        )
        if index % label_every == 0:
            lx, ly = x + width / 2, HEIGHT - PAD_BOTTOM + 12
            parts.append(
                f'<text x="{lx:.1f}" y="{ly}" font-size="9" text-anchor="end" '
                f'transform="rotate(-35 {lx:.1f} {ly})">{escape(label)}</text>'
            )
    if not bars:
        parts.append(
            f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" font-size="12" text-anchor="middle">'
            "no data</text>"
        )
    parts.append("</svg>")
    return "".join(parts)
