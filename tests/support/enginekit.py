"""A small policy and helpers to drive the pure engine step by step in tests."""

from __future__ import annotations

from dataclasses import replace

from canaryd.core import stages
from canaryd.core.model import (
    Action,
    ActionKind,
    AlertAction,
    AlertRule,
    Check,
    Findings,
    Gate,
    Limits,
    Matcher,
    Measurement,
    Observed,
    Policy,
    Rollout,
    Stage,
)

INTERVAL = 10.0


def make_policy(**changes: object) -> Policy:
    policy = Policy(
        name="test",
        stages=(
            Stage(10, 60.0, ("sr",), min_requests=10),
            Stage(50, 60.0, ("sr",)),
            Stage(100, 0.0, ("sr",)),
        ),
        checks={"sr": Check("sr", "q", ">=", 0.99)},
        alert_rules=(
            AlertRule((Matcher("severity", "=", "critical"),), AlertAction.ROLLBACK),
            AlertRule((Matcher("severity", "=", "warning"),), AlertAction.PAUSE, cooldown=30.0),
            AlertRule((Matcher("alertname", "=~", ".*Freeze"),), AlertAction.FREEZE),
            AlertRule((Matcher("severity", "=", "info"),), AlertAction.OBSERVE),
        ),
        limits=Limits(progress_deadline=300.0),
        interval=INTERVAL,
        error_backoff=2.0,
        scale_down_delay=20.0,
    )
    return replace(policy, **changes)  # type: ignore[arg-type]


def gated_policy() -> Policy:
    p = make_policy()
    first = replace(p.stages[0], gate=Gate.MANUAL)
    return replace(p, stages=(first, *p.stages[1:]))


def world(s: Rollout, **changes: object) -> Observed:
    """The world as it looks once every effect of ``s`` has been applied."""
    base = Observed(
        weight=s.weight,
        canary_ready=True,
        canary_present=True,
        stable_image="v1",
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def good(value: float = 0.999, requests: float = 1e6) -> Findings:
    return Findings(measurements=(Measurement("sr", value),), requests=requests)


def bad() -> Findings:
    return good(0.9)


def nodata() -> Findings:
    return Findings(measurements=(Measurement("sr", None),))


def err() -> Findings:
    return Findings(measurements=(Measurement("sr", error="connection refused"),))


def kinds(actions: tuple[Action, ...]) -> list[ActionKind]:
    return [a.kind for a in actions]


def started(policy: Policy | None = None, at: float = 0.0) -> Rollout:
    """A rollout whose first stage timer has just started at ``at``."""
    s, _ = stages.start("r1", "svc", "v2", policy or make_policy(), at)
    s, _ = stages.decide(s, world(s), Findings(), at)  # Pending -> Progressing(stage 1)
    s, _ = stages.decide(s, world(s), Findings(), at)  # weight verified -> timer starts
    assert s.stage_started_at == at
    return s


def run_evaluations(s: Rollout, findings: Findings, count: int, **obs: object) -> Rollout:
    for _ in range(count):
        assert s.next_eval_at is not None
        s, _ = stages.decide(s, world(s, **obs), findings, s.next_eval_at)
    return s
