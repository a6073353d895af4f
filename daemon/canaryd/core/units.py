"""What a check's number means to a person: its unit, and the value written in it.

A policy's check is a PromQL query and a threshold, with no unit: ``0.995`` is a success rate,
``0.25`` a latency in seconds. People read ``99.5%`` and ``250 ms``, and Grafana needs a unit id
to draw an axis. The unit is inferred from the check once, here, so ``canaryctl watch``, the
demo, the status pages and the Grafana dashboard all say the same thing:

- ``seconds`` when the query takes a quantile of a histogram (Prometheus' histograms are in
  base units, seconds for durations), or the check's name says latency/duration/p95 and not
  rate;
- ``ratio`` (shown as a percent) when the threshold lies in [0, 1] and the check's name or its
  query says it is a rate, ratio, share or score (a division of two rates);
- no unit otherwise: the value is shown as the number it is.

Pure: no I/O, used by the API's views, ``ctl.text`` and ``offline.render`` alike.
"""

from __future__ import annotations

import math
import re

from canaryd.core.model import Check

SECONDS = "seconds"
RATIO = "ratio"
NONE = ""

# Grafana's unit ids (packages/grafana-data valueFormats): seconds, 0.0-1.0 as a percent.
GRAFANA_UNITS = {SECONDS: "s", RATIO: "percentunit", NONE: "none"}

_SYMBOLS = {">=": "≥", "<=": "≤", ">": ">", "<": "<"}
_TIME_WORDS = re.compile(r"latency|duration|\bp\d\d\b|\btime", re.IGNORECASE)
_RATIO_WORDS = re.compile(r"\b(rate|ratio|share|score|success|error|availab)", re.IGNORECASE)


def unit_of(check: Check) -> str:
    """``seconds``, ``ratio`` or ``""`` for ``check``, inferred as the module says. A compare
    check is judged by its e-value, a plain number whatever it compares."""
    if check.kind == "compare":
        return NONE
    named_time = _TIME_WORDS.search(check.name) and not _RATIO_WORDS.search(check.name)
    if "histogram_quantile" in check.query or named_time:
        return SECONDS
    in_unit_range = 0.0 <= check.threshold <= 1.0
    if in_unit_range and (_RATIO_WORDS.search(check.name) or "/" in check.query):
        return RATIO
    return NONE


def show(value: float, unit: str) -> str:
    """``value`` in ``unit`` for people: ``99.78%``, ``95 ms``, ``1.2 s``, ``42``."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if unit == RATIO:
        return f"{value * 100:.4g}%"
    if unit == SECONDS:
        if abs(value) < 1.0:
            return f"{value * 1000:.3g} ms"
        return f"{value:.3g} s"
    return f"{value:.4g}"


def symbol(op: str, ascii_only: bool = False) -> str:
    """``>=`` as ``≥`` (or as itself on a terminal that cannot show it)."""
    return op if ascii_only else _SYMBOLS.get(op, op)
