"""The demo's report: JSON for scripts, one self-contained HTML page with charts for people.

Input is what the demo recorded while it ran (``RolloutRecord``): a sample per second of the
rollout as the API showed it (phase, stage, weight, check values) next to the traffic the load
generator really saw behind nginx (how many answers came from the canary), the decisions from
the API's history, and when a fault was injected and the weight went back to 0. The HTML has
no scripts and no external assets: inline SVG line charts and a table per rollout.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Sample:
    t: float  # seconds since the rollout started
    phase: str
    stage: int
    weight: int
    checks: dict[str, float | None]
    canary_share: float | None  # % of the answers of the last second that came from the canary
    canary_success: float | None  # % of the canary's answers of the last second that were 2xx


@dataclass
class RolloutRecord:
    name: str  # "good" | "bad"
    image: str
    expected: str  # the phase the demo expects at the end
    samples: list[Sample] = field(default_factory=list)
    decisions: list[dict[str, Any]] = field(default_factory=list)
    final: dict[str, Any] = field(default_factory=dict)  # the API's rollout view at the end
    fault_at: float | None = None  # seconds since start
    zero_at: float | None = None  # seconds since start when traffic was back on stable
    pinned: dict[int, int] = field(default_factory=dict)  # weight -> of 5 header probes, canary

    @property
    def phase(self) -> str:
        return str(self.final.get("phase", "?"))

    @property
    def ok(self) -> bool:
        return self.phase == self.expected

    def as_dict(self) -> dict[str, Any]:
        plan = self.final.get("plan") or []
        return {
            "name": self.name,
            "image": self.image,
            "expected": self.expected,
            "phase": self.phase,
            "ok": self.ok,
            "stages": [
                {k: s.get(k) for k in ("weight", "duration", "checks", "gate")} for s in plan
            ],
            "weights_seen": _distinct([s.weight for s in self.samples]),
            # X-Canary-Deploy: canary probes through nginx at each weight: canary answers of 5
            "header_pinned": {str(w): n for w, n in sorted(self.pinned.items())},
            "rollback_reason": self.final.get("rollback_reason"),
            "fault_at": self.fault_at,
            "traffic_back_on_stable_at": self.zero_at,
            "fault_to_rollback_seconds": (
                self.zero_at - self.fault_at
                if self.zero_at is not None and self.fault_at is not None
                else None
            ),
            "duration_seconds": self.samples[-1].t if self.samples else 0.0,
            "timeline": [
                {
                    "t": round(s.t, 2),
                    "phase": s.phase,
                    "stage": s.stage,
                    "weight": s.weight,
                    "canary_share": s.canary_share,
                    "canary_success": s.canary_success,
                }
                for s in self.samples
            ],
            "decisions": [
                {k: d.get(k) for k in ("t", "phase", "stage", "weight", "action", "reason")}
                for d in self.decisions
            ],
        }


def as_json(records: Sequence[RolloutRecord], meta: dict[str, Any]) -> dict[str, Any]:
    return {**meta, "ok": all(r.ok for r in records), "rollouts": [r.as_dict() for r in records]}


def _distinct(values: Sequence[int]) -> list[int]:
    out: list[int] = []
    for v in values:
        if not out or out[-1] != v:
            out.append(v)
    return out


# --------------------------------------------------------------------------- HTML

_STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 980px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; }
.ok { color: #1a7f37; } .bad { color: #cf222e; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
td, th { border-bottom: 1px solid #ddd; padding: 3px 6px; text-align: left; vertical-align: top; }
svg { background: #fafafa; border: 1px solid #e5e5e5; }
.legend span { margin-right: 1.2em; } .sw { display: inline-block; width: 12px; height: 3px;
  vertical-align: middle; margin-right: 4px; }
"""

_COLORS = {"weight": "#0969da", "share": "#bf8700", "success": "#1a7f37", "threshold": "#cf222e"}


def as_html(records: Sequence[RolloutRecord], meta: dict[str, Any]) -> str:
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        "<title>canaryd demo report</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>canaryd demo</h1>",
        f"<p>{html.escape(str(meta.get('summary', '')))}</p>",
    ]
    for r in records:
        parts.append(_section(r))
    parts.append("</body></html>")
    return "\n".join(parts)


