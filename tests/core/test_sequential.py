"""The compare checks' sequential test (core.sequential, core.compare): valid and never blind."""

from __future__ import annotations

import bisect
import math
import random
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from canaryd.config.policies import load_policy
from canaryd.core import codec, compare, sequential
from canaryd.core.errors import ConfigError
from canaryd.core.model import Check, CompareState, Counts, Histograms, Measurement, Verdict

ERRORS = Check("errors-vs-stable", "", kind="compare", compare="errors", tolerance=0.0)
LATENCY = Check("latency-vs-stable", "", kind="compare", compare="latency", tolerance=0.2)
ALPHA = 0.025


def poisson(rng: random.Random, mean: float) -> int:
    total = 0
    while mean > 0:
        chunk, k = min(mean, 30.0), 0
        limit, p = math.exp(-min(mean, 30.0)), rng.random()
        while p > limit:
            k += 1
            p *= rng.random()
        total, mean = total + k, mean - chunk
    return total


def errors_rollout(
    rng: random.Random, rate_c: float, rate_s: float, volumes: list[tuple[int, int]]
) -> list[Verdict]:
    """One rollout of the errors check: per interval (canary, stable) requests, Poisson errors."""
    state, totals, verdicts = None, [0, 0, 0, 0], []
    for n_c, n_s in volumes:
        totals = [
            totals[0] + n_c,
            totals[1] + poisson(rng, n_c * rate_c),
            totals[2] + n_s,
            totals[3] + poisson(rng, n_s * rate_s),
        ]
        m = Measurement(ERRORS.name, counts=Counts(*map(float, totals)))
        result, state = compare.assess(ERRORS, m, state, ALPHA)
        verdicts.append(result.verdict)
    return verdicts


def _fnch_mean_of_e(n_c: int, n_s: int, m: int, omega0: float, factor: float) -> float:
    """E[binomial likelihood ratio] under Fisher's noncentral hypergeometric law (odds omega0)."""

    def log_choose(n: int, k: int) -> float:
        return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)

    support = range(max(0, m - n_s), min(n_c, m) + 1)
    logs = [log_choose(n_c, u) + log_choose(n_s, m - u) + u * math.log(omega0) for u in support]
    top = max(logs)
    weights = [math.exp(v - top) for v in logs]
    total = sum(weights)
    p0 = omega0 * n_c / (omega0 * n_c + n_s)
    p1 = omega0 * factor * n_c / (omega0 * factor * n_c + n_s)
    return sum(
        w / total * (p1 / p0) ** u * ((1 - p1) / (1 - p0)) ** (m - u)
        for w, u in zip(weights, support, strict=True)
    )


