"""What the world must look like for a record (``reconcile``) and when the engine next has
something to do on its own (``next_wakeup``). Level-triggered and idempotent."""

from __future__ import annotations

from canaryd.core.model import Effect, EffectKind, Observed, Phase, PromoteStep, Rollout
from canaryd.core.stages.evaluation import evaluation_due
from canaryd.core.stages.progress import stage_deadline
from canaryd.core.stages.transitions import RESTORE, verifying


def reconcile(state: Rollout, observed: Observed) -> tuple[Effect, ...]:
    """Effects still needed for the world to match ``state``. Idempotent, level-triggered."""
    s, effects = state, []
    if s.successor is not None:
        return ()  # the canary slot belongs to the successor now
    promoting = s.promoting
    serving = s.phase in (Phase.PENDING, Phase.PROGRESSING, Phase.PAUSED) or (
        promoting and s.promote_step in (PromoteStep.UPDATE_STABLE, PromoteStep.SHIFT)
    )
    draining = s.rollback_reason is not None and (
        s.phase is not Phase.ROLLED_BACK or s.cleanup_at is not None
    )
    if verifying(s):  # the verify gate: nothing is created before the commands passed
        serving = False
    if serving and not (observed.canary_present and observed.canary_ready):
        effects.append(Effect(EffectKind.ENSURE_CANARY, image=s.ref))
    if s.phase is not Phase.PENDING and observed.weight != s.weight:
        effects.append(Effect(EffectKind.SET_WEIGHT, weight=s.weight))
    updating = promoting and s.promote_step is PromoteStep.UPDATE_STABLE
    if updating and observed.stable_image != s.ref:
        effects.append(Effect(EffectKind.UPDATE_STABLE, image=s.ref))
    restoring = s.promote_step is RESTORE and s.phase in (Phase.ROLLING_BACK, Phase.FAILED)
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
        stage_deadline(s),
        s.cleanup_at if s.phase is Phase.ROLLED_BACK else None,
    ]
    if s.phase is Phase.ROLLING_BACK and s.rollback_at is not None:
        times.append(s.rollback_at + s.policy.limits.progress_deadline)
    if (
        s.phase is Phase.PROMOTING
        and s.promote_step is PromoteStep.UPDATE_STABLE
        and s.weight_set_at
    ):
        times.append(s.weight_set_at + s.policy.limits.progress_deadline)
    present = [t for t in times if t is not None]
    return min(present) if present else None
