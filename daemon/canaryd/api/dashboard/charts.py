"""Inline SVG charts, rendered on the server: readable without JavaScript, nothing to load.

A check's chart is its value at every evaluation of the rollout, each point coloured by the
engine's verdict, against the threshold drawn as a dashed line. The value axis spans the data
*and* the threshold with a margin, so the line never sits on the edge or on top of the data by
accident of scale (a 99.5% threshold next to 100% values stays apart). Evaluations without a
value (no data, a source error) are ticks on the bottom edge: a gap in the line would hide them.

Only numbers and escaped names go into the markup; colours are classes of the stylesheet.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from canaryd.api.dashboard.facts import CheckHistory, Point
from canaryd.api.dashboard.markup import attr, number, text

WIDTH, HEIGHT = 360, 84
LEFT, RIGHT, TOP, BOTTOM = 46, 354, 8, 70  # the plot area inside the view box


def _finite(points: Sequence[Point]) -> list[Point]:
    return [p for p in points if p.value is not None and math.isfinite(p.value)]


def _span(values: Sequence[float]) -> tuple[float, float]:
    """The value axis: every value and the threshold, with a tenth of their spread around."""
    lo, hi = min(values), max(values)
    pad = (hi - lo) * 0.1 or abs(hi) * 0.1 or 1.0
    return lo - pad, hi + pad


def check_chart(history: CheckHistory) -> str:
    """The SVG of ``history``: a polyline of values, points by verdict, the threshold line."""
    points, check = history.points, history.check
    label = f"{history.name}: {len(points)} evaluations"
    if not points:
        return f'<p class="nochart">{text(history.name)}: not evaluated yet</p>'
    shown = _finite(points)
    values = [p.value for p in shown if p.value is not None]
    if check is not None:
        values.append(check.threshold)
    lo, hi = _span(values) if values else (0.0, 1.0)
    t0, t1 = points[0].t, points[-1].t
    width = (t1 - t0) or 1.0

    def x(t: float) -> float:
        return LEFT + (RIGHT - LEFT) * ((t - t0) / width if t1 > t0 else 0.5)

    def y(v: float) -> float:
        return BOTTOM - (BOTTOM - TOP) * (v - lo) / (hi - lo)

    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" '
        f'role="img" aria-label="{attr(label)}"><title>{text(label)}</title>',
        f'<rect class="plot" x="{LEFT}" y="{TOP}" width="{RIGHT - LEFT}" height="{BOTTOM - TOP}"/>',
        f'<text class="axis" x="{LEFT - 4}" y="{TOP + 8}">{number(hi)}</text>',
        f'<text class="axis" x="{LEFT - 4}" y="{BOTTOM}">{number(lo)}</text>',
    ]
    if check is not None:
        ty = y(check.threshold)
        parts.append(
            f'<line class="threshold" x1="{LEFT}" x2="{RIGHT}" y1="{ty:.1f}" y2="{ty:.1f}"/>'
            f'<text class="threshold-label" x="{RIGHT - 2}" y="{ty - 3:.1f}">'
            f"{text(check.op)} {number(check.threshold)}</text>"
        )
    if len(shown) > 1:
        line = " ".join(f"{x(p.t):.1f},{y(p.value or 0.0):.1f}" for p in shown)
        parts.append(f'<polyline class="series" points="{line}"/>')
    for p in points:
        verdict = attr(p.verdict)
        if p.value is None or not math.isfinite(p.value):
            parts.append(
                f'<line class="nodata {verdict}" x1="{x(p.t):.1f}" x2="{x(p.t):.1f}" '
                f'y1="{BOTTOM - 6}" y2="{BOTTOM}"/>'
            )
        else:
            parts.append(
                f'<circle class="dot {verdict}" cx="{x(p.t):.1f}" cy="{y(p.value):.1f}" r="2.5">'
                f"<title>{text(number(p.value))}: {text(p.verdict)}</title></circle>"
            )
    parts.append(
        f'<text class="axis start" x="{LEFT}" y="{HEIGHT - 2}">start</text>'
        f'<text class="axis end" x="{RIGHT}" y="{HEIGHT - 2}">latest</text></svg>'
    )
    return "".join(parts)


def weight_bar(asked: int, measured: int | None) -> str:
    """Canary against stable as a bar (asked), with a tick where the router says it is."""
    asked = max(0, min(100, asked))
    tick = ""
    if measured is not None:
        m = max(0, min(100, measured))
        tick = f'<line class="measured" x1="{m}" x2="{m}" y1="0" y2="10"/>'
    title = f"canary {asked}% / stable {100 - asked}%"
    if measured is not None:
        title += f"; the router reports {measured}%"
    return (
        f'<svg class="bar" viewBox="0 0 100 10" preserveAspectRatio="none" role="img" '
        f'aria-label="{attr(title)}"><title>{text(title)}</title>'
        f'<rect class="stable" x="0" y="0" width="100" height="10"/>'
        f'<rect class="canary" x="0" y="0" width="{asked}" height="10"/>{tick}</svg>'
    )
