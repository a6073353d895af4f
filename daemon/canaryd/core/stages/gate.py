"""The verification gate before the first stage (SPEC §8): a rollout whose target has
``verify:`` commands starts with ``verify_pending`` and stays Pending, its canary not even
created, until the runtime reports what the commands said.

The gate is part of the record, not of the runtime's memory: a daemon killed while the
commands run finds ``verify_pending`` still set on restart and runs them again (it moved no
traffic and created nothing, so nothing is skipped). Passed, the rollout goes on as any
other (the Pending deadline counts from here, not from the start); failed or timed out, it
is rolled back at once with cause ``verify-failed``: nothing was deployed, nothing serves.
While the gate is closed an operator may roll back or clean up, nothing else: a pause, a
weight or a promotion would move on without the verification (``transitions.check_command``).
"""

from __future__ import annotations

from dataclasses import replace

from canaryd.core.model import (
    ActionKind,
    Cause,
    Phase,
    Rollout,
    Verification,
)
from canaryd.core.stages.transitions import Step, decision, rollback, verifying


def apply_verification(s: Rollout, v: Verification, now: float) -> Step:
    """The record once the verify commands have answered ``v``."""
    if not verifying(s):
        return s, ()  # overtaken: rolled back by an operator while the commands ran
    evidence = {"image": s.ref, **v.evidence}
    s = replace(s, verify_pending=False)
    if not v.passed:
        reason = f"verification of {s.ref} failed: {v.summary}"
        return rollback(s, Cause.VERIFY_FAILED, reason, now, evidence)
    if s.phase is Phase.PENDING:
        s = replace(s, weight_set_at=now)  # the Pending deadline runs from here
    text = f"{s.ref} verified: {v.summary}"
    return s, (decision(ActionKind.OBSERVE, Cause.VERIFIED, text, s.weight, evidence),)
