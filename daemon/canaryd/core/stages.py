"""The stage engine: ``decide(state, observed, findings, now) -> (new state, actions)``.

Deciding and doing are split in two pure functions:

* ``decide`` is edge-triggered. It consumes what happened (an evaluation's measurements,
  alerts, operator commands) and moves the rollout along SPEC §3's lifecycle, returning the
  new record and the decisions it took, each with its reason and evidence. Those decisions are
  the rollout's history.
* ``reconcile`` is level-triggered. From the record alone it says what the world must look
  like (canary weight, canary present, stable image) and lists the idempotent effects still
  needed to get there. A runtime persists ``decide``'s result *before* applying
  ``reconcile``'s effects, so a crash anywhere is repaired by the next pass: nothing decided is
  lost and nothing is decided twice (evaluations are consumed through ``next_eval_at``,
  alerts through ``handled_alerts``).

Stage timing is credit-based: each passing evaluation credits the time since the previous one
(at most one interval), so missing data, pauses and downtime hold the stage timer instead of
letting it run. ``progress_deadline`` bounds how far a stage can be stretched.

The moves between phases (and when a command may make one) are in ``transitions``; alerts are
applied by ``alerts``. This module composes them into ``decide`` and says what the world must
look like (``reconcile``).
"""

from __future__ import annotations

import math
from dataclasses import replace

from canaryd.core import analysis
from canaryd.core.alerts import HANDLED_ALERTS_KEPT, apply_alerts
from canaryd.core.model import (
    Action,
    ActionKind,
    Command,
    CommandKind,
    Effect,
    EffectKind,
    Findings,
    Gate,
    Observed,
    OnInconclusive,
    Phase,
    Policy,
    Rollout,
    Stage,
    Verdict,
)
from canaryd.core.transitions import (
    EPS,
    RESTORE,
    check_command,
    fresh_stage,
    next_stage,
    pause,
    promote,
    remember_stable,
    resume,
    rollback,
    tagged,
    unpause,
)

__all__ = [
    "HANDLED_ALERTS_KEPT",
    "check_command",
    "decide",
    "evaluation_due",
    "hand_over",
    "next_tick",
    "next_wakeup",
    "plan_stages",
    "reconcile",
    "stage_label",
    "start",
]


# --------------------------------------------------------------------------- starting


def plan_stages(policy: Policy, traffic: int | None) -> Policy:
    """The policy with its first stage at ``traffic`` percent, dropping stages it overtakes."""
    if traffic is None:
        return policy
    if not 0 < traffic <= 100:
        raise ValueError(f"initial traffic must be within 1..100, got {traffic}")
    first = replace(policy.stages[0], weight=traffic)
    rest = tuple(stage for stage in policy.stages[1:] if stage.weight > traffic)
    return replace(policy, stages=(first, *rest))


def start(
    rollout_id: str,
    target: str,
    image: str,
    policy: Policy,
    now: float,
    traffic: int | None = None,
) -> tuple[Rollout, Action]:
    planned = plan_stages(policy, traffic)
    rollout = Rollout(
        id=rollout_id,
        target=target,
        image=image,
        policy=planned,
        started_at=now,
        weight_set_at=now,
    )
    weights = "→".join(str(stage.weight) for stage in planned.stages)
    return rollout, Action(ActionKind.START, f"rollout of {image} started ({weights})", weight=0)


# --------------------------------------------------------------------------- commands


