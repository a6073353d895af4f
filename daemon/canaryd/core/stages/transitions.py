"""The moves between phases, the rules on when an operator's command may make one, and the one
place decisions are built.

Every step of the engine is a function ``(record, ...) -> Step``: the new record and the
decisions the step took, in order. ``engine.decide`` chains the steps and stamps each step's
decisions with the phase that step left, so nothing appends to a shared list and nothing is
rewritten afterwards. Pure, like the rest of ``core``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from canaryd.core.model import (
    Action,
    ActionKind,
    Cause,
    Command,
    CommandKind,
    Observed,
    Phase,
    PromoteStep,
    Rollout,
)

EPS = 1e-6  # tolerance of time comparisons: a deadline "at" t is reached at t
RESTORE = PromoteStep.RESTORE_STABLE  # promote_step of a rollback that interrupted the update

Step = tuple[Rollout, tuple[Action, ...]]
Evidence = Mapping[str, object]


def wording(cause: Cause, text: str) -> str:
    """The reason a person reads for a decision of ``cause``: ``text`` as written.

    The one funnel every decision's words pass through (``decision``, and the rollback and
    pause reasons kept on the record). Nothing reads the words back, so a test may replace this
    function and show that metrics and behaviour follow ``cause`` alone.
    """
    return text


TRAFFIC_UNTOUCHED = "observe-only: traffic not changed"
STABLE_UNTOUCHED = "observe-only: stable not changed"


def canary_share(s: Rollout, weight: int) -> str:
    """``canary 25%`` where canaryd moves the traffic; with an observe-only router (``noop``),
    what it did instead, so that no decision claims a split nobody applied."""
    if s.routes:
        return f"canary {weight}%"
    return f"canary {weight}% recorded ({TRAFFIC_UNTOUCHED})"


def decision(
    kind: ActionKind,
    cause: Cause,
    text: str,
    weight: int | None,
    evidence: Evidence | None = None,
) -> Action:
    """One decision, its words passed through ``wording``."""
    return Action(kind, wording(cause, text), weight, dict(evidence or {}), cause=cause)


def stamped(step: Step) -> Step:
    """The step's decisions stamped with the phase the step left (a ``hold`` decided before a
    rollback in another step keeps its own phase)."""
    s, acts = step
    return s, tuple(a if a.phase is not None else replace(a, phase=s.phase) for a in acts)


# --------------------------------------------------------------------------- commands


def check_command(state: Rollout, command: Command) -> str | None:
    """Why ``command`` cannot apply to ``state`` (an HTTP 409), or None if it can."""
    phase, kind = state.phase, command.kind
    if kind is CommandKind.CLEANUP:
        if phase is Phase.PROMOTING and state.promote_step is not PromoteStep.UPDATE_STABLE:
            return "promotion is completing; nothing to clean up"
        if state.ended and state.cleanup_at is None:
            return f"rollout {state.id} already ended ({phase}) and left nothing behind"
        return _restore_refusal(state)  # cleaning up an unfinished promotion rolls it back
    if state.ended:
        return f"rollout {state.id} already ended ({phase})"
    if kind is CommandKind.ROLLBACK:
        if state.rolling_back:
            return "a rollback is already under way"
        if phase is Phase.PROMOTING and state.promote_step is not PromoteStep.UPDATE_STABLE:
            return "stable already runs the new image; nothing to roll back to"
        return _restore_refusal(state)
    if phase not in (Phase.PENDING, Phase.PROGRESSING, Phase.PAUSED):
        return f"cannot {kind} a rollout that is {phase}"
    if verifying(state):  # only a rollback or a cleanup may overtake the verify gate
        return f"{state.ref} is being verified (the target's verify commands); cannot {kind} yet"
    already = unchanged_by(state, command)
    if already is not None:
        return already
    if kind is CommandKind.RESUME and state.stage_passed:
        return "waiting at a manual gate: use promote"
    if kind is CommandKind.SET_WEIGHT and (
        command.weight is None or not 0 <= command.weight <= 100
    ):
        return "weight must be within 0..100"
    return None


def verifying(s: Rollout) -> bool:
    """Whether the verify gate is closed: the runtime owes this record a verification
    (``stages.gate``) and nothing may deploy or move traffic meanwhile."""
    return s.verify_pending and s.rollback_reason is None and not s.ended


def pinning(s: Rollout) -> bool:
    """Whether the first stage waits for the platform to pin the running canary's image
    (``Rollout.pin_on_ready``): the runtime then reads ``Observed.canary_pin``."""
    return s.pin_on_ready and s.pinned is None and s.phase is Phase.PENDING and not verifying(s)


def unchanged_by(state: Rollout, command: Command) -> str | None:
    """Why ``command`` would leave ``state`` exactly as it is, or None: a pause of a paused
    rollout ("already paused") or a resume of one that runs ("not paused"). The engine refuses
    such a command like any other that cannot apply; the API answers it as done (200), so
    that pause and resume are idempotent for scripts."""
    if command.kind is CommandKind.PAUSE and state.phase is Phase.PAUSED:
        return "already paused"
    if command.kind is CommandKind.RESUME and state.phase in (Phase.PENDING, Phase.PROGRESSING):
        return "not paused"
    return None


def _stable_update_begun(s: Rollout) -> bool:
    """Promotion has asked the platform to put the new image on the stable (not yet done)."""
    return s.rollback_reason is None and s.promote_step is PromoteStep.UPDATE_STABLE


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
        split=None,
    )


def next_stage(
    s: Rollout, cause: Cause, reason: str, now: float, evidence: Evidence | None = None
) -> Step:
    s = unpause(s, now)
    stages = s.policy.stages
    if s.stage + 1 >= len(stages):
        return promote(s, cause, f"{reason}; all stages passed", now, evidence)
    index = s.stage + 1
    s = fresh_stage(replace(s, phase=Phase.PROGRESSING), index, stages[index].weight, now)
    text = f"{reason}; stage {index + 1} of {len(stages)}: {canary_share(s, s.weight)}"
    return s, (decision(ActionKind.SET_WEIGHT, cause, text, s.weight, evidence),)


def promote(
    s: Rollout, cause: Cause, reason: str, now: float, evidence: Evidence | None = None
) -> Step:
    s = replace(
        s,
        phase=Phase.PROMOTING,
        promote_step=PromoteStep.UPDATE_STABLE,
        weight_set_at=now,
        stage_passed=False,
    )
    if s.deploys:
        text = f"{reason}; updating stable to {s.ref}"
    else:  # something else deploys: canaryd waits until the stable reports the new image
        text = f"{reason}; waiting for stable to run {s.ref} ({STABLE_UNTOUCHED})"
    return s, (decision(ActionKind.PROMOTE, cause, text, s.weight, evidence),)


def rollback(
    s: Rollout, cause: Cause, reason: str, now: float, evidence: Evidence | None = None
) -> Step:
    restore = _stable_update_begun(s)  # check_command made sure previous_image is known
    reason = wording(cause, reason)
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
    return s, (Action(ActionKind.ROLLBACK, said, 0, dict(evidence or {}), cause=cause),)


def pause(
    s: Rollout, cause: Cause, reason: str, now: float, evidence: Evidence | None = None
) -> Step:
    reason = wording(cause, reason)
    s = replace(
        s,
        phase=Phase.PAUSED,
        paused_at=now,
        pause_reason=reason,
        pause_cause=cause,
        resume_at=None,
    )
    return s, (Action(ActionKind.PAUSE, reason, s.weight, dict(evidence or {}), cause=cause),)


def unpause(s: Rollout, now: float) -> Rollout:
    if s.phase is not Phase.PAUSED:
        return s
    paused = now - s.paused_at if s.paused_at is not None else 0.0
    return replace(
        s,
        phase=Phase.PROGRESSING,
        paused_at=None,
        pause_reason=None,
        pause_cause=None,
        resume_at=None,
        alert_pauses=frozenset(),
        paused_total=s.paused_total + paused,
        consecutive_inconclusive=0,
    )


def resume(s: Rollout, cause: Cause, reason: str, now: float) -> Step:
    stage_weight = s.current_stage.weight
    s = unpause(s, now)
    if s.weight != stage_weight:  # returning from a manual set-weight: the stage starts over
        s = fresh_stage(s, s.stage, stage_weight, now)
        text = f"{reason}; stage {s.stage + 1} restarts at canary {stage_weight}%"
        return s, (decision(ActionKind.SET_WEIGHT, cause, text, stage_weight),)
    return s, (decision(ActionKind.RESUME, cause, reason, s.weight),)
