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


def checks_text(checks: dict[str, dict[str, Any]]) -> str:
    parts = []
    for name, m in sorted(checks.items()):
        value = m.get("value")
        shown = f"{value:.4g}" if isinstance(value, int | float) else "no data"
        if m.get("error"):
            shown = "error"
        verdict = m.get("verdict")
        parts.append(f"{name}={shown}" + (f" ({verdict})" if verdict else ""))
    return "  ".join(parts)


def decision_line(d: dict[str, Any]) -> str:
    return (
        f"{when(d.get('t'), clock=True)}  stage {d.get('stage', '?')}  "
        f"{d.get('action', '?'):<13} {d.get('reason', '')}"
    )


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