def _apply_command(s: Rollout, c: Command, index: int, now: float, acts: list[Action]) -> Rollout:
    refusal = check_command(s, c)
    who = f" by {c.by}" if c.by else ""
    if refusal is not None:
        # the runtime answers the command at ``command_index`` 409 with ``refused``
        evidence = {"command": str(c.kind), "refused": refusal, "command_index": index}
        acts.append(
            Action(ActionKind.IGNORE, f"{c.kind}{who} refused: {refusal}", s.weight, evidence)
        )
        return s
    if c.kind is CommandKind.CLEANUP:
        if s.phase is Phase.ROLLED_BACK:
            acts.append(Action(ActionKind.REMOVE_CANARY, f"cleanup{who}: canary removed now", 0))
            return replace(s, cleanup_at=None, cleanup_now=True)
        if s.rollback_reason is None:
            s = rollback(s, f"cleanup{who}", now, acts, {"by": c.by})
        return replace(s, cleanup_now=True)
    if c.kind is CommandKind.ROLLBACK:
        return rollback(
            s,
            f"manual rollback{who}" + (f": {c.reason}" if c.reason else ""),
            now,
            acts,
            {"by": c.by},
        )
    if c.kind is CommandKind.PAUSE:
        return pause(s, f"paused{who}", now, acts)
    if c.kind is CommandKind.RESUME:
        return resume(s, f"resumed{who}", now, acts)
    if c.kind is CommandKind.PROMOTE:
        return next_stage(s, f"promoted{who}: stage {s.stage + 1} wait skipped", now, acts)
    if c.kind is CommandKind.PROMOTE_FULL:
        s = unpause(s, now)
        return promote(replace(s, weight=100), f"promoted to 100%{who}", now, acts)
    weight = c.weight if c.weight is not None else s.weight
    s = pause(s, f"weight set to {weight}%{who}; resume returns to stage {s.stage + 1}", now, acts)
    s = replace(s, weight=weight, weight_set_at=now, stage_started_at=None, credited=0.0)
    acts.append(Action(ActionKind.SET_WEIGHT, f"canary weight set to {weight}%{who}", weight))
    return s


# --------------------------------------------------------------------------- evaluation


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


def _evaluate(s: Rollout, f: Findings, now: float, acts: list[Action]) -> Rollout:
    policy, stage, limits = s.policy, s.current_stage, s.policy.limits
    by_name = {m.check: m for m in f.measurements}
    results = [analysis.assess(policy.checks[name], by_name.get(name)) for name in stage.checks]
    overall = analysis.summarize(results)
    evidence: dict[str, object] = {
        a.check: {"verdict": str(a.verdict), "value": a.value, "detail": a.detail} for a in results
    }
    last = s.last_eval_at if s.last_eval_at is not None else s.stage_started_at or now
    s = replace(
        s,
        last_eval_at=now,
        next_eval_at=next_tick(now, policy.interval),
        stage_requests=s.stage_requests + _usable_requests(f.requests),
    )

    if overall is Verdict.FAILED:
        failures = dict(s.failures)
        for a in results:
            if a.verdict is Verdict.FAILED:
                failures[a.check] = failures.get(a.check, 0) + 1
        s = replace(s, failures=failures, consecutive_inconclusive=0, consecutive_errors=0)
        worst = max(
            (a for a in results if a.verdict is Verdict.FAILED), key=lambda a: failures[a.check]
        )
        if failures[worst.check] > limits.failure_limit:
            return rollback(s, f"check {worst.check} failed: {worst.detail}", now, acts, evidence)
        acts.append(
            Action(
                ActionKind.HOLD,
                f"check {worst.check} failed ({failures[worst.check]} of "
                f"{limits.failure_limit} allowed): {worst.detail}",
                s.weight,
                evidence,
            )
        )
        return s

    if overall is Verdict.ERROR:
        errors = s.consecutive_errors + 1
        s = replace(s, consecutive_errors=errors, next_eval_at=now + policy.error_backoff)
        if errors >= limits.consecutive_error_limit:
            detail = next(a.detail for a in results if a.verdict is Verdict.ERROR)
            cause = detail.removeprefix("source error: ")
            return rollback(
                s, f"{errors} consecutive source errors (last: {cause})", now, acts, evidence
            )
        acts.append(
            Action(
                ActionKind.HOLD,
                f"{next(a.detail for a in results if a.verdict is Verdict.ERROR)} "
                f"({errors} of {limits.consecutive_error_limit}); "
                f"retrying in {policy.error_backoff:g}s",
                s.weight,
                evidence,
            )
        )
        return s

    if overall is Verdict.INCONCLUSIVE:
        count = s.consecutive_inconclusive + 1
        s = replace(s, consecutive_inconclusive=count, consecutive_errors=0)
        missing = ", ".join(a.check for a in results if a.verdict is Verdict.INCONCLUSIVE)
        if count >= limits.inconclusive_limit and s.phase is Phase.PROGRESSING:
            reason = f"{count} inconclusive evaluations in a row (no data: {missing})"
            if limits.on_inconclusive is OnInconclusive.ROLLBACK:
                return rollback(s, reason, now, acts, evidence)
            return pause(s, reason, now, acts, evidence)
        if s.phase is Phase.PROGRESSING:
            acts.append(
                Action(
                    ActionKind.HOLD, f"no data for {missing}; stage timer holds", s.weight, evidence
                )
            )
        return s

    s = replace(s, consecutive_inconclusive=0, consecutive_errors=0)
    if s.phase is not Phase.PROGRESSING:
        return s
    credited = s.credited + max(0.0, min(now - last, policy.interval))
    s = replace(s, credited=credited)
    if credited + EPS < stage.duration:
        return s
    seen = s.stage_requests
    if stage.min_requests and seen < stage.min_requests:
        seen_text = f"{seen:.0f}"
        acts.append(
            Action(
                ActionKind.HOLD,
                f"only {seen_text} of {stage.min_requests} canary requests; stage held",
                s.weight,
                {"canary_requests": seen, **evidence},
            )
        )
        return s
    return _stage_passed(s, now, acts, evidence)


