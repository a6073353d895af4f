"""The stage engine, transition by transition (SPEC §3). Synchronous and clock-free."""

from __future__ import annotations

from dataclasses import replace

import pytest

from canaryd.core import stages
from canaryd.core.model import (
    ActionKind,
    Alert,
    Command,
    CommandKind,
    EffectKind,
    Findings,
    Limits,
    Measurement,
    Observed,
    OnInconclusive,
    Phase,
)
from support.enginekit import (
    bad,
    err,
    gated_policy,
    good,
    kinds,
    make_policy,
    nodata,
    run_evaluations,
    started,
    world,
)

# ---------------------------------------------------------------- starting and verifying


def test_a_new_rollout_waits_pending_until_the_canary_is_ready() -> None:
    s, first = stages.start("r1", "svc", "v2", make_policy(), 0.0)
    assert first.kind is ActionKind.START and s.phase is Phase.PENDING and s.weight == 0
    s2, acts = stages.decide(s, world(s, canary_ready=False), Findings(), 5.0)
    assert s2.phase is Phase.PENDING and acts == ()
    assert stages.reconcile(s2, Observed())[0].kind is EffectKind.ENSURE_CANARY


def test_a_canary_never_ready_is_rolled_back_at_the_progress_deadline() -> None:
    s, _ = stages.start("r1", "svc", "v2", make_policy(), 0.0)
    s, acts = stages.decide(s, world(s, canary_ready=False), Findings(), 300.0)
    assert s.phase is Phase.ROLLING_BACK and "not ready" in acts[-1].reason


def test_a_ready_canary_gets_the_first_stage_weight_as_an_absolute_value() -> None:
    s, _ = stages.start("r1", "svc", "v2", make_policy(), 0.0)
    s, acts = stages.decide(s, world(s), Findings(), 1.0)
    assert (s.phase, s.stage, s.weight, s.stable_weight) == (Phase.PROGRESSING, 0, 10, 90)
    assert kinds(acts) == [ActionKind.SET_WEIGHT]
    effects = stages.reconcile(s, world(s, weight=0))
    assert [(e.kind, e.weight) for e in effects] == [(EffectKind.SET_WEIGHT, 10)]


def test_the_stage_timer_starts_only_when_the_router_reports_the_weight() -> None:
    s, _ = stages.start("r1", "svc", "v2", make_policy(), 0.0)
    s, _ = stages.decide(s, world(s), Findings(), 0.0)
    s, acts = stages.decide(s, world(s, weight=0), Findings(), 3.0)
    assert s.stage_started_at is None and acts == ()
    s, acts = stages.decide(s, world(s, weight=None), Findings(), 4.0)  # cannot tell
    assert s.stage_started_at is None
    s, acts = stages.decide(s, world(s), Findings(), 5.0)
    assert s.stage_started_at == 5.0 and kinds(acts) == [ActionKind.STAGE_STARTED]
    assert s.next_eval_at == 10.0  # the next tick of the shared 10 s grid


def test_a_weight_the_router_never_applies_rolls_back_at_the_deadline() -> None:
    s, _ = stages.start("r1", "svc", "v2", make_policy(), 0.0)
    s, _ = stages.decide(s, world(s), Findings(), 0.0)
    s, acts = stages.decide(s, world(s, weight=0), Findings(), 300.0)
    assert s.phase is Phase.ROLLING_BACK and "did not apply" in acts[-1].reason


def test_initial_traffic_replaces_the_first_stage_and_drops_overtaken_stages() -> None:
    policy = stages.plan_stages(make_policy(), 60)
    assert [st.weight for st in policy.stages] == [60, 100]
    with pytest.raises(ValueError):
        stages.plan_stages(make_policy(), 0)


# ---------------------------------------------------------------- analysis


def test_passing_evaluations_credit_time_and_advance_after_the_duration() -> None:
    s = run_evaluations(started(), good(), 5)
    assert s.stage == 0 and s.credited == pytest.approx(50.0)
    s, acts = stages.decide(s, world(s), good(), s.next_eval_at or 0)
    assert (s.stage, s.weight) == (1, 50) and kinds(acts) == [ActionKind.SET_WEIGHT]
    assert s.stage_started_at is None and s.credited == 0.0


