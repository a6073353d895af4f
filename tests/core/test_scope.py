"""``core.scope``: query windows clipped to the rollout's own evidence (SPEC §3).

Table cases for the PromQL details (several range selectors, subqueries nested and not,
offsets and ``@``, strings and comments that look like ranges), hypothesis over windows and ages
for the invariants (never a window reaching before the rollout; unchanged when old enough; no
data exactly while too young), and every rewritten query parsed by a real Prometheus.
"""

from __future__ import annotations

import json
import random
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from canaryd.core import scope
from canaryd.core.model import (
    Check,
    Findings,
    Measurement,
    NoData,
    Observed,
    Phase,
    Policy,
    Rollout,
    Scope,
    Stage,
)
from canaryd.core.stages import decide, start
from support import procs

CASES = [
    ("rate(x[2m])", 9.7, "rate(x[9s])"),
    ("rate(x[2m])", 120, "rate(x[2m])"),
    ("rate(x[1h30m])", 100, "rate(x[100s])"),
    (  # every range selector of the query, not only the first
        "sum(rate(a[2m])) / sum(rate(b[5m]))",
        60,
        "sum(rate(a[60s])) / sum(rate(b[60s]))",
    ),
    (  # a subquery reads its range plus its operand's windows
        "max_over_time(rate(x[1m])[5m:30s])",
        100,
        "max_over_time(rate(x[50s])[50s:30s])",
    ),
    (
        "max_over_time(rate(x[10s])[5m:30s])",
        100,
        "max_over_time(rate(x[10s])[90s:30s])",
    ),
    (  # nested subqueries: budgets halve at each level that needs it
        "avg_over_time(max_over_time(rate(x[1m])[2m:10s])[5m:])",
        100,
        "avg_over_time(max_over_time(rate(x[25s])[25s:10s])[50s:])",
    ),
    (  # offset and @ look at another time on purpose: left as written
        "rate(x[2m]) / rate(x[2m] offset 1d)",
        30,
        "rate(x[30s]) / rate(x[2m] offset 1d)",
    ),
    ("rate(x[2m] @ 1700000000)", 30, "rate(x[2m] @ 1700000000)"),
    (  # brackets inside strings and comments are not windows
        'rate(x{path="/a[5m]"}[2m]) # was [10m]\n + 0',
        30,
        'rate(x{path="/a[5m]"}[30s]) # was [10m]\n + 0',
    ),
    ("up{job='a'}", 5, "up{job='a'}"),  # no window: nothing to clip, never "too young"
]


@pytest.mark.parametrize(("query", "age", "expected"), CASES)
def test_windows_are_clipped_to_the_rollouts_age(query: str, age: float, expected: str) -> None:
    assert scope.scoped(query, age, 2) == expected


def test_younger_than_the_minimum_is_no_data_yet_not_a_short_window() -> None:
    assert scope.scoped("rate(x[2m])", 29.9, 30) is None
    assert scope.scoped("rate(x[2m])", 30, 30) == "rate(x[30s])"
    # a window shorter than the minimum is the policy's own choice: it waits only for it
    assert scope.scoped("rate(x[10s])", 9, 30) is None
    assert scope.scoped("rate(x[10s])", 10, 30) == "rate(x[10s])"


# --------------------------------------------------------------------------- hypothesis

UNITS = [("ms", 0.001), ("s", 1), ("m", 60), ("h", 3600)]


@st.composite
def durations(draw: st.DrawFn) -> str:
    unit, size = draw(st.sampled_from(UNITS[1:]))
    count = draw(st.integers(1, 90 if size < 3600 else 2))
    text = f"{count}{unit}"
    if draw(st.booleans()) and unit == "m":
        text += f"{draw(st.integers(1, 59))}s"
    return text


@st.composite
def queries(draw: st.DrawFn, depth: int = 0) -> str:
    kind = draw(
        st.sampled_from(["range", "offset", "sub", "binary", "agg"][: 5 if depth < 2 else 2])
    )
    metric = draw(st.sampled_from(["x", 'x{job="a[1m]"}', "y{le='0.25'}"]))
    if kind == "range":
        return f"rate({metric}[{draw(durations())}])"
    if kind == "offset":
        return f"rate({metric}[{draw(durations())}] offset {draw(durations())})"
    if kind == "sub":
        step = draw(st.sampled_from(["", "10s", "1m"]))
        return f"max_over_time(({draw(queries(depth + 1))})[{draw(durations())}:{step}])"
    if kind == "binary":
        return f"{draw(queries(depth + 1))} / {draw(queries(depth + 1))}"
    return f"sum by (job) ({draw(queries(depth + 1))})"


ages = st.floats(min_value=0, max_value=20000, allow_nan=False)


