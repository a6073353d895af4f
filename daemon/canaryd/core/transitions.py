"""The moves between phases, and the rules on when an operator's command may make one.

``stages.decide`` and ``alerts.apply_alerts`` compose these; each takes the record, appends the
decision it took to ``acts`` and returns the new record. Pure, like the rest of ``core``.
"""

from __future__ import annotations

from dataclasses import replace

from canaryd.core.model import (
    Action,
    ActionKind,
    Command,
    CommandKind,
    Observed,
    Phase,
    Rollout,
)

EPS = 1e-6  # tolerance of time comparisons: a deadline "at" t is reached at t
RESTORE = "restore-stable"  # promote_step of a rollback that interrupted the stable update


# --------------------------------------------------------------------------- commands


def check_command(state: Rollout, command: Command) -> str | None:
    """Why ``command`` cannot apply to ``state`` (an HTTP 409), or None if it can."""
    phase, kind = state.phase, command.kind
    if kind is CommandKind.CLEANUP:
        if phase is Phase.PROMOTING and state.promote_step != "update-stable":
            return "promotion is completing; nothing to clean up"
        if phase.terminal and state.cleanup_at is None:
            return f"rollout {state.id} already ended ({phase}) and left nothing behind"
        return _restore_refusal(state)  # cleaning up an unfinished promotion rolls it back
    if phase.terminal:
        return f"rollout {state.id} already ended ({phase})"
    if kind is CommandKind.ROLLBACK:
        if phase is Phase.ROLLING_BACK or (phase is Phase.FAILED and state.rollback_reason):
            return "a rollback is already under way"
        if phase is Phase.PROMOTING and state.promote_step != "update-stable":
            return "stable already runs the new image; nothing to roll back to"
        return _restore_refusal(state)
    if phase not in (Phase.PENDING, Phase.PROGRESSING, Phase.PAUSED):
        return f"cannot {kind} a rollout that is {phase}"
    if kind is CommandKind.PAUSE and phase is Phase.PAUSED:
        return "already paused"
    if kind is CommandKind.RESUME:
        if phase is not Phase.PAUSED:
            return "not paused"
        if state.stage_passed:
            return "waiting at a manual gate: use promote"
    if kind is CommandKind.SET_WEIGHT and (
        command.weight is None or not 0 <= command.weight <= 100
    ):
        return "weight must be within 0..100"
    return None


def _stable_update_begun(s: Rollout) -> bool:
    """Promotion has asked the platform to put the new image on the stable (not yet done)."""
    return s.rollback_reason is None and s.promote_step == "update-stable"


def _restore_refusal(s: Rollout) -> str | None:
    """Why a rollback cannot undo a promotion that began updating the stable, or None.

    Once the stable update began, (part of) the stable may run the new image, so rolling back
    means two things: canary weight 0 *and* the stable back on the image it ran before. canaryd
    restores rather than refuses whenever it can, because a rollback is needed most exactly
    then: the new image is reaching every stable replica, and a critical alert must still stop
    it (a refusal would let it finish spreading). The image to restore is ``previous_image``,
    the stable's image as first observed, before promotion touched it. A platform that reports
    no stable image (``none``: something else deploys) leaves nothing to restore; a rollback
    would then report RolledBack with the new image left on stable, so it is refused and the
    refusal says why.
    """
    if _stable_update_begun(s) and s.previous_image is None:
        return (
            f"the stable update to {s.image} has begun and the previous stable image is unknown "
            "(the platform reports none), so a rollback could not restore it"
        )
    return None


def remember_stable(s: Rollout, obs: Observed) -> Rollout:
    """Record the stable's image the first time the platform reports one, before promotion."""
    if (
        s.previous_image is None
        and obs.stable_image is not None
        and s.promote_step is None
        and s.rollback_reason is None
    ):
        return replace(s, previous_image=obs.stable_image)
    return s


# --------------------------------------------------------------------------- transitions


