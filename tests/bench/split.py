"""Verified split: requests until a wrong split is shown, and how often a right one is flagged.

Runs ``canaryd.core.split`` (the daemon's own code) over simulated stages: ``--rps`` requests a
second, evaluated every second, each request on the canary with the stage's true share. α and
the tolerance are the shipped fast track's (``split.alpha``: the split's share of ``alpha``
beside the compare checks, divided among the four stages). Prints one row per scenario: how many
stages were flagged, and the requests (both sides) until flagged. Targets: a halved split at
10 %, 20 %, 25 % and 50 % flagged in every stage; a correct split, or one at the tolerance's
edge, flagged in at most α of the stages.

    python3 tests/bench/split.py [--stages 200] [--rps 20] [--seed 11]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "daemon"))

from canaryd.config.policies import load_policy
from canaryd.core import split
from canaryd.core.model import Counts

SHIPPED = load_policy(Path(__file__).resolve().parents[2] / "rules" / "matriz-fast-track.yaml")
ALPHA = split.alpha(SHIPPED)  # its share beside the compare checks, over four stages
assert SHIPPED.split_tolerance is not None, "the fast track verifies its split"
TOLERANCE = SHIPPED.split_tolerance
# (weight asked, true share, evaluations, should be flagged)
SCENARIOS = (
    (10, 0.05, 600, True),
    (20, 0.10, 600, True),
    (25, 0.125, 600, True),
    (50, 0.25, 600, True),
    (25, 0.25, 600, False),
    (50, 0.50 - TOLERANCE, 600, False),
    (25, 0.25 - TOLERANCE, 300, False),
)


def stage(rng: random.Random, weight: int, share: float, rps: int, evals: int) -> int | None:
    """Requests counted until the stage was flagged (None: never, over ``evals``)."""
    state, canary, stable = None, 0, 0
    for k in range(evals + 1):
        n = rps if k else 0  # the first reading is the baseline
        x = sum(rng.random() < share for _ in range(n))
        canary, stable = canary + x, stable + n - x
        state = split.observe(state, Counts(canary, 0.0, stable, 0.0), weight, TOLERANCE, ALPHA)
        if state is not None and state.concluded:
            return k * rps
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stages", type=int, default=200)
    parser.add_argument("--rps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    ok = True
    print(f"alpha per stage {ALPHA:.4f}, tolerance ±{TOLERANCE * 100:g} points, {args.rps} req/s")
    print("| weight asked | true share | flagged | requests until flagged, mean / max |")
    print("|---|---|---|---|")
    for weight, share, evals, wrong in SCENARIOS:
        runs = [stage(rng, weight, share, args.rps, evals) for _ in range(args.stages)]
        hits = [r for r in runs if r is not None]
        seen = f"{round(statistics.mean(hits)):,} / {max(hits):,}" if hits else "—"
        print(f"| {weight} % | {share:.1%} | {len(hits)} / {len(runs)} | {seen} |")
        ok &= len(hits) == len(runs) if wrong else len(hits) <= max(1, 3 * ALPHA * len(runs))
    print("targets met" if ok else "TARGETS MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
