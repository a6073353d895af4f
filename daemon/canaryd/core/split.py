"""Verified split: does the canary really receive the share of requests it was given?

The router's read-back (``canaryd_router_weight``) says what the router was told; only the
requests each side served say what it does. A policy with ``split: {tolerance: t}`` has every
stage's per-side request counts (the ``requests`` part of its ``compare: errors`` check) tested
against the weight ``w`` asked: is the canary's share of requests outside ``[w - t, w + t]``?

Pure arithmetic, no I/O; ``rules/README.md`` (section *Verified split*) explains it for people.

**The test.** Each request is a trial that lands on the canary with probability ``p``. The
null hypothesis is "the split is within tolerance", ``w - t <= p <= w + t``; it is the
intersection of two one-sided nulls, *not too few* (``p >= p_lo = w - t``) and *not too many*
(``p <= p_hi = w + t``). For *too few*, with ``x`` of an interval's ``n`` requests on the
canary, the likelihood ratio of an alternative ``p1 < p_lo`` against ``p_lo``

    LR(p1) = (p1/p_lo)^x · ((1-p1)/(1-p_lo))^(n-x)

has a one-step mean ``p·p1/p_lo + (1-p)·(1-p1)/(1-p_lo)``, 1 at ``p = p_lo`` and decreasing in
``p``: its product over intervals is a test supermartingale under every ``p >= p_lo``. The
alternatives are ``p_lo``'s odds divided by each factor of ``core.sequential.GRID``, mixed with
equal weights; *too many* mirrors it with the odds multiplied. Both are supermartingales under
the (interval) null, so their average is an e-process for it, and by Ville's inequality it
reaches ``1/alpha`` with probability at most ``alpha`` however often it is looked at. The
split's ``alpha`` is its even share of the policy's budget with the compare checks
(``core.compare.alpha_share``), divided again among the policy's stages (each stage runs its
own e-process, so a union bound over them keeps the rollout within the share). A side whose
bound is not strictly inside (0, 1) is dropped (at weight 100 only *too few* can be shown).

**Assumptions.** Requests land independently of each other. A round-robin router (nginx,
Traefik) spreads them more evenly than independent trials would: the test is then
conservative, never anti-conservative. Sticky sessions or a few heavy clients make requests
dependent; the share then needs more requests to be shown off, not fewer.

**Scope.** Per stage: counting starts at the stage's first evaluation (the first reading is
the baseline), so requests from a previous weight are never counted, and a new stage (or a
weight set by an operator) starts a fresh e-process. Once the e-value crossed ``1/alpha`` in a
stage it stays crossed: the stage holds and, at ``progress_deadline``, rolls back, its reason
naming the share seen.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from canaryd.core import compare, sequential
from canaryd.core.model import Counts, Policy, SplitState

LOW, HIGH = "low", "high"  # fewer requests than asked / more


def alpha(policy: Policy) -> float:
    """One stage's false-alarm budget: the split's share of ``alpha``, split among stages."""
    return compare.alpha_share(policy) / max(len(policy.stages), 1)


def observe(
    state: SplitState | None,
    counts: Counts | None,
    weight: int,
    tolerance: float | None,
    alpha: float,
) -> SplitState | None:
    """The stage's split state after one evaluation's cumulative counters ``counts``.

    Without counts the state is unchanged (nothing known); with a state for another weight, or
    none, the reading becomes a fresh baseline. ``tolerance`` None: the counts are kept (the
    measured share is still exported) but nothing is tested.
    """
    if state is not None and state.weight != weight:
        state = None
    if counts is None:
        return state
    now = {"canary": counts.canary_requests, "stable": counts.stable_requests}
    if not all(math.isfinite(v) and v >= 0 for v in now.values()):
        return state  # a broken reading is no evidence
    if state is None:
        return SplitState(weight=weight, last=now)
    last = state.last
    if set(last) != set(now) or any(now[k] < last[k] for k in now):
        return SplitState(weight, now, state.counted, state.logs, state.concluded)
    x = round(now["canary"] - last["canary"])
    n = x + round(now["stable"] - last["stable"])
    counted = {k: state.counted.get(k, 0.0) + now[k] - last[k] for k in now}
    logs = dict(state.logs)
    if tolerance is not None:
        for side, p0 in bounds(weight, tolerance).items():
            logs[side] = _update(logs.get(side, sequential.start()), x, n, p0, side)
    concluded = state.concluded or (tolerance is not None and e_value(logs) >= 1.0 / alpha)
    return SplitState(weight, now, counted, logs, concluded)


def bounds(weight: int, tolerance: float) -> dict[str, float]:
    """The null's edges as canary shares, by side; a side whose edge is not inside (0, 1)
    cannot be crossed and is left out."""
    w = weight / 100.0
    edges = {LOW: w - tolerance, HIGH: w + tolerance}
    return {side: p for side, p in edges.items() if 0.0 < p < 1.0}


def _update(logs: Sequence[float], x: int, n: int, p0: float, side: str) -> tuple[float, ...]:
    """The mixture's components after ``x`` of ``n`` requests went to the canary."""
    if n <= 0:
        return tuple(logs)
    x = min(max(x, 0), n)
    odds0 = p0 / (1.0 - p0)
    out = []
    for log_e, factor in zip(logs, sequential.GRID, strict=True):
        odds1 = odds0 / factor if side == LOW else odds0 * factor
        p1 = odds1 / (1.0 + odds1)
        step = x * math.log(p1 / p0) + (n - x) * math.log((1.0 - p1) / (1.0 - p0))
        out.append(min(log_e + step, sequential.LOG_CAP))
    return tuple(out)


def e_value(logs: Mapping[str, Sequence[float]]) -> float:
    """The average of the sides' mixtures (0 before any side was tested)."""
    if not logs:
        return 0.0
    return sum(sequential.e_value(v) for v in logs.values()) / len(logs)


def share(state: SplitState | None) -> float | None:
    """The canary's measured share of the stage's requests, in percent (None: none counted)."""
    if state is None:
        return None
    total = state.counted.get("canary", 0.0) + state.counted.get("stable", 0.0)
    if total <= 0:
        return None
    return 100.0 * state.counted.get("canary", 0.0) / total


def describe(state: SplitState, tolerance: float) -> str:
    """The share seen against the weight asked, in words ("canary received 9.8% of requests,
    asked 20% (tolerance ±5)")."""
    seen = share(state)
    got = "no requests" if seen is None else f"{seen:.1f}% of requests"
    n = sum(state.counted.values())
    return (
        f"canary received {got}, asked {state.weight}% (tolerance ±{tolerance * 100:g}; "
        f"{n:.0f} requests)"
    )


def evidence(state: SplitState, tolerance: float, alpha: float) -> dict[str, object]:
    """The split's facts for a decision's evidence."""
    return {
        "asked": state.weight,
        "share": share(state),
        "tolerance": tolerance,
        "canary_requests": state.counted.get("canary", 0.0),
        "stable_requests": state.counted.get("stable", 0.0),
        "e_value": e_value(state.logs),
        "bound": 1.0 / alpha,
    }
