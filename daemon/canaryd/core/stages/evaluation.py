"""One evaluation of a stage: the checks' verdicts turned into hold, pause, next stage, promote
or rollback, and the stage timer credited (SPEC §3)."""

from __future__ import annotations

import math
from dataclasses import replace

from canaryd.core import analysis, compare, scope, split
from canaryd.core.analysis import Assessment
from canaryd.core.model import (
    ActionKind,
    Cause,
    CompareState,
    Findings,
    Gate,
    Measurement,
    OnInconclusive,
    Phase,
    Rollout,
    SplitState,
    Verdict,
)
from canaryd.core.stages.transitions import (
    EPS,
    Evidence,
    Step,
    decision,
    next_stage,
    pause,
    rollback,
)


def next_tick(now: float, interval: float) -> float:
    """The first multiple of ``interval`` (on the caller's clock) strictly after ``now``.

    Evaluations run on a shared grid, as Prometheus's rule evaluations do, rather than
    ``interval`` after each rollout's own stage start: every rollout with the same interval is
    then due at the same instants, so the evaluator batches all of them into one query per
    check per cycle (SPEC §7). A stage's first evaluation may come sooner than a full interval;
    it is credited only the time it actually observed.
    """
    return (math.floor(now / interval + 1e-9) + 1) * interval


def evaluation_due(s: Rollout, now: float) -> bool:
    """Whether a call at ``now`` is an evaluation (the caller must then supply measurements)."""
    return (
        s.phase in (Phase.PROGRESSING, Phase.PAUSED)
        and s.stage_started_at is not None
        and s.next_eval_at is not None
        and now + EPS >= s.next_eval_at
    )


def evaluate(s: Rollout, f: Findings, now: float) -> Step:
    """The record after one evaluation of ``f``'s measurements, and what it decided."""
    results, states = _assess(s, f)
    by_name = {m.check: m for m in f.measurements}
    young = scope.young_checks(s, now)
    results = [_wait_if_young(a, by_name.get(a.check), young) for a in results]
    overall = analysis.summarize(results)
    evidence: dict[str, object] = {
        a.check: {"verdict": str(a.verdict), "value": a.value, "detail": a.detail} for a in results
    }
    last = s.last_eval_at if s.last_eval_at is not None else s.stage_started_at or now
    s = replace(
        s,
        compare={**s.compare, **states},
        split=_split(s, f.measurements),
        last_eval_at=now,
        next_eval_at=next_tick(now, s.policy.interval),
        stage_requests=s.stage_requests + _usable_requests(f.requests),
    )
    if overall is Verdict.FAILED:
        return _failed(s, results, now, evidence)
    if overall is Verdict.ERROR:
        return _errored(s, results, now, evidence)
    if overall is Verdict.INCONCLUSIVE:
        missing = {a.check for a in results if a.verdict is Verdict.INCONCLUSIVE}
        if missing <= set(young):
            return _too_young(s, sorted(missing), now, evidence)
        return _inconclusive(s, results, now, evidence)
    return _passed(s, last, now, evidence)


def _assess(s: Rollout, f: Findings) -> tuple[list[Assessment], dict[str, CompareState]]:
    """The stage's checks judged on ``f``; compare checks also move their e-process on."""
    policy = s.policy
    by_name = {m.check: m for m in f.measurements}
    results: list[Assessment] = []
    states: dict[str, CompareState] = {}
    for name in s.current_stage.checks:
        check = policy.checks[name]
        if check.kind == "compare":
            alpha = compare.alpha_share(policy, check)
            prior = s.compare.get(name)
            result, states[name] = compare.assess(check, by_name.get(name), prior, alpha)
            results.append(result)
        else:
            results.append(analysis.assess(check, by_name.get(name)))
    return results, states


def _split(s: Rollout, measurements: tuple[Measurement, ...]) -> SplitState | None:
    """The stage's split after this evaluation, from the per-side request counters of the
    stage's first ``compare: errors`` check (none in the stage: nothing is known)."""
    checks = s.policy.checks
    counts = next(
        (
            m.counts
            for m in measurements
            if m.check in s.current_stage.checks
            and checks[m.check].kind == "compare"
            and checks[m.check].compare == compare.ERRORS
            and m.error is None
        ),
        None,
    )
    policy = s.policy
    return split.observe(s.split, counts, s.weight, policy.split_tolerance, split.alpha(policy))


def _failed(s: Rollout, results: list[Assessment], now: float, evidence: Evidence) -> Step:
    """A failed check: held while within ``failure_limit``, rolled back beyond it."""
    limit = s.policy.limits.failure_limit
    failures = dict(s.failures)
    for a in results:
        if a.verdict is Verdict.FAILED:
            failures[a.check] = failures.get(a.check, 0) + 1
    s = replace(s, failures=failures, consecutive_inconclusive=0, consecutive_errors=0)
    worst = max(
        (a for a in results if a.verdict is Verdict.FAILED), key=lambda a: failures[a.check]
    )
    if failures[worst.check] > limit:
        reason = f"check {worst.check} failed: {worst.detail}"
        return rollback(s, Cause.CHECK_FAILED, reason, now, evidence)
    text = (
        f"check {worst.check} failed ({failures[worst.check]} of {limit} allowed): {worst.detail}"
    )
    return s, (decision(ActionKind.HOLD, Cause.CHECK_FAILED, text, s.weight, evidence),)


