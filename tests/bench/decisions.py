"""Benchmark: how good are canaryd's decisions? Count streams through the real engine.

    python tests/bench/decisions.py [--rollouts 500] [--rps 20] [--seed 1]

Not a test: it prints figures and the pass/fail against the issue's targets.

Every rollout is one run of the real decision engine (``core.stages`` through
``offline.simulate.settle``, the path ``canaryctl simulate`` and the daemon take) on the shipped
``matriz-fast-track`` stages, fed by a synthetic service: ``--rps`` requests per second, each
routed to the canary with the weight the engine has set *at that moment* (so a held stage keeps
its weight), each an error with its side's probability and given a lognormal latency counted
into Prometheus-style cumulative buckets. The engine sees what the daemon would: cumulative
counters of both sides for the compare checks; windowed rates for the threshold checks.

Policies, all with fast-track's stages, interval and limits:

* ``compare``: only the shipped ``errors-vs-stable`` and ``latency-vs-stable`` and the verified
  split (alpha 0.05 shared by their ``alpha_weight`` and the split's 1, 9 : 1 : 1: 0.041,
  0.0045 and 0.0045; their tolerances). The requests follow the weight asked, so the split holds
  a stage only by a false alarm, which counts among the A/A rollbacks if it leads to one;
* ``threshold``: only the runbook's absolute checks (success rate, p95, error rate, health);

and, on streams of the same law over the fast-track schedule, outside the engine:

* ``SPRT``: Wald's sequential probability ratio test that *knows* both sides' true error rates
  (latency: both bucket distributions) and watches the canary's requests alone, stopping at
  ``log(1/alpha_check)`` (the alpha of the check that scenario is about): the limit no test that
  must learn stable's rate can beat;
* ``ratio SPRT``: the conditional test canaryd runs (each interval's bad events split between
  the sides, ``core.sequential``) with a single alternative, the *true* ratio, at the check's
  alpha: the limit for a test that knows the effect but must learn stable's rate from stable's
  own requests, as canaryd must (latency: one per bucket bound, averaged);
* ``peeking``: a fixed-sample one-sided two-proportion z-test at ``alpha_check`` (latency: one
  per bucket bound at its share, Bonferroni), looked at after every evaluation — what peeking
  costs.

Scenarios: ``A/A`` (canary = stable: 0.5 % errors, the same latency), ``errors 1% vs 0.5%``,
``latency x1.25`` (the canary 25 % slower, its p95 still inside the SLO). Per scenario and
method: rollouts rolled back (for A/A: false rollbacks, with a 95 % interval) and the mean
canary requests until the rollback.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "daemon"))

from canaryd.config.policies import load_policy  # noqa: E402
from canaryd.core import compare, stages  # noqa: E402
from canaryd.core.model import (  # noqa: E402
    Action,
    Counts,
    Histograms,
    Measurement,
    Policy,
    Rollout,
)
from canaryd.offline import simulate  # noqa: E402

BOUNDS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)  # + Inf
MEDIAN, SIGMA = 0.08, 0.5  # stable's latency: lognormal, p95 ≈ 0.18 s (SLO: 0.25 s)
WINDOW = 120.0  # fast-track's window for the threshold checks' rates


@dataclass(frozen=True)
class Scenario:
    name: str
    canary_errors: float
    stable_errors: float = 0.005
    slowdown: float = 1.0  # the canary's latency multiplier


SCENARIOS = (
    Scenario("A/A", 0.005),
    Scenario("errors 1% vs 0.5%", 0.01),
    Scenario("latency x1.25", 0.005, slowdown=1.25),
)


def binomial(rng: random.Random, n: int, p: float) -> int:
    return sum(1 for _ in range(n) if rng.random() < p)


def poisson(rng: random.Random, mean: float) -> int:
    """Knuth's method in chunks (means here are a few hundred)."""
    total = 0
    while mean > 0:
        chunk = min(mean, 30.0)
        limit, k, p = math.exp(-chunk), 0, rng.random()
        while p > limit:
            k += 1
            p *= rng.random()
        total += k
        mean -= chunk
    return total


def latencies(rng: random.Random, n: int, slowdown: float) -> list[int]:
    """Cumulative bucket counts (one per bound, then +Inf) of ``n`` requests."""
    counts = [0] * (len(BOUNDS) + 1)
    mu = math.log(MEDIAN * slowdown)
    for _ in range(n):
        value = rng.lognormvariate(mu, SIGMA)
        for i, bound in enumerate(BOUNDS):
            if value <= bound:
                counts[i] += 1
        counts[-1] += 1
    return counts


