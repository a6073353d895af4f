"""How ``canaryctl`` shows things to people: tables, weight bars, times, decision lines.

Kept apart from ``ctl.main`` (the commands) so the commands read as what they do; every
function here is pure text in, text out, except ``print_json``.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from canaryd.core import units
from canaryd.core.durations import format_duration
from canaryd.core.timefmt import format_rfc3339, parse_rfc3339
from canaryd.ctl.client import EXIT_OK, RolloutView


def print_json(doc: Any) -> int:
    json.dump(doc, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")
    return EXIT_OK


def table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def bar(weight: int, width: int = 20, ascii_only: bool = False) -> str:
    canary = max(0, min(width, round(weight * width / 100)))
    full, empty = ("#", "-") if ascii_only else ("█", "░")
    return f"[{full * canary}{empty * (width - canary)}]"


def checks_text(checks: dict[str, dict[str, Any]], ascii_only: bool = False) -> str:
    """Every check's latest value against its threshold, two spaces apart (``check_text``)."""
    return "  ".join(check_text(name, m, ascii_only) for name, m in sorted(checks.items()))


def check_text(name: str, m: dict[str, Any], ascii_only: bool = False) -> str:
    """One check as people read it: ``success-rate 99.8% ≥ 99.5% ✓``, ``latency-p95 95 ms ≤
    250 ms ✓``, ``error-rate no data ≤ 0.1% ?``. The unit, threshold and verdict come from the
    API (``api.views.check_view``: the daemon's own analysis), so this never judges a value
    itself; an older daemon without them shows the bare value and the verdict it gave, if any.
    """
    unit = str(m.get("unit") or "")
    value = m.get("value")
    shown = units.show(float(value), unit) if isinstance(value, int | float) else "no data"
    if m.get("error"):
        shown = "error"
    parts = [name, shown]
    threshold, op = m.get("threshold"), m.get("op")
    if isinstance(threshold, int | float) and isinstance(op, str):
        parts += [units.symbol(op, ascii_only), units.show(float(threshold), unit)]
    verdict = m.get("verdict")
    if isinstance(verdict, str):
        parts.append(_MARKS[ascii_only].get(verdict, verdict))
    return " ".join(parts)


# verdict -> mark: ✓ pass, ✗ fail, ? no data yet, ! the source could not answer
_MARKS = {
    False: {"successful": "✓", "failed": "✗", "inconclusive": "?", "error": "!"},
    True: {"successful": "ok", "failed": "FAIL", "inconclusive": "no-data", "error": "error"},
}


def time_left(r: RolloutView) -> str:
    """How long the current stage still runs, as the engine counts it: the stage's duration less
    the seconds of passing analysis credited so far (a failing or silent evaluation credits
    nothing, so this can stand still). Empty when the rollout is not progressing."""
    stage = r.current
    if stage is None or r.phase != "Progressing" or r.waiting_for_promote:
        return ""
    left = max(0.0, stage.duration - r.credited)
    if stage.duration <= 0:
        return "last stage"
    return f"{format_duration(round(left))} left" if left > 0 else "stage passed"


def decision_line(d: dict[str, Any]) -> str:
    return f"{when(d.get('t'), clock=True)}  {decision_text(d)}"


def decision_text(d: dict[str, Any]) -> str:
    """A decision and its reason, as ``watch`` and the demo print it the moment it is taken."""
    return f"stage {d.get('stage', '?')}  {d.get('action', '?'):<13} {d.get('reason', '')}"


def when(t: Any, clock: bool = False) -> str:
    """A time for people: RFC 3339 in the local zone with its offset (``Z`` on a UTC machine)
    in tables; the wall clock alone (``clock``) in live lines. ``t``: Unix seconds or the
    API's RFC 3339 text."""
    if isinstance(t, str):
        try:
            t = parse_rfc3339(t)
        except ValueError:
            return str(t)
    if not isinstance(t, int | float):
        return "-"
    if clock:
        return f"{datetime.fromtimestamp(t):%H:%M:%S}"
    return format_rfc3339(t, local=True, fraction=False)


def age(r: RolloutView) -> str:
    if r.started_at is None:
        return "-"
    end = r.finished_at if r.finished_at is not None else time.time()
    return format_duration(max(0.0, end - r.started_at))
