"""Properties of the engine for any sequence of samples, alerts, commands and router replies."""

from __future__ import annotations

import json
import math
from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from canaryd.config.policies import load_policy
from canaryd.core import analysis, codec, stages
from canaryd.core.model import (
    ActionKind,
    Alert,
    Check,
    Command,
    CommandKind,
    Counts,
    EffectKind,
    Findings,
    Measurement,
    NoData,
    Observed,
    Phase,
    Rollout,
    Verdict,
)
from canaryd.offline.simulate import World
from support.enginekit import make_policy, started, world

FAST_TRACK = load_policy("rules/matriz-fast-track.yaml")

values = st.one_of(
    st.none(),
    st.just(float("nan")),
    st.just(math.inf),
    st.just(-math.inf),
    st.floats(min_value=0.0, max_value=2.0, allow_nan=False),
    st.sampled_from([0.999, 0.1, 0.0004, 0.995, 0.25]),
)
measurement_sets = st.lists(
    st.builds(
        Measurement,
        check=st.sampled_from(["sr", "success-rate", "latency-p95", "error-rate", "health-score"]),
        value=values,
        error=st.one_of(st.none(), st.just("timeout")),
    ),
    max_size=5,
)
alerts = st.builds(
    Alert,
    fingerprint=st.sampled_from(["a", "b", "c"]),
    status=st.sampled_from(["firing", "resolved"]),
    labels=st.fixed_dictionaries(
        {"severity": st.sampled_from(["critical", "warning", "info", "none"])}
    ),
    starts_at=st.floats(min_value=-100, max_value=3000, allow_nan=False),
)
commands = st.builds(
    Command,
    kind=st.sampled_from(list(CommandKind)),
    weight=st.one_of(st.none(), st.integers(-5, 105)),
)
steps = st.lists(
    st.tuples(
        st.floats(min_value=0.0, max_value=120.0, allow_nan=False),  # time passes
        measurement_sets,
        st.lists(alerts, max_size=2),
        st.lists(commands, max_size=1),
        st.sampled_from(["applies", "applies", "applies", "ignores", "cannot-tell"]),
        st.integers(0, 400),  # canary requests since the previous evaluation
    ),
    max_size=60,
)
policies = st.sampled_from([make_policy(), FAST_TRACK])


def drive(policy: object, script: list, use_commands: bool = True) -> list[tuple[Rollout, list]]:  # type: ignore[type-arg]
    """Run the engine through ``script`` with a world that may ignore or garble effects."""
    state, first = stages.start("r", "t", "v2", policy, 0.0)  # type: ignore[arg-type]
    world = World()
    now = 0.0
    trace: list[tuple[Rollout, list]] = [(state, [first])]  # type: ignore[type-arg]
    for dt, ms, al, cmds, router, requests in script:
        now += dt
        reported = world.weight if router != "cannot-tell" else None
        observed = Observed(
            weight=reported,
            canary_ready=world.canary_present,
            canary_present=world.canary_present,
            stable_image=world.stable_image,
        )
        findings = Findings(
            tuple(ms), tuple(al), tuple(cmds) if use_commands else (), requests=float(requests)
        )
        state, actions = stages.decide(state, observed, findings, now)
        trace.append((state, list(actions)))
        effects = stages.reconcile(state, observed)
        if router != "ignores":
            world.apply(effects)
        else:
            world.apply(e for e in effects if e.kind is not EffectKind.SET_WEIGHT)
    return trace


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policy=policies, script=steps)
def test_weights_stay_within_0_and_100_and_always_sum_to_100(policy: object, script: list) -> None:  # type: ignore[type-arg]
    for state, actions in drive(policy, script):
        assert 0 <= state.weight <= 100
        assert state.weight + state.stable_weight == 100
        for action in actions:
            assert action.weight is None or 0 <= action.weight <= 100


@settings(max_examples=300, deadline=None)
@given(policy=policies, script=steps)
def test_a_rollback_is_never_followed_by_a_weight_increase(policy: object, script: list) -> None:  # type: ignore[type-arg]
    rolled_back = False
    for state, actions in drive(policy, script):
        if rolled_back:
            assert state.weight == 0
            assert state.phase in (Phase.ROLLING_BACK, Phase.ROLLED_BACK, Phase.FAILED)
        if any(a.kind is ActionKind.ROLLBACK for a in actions):
            rolled_back = True


@settings(max_examples=300, deadline=None)
@given(policy=policies, script=steps)
def test_missing_data_never_promotes(policy: object, script: list) -> None:  # type: ignore[type-arg]
    blind = [
        (dt, [replace(m, value=None) if m.error is None else m for m in ms], al, cmds, router, req)
        for dt, ms, al, cmds, router, req in script
    ]
    for state, _ in drive(policy, blind, use_commands=False):
        assert state.phase not in (Phase.PROMOTING, Phase.SUCCEEDED)
        assert state.stage == 0