@dataclass
class Side:
    requests: int = 0
    errors: int = 0
    buckets: list[int] = field(default_factory=lambda: [0] * (len(BOUNDS) + 1))

    def add(self, requests: int, errors: int, buckets: Sequence[int]) -> None:
        self.requests += requests
        self.errors += errors
        self.buckets = [a + b for a, b in zip(self.buckets, buckets, strict=True)]

    def histogram(self) -> dict[str, float]:
        labels = [f"{b:g}" for b in BOUNDS] + ["+Inf"]
        return {label: float(v) for label, v in zip(labels, self.buckets, strict=True)}


@dataclass
class Traffic:
    """The synthetic service: both sides' cumulative counters, advanced interval by interval."""

    scenario: Scenario
    rps: float
    rng: random.Random
    canary: Side = field(default_factory=Side)
    stable: Side = field(default_factory=Side)
    t: float = 0.0
    recent: list[tuple[float, int, int, list[int]]] = field(default_factory=list)  # canary

    def advance(self, until: float, weight: int) -> int:
        """Serve the requests of (t, until] at ``weight``; the canary's count."""
        span = until - self.t
        if span <= 0:
            return 0
        s, rng = self.scenario, self.rng
        n = poisson(rng, self.rps * span)
        n_c = binomial(rng, n, weight / 100)
        n_s = n - n_c
        c_buckets = latencies(rng, n_c, s.slowdown)
        self.canary.add(n_c, binomial(rng, n_c, s.canary_errors), c_buckets)
        self.stable.add(n_s, binomial(rng, n_s, s.stable_errors), latencies(rng, n_s, 1.0))
        self.recent.append((until, n_c, self.canary.errors, c_buckets))
        self.t = until
        return n_c


class Stream(simulate.Timeline):
    """A timeline generated as the engine asks, at the weight the simulated router has set."""

    def __init__(self, traffic: Traffic, world: simulate.World) -> None:
        super().__init__()
        self.traffic, self.world = traffic, world
        self.canary_at: list[tuple[float, int]] = []  # (t, cumulative canary requests)

    def measurements(self, checks: Iterable[str], t: float) -> tuple[Measurement, ...]:
        tr = self.traffic
        tr.advance(t, self.world.weight or 0)
        self.canary_at.append((t, tr.canary.requests))
        out = []
        for name in checks:
            if name == "errors-vs-stable":
                c, s = tr.canary, tr.stable
                counts = Counts(c.requests, c.errors, s.requests, s.errors)
                out.append(Measurement(name, counts=counts))
            elif name == "latency-vs-stable":
                hist = Histograms(tr.canary.histogram(), tr.stable.histogram())
                out.append(Measurement(name, histograms=hist))
            else:
                out.append(Measurement(name, value=self._threshold(name, t)))
        return tuple(out)

    def _threshold(self, name: str, t: float) -> float | None:
        """The runbook's checks on the canary's last ``WINDOW`` seconds."""
        recent = [r for r in self.traffic.recent if r[0] > t - WINDOW]
        requests = sum(r[1] for r in recent)
        if not requests:
            return None
        first = next(i for i, r in enumerate(self.traffic.recent) if r[0] > t - WINDOW)
        before = self.traffic.recent[first - 1][2] if first else 0
        errors = self.traffic.recent[-1][2] - before
        buckets = [sum(r[3][i] for r in recent) for i in range(len(BOUNDS) + 1)]
        fast = buckets[BOUNDS.index(0.25)] / requests
        if name == "success-rate":
            return 1 - errors / requests
        if name == "error-rate":
            return errors / requests
        if name == "health-score":
            return 0.4 * (1 - errors / requests) + 0.3 * fast + 0.3
        return p95(buckets)

    def requests_between(self, start: float, end: float) -> float:
        """Canary requests served in (start, end] (``measurements`` has advanced to ``end``)."""
        self.traffic.advance(end, self.world.weight or 0)
        at_start = max((n for t, n in self.canary_at if t <= start + 1e-9), default=0)
        return float(self.traffic.canary.requests - at_start)


