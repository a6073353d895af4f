"""The one RFC 3339 parser (``core.timefmt``): strict in shape, exact to the nanosecond.

``datetime.fromisoformat`` alone would take ISO 8601 forms that are not RFC 3339 (a date
alone, no offset, which it reads as local time) and would drop Go's nanoseconds past the
sixth digit; these tests pin both, and that every caller reads times through it."""

from __future__ import annotations

from pathlib import Path

import pytest

from canaryd.core.timefmt import parse_rfc3339


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1970-01-01T00:00:00Z", 0.0),
        ("1970-01-01T00:00:00.000000001Z", 1e-9),
        ("1970-01-01T00:00:00.123456789Z", 0.123456789),
        ("1970-01-01t00:00:02z", 2.0),
        ("1970-01-01T02:00:00+02:00", 0.0),
        ("1970-01-01T00:00:60Z", 60.0),  # a leap second, as RFC 3339 allows
        ("0001-01-01T00:00:00Z", -62135596800.0),  # Go's zero time
    ],
)
def test_rfc3339_times_are_read_exactly(text: str, seconds: float) -> None:
    assert parse_rfc3339(text) == pytest.approx(seconds, abs=1e-9)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("2024-05-01", "expected YYYY-MM-DDTHH:MM:SS"),
        ("2024-05-01T12:00:00", "expected YYYY-MM-DDTHH:MM:SS"),  # no offset: not local time
        ("20240501T120000Z", "expected YYYY-MM-DDTHH:MM:SS"),
        ("2024-05-01 12:00:00Z", "expected YYYY-MM-DDTHH:MM:SS"),
        ("2024-13-01T00:00:00Z", "month must be in 1..12"),
        ("2024-05-01T12:00:61Z", "second must be in 0..60"),
        ("2024-05-01T12:00:00+24:00", "bad UTC offset"),
    ],
)
def test_anything_else_is_refused_saying_why(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_rfc3339(text)


def test_no_other_module_parses_times_by_itself() -> None:
    """One parser: nothing else under ``daemon/`` calls ``fromisoformat`` or ``strptime``."""
    daemon = Path(__file__).resolve().parents[2] / "daemon" / "canaryd"
    found = [
        str(path.relative_to(daemon))
        for path in daemon.rglob("*.py")
        if any(word in path.read_text(encoding="utf-8") for word in ("fromisoformat", "strptime"))
    ]
    assert found == ["core/timefmt.py"], found
