"""The one RFC 3339 parser of canaryd: webhook times, ``--epoch``/``--from``/``--to``, samples.

``datetime.fromisoformat`` (Python 3.11) does the calendar and offset arithmetic and reads ``Z``
and fractions of any length, but it is laxer than RFC 3339 (it takes ``20240501T1200``, a date
alone, a space for ``T`` and a time without an offset, which would be read as local time) and it
keeps microseconds only, dropping the rest of Go's nanoseconds. So a strict pattern decides what
is an RFC 3339 time, ``fromisoformat`` reads it, and digits past the sixth are added back.

The common case (an upper-case ``T``/``Z``, at most six fraction digits, no leap second: every
time Alertmanager sends whose fraction Go trimmed) is one ``fullmatch`` and one
``fromisoformat``: the webhook reads two times per alert, so this is on its hot path.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

_RFC3339 = re.compile(
    r"(\d{4}-\d{2}-\d{2})[Tt](\d{2}:\d{2}):(\d{2})(?:\.(\d{1,32}))?([Zz]|[+-](\d{2}):(\d{2}))"
)
SHAPE = "YYYY-MM-DDTHH:MM:SS[.fraction] and Z or an offset such as +02:00"


def parse_rfc3339(text: str) -> float:
    """Seconds since the Unix epoch of an RFC 3339 time, to the nanosecond.

    ``ValueError`` says what is wrong without repeating ``text`` (callers name the field)."""
    m = _RFC3339.fullmatch(text)
    if m is None:
        raise ValueError(f"expected {SHAPE}")
    second, digits = m.group(3), m.group(4) or ""
    if len(digits) <= 6 and second < "60":
        try:
            return datetime.fromisoformat(text).timestamp()
        except ValueError:
            pass  # lower-case t/z, or a field out of range: the exact path says which
    return _exact(m, int(second), digits)


def _exact(m: re.Match[str], second: int, digits: str) -> float:
    """The rare shapes: lower-case ``t``/``z``, a leap second, more than six fraction digits."""
    if second > 60:
        raise ValueError("second must be in 0..60")
    zone = m.group(5)
    if zone in ("Z", "z"):
        zone = "+00:00"
    elif int(m.group(6)) > 23 or int(m.group(7)) > 59:
        raise ValueError("bad UTC offset")
    base = f"{m.group(1)}T{m.group(2)}:{min(second, 59):02d}{zone}"
    seconds = datetime.fromisoformat(base).timestamp()  # ValueError names the bad field
    if second == 60:  # a leap second: RFC 3339 allows it, Go never sends it
        seconds += 1.0
    return seconds + (int(digits) / 10 ** len(digits) if digits else 0.0)


def format_rfc3339(seconds: float, *, local: bool = False, fraction: bool = True) -> str:
    """Unix ``seconds`` as RFC 3339 with its zone: UTC with ``Z`` (what the API answers, e.g.
    ``2026-12-01T06:30:00.25Z``), or with ``local`` the machine's zone and offset (what
    ``canaryctl`` tables show people, ``Z`` again on a machine set to UTC).

    ``fraction`` keeps milliseconds when there are any (trailing zeros trimmed, as Go's
    ``RFC3339Nano`` does), so decisions within one second keep their order; tables drop them.
    """
    moment = datetime.fromtimestamp(seconds, UTC)
    if local:
        moment = moment.astimezone()
    text = moment.isoformat(timespec="milliseconds" if fraction else "seconds")
    if fraction:
        head, _, rest = text.partition(".")
        millis, zone = rest[:3].rstrip("0"), rest[3:]
        text = f"{head}.{millis}{zone}" if millis else f"{head}{zone}"
    return text[:-6] + "Z" if text.endswith("+00:00") else text
