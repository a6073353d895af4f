"""The verified split (core.split): the canary's measured share of requests against the weight
asked, sequentially; a correct split is not flagged beyond alpha, a half split is, and the
engine holds the stage and rolls back at the deadline naming the share."""

from __future__ import annotations

import random
import re
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from canaryd.config.policies import load_policy
from canaryd.core import analysis, codec, compare, split, stages
from canaryd.core.model import (
    ActionKind,
    Cause,
    Check,
    CompareState,
    Counts,
    Findings,
    Measurement,
    Phase,
    Rollout,
    SplitState,
    Stage,
    Verdict,
)
from support.enginekit import make_policy, world

ALPHA = 0.05 / 2 / 3  # a policy with one compare check and a split, three stages
TOLERANCE = 0.05


def binomial(rng: random.Random, n: int, p: float) -> int:
    return sum(rng.random() < p for _ in range(n))


def stage_run(rng: random.Random, weight: int, share: float, volumes: list[int]) -> SplitState:
    """One stage: per interval ``n`` requests, each on the canary with probability ``share``."""
    state, canary, stable = None, 0, 0
    for n in [0, *volumes]:  # the first reading is the baseline
        x = binomial(rng, n, share)
        canary, stable = canary + x, stable + n - x
        counts = Counts(float(canary), 0.0, float(stable), 0.0)
        state = split.observe(state, counts, weight, TOLERANCE, ALPHA)
    assert state is not None
    return state


@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    weight=st.sampled_from([10, 25, 50, 100]),
    at_edge=st.booleans(),
    rate=st.integers(5, 60),
)
def test_a_correct_split_is_rarely_flagged(
    seed: int, weight: int, at_edge: bool, rate: int
) -> None:
    """A/A-style: requests split exactly as asked (or at the tolerance's worst edge) over 30
    evaluations; the frequency of a flagged stage stays under alpha, with room for sampling
    (binomial: 100 stages at alpha 0.0083 rarely see more than 3)."""
    rng = random.Random(seed)
    share = weight / 100 - (TOLERANCE if at_edge else 0.0)
    flagged = sum(stage_run(rng, weight, share, [rate] * 30).concluded for _ in range(100))
    assert flagged <= 4


def test_the_false_alarm_rate_over_many_stages() -> None:
    """At the edge of tolerance (the null's least favourable point), 600 stages: flagged at most
    alpha of the time (here 0.0083: 5 expected; 12 is beyond 2.5 standard deviations)."""
    rng = random.Random(7)
    flagged = sum(stage_run(rng, 20, 0.15, [30] * 20).concluded for _ in range(600))
    assert flagged <= 12


@pytest.mark.parametrize("weight", [20, 30, 50])  # at 10, half is within ±5
def test_a_half_split_is_flagged(weight: int) -> None:
    """The canary served half its share: shown off within 2000 requests a stage."""
    rng = random.Random(weight)
    runs = [stage_run(rng, weight, weight / 200, [100] * 20) for _ in range(20)]
    assert all(r.concluded for r in runs)
    seen = split.share(runs[0])
    assert seen is not None and abs(seen - weight / 2) < 3.0


def test_too_many_requests_are_flagged_too() -> None:
    rng = random.Random(3)
    state = stage_run(rng, 20, 0.40, [60] * 20)
    assert state.concluded