def fresh_stage(s: Rollout, index: int, weight: int, now: float) -> Rollout:
    return replace(
        s,
        stage=index,
        weight=weight,
        weight_set_at=now,
        stage_started_at=None,
        credited=0.0,
        paused_total=0.0,
        last_eval_at=None,
        next_eval_at=None,
        failures={},
        stage_requests=0.0,
        consecutive_inconclusive=0,
        consecutive_errors=0,
        stage_passed=False,
    )


def next_stage(
    s: Rollout,
    reason: str,
    now: float,
    acts: list[Action],
    evidence: dict[str, object] | None = None,
) -> Rollout:
    s = unpause(s, now)
    stages = s.policy.stages
    if s.stage + 1 >= len(stages):
        return promote(s, f"{reason}; all stages passed", now, acts, evidence)
    index = s.stage + 1
    s = fresh_stage(replace(s, phase=Phase.PROGRESSING), index, stages[index].weight, now)
    acts.append(
        Action(
            ActionKind.SET_WEIGHT,
            f"{reason}; stage {index + 1} of {len(stages)}: canary {s.weight}%",
            s.weight,
            evidence or {},
        )
    )
    return s


def promote(
    s: Rollout,
    reason: str,
    now: float,
    acts: list[Action],
    evidence: dict[str, object] | None = None,
) -> Rollout:
    s = replace(
        s,
        phase=Phase.PROMOTING,
        promote_step="update-stable",
        weight_set_at=now,
        stage_passed=False,
    )
    acts.append(
        Action(
            ActionKind.PROMOTE, f"{reason}; updating stable to {s.image}", s.weight, evidence or {}
        )
    )
    return s


def rollback(
    s: Rollout,
    reason: str,
    now: float,
    acts: list[Action],
    evidence: dict[str, object] | None = None,
) -> Rollout:
    restore = _stable_update_begun(s)  # check_command made sure previous_image is known
    s = replace(
        s,
        phase=Phase.ROLLING_BACK,
        weight=0,
        rollback_reason=reason,
        rollback_at=now,
        paused_at=None,
        resume_at=None,
        alert_pauses=frozenset(),
        stage_passed=False,
        promote_step=RESTORE if restore else s.promote_step,
    )
    said = f"{reason}; restoring stable to {s.previous_image}" if restore else reason
    acts.append(Action(ActionKind.ROLLBACK, said, 0, evidence or {}))
    return s


def pause(
    s: Rollout,
    reason: str,
    now: float,
    acts: list[Action],
    evidence: dict[str, object] | None = None,
) -> Rollout:
    s = replace(s, phase=Phase.PAUSED, paused_at=now, pause_reason=reason, resume_at=None)
    acts.append(Action(ActionKind.PAUSE, reason, s.weight, evidence or {}))
    return s


def unpause(s: Rollout, now: float) -> Rollout:
    if s.phase is not Phase.PAUSED:
        return s
    paused = now - s.paused_at if s.paused_at is not None else 0.0
    return replace(
        s,
        phase=Phase.PROGRESSING,
        paused_at=None,
        pause_reason=None,
        resume_at=None,
        alert_pauses=frozenset(),
        paused_total=s.paused_total + paused,
        consecutive_inconclusive=0,
    )


def resume(s: Rollout, reason: str, now: float, acts: list[Action]) -> Rollout:
    stage_weight = s.current_stage.weight
    s = unpause(s, now)
    if s.weight != stage_weight:  # returning from a manual set-weight: the stage starts over
        s = fresh_stage(s, s.stage, stage_weight, now)
        acts.append(
            Action(
                ActionKind.SET_WEIGHT,
                f"{reason}; stage {s.stage + 1} restarts at canary {stage_weight}%",
                stage_weight,
            )
        )
        return s
    acts.append(Action(ActionKind.RESUME, reason, s.weight))
    return s


def tagged(s: Rollout, acts: list[Action]) -> Rollout:
    """Stamp the actions of the step just taken with the phase that step left (a ``hold``
    decided before a rollback in the same call is recorded as Progressing, not RollingBack)."""
    for i in range(len(acts) - 1, -1, -1):
        if acts[i].phase is not None:
            break
        acts[i] = replace(acts[i], phase=s.phase)
    return s