def test_a_call_that_is_not_due_does_not_consume_measurements() -> None:
    s = started()
    same, acts = stages.decide(s, world(s), bad(), 5.0)
    assert same == s and acts == ()


def test_the_first_failure_rolls_back_with_the_default_failure_limit() -> None:
    s = run_evaluations(started(), good(), 2)
    s, acts = stages.decide(s, world(s), bad(), s.next_eval_at or 0)
    assert s.phase is Phase.ROLLING_BACK and s.weight == 0
    assert kinds(acts) == [ActionKind.ROLLBACK] and "sr failed" in acts[0].reason
    assert acts[0].evidence["sr"] == {
        "verdict": "failed",
        "value": 0.9,
        "detail": "0.9 >= 0.99 breached",
    }


def test_failures_up_to_the_limit_hold_and_one_more_rolls_back() -> None:
    s = started(make_policy(limits=Limits(failure_limit=1)))
    s, acts = stages.decide(s, world(s), bad(), s.next_eval_at or 0)
    assert s.phase is Phase.PROGRESSING and kinds(acts) == [ActionKind.HOLD]
    s = run_evaluations(s, good(), 1)
    s, acts = stages.decide(s, world(s), bad(), s.next_eval_at or 0)
    assert s.phase is Phase.ROLLING_BACK


def test_no_data_holds_the_timer_then_pauses_at_the_inconclusive_limit() -> None:
    s = run_evaluations(started(), nodata(), 2)
    assert s.phase is Phase.PROGRESSING and s.credited == 0.0
    s, acts = stages.decide(s, world(s), nodata(), s.next_eval_at or 0)
    assert s.phase is Phase.PAUSED and kinds(acts) == [ActionKind.PAUSE]
    assert stages.next_wakeup(s) == s.next_eval_at  # still watched for failures while paused


def test_no_data_rolls_back_when_the_policy_says_so() -> None:
    policy = make_policy(limits=Limits(on_inconclusive=OnInconclusive.ROLLBACK))
    s = run_evaluations(started(policy), nodata(), 3)
    assert s.phase is Phase.ROLLING_BACK and "inconclusive" in (s.rollback_reason or "")


def test_a_good_evaluation_resets_the_inconclusive_count() -> None:
    s = run_evaluations(started(), nodata(), 2)
    s = run_evaluations(s, good(), 1)
    s = run_evaluations(s, nodata(), 2)
    assert s.phase is Phase.PROGRESSING


def test_a_missing_measurement_is_no_data_not_a_pass() -> None:
    s = run_evaluations(started(), Findings(), 7)
    assert s.stage == 0 and s.credited == 0.0


def test_nan_is_no_data() -> None:
    s = run_evaluations(started(), Findings((Measurement("sr", float("nan")),)), 1)
    assert s.consecutive_inconclusive == 1 and s.credited == 0.0


def test_source_errors_retry_on_backoff_and_roll_back_at_the_limit() -> None:
    s = started()
    at = s.next_eval_at or 0
    s, acts = stages.decide(s, world(s), err(), at)
    assert kinds(acts) == [ActionKind.HOLD] and s.next_eval_at == at + 2.0
    assert s.failures == {} and s.phase is Phase.PROGRESSING
    s = run_evaluations(s, err(), 2)
    assert s.phase is Phase.PROGRESSING
    s = run_evaluations(s, err(), 1)
    assert s.phase is Phase.ROLLING_BACK and "4 consecutive source errors" in (
        s.rollback_reason or ""
    )


def test_too_few_requests_hold_a_stage_whose_time_is_up() -> None:
    s = run_evaluations(started(), good(requests=1.0), 6)
    assert s.stage == 0 and s.credited >= 60.0
    s = run_evaluations(s, good(requests=4.0), 1)
    assert s.stage == 1


def test_a_stage_stretched_past_its_deadline_rolls_back() -> None:
    s = run_evaluations(started(), good(requests=0.0), 36)
    assert s.phase is Phase.ROLLING_BACK and "progress deadline" in (s.rollback_reason or "")
    assert s.rollback_at == 360.0  # 60 s of stage + 300 s of deadline


