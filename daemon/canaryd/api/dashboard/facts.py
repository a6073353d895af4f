"""What the dashboard shows, as plain records, and the judgements drawn from them.

``gather`` fills these records from the runtime and the store; the renderers only read them.
The judgements are here, apart from both, because they are the part worth testing on their own:
a check's verdict is the engine's own (``compare.judged``) of the stored measurement (so the page
says "fail" exactly when the engine counted a failure), and a target's health at a glance is a
pure function of its phase, its last decision's cause, firing alerts and those verdicts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from canaryd.api.views import TargetInfo
from canaryd.core import compare
from canaryd.core.model import Check, Counts, Measurement, Phase, Rollout, Verdict
from canaryd.ports import DecisionRecord, MeasurementRecord


class Health(StrEnum):
    OK = "ok"
    WATCH = "watch"
    BAD = "bad"
    IDLE = "idle"


# the last decision's causes that say "look here" without being a failure
_WATCH_CAUSES = frozenset(
    {
        "no-data",
        "inconclusive",
        "source-errors",
        "too-few-requests",
        "canary-not-ready",
        "router-not-applied",
        "split-off",
        "stuck",
    }
)
_BAD_PHASES = frozenset({Phase.ROLLING_BACK, Phase.ROLLED_BACK, Phase.FAILED})


@dataclass(frozen=True, slots=True)
class Card:
    """One target on ``/``: its rollout (current or latest; None: never ran one), the weight
    the router reports (None: not read yet), its last decision and the alerts firing for it."""

    target: TargetInfo
    rollout: Rollout | None
    measured: int | None
    last: DecisionRecord | None
    firing: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Point:
    """One evaluation of one check: when, the value, and the engine's verdict of it."""

    t: float
    value: float | None
    verdict: Verdict
    detail: str
    counts: Counts | None = None


@dataclass(frozen=True, slots=True)
class CheckHistory:
    """A check of the rollout's policy (``check`` None: measured but no longer in the policy)
    and every evaluation of it, oldest first."""

    name: str
    check: Check | None
    points: tuple[Point, ...]

    @property
    def latest(self) -> Point | None:
        return self.points[-1] if self.points else None


@dataclass(frozen=True, slots=True)
class Detail:
    """One target's page: the card's facts plus the rollout's decisions and measurements,
    the target's earlier rollouts (newest first), the time, and the role each action needs."""

    card: Card
    decisions: Sequence[DecisionRecord]
    checks: Sequence[CheckHistory]
    past: Sequence[Rollout]
    now: float
    roles: Mapping[str, str] = field(default_factory=dict)


def check_histories(
    rollout: Rollout, measurements: Sequence[MeasurementRecord]
) -> list[CheckHistory]:
    """Every check of the rollout's stages, in plan order, with its evaluations judged."""
    policy = rollout.policy
    names = list(dict.fromkeys(name for stage in policy.stages for name in stage.checks))
    points: dict[str, list[Point]] = {name: [] for name in names}
    for m in measurements:
        point = _point(policy.checks.get(m["check"]), m, rollout)
        points.setdefault(m["check"], []).append(point)
    return [CheckHistory(n, policy.checks.get(n), tuple(p)) for n, p in points.items()]


def _point(check: Check | None, m: MeasurementRecord, rollout: Rollout) -> Point:
    counts = None
    if m["canary_requests"] is not None or m["stable_requests"] is not None:
        counts = Counts(
            m["canary_requests"] or 0.0,
            m["canary_errors"] or 0.0,
            m["stable_requests"] or 0.0,
            m["stable_errors"] or 0.0,
        )
    measured = Measurement(m["check"], m["value"], counts, m["error"])
    if check is None:
        return Point(m["t"], m["value"], Verdict.INCONCLUSIVE, "not in the policy", counts)
    judged = compare.judged(rollout, check, measured)
    return Point(m["t"], m["value"], judged.verdict, judged.detail, counts)


def health(
    rollout: Rollout | None,
    last: DecisionRecord | None,
    firing: Sequence[str],
    verdicts: Sequence[Verdict] = (),
) -> tuple[Health, str]:
    """The target's health at a glance and why, in a few words, worst first."""
    if rollout is None:
        return Health.IDLE, "no rollout yet"
    if rollout.phase in _BAD_PHASES:
        why = rollout.rollback_reason or rollout.message or str(rollout.phase)
        return Health.BAD, why
    if Verdict.FAILED in verdicts:
        return Health.BAD, "a check fails"
    if firing:
        return Health.WATCH, "alerts firing: " + ", ".join(firing)
    if rollout.phase is Phase.PAUSED:
        if rollout.stage_passed:
            return Health.WATCH, "waiting for promote"
        return Health.WATCH, f"paused: {rollout.pause_reason or 'no reason given'}"
    if last is not None and last["cause"] == "check-failed":
        return Health.WATCH, "a check failed (within the failure limit)"
    if last is not None and last["cause"] in _WATCH_CAUSES:
        return Health.WATCH, last["reason"]
    if Verdict.ERROR in verdicts or Verdict.INCONCLUSIVE in verdicts:
        return Health.WATCH, "a check has no data or its source errs"
    if rollout.phase is Phase.SUCCEEDED:
        return Health.OK, "succeeded"
    return Health.OK, "checks passing" if verdicts else str(rollout.phase).lower()


def time_left(rollout: Rollout) -> float | None:
    """Seconds of passing analysis the current stage still needs (None: no stage timer runs).

    The engine credits only time observed by passing evaluations (``Rollout.credited``), so
    this is the least time left: a failing or data-less evaluation adds to it."""
    if rollout.phase is not Phase.PROGRESSING or rollout.stage_passed:
        return None
    return max(0.0, rollout.current_stage.duration - rollout.credited)
