"""Small inline SVG charts, rendered in Python (pure: data in, an ``<svg>`` string out).

    line_chart({"train": [(1, 10.9), (2, 10.4)]}, title="loss", x_label="epoch", y_label="loss")
    bar_chart({"uid 0": 0.4, "uid 1": 0.6}, title="weights on chain")

No JavaScript, no build step and nothing vendored: the page embeds the string as is, so a chart
shows in any browser and can be checked by a test as text. Every point carries a ``<title>``
(its value on hover) and every series a ``data-series`` attribute.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from html import escape

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2")
_PAD_LEFT, _PAD_RIGHT, _PAD_TOP, _PAD_BOTTOM = 56, 12, 28, 40


def _fmt(value: float) -> str:
    if value == 0 or 1e-3 <= abs(value) < 1e5:
        return f"{value:.4g}"
    return f"{value:.2e}"


def _ticks(low: float, high: float, count: int = 4) -> list[float]:
    if high <= low:
        return [low]
    return [low + (high - low) * i / count for i in range(count + 1)]


def _frame(width: int, height: int, title: str, body: list[str]) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width}" '
            f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
            f'aria-label="{escape(title)}">'
            f'<text x="{width / 2:.0f}" y="16" text-anchor="middle" font-size="13" '
            f'font-weight="bold">{escape(title)}</text>' + "".join(body) + "</svg>")


def _empty(width: int, height: int, title: str) -> str:
    return _frame(width, height, title, [
        f'<text x="{width / 2:.0f}" y="{height / 2:.0f}" text-anchor="middle" font-size="12" '
        'fill="#888">no data yet</text>'])


def _finite(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    return [(float(x), float(y)) for x, y in points
            if math.isfinite(float(x)) and math.isfinite(float(y))]


def line_chart(series: Mapping[str, Sequence[tuple[float, float]]], *, title: str,
               x_label: str, y_label: str, width: int = 520, height: int = 260) -> str:
    """One polyline per named series of ``(x, y)`` points (non-finite points dropped)."""
    clean = {name: sorted(_finite(pts)) for name, pts in series.items()}
    clean = {name: pts for name, pts in clean.items() if pts}
    if not clean:
        return _empty(width, height, title)
    xs = [x for pts in clean.values() for x, _ in pts]
    ys = [y for pts in clean.values() for _, y in pts]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    if y1 == y0:
        y0, y1 = y0 - (abs(y0) * 0.05 or 1.0), y1 + (abs(y1) * 0.05 or 1.0)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    inner_w, inner_h = width - _PAD_LEFT - _PAD_RIGHT, height - _PAD_TOP - _PAD_BOTTOM

    def px(x: float) -> float:
        return _PAD_LEFT + (x - x0) / (x1 - x0) * inner_w

    def py(y: float) -> float:
        return _PAD_TOP + (1 - (y - y0) / (y1 - y0)) * inner_h

    body = _axes(width, height, x_label, y_label)
    for y in _ticks(y0, y1):
        body.append(f'<text x="{_PAD_LEFT - 4}" y="{py(y) + 4:.1f}" text-anchor="end" '
                    f'font-size="10">{_fmt(y)}</text>'
                    f'<line x1="{_PAD_LEFT}" x2="{width - _PAD_RIGHT}" y1="{py(y):.1f}" '
                    f'y2="{py(y):.1f}" stroke="#eee"/>')
    for x in _ticks(x0, x1):
        body.append(f'<text x="{px(x):.1f}" y="{height - _PAD_BOTTOM + 14}" '
                    f'text-anchor="middle" font-size="10">{_fmt(x)}</text>')
    for i, (name, pts) in enumerate(clean.items()):
        color = COLORS[i % len(COLORS)]
        path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
        body.append(f'<polyline data-series="{escape(name)}" fill="none" stroke="{color}" '
                    f'stroke-width="2" points="{path}"/>')
        body += [f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{color}">'
                 f'<title>{escape(name)}: {_fmt(x)}, {_fmt(y)}</title></circle>' for x, y in pts]
        body.append(f'<text x="{_PAD_LEFT + 8 + 110 * i}" y="{_PAD_TOP + 10}" font-size="11" '
                    f'fill="{color}">{escape(name)}</text>')
    return _frame(width, height, title, body)


def _axes(width: int, height: int, x_label: str, y_label: str) -> list[str]:
    bottom = height - _PAD_BOTTOM
    return [f'<line x1="{_PAD_LEFT}" y1="{_PAD_TOP}" x2="{_PAD_LEFT}" y2="{bottom}" '
            'stroke="#444"/>',
            f'<line x1="{_PAD_LEFT}" y1="{bottom}" x2="{width - _PAD_RIGHT}" y2="{bottom}" '
            'stroke="#444"/>',
            f'<text x="{(width + _PAD_LEFT) / 2:.0f}" y="{height - 8}" text-anchor="middle" '
            f'font-size="11">{escape(x_label)}</text>',
            f'<text x="12" y="{(height + _PAD_TOP - _PAD_BOTTOM) / 2:.0f}" font-size="11" '
            f'text-anchor="middle" transform="rotate(-90 12 '
            f'{(height + _PAD_TOP - _PAD_BOTTOM) / 2:.0f})">{escape(y_label)}</text>']


def bar_chart(values: Mapping[str, float], *, title: str, y_label: str, width: int = 520,
              height: int = 260) -> str:
    """One bar per label, from 0 to its value (non-finite or negative values drawn as 0)."""
    if not values:
        return _empty(width, height, title)
    clean = {k: v if math.isfinite(v) and v > 0 else 0.0 for k, v in values.items()}
    top = max(clean.values()) or 1.0
    inner_w, inner_h = width - _PAD_LEFT - _PAD_RIGHT, height - _PAD_TOP - _PAD_BOTTOM
    slot = inner_w / len(clean)
    body = _axes(width, height, "", y_label)
    for y in _ticks(0.0, top):
        body.append(f'<text x="{_PAD_LEFT - 4}" '
                    f'y="{_PAD_TOP + (1 - y / top) * inner_h + 4:.1f}" text-anchor="end" '
                    f'font-size="10">{_fmt(y)}</text>')
    for i, (label, value) in enumerate(clean.items()):
        h = value / top * inner_h
        x = _PAD_LEFT + i * slot + slot * 0.15
        body.append(f'<rect data-label="{escape(label)}" x="{x:.1f}" '
                    f'y="{_PAD_TOP + inner_h - h:.1f}" width="{slot * 0.7:.1f}" '
                    f'height="{h:.1f}" fill="{COLORS[0]}"><title>{escape(label)}: '
                    f'{_fmt(values[label])}</title></rect>'
                    f'<text x="{x + slot * 0.35:.1f}" y="{height - _PAD_BOTTOM + 14}" '
                    f'text-anchor="middle" font-size="10">{escape(label)}</text>')
    return _frame(width, height, title, body)