def test_the_final_stage_with_zero_duration_needs_one_passing_evaluation() -> None:
    s = run_evaluations(started(), good(), 6)
    s, _ = stages.decide(s, world(s), Findings(), s.weight_set_at or 0)
    s = run_evaluations(s, good(), 6)
    s, _ = stages.decide(s, world(s), Findings(), s.weight_set_at or 0)
    assert (s.stage, s.weight, s.phase) == (2, 100, Phase.PROGRESSING)
    s = run_evaluations(s, good(), 1)
    assert s.phase is Phase.PROMOTING


# ---------------------------------------------------------------- promotion and rollback


def promoting() -> tuple:  # type: ignore[type-arg]
    s = started()
    s, acts = stages.decide(
        s, world(s), Findings((), (), (Command(CommandKind.PROMOTE_FULL),)), 1.0
    )
    return s, acts


def test_promotion_updates_stable_then_shifts_traffic_back_then_removes_the_canary() -> None:
    s, acts = promoting()
    assert s.phase is Phase.PROMOTING and s.weight == 100 and kinds(acts) == [ActionKind.PROMOTE]
    assert [e.kind for e in stages.reconcile(s, world(s))] == [EffectKind.UPDATE_STABLE]
    s, acts = stages.decide(s, world(s, stable_image="v2"), Findings(), 2.0)
    assert s.weight == 0 and kinds(acts) == [ActionKind.SET_WEIGHT]
    s, acts = stages.decide(s, world(s, stable_image="v2"), Findings(), 3.0)
    assert kinds(acts) == [ActionKind.REMOVE_CANARY]
    assert [e.kind for e in stages.reconcile(s, world(s))] == [EffectKind.REMOVE_CANARY]
    s, acts = stages.decide(s, world(s, stable_image="v2", canary_present=False), Findings(), 4.0)
    assert s.phase is Phase.SUCCEEDED and kinds(acts) == [ActionKind.SUCCEEDED]


def test_a_stable_update_that_never_completes_fails_and_keeps_retrying() -> None:
    s, _ = promoting()
    s, _acts = stages.decide(s, world(s), Findings(), 400.0)
    assert s.phase is Phase.FAILED and "stable not updated" in (s.message or "")
    assert [e.kind for e in stages.reconcile(s, world(s))] == [EffectKind.UPDATE_STABLE]
    s, _ = stages.decide(s, world(s, stable_image="v2"), Findings(), 500.0)
    assert s.phase is Phase.PROMOTING and s.promote_step == "shift"


def test_rollback_completes_when_the_router_reports_zero_and_records_the_time() -> None:
    s = started()
    s, _ = stages.decide(s, world(s), bad(), s.next_eval_at or 0)
    t0 = s.rollback_at or 0
    s, acts = stages.decide(s, world(s, weight=10), Findings(), t0 + 0.5)
    assert s.phase is Phase.ROLLING_BACK and acts == ()
    s, acts = stages.decide(s, world(s), Findings(), t0 + 0.75)
    assert s.phase is Phase.ROLLED_BACK
    assert acts[0].evidence["time_to_rollback"] == pytest.approx(0.75)


def test_a_rollback_the_router_never_applies_fails_but_keeps_trying() -> None:
    s = started()
    s, _ = stages.decide(s, world(s), bad(), s.next_eval_at or 0)
    s, acts = stages.decide(s, world(s, weight=10), Findings(), 1000.0)
    assert s.phase is Phase.FAILED and kinds(acts) == [ActionKind.FAILED]
    assert [(e.kind, e.weight) for e in stages.reconcile(s, world(s, weight=10))] == [
        (EffectKind.SET_WEIGHT, 0)
    ]
    s, _ = stages.decide(s, world(s), Findings(), 1001.0)
    assert s.phase is Phase.ROLLED_BACK


