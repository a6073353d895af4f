"""How fast a policy acts on a bad canary: the model behind ``canaryd check``'s timing lines.

Pure arithmetic, no I/O; ``rules/README.md`` (*Worst cases*) states the same model for people.

**Threshold checks.** A check's value is a ratio of ``rate(...[window])`` terms, i.e. (at steady
traffic) a time average over the window of a quantity in [0, 1] — a success share, an error
share, the share under a latency bound. Before the breach it is ideal (1, or 0 for ``<=``
bounds); from the breach on it is at its worst (a *full* breach: every request fails or is
slow). The window value then crosses the threshold once a fraction ``f`` of the window holds bad
samples: ``f = 1 − threshold`` for a ``>=`` bound, ``f = threshold`` for a ``<=`` bound in [0, 1],
``f = 1 − q`` for ``histogram_quantile(q, ...)`` (the quantile moves once more than ``1 − q`` of
the window's requests are slow); any other shape is assumed to need the whole window. Bad
samples exist only once scraped, so the lag is ``f × window`` rounded up to whole scrape
intervals, plus one scrape interval. A milder breach takes proportionally longer, up to the
whole window (and forever for one that never crosses): the figures are for a full breach.

After the lag the next evaluation is at most one ``interval`` away, and the check rolls back at
its ``failure_limit + 1``-th failed evaluation: ``(failure_limit + 1) × interval``. Then the
router applies weight 0 (``ROUTER_APPLY``).

**Alerts.** A Prometheus rule fires after its own window lag (the same model on its
expression), then within one rule ``evaluation_interval`` it is pending and ``for:`` later
firing; Alertmanager sends the first notification of a group after ``group_wait``; canaryd
rolls back at once; then the router.

**Compare checks** conclude on evidence, not on a window: how many canary requests that takes
is random. ``detection`` simulates the check's e-process (``core.sequential``, the engine's own
update) on Poisson error counts at a stated traffic, over the policy's stages at their fastest,
with a fixed seed so the figure is the same on every run.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass

from canaryd.core import compare, sequential
from canaryd.core.model import Check, Policy

DEFAULT_RPS = 20.0  # requests per second to the service (both sides): tests/bench/decisions.py's
DEFAULT_ERROR_RATE = 0.005  # stable's error share; the canary's is twice it
SLOW_SHARE = 0.05  # stable's share slower than the bound that moves (its p95's); canary: twice
DEFAULT_BOUNDS = 10  # finite bucket bounds of a latency histogram (the demo service's)
RUNS = 400  # simulated rollouts per estimate (well under a second)
SEED = 1

# Seconds from canaryd's write to the proxy serving the new weights, and why; None: not bounded
# by anything canaryd knows (an API write, then a controller's reconcile).
ROUTER_APPLY: dict[str, tuple[float | None, str]] = {
    "noop": (0.0, "nothing to apply"),
    "nginx": (1.0, "an nginx reload, ≤ 1s; 14 ms measured"),
    "traefik-file": (2.0, "Traefik's file provider, throttled 2s"),
    "gateway-api": (None, "an API write, then the gateway controller's sync"),
    "traefik-service": (None, "an API write, then Traefik's Kubernetes provider"),
    "nginx-ingress": (None, "an API write, then the ingress controller's reload"),
    "argo-rollouts": (None, "an API write, then the Argo Rollouts controller"),
}

_QUANTILE = re.compile(r"histogram_quantile\(\s*([0-9.]+)\s*,")


def router_apply(kind: str) -> tuple[float | None, str]:
    """How long the router ``kind`` takes to apply a weight (None: unknown), and why."""
    return ROUTER_APPLY.get(kind, (None, f"router {kind}: not known"))


def breach_fraction(query: str, op: str, threshold: float) -> float:
    """The share of the window a full breach must fill before the value crosses (module doc)."""
    quantile = _QUANTILE.search(query)
    if quantile is not None and 0.0 < float(quantile.group(1)) < 1.0:
        return 1.0 - float(quantile.group(1))
    if 0.0 <= threshold <= 1.0:
        return 1.0 - threshold if op in (">=", ">") else threshold
    return 1.0


def window_lag(fraction: float, window: float, scrape: float) -> float:
    """Seconds from a full breach to a window value past the bound: the bad part of the window,
    in whole scrape intervals, plus the scrape that first carries it."""
    if scrape <= 0:
        return fraction * window
    return math.ceil(fraction * window / scrape - 1e-9) * scrape + scrape


@dataclass(frozen=True, slots=True)
class Breach:
    """A threshold check's worst case after a full breach, in parts."""

    check: str
    fraction: float
    lag: float
    evaluations: float

    @property
    def total(self) -> float:
        return self.lag + self.evaluations