def test_baseline_reset_and_weight() -> None:
    """The first reading is the baseline; a counter that went down is a new baseline (nothing
    invented); another weight starts afresh; without a tolerance only the counts are kept."""
    s = split.observe(None, Counts(500.0, 0.0, 5000.0, 0.0), 10, TOLERANCE, ALPHA)
    assert s is not None and s.counted == {} and split.share(s) is None
    s = split.observe(s, Counts(510.0, 0.0, 5090.0, 0.0), 10, TOLERANCE, ALPHA)
    assert s is not None and s.counted == {"canary": 10.0, "stable": 90.0}
    assert split.share(s) == pytest.approx(10.0)
    restarted = split.observe(s, Counts(3.0, 0.0, 5100.0, 0.0), 10, TOLERANCE, ALPHA)
    assert restarted is not None and restarted.counted == s.counted
    assert restarted.logs == s.logs
    assert split.observe(s, None, 10, TOLERANCE, ALPHA) == s
    fresh = split.observe(s, Counts(520.0, 0.0, 5180.0, 0.0), 25, TOLERANCE, ALPHA)
    assert fresh is not None and fresh.weight == 25 and fresh.counted == {}
    untested = split.observe(None, Counts(0.0, 0.0, 0.0, 0.0), 10, None, ALPHA)
    untested = split.observe(untested, Counts(1.0, 0.0, 99.0, 0.0), 10, None, ALPHA)
    assert untested is not None and untested.logs == {} and split.share(untested) == 1.0
    nan = split.observe(s, Counts(float("nan"), 0.0, 1.0, 0.0), 10, TOLERANCE, ALPHA)
    assert nan == s


def test_bounds_drop_sides_that_cannot_be_crossed() -> None:
    assert split.bounds(100, 0.05) == {split.LOW: pytest.approx(0.95)}
    assert split.bounds(2, 0.05) == {split.HIGH: pytest.approx(0.07)}
    assert set(split.bounds(50, 0.05)) == {split.LOW, split.HIGH}


def test_the_split_shares_the_policys_alpha() -> None:
    """The split is one more member of the union bound, and its share is divided by stages."""
    compare_check = Check("e", "", kind="compare", compare="errors")
    policy = make_policy(checks={"sr": Check("sr", "q"), "e": compare_check}, alpha=0.06)
    assert compare.alpha_share(policy) == pytest.approx(0.06)
    with_split = replace(policy, split_tolerance=0.05)
    assert compare.alpha_share(with_split) == pytest.approx(0.03)
    assert split.alpha(with_split) == pytest.approx(0.03 / 3)


# --------------------------------------------------------------------------- the engine


def split_policy() -> object:
    errors = Check("e", "", kind="compare", compare="errors")
    checks = {"sr": Check("sr", "q", ">=", 0.99), "e": errors}
    return make_policy(
        checks=checks,
        stages=(Stage(20, 60.0, ("sr", "e")), Stage(100, 0.0, ("sr", "e"))),
        split_tolerance=0.05,
    )


def findings(canary: float, stable: float) -> Findings:
    counts = Counts(canary, 0.0, stable, 0.0)
    return Findings(
        measurements=(Measurement("sr", 1.0), Measurement("e", counts=counts)), requests=1e6
    )


def drive(s: Rollout, per_interval: tuple[int, int], until: float) -> tuple[Rollout, list]:  # type: ignore[type-arg]
    """Evaluate every interval with ``per_interval`` (canary, stable) requests until ``until``
    or the end of the stage; every decision returned."""
    canary = stable = 0.0
    decisions = []
    while s.phase is Phase.PROGRESSING and s.stage == 0:
        due = s.next_eval_at
        assert due is not None
        if due > until:
            break
        s, acts = stages.decide(s, world(s), findings(canary, stable), due)
        decisions.extend(acts)
        canary, stable = canary + per_interval[0], stable + per_interval[1]
    return s, decisions


def started(policy: object) -> Rollout:
    s, _ = stages.start("r1", "svc", "v2", policy, 0.0)  # type: ignore[arg-type]
    s, _ = stages.decide(s, world(s), Findings(), 0.0)
    s, _ = stages.decide(s, world(s), Findings(), 0.0)
    return s


def test_a_correct_split_passes_the_stage() -> None:
    s, decisions = drive(started(split_policy()), (40, 160), until=1000.0)
    assert s.stage == 1 and not any(a.cause is Cause.SPLIT_OFF for a in decisions)