def test_a_rolled_back_canary_is_removed_after_the_scale_down_delay() -> None:
    s = started()
    s, _ = stages.decide(s, world(s), bad(), s.next_eval_at or 0)
    s, _ = stages.decide(s, world(s), Findings(), 20.0)
    assert s.phase is Phase.ROLLED_BACK and stages.next_wakeup(s) == 40.0
    assert stages.reconcile(s, world(s)) == ()  # kept during the delay
    s, acts = stages.decide(s, world(s), Findings(), 40.0)
    assert kinds(acts) == [ActionKind.REMOVE_CANARY]
    assert [e.kind for e in stages.reconcile(s, world(s))] == [EffectKind.REMOVE_CANARY]
    again, acts = stages.decide(s, world(s), Findings(), 50.0)
    assert again == s and acts == ()


# ---------------------------------------------------------------- alerts


def alert(
    severity: str, status: str = "firing", at: float = 5.0, name: str = "A", fp: str = "f1"
) -> Findings:
    labels = {"alertname": name, "severity": severity}
    return Findings(alerts=(Alert(fp, status, labels, at),))


def test_a_critical_alert_rolls_back_immediately() -> None:
    s = started()
    s, acts = stages.decide(s, world(s), alert("critical"), 5.0)
    assert s.phase is Phase.ROLLING_BACK and s.rollback_at == 5.0
    assert acts[0].evidence["alert"] == "A"


def test_an_alert_from_before_the_rollout_is_ignored_unless_the_rule_says_so() -> None:
    s = started(at=100.0)
    s2, acts = stages.decide(s, world(s), alert("critical", at=50.0), 105.0)
    assert s2.phase is Phase.PROGRESSING and kinds(acts) == [ActionKind.IGNORE]
    rules = tuple(replace(r, include_preexisting=True) for r in s.policy.alert_rules)
    s3 = replace(s, policy=replace(s.policy, alert_rules=rules))
    s3, _ = stages.decide(s3, world(s3), alert("critical", at=50.0), 105.0)
    assert s3.phase is Phase.ROLLING_BACK


def test_the_same_alert_delivered_twice_is_applied_once() -> None:
    s = started()
    s, first = stages.decide(s, world(s), alert("info"), 5.0)
    s, second = stages.decide(s, world(s), alert("info"), 6.0)
    assert kinds(first) == [ActionKind.OBSERVE] and second == ()


def test_a_pause_alert_pauses_and_resumes_a_cooldown_after_it_resolves() -> None:
    s = started()
    s, acts = stages.decide(s, world(s), alert("warning"), 5.0)
    assert s.phase is Phase.PAUSED and kinds(acts) == [ActionKind.PAUSE]
    s, _ = stages.decide(s, world(s), alert("warning", status="resolved"), 50.0)
    assert s.phase is Phase.PAUSED and s.resume_at == 80.0 and stages.next_wakeup(s) is not None
    s, acts = stages.decide(s, world(s), Findings(), 79.0)
    assert s.phase is Phase.PAUSED
    s, acts = stages.decide(s, world(s), Findings(), 80.0)
    assert s.phase is Phase.PROGRESSING and kinds(acts) == [ActionKind.RESUME]
    assert s.paused_total == pytest.approx(75.0)


def test_a_paused_rollout_still_rolls_back_on_a_failed_check() -> None:
    s = started()
    s, _ = stages.decide(s, world(s), alert("warning"), 5.0)
    s, _ = stages.decide(s, world(s), bad(), s.next_eval_at or 0)
    assert s.phase is Phase.ROLLING_BACK


def test_a_second_pause_alert_keeps_the_rollout_paused_until_both_resolve() -> None:
    s = started()
    s, _ = stages.decide(s, world(s), alert("warning", fp="a"), 5.0)
    s, _ = stages.decide(s, world(s), alert("warning", fp="b"), 6.0)
    s, _ = stages.decide(s, world(s), alert("warning", "resolved", fp="a"), 7.0)
    assert s.resume_at is None
    s, _ = stages.decide(s, world(s), alert("warning", "resolved", fp="b"), 8.0)
    assert s.resume_at == 38.0


def test_freeze_and_observe_alerts_only_record() -> None:
    s = started()
    freeze = Findings(alerts=(Alert("fz", "firing", {"alertname": "ChangeFreeze"}, 5.0),))
    s2, acts = stages.decide(s, world(s), freeze, 5.0)
    assert s2.phase is Phase.PROGRESSING and "freeze" in acts[0].reason
    s3, acts = stages.decide(s, world(s), alert("none"), 5.0)
    assert kinds(acts) == [ActionKind.IGNORE] and s3.phase is Phase.PROGRESSING