def p95(buckets: Sequence[int]) -> float:
    """``histogram_quantile(0.95, ...)``: linear within the bucket."""
    total, rank = buckets[-1], 0.95 * buckets[-1]
    lower, below = 0.0, 0
    for bound, count in zip(BOUNDS, buckets, strict=False):
        if count >= rank:
            return lower + (bound - lower) * (rank - below) / max(count - below, 1)
        lower, below = bound, count
    return BOUNDS[-1] if total else math.nan


@dataclass(frozen=True)
class Outcome:
    rolled_back: bool
    canary_requests: int  # until the rollback (or the end)
    reason: str = ""


def run_engine(policy: Policy, scenario: Scenario, rps: float, rng: random.Random) -> Outcome:
    """One rollout through the real engine; whether (and after how many canary requests) it
    was rolled back."""
    world = simulate.World()
    stream = Stream(Traffic(scenario, rps, rng), world)
    end = simulate.default_until(policy)

    def persist(s: Rollout, a: tuple[Action, ...], now: float, m: object) -> None:
        return None

    state, _ = stages.start("bench", "bench", "canary", policy, 0.0)
    state = simulate.settle(state, world, stream, 0.0, persist)
    while not state.phase.terminal:
        wake = stages.next_wakeup(state)
        if wake is None or wake > end or simulate.waits_for_human(state):
            break
        state = simulate.settle(state, world, stream, wake, persist)
    back = state.rollback_reason is not None
    return Outcome(back, stream.traffic.canary.requests, state.rollback_reason or "")


def schedule(policy: Policy) -> list[tuple[float, int]]:
    """(evaluation time, weight) over fast-track's stages as a passing rollout runs them."""
    out, t = [], 0.0
    for stage in policy.stages:
        stage_end = t + max(stage.duration, policy.interval) + policy.interval
        while t < stage_end:
            t += policy.interval
            out.append((t, stage.weight))
    return out


def run_baselines(
    policy: Policy, scenario: Scenario, rps: float, rng: random.Random, alphas: tuple[float, float]
) -> tuple[Outcome, Outcome, Outcome]:
    """Wald's SPRT (knowing both laws), the ratio SPRT and a peeked fixed-sample test on one
    scheduled stream; ``alphas``: the errors and the latency check's shares."""
    traffic = Traffic(scenario, rps, rng)
    ratio = RatioSprt(scenario, policy)
    ratio_at: int | None = None
    latency_only = scenario.slowdown != 1.0 and scenario.canary_errors == scenario.stable_errors
    limit = math.log(1 / alphas[1 if latency_only else 0])
    sprt_at: int | None = None
    peek_at: int | None = None
    log_lr = 0.0
    seen = Side()
    c_probs, s_probs = bucket_probs(scenario.slowdown), bucket_probs(1.0)
    previous = Side()
    for t, weight in schedule(policy):
        traffic.advance(t, weight)
        c = traffic.canary
        d_req, d_err = c.requests - previous.requests, c.errors - previous.errors
        d_buckets = [a - b for a, b in zip(c.buckets, previous.buckets, strict=True)]
        previous = Side(c.requests, c.errors, list(c.buckets))
        seen.add(d_req, d_err, d_buckets)
        if ratio_at is None and ratio.step(traffic) >= limit:
            ratio_at = c.requests
        log_lr += sprt_step(scenario, d_req, d_err, d_buckets, c_probs, s_probs)
        if sprt_at is None and log_lr >= limit:
            sprt_at = c.requests
        if peek_at is None and peeked(scenario, traffic, alphas):
            peek_at = c.requests
    total = traffic.canary.requests
    return (
        Outcome(sprt_at is not None, sprt_at or total),
        Outcome(ratio_at is not None, ratio_at or total),
        Outcome(peek_at is not None, peek_at or total),
    )


