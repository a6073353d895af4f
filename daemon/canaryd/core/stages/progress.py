"""What time and the observed world move on their own: a ready canary starts the first stage,
an applied weight starts a stage's timer, deadlines run out, an alert pause's cooldown ends,
a promotion and a rollback complete, a rolled-back canary is scaled down."""

from __future__ import annotations

from dataclasses import replace

from canaryd.core import split
from canaryd.core.model import (
    Action,
    ActionKind,
    Cause,
    Observed,
    Phase,
    PromoteStep,
    Rollout,
)
from canaryd.core.stages.evaluation import next_tick
from canaryd.core.stages.transitions import (
    EPS,
    RESTORE,
    STABLE_UNTOUCHED,
    TRAFFIC_UNTOUCHED,
    Step,
    canary_share,
    decision,
    fresh_stage,
    pinning,
    resume,
    rollback,
)


def stage_deadline(s: Rollout) -> float | None:
    """When the current stage (or its weight change) has run out of time, if it can."""
    limit = s.policy.limits.progress_deadline
    if s.phase is Phase.PENDING:
        if s.verify_pending:
            return None  # the verify commands' own timeout bounds the gate
        return (s.weight_set_at or s.started_at) + limit
    if s.phase is not Phase.PROGRESSING:
        return None
    if s.stage_started_at is None:
        return (s.weight_set_at or s.started_at) + limit
    return s.stage_started_at + s.paused_total + s.current_stage.duration + limit


def progress(s: Rollout, obs: Observed, now: float) -> Step:
    """The record once time and ``obs`` have moved it along (an active rollout)."""
    if s.phase is Phase.PENDING:
        return _pending(s, obs, now)
    if s.phase is Phase.PROGRESSING:
        return _progressing(s, obs, now)
    if s.phase is Phase.PAUSED:
        if s.resume_at is not None and now + EPS >= s.resume_at and not s.alert_pauses:
            return resume(s, Cause.ALERT_COOLDOWN, "alert cooldown over", now)
        return s, ()
    if s.promoting:
        return _promotion(s, obs, now)
    if s.rolling_back:
        return _rolling_back(s, obs, now)
    return s, ()


def _pending(s: Rollout, obs: Observed, now: float) -> Step:
    limit = s.policy.limits.progress_deadline
    deadline = stage_deadline(s)
    pinned: tuple[Action, ...] = ()
    if obs.canary_ready and pinning(s) and obs.canary_pin is not None:
        s, pinned = _pin(s, obs.canary_pin)
    if obs.canary_ready and not s.verify_pending and not pinning(s):
        stages = s.policy.stages
        s = replace(s, phase=Phase.PROGRESSING, ready_at=now)  # its evidence starts here
        s = fresh_stage(s, 0, stages[0].weight, now)
        text = f"canary ready; stage 1 of {len(stages)}: {canary_share(s, s.weight)}"
        return s, (*pinned, decision(ActionKind.SET_WEIGHT, Cause.CANARY_READY, text, s.weight))
    if deadline is not None and now + EPS >= deadline:
        evidence: dict[str, object] = {"deadline": limit}
        reason = f"canary not ready within {limit:g}s"
        if obs.canary_ready:  # ready, but what it runs could not be pinned
            evidence["pin_problem"] = obs.pin_problem
            reason = f"the canary's image could not be pinned within {limit:g}s"
            reason += f": {obs.pin_problem}" if obs.pin_problem else ""
        return rollback(s, Cause.CANARY_NOT_READY, reason, now, evidence)
    return s, ()


def _pin(s: Rollout, pinned: str) -> Step:
    """Record what the ready canary runs: the first stage judges it, promotion deploys it. In
    the same commit as the first stage's weight, so no traffic reaches unpinned bytes."""
    s = replace(s, pinned=pinned, pin_on_ready=False)
    text = f"canary runs {pinned}: {s.image} pinned to it"
    evidence = {"image": s.image, "pinned": pinned}
    return s, (decision(ActionKind.OBSERVE, Cause.PINNED, text, s.weight, evidence),)


def _progressing(s: Rollout, obs: Observed, now: float) -> Step:
    limit = s.policy.limits.progress_deadline
    deadline = stage_deadline(s)
    due = deadline is not None and now + EPS >= deadline
    if s.stage_started_at is None:
        if obs.weight == s.weight and obs.canary_ready:
            s = replace(
                s,
                stage_started_at=now,
                last_eval_at=now,
                next_eval_at=next_tick(now, s.policy.interval),
            )
            applied = "router applied" if s.routes else "observe-only router recorded"
            text = f"{applied} canary {s.weight}%; stage {s.stage + 1} timer started"
            seen = {"observed_weight": obs.weight}
            act = decision(ActionKind.STAGE_STARTED, Cause.STAGE_STARTED, text, s.weight, seen)
            return s, (act,)
        if not due:
            return s, ()
        evidence: dict[str, object] = {"deadline": limit, "observed_weight": obs.weight}
        if obs.weight == s.weight:
            reason = f"canary not ready within {limit:g}s"
            return rollback(s, Cause.CANARY_NOT_READY, reason, now, evidence)
        reason = f"router did not apply canary {s.weight}% (reports {obs.weight}) within {limit:g}s"
        return rollback(s, Cause.ROUTER_NOT_APPLIED, reason, now, evidence)
    if due:
        allowed = s.current_stage.duration + limit
        reason = f"progress deadline: stage {s.stage + 1} not passed within {allowed:g}s"
        tolerance = s.policy.split_tolerance
        if tolerance is not None and s.split is not None and s.split.concluded:
            facts = split.evidence(s.split, tolerance, split.alpha(s.policy))
            reason = f"{split.describe(s.split, tolerance)}: {reason}"
            return rollback(s, Cause.SPLIT_OFF, reason, now, {"deadline": allowed, "split": facts})
        return rollback(s, Cause.PROGRESS_DEADLINE, reason, now, {"deadline": allowed})
    return s, ()