# ---------------------------------------------------------------- commands and gates


def cmd(kind: CommandKind, **kw: object) -> Findings:
    return Findings(commands=(Command(kind, by="alice", **kw),))  # type: ignore[arg-type]


def test_a_manual_gate_pauses_after_the_analysis_passes_and_waits_for_promote() -> None:
    s = run_evaluations(started(gated_policy()), good(), 6)
    assert s.phase is Phase.PAUSED and s.stage_passed and "manual promote" in (s.pause_reason or "")
    assert stages.check_command(s, Command(CommandKind.RESUME)) is not None
    s, _acts = stages.decide(s, world(s), cmd(CommandKind.PROMOTE), 100.0)
    assert (s.phase, s.stage, s.weight) == (Phase.PROGRESSING, 1, 50)


def test_promote_skips_the_rest_of_the_current_stage() -> None:
    s, acts = stages.decide(started(), world(started()), cmd(CommandKind.PROMOTE), 1.0)
    assert s.stage == 1 and "alice" in acts[0].reason


def test_pause_and_resume_hold_the_timer_but_not_the_deadline() -> None:
    s = run_evaluations(started(), good(), 2)
    s, _ = stages.decide(s, world(s), cmd(CommandKind.PAUSE), 21.0)
    s = run_evaluations(s, good(), 50)
    assert s.phase is Phase.PAUSED and s.credited == pytest.approx(20.0)
    s, _acts = stages.decide(s, world(s), cmd(CommandKind.RESUME), 600.0)
    assert s.phase is Phase.PROGRESSING and s.paused_total == pytest.approx(579.0)
    s = run_evaluations(s, good(), 4)
    assert s.stage == 1 and s.phase is Phase.PROGRESSING  # 20 s before + 40 s after


def test_set_weight_pauses_at_that_weight_and_resume_restarts_the_stage() -> None:
    s = run_evaluations(started(), good(), 2)
    s, acts = stages.decide(s, world(s), cmd(CommandKind.SET_WEIGHT, weight=30), 21.0)
    assert (s.phase, s.weight) == (Phase.PAUSED, 30)
    assert ActionKind.SET_WEIGHT in kinds(acts)
    s, acts = stages.decide(s, world(s), cmd(CommandKind.RESUME), 30.0)
    assert (s.phase, s.weight, s.credited, s.stage_started_at) == (Phase.PROGRESSING, 10, 0.0, None)


def test_operator_rollback_records_who_and_why() -> None:
    s = started()
    s, _acts = stages.decide(s, world(s), cmd(CommandKind.ROLLBACK, reason="bad logs"), 3.0)
    assert (
        s.phase is Phase.ROLLING_BACK and s.rollback_reason == "manual rollback by alice: bad logs"
    )


@pytest.mark.parametrize(
    ("phase", "kind", "allowed"),
    [
        (Phase.PROGRESSING, CommandKind.PAUSE, True),
        (Phase.PROGRESSING, CommandKind.RESUME, False),
        (Phase.PAUSED, CommandKind.PAUSE, False),
        (Phase.PAUSED, CommandKind.RESUME, True),
        (Phase.ROLLING_BACK, CommandKind.ROLLBACK, False),
        (Phase.ROLLING_BACK, CommandKind.PROMOTE, False),
        (Phase.ROLLED_BACK, CommandKind.RESUME, False),
        (Phase.SUCCEEDED, CommandKind.ROLLBACK, False),
        (Phase.PENDING, CommandKind.ROLLBACK, True),
        (Phase.PROMOTING, CommandKind.PAUSE, False),
        (Phase.PROMOTING, CommandKind.ROLLBACK, True),
    ],
)
def test_commands_are_checked_against_the_phase(
    phase: Phase, kind: CommandKind, allowed: bool
) -> None:
    s = replace(started(), phase=phase, promote_step="update-stable")
    assert (stages.check_command(s, Command(kind)) is None) is allowed


