"""Decisions carry a typed cause, and nothing reads their words: renaming every reason text
leaves the metrics' labels (a real ``Telemetry`` registry, scraped) and the engine's behaviour
(phases, weights, pauses and resumes) exactly as they were (issue 8, point 1)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from canaryd.adapters.telemetry import REASON_LABELS, Telemetry, reason_label
from canaryd.core import stages
from canaryd.core.model import (
    Action,
    ActionKind,
    Alert,
    Cause,
    Command,
    CommandKind,
    EffectKind,
    Findings,
    Limits,
    Observed,
    Phase,
    Rollout,
)
from canaryd.core.rules import AdmissionVerdict, admit
from canaryd.core.stages import transitions
from support.enginekit import bad, err, good, make_policy, nodata

WARNING = {"alertname": "Slow", "severity": "warning"}
CRITICAL = {"alertname": "Down", "severity": "critical"}
INFO = {"alertname": "Note", "severity": "info"}
NOBODY = {"alertname": "Unmatched", "severity": "none"}

Script = Callable[[float, Rollout], Findings]


def _apply(obs: Observed, state: Rollout) -> Observed:
    """The world once ``reconcile``'s effects are applied (a router and platform that obey)."""
    for effect in stages.reconcile(state, obs):
        if effect.kind is EffectKind.SET_WEIGHT:
            obs = replace(obs, weight=effect.weight)
        elif effect.kind is EffectKind.ENSURE_CANARY:
            obs = replace(obs, canary_present=True, canary_ready=True)
        elif effect.kind is EffectKind.UPDATE_STABLE:
            obs = replace(obs, stable_image=effect.image)
        else:
            obs = replace(obs, canary_present=False, canary_ready=False)
    return obs


@dataclass
class Run:
    ticks: list[tuple[float, str, int, int]]  # (t, phase, weight, stage)
    decisions: list[tuple[float, str, str | None, str | None, int | None]]
    reasons: list[str]
    metrics: list[str]


def _play(script: Script, limits: Limits, until: float, stuck_router_after: float) -> Run:
    """Drive one rollout second by second through ``decide`` and a real ``Telemetry``."""
    telemetry = Telemetry(CollectorRegistry())
    policy = make_policy(limits=limits)
    s, first = stages.start("r1", "svc", "v2", policy, 0.0)
    telemetry.decided(s, (first,), (), 0.0)
    obs = Observed(stable_image="v1")
    run = Run([], [], [first.reason], [])
    t = 0.0
    while t < until:
        t += 1.0
        if t < stuck_router_after:
            obs = _apply(obs, s)
        s, acts = stages.decide(s, obs, script(t, s), t)
        telemetry.decided(s, acts, (), t)
        run.ticks.append((t, str(s.phase), s.weight, s.stage))
        run.decisions += [(t, str(a.kind), a.cause, a.phase, a.weight) for a in acts]
        run.reasons += [a.reason for a in acts]
    text = generate_latest(telemetry.registry).decode()
    # every sample with its labels and value; ``_created`` samples are wall-clock times
    samples = [line for line in text.splitlines() if line.startswith("canaryd_")]
    run.metrics = [line for line in samples if "_created" not in line.split(" ")[0]]
    return run


def _alert(labels: dict[str, str], status: str, at: float) -> Alert:
    return Alert(labels["alertname"], status, labels, at, None if status == "firing" else at)


def _promoting_script(t: float, s: Rollout) -> Findings:
    """Holds on a failed check, a source error and no data; an alert pause that resumes after
    its cooldown; an operator's pause, resume, set-weight and promote; to Succeeded."""
    alerts: tuple[Alert, ...] = ()
    commands: tuple[Command, ...] = ()
    if t == 70:
        alerts = (_alert(WARNING, "firing", 70), _alert(NOBODY, "firing", 70))
    if t == 100:
        alerts = (_alert(WARNING, "resolved", 100), _alert(INFO, "firing", 100))
    by_time = {
        150: Command(CommandKind.PAUSE, by="ops"),
        151: Command(CommandKind.PAUSE, by="ops"),  # refused: already paused
        160: Command(CommandKind.RESUME, by="ops"),
        170: Command(CommandKind.SET_WEIGHT, by="ops", weight=30),
        180: Command(CommandKind.RESUME, by="ops"),
        250: Command(CommandKind.PROMOTE, by="ops"),
    }
    if t in by_time:
        commands = (by_time[t],)
    if not stages.evaluation_due(s, t):
        return Findings(alerts=alerts, commands=commands)
    measured = good()
    if 30 <= t < 40:
        measured = bad()
    elif 50 <= t < 52:
        measured = err()
    elif 60 <= t < 70:
        measured = nodata()
    return replace(measured, alerts=alerts, commands=commands)