def _usable_requests(requests: float | None) -> float:
    """Canary requests an evaluation may credit: unknown, negative or non-finite counts add
    nothing (NaN or +Inf would otherwise satisfy ``min_requests`` on their own)."""
    if requests is None or not math.isfinite(requests) or requests < 0:
        return 0.0
    return requests


def _stage_passed(
    s: Rollout, now: float, acts: list[Action], evidence: dict[str, object]
) -> Rollout:
    number = s.stage + 1
    if s.current_stage.gate is Gate.MANUAL:
        s = replace(s, stage_passed=True)
        return pause(s, f"stage {number} passed; waiting for a manual promote", now, acts, evidence)
    return next_stage(s, f"stage {number} passed", now, acts, evidence)


# --------------------------------------------------------------------------- progress


def _stage_deadline(s: Rollout) -> float | None:
    """When the current stage (or its weight change) has run out of time, if it can."""
    limit = s.policy.limits.progress_deadline
    if s.phase is Phase.PENDING:
        return s.started_at + limit
    if s.phase is not Phase.PROGRESSING:
        return None
    if s.stage_started_at is None:
        return (s.weight_set_at or s.started_at) + limit
    return s.stage_started_at + s.paused_total + s.current_stage.duration + limit


def _progress(s: Rollout, obs: Observed, now: float, acts: list[Action]) -> Rollout:
    limit = s.policy.limits.progress_deadline
    deadline = _stage_deadline(s)
    if s.phase is Phase.PENDING:
        if obs.canary_ready:
            stages = s.policy.stages
            s = fresh_stage(replace(s, phase=Phase.PROGRESSING), 0, stages[0].weight, now)
            acts.append(
                Action(
                    ActionKind.SET_WEIGHT,
                    f"canary ready; stage 1 of {len(stages)}: canary {s.weight}%",
                    s.weight,
                )
            )
        elif deadline is not None and now + EPS >= deadline:
            return rollback(s, f"canary not ready within {limit:g}s", now, acts)
        return s

    if s.phase is Phase.PROGRESSING:
        if s.stage_started_at is None:
            if obs.weight == s.weight and obs.canary_ready:
                s = replace(
                    s,
                    stage_started_at=now,
                    last_eval_at=now,
                    next_eval_at=next_tick(now, s.policy.interval),
                )
                acts.append(
                    Action(
                        ActionKind.STAGE_STARTED,
                        f"router applied canary {s.weight}%; stage {s.stage + 1} timer started",
                        s.weight,
                        {"observed_weight": obs.weight},
                    )
                )
                return s
            if deadline is not None and now + EPS >= deadline:
                why = (
                    "canary not ready"
                    if obs.weight == s.weight
                    else (f"router did not apply canary {s.weight}% (reports {obs.weight})")
                )
                return rollback(s, f"{why} within {limit:g}s", now, acts)
            return s
        if deadline is not None and now + EPS >= deadline:
            return rollback(
                s,
                f"progress deadline: stage {s.stage + 1} not passed within "
                f"{s.current_stage.duration + limit:g}s",
                now,
                acts,
            )
        return s

    if s.phase is Phase.PAUSED:
        if s.resume_at is not None and now + EPS >= s.resume_at and not s.alert_pauses:
            return resume(s, "alert cooldown over", now, acts)
        return s

    if s.phase is Phase.PROMOTING or (s.phase is Phase.FAILED and s.rollback_reason is None):
        return _promotion(s, obs, now, acts)

    if s.phase is Phase.ROLLING_BACK or (s.phase is Phase.FAILED and s.rollback_reason):
        return _rolling_back(s, obs, now, acts)
    return s


