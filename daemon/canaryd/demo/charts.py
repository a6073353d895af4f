"""Inline SVG line charts for the demo's report: no scripts, no external assets.

Apart from ``demo.report`` (what the report says) because how a chart is drawn is its own
concern: axes that map a value to a pixel row (linear, or "nines" for success rates), stage
bands behind the lines, vertical marks for events, gaps where a value is missing.

Why a "nines" axis: success rates live between 99 % and 100 %, an SLO of 99.5 % and a healthy
100 % are one pixel row apart on a 0-100 axis, and a zoomed linear axis (99-100) clips a canary
failing 30 % of its requests off the chart. Plotting the number of nines, -log10(1 - rate),
gives 90 %, 99 %, 99.9 % equal steps: the SLO line sits well below 100 % and a failing canary
still shows where it fell.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

ROLLBACK = "#cf222e"  # a rollback's colour, everywhere in the report
SUCCESS = "#1a7f37"
PALETTE = ("#0969da", "#bf8700", SUCCESS, ROLLBACK)
_BAND_TINTS = ("#eef2f7", "#f7f7f2")
_WIDTH, _HEIGHT, _LEFT, _BOTTOM, _TOP, _RIGHT = 940, 240, 54, 26, 22, 10


@dataclass(frozen=True)
class Series:
    name: str
    values: Sequence[float | None]
    colour: int  # index in PALETTE
    dashed: bool = False


@dataclass(frozen=True)
class Axis:
    """Maps a value to [0, 1] (bottom to top) and lists the labelled grid lines."""

    position: Callable[[float], float]
    grid: tuple[tuple[float, str], ...]


@dataclass(frozen=True)
class Band:
    start: float
    end: float
    label: str
    fill: str


@dataclass(frozen=True)
class Mark:
    at: float
    label: str
    colour: str


def linear_axis(lo: float, hi: float, grid: Sequence[float], unit: str) -> Axis:
    def position(y: float) -> float:
        return (min(max(y, lo), hi) - lo) / (hi - lo)

    return Axis(position, tuple((g, f"{g:g}{unit}") for g in grid))


NINES_CAP = 4.0  # 99.99 %: a second with no error is drawn at the top


def nines_axis() -> Axis:
    """Success rates in %, placed by their number of nines (module docstring)."""

    def position(percent: float) -> float:
        failing = max(0.0, 1.0 - percent / 100.0)
        nines = NINES_CAP if failing <= 10**-NINES_CAP else -math.log10(failing)
        return min(max(nines, 0.0), NINES_CAP) / NINES_CAP

    grid = ((0.0, "0%"), (90.0, "90%"), (99.0, "99%"), (99.9, "99.9%"), (100.0, "100%"))
    return Axis(position, grid)


def nice_top(value: float) -> float:
    """The round number just above ``value``: 1, 2, 2.5 or 5 times a power of ten."""
    if value <= 0:
        return 1.0
    power = 10.0 ** math.floor(math.log10(value))
    return float(next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= value))


def ticks(top: float) -> tuple[float, ...]:
    return tuple(top * i / 4 for i in range(5))


def plan_weights(stages: Sequence[dict[str, object]]) -> dict[int, int]:
    """Stage number (1-based) -> its weight, from the report's ``stages``."""
    weights = {}
    for i, stage in enumerate(stages, start=1):
        weight = stage.get("weight")
        if isinstance(weight, int):
            weights[i] = weight
    return weights


def stage_bands(
    samples: Sequence[tuple[float, str, int, int]], weights: dict[int, int]
) -> list[Band]:
    """One band per stage the rollout spent time in, from (t, phase, stage, weight) samples;
    a rollback (``RollingBack``/``RolledBack``) is one red band, a success one green band."""
    bands: list[Band] = []
    for t, phase, stage, weight in samples:
        if phase in ("RollingBack", "RolledBack", "Failed"):
            label, fill = "rolled back", "#fde2e1"
        elif phase == "Succeeded":
            label, fill = "succeeded", "#dff3e4"
        else:
            label = f"stage {stage} · {weights.get(stage, weight)}%"
            fill = _BAND_TINTS[len(bands) % 2]
        if bands and bands[-1].label == label:
            bands[-1] = Band(bands[-1].start, t, label, bands[-1].fill)
        else:
            if bands:
                bands[-1] = Band(bands[-1].start, t, bands[-1].label, bands[-1].fill)
            bands.append(Band(t, t, label, fill))
    return bands