class RatioSprt:
    """canaryd's conditional likelihood ratio with one alternative, the true odds ratio (A/A:
    the errors scenario's): per interval, the canary's share of the bad events both sides had."""

    def __init__(self, s: Scenario, policy: Policy) -> None:
        latency = s.slowdown != 1.0 and s.canary_errors == s.stable_errors
        check = policy.checks["latency-vs-stable" if latency else "errors-vs-stable"]
        self.omega0 = 1.0 + check.tolerance
        self.latency = latency
        if latency:
            c_tail, s_tail = tails(s.slowdown), tails(1.0)
            self.omegas = [odds(a) / odds(b) for a, b in zip(c_tail, s_tail, strict=True)]
        else:
            canary = s.canary_errors if s.canary_errors != s.stable_errors else 0.01
            self.omegas = [odds(canary) / odds(s.stable_errors)]
        self.logs = [0.0] * len(self.omegas)
        self.last: tuple[Side, Side] = (Side(), Side())

    def step(self, traffic: Traffic) -> float:
        """The log of the e-value (latency: of the bounds' average) after this interval."""
        c, s = traffic.canary, traffic.stable
        lc, ls = self.last
        n_c, n_s = c.requests - lc.requests, s.requests - ls.requests
        if self.latency:
            bad = [
                (
                    c.buckets[-1] - c.buckets[i] - lc.buckets[-1] + lc.buckets[i],
                    s.buckets[-1] - s.buckets[i] - ls.buckets[-1] + ls.buckets[i],
                )
                for i in range(len(BOUNDS))
            ]
        else:
            bad = [(c.errors - lc.errors, s.errors - ls.errors)]
        self.last = (
            Side(c.requests, c.errors, list(c.buckets)),
            Side(s.requests, s.errors, list(s.buckets)),
        )
        for i, ((x, y), omega1) in enumerate(zip(bad, self.omegas, strict=True)):
            if omega1 > self.omega0 and n_c > 0 and n_s > 0 and x + y > 0:
                p0 = self.omega0 * n_c / (self.omega0 * n_c + n_s)
                p1 = omega1 * n_c / (omega1 * n_c + n_s)
                self.logs[i] += x * math.log(p1 / p0) + y * math.log((1 - p1) / (1 - p0))
        useful = [v for v, w in zip(self.logs, self.omegas, strict=True) if w > self.omega0]
        if not useful:
            return -math.inf
        return math.log(sum(math.exp(min(v, 700.0)) for v in useful) / len(useful))


def odds(p: float) -> float:
    return p / (1 - p)


def tails(slowdown: float) -> list[float]:
    """P(latency > b) for every finite bound ``b``."""
    probs = bucket_probs(slowdown)
    return [1.0 - sum(probs[: i + 1]) for i in range(len(BOUNDS))]


def bucket_probs(slowdown: float) -> list[float]:
    """The probability of each bucket (non-cumulative, +Inf last) for a lognormal latency."""
    mu = math.log(MEDIAN * slowdown)
    cdf = [0.5 * (1 + math.erf((math.log(b) - mu) / (SIGMA * math.sqrt(2)))) for b in BOUNDS]
    cdf.append(1.0)
    return [max(b - a, 1e-12) for a, b in zip([0.0, *cdf[:-1]], cdf, strict=True)]


def sprt_step(
    s: Scenario,
    requests: int,
    errors: int,
    buckets: Sequence[int],
    c_probs: Sequence[float],
    s_probs: Sequence[float],
) -> float:
    """The log-likelihood ratio of one interval's canary requests: the canary's true law
    against stable's, both known."""
    if s.canary_errors != s.stable_errors:
        p1, p0 = s.canary_errors, s.stable_errors
        return errors * math.log(p1 / p0) + (requests - errors) * math.log((1 - p1) / (1 - p0))
    if s.slowdown != 1.0:
        counts = [b - a for a, b in zip([0, *buckets[:-1]], buckets, strict=True)]
        return sum(n * math.log(c / q) for n, c, q in zip(counts, c_probs, s_probs, strict=True))
    # A/A: the SPRT of the A/B errors scenario (its alternative) on a canary equal to stable
    p1, p0 = 0.01, s.stable_errors
    return errors * math.log(p1 / p0) + (requests - errors) * math.log((1 - p1) / (1 - p0))


def peeked(s: Scenario, traffic: Traffic, alphas: tuple[float, float]) -> bool:
    """One-sided two-proportion z-tests on the cumulative counts, looked at now: errors at its
    check's share ``alphas[0]``, and "slower than b" at every bucket bound at ``alphas[1] /
    bounds`` (the compare policy's two checks, each with its share)."""
    c, st = traffic.canary, traffic.stable
    tests = [((c.errors, c.requests, st.errors, st.requests), alphas[0])]
    for i in range(len(BOUNDS)):
        slow = (c.buckets[-1] - c.buckets[i], c.buckets[-1], st.buckets[-1] - st.buckets[i])
        tests.append(((*slow, st.buckets[-1]), alphas[1] / len(BOUNDS)))
    for (x1, n1, x2, n2), level in tests:
        if n1 == 0 or n2 == 0:
            continue
        pooled = (x1 + x2) / (n1 + n2)
        spread = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
        z_bound = statistics.NormalDist().inv_cdf(1 - level)
        if spread > 0 and (x1 / n1 - x2 / n2) / spread > z_bound:
            return True
    return False