def _rolling_back(s: Rollout, obs: Observed, now: float, acts: list[Action]) -> Rollout:
    """A rollback is done once the router reports canary 0% and, if it interrupted the
    stable update, the stable runs ``previous_image`` again. Past ``progress_deadline`` it is
    Failed and keeps retrying, as a promotion that cannot update the stable does."""
    limit = s.policy.limits.progress_deadline
    restoring = s.promote_step == RESTORE
    restored = not restoring or obs.stable_image == s.previous_image
    if obs.weight == 0 and restored:
        took = now - (s.rollback_at or now)
        s = replace(
            s,
            phase=Phase.ROLLED_BACK,
            rolled_back_at=now,
            finished_at=now,
            cleanup_at=now + (0.0 if s.cleanup_now else s.policy.scale_down_delay),
            message=None,
        )
        also = f" and stable runs {s.previous_image} again" if restoring else ""
        acts.append(
            Action(
                ActionKind.ROLLED_BACK,
                f"router applied canary 0%{also} {took:.3f}s after the trigger",
                0,
                {"time_to_rollback": took, "reason": s.rollback_reason},
            )
        )
        return s
    why = (
        f"router has not applied canary 0% after {limit:g}s; retrying"
        if obs.weight != 0
        else f"stable not restored to {s.previous_image} after {limit:g}s; retrying"
    )
    if s.phase is Phase.ROLLING_BACK and now + EPS >= (s.rollback_at or now) + limit:
        s = replace(s, phase=Phase.FAILED, message=why)
        acts.append(Action(ActionKind.FAILED, why, 0))
    elif s.phase is Phase.FAILED and s.message != why:
        s = replace(s, message=why)  # what it still waits for changed: say so, no new decision
    return s


def _promotion(s: Rollout, obs: Observed, now: float, acts: list[Action]) -> Rollout:
    limit = s.policy.limits.progress_deadline
    if s.promote_step == "update-stable":
        if obs.stable_image == s.image:
            s = replace(
                s,
                phase=Phase.PROMOTING,
                promote_step="shift",
                weight=0,
                weight_set_at=now,
                message=None,
            )
            acts.append(
                Action(
                    ActionKind.SET_WEIGHT, f"stable runs {s.image}; all traffic back to stable", 0
                )
            )
        elif s.phase is Phase.PROMOTING and now + EPS >= (s.weight_set_at or now) + limit:
            s = replace(
                s,
                phase=Phase.FAILED,
                message=f"stable not updated to {s.image} after {limit:g}s; retrying",
            )
            acts.append(Action(ActionKind.FAILED, s.message or "", s.weight))
        return s
    if s.promote_step == "shift" and obs.weight == 0:
        s = replace(s, phase=Phase.PROMOTING, promote_step="remove", message=None)
        acts.append(Action(ActionKind.REMOVE_CANARY, "canary no longer serves traffic", 0))
        return s
    if s.promote_step == "remove" and not obs.canary_present:
        s = replace(s, phase=Phase.SUCCEEDED, finished_at=now, promote_step=None, message=None)
        acts.append(Action(ActionKind.SUCCEEDED, f"{s.image} promoted", 0))
    return s


def _cleanup(s: Rollout, now: float, acts: list[Action]) -> Rollout:
    if s.phase is Phase.ROLLED_BACK and s.cleanup_at is not None and now + EPS >= s.cleanup_at:
        s = replace(s, cleanup_at=None)
        acts.append(
            Action(
                ActionKind.REMOVE_CANARY,
                f"scale-down delay of {s.policy.scale_down_delay:g}s over",
                0,
            )
        )
    return s