def _rollback_script(t: float, s: Rollout) -> Findings:
    """Source errors until the rollback; the router then never applies 0%: Failed, and a
    critical alert and a resume meanwhile."""
    alerts = (_alert(CRITICAL, "firing", 5),) if t == 200 else ()
    commands = (Command(CommandKind.RESUME),) if t == 201 else ()
    if not stages.evaluation_due(s, t):
        return Findings(alerts=alerts, commands=commands)
    return replace(err() if t > 40 else good(), alerts=alerts, commands=commands)


SCENARIOS = {
    "promotes": (_promoting_script, Limits(failure_limit=1, progress_deadline=600.0), 500.0, 1e9),
    "rolls-back-and-sticks": (_rollback_script, Limits(progress_deadline=60.0), 260.0, 55.0),
}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_renaming_every_reason_changes_neither_labels_nor_behaviour(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    script, limits, until, stuck_after = SCENARIOS[name]
    plain = _play(script, limits, until, stuck_after)
    monkeypatch.setattr(transitions, "wording", lambda cause, text: "X")
    renamed = _play(script, limits, until, stuck_after)

    assert set(renamed.reasons) <= {"X", *(f"X; restoring stable to {i}" for i in ("v1",))}
    assert set(plain.reasons).isdisjoint({"X"})
    assert renamed.ticks == plain.ticks
    assert renamed.decisions == plain.decisions
    assert renamed.metrics == plain.metrics
    assert all(cause is not None for _, _, cause, _, _ in plain.decisions)


def test_the_scenarios_cover_the_causes_that_steer_behaviour() -> None:
    """The proof above is worth what its scenarios exercise: alert pause and cooldown resume,
    holds of every kind, operator commands, success, rollback and a stuck rollback."""
    promoted = _play(*SCENARIOS["promotes"])
    rolled = _play(*SCENARIOS["rolls-back-and-sticks"])
    assert promoted.ticks[-1][1] == "Succeeded" and rolled.ticks[-1][1] == "Failed"
    causes = {c for run in (promoted, rolled) for _, _, c, _, _ in run.decisions}
    assert {
        Cause.CHECK_FAILED,
        Cause.SOURCE_ERRORS,
        Cause.NO_DATA,
        Cause.ALERT,
        Cause.ALERT_RESOLVED,
        Cause.ALERT_COOLDOWN,
        Cause.ALERT_IGNORED,
        Cause.MANUAL_PAUSE,
        Cause.MANUAL_RESUME,
        Cause.MANUAL_WEIGHT,
        Cause.MANUAL_PROMOTE,
        Cause.REFUSED,
        Cause.STAGE_PASSED,
        Cause.STABLE_UPDATED,
        Cause.PROMOTED,
        Cause.STUCK,
    } <= causes
    labels = "\n".join(promoted.metrics + rolled.metrics)
    for reason in ("check-failed", "source-errors", "no-data", "alert", "manual-promote"):
        assert f'reason="{reason}"' in labels
    assert 'canaryd_rollbacks_total{reason="source-errors",target="svc"} 1.0' in labels


@pytest.mark.parametrize(
    ("cause", "kind", "label"),
    [
        (Cause.SUPERSEDED, ActionKind.ROLLBACK, "superseded"),
        (Cause.MANUAL, ActionKind.ROLLBACK, "manual"),
        (Cause.MANUAL_PAUSE, ActionKind.PAUSE, "pause"),  # no own label: the kind, as before
        (Cause.STARTED, ActionKind.START, "start"),
        (None, ActionKind.HOLD, "hold"),  # a decision stored before causes existed
    ],
)
def test_a_reason_label_is_its_causes_code_else_its_kind(
    cause: Cause | None, kind: ActionKind, label: str
) -> None:
    assert reason_label(Action(kind, "words nobody reads", cause=cause)) == label
    assert set(REASON_LABELS.values()).isdisjoint(str(k) for k in ActionKind)


def test_a_supersede_is_told_from_an_operators_rollback_by_its_cause() -> None:
    s, _ = stages.start("r1", "svc", "v2", make_policy(), 0.0)
    verdict = admit(s, "v3", s.policy, (), supersede=True)
    assert verdict.verdict is AdmissionVerdict.SUPERSEDE
    why = Command(CommandKind.ROLLBACK, reason=verdict.reason, cause=Cause.SUPERSEDED)
    s, acts = stages.decide(s, Observed(), Findings(commands=(why,)), 1.0)
    assert [(a.kind, a.cause) for a in acts] == [(ActionKind.ROLLBACK, Cause.SUPERSEDED)]
    assert s.phase is Phase.ROLLING_BACK
