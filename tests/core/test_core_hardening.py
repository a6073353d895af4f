"""Issue 7, the pure engine's side: rollback during the stable update (3), refused commands
identified per command (4), many alerts in one pass (8), non-finite measurements (11)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace

import pytest

from canaryd.core import analysis, codec, stages
from canaryd.core.model import (
    ActionKind,
    Alert,
    Check,
    Command,
    CommandKind,
    Effect,
    EffectKind,
    Findings,
    Measurement,
    Observed,
    Phase,
    Rollout,
    Verdict,
)
from canaryd.offline.simulate import Timeline, World, settle
from support.enginekit import good, kinds, make_policy, started, world

# ---------------------------------------------------------------- 3: rollback while promoting


def promoting(stable: str | None = "v1") -> Rollout:
    """A rollout that has just begun updating the stable (it observed ``stable`` until then)."""
    s, _ = stages.start("r1", "svc", "v2", make_policy(), 0.0)
    s, _ = stages.decide(s, world(s, stable_image=stable), Findings(), 0.0)
    s, _ = stages.decide(s, world(s, stable_image=stable), Findings(), 0.0)
    full = Findings(commands=(Command(CommandKind.PROMOTE_FULL),))
    s, _ = stages.decide(s, world(s, stable_image=stable), full, 1.0)
    assert s.phase is Phase.PROMOTING and s.promote_step == "update-stable"
    return s


def rolling(s: Rollout, **changes: object) -> Observed:
    """The world halfway through the stable's rolling update: no single stable image."""
    return world(s, stable_image=None, **changes)


def test_the_first_observed_stable_image_is_recorded_and_kept() -> None:
    s = promoting()
    assert s.previous_image == "v1"
    s, _ = stages.decide(s, world(s, stable_image="v2"), Findings(), 2.0)
    assert s.previous_image == "v1"  # the new image on stable never replaces it


def test_a_rollback_during_the_stable_update_restores_the_previous_image() -> None:
    s = promoting()
    rollback = Findings(commands=(Command(CommandKind.ROLLBACK, by="bob"),))
    s, acts = stages.decide(s, rolling(s), rollback, 2.0)
    assert s.phase is Phase.ROLLING_BACK and kinds(acts) == [ActionKind.ROLLBACK]
    effects = stages.reconcile(s, rolling(s, weight=100))
    assert Effect(EffectKind.UPDATE_STABLE, image="v1") in effects
    assert Effect(EffectKind.SET_WEIGHT, weight=0) in effects
    # weight 0 is not enough: the stable still runs (part of) the new image
    s, acts = stages.decide(s, rolling(s), Findings(), 3.0)
    assert s.phase is Phase.ROLLING_BACK and acts == ()
    s, acts = stages.decide(s, world(s, stable_image="v2"), Findings(), 4.0)
    assert s.phase is Phase.ROLLING_BACK
    s, acts = stages.decide(s, world(s, stable_image="v1"), Findings(), 5.0)
    assert s.phase is Phase.ROLLED_BACK and kinds(acts) == [ActionKind.ROLLED_BACK]
    assert "v1" in acts[0].reason
    # once rolled back, canaryd no longer manages the stable's image
    effects = stages.reconcile(s, world(s, stable_image="v3"))
    assert all(e.kind is not EffectKind.UPDATE_STABLE for e in effects)


def test_a_critical_alert_during_the_stable_update_rolls_back_and_restores() -> None:
    s = promoting()
    critical = Alert("fp", "firing", {"alertname": "Down", "severity": "critical"}, 2.0)
    s, _ = stages.decide(s, rolling(s), Findings(alerts=(critical,)), 2.0)
    assert s.phase is Phase.ROLLING_BACK and "Down" in (s.rollback_reason or "")
    assert Effect(EffectKind.UPDATE_STABLE, image="v1") in stages.reconcile(s, rolling(s))


def test_a_restore_past_the_deadline_fails_and_keeps_retrying() -> None:
    s = promoting()
    s, _ = stages.decide(s, rolling(s), Findings(commands=(Command(CommandKind.ROLLBACK),)), 2.0)
    s, acts = stages.decide(s, world(s, stable_image="v2"), Findings(), 302.0)
    assert s.phase is Phase.FAILED and kinds(acts) == [ActionKind.FAILED]
    assert "v1" in (s.message or "")
    assert Effect(EffectKind.UPDATE_STABLE, image="v1") in stages.reconcile(
        s, world(s, stable_image="v2")
    )
    s, acts = stages.decide(s, world(s, stable_image="v1"), Findings(), 400.0)
    assert s.phase is Phase.ROLLED_BACK


def test_without_a_known_previous_image_a_rollback_is_refused_once_the_update_began() -> None:
    s = promoting(stable=None)  # platform "none" reports no stable image
    assert s.previous_image is None
    for kind in (CommandKind.ROLLBACK, CommandKind.CLEANUP):
        refusal = stages.check_command(s, Command(kind))
        assert refusal is not None and "previous stable image" in refusal
    critical = Alert("fp", "firing", {"alertname": "Down", "severity": "critical"}, 2.0)
    after, acts = stages.decide(s, world(s, stable_image=None), Findings(alerts=(critical,)), 2.0)
    assert after.phase is Phase.PROMOTING and after.rollback_reason is None
    assert any("previous stable image" in a.reason for a in acts)  # said, not silently dropped


