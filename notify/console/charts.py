"""Charts as server-rendered SVG: no JavaScript and no charting library to keep up to date.

Each chart is an ``<svg role="img">`` with a ``<title>`` and ``<desc>`` that say what it
shows, and the template puts the same figures in a table beside it: the text
alternative for screen readers, and the numbers for anyone who wants them exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from markupsafe import Markup, escape

WIDTH, HEIGHT = 640, 180
PAD_LEFT, PAD_BOTTOM, PAD_TOP = 44, 22, 10
COLOURS = ("#1a5fb4", "#c01c28", "#26a269", "#e66100", "#613583", "#865e3c", "#5e5c64")


def _nice_max(value: float) -> float:
    """A round top for the y axis (1, 2 or 5 times a power of ten)."""
    if value <= 0:
        return 1.0
    scale = 1.0
    while scale * 10 <= value:
        scale *= 10
    while scale > value:
        scale /= 10
    for step in (1, 2, 5, 10):
        if step * scale >= value:
            return step * scale
    return 10 * scale  # pragma: no cover - the loop above always returns


def _svg(title: str, desc: str, body: str, ident: str) -> Markup:
    return Markup(
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-labelledby="{ident}-t {ident}-d" xmlns="http://www.w3.org/2000/svg">'
        f'<title id="{ident}-t">{escape(title)}</title><desc id="{ident}-d">{escape(desc)}'
        f"</desc>{body}</svg>")


def _axis(top: float, fmt: str = "{:g}") -> str:
    plot_h = HEIGHT - PAD_BOTTOM - PAD_TOP
    parts = []
    for fraction in (0, 0.5, 1):
        y = PAD_TOP + plot_h * (1 - fraction)
        parts.append(f'<line x1="{PAD_LEFT}" x2="{WIDTH}" y1="{y:.1f}" y2="{y:.1f}" '
                     f'stroke="#ddd"/><text x="{PAD_LEFT - 4}" y="{y + 4:.1f}" '
                     f'text-anchor="end" font-size="11" fill="#444">'
                     f"{escape(fmt.format(round(top * fraction, 2)))}</text>")
    return "".join(parts)


def sends_chart(points: Sequence[tuple[datetime, float]], ident: str = "sends") -> Markup:
    """Sends per minute over time, as an area."""
    top = _nice_max(max((v for _, v in points), default=0))
    plot_w, plot_h = WIDTH - PAD_LEFT, HEIGHT - PAD_BOTTOM - PAD_TOP
    n = max(len(points) - 1, 1)
    coords = [(PAD_LEFT + plot_w * i / n, PAD_TOP + plot_h * (1 - v / top))
              for i, (_, v) in enumerate(points)]
    base = PAD_TOP + plot_h
    line = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
    area = f"{PAD_LEFT},{base} {line} {WIDTH},{base}" if coords else ""
    labels = ""
    if points:
        for i in (0, len(points) // 2, len(points) - 1):
            x = coords[i][0]
            anchor = "start" if i == 0 else "end" if i == len(points) - 1 else "middle"
            labels += (f'<text x="{x:.1f}" y="{HEIGHT - 6}" text-anchor="{anchor}" '
                       f'font-size="11" fill="#444">{points[i][0]:%H:%M}</text>')
    peak = max((v for _, v in points), default=0)
    total = sum(v for _, v in points) * 15
    desc = (f"Messages sent per minute over the last 24 hours in 15-minute steps; peak "
            f"{peak:.1f} a minute, about {total:.0f} in all.")
    body = (_axis(top) + f'<polygon points="{area}" fill="#1a5fb4" fill-opacity="0.25"/>'
            f'<polyline points="{line}" fill="none" stroke="#1a5fb4" stroke-width="1.5"/>'
            + labels)
    return _svg("Sends per minute, last 24 hours", desc, body, ident)


def bar_chart(values: dict[str, float], title: str, unit: str = "", *,
              ident: str) -> Markup:
    """One bar per label, labels under the bars."""
    top = _nice_max(max(values.values(), default=0))
    plot_w, plot_h = WIDTH - PAD_LEFT, HEIGHT - PAD_BOTTOM - PAD_TOP
    count = max(len(values), 1)
    slot = plot_w / count
    bars = []
    for i, (label, value) in enumerate(values.items()):
        h = plot_h * value / top
        x = PAD_LEFT + i * slot + slot * 0.15
        bars.append(
            f'<rect x="{x:.1f}" y="{PAD_TOP + plot_h - h:.1f}" width="{slot * 0.7:.1f}" '
            f'height="{h:.1f}" fill="{COLOURS[i % len(COLOURS)]}"/>'
            f'<text x="{x + slot * 0.35:.1f}" y="{HEIGHT - 6}" text-anchor="middle" '
            f'font-size="11" fill="#444">{escape(label)}</text>')
    desc = "; ".join(f"{label}: {value:g}{unit}" for label, value in values.items()) \
        or "nothing to show yet"
    if not values:
        bars.append(f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle" '
                    'font-size="13" fill="#444">nothing yet</text>')
    return _svg(title, desc, _axis(top) + "".join(bars), ident)