def test_a_refused_command_is_recorded_and_changes_nothing() -> None:
    s = started()
    s2, acts = stages.decide(s, world(s), cmd(CommandKind.RESUME), 1.0)
    assert kinds(acts) == [ActionKind.IGNORE] and s2 == s


def test_set_weight_outside_0_to_100_is_refused() -> None:
    assert stages.check_command(started(), Command(CommandKind.SET_WEIGHT, weight=101))


def test_a_terminal_rollout_ignores_everything() -> None:
    s = replace(started(), phase=Phase.SUCCEEDED)
    assert stages.decide(s, world(s), alert("critical"), 9.0) == (s, ())


# ---------------------------------------------------------------- reconcile


def test_reconcile_asks_for_nothing_once_the_world_matches() -> None:
    s = started()
    assert stages.reconcile(s, world(s)) == ()


def test_reconcile_repairs_weight_drift_every_time_it_is_asked() -> None:
    s = started()
    drift = world(s, weight=40)
    assert stages.reconcile(s, drift) == stages.reconcile(s, drift)
    assert stages.reconcile(s, drift)[0].weight == 10


def test_a_rolling_back_rollout_never_asks_for_the_canary_to_be_created() -> None:
    s = started()
    s, _ = stages.decide(s, world(s), bad(), s.next_eval_at or 0)
    effects = stages.reconcile(s, Observed(weight=10))
    assert [e.kind for e in effects] == [EffectKind.SET_WEIGHT]


def test_a_superseded_rollout_hands_its_canary_to_the_successor_without_removing_it() -> None:
    s = started()
    s, _ = stages.decide(s, world(s), cmd(CommandKind.ROLLBACK, reason="superseded"), 3.0)
    same, acts = stages.hand_over(s, "r2")
    assert same == s and acts == ()  # not rolled back yet
    s, _ = stages.decide(s, world(s), Findings(), 4.0)
    s, acts = stages.hand_over(s, "r2")
    assert s.successor == "r2" and s.cleanup_at is None and "r2" in acts[0].reason
    assert stages.reconcile(s, world(s)) == ()
    assert stages.decide(s, world(s), Findings(), 100.0) == (s, ())


def test_cleanup_rolls_back_and_removes_the_canary_without_waiting() -> None:
    s = started()
    s, acts = stages.decide(s, world(s), cmd(CommandKind.CLEANUP), 3.0)
    assert s.phase is Phase.ROLLING_BACK and s.cleanup_now and "cleanup by alice" in acts[0].reason
    s, _ = stages.decide(s, world(s), Findings(), 4.0)
    assert s.phase is Phase.ROLLED_BACK and s.cleanup_at == 4.0
    s, acts = stages.decide(s, world(s), Findings(), 4.0)
    assert kinds(acts) == [ActionKind.REMOVE_CANARY]
    assert [e.kind for e in stages.reconcile(s, world(s))] == [EffectKind.REMOVE_CANARY]


def test_cleanup_of_a_rolled_back_rollout_skips_the_scale_down_delay() -> None:
    s = started()
    s, _ = stages.decide(s, world(s), bad(), s.next_eval_at or 0)
    s, _ = stages.decide(s, world(s), Findings(), 11.0)
    assert s.cleanup_at == 31.0
    s, acts = stages.decide(s, world(s), cmd(CommandKind.CLEANUP), 12.0)
    assert s.cleanup_at is None and kinds(acts) == [ActionKind.REMOVE_CANARY]
    assert stages.check_command(s, Command(CommandKind.CLEANUP)) is not None


def test_evaluations_stay_on_the_shared_grid_when_they_run_late() -> None:
    s = started()
    s, _ = stages.decide(s, world(s), good(), 10.3)  # due at 10, ran 0.3 s late
    assert s.next_eval_at == 20.0
    s, _ = stages.decide(s, world(s), good(), 45.0)  # far behind: the next tick of the grid
    assert s.next_eval_at == 50.0


def test_rollouts_started_at_different_moments_are_evaluated_at_the_same_instants() -> None:
    a, b = started(at=3.0), started(at=7.5)
    assert a.next_eval_at == b.next_eval_at == 10.0
    assert stages.next_tick(10.0, 10.0) == 20.0 and stages.next_tick(9.999999, 10.0) == 10.0