@settings(max_examples=300, deadline=None)
@given(queries(), ages, st.integers(1, 120))
def test_a_scoped_query_never_reads_before_the_rollout(query: str, age: float, least: int) -> None:
    reach = scope.lookback(query)
    out = scope.scoped(query, age, least)
    if int(age) < min(least, reach):
        assert out is None  # too young: no data yet, never a pass
        return
    assert out is not None
    assert scope.lookback(out) <= int(age) + 1e-9
    if reach <= int(age):
        assert out == query  # old enough: the query as written
    assert out.count("offset") == query.count("offset")
    assert scope.scoped(out, age, least) == out  # idempotent


@settings(max_examples=200, deadline=None)
@given(durations(), ages)
def test_one_window_is_the_smaller_of_itself_and_the_age(window: str, age: float) -> None:
    out = scope.scoped(f"rate(x[{window}])", age, 1)
    seconds = scope.promql_seconds(window)
    if int(age) < 1:
        assert out is None
    else:
        assert out is not None
        assert scope.lookback(out) == min(seconds, int(age))


# --------------------------------------------------------------------------- real Prometheus


def _parse_error(prometheus: procs.Proc, promql: str) -> str | None:
    data = urllib.parse.urlencode({"query": promql}).encode()
    try:
        with urllib.request.urlopen(f"{prometheus.url}/api/v1/query", data, timeout=5):
            return None
    except urllib.error.HTTPError as exc:
        return str(json.load(exc).get("error"))


def test_every_rewritten_query_parses_in_prometheus(prometheus: Any) -> None:
    prometheus = prometheus({})
    assert _parse_error(prometheus, "rate(x[9.5s])") is not None  # the check can fail
    rng = random.Random(10)
    rewritten = {expected for _, _, expected in CASES}
    for _ in range(150):
        query = _random_query(rng)
        out = scope.scoped(query, rng.uniform(1, 4000), 1)
        assert out is not None
        rewritten.add(out)
    for promql in sorted(rewritten):
        assert _parse_error(prometheus, promql) is None, promql


def _random_query(rng: random.Random, depth: int = 0) -> str:
    """The hypothesis strategy's shapes, drawn from a seeded generator (``example()`` is not
    meant for tests)."""

    def duration() -> str:
        unit = rng.choice(["s", "m", "h"])
        return f"{rng.randint(1, 90 if unit != 'h' else 2)}{unit}"

    kind = rng.choice(["range", "offset", "sub", "binary", "agg"][: 5 if depth < 2 else 2])
    if kind == "range":
        return f"rate(x[{duration()}])"
    if kind == "offset":
        return f"rate(x[{duration()}] offset {duration()})"
    if kind == "sub":
        step = rng.choice(["", "10s", "1m"])
        return f"max_over_time(({_random_query(rng, depth + 1)})[{duration()}:{step}])"
    if kind == "binary":
        return f"{_random_query(rng, depth + 1)} / {_random_query(rng, depth + 1)}"
    return f"sum by (job) ({_random_query(rng, depth + 1)})"


# --------------------------------------------------------------------------- the engine

POLICY = Policy(
    name="p",
    stages=(Stage(weight=10, duration=60.0, checks=("ok",)),),
    checks={"ok": Check("ok", "rate(x[2m])", ">=", 0.99, no_data=NoData.FAIL)},
    interval=10.0,
    min_window=30.0,
)


def _progressing(policy: Policy = POLICY) -> Rollout:
    s, _ = start("r1", "t", "img:v2", policy, now=0.0)
    s, _ = decide(s, Observed(weight=0, canary_ready=True), Findings(), 5.0)
    s, _ = decide(s, Observed(weight=10, canary_ready=True), Findings(), 6.0)
    assert s.phase is Phase.PROGRESSING and s.ready_at == 5.0
    return s


def test_a_young_rollout_waits_without_counting_and_never_fails_on_no_data() -> None:
    s = _progressing()
    for now in (10.0, 20.0, 30.0):  # 5, 15, 25 s old: younger than min_window
        s, acts = decide(s, Observed(10, True), Findings((Measurement("ok"),)), now)
        assert [a.reason.startswith("no data yet") for a in acts] == [True]
        assert s.consecutive_inconclusive == 0 and not s.failures and s.credited == 0.0
    # 35 s old: the evaluator asks, and no data is no data again (here: no_data: fail)
    s, acts = decide(s, Observed(10, True), Findings((Measurement("ok"),)), 40.0)
    assert s.phase is Phase.ROLLING_BACK, acts


def test_a_measured_young_check_is_judged_as_measured() -> None:
    s = _progressing()
    s, acts = decide(s, Observed(10, True), Findings((Measurement("ok", 0.5),)), 10.0)
    assert s.phase is Phase.ROLLING_BACK, acts


def test_version_scope_spares_checks_that_select_by_version() -> None:
    by_version = Check("v", 'rate(x{version="{{version}}"}[2m])')
    policy = replace(POLICY, scope=Scope.VERSION, checks={"v": by_version, **POLICY.checks})
    assert not scope.clipped(policy, by_version)
    assert scope.clipped(policy, POLICY.checks["ok"])
    assert scope.clipped(POLICY, by_version)  # scope: age clips it too
