"""Durations as people write them in YAML: ``90``, ``"30s"``, ``"2m"``, ``"1h30m"``, ``"500ms"``."""

from __future__ import annotations

import re

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: object) -> float:
    """Seconds in ``value``; raises ValueError with a readable message otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like 30s or 2m, got {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"duration must not be negative, got {value!r}")
        return float(value)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected a duration like 30s or 2m, got {value!r}")
    text = value.strip()
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        return float(text)
    pos, total = 0, 0.0
    for match in _PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT[match.group(2)]
        pos = match.end()
    if pos != len(text) or pos == 0:
        raise ValueError(f"expected a duration like 30s, 2m or 1h30m, got {value!r}")
    return total


def format_duration(seconds: float) -> str:
    """``1020`` -> ``"17m"``, ``95`` -> ``"1m35s"``, ``0.5`` -> ``"500ms"``."""
    if seconds < 1 and seconds > 0:
        return f"{round(seconds * 1000)}ms"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [
        f"{hours}h" if hours else "",
        f"{minutes}m" if minutes else "",
        f"{secs}s" if secs else "",
    ]
    return "".join(parts) or "0s"
