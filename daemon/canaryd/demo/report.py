"""The demo's report: JSON for scripts, one self-contained HTML page with charts for people.

The charts are drawn to be read at a glance (``demo.charts`` draws them): the success rate on a
"nines" axis, so a 99.5 % SLO sits visibly below 100 % instead of on the same pixel row, and a
30 % failure rate still fits; latency in milliseconds against its threshold; each stage a
shaded band labelled with its weight; a rollback, its mark and its rows in red.

Input is what the demo recorded while it ran (``RolloutRecord``): a sample per second of the
rollout as the API showed it (phase, stage, weight, check values) next to the traffic the load
generator really saw behind nginx (how many answers came from the canary), the decisions from
the API's history, and when a fault was injected and the weight went back to 0. The HTML has
no scripts and no external assets: inline SVG line charts and a table per rollout.

A rollout rolled back by a compare check (canary against stable) also gets its evidence, from
the rollout's ``compare`` state as the API showed it at each sample (the daemon's own e-process,
not a re-computation): each side's rate of the bad event since the check's baseline, and the
test's log e-value against the boundary ``log(1/alpha)`` whose crossing rolled it back.
"""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from canaryd.demo import charts


@dataclass
class Sample:
    t: float  # seconds since the rollout started
    phase: str
    stage: int
    weight: int
    checks: dict[str, float | None]
    canary_share: float | None  # % of the answers of the last second that came from the canary
    canary_success: float | None  # % of the canary's answers of the last second that were 2xx
    canary_p95_ms: float | None = None  # P95 of the canary's answers of the last second, in ms
    # the rollout's compare evidence at that moment, per check (``api.views.compare_view``)
    compare: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class Slo:
    """A check's threshold as the API shows it (``api.views.check_view``)."""

    op: str
    threshold: float
    unit: str


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
    slos: dict[str, Slo] = field(default_factory=dict)  # check -> its threshold

    @property
    def phase(self) -> str:
        return str(self.final.get("phase", "?"))

    @property
    def ok(self) -> bool:
        return self.phase == self.expected

    @property
    def compare_check(self) -> str | None:
        """The compare check whose conclusion rolled this rollout back, if one did."""
        found = re.match(r"check (\S+) failed", str(self.final.get("rollback_reason") or ""))
        if found and any(found.group(1) in s.compare for s in self.samples):
            return found.group(1)
        return None

    def evidence(self) -> dict[str, Any] | None:
        """The compare rollback's evidence, one point per evaluation (per change of the
        e-process): the e-value and its bound, each side's requests and bad-event rate."""
        check = self.compare_check
        if check is None:
            return None
        event = bad_event(self.samples[-1].compare[check].get("counted") or {})
        points: list[dict[str, Any]] = []
        for s in self.samples:
            e = s.compare.get(check)
            if e is None or (points and _same(points[-1], e)):
                continue
            counted = e.get("counted") or {}
            point: dict[str, Any] = {"t": round(s.t, 2), **_judged(e)}
            for side in ("canary", "stable"):
                bad, total = side_counts(counted, side, event)
                point[f"{side}_requests"] = total
                point[f"{side}_rate"] = bad / total if total else None
            point["counted"] = counted
            points.append(point)
        return {"check": check, "event": event_label(event), "points": points}

    def as_dict(self) -> dict[str, Any]:
        plan = self.final.get("plan") or []
        return {
            "name": self.name,
            "rollout_id": self.final.get("id"),
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
                    "canary_p95_ms": s.canary_p95_ms,
                    "checks": s.checks,
                }
                for s in self.samples
            ],
            "decisions": [
                {k: d.get(k) for k in ("t", "phase", "stage", "weight", "action", "reason")}
                for d in self.decisions
            ],
            "evidence": self.evidence(),
        }


def bad_event(counted: dict[str, float]) -> str | None:
    """What a compare check counts as bad, from its counted parts: None for errors, else the
    bucket bound (``0.05``) at which the canary's share of slower requests exceeds stable's
    the most — the bound whose e-process carries the evidence."""
    bounds = [
        k.removeprefix("canary.le=")
        for k in counted
        if k.startswith("canary.le=") and k != "canary.le=+Inf"
    ]
    if not bounds:
        return None

    def excess(bound: str) -> float:
        shares = []
        for side in ("canary", "stable"):
            bad, total = side_counts(counted, side, bound)
            shares.append(bad / total if total else 0.0)
        return shares[0] - shares[1]

    return max(sorted(bounds, key=float), key=excess)


def side_counts(counted: dict[str, float], side: str, event: str | None) -> tuple[float, float]:
    """(bad events, requests) of one side since the baseline."""
    if event is None:
        return counted.get(f"{side}.errors", 0.0), counted.get(f"{side}.requests", 0.0)
    total = counted.get(f"{side}.le=+Inf", 0.0)
    return total - counted.get(f"{side}.le={event}", total), total