def test_a_split_off_holds_the_stage_and_rolls_back_at_the_deadline() -> None:
    s = started(split_policy())
    s, decisions = drive(s, (20, 180), until=200.0)  # half the share asked
    holds = [a for a in decisions if a.cause is Cause.SPLIT_OFF]
    assert holds and all(a.kind is ActionKind.HOLD for a in holds)
    assert "canary received 10.0% of requests, asked 20% (tolerance ±5" in holds[-1].reason
    assert s.stage == 0 and s.phase is Phase.PROGRESSING  # the stage does not pass
    assert s.credited < 60.0
    deadline = 60.0 + s.policy.limits.progress_deadline
    s, acts = stages.decide(s, world(s), Findings(), deadline)
    assert s.phase is Phase.ROLLING_BACK
    rollback = next(a for a in acts if a.kind is ActionKind.ROLLBACK)
    assert rollback.cause is Cause.SPLIT_OFF
    assert rollback.reason.startswith("canary received 10.0% of requests, asked 20%")
    facts = rollback.evidence["split"]
    assert isinstance(facts, dict) and facts["share"] == pytest.approx(10.0)


def test_the_split_survives_the_record() -> None:
    """Stored and loaded, a rollout continues the same e-process (a restarted daemon)."""
    s, _ = drive(started(split_policy()), (20, 180), until=50.0)
    assert s.split is not None and s.split.logs
    again = codec.rollout_from_dict(codec.rollout_to_dict(s))
    assert again == s and again.policy.split_tolerance == 0.05
    old = codec.rollout_to_dict(s)
    del old["split"]
    assert codec.rollout_from_dict(old).split is None


def test_the_policy_key(tmp_path: object) -> None:
    from pathlib import Path

    from canaryd.core.errors import ConfigError

    shipped = Path("rules/matriz-fast-track.yaml").read_text()
    assert load_policy(Path("rules/matriz-fast-track.yaml")).split_tolerance == 0.03
    base = re.sub(r"(?m)^split: .*\n", "", shipped)
    assert load_policy(_written(tmp_path, "off.yaml", base)).split_tolerance is None
    good = _written(tmp_path, "good.yaml", base + "split: {tolerance: 0.05}\n")
    assert load_policy(good).split_tolerance == 0.05
    bad = _written(tmp_path, "bad.yaml", base + "split: {tolerance: 0.9, margin: 1}\n")
    with pytest.raises(ConfigError) as info:
        load_policy(bad)
    text = str(info.value)
    assert "split.tolerance" in text and "split.margin" in text


def _written(directory: object, name: str, text: str) -> Path:
    path = Path(str(directory)) / name
    path.write_text(text)
    return path


def test_a_compare_check_is_shown_with_its_rollouts_verdict() -> None:
    """Metrics, the API, the dashboard and traces judge a compare check with the e-process the
    rollout carries (``analysis.assess`` alone has no compare kind and cannot know it)."""
    errors = Check("e", "", kind="compare", compare="errors")
    policy = make_policy(checks={"e": errors}, stages=(Stage(20, 60.0, ("e",)),))
    s = started(policy)
    reading = Measurement("e", counts=Counts(10.0, 0.0, 90.0, 0.0))
    assert analysis.assess(errors, reading).verdict is Verdict.INCONCLUSIVE  # alone: never a pass
    assert compare.judged(s, errors, reading).verdict is Verdict.INCONCLUSIVE  # no state yet
    down = Measurement("e", error="connection refused")
    assert compare.judged(s, errors, down).verdict is Verdict.ERROR
    counted = CompareState(
        counted={"canary.requests": 5.0, "stable.requests": 50.0, compare.PAIRED: 1.0}
    )
    s = replace(s, compare={"e": counted})
    assert compare.judged(s, errors, reading).verdict is Verdict.SUCCESSFUL
    s = replace(s, compare={"e": replace(counted, concluded=True)})
    assert compare.judged(s, errors, reading).verdict is Verdict.FAILED
    threshold = Check("sr", "q", ">=", 0.99)
    assert compare.judged(s, threshold, Measurement("sr", 0.5)).verdict is Verdict.FAILED