def threshold_breach(policy: Policy, check: Check, window: float, scrape: float) -> Breach:
    """``check``'s full breach: window lag, then ``failure_limit + 1`` evaluations."""
    fraction = breach_fraction(check.query, check.op, check.threshold)
    evaluations = (policy.limits.failure_limit + 1) * policy.interval
    return Breach(check.name, fraction, window_lag(fraction, window, scrape), evaluations)


def staged_checks(policy: Policy, kind: str) -> list[Check]:
    """The policy's checks of ``kind`` that some stage evaluates, in definition order."""
    used = {name for stage in policy.stages for name in stage.checks}
    return [c for name, c in policy.checks.items() if name in used and c.kind == kind]


@dataclass(frozen=True, slots=True)
class Detection:
    """How a compare check fares against a doubling of its bad events, over ``runs`` rollouts:
    errors, or (latency) requests slower than one of ``bounds`` bucket bounds."""

    rps: float
    error_rate: float  # stable's share of bad events
    bounds: int
    runs: int
    detected: int
    median_requests: float | None  # canary requests until the rollback, detected rollouts
    median_seconds: float | None  # from the rollout's first evaluation (the baseline)


def schedule(policy: Policy) -> list[float]:
    """The canary's weight (0..1) in each evaluation interval of the fastest rollout."""
    out: list[float] = []
    for stage in policy.stages:
        out += [stage.weight / 100.0] * max(1, math.ceil(stage.duration / policy.interval - 1e-9))
    return out


def detection(
    policy: Policy,
    check: Check,
    rps: float = DEFAULT_RPS,
    error_rate: float = DEFAULT_ERROR_RATE,
    runs: int = RUNS,
    bounds: int = 1,
) -> Detection:
    """Simulate ``check`` (its tolerance, its share of ``alpha``) when the canary's bad events
    are twice stable's: per interval Poisson counts on each side's expected requests, fed to the
    engine's e-process update; rolled back at the ``failure_limit + 1``-th failed evaluation.
    The first evaluation is the baseline, so evidence starts one interval in.

    A latency check averages one e-process per bucket bound; when only one of ``bounds`` moves
    and the others are counted as no evidence at all (e-value 0, the pessimistic case), the
    average reaches ``1/alpha`` when the moving one reaches ``bounds/alpha``."""
    rng = random.Random(SEED)
    bound = math.log(bounds / compare.alpha_share(policy, check))
    omega0 = 1.0 + check.tolerance
    weights = schedule(policy)
    extra = policy.limits.failure_limit
    requests: list[float] = []
    seconds: list[float] = []
    for _ in range(runs):
        logs = sequential.start()
        served = 0.0
        failed_at: int | None = None
        for k, weight in enumerate(weights):
            n_c, n_s = rps * weight * policy.interval, rps * (1 - weight) * policy.interval
            served += n_c
            if failed_at is None:
                x = _poisson(rng, n_c * 2 * error_rate)
                y = _poisson(rng, n_s * error_rate)
                logs = sequential.update(logs, x, x + y, n_c, n_s, omega0)
                if math.log(sequential.e_value(logs)) >= bound:
                    failed_at = k
            if failed_at is not None and k >= failed_at + extra:
                requests.append(served)
                seconds.append((k + 1) * policy.interval)
                break
    return Detection(
        rps, error_rate, bounds, runs, len(requests), _median(requests), _median(seconds)
    )


def _poisson(rng: random.Random, mean: float) -> int:
    """Knuth's method in chunks: means here are a few to a few dozen."""
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


def _median(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