@pytest.mark.parametrize(
    ("phase", "step", "previous", "allowed"),
    [
        (Phase.PROMOTING, "update-stable", "v1", True),
        (Phase.PROMOTING, "update-stable", None, False),
        (Phase.FAILED, "update-stable", "v1", True),
        (Phase.FAILED, "update-stable", None, False),
        (Phase.PROMOTING, "shift", "v1", False),
        (Phase.PROMOTING, "remove", "v1", False),
        (Phase.PROGRESSING, None, None, True),  # nothing touched the stable yet
    ],
)
def test_rollback_while_promoting_depends_on_the_recorded_image(
    phase: Phase, step: str | None, previous: str | None, allowed: bool
) -> None:
    s = replace(started(), phase=phase, promote_step=step, previous_image=previous)
    assert (stages.check_command(s, Command(CommandKind.ROLLBACK)) is None) is allowed


def test_a_record_without_the_previous_image_still_loads() -> None:
    record = codec.rollout_to_dict(promoting())
    assert record["previous_image"] == "v1"
    del record["previous_image"]
    old = codec.rollout_from_dict(json.loads(json.dumps(record)))
    assert old.previous_image is None
    assert codec.rollout_from_dict(codec.rollout_to_dict(promoting())) == promoting()


@dataclass
class RollingWorld(World):
    """The simulator's world, but a stable update takes ``rollout_time`` seconds, during which
    the platform reports no single stable image (as the docker and kubernetes platforms do)."""

    rollout_time: float = 60.0
    now: float = 0.0
    updating_to: str | None = None
    update_began: float = 0.0

    def observe(self, state: Rollout, timeline: Timeline, now: float) -> Observed:
        self.now = now
        if self.updating_to is not None and now >= self.update_began + self.rollout_time:
            self.stable_image, self.updating_to = self.updating_to, None
        seen = super().observe(state, timeline, now)
        return replace(seen, stable_image=None) if self.updating_to else seen

    def apply(self, effects: object) -> None:
        for effect in effects:  # type: ignore[attr-defined]
            if effect.kind is EffectKind.UPDATE_STABLE:
                if effect.image not in (self.updating_to, self.stable_image):
                    self.updating_to, self.update_began = effect.image, self.now
            else:
                super().apply([effect])


def test_simulated_rollback_in_the_middle_of_the_rolling_update_restores_the_stable() -> None:
    """promote --full at 100, a critical alert at 130 while the stable rolls (60 s)."""
    timeline = Timeline.parse(
        [
            '{"t": 0, "check": "sr", "value": 0.999}',
            '{"t": 100, "command": "promote-full"}',
            '{"t": 130, "alert": {"labels": {"alertname": "Down", "severity": "critical"}}}',
        ]
    )
    universe = RollingWorld(stable_image="v1")
    log: list[tuple[float, str, str]] = []

    def persist(s: Rollout, actions: tuple[object, ...], now: float, _m: object) -> None:
        log.extend((now, str(a.kind), a.reason) for a in actions)  # type: ignore[attr-defined]

    state, _ = stages.start("sim", "svc", "v2", make_policy(), 0.0)
    for tick in range(0, 400, 5):
        now = float(tick)
        state = settle(state, universe, timeline, now, persist, timeline.findings_at(now))
    assert state.phase is Phase.ROLLED_BACK, log
    assert universe.stable_image == "v1" and universe.updating_to is None
    rolled_back = next(t for t, kind, _ in log if kind == "rolled-back")
    assert rolled_back >= 130 + 60  # only once the stable runs v1 again


# ---------------------------------------------------------------- 4: refused commands, per command


def test_each_refused_command_names_its_index_kind_and_reason() -> None:
    s = started()
    commands = (
        Command(CommandKind.ROLLBACK, by="a"),
        Command(CommandKind.PROMOTE_FULL, by="b"),
        Command(CommandKind.PAUSE, by="c"),
        Command(CommandKind.ROLLBACK, by="d"),
    )
    s, acts = stages.decide(s, world(s), Findings(commands=commands), 3.0)
    assert s.phase is Phase.ROLLING_BACK
    refused = [a for a in acts if a.kind is ActionKind.IGNORE]
    assert [a.evidence["command_index"] for a in refused] == [1, 2, 3]
    assert [a.evidence["command"] for a in refused] == ["promote-full", "pause", "rollback"]
    assert refused[2].evidence["refused"] == "a rollback is already under way"
    for a in refused:
        assert a.reason.endswith(str(a.evidence["refused"]))
    accepted = [a for a in acts if a.kind is not ActionKind.IGNORE]
    assert all("refused" not in a.evidence for a in accepted)


