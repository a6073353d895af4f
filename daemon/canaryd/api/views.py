"""What the API shows: rollouts, alerts and targets as JSON-ready dicts.

The views are pure functions of the core model and of ``TargetInfo`` (the few members of a
configured target they read; ``settings.Target`` satisfies it structurally, so no adapter imports
the settings layer). They are the API's vocabulary: the JSON routes in ``handlers`` answer with
them and the status page renders ``target_summary``, so the page can only ever show what the API
already shows. They sit apart from the routes because both of those use them, and because what a
field means is easier to review without the request handling around it.
"""

from __future__ import annotations

from typing import Any, Protocol

from canaryd.config.kinds import KindConfig
from canaryd.core.model import Alert, Phase, Policy, Rollout


class TargetInfo(Protocol):
    """A configured target as the views read it (``settings.Target`` has these members)."""

    @property
    def name(self) -> str: ...
    @property
    def policy(self) -> Policy: ...
    @property
    def router(self) -> KindConfig: ...
    @property
    def platform(self) -> KindConfig: ...


def rollout_view(r: Rollout) -> dict[str, Any]:
    """A rollout as the API shows it: stage numbers are 1-based, as people count them."""
    stages = r.policy.stages
    return {
        "id": r.id,
        "target": r.target,
        "image": r.image,
        "policy": r.policy.name,
        "phase": str(r.phase),
        "stage": min(r.stage + 1, len(stages)),
        "stages": len(stages),
        "weight": r.weight,
        "stable_weight": r.stable_weight,
        "started_at": r.started_at,
        "stage_started_at": r.stage_started_at,
        "credited": r.credited,
        "finished_at": r.finished_at,
        "waiting_for_promote": r.phase is Phase.PAUSED and r.stage_passed,
        "pause_reason": r.pause_reason,
        "rollback_reason": r.rollback_reason,
        "message": r.message,
        "successor": r.successor,
        "trace_id": r.trace_id,
        "plan": [
            {
                "weight": s.weight,
                "duration": s.duration,
                "checks": list(s.checks),
                "gate": str(s.gate),
            }
            for s in stages
        ],
    }


def alert_view(a: Alert) -> dict[str, Any]:
    return {
        "fingerprint": a.fingerprint,
        "name": a.name,
        "status": a.status,
        "labels": dict(a.labels),
        "starts_at": a.starts_at,
        "ends_at": a.ends_at,
    }


def target_summary(t: TargetInfo, r: Rollout | None) -> dict[str, Any]:
    return {
        "name": t.name,
        "policy": t.policy.name,
        "router": t.router.kind,
        "platform": t.platform.kind,
        "rollout_id": r.id if r else None,
        "image": r.image if r else None,
        "phase": str(r.phase) if r else None,
        "stage": min(r.stage + 1, len(r.policy.stages)) if r else None,
        "stages": len(r.policy.stages) if r else None,
        "weight": r.weight if r else 0,
        "stable_weight": r.stable_weight if r else 100,
    }