def _section(r: RolloutRecord) -> str:
    d = r.as_dict()
    verdict = "ok" if r.ok else "bad"
    lines = [
        f"<h2>{html.escape(r.name)} rollout: {html.escape(r.image)} → "
        f"<span class='{verdict}'>{html.escape(r.phase)}</span>"
        f" (expected {html.escape(r.expected)})</h2>",
        f"<p>weights: {' → '.join(f'{w}%' for w in d['weights_seen'])}"
        f"; {d['duration_seconds']:.0f} s",
    ]
    if d["fault_to_rollback_seconds"] is not None:
        lines[-1] += (
            f"; fault injected at t={d['fault_at']:.0f}s, traffic back on stable "
            f"{d['fault_to_rollback_seconds']:.1f} s later"
        )
    if d["header_pinned"]:
        probes = ", ".join(f"at {w}%: {n}/5" for w, n in d["header_pinned"].items())
        lines[-1] += (
            f"<br>requests with <code>X-Canary-Deploy: canary</code> answered by the canary "
            f"{probes}"
        )
    if d["rollback_reason"]:
        lines[-1] += f"<br>rollback reason: {html.escape(str(d['rollback_reason']))}"
    lines[-1] += "</p>"
    marks = [(x, label) for x, label in ((r.fault_at, "fault"), (r.zero_at, "0%")) if x is not None]
    t = [s.t for s in r.samples]
    lines.append(
        _chart(
            "Traffic to the canary (%)",
            t,
            {
                "weight set by canaryd": ([float(s.weight) for s in r.samples], _COLORS["weight"]),
                "answers seen from the canary": (
                    [s.canary_share for s in r.samples],
                    _COLORS["share"],
                ),
            },
            0.0,
            100.0,
            marks,
        )
    )
    lines.append(
        _chart(
            "Canary success rate (%, per second, as the load generator saw it)",
            t,
            {
                "canary 2xx share": ([s.canary_success for s in r.samples], _COLORS["success"]),
                "SLO 99.5 %": ([99.5 for _ in r.samples], _COLORS["threshold"]),
            },
            50.0,
            100.0,
            marks,
        )
    )
    lines.append("<table><tr><th>t (s)</th><th>phase</th><th>stage</th><th>weight</th>")
    lines.append("<th>action</th><th>reason</th></tr>")
    for dec in d["decisions"]:
        lines.append(
            "<tr>"
            + "".join(
                f"<td>{html.escape(_cell(dec.get(k)))}</td>"
                for k in ("t", "phase", "stage", "weight", "action", "reason")
            )
            + "</tr>"
        )
    lines.append("</table>")
    return "\n".join(lines)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.1f}"
    return "" if value is None else str(value)


def _chart(
    title: str,
    xs: Sequence[float],
    series: dict[str, tuple[Sequence[float | None], str]],
    lo: float,
    hi: float,
    marks: Sequence[tuple[float, str]],
) -> str:
    """An inline SVG line chart: gaps where a value is None, vertical marks with labels."""
    width, height, left, bottom, top, right = 940, 220, 44, 26, 12, 10
    span = max(xs[-1] if xs else 1.0, 1.0)
    plot_w, plot_h = width - left - right, height - top - bottom

    def px(x: float) -> float:
        return left + plot_w * x / span

    def py(y: float) -> float:
        y = min(max(y, lo), hi)
        return top + plot_h * (1 - (y - lo) / (hi - lo))

    out = [f"<h3>{html.escape(title)}</h3>", f"<svg width='{width}' height='{height}'>"]
    for frac in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = lo + (hi - lo) * frac
        out.append(
            f"<line x1='{left}' x2='{width - right}' y1='{py(y):.1f}' y2='{py(y):.1f}' "
            "stroke='#e0e0e0'/>"
            f"<text x='{left - 4}' y='{py(y) + 4:.1f}' font-size='11' text-anchor='end'>"
            f"{y:g}</text>"
        )
    step = next((s for s in (5, 10, 15, 30, 60, 120, 300, 600) if span / s <= 12), 1200)
    for tick in range(0, int(span) + 1, step):
        out.append(
            f"<text x='{px(tick):.1f}' y='{height - 8}' font-size='11' text-anchor='middle'>"
            f"{tick}s</text>"
        )
    for at, label in marks:
        out.append(
            f"<line x1='{px(at):.1f}' x2='{px(at):.1f}' y1='{top}' y2='{top + plot_h}' "
            f"stroke='#888' stroke-dasharray='4 3'/><text x='{px(at) + 3:.1f}' y='{top + 10}' "
            f"font-size='11'>{html.escape(label)}</text>"
        )
    for values, color in series.values():
        for run in _runs(xs, values):
            points = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in run)
            out.append(
                f"<polyline fill='none' stroke='{color}' stroke-width='2' points='{points}'/>"
            )
    out.append("</svg><div class='legend'>")
    for name, (_, color) in series.items():
        out.append(f"<span><i class='sw' style='background:{color}'></i>{html.escape(name)}</span>")
    out.append("</div>")
    return "\n".join(out)


def _runs(xs: Sequence[float], ys: Sequence[float | None]) -> list[list[tuple[float, float]]]:
    runs: list[list[tuple[float, float]]] = [[]]
    for x, y in zip(xs, ys, strict=True):
        if y is None:
            if runs[-1]:
                runs.append([])
            continue
        runs[-1].append((x, y))
    return [r for r in runs if r]


def dumps(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, sort_keys=False, default=str)
