"""The stage engine: ``decide(state, observed, findings, now) -> (new state, decisions)``.

Deciding and doing are split in two pure functions:

* ``decide`` is edge-triggered. It consumes what happened (an evaluation's measurements,
  alerts, operator commands) and moves the rollout along SPEC §3's lifecycle, returning the
  new record and the decisions it took, each with its typed cause, its reason and its
  evidence. Those decisions are the rollout's history.
* ``reconcile`` is level-triggered. From the record alone it says what the world must look
  like (canary weight, canary present, stable image) and lists the idempotent effects still
  needed to get there. A runtime persists ``decide``'s result *before* applying
  ``reconcile``'s effects, so a crash anywhere is repaired by the next pass: nothing decided is
  lost and nothing is decided twice (evaluations are consumed through ``next_eval_at``,
  alerts through ``handled_alerts``).

Stage timing is credit-based: each passing evaluation credits the time since the previous one
(at most one interval), so missing data, pauses and downtime hold the stage timer instead of
letting it run. ``progress_deadline`` bounds how far a stage can be stretched.

The package is split by concern: ``transitions`` (the moves between phases, and the one place
decisions are built), ``commands``, ``gate`` (the verify commands before anything is created),
``alerts``, ``evaluation``, ``progress`` and ``reconcile``.
Each step is a function returning ``(record, decisions)``; ``decide`` chains them here.
"""

from __future__ import annotations

from dataclasses import replace

from canaryd.core.model import (
    Action,
    ActionKind,
    Cause,
    Findings,
    Observed,
    Phase,
    Policy,
    Rollout,
)
from canaryd.core.stages.alerts import HANDLED_ALERTS_KEPT, apply_alerts
from canaryd.core.stages.commands import apply_command
from canaryd.core.stages.evaluation import evaluate, evaluation_due, next_tick
from canaryd.core.stages.gate import apply_verification
from canaryd.core.stages.progress import cleanup, progress
from canaryd.core.stages.reconcile import next_wakeup, reconcile
from canaryd.core.stages.transitions import (
    Step,
    check_command,
    decision,
    pinning,
    remember_stable,
    stamped,
    unchanged_by,
    verifying,
)

__all__ = [
    "HANDLED_ALERTS_KEPT",
    "check_command",
    "decide",
    "evaluation_due",
    "hand_over",
    "next_tick",
    "next_wakeup",
    "pinning",
    "plan_stages",
    "reconcile",
    "start",
    "unchanged_by",
    "verifying",
]


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
    *,
    pinned: str | None = None,
    verify: bool = False,
    routes: bool = True,
    deploys: bool = True,
    pin_on_ready: bool = False,
) -> tuple[Rollout, Action]:
    """A new rollout of ``image`` (Pending until its canary is ready) and its first decision.

    ``pinned``: the digest reference the platform resolved ``image`` to (used from now on);
    ``verify``: the target has verify commands, so the gate (``stages.gate``) is closed;
    ``routes``/``deploys`` False: the target's router/platform is observe-only;
    ``pin_on_ready``: the platform pins ``image`` only once the canary runs (kubernetes), so
    the first stage waits for that pin (``stages.progress``).
    """
    planned = plan_stages(policy, traffic)
    rollout = Rollout(
        id=rollout_id,
        target=target,
        image=image,
        policy=planned,
        started_at=now,
        weight_set_at=now,
        pinned=pinned if pinned != image else None,
        verify_pending=verify,
        routes=routes,
        deploys=deploys,
        pin_on_ready=pin_on_ready and pinned is None,
    )
    weights = "→".join(str(stage.weight) for stage in planned.stages)
    evidence: dict[str, object] = {"weights": [stage.weight for stage in planned.stages]}
    pin = ""
    if rollout.pinned is not None:
        evidence["pinned"] = rollout.pinned
        pin = f", pinned to {rollout.pinned}"
    if rollout.pin_on_ready:
        evidence["pin_on_ready"] = True
        pin = ", pinned once the canary runs"
    if verify:
        evidence["verify"] = True
        pin += ", verifying first"
    text = f"rollout of {image} started ({weights}{pin})"
    return rollout, decision(ActionKind.START, Cause.STARTED, text, 0, evidence)


class _Chain:
    """The record and decisions of one ``decide`` call, as its steps follow each other."""

    def __init__(self, state: Rollout) -> None:
        self.state = state
        self.decisions: list[Action] = []

    def then(self, step: Step) -> None:
        self.state, taken = stamped(step)
        self.decisions.extend(taken)


def decide(
    state: Rollout, observed: Observed, findings: Findings, now: float
) -> tuple[Rollout, tuple[Action, ...]]:
    """The next state of a rollout and the decisions that led there. Pure.

    Commands first (in order), then a finished verification, then alerts, then an evaluation
    if one is due, then what time and the observed world move on their own. An ended rollout
    only takes commands (cleanup) and its scale-down.
    """
    chain = _Chain(state if state.ended else remember_stable(state, observed))
    for index, command in enumerate(findings.commands):
        chain.then(apply_command(chain.state, command, index, now))
    if findings.verification is not None:
        chain.then(apply_verification(chain.state, findings.verification, now))
    if state.ended:
        chain.then(cleanup(chain.state, now))
        return chain.state, tuple(chain.decisions)
    chain.then(apply_alerts(chain.state, findings.alerts, now))
    if evaluation_due(chain.state, now):
        chain.then(evaluate(chain.state, findings, now))
    if not chain.state.ended:
        chain.then(progress(chain.state, observed, now))
    return chain.state, tuple(chain.decisions)


def hand_over(state: Rollout, successor: str) -> tuple[Rollout, tuple[Action, ...]]:
    """A superseded rollout, once rolled back, leaves its canary slot to ``successor``.

    The successor's canary reuses the slot (same workload name), so the scale-down that
    ``scale_down_delay`` would schedule must not run: it would remove the new canary.
    """
    if state.phase is not Phase.ROLLED_BACK or state.cleanup_at is None:
        return state, ()
    text = f"canary slot handed over to rollout {successor}"
    act = decision(ActionKind.OBSERVE, Cause.HANDED_OVER, text, 0, {"successor": successor})
    return replace(state, cleanup_at=None, successor=successor), (act,)
