"""Verdicts of checks: pure functions of (check spec, measurement).

Following Argo Rollouts, a verdict is one of successful / failed / inconclusive / error and
never a bool: no data is inconclusive (or failed, if the policy says so) but never a pass, and
a source error is an Error measurement, never a failure by itself.

Non-finite values: NaN is what PromQL returns for 0/0 (a success rate with no traffic), so it is
no data, as above. ``+Inf`` and ``-Inf`` are never a pass, for any kind or comparison: they come
from a division by zero or from ``histogram_quantile`` landing in the ``+Inf`` bucket (latency
beyond the highest bucket: a real breach), and a comparison such as ``+Inf >= 0.99`` holding says
nothing about the canary's health. They are *failed*, not inconclusive: an infinite latency is
the canary being bad, and a query that yields infinities cannot vouch for it, so canaryd fails
closed (rolls back within ``failure_limit``) rather than wait on it. ``assess`` enforces this for
every kind, before and after the kind's own assessor.

Checks are judged by ``kind`` through ``ASSESSORS``. A measurement carries a value *and*
request counts, so a check that weighs canary against stable evidence (a sequential test)
is one more entry here, with no change to the stage engine.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from canaryd.core.model import Check, Measurement, NoData, Verdict

OPERATORS: Mapping[str, Callable[[float, float], bool]] = {
    ">=": lambda v, t: v >= t,
    ">": lambda v, t: v > t,
    "<=": lambda v, t: v <= t,
    "<": lambda v, t: v < t,
}


@dataclass(frozen=True, slots=True)
class Assessment:
    """One check's verdict at one evaluation; ``detail`` is words for people, ``error`` the
    source's own error when the verdict is ERROR (typed, so nothing parses ``detail``)."""

    check: str
    verdict: Verdict
    value: float | None
    detail: str
    error: str | None = None


def _no_data(check: Check, why: str) -> Assessment:
    verdict = Verdict.FAILED if check.no_data is NoData.FAIL else Verdict.INCONCLUSIVE
    return Assessment(check.name, verdict, None, why)


def _show(value: float) -> str:
    return "NaN" if math.isnan(value) else ("+Inf" if value > 0 else "-Inf")


def _not_finite(check: Check, what: str) -> Assessment:
    return Assessment(check.name, Verdict.FAILED, None, f"{what} is not a finite number: no pass")


def _counts_finite(m: Measurement) -> bool:
    c = m.counts
    if c is None:
        return True
    fields = (c.canary_requests, c.canary_errors, c.stable_requests, c.stable_errors)
    return all(math.isfinite(x) for x in fields)


def assess_threshold(check: Check, m: Measurement) -> Assessment:
    value = m.value
    if value is None or math.isnan(value):
        return _no_data(check, "no data")
    ok = OPERATORS[check.op](value, check.threshold)
    verdict = Verdict.SUCCESSFUL if ok else Verdict.FAILED
    relation = "holds" if ok else "breached"
    return Assessment(
        check.name, verdict, value, f"{value:.6g} {check.op} {check.threshold:.6g} {relation}"
    )


def assess_compare_alone(check: Check, m: Measurement) -> Assessment:
    """A compare check's measurement taken alone: its counters are cumulative and its verdict
    is the e-process's over the whole rollout (``core.compare``), so one reading cannot be
    judged without the rollout's state — never a pass. Callers holding the rollout use
    ``compare.judged``; this entry keeps every other reader (a chart of stored measurements)
    from failing on a compare check."""
    return _no_data(check, "judged over the rollout (its compare evidence), not per reading")


ASSESSORS: dict[str, Callable[[Check, Measurement], Assessment]] = {
    "threshold": assess_threshold,
    "compare": assess_compare_alone,
}


def assess(check: Check, m: Measurement | None) -> Assessment:
    """The verdict of one check for one evaluation (``m`` None: nothing was measured)."""
    if m is None:
        return _no_data(check, "not measured")
    if m.error is not None:
        return Assessment(check.name, Verdict.ERROR, None, f"source error: {m.error}", m.error)
    if m.value is not None and math.isinf(m.value):
        return _not_finite(check, f"value {_show(m.value)}")
    result = ASSESSORS[check.kind](check, m)
    if result.verdict is not Verdict.SUCCESSFUL:
        return result
    if result.value is not None and not math.isfinite(result.value):
        return _not_finite(check, f"value {_show(result.value)}")
    if not _counts_finite(m):
        return _not_finite(check, "a request or error count")
    return result


def summarize(assessments: list[Assessment]) -> Verdict:
    """One evaluation's overall verdict: any failure, else any error, else any no-data."""
    verdicts = {a.verdict for a in assessments}
    for worst in (Verdict.FAILED, Verdict.ERROR, Verdict.INCONCLUSIVE):
        if worst in verdicts:
            return worst
    return Verdict.SUCCESSFUL
