"""The anytime-valid sequential test behind ``compare`` checks: is the canary worse than stable?

Pure arithmetic on counts, no I/O. ``rules/README.md`` (section *Compare checks*) explains the
test for people; this docstring says what the code relies on.

**One comparison** is a "bad event" (an error; a request slower than a bucket bound) seen on both
sides. In each evaluation interval ``k`` the canary served ``n_c`` requests and had ``x`` bad
ones, stable served ``n_s`` and had ``m - x``. Conditional on the interval's margins the canary's
share of the ``m`` bad events is binomial with

    p(ω) = ω·n_c / (ω·n_c + n_s)

when bad events are Poisson with rates whose ratio is ``ω`` (exact; shared fluctuations of both
rates cancel). The null hypothesis is "the canary is not worse than tolerated":
``ω <= ω0 = 1 + tolerance``. For an alternative ``ω1 > ω0`` the product over intervals of

    LR_k(ω1) = (p(ω1)/p(ω0))^x · ((1-p(ω1))/(1-p(ω0)))^(m-x)

is a nonnegative martingale under ``ω = ω0`` and a supermartingale under any ``ω < ω0`` (its
one-step mean is linear and increasing in the true ``p``). A mixture over alternatives on a
fixed grid (``GRID``, prior weights ``WEIGHTS`` summing to 1, fixed before any data) is again a
test supermartingale — an e-process — so by
Ville's inequality ``P(sup_t E_t >= 1/alpha) <= alpha``: the test may be looked at after every
evaluation, for as long as the rollout lasts, and stop at the first crossing.

When requests are Bernoulli trials rather than Poisson (a bad event that is not rare, as "slower
than the median"), the conditional law of ``x`` is Fisher's noncentral hypergeometric with odds
ratio ``ω``; the same e-value keeps a mean of at most 1 under ``ω <= ω0`` (Hoeffding 1963,
Thm. 4, for ``ω0 = 1``; checked exactly over a grid of margins and ``ω0`` up to 1.5 in
``tests/core/test_sequential.py``). ``ω`` then reads as the odds ratio, which for rare events is
the rate ratio. That is why ``tolerance`` is defined on the odds.

**Latency** compares histograms: for every finite bucket bound ``b`` the bad event is "slower
than b" (``+Inf`` count minus the ``le=b`` count), each bound its own e-process. Their average
is an e-process for the joint null "at no bound is the canary's odds of being slower more than
``ω0`` times stable's" (the mean of test supermartingales on one filtration is one), so the
check rejects when the *average* reaches ``1/alpha`` — never weaker than a Bonferroni split.

**State** is the log of each grid component's product, per bound: a few floats, carried in the
rollout record (``Rollout.compare``) and stored with it, so a restarted daemon continues the same
e-process. Intervals come from cumulative counts: the increment since the last evaluation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

# Alternatives, as multiples of the null's ratio ω0, and their prior weights. A doubling of
# errors is the design point, so most weight sits on it: against ω = 2 the mixture pays
# log(1/0.6) ≈ 0.5 nats instead of the log 3 ≈ 1.1 of three equal weights, and the neighbours
# keep a 1.5-fold or a 3-fold increase from waiting on the wrong component. Chosen with
# tests/bench/decisions.py (tests/bench/README.md has the before/after figures).
GRID: tuple[float, ...] = (1.5, 2.0, 3.0)
WEIGHTS: tuple[float, ...] = (0.2, 0.6, 0.2)
LOG_CAP = 700.0  # exp() of more overflows; an e-value this large has long crossed any bound


def start() -> tuple[float, ...]:
    """A fresh e-process: every component's product is 1 (log 0)."""
    return tuple(0.0 for _ in GRID)


def carried(logs: Sequence[float]) -> tuple[float, ...]:
    """A state as one on ``GRID``. Each component is a test supermartingale whatever
    alternatives it used before (a record from a canaryd with other grid values), so one of the
    same length continues as it is. One of another length is first reduced to its equal-weight
    mixture, and every component starts from that value: the old e-value times a fresh mixture
    from now on is still a test supermartingale, so the evidence so far is kept, none invented."""
    if len(logs) == len(GRID):
        return tuple(logs)
    if not logs:
        return start()
    old = sum(math.exp(v) for v in logs) / len(logs)
    return tuple(math.log(old) if old > 0 else -LOG_CAP for _ in GRID)


def update(
    logs: Sequence[float], x: int, m: int, n_c: float, n_s: float, omega0: float
) -> tuple[float, ...]:
    """The components after one interval: ``x`` of ``m`` bad events on the canary's ``n_c``
    requests, the rest on stable's ``n_s``. An interval without bad events, or without requests
    on one side, carries no evidence and changes nothing."""
    logs = carried(logs)
    if m <= 0 or n_c <= 0 or n_s <= 0:
        return logs
    x = min(max(x, 0), m)
    p0 = omega0 * n_c / (omega0 * n_c + n_s)
    out = []
    for log_e, factor in zip(logs, GRID, strict=True):
        omega1 = omega0 * factor
        p1 = omega1 * n_c / (omega1 * n_c + n_s)
        step = x * math.log(p1 / p0) + (m - x) * math.log((1.0 - p1) / (1.0 - p0))
        out.append(min(log_e + step, LOG_CAP))
    return tuple(out)


def e_value(logs: Sequence[float]) -> float:
    """The mixture's value: the components' products, weighted by ``WEIGHTS``."""
    logs = carried(logs)
    return sum(w * math.exp(v) for w, v in zip(WEIGHTS, logs, strict=True))


def e_average(components: Sequence[Sequence[float]]) -> float:
    """The average of several e-processes (latency: one per bucket bound); 0 if there are none."""
    if not components:
        return 0.0
    return sum(e_value(c) for c in components) / len(components)