def test_refusals_on_a_terminal_rollout_are_identified_too() -> None:
    s = replace(started(), phase=Phase.SUCCEEDED)
    commands = (Command(CommandKind.PAUSE), Command(CommandKind.RESUME))
    _, acts = stages.decide(s, world(s), Findings(commands=commands), 3.0)
    assert [a.evidence["command_index"] for a in acts] == [0, 1]
    assert all("already ended" in str(a.evidence["refused"]) for a in acts)


# ---------------------------------------------------------------- 8: many alerts in one pass


def flood(count: int, at: float = 5.0) -> list[Alert]:
    return [
        Alert(f"fp{i}", "firing", {"alertname": f"Noise{i}", "team": "other"}, at)
        for i in range(count)
    ]


def test_48000_unmatched_alerts_make_one_decision_and_a_small_record() -> None:
    s = started()
    critical = Alert("crit", "firing", {"alertname": "Down", "severity": "critical"}, 5.0)
    noise = flood(48_000)
    alerts = [*noise[:24_000], critical, *noise[24_000:]]
    s, acts = stages.decide(s, world(s), Findings(alerts=tuple(alerts)), 5.0)
    assert s.phase is Phase.ROLLING_BACK and "Down" in (s.rollback_reason or "")
    ignored = [a for a in acts if a.kind is ActionKind.IGNORE]
    assert len(acts) <= 3 and len(ignored) == 1
    assert ignored[0].evidence["count"] == 48_000 and "48000 alerts" in ignored[0].reason
    assert len(json.dumps(codec.action_to_dict(ignored[0]))) < 2_000
    assert len(s.handled_alerts) <= stages.HANDLED_ALERTS_KEPT
    assert len(json.dumps(codec.rollout_to_dict(s))) < 200_000


def test_matched_alerts_are_remembered_up_to_a_bound_newest_first() -> None:
    s = started()
    many = [
        Alert(f"i{i}", "firing", {"alertname": "Info", "severity": "info"}, 5.0 + i)
        for i in range(stages.HANDLED_ALERTS_KEPT + 50)
    ]
    s, acts = stages.decide(s, world(s), Findings(alerts=tuple(many)), 5.0)
    assert len(s.handled_alerts) == stages.HANDLED_ALERTS_KEPT
    assert many[-1].key in s.handled_alerts and many[0].key not in s.handled_alerts
    # a re-delivered recent alert is still applied once
    _, acts = stages.decide(s, world(s), Findings(alerts=(many[-1],)), 6.0)
    assert acts == ()


def test_the_same_alert_twice_in_one_pass_is_applied_once() -> None:
    s = started()
    info = Alert("i", "firing", {"alertname": "Info", "severity": "info"}, 5.0)
    s, acts = stages.decide(s, world(s), Findings(alerts=(info, info)), 5.0)
    assert kinds(acts) == [ActionKind.OBSERVE]


def test_unmatched_alerts_are_summarised_and_not_remembered() -> None:
    """No rule can ever match them (the policy is fixed for the rollout), so forgetting them
    costs at most one more summary on a re-delivery; keeping them would grow the record."""
    s = started()
    s, acts = stages.decide(s, world(s), Findings(alerts=tuple(flood(48_000))), 5.0)
    assert s.handled_alerts == frozenset()  # unmatched alerts are not remembered
    assert kinds(acts) == [ActionKind.IGNORE]


# ---------------------------------------------------------------- 11: non-finite values


@pytest.mark.parametrize("op", [">=", ">", "<=", "<"])
@pytest.mark.parametrize("value", [math.inf, -math.inf])
def test_an_infinite_value_never_passes_a_threshold(op: str, value: float) -> None:
    check = Check("c", "q", op, 0.5)
    result = analysis.assess(check, Measurement("c", value))
    assert result.verdict is Verdict.FAILED
    assert "not a finite" in result.detail


def test_nan_stays_no_data() -> None:
    result = analysis.assess(Check("c", "q", ">=", 0.5), Measurement("c", math.nan))
    assert result.verdict is Verdict.INCONCLUSIVE


def test_an_infinite_success_rate_rolls_back_instead_of_promoting() -> None:
    s = started()
    s, acts = stages.decide(s, world(s), good(math.inf), s.next_eval_at or 0)
    assert s.phase is Phase.ROLLING_BACK and "not a finite" in (s.rollback_reason or "")
    json.dumps(codec.action_to_dict(acts[0]), allow_nan=False)  # evidence stays valid JSON


def test_non_finite_request_counts_never_satisfy_min_requests() -> None:
    s = started()
    for _ in range(8):
        for requests in (math.nan, math.inf):
            s, _ = stages.decide(s, world(s), good(requests=requests), s.next_eval_at or 0)
    assert s.stage == 0 and s.stage_requests == 0.0


def test_more_rollback_alerts_during_a_rollback_add_nothing_to_the_history() -> None:
    s = started()
    two = tuple(
        Alert(fp, "firing", {"alertname": "Down", "severity": "critical"}, 5.0) for fp in "ab"
    )
    s, acts = stages.decide(s, world(s), Findings(alerts=two), 5.0)
    assert kinds(acts) == [ActionKind.ROLLBACK] and len(s.handled_alerts) == 2
