"""An operator's commands (promote, rollback, pause, resume, set-weight, cleanup) applied to a
rollout, each once; a command that cannot apply is recorded as refused (the API's 409)."""

from __future__ import annotations

from dataclasses import replace

from canaryd.core.model import ActionKind, Cause, Command, CommandKind, Phase, Rollout
from canaryd.core.stages.transitions import (
    TRAFFIC_UNTOUCHED,
    Step,
    check_command,
    decision,
    next_stage,
    pause,
    promote,
    resume,
    rollback,
    unpause,
)


def apply_command(s: Rollout, c: Command, index: int, now: float) -> Step:
    """The record after ``c`` (the ``index``-th command of this pass) and what it decided."""
    refusal = check_command(s, c)
    who = f" by {c.by}" if c.by else ""
    if refusal is not None:
        # the runtime answers the command at ``command_index`` 409 with ``refused``
        evidence = {"command": str(c.kind), "refused": refusal, "command_index": index}
        text = f"{c.kind}{who} refused: {refusal}"
        return s, (decision(ActionKind.IGNORE, Cause.REFUSED, text, s.weight, evidence),)
    if c.kind is CommandKind.CLEANUP:
        return _cleanup(s, c, who, now)
    if c.kind is CommandKind.ROLLBACK:
        cause = c.cause or Cause.MANUAL
        # a person's, or a controller's or platform's finding sent as a command (its own cause)
        what = "manual rollback" if cause is Cause.MANUAL else "rollback"
        reason = f"{what}{who}" + (f": {c.reason}" if c.reason else "")
        return rollback(s, cause, reason, now, {"by": c.by})
    if c.kind is CommandKind.PAUSE:
        return pause(s, Cause.MANUAL_PAUSE, f"paused{who}", now)
    if c.kind is CommandKind.RESUME:
        return resume(s, Cause.MANUAL_RESUME, f"resumed{who}", now)
    if c.kind is CommandKind.PROMOTE:
        reason = f"promoted{who}: stage {s.stage + 1} wait skipped"
        return next_stage(s, Cause.MANUAL_PROMOTE, reason, now)
    if c.kind is CommandKind.PROMOTE_FULL:
        s = unpause(s, now)
        return promote(replace(s, weight=100), Cause.MANUAL_PROMOTE, f"promoted to 100%{who}", now)
    return _set_weight(s, c, who, now)


def _cleanup(s: Rollout, c: Command, who: str, now: float) -> Step:
    """Remove the canary now: at once if rolled back, else by rolling back first."""
    if s.phase is Phase.ROLLED_BACK:
        text = f"cleanup{who}: canary removed now"
        act = decision(ActionKind.REMOVE_CANARY, Cause.CLEANUP, text, 0)
        return replace(s, cleanup_at=None, cleanup_now=True), (act,)
    if s.rollback_reason is None:
        s, done = rollback(s, Cause.CLEANUP, f"cleanup{who}", now, {"by": c.by})
        return replace(s, cleanup_now=True), done
    return replace(s, cleanup_now=True), ()


def _set_weight(s: Rollout, c: Command, who: str, now: float) -> Step:
    """A manual weight pauses the rollout; resume returns to the stage's own weight."""
    weight = c.weight if c.weight is not None else s.weight
    reason = f"weight set to {weight}%{who}; resume returns to stage {s.stage + 1}"
    s, paused = pause(s, Cause.MANUAL_WEIGHT, reason, now)
    s = replace(s, weight=weight, weight_set_at=now, stage_started_at=None, credited=0.0)
    text = f"canary weight set to {weight}%{who}"
    if not s.routes:
        text = f"canary weight {weight}% recorded{who} ({TRAFFIC_UNTOUCHED})"
    return s, (*paused, decision(ActionKind.SET_WEIGHT, Cause.MANUAL_WEIGHT, text, weight))