# --------------------------------------------------------------------------- entry points


def decide(
    state: Rollout, observed: Observed, findings: Findings, now: float
) -> tuple[Rollout, tuple[Action, ...]]:
    """The next state of a rollout and the decisions that led there. Pure."""
    acts: list[Action] = []
    s = state
    if s.phase.terminal:
        for index, command in enumerate(findings.commands):
            s = tagged(_apply_command(s, command, index, now, acts), acts)
        return tagged(_cleanup(s, now, acts), acts), tuple(acts)
    s = remember_stable(s, observed)
    for index, command in enumerate(findings.commands):
        s = tagged(_apply_command(s, command, index, now, acts), acts)
    s = apply_alerts(s, findings.alerts, now, acts)
    if evaluation_due(s, now):
        s = tagged(_evaluate(s, findings, now, acts), acts)
    if s.phase.active:
        s = tagged(_progress(s, observed, now, acts), acts)
    return s, tuple(acts)


def hand_over(state: Rollout, successor: str) -> tuple[Rollout, tuple[Action, ...]]:
    """A superseded rollout, once rolled back, leaves its canary slot to ``successor``.

    The successor's canary reuses the slot (same workload name), so the scale-down that
    ``scale_down_delay`` would schedule must not run: it would remove the new canary.
    """
    if state.phase is not Phase.ROLLED_BACK or state.cleanup_at is None:
        return state, ()
    action = Action(ActionKind.OBSERVE, f"canary slot handed over to rollout {successor}", 0)
    return replace(state, cleanup_at=None, successor=successor), (action,)


def reconcile(state: Rollout, observed: Observed) -> tuple[Effect, ...]:
    """Effects still needed for the world to match ``state``. Idempotent, level-triggered."""
    s, effects = state, []
    if s.successor is not None:
        return ()  # the canary slot belongs to the successor now
    promoting = s.phase in (Phase.PROMOTING, Phase.FAILED) and s.rollback_reason is None
    serving = s.phase in (Phase.PENDING, Phase.PROGRESSING, Phase.PAUSED) or (
        promoting and s.promote_step in ("update-stable", "shift")
    )
    draining = s.rollback_reason is not None and (
        s.phase is not Phase.ROLLED_BACK or s.cleanup_at is not None
    )
    if serving and not (observed.canary_present and observed.canary_ready):
        effects.append(Effect(EffectKind.ENSURE_CANARY, image=s.image))
    if s.phase is not Phase.PENDING and observed.weight != s.weight:
        effects.append(Effect(EffectKind.SET_WEIGHT, weight=s.weight))
    if promoting and s.promote_step == "update-stable" and observed.stable_image != s.image:
        effects.append(Effect(EffectKind.UPDATE_STABLE, image=s.image))
    restoring = s.promote_step == RESTORE and s.phase in (Phase.ROLLING_BACK, Phase.FAILED)
    if restoring and s.previous_image is not None and observed.stable_image != s.previous_image:
        effects.append(Effect(EffectKind.UPDATE_STABLE, image=s.previous_image))
    if not (serving or draining) and observed.canary_present:
        effects.append(Effect(EffectKind.REMOVE_CANARY, image=s.image))
    return tuple(effects)


def next_wakeup(s: Rollout) -> float | None:
    """The next moment ``decide`` has something to do without new findings."""
    times = [
        s.next_eval_at if evaluation_due(s, float("inf")) else None,
        s.resume_at,
        _stage_deadline(s),
        s.cleanup_at if s.phase is Phase.ROLLED_BACK else None,
    ]
    if s.phase is Phase.ROLLING_BACK and s.rollback_at is not None:
        times.append(s.rollback_at + s.policy.limits.progress_deadline)
    if s.phase is Phase.PROMOTING and s.promote_step == "update-stable" and s.weight_set_at:
        times.append(s.weight_set_at + s.policy.limits.progress_deadline)
    present = [t for t in times if t is not None]
    return min(present) if present else None


def stage_label(s: Rollout) -> str:
    stages: tuple[Stage, ...] = s.policy.stages
    return f"{min(s.stage + 1, len(stages))}/{len(stages)}"