def event_label(event: str | None) -> str:
    return "errors" if event is None else f"slower than {float(event) * 1000:g} ms"


def _judged(e: dict[str, Any]) -> dict[str, Any]:
    value, bound = e.get("e_value"), e.get("bound")
    return {
        "e_value": value,
        "log_e": math.log(value) if isinstance(value, int | float) and value > 0 else None,
        "bound": bound,
        "log_bound": math.log(bound) if isinstance(bound, int | float) and bound > 0 else None,
        "concluded": bool(e.get("concluded")),
    }


def _same(point: dict[str, Any], e: dict[str, Any]) -> bool:
    return bool(point["e_value"] == e.get("e_value") and point["counted"] == e.get("counted"))


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
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; } h3 { margin-bottom: 4px; }
.ok { color: #1a7f37; } .bad { color: #cf222e; } .rollback { color: #cf222e; font-weight: 600; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
td, th { border-bottom: 1px solid #ddd; padding: 3px 6px; text-align: left; vertical-align: top; }
tr.rollback td { color: #cf222e; background: #fff0f0; }
svg { background: #fafafa; border: 1px solid #e5e5e5; }
.legend span { margin-right: 1.2em; } .sw { display: inline-block; width: 12px; height: 3px;
  vertical-align: middle; margin-right: 4px; }
"""

ROLLBACK_ACTIONS = ("rollback", "rolled-back")
DEFAULT_SUCCESS_SLO = Slo(">=", 0.995, "ratio")
DEFAULT_LATENCY_SLO = Slo("<=", 0.25, "seconds")


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
    rolled_back = r.phase in ("RolledBack", "RollingBack", "Failed")
    expected = "ok" if r.ok else "bad"
    lines = [
        f"<h2>{html.escape(r.name)} rollout: {html.escape(r.image)} → "
        f"<span class='{'rollback' if rolled_back else expected}'>{html.escape(r.phase)}</span>"
        f" <span class='{expected}'>({'as expected' if r.ok else 'expected ' + r.expected})"
        "</span></h2>",
        _summary(d),
    ]
    t = [s.t for s in r.samples]
    bands = charts.stage_bands(
        [(s.t, s.phase, s.stage, s.weight) for s in r.samples], charts.plan_weights(d["stages"])
    )
    marks = _marks(r)
    lines.append(
        charts.line_chart(
            "Traffic to the canary (%)",
            t,
            [
                charts.Series("weight set by canaryd", [float(s.weight) for s in r.samples], 0),
                charts.Series(
                    "answers seen from the canary", [s.canary_share for s in r.samples], 1
                ),
            ],
            charts.linear_axis(0.0, 100.0, (0, 25, 50, 75, 100), "%"),
            bands,
            marks,
        )
    )
    slo = r.slos.get("success-rate", DEFAULT_SUCCESS_SLO)
    measured = [_percent(s.checks.get("success-rate")) for s in r.samples]
    lines.append(
        charts.line_chart(
            "Canary success rate (%; one grid line per extra nine, so the SLO stands apart)",
            t,
            [
                charts.Series(
                    "2xx share per second (load generator)",
                    [s.canary_success for s in r.samples],
                    2,
                ),
                charts.Series("success-rate check (canaryd, from Prometheus)", measured, 0),
                charts.Series(
                    f"SLO {slo.op} {slo.threshold * 100:g} %",
                    [slo.threshold * 100] * len(t),
                    3,
                    dashed=True,
                ),
            ],
            charts.nines_axis(),
            bands,
            marks,
        )
    )
    lat = r.slos.get("latency-p95", DEFAULT_LATENCY_SLO)
    p95 = [_ms(s.checks.get("latency-p95")) for s in r.samples]
    seen = [s.canary_p95_ms for s in r.samples]
    top = charts.nice_top(
        max([lat.threshold * 1000 * 1.6, *[v for v in p95 + seen if v is not None]])
    )
    lines.append(
        charts.line_chart(
            "Canary latency P95 (ms)",
            t,
            [
                charts.Series("P95 per second (load generator, through nginx)", seen, 1),
                charts.Series("latency-p95 check (canaryd, from Prometheus)", p95, 0),
                charts.Series(
                    f"threshold {lat.op} {lat.threshold * 1000:g} ms",
                    [lat.threshold * 1000] * len(t),
                    3,
                    dashed=True,
                ),
            ],
            charts.linear_axis(0.0, top, charts.ticks(top), " ms"),
            bands,
            marks,
        )
    )
    if d["evidence"]:
        lines.extend(_evidence_charts(r, d["evidence"], t, bands, marks))
    lines.append(_decision_table(d["decisions"]))
    return "\n".join(lines)


def _evidence_charts(
    r: RolloutRecord,
    evidence: dict[str, Any],
    t: list[float],
    bands: list[charts.Band],
    marks: list[charts.Mark],
) -> list[str]:
    """The compare rollback's two charts, on the same time axis as the others: each side's rate
    of the bad event since the baseline, and the log e-value against log(1/alpha)."""
    check, label = evidence["check"], evidence["event"]
    event = bad_event(r.samples[-1].compare[check].get("counted") or {})
    rates: dict[str, list[float | None]] = {"canary": [], "stable": []}
    log_e: list[float | None] = []
    for s in r.samples:
        e = s.compare.get(check) or {}
        for side, values in rates.items():
            bad, total = side_counts(e.get("counted") or {}, side, event)
            values.append(100.0 * bad / total if total else None)
        log_e.append(_judged(e)["log_e"] if e else None)
    seen = [v for vs in rates.values() for v in vs if v is not None]
    top = min(100.0, charts.nice_top(max([1.0, *seen]) * 1.15))  # a share: 100 % at most
    rate_chart = charts.line_chart(
        f"{check}: share of requests {label} since the check's baseline, per side (%)",
        t,
        [
            charts.Series(f"canary {r.image}", rates["canary"], 1),
            charts.Series("stable", rates["stable"], 0),
        ],
        charts.linear_axis(0.0, top, charts.ticks(top), "%"),
        bands,
        marks,
    )
    log_bound = math.log(float(evidence["points"][-1]["bound"]))
    high = charts.nice_top(max([1.5 * log_bound, *[v for v in log_e if v is not None]]))
    low = -2.0  # an e-value far below 1 is drawn at the bottom: "no evidence" either way
    grid = sorted({low, 0.0, *charts.ticks(high)})
    test_chart = charts.line_chart(
        f"{check}: the test's log e-value against its boundary log(1/alpha) = {log_bound:.2f} "
        "(rolled back when it crosses)",
        t,
        [
            charts.Series("log e-value (canaryd's e-process)", log_e, 0),
            charts.Series(
                f"boundary log(1/alpha) = log {math.exp(log_bound):.4g}",
                [log_bound] * len(t),
                3,
                dashed=True,
            ),
        ],
        charts.linear_axis(low, high, grid, ""),
        bands,
        marks,
    )
    return [rate_chart, test_chart]


def _summary(d: dict[str, Any]) -> str:
    text = f"<p>weights: {' → '.join(f'{w}%' for w in d['weights_seen'])}"
    text += f"; {d['duration_seconds']:.0f} s"
    if d["fault_to_rollback_seconds"] is not None:
        text += (
            f"; fault injected at t={d['fault_at']:.0f}s, traffic back on stable "
            f"{d['fault_to_rollback_seconds']:.1f} s later"
        )
    if d["header_pinned"]:
        probes = ", ".join(f"at {w}%: {n}/5" for w, n in d["header_pinned"].items())
        text += (
            f"<br>requests with <code>X-Canary-Deploy: canary</code> answered by the canary "
            f"{probes}"
        )
    if d["rollback_reason"]:
        reason = html.escape(str(d["rollback_reason"]))
        text += f"<br><span class='rollback'>rollback reason: {reason}</span>"
    return text + "</p>"


def _marks(r: RolloutRecord) -> list[charts.Mark]:
    marks = []
    if r.fault_at is not None:
        marks.append(charts.Mark(r.fault_at, "fault injected", "#9a6700"))
    for dec in r.decisions:
        t = dec.get("t")
        if dec.get("action") in ROLLBACK_ACTIONS and isinstance(t, int | float):
            label = "rollback" if dec.get("action") == "rollback" else "on stable"
            marks.append(charts.Mark(float(t), label, charts.ROLLBACK))
    return marks


def _decision_table(decisions: list[dict[str, Any]]) -> str:
    keys = ("t", "phase", "stage", "weight", "action", "reason")
    rows = [
        "<table><tr><th>t (s)</th><th>phase</th><th>stage</th><th>weight</th>"
        "<th>action</th><th>reason</th></tr>"
    ]
    for dec in decisions:
        rollback = dec.get("action") in ROLLBACK_ACTIONS or dec.get("phase") == "RolledBack"
        cells = "".join(f"<td>{html.escape(_cell(dec.get(k)))}</td>" for k in keys)
        rows.append(f"<tr class='rollback'>{cells}</tr>" if rollback else f"<tr>{cells}</tr>")
    rows.append("</table>")
    return "\n".join(rows)


def _percent(value: float | None) -> float | None:
    return None if value is None else value * 100.0


def _ms(value: float | None) -> float | None:
    return None if value is None else value * 1000.0


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.1f}"
    return "" if value is None else str(value)


def dumps(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, sort_keys=False, default=str)
