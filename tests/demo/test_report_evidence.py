"""The report's compare evidence (``demo.report``): which bad event it shows, one point per
evaluation, and the two charts, from samples shaped as the API's ``compare`` view."""

from __future__ import annotations

import math
from typing import Any

from canaryd.demo import report


def _latency(t: float, e: float, canary: tuple[int, int], stable: tuple[int, int]) -> Any:
    """A sample whose latency-vs-stable evidence has ``(slower than 50 ms, total)`` per side;
    nothing is slower than 100 ms, everything is slower than 25 ms."""
    counted = {}
    for side, (slow, total) in (("canary", canary), ("stable", stable)):
        counted.update(
            {
                f"{side}.le=0.025": 0.0,
                f"{side}.le=0.05": float(total - slow),
                f"{side}.le=0.1": float(total),
                f"{side}.le=+Inf": float(total),
            }
        )
    view = {"e_value": e, "bound": 40.0, "concluded": e >= 40, "counted": counted}
    return report.Sample(
        t, "Progressing", 1, 10, {}, None, None, compare={"latency-vs-stable": view}
    )


def _record() -> report.RolloutRecord:
    record = report.RolloutRecord("subtle", "v2.2.0", "RolledBack")
    record.samples = [
        _latency(1.0, 1.0, (0, 0), (0, 0)),
        _latency(1.5, 1.0, (0, 0), (0, 0)),  # the same evaluation seen twice
        _latency(3.0, 2.0, (10, 10), (45, 90)),
        _latency(5.0, 50.0, (30, 30), (140, 270)),
    ]
    record.samples[-1].phase = "RolledBack"
    record.final = {
        "phase": "RolledBack",
        "rollback_reason": "check latency-vs-stable failed: canary worse than stable: ...",
    }
    return record


def test_the_bad_event_is_the_bound_where_the_canary_is_most_worse() -> None:
    counted = _record().samples[-1].compare["latency-vs-stable"]["counted"]
    assert report.bad_event(counted) == "0.05"
    assert report.event_label("0.05") == "slower than 50 ms"
    assert report.bad_event({"canary.requests": 5.0, "canary.errors": 1.0}) is None
    assert report.side_counts({"stable.requests": 10.0, "stable.errors": 2.0}, "stable", None) == (
        2.0,
        10.0,
    )


def test_one_point_per_evaluation_with_rates_and_the_bound() -> None:
    evidence = _record().evidence()
    assert evidence is not None and evidence["check"] == "latency-vs-stable"
    points = evidence["points"]
    assert [p["t"] for p in points] == [1.0, 3.0, 5.0]
    assert points[0]["canary_rate"] is None  # the baseline: no requests yet
    last = points[-1]
    assert last["canary_rate"] == 1.0 and math.isclose(last["stable_rate"], 140 / 270)
    assert last["concluded"] and math.isclose(last["log_e"], math.log(50))
    assert math.isclose(last["log_bound"], math.log(40))


def test_no_evidence_without_a_compare_rollback() -> None:
    record = _record()
    record.final = {"phase": "RolledBack", "rollback_reason": "alert CanaryErrorRateHigh firing"}
    assert record.evidence() is None
    assert record.as_dict()["evidence"] is None


def test_the_html_draws_the_rates_and_the_test_against_its_boundary() -> None:
    page = report.as_html([_record()], {"summary": "s"})
    assert page.count("<svg") == 3 + 2
    assert "latency-vs-stable: share of requests slower than 50 ms" in page
    assert "boundary log(1/alpha) = log 40" in page