@pytest.mark.parametrize("omega0", [1.0, 1.1, 1.2, 1.5])
@pytest.mark.parametrize("sides", [(10, 90), (50, 50), (100, 300), (200, 20), (5, 5)])
def test_the_e_value_keeps_a_mean_of_one_even_when_bad_events_are_common(
    omega0: float, sides: tuple[int, int]
) -> None:
    """Bernoulli requests, any share of bad events: under the null's boundary the conditional
    law is noncentral hypergeometric, and every grid component's e-value has mean <= 1."""
    n_c, n_s = sides
    for m in range(1, n_c + n_s, max(1, (n_c + n_s) // 11)):
        for factor in sequential.GRID:
            assert _fnch_mean_of_e(n_c, n_s, m, omega0, factor) <= 1 + 1e-9


@settings(max_examples=6, deadline=None)
@given(
    rate=st.sampled_from([0.001, 0.005, 0.02, 0.1]),
    weights=st.lists(st.sampled_from([10, 25, 50, 90, 100]), min_size=1, max_size=4),
    per_interval=st.integers(min_value=50, max_value=600),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_equal_error_rates_roll_back_at_most_alpha_of_the_time(
    rate: float, weights: list[int], per_interval: int, seed: int
) -> None:
    """A/A for any rate, weights and volume, 40 evaluations looked at one by one: the share of
    rollouts the check fails stays under alpha (plus three standard errors of 300 draws)."""
    rng = random.Random(seed)
    stages = sorted(set(weights))
    volumes = [
        (per_interval * w // 100, per_interval * (100 - w) // 100)
        for w in stages
        for _ in range(40 // len(stages))
    ]
    runs = 300
    failed = sum(Verdict.FAILED in errors_rollout(rng, rate, rate, volumes) for _ in range(runs))
    assert failed / runs <= ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / runs)


BOUNDS = ("0.025", "0.05", "0.1", "0.25", "0.5", "1")


def latency_rollout(
    rng: random.Random, check: Check, median: float, volumes: list[tuple[int, int]]
) -> list[Verdict]:
    """One rollout of a latency check, canary and stable drawing from the same lognormal law
    (sigma 0.5 around ``median`` seconds): per interval (canary, stable) requests, each counted
    into the cumulative buckets of ``BOUNDS`` and ``+Inf``."""
    mu = math.log(median)
    cdf = [0.5 * (1 + math.erf((math.log(float(b)) - mu) / (0.5 * math.sqrt(2)))) for b in BOUNDS]
    totals = {side: [0] * (len(BOUNDS) + 1) for side in compare.SIDES}
    state, verdicts = None, []
    for n_c, n_s in volumes:
        for side, n in zip(compare.SIDES, (n_c, n_s), strict=True):
            for _ in range(n):
                totals[side][bisect.bisect_left(cdf, rng.random())] += 1
        buckets = {
            side: dict(zip((*BOUNDS, "+Inf"), map(float, _cumulative(counts)), strict=True))
            for side, counts in totals.items()
        }
        m = Measurement(check.name, histograms=Histograms(buckets["canary"], buckets["stable"]))
        result, state = compare.assess(check, m, state, ALPHA)
        verdicts.append(result.verdict)
    return verdicts


def _cumulative(counts: list[int]) -> list[int]:
    out, total = [], 0
    for c in counts:
        total += c
        out.append(total)
    return out


@settings(max_examples=5, deadline=None)
@given(
    median=st.sampled_from([0.03, 0.08, 0.2]),
    tolerance=st.sampled_from([0.0, 0.2]),
    weights=st.lists(st.sampled_from([10, 25, 50, 90]), min_size=1, max_size=3),
    per_interval=st.integers(min_value=20, max_value=300),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_equal_latency_distributions_roll_back_at_most_alpha_of_the_time(
    median: float, tolerance: float, weights: list[int], per_interval: int, seed: int
) -> None:
    """Latency A/A: both sides draw from one distribution, at any median (so bad events at some
    bounds are rare, at others half the requests), any weights and volume, 20 evaluations looked
    at one by one. The share of rollouts the check fails stays under alpha (plus three standard
    errors of 200 draws) — at tolerance 0 the law sits on the null's boundary, where the bucket
    bounds' averaged e-processes are tightest."""
    rng = random.Random(seed)
    check = replace(LATENCY, tolerance=tolerance)
    stages = sorted(set(weights))
    volumes = [
        (per_interval * w // 100, per_interval * (100 - w) // 100)
        for w in stages
        for _ in range(20 // len(stages))
    ]
    runs = 200
    failed = sum(
        Verdict.FAILED in latency_rollout(rng, check, median, volumes) for _ in range(runs)
    )
    assert failed / runs <= ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / runs)


sides = st.fixed_dictionaries({"requests": st.floats(0, 1e6), "errors": st.floats(0, 1e3)})


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.none(),
            st.tuples(st.floats(0, 1e6), st.floats(0, 1e3)).map(
                lambda c: Measurement(ERRORS.name, counts=Counts(c[0], c[1], 0.0, 0.0))
            ),
            st.tuples(st.floats(0, 1e6), st.floats(0, 1e3)).map(
                lambda s: Measurement(ERRORS.name, counts=Counts(0.0, 0.0, s[0], s[1]))
            ),
            st.just(Measurement(ERRORS.name)),
            st.just(Measurement(ERRORS.name, error="timeout")),
        ),
        max_size=12,
    )
)
def test_a_compare_check_never_passes_without_data_on_both_sides(
    readings: list[Measurement | None],
) -> None:
    """Readings where at most one side ever served requests: never successful."""
    state = None
    for m in readings:
        result, state = compare.assess(ERRORS, m, state, ALPHA)
        assert result.verdict is not Verdict.SUCCESSFUL


def test_the_first_reading_is_the_baseline_and_counts_nothing() -> None:
    before = Measurement(ERRORS.name, counts=Counts(1000, 900, 1000, 0))  # an old canary's
    result, state = compare.assess(ERRORS, before, None, ALPHA)
    assert result.verdict is Verdict.INCONCLUSIVE and "baseline" in result.detail
    same = Measurement(ERRORS.name, counts=Counts(1100, 900, 1900, 1))
    result, state = compare.assess(ERRORS, same, state, ALPHA)
    assert result.verdict is Verdict.SUCCESSFUL
    assert state.counted["canary.errors"] == 0 and state.counted["canary.requests"] == 100


def test_a_clearly_worse_canary_fails_and_stays_failed() -> None:
    rng = random.Random(7)
    verdicts = errors_rollout(rng, 0.02, 0.005, [(200, 1800)] * 20)
    first = verdicts.index(Verdict.FAILED)
    assert first < 10 and set(verdicts[first:]) == {Verdict.FAILED}


def test_a_counter_that_went_down_is_a_new_baseline_not_evidence() -> None:
    state = CompareState()
    readings = [(100, 0, 900, 0), (200, 1, 1800, 2), (10, 5, 1900, 2), (60, 5, 2350, 2)]
    for reading in readings:
        m = Measurement(ERRORS.name, counts=Counts(*map(float, reading)))
        _, state = compare.assess(ERRORS, m, state, ALPHA)
    assert state.counted["canary.requests"] == 150  # 100 + (restart skipped) + 50
    assert state.counted["canary.errors"] == 1


def test_a_slower_canary_fails_the_latency_check_and_names_the_bound() -> None:
    state = None
    for k in range(1, 12):
        canary = {"0.1": 300.0 * k, "0.25": 800.0 * k, "+Inf": 1000.0 * k}
        stable = {"0.1": 6000.0 * k, "0.25": 8700.0 * k, "+Inf": 9000.0 * k}
        m = Measurement(LATENCY.name, histograms=Histograms(canary, stable))
        result, state = compare.assess(LATENCY, m, state, ALPHA)
    assert result.verdict is Verdict.FAILED
    assert "slower than" in result.detail and "e-value" in result.detail


def test_the_state_survives_the_record_codec() -> None:
    policy = load_policy("rules/matriz-fast-track.yaml")
    m = Measurement(ERRORS.name, counts=Counts(10, 1, 90, 1))
    _, state = compare.assess(ERRORS, m, None, ALPHA)
    m = Measurement(ERRORS.name, counts=Counts(110, 3, 990, 4))
    _, state = compare.assess(ERRORS, m, state, ALPHA)
    from canaryd.core.stages import start

    rollout, _ = start("r1", "t", "img", policy, 0.0)
    rollout = replace(rollout, compare={ERRORS.name: state})
    back = codec.rollout_from_dict(codec.rollout_to_dict(rollout))
    assert back == rollout
    assert back.policy.checks["errors-vs-stable"].compare == "errors"


def test_the_shipped_policies_share_alpha_between_their_compare_checks_and_the_split() -> None:
    """9 : 1 : 1 by ``alpha_weight`` (the verified split weighs 1): the errors check needs the
    larger part (tests/bench/README.md); all the shares together are the policy's alpha."""
    for name in ("fast-track", "standard", "conservative"):
        policy = load_policy(f"rules/matriz-{name}.yaml")
        errors, latency = (policy.checks[c] for c in ("errors-vs-stable", "latency-vs-stable"))
        assert policy.split_tolerance is not None
        e, lat, spl = (compare.alpha_share(policy, c) for c in (errors, latency, None))
        assert e == pytest.approx(9 * lat) and lat == pytest.approx(spl)
        assert e + lat + spl == pytest.approx(policy.alpha)
        for stage in policy.stages:
            assert {"errors-vs-stable", "latency-vs-stable"} <= set(stage.checks)


def test_alpha_weight_defaults_to_an_even_split_and_is_validated(tmp_path: Path) -> None:
    shipped = Path("rules/matriz-fast-track.yaml").read_text(encoding="utf-8")
    even = tmp_path / "even.yaml"
    even.write_text(shipped.replace("    alpha_weight:", "    # alpha_weight:"), encoding="utf-8")
    policy = load_policy(even)
    shares = {
        compare.alpha_share(policy, c)
        for c in (*policy.checks.values(), None)
        if c is None or c.kind == "compare"
    }
    assert len(shares) == 1  # the two compare checks and the split alike
    assert shares.pop() == pytest.approx(policy.alpha / 3)
    bad = tmp_path / "bad.yaml"
    bad.write_text(shipped.replace("alpha_weight: 9 ", "alpha_weight: 0 "), encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_policy(bad)
    assert "checks.errors-vs-stable.alpha_weight" in str(caught.value)
    assert "relative weight" in str(caught.value)


def test_a_state_from_a_grid_of_another_length_keeps_its_evidence() -> None:
    """A record written by a canaryd with another number of alternatives continues from its
    old mixture's value instead of failing or starting over."""
    old = (math.log(8.0), math.log(2.0))  # an equal-weight mixture worth 5
    assert sequential.e_value(old) == pytest.approx(5.0)
    moved = sequential.update(old, 0, 0, 10.0, 90.0, 1.0)  # no evidence in this interval
    assert len(moved) == len(sequential.GRID) and sequential.e_value(moved) == pytest.approx(5.0)
    assert sequential.e_value(sequential.update(old, 3, 3, 10.0, 90.0, 1.0)) > 5.0


def test_observers_of_a_pass_see_the_verdict_the_engine_gave() -> None:
    """Metrics and traces judge a pass's measurements after it: for a compare check that is
    ``compare.judged`` on the rollout the pass produced (its e-process already holds the
    reading, so nothing is counted twice); one stored reading alone is never a pass."""
    from canaryd.core import analysis
    from canaryd.core.stages import start

    policy = load_policy("rules/matriz-fast-track.yaml")
    check = policy.checks["errors-vs-stable"]
    rollout, _ = start("r1", "t", "img", policy, 0.0)
    state, alpha = None, compare.alpha_share(policy, check)
    for k in range(1, 8):
        m = Measurement(check.name, counts=Counts(100.0 * k, 20.0 * k, 900.0 * k, 4.0 * k))
        result, state = compare.assess(check, m, state, alpha)
        rollout = replace(rollout, compare={check.name: state})
        again = compare.judged(rollout, check, m)
        assert again.verdict is result.verdict and again.value == result.value
        assert rollout.compare[check.name] == state  # judging changed nothing
    assert result.verdict is Verdict.FAILED
    alone = analysis.assess(check, m)
    assert alone.verdict is Verdict.INCONCLUSIVE and "rollout" in alone.detail
