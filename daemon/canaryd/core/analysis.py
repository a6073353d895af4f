"""Verdicts of checks: pure functions of (check spec, measurement).

Following Argo Rollouts, a verdict is one of successful / failed / inconclusive / error and
never a bool: no data is inconclusive (or failed, if the policy says so) but never a pass, and
a source error is an Error measurement, never a failure by itself.

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
    check: str
    verdict: Verdict
    value: float | None
    detail: str


def _no_data(check: Check, why: str) -> Assessment:
    verdict = Verdict.FAILED if check.no_data is NoData.FAIL else Verdict.INCONCLUSIVE
    return Assessment(check.name, verdict, None, why)


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


ASSESSORS: dict[str, Callable[[Check, Measurement], Assessment]] = {
    "threshold": assess_threshold,
}


def assess(check: Check, m: Measurement | None) -> Assessment:
    """The verdict of one check for one evaluation (``m`` None: nothing was measured)."""
    if m is None:
        return _no_data(check, "not measured")
    if m.error is not None:
        return Assessment(check.name, Verdict.ERROR, None, f"source error: {m.error}")
    return ASSESSORS[check.kind](check, m)


def summarize(assessments: list[Assessment]) -> Verdict:
    """One evaluation's overall verdict: any failure, else any error, else any no-data."""
    verdicts = {a.verdict for a in assessments}
    for worst in (Verdict.FAILED, Verdict.ERROR, Verdict.INCONCLUSIVE):
        if worst in verdicts:
            return worst
    return Verdict.SUCCESSFUL