def _rolling_back(s: Rollout, obs: Observed, now: float) -> Step:
    """A rollback is done once the router reports canary 0% and, if it interrupted the
    stable update, the stable runs ``previous_image`` again. Past ``progress_deadline`` it is
    Failed and keeps retrying, as a promotion that cannot update the stable does."""
    limit = s.policy.limits.progress_deadline
    restoring = s.promote_step is RESTORE
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
        if s.routes:
            text = f"router applied canary 0%{also} {took:.3f}s after the trigger"
        else:
            text = f"canary 0% recorded{also} {took:.3f}s after the trigger ({TRAFFIC_UNTOUCHED})"
        evidence = {"time_to_rollback": took, "reason": s.rollback_reason}
        return s, (decision(ActionKind.ROLLED_BACK, Cause.ROLLED_BACK, text, 0, evidence),)
    why = (
        f"router has not applied canary 0% after {limit:g}s; retrying"
        if obs.weight != 0
        else f"stable not restored to {s.previous_image} after {limit:g}s; retrying"
    )
    act = decision(ActionKind.FAILED, Cause.STUCK, why, 0, {"deadline": limit})
    if s.phase is Phase.ROLLING_BACK and now + EPS >= (s.rollback_at or now) + limit:
        return replace(s, phase=Phase.FAILED, message=act.reason), (act,)
    if s.phase is Phase.FAILED and s.message != act.reason:
        # what it still waits for changed: say so, no new decision
        return replace(s, message=why), ()
    return s, ()


def _promotion(s: Rollout, obs: Observed, now: float) -> Step:
    """update-stable -> shift -> remove -> Succeeded, each step once the world shows it."""
    limit = s.policy.limits.progress_deadline
    if s.promote_step is PromoteStep.UPDATE_STABLE:
        if obs.stable_image == s.ref:
            s = replace(
                s,
                phase=Phase.PROMOTING,
                promote_step=PromoteStep.SHIFT,
                weight=0,
                weight_set_at=now,
                message=None,
            )
            text = _stable_updated(s)
            return s, (decision(ActionKind.SET_WEIGHT, Cause.STABLE_UPDATED, text, 0),)
        if s.phase is Phase.PROMOTING and now + EPS >= (s.weight_set_at or now) + limit:
            text = f"stable not updated to {s.ref} after {limit:g}s; retrying"
            act = decision(ActionKind.FAILED, Cause.STUCK, text, s.weight, {"deadline": limit})
            return replace(s, phase=Phase.FAILED, message=act.reason), (act,)
        return s, ()
    if s.promote_step is PromoteStep.SHIFT and obs.weight == 0:
        s = replace(s, phase=Phase.PROMOTING, promote_step=PromoteStep.REMOVE, message=None)
        text = (
            "canary no longer serves traffic"
            if s.routes
            else f"canary 0% recorded ({TRAFFIC_UNTOUCHED})"
        )
        return s, (decision(ActionKind.REMOVE_CANARY, Cause.CANARY_DRAINED, text, 0),)
    if s.promote_step is PromoteStep.REMOVE and not obs.canary_present:
        s = replace(s, phase=Phase.SUCCEEDED, finished_at=now, promote_step=None, message=None)
        return s, (decision(ActionKind.SUCCEEDED, Cause.PROMOTED, f"{s.image} promoted", 0),)
    return s, ()


def _stable_updated(s: Rollout) -> str:
    """Promotion's "the stable runs the new image" in words true of what canaryd did: with
    ``none`` something else updated the stable, with ``noop`` no traffic moved."""
    stable = f"stable runs {s.ref}" if s.deploys else f"{STABLE_UNTOUCHED}; it reports {s.ref}"
    traffic = (
        "all traffic back to stable" if s.routes else f"canary 0% recorded ({TRAFFIC_UNTOUCHED})"
    )
    return f"{stable}; {traffic}"


def cleanup(s: Rollout, now: float) -> Step:
    """A rolled-back canary is removed once ``scale_down_delay`` is over."""
    if s.phase is Phase.ROLLED_BACK and s.cleanup_at is not None and now + EPS >= s.cleanup_at:
        text = f"scale-down delay of {s.policy.scale_down_delay:g}s over"
        act = decision(ActionKind.REMOVE_CANARY, Cause.SCALED_DOWN, text, 0)
        return replace(s, cleanup_at=None), (act,)
    return s, ()
