"""What the API shows: rollouts, alerts and targets as JSON-ready dicts.

The views are pure functions of the core model and of ``TargetInfo`` (the few members of a
configured target they read; ``settings.Target`` satisfies it structurally, so no adapter imports
the settings layer). They are the API's vocabulary: the JSON routes in ``handlers`` answer with
them and the status page renders ``target_summary``, so the page can only ever show what the API
already shows. They sit apart from the routes because both of those use them, and because what a
field means is easier to review without the request handling around it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from canaryd.config.kinds import KindConfig
from canaryd.core import compare, sequential, units
from canaryd.core.analysis import assess
from canaryd.core.model import Alert, Check, Counts, Measurement, Phase, Policy, Rollout
from canaryd.core.timefmt import format_rfc3339
from canaryd.ports import MeasurementRecord


class TargetInfo(Protocol):
    """A configured target as the views read it (the runtime's ``Target`` has these members)."""

    @property
    def name(self) -> str: ...
    @property
    def policy(self) -> Policy: ...
    @property
    def router(self) -> KindConfig: ...
    @property
    def platform(self) -> KindConfig: ...
    @property
    def kube_context(self) -> str | None: ...


def rfc3339(seconds: float | None) -> str | None:
    """A time as every answer of the API shows it: RFC 3339 in UTC (``...Z``), or None."""
    return None if seconds is None else format_rfc3339(seconds)


def timed(key: str, seconds: float | None) -> dict[str, Any]:
    """``{key: RFC 3339, key_unix: seconds}``: the documented field, and the same moment in
    Unix seconds beside it for programs that compute with it (durations, charts)."""
    return {key: rfc3339(seconds), f"{key}_unix": seconds}


def stamped(row: Mapping[str, Any], key: str = "t") -> dict[str, Any]:
    """A stored row (a decision, an audit entry, a measurement) with its time ``key`` in
    RFC 3339 and ``<key>_unix`` beside it."""
    out = dict(row)
    seconds = out.get(key)
    if isinstance(seconds, int | float):
        out.update(timed(key, float(seconds)))
    return out


def rollout_view(r: Rollout) -> dict[str, Any]:
    """A rollout as the API shows it: stage numbers are 1-based, as people count them."""
    stages = r.policy.stages
    return {
        "id": r.id,
        "target": r.target,
        "image": r.image,
        "policy": r.policy.name,
        "phase": str(r.phase),
        "stage": min(r.stage + 1, len(stages)),
        "stages": len(stages),
        "weight": r.weight,
        "stable_weight": r.stable_weight,
        **timed("started_at", r.started_at),
        **timed("stage_started_at", r.stage_started_at),
        "credited": r.credited,
        **timed("finished_at", r.finished_at),
        "waiting_for_promote": r.phase is Phase.PAUSED and r.stage_passed,
        "pause_reason": r.pause_reason,
        "rollback_reason": r.rollback_reason,
        "message": r.message,
        "successor": r.successor,
        "trace_id": r.trace_id,
        "plan": [
            {
                "weight": s.weight,
                "duration": s.duration,
                "checks": list(s.checks),
                "gate": str(s.gate),
            }
            for s in stages
        ],
        "compare": compare_view(r),
    }


def compare_view(r: Rollout) -> dict[str, Any]:
    """Each compare check's evidence so far in the rollout: its e-value against the bound
    ``1/alpha`` that rolls back, the counts it has judged since its baseline (by part, as
    ``core.compare`` names them) and whether it concluded. Shown so a client can chart the test
    against its boundary over time (``canaryd demo``'s report) without re-running it."""
    return {
        name: {
            "e_value": sequential.e_average(list(state.logs.values())),
            "bound": 1.0 / compare.alpha_share(r.policy, r.policy.checks.get(name)),
            "concluded": state.concluded,
            "counted": dict(state.counted),
        }
        for name, state in sorted(r.compare.items())
    }


def alert_view(a: Alert) -> dict[str, Any]:
    return {
        "fingerprint": a.fingerprint,
        "name": a.name,
        "status": a.status,
        "labels": dict(a.labels),
        **timed("starts_at", a.starts_at),
        **timed("ends_at", a.ends_at),
    }


def target_summary(t: TargetInfo, r: Rollout | None) -> dict[str, Any]:
    return {
        "name": t.name,
        "policy": t.policy.name,
        "router": t.router.kind,
        "platform": t.platform.kind,
        "kube_context": t.kube_context,  # its cluster's context (None: the default one)
        "rollout_id": r.id if r else None,
        "image": r.image if r else None,
        "phase": str(r.phase) if r else None,
        "stage": min(r.stage + 1, len(r.policy.stages)) if r else None,
        "stages": len(r.policy.stages) if r else None,
        "weight": r.weight if r else 0,
        "stable_weight": r.stable_weight if r else 100,
    }


def check_view(
    check: Check | None, m: MeasurementRecord, rollout: Rollout | None = None
) -> dict[str, Any]:
    """The latest measurement of a check as the API shows it: the value with what it is judged
    against (``op``, ``threshold``, ``unit``) and the verdict the daemon's analysis gives it, so
    a client shows pass/fail without re-implementing the analysis. ``check`` None (a check the
    rollout's policy no longer has) shows the measurement alone."""
    view: dict[str, Any] = {"value": m["value"], "error": m["error"], "t": m["t"]}
    if check is None:
        return view
    counts = None
    if m["canary_requests"] is not None and m["canary_errors"] is not None:
        counts = Counts(
            m["canary_requests"],
            m["canary_errors"],
            m["stable_requests"] or 0.0,
            m["stable_errors"] or 0.0,
        )
    measured = Measurement(check.name, m["value"], counts, m["error"])
    # a compare check is judged on the rollout's evidence, not on one cumulative reading
    judged = (
        assess(check, measured) if rollout is None else compare.judged(rollout, check, measured)
    )
    view.update(
        op=check.op,
        threshold=check.threshold,
        unit=units.unit_of(check),
        verdict=str(judged.verdict),
    )
    if check.kind == "compare" and rollout is not None:
        # the reading is a pair of raw counters: what is judged is the e-value against its bound
        bound = 1.0 / compare.alpha_share(rollout.policy, check)
        state = rollout.compare.get(check.name)
        e = None if state is None else sequential.e_average(list(state.logs.values()))
        view.update(value=e, op="<", threshold=bound)
    return view