@settings(max_examples=300, deadline=None)
@given(policy=policies, script=steps)
def test_a_stage_only_advances_after_a_passing_evaluation_of_its_checks(
    policy: object,
    script: list,  # type: ignore[type-arg]
) -> None:
    trace = drive(policy, script, use_commands=False)
    for (before, _), (after, actions), step in zip(trace, trace[1:], script, strict=False):
        advanced = after.stage > before.stage or (
            after.phase is Phase.PROMOTING and before.phase is not Phase.PROMOTING
        )
        if advanced:
            assert before.stage_started_at is not None
            assert any(a.kind in (ActionKind.SET_WEIGHT, ActionKind.PROMOTE) for a in actions)
            measured = {m.check: m for m in step[1]}  # later duplicates win, as in decide
            for name in before.current_stage.checks:
                check = before.policy.checks[name]
                verdict = analysis.assess(check, measured.get(name)).verdict
                assert verdict is Verdict.SUCCESSFUL, (name, measured.get(name))


non_finite = st.sampled_from([math.nan, math.inf, -math.inf])
CHECK_NAMES = ["sr", "success-rate", "latency-p95", "error-rate", "health-score"]
ROUTER = ("applies", 1000)  # a router that applies everything; plenty of canary requests


@settings(max_examples=300, deadline=None)
@given(
    op=st.sampled_from(sorted(analysis.OPERATORS)),
    threshold=st.floats(allow_nan=False),
    value=non_finite,
    no_data=st.sampled_from(["inconclusive", "fail"]),
)
def test_no_non_finite_value_ever_passes(
    op: str, threshold: float, value: float, no_data: str
) -> None:
    check = Check("c", "q", op, threshold, no_data=NoData(no_data))
    result = analysis.assess(check, Measurement("c", value))
    assert result.verdict is not Verdict.SUCCESSFUL
    assert result.value is None or math.isfinite(result.value)


@settings(max_examples=200, deadline=None)
@given(value=st.floats(0.0, 1.0), bad=non_finite, field=st.integers(0, 3))
def test_non_finite_counts_never_pass(value: float, bad: float, field: int) -> None:
    numbers = [100.0, 1.0, 100.0, 1.0]
    numbers[field] = bad
    m = Measurement("c", value, counts=Counts(*numbers))
    assert analysis.assess(Check("c", "q", ">=", 0.0), m).verdict is not Verdict.SUCCESSFUL


@settings(max_examples=100, deadline=None)
@given(
    policy=policies,
    poison=st.lists(st.lists(non_finite, min_size=5, max_size=5), min_size=40, max_size=80),
    cadence=st.floats(min_value=1.0, max_value=60.0),
)
def test_non_finite_values_never_promote(
    policy: object, poison: list[list[float]], cadence: float
) -> None:
    """Every check measured at every step, every value non-finite, a router that applies
    everything and plenty of traffic: no stage ever passes."""
    script: list[tuple[object, ...]] = [
        (
            cadence,
            [Measurement(*pair) for pair in zip(CHECK_NAMES, vs, strict=True)],
            [],
            [],
            *ROUTER,
        )
        for vs in poison
    ]
    for state, _ in drive(policy, script, use_commands=False):
        assert state.phase not in (Phase.PROMOTING, Phase.SUCCEEDED)
        assert state.stage == 0


any_text = st.text(st.characters(codec="utf-8", exclude_categories=()), max_size=12) | st.text(
    st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), max_size=3
)


@settings(max_examples=200, deadline=None)
@given(
    noise=st.lists(
        st.builds(
            Alert,
            fingerprint=any_text,
            status=st.sampled_from(["firing", "resolved"]),
            labels=st.dictionaries(any_text, any_text, max_size=4),
            starts_at=st.floats(allow_nan=False, allow_infinity=False, min_value=-1e9),
        ),
        max_size=20,
    ),
    reason=st.text(max_size=20)
    | st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), max_size=3),
)
def test_any_unicode_in_alerts_and_reasons_still_lets_a_critical_alert_roll_back(
    noise: list[Alert], reason: str
) -> None:
    """Arbitrary labels (lone surrogates included) and command reasons never break a pass,
    the record still encodes, and a critical alert afterwards still rolls back."""
    s = started()
    pause = Findings(alerts=tuple(noise), commands=(Command(CommandKind.PAUSE, reason=reason),))
    s, _ = stages.decide(s, world(s), pause, 5.0)
    json.dumps(codec.rollout_to_dict(s))
    critical = Alert("crit", "firing", {"alertname": "Down", "severity": "critical"}, 6.0)
    s, acts = stages.decide(s, world(s), Findings(alerts=(critical,)), 6.0)
    assert s.rollback_reason is not None, acts
    assert s.phase in (Phase.ROLLING_BACK, Phase.ROLLED_BACK)