def only(policy: Policy, kind: str) -> Policy:
    """The policy with only its ``kind`` checks in every stage (the verified split goes with
    the compare checks: it counts their requests and shares their alpha)."""
    keep = {n for n, c in policy.checks.items() if c.kind == kind}
    staged = tuple(
        replace(s, checks=tuple(c for c in s.checks if c in keep)) for s in policy.stages
    )
    tolerance = policy.split_tolerance if kind == "compare" else None
    return replace(
        policy, stages=staged, checks={n: policy.checks[n] for n in keep}, split_tolerance=tolerance
    )


def interval95(k: int, n: int) -> str:
    """Wilson's 95 % interval of a proportion."""
    if n == 0:
        return "-"
    z, p = 1.96, k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return f"[{max(centre - half, 0):.1%}, {min(centre + half, 1):.1%}]"


def summary(outcomes: list[Outcome]) -> tuple[int, float | None]:
    hits = [o.canary_requests for o in outcomes if o.rolled_back]
    return len(hits), (statistics.fmean(hits) if hits else None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rollouts", type=int, default=500)
    parser.add_argument("--rps", type=float, default=20.0, help="requests per second, both sides")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    shipped = load_policy(ROOT / "rules" / "matriz-fast-track.yaml")
    policies = {"compare": only(shipped, "compare"), "threshold": only(shipped, "threshold")}
    alphas = (
        compare.alpha_share(shipped, shipped.checks["errors-vs-stable"]),
        compare.alpha_share(shipped, shipped.checks["latency-vs-stable"]),
    )
    rng = random.Random(args.seed)
    began = time.monotonic()
    print(
        f"matriz-fast-track stages, {args.rps:g} req/s, {args.rollouts} rollouts per cell, "
        f"alpha {shipped.alpha:g} shared by the compare checks (errors {alphas[0]:g}, "
        f"latency {alphas[1]:g}, split {compare.alpha_share(shipped):g}), seed {args.seed}"
    )
    header = f"{'scenario':<20} {'method':<11} {'rolled back':>12} {'95% interval':>16} "
    print(header + f"{'canary requests to rollback (mean)':>36}")
    results: dict[tuple[str, str], tuple[int, float | None]] = {}
    for scenario in SCENARIOS:
        methods = ("compare", "threshold", "SPRT", "ratio SPRT", "peeking")
        rows: dict[str, list[Outcome]] = {m: [] for m in methods}
        for _ in range(args.rollouts):
            for name, policy in policies.items():
                rows[name].append(run_engine(policy, scenario, args.rps, rng))
            sprt, ratio, peek = run_baselines(shipped, scenario, args.rps, rng, alphas)
            rows["SPRT"].append(sprt)
            rows["ratio SPRT"].append(ratio)
            rows["peeking"].append(peek)
        for method, outcomes in rows.items():
            k, mean = summary(outcomes)
            results[(scenario.name, method)] = (k, mean)
            shown = "-" if mean is None else f"{mean:,.0f}"
            print(
                f"{scenario.name:<20} {method:<11} {k / len(outcomes):>12.1%} "
                f"{interval95(k, len(outcomes)):>16} {shown:>36}"
            )
    return verdict(results, args.rollouts, time.monotonic() - began)


def verdict(results: dict[tuple[str, str], tuple[int, float | None]], n: int, took: float) -> int:
    """The issue's targets, each with its figure."""
    false_rate = results[("A/A", "compare")][0] / n
    detect = [results[(s.name, "compare")][0] / n for s in SCENARIOS[1:]]
    ours, limit = (
        results[("errors 1% vs 0.5%", "compare")][1],
        results[("errors 1% vs 0.5%", "SPRT")][1],
    )
    ratio = (ours / limit) if ours and limit else math.inf
    checks = [
        (f"false rollbacks (A/A) {false_rate:.1%} <= 5%", false_rate <= 0.05),
        (f"detection {', '.join(f'{d:.1%}' for d in detect)} >= 90%", min(detect) >= 0.9),
        (f"canary requests to detect 1% vs 0.5%: {ratio:.2f}x the SPRT limit <= 2x", ratio <= 2),
    ]
    for text, ok in checks:
        print(("PASS " if ok else "FAIL ") + text)
    print(f"({took:.0f} s)")
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