def line_chart(
    title: str,
    xs: Sequence[float],
    series: Sequence[Series],
    axis: Axis,
    bands: Sequence[Band] = (),
    marks: Sequence[Mark] = (),
) -> str:
    """An inline SVG chart: bands behind, grid, marks, then the series (gaps where None)."""
    span = max(xs[-1] if xs else 1.0, 1.0)
    plot_w, plot_h = _WIDTH - _LEFT - _RIGHT, _HEIGHT - _TOP - _BOTTOM

    def px(x: float) -> float:
        return _LEFT + plot_w * x / span

    def py(y: float) -> float:
        return _TOP + plot_h * (1 - axis.position(y))

    out = [f"<h3>{html.escape(title)}</h3>", f"<svg width='{_WIDTH}' height='{_HEIGHT}'>"]
    for band in bands:
        x0, x1 = px(band.start), px(band.end)
        out.append(
            f"<rect x='{x0:.1f}' y='{_TOP}' width='{max(x1 - x0, 1):.1f}' height='{plot_h}' "
            f"fill='{band.fill}'/><text x='{x0 + 3:.1f}' y='{_TOP - 6}' font-size='10' "
            f"fill='#555'>{html.escape(band.label) if _fits(band.label, x1 - x0) else ''}</text>"
        )
    for value, label in axis.grid:
        y = py(value)
        out.append(
            f"<line x1='{_LEFT}' x2='{_WIDTH - _RIGHT}' y1='{y:.1f}' y2='{y:.1f}' "
            "stroke='#d0d0d0'/>"
            f"<text x='{_LEFT - 4}' y='{y + 4:.1f}' font-size='11' text-anchor='end'>"
            f"{html.escape(label)}</text>"
        )
    step = next((s for s in (5, 10, 15, 30, 60, 120, 300, 600) if span / s <= 12), 1200)
    for tick in range(0, int(span) + 1, step):
        out.append(
            f"<text x='{px(tick):.1f}' y='{_HEIGHT - 8}' font-size='11' text-anchor='middle'>"
            f"{tick}s</text>"
        )
    for i, mark in enumerate(sorted(marks, key=lambda m: m.at)):
        x = px(mark.at)
        row = _TOP + 12 + 13 * (i % 3)  # marks close together: their labels one under another
        out.append(
            f"<line x1='{x:.1f}' x2='{x:.1f}' y1='{_TOP}' y2='{_TOP + plot_h}' "
            f"stroke='{mark.colour}' stroke-width='1.5' stroke-dasharray='4 3'/>"
            f"<text x='{x + 3:.1f}' y='{row}' font-size='11' fill='{mark.colour}' "
            "style='paint-order: stroke' stroke='#fafafa' stroke-width='3'>"
            f"{html.escape(mark.label)}</text>"
        )
    for s in series:
        dash = " stroke-dasharray='6 4'" if s.dashed else ""
        for run in _runs(xs, s.values):
            points = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in run)
            out.append(
                f"<polyline fill='none' stroke='{PALETTE[s.colour]}' stroke-width='2'{dash} "
                f"points='{points}'/>"
            )
    out.append("</svg><div class='legend'>")
    for s in series:
        out.append(
            f"<span><i class='sw' style='background:{PALETTE[s.colour]}'></i>"
            f"{html.escape(s.name)}</span>"
        )
    out.append("</div>")
    return "\n".join(out)


def _fits(label: str, width: float) -> bool:
    """Whether ``label`` (10 px sans-serif, about 6 px a character) fits in ``width``."""
    return len(label) * 6 + 6 <= width


def _runs(xs: Sequence[float], ys: Sequence[float | None]) -> list[list[tuple[float, float]]]:
    runs: list[list[tuple[float, float]]] = [[]]
    for x, y in zip(xs, ys, strict=True):
        if y is None:
            if runs[-1]:
                runs.append([])
            continue
        runs[-1].append((x, y))
    return [r for r in runs if r]
