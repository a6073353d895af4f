"""Verdicts of ``compare`` checks: canary against stable, from cumulative counters.

A compare check is stateful where a threshold check is not: its e-process (``core.sequential``)
runs over the whole rollout, across stages, so each evaluation takes the check's
``CompareState`` from the rollout record and returns the next one with its ``Assessment``.

Counts arrive cumulative (raw counters, or a simulation's totals since the rollout started); an
evaluation uses the increment since the previous reading. The first reading of a rollout is
the baseline, so nothing that happened before the rollout's first evaluation is ever counted.
A counter that went down (a process restarted, a series vanished) makes the reading the new
baseline and that interval is skipped: evidence is lost, never invented.

Verdicts: *failed* once the e-value reached ``1/alpha`` (and from then on: the conclusion is
sticky), *successful* while it has not and both sides have served requests since the baseline,
in one interval at least (so that something was compared),
otherwise no data (``no_data``: inconclusive by default) — a compare check never passes without
data on both sides. ``alpha`` is the policy's budget split among its compare checks by
``alpha_weight`` (evenly by default).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace

from canaryd.core import analysis, sequential
from canaryd.core.analysis import Assessment
from canaryd.core.model import (
    Check,
    CompareState,
    Measurement,
    NoData,
    Policy,
    Rollout,
    Verdict,
)

SIDES = ("canary", "stable")
ERRORS, LATENCY = "errors", "latency"
KINDS = (ERRORS, LATENCY)
INF = "+Inf"
# in ``CompareState.counted``: intervals in which both sides served requests (compared ones)
PAIRED = "paired.intervals"


def alpha_share(policy: Policy, check: Check | None = None) -> float:
    """``check``'s part of the policy's ``alpha``: ``alpha × its alpha_weight / the sum of the
    alpha_weight of the compare checks the policy defines`` (an even split by default), the
    verified split (``core.split``), if the policy has one, counting as one more check of
    weight 1 — so that together they roll back a canary no worse than stable, on a correct
    split, with probability at most ``alpha`` over the whole rollout (a union bound). Without
    ``check``: the part of a weight-1 check (the split's)."""
    total = sum(c.alpha_weight for c in policy.checks.values() if c.kind == "compare")
    total += 1.0 if policy.split_tolerance is not None else 0.0
    weight = 1.0 if check is None else check.alpha_weight
    return policy.alpha * weight / max(total, weight)


def bound_label(text: str) -> str:
    """A bucket bound as one spelling (``0.250`` and ``.25`` are the same bound)."""
    value = float(text)
    return INF if value == math.inf else f"{value:g}"


def reading(check: Check, m: Measurement) -> dict[str, float] | None:
    """The measurement's cumulative counters by part name, or None if a side has none."""
    if check.compare == ERRORS and m.counts is not None:
        c = m.counts
        return {
            "canary.requests": c.canary_requests,
            "canary.errors": c.canary_errors,
            "stable.requests": c.stable_requests,
            "stable.errors": c.stable_errors,
        }
    if check.compare == LATENCY and m.histograms is not None:
        out: dict[str, float] = {}
        for side, buckets in zip(SIDES, (m.histograms.canary, m.histograms.stable), strict=True):
            if INF not in buckets:
                return None
            out.update({f"{side}.le={bound}": value for bound, value in buckets.items()})
        return out
    return None


def assess(
    check: Check, m: Measurement | None, state: CompareState | None, alpha: float
) -> tuple[Assessment, CompareState]:
    """One evaluation of a compare check: its verdict and the rollout's next state for it."""
    state = state or CompareState()
    if m is not None and m.error is not None:
        detail = f"source error: {m.error}"
        return Assessment(check.name, Verdict.ERROR, None, detail, m.error), state
    now = None if m is None else reading(check, m)
    if now is not None and not all(math.isfinite(v) and v >= 0 for v in now.values()):
        detail = "a count is negative or not a finite number: no pass"
        return Assessment(check.name, Verdict.FAILED, None, detail), state
    if now is not None:
        state = _advance(check, state, now)
    if not state.concluded and sequential.e_average(list(state.logs.values())) >= 1.0 / alpha:
        state = replace(state, concluded=True)
    return _verdict(check, state, alpha, measured=now is not None), state


def judged(rollout: Rollout, check: Check, m: Measurement | None) -> Assessment:
    """The verdict of ``m`` as the engine gave it in ``rollout`` (the record after the
    evaluation that measured it): a threshold check's from the reading alone, a compare check's
    from the rollout's e-process so far. For the readers that report verdicts after the fact
    (metrics, traces, the API's latest measurement), so they say what the evaluation decided."""
    if check.kind != "compare":
        return analysis.assess(check, m)
    if m is not None and m.error is not None:
        return Assessment(check.name, Verdict.ERROR, None, f"source error: {m.error}", m.error)
    state = rollout.compare.get(check.name) or CompareState()
    return _verdict(check, state, alpha_share(rollout.policy, check), measured=m is not None)


def _advance(check: Check, state: CompareState, now: Mapping[str, float]) -> CompareState:
    """The state after a reading: the baseline, a skipped interval, or one more update."""
    last = state.last
    if not last or set(last) != set(now) or any(now[k] < last[k] for k in now):
        return CompareState(now, state.counted, state.logs, state.concluded)
    delta = {k: now[k] - last[k] for k in now}
    counted = {k: state.counted.get(k, 0.0) + delta[k] for k in now}
    both = all(_requests(check, delta, side) > 0 for side in SIDES)
    counted[PAIRED] = state.counted.get(PAIRED, 0.0) + (1.0 if both else 0.0)
    logs = dict(state.logs)
    omega0 = 1.0 + check.tolerance
    for event, (x, m, n_c, n_s) in _bad_events(check, delta).items():
        logs[event] = sequential.update(logs.get(event, sequential.start()), x, m, n_c, n_s, omega0)
    return CompareState(dict(now), counted, logs, state.concluded)


def _bad_events(check: Check, d: Mapping[str, float]) -> dict[str, tuple[int, int, float, float]]:
    """Per bad event: (canary's bad count, both sides' bad count, canary requests, stable
    requests) in one interval. Counts are rounded (``increase``-style extrapolation can make them
    fractional) and a side's bad events never exceed its requests."""
    if check.compare == ERRORS:
        n_c, n_s = d["canary.requests"], d["stable.requests"]
        x = round(min(d["canary.errors"], n_c))
        y = round(min(d["stable.errors"], n_s))
        return {"errors": (x, x + y, n_c, n_s)}
    n_c, n_s = d[f"canary.le={INF}"], d[f"stable.le={INF}"]
    out = {}
    for key in d:
        side, _, bound = key.partition(".le=")
        if side != "canary" or bound == INF:
            continue
        x = round(max(n_c - d[key], 0.0))
        y = round(max(n_s - d.get(f"stable.le={bound}", n_s), 0.0))
        out[f"slower than {bound}"] = (x, x + y, n_c, n_s)
    return out


def _requests(check: Check, counted: Mapping[str, float], side: str) -> float:
    key = f"{side}.requests" if check.compare == ERRORS else f"{side}.le={INF}"
    return counted.get(key, 0.0)


def _verdict(check: Check, state: CompareState, alpha: float, measured: bool) -> Assessment:
    e = sequential.e_average(list(state.logs.values()))
    bound = 1.0 / alpha
    words = _describe(check, state, e, bound)
    if state.concluded:
        return Assessment(check.name, Verdict.FAILED, e, f"canary worse than stable: {words}")
    n_c, n_s = (_requests(check, state.counted, side) for side in SIDES)
    if n_c > 0 and n_s > 0 and state.counted.get(PAIRED, 0.0) > 0:
        return Assessment(check.name, Verdict.SUCCESSFUL, e, f"no evidence yet: {words}")
    why = "no data" if not measured else "baseline taken" if not state.counted else "no requests"
    missing = [side for side, n in zip(SIDES, (n_c, n_s), strict=True) if n <= 0]
    if missing:
        detail = f"{why} ({' and '.join(missing)} side without requests so far)"
    else:  # each side served requests, never in the same interval (a counter reset between)
        detail = "no requests on both sides in one interval yet: nothing compared"
    verdict = Verdict.FAILED if check.no_data is NoData.FAIL else Verdict.INCONCLUSIVE
    return Assessment(check.name, verdict, None, detail)


def _describe(check: Check, state: CompareState, e: float, bound: float) -> str:
    """Per-side rates and the e-value against its bound, in words."""
    c = state.counted
    if check.compare == ERRORS:
        sides = [
            f"{side} {_ratio(c.get(f'{side}.errors', 0.0), c.get(f'{side}.requests', 0.0))}"
            for side in SIDES
        ]
        what = "errors"
    else:
        worst = max(state.logs, key=lambda k: sequential.e_value(state.logs[k]), default=None)
        bound_text = worst.removeprefix("slower than ") if worst else None
        sides = []
        for side in SIDES:
            total = c.get(f"{side}.le={INF}", 0.0)
            fast = c.get(f"{side}.le={bound_text}", total) if bound_text else total
            sides.append(f"{side} {_ratio(total - fast, total)}")
        what = worst or "slower"
    tolerance = f"tolerance {check.tolerance:.0%}"
    return f"{what} {' vs '.join(sides)}; e-value {e:.3g} of {bound:.3g} ({tolerance})"


def _ratio(bad: float, total: float) -> str:
    if total <= 0:
        return "no requests"
    return f"{bad / total:.3%} ({bad:.0f}/{total:.0f})"
