"""The verification gate before the first stage (SPEC §8): a rollout whose target has
``verify:`` commands starts with ``verify_pending`` and stays Pending, its canary not even
created, until the runtime reports what the commands said.

The gate is part of the record, not of the runtime's memory: a daemon killed while the
commands run finds ``verify_pending`` still set on restart and runs them again (it moved no
traffic and created nothing, so nothing is skipped). Passed, the rollout goes on as any
other (the Pending deadline counts from here, not from the start); failed or timed out, it
ends ``Failed`` at once with cause ``verify-failed`` and the command's reason: nothing was
deployed and no traffic moved, so there is nothing to roll back and nothing to retry (a
``RolledBack`` would claim a canary was judged bad). The record is over (``Stuck.REFUSED``,
``finished_at`` set): the target is free for a new start, and ``reconcile`` removes whatever
canary the target still had (one handed over by a superseded rollout).
While the gate is closed an operator may roll back or clean up, nothing else: a pause, a
weight or a promotion would move on without the verification (``transitions.check_command``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from canaryd.core.model import (
    ActionKind,
    Cause,
    Phase,
    Rollout,
    Verification,
)
from canaryd.core.stages.transitions import Step, decision, verifying


def apply_verification(s: Rollout, v: Verification, now: float) -> Step:
    """The record once the verify commands have answered ``v``."""
    if not verifying(s):
        return s, ()  # overtaken: rolled back by an operator while the commands ran
    evidence = {"image": s.ref, **v.evidence}
    s = replace(s, verify_pending=False)
    if not v.passed:
        return refuse(s, f"verification of {s.ref} failed: {v.summary}", now, evidence)
    if s.phase is Phase.PENDING:
        s = replace(s, weight_set_at=now)  # the Pending deadline runs from here
    text = f"{s.ref} verified: {v.summary}"
    return s, (decision(ActionKind.OBSERVE, Cause.VERIFIED, text, s.weight, evidence),)


def refuse(s: Rollout, reason: str, now: float, evidence: Mapping[str, object]) -> Step:
    """The rollout ends ``Failed`` for good (``Stuck.REFUSED``): nothing was created."""
    act = decision(ActionKind.FAILED, Cause.VERIFY_FAILED, reason, 0, evidence)
    s = replace(s, phase=Phase.FAILED, weight=0, message=act.reason, finished_at=now)
    return s, (act,)