def _errored(s: Rollout, results: list[Assessment], now: float, evidence: Evidence) -> Step:
    """The source could not answer: retried after ``error_backoff``, rolled back once
    ``consecutive_error_limit`` evaluations in a row could not be judged."""
    policy, limits = s.policy, s.policy.limits
    errors = s.consecutive_errors + 1
    s = replace(s, consecutive_errors=errors, next_eval_at=now + policy.error_backoff)
    first = next(a for a in results if a.verdict is Verdict.ERROR)
    if errors >= limits.consecutive_error_limit:
        reason = f"{errors} consecutive source errors (last: {first.error})"
        return rollback(s, Cause.SOURCE_ERRORS, reason, now, evidence)
    text = (
        f"{first.detail} ({errors} of {limits.consecutive_error_limit}); "
        f"retrying in {policy.error_backoff:g}s"
    )
    return s, (decision(ActionKind.HOLD, Cause.SOURCE_ERRORS, text, s.weight, evidence),)


def _wait_if_young(a: Assessment, m: Measurement | None, young: tuple[str, ...]) -> Assessment:
    """A check without data because the rollout is too young is inconclusive, even under
    ``no_data: fail``: the lack is canaryd's own clipping, not the canary's doing."""
    measured = m is not None and (m.error is not None or not _no_value(m.value))
    if a.check not in young or measured:
        return a
    return Assessment(a.check, Verdict.INCONCLUSIVE, None, "no data yet: rollout too young")


def _no_value(value: float | None) -> bool:
    return value is None or math.isnan(value)


def _too_young(s: Rollout, checks: list[str], now: float, evidence: Evidence) -> Step:
    """No data yet because the canary's own samples are too few (``core.scope``): the stage
    timer holds, and this is not counted towards ``inconclusive_limit`` (it is a wait with a
    known end, not a missing metric)."""
    if s.phase is not Phase.PROGRESSING:
        return s, ()
    age = max(0.0, now - scope.evidence_since(s))
    policy = s.policy
    need = max(
        min(policy.min_window, scope.check_lookback(policy, policy.checks[c])) for c in checks
    )
    text = (
        f"no data yet for {', '.join(checks)}: the canary has been ready {age:.0f}s, "
        f"its checks need {need:g}s of its own samples; stage timer holds"
    )
    return s, (decision(ActionKind.HOLD, Cause.NO_DATA, text, s.weight, evidence),)


def _inconclusive(s: Rollout, results: list[Assessment], now: float, evidence: Evidence) -> Step:
    """No data: the stage timer holds; ``inconclusive_limit`` in a row pause or roll back."""
    limits = s.policy.limits
    count = s.consecutive_inconclusive + 1
    s = replace(s, consecutive_inconclusive=count, consecutive_errors=0)
    missing = ", ".join(a.check for a in results if a.verdict is Verdict.INCONCLUSIVE)
    if s.phase is not Phase.PROGRESSING:
        return s, ()
    if count >= limits.inconclusive_limit:
        reason = f"{count} inconclusive evaluations in a row (no data: {missing})"
        if limits.on_inconclusive is OnInconclusive.ROLLBACK:
            return rollback(s, Cause.INCONCLUSIVE, reason, now, evidence)
        return pause(s, Cause.INCONCLUSIVE, reason, now, evidence)
    text = f"no data for {missing}; stage timer holds"
    return s, (decision(ActionKind.HOLD, Cause.NO_DATA, text, s.weight, evidence),)


def _passed(s: Rollout, last: float, now: float, evidence: Evidence) -> Step:
    """Every check passed: the time since the last evaluation is credited to the stage, which
    passes once its duration is credited and it saw ``min_requests``."""
    policy, stage = s.policy, s.current_stage
    s = replace(s, consecutive_inconclusive=0, consecutive_errors=0)
    if s.phase is not Phase.PROGRESSING:
        return s, ()
    tolerance = policy.split_tolerance
    if tolerance is not None and s.split is not None and s.split.concluded:
        text = f"split off: {split.describe(s.split, tolerance)}; stage timer holds"
        facts = {"split": split.evidence(s.split, tolerance, split.alpha(policy)), **evidence}
        return s, (decision(ActionKind.HOLD, Cause.SPLIT_OFF, text, s.weight, facts),)
    credited = s.credited + max(0.0, min(now - last, policy.interval))
    s = replace(s, credited=credited)
    if credited + EPS < stage.duration:
        return s, ()
    seen = s.stage_requests
    if stage.min_requests and seen < stage.min_requests:
        text = f"only {seen:.0f} of {stage.min_requests} canary requests; stage held"
        held = {"canary_requests": seen, **evidence}
        return s, (decision(ActionKind.HOLD, Cause.TOO_FEW_REQUESTS, text, s.weight, held),)
    return _stage_passed(s, now, evidence)


def _usable_requests(requests: float | None) -> float:
    """Canary requests an evaluation may credit: unknown, negative or non-finite counts add
    nothing (NaN or +Inf would otherwise satisfy ``min_requests`` on their own)."""
    if requests is None or not math.isfinite(requests) or requests < 0:
        return 0.0
    return requests


def _stage_passed(s: Rollout, now: float, evidence: Evidence) -> Step:
    number = s.stage + 1
    if s.current_stage.gate is Gate.MANUAL:
        s = replace(s, stage_passed=True)
        reason = f"stage {number} passed; waiting for a manual promote"
        return pause(s, Cause.STAGE_PASSED, reason, now, evidence)
    return next_stage(s, Cause.STAGE_PASSED, f"stage {number} passed", now, evidence)
