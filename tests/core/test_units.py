"""``core.units``: what a check's number means to people, for every shipped policy's checks."""

from __future__ import annotations

import math

import pytest

from canaryd.config.policies import RULES_DIR, load_policy
from canaryd.core import units
from canaryd.core.model import Check


def test_every_shipped_check_gets_the_unit_its_runbook_means() -> None:
    expected = {
        "success-rate": units.RATIO,
        "error-rate": units.RATIO,
        "health-score": units.RATIO,
        "latency-p95": units.SECONDS,
        # compare checks are judged by an e-value: a plain number, though one compares latency
        "errors-vs-stable": units.NONE,
        "latency-vs-stable": units.NONE,
    }
    for path in sorted(RULES_DIR.glob("*.yaml")):
        for check in load_policy(path).checks.values():
            assert units.unit_of(check) == expected[check.name], (path.name, check.name)


@pytest.mark.parametrize(
    ("check", "unit"),
    [
        (Check("p99", "histogram_quantile(0.99, rate(x_bucket[1m]))", "<=", 0.5), units.SECONDS),
        (Check("request-duration", "avg(x)", "<=", 2.0), units.SECONDS),
        (Check("availability", "avg(up)", ">=", 0.999), units.RATIO),
        (Check("ratio", "a / b", ">=", 0.9), units.RATIO),
        (Check("queue-depth", "max(q)", "<=", 100), units.NONE),
        (Check("errors", "a / b", "<=", 5), units.NONE),  # a count over 1: no percent
    ],
)
def test_units_are_inferred_from_the_query_and_the_name(check: Check, unit: str) -> None:
    assert units.unit_of(check) == unit


@pytest.mark.parametrize(
    ("value", "unit", "shown"),
    [
        (0.9978, units.RATIO, "99.78%"),
        (0.995, units.RATIO, "99.5%"),
        (1.0, units.RATIO, "100%"),
        (0.001, units.RATIO, "0.1%"),
        (0.0949, units.SECONDS, "94.9 ms"),
        (0.25, units.SECONDS, "250 ms"),
        (1.5, units.SECONDS, "1.5 s"),
        (42.0, units.NONE, "42"),
        (math.nan, units.RATIO, "NaN"),
        (math.inf, units.SECONDS, "+Inf"),
    ],
)
def test_values_are_written_in_their_unit(value: float, unit: str, shown: str) -> None:
    assert units.show(value, unit) == shown


def test_operators_read_as_symbols_unless_the_terminal_is_ascii() -> None:
    assert [units.symbol(op) for op in (">=", "<=", ">", "<")] == ["≥", "≤", ">", "<"]
    assert units.symbol(">=", ascii_only=True) == ">="
