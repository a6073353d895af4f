"""The query of ``GET /api/v1/audit``: its parameters read, checked and turned into the store's
filters, and the link to the next page.

Why it is strict where ``/history``'s ``limit`` is lenient about the rest of the query: an audit
query answers "who did this?" during a post-mortem, and a misspelt filter (``?actor=bob``)
silently ignored would answer "everyone". So an unknown or repeated parameter is a 422 naming
it, like a bad value.

Paging is by ``seq`` (the audit row's number, which only grows), not by time or offset: rows
keep being written while an operator pages, and a ``seq`` cursor neither repeats nor skips a
row. ``before=<seq>`` pages back in time (the default direction, newest first); ``after=<seq>``
pages forward from a row already seen, e.g. to follow the log.

Plain Python, no aiohttp: the route table (which ``canaryctl`` imports) takes the parameters'
OpenAPI descriptions from here, so the document and the checks cannot drift apart.
"""

from __future__ import annotations

import math
import re
import urllib.parse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from canaryd.core.timefmt import SHAPE, parse_rfc3339

PATH = "/api/v1/audit"
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_TEXT = 1024  # characters of a text filter
MAX_SEQ = 10**18  # below SQLite's 2**63: a larger cursor would fail to bind, not match nothing
_UNIX = re.compile(r"-?\d{1,15}(?:\.\d{1,9})?")
_TIME = f"RFC 3339 ({SHAPE}) or Unix seconds"


def _parameter(name: str, description: str, schema: dict[str, Any]) -> dict[str, object]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema,
    }


PARAMETERS: tuple[dict[str, object], ...] = (
    _parameter("target", "Only rows about this target", {"type": "string"}),
    _parameter(
        "who", "Only rows of this caller (a token's name, or `anonymous`)", {"type": "string"}
    ),
    _parameter(
        "outcome",
        "Only rows with this outcome (`ok`, `rejected`, `forbidden`, ...)",
        {"type": "string"},
    ),
    _parameter("since", f"Only rows written at or after this time: {_TIME}", {"type": "string"}),
    _parameter("until", f"Only rows written at or before this time: {_TIME}", {"type": "string"}),
    _parameter(
        "limit",
        f"Rows per page (default {DEFAULT_LIMIT})",
        {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT},
    ),
    _parameter(
        "before",
        "Cursor: only rows older than this `seq` (the next page back)",
        {"type": "integer", "minimum": 0},
    ),
    _parameter(
        "after",
        "Cursor: only rows newer than this `seq`, the oldest of them first "
        "taken (following the log)",
        {"type": "integer", "minimum": 0},
    ),
)
NAMES = tuple(str(p["name"]) for p in PARAMETERS)


def _bad(name: str, message: str) -> ValueError:
    """The error of an unusable parameter: its message starts with the parameter's name."""
    return ValueError(f"{name}: {message}")


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """One audit query, checked. ``given`` keeps the parameters as sent, for the next link."""

    target: str | None = None
    who: str | None = None
    outcome: str | None = None
    since: float | None = None
    until: float | None = None
    before: int | None = None
    after: int | None = None
    limit: int = DEFAULT_LIMIT
    given: tuple[tuple[str, str], ...] = field(default=())

    def filters(self) -> dict[str, Any]:
        """The keyword arguments of ``StateStore.audit_log`` for one page, plus one row more
        than the page, which tells whether there is a next page."""
        return {
            "target": self.target,
            "who": self.who,
            "outcome": self.outcome,
            "since": self.since,
            "until": self.until,
            "before": self.before,
            "after": self.after,
            "limit": self.limit + 1,
            "newest_first": True,
        }

    def page(self, rows: Sequence[Any]) -> tuple[list[Any], str | None]:
        """The page out of ``rows`` (what ``filters`` read, newest first) and the link to the
        next one (None: no more). Paging back, the extra row is the oldest; forward, the newest."""
        if len(rows) <= self.limit:
            return list(rows), None
        if self.after is not None:
            page = list(rows[1:])
            return page, self._link("after", page[0]["seq"])
        page = list(rows[: self.limit])
        return page, self._link("before", page[-1]["seq"])

    def _link(self, cursor: str, seq: int) -> str:
        kept = [(k, v) for k, v in self.given if k != cursor]
        return f"{PATH}?{urllib.parse.urlencode([*kept, (cursor, str(seq))])}"


def read_query(pairs: Iterable[tuple[str, str]], outcomes: frozenset[str]) -> AuditQuery:
    """The audit query of a request's query string (every pair, repeats included);
    ``ValueError`` naming an unknown, repeated or unusable parameter. ``outcomes`` are the
    outcomes an audit row can have (a typo there would match nothing)."""
    given: dict[str, str] = {}
    for name, value in pairs:
        if name not in NAMES:
            known = ", ".join(NAMES)
            raise _bad(name[:64], f"unknown query parameter; known: {known}")
        if name in given:
            raise _bad(name, "given more than once")
        given[name] = value
    texts = {k: _text(k, given[k]) for k in ("target", "who", "outcome") if k in given}
    outcome = texts.get("outcome")
    if outcome is not None and outcome not in outcomes:
        raise _bad("outcome", f"expected one of {', '.join(sorted(outcomes))}")
    since, until = _time("since", given.get("since")), _time("until", given.get("until"))
    if since is not None and until is not None and until < since:
        raise _bad("until", "is before since")
    return AuditQuery(
        target=texts.get("target"),
        who=texts.get("who"),
        outcome=outcome,
        since=since,
        until=until,
        before=_integer("before", given.get("before"), 0, MAX_SEQ),
        after=_integer("after", given.get("after"), 0, MAX_SEQ),
        limit=_integer("limit", given.get("limit"), 1, MAX_LIMIT) or DEFAULT_LIMIT,
        given=tuple(given.items()),
    )


def _text(name: str, value: str) -> str:
    if not value or len(value) > MAX_TEXT:
        raise _bad(name, f"expected a non-empty value of at most {MAX_TEXT} characters")
    return value


def _time(name: str, value: str | None) -> float | None:
    if value is None:
        return None
    if _UNIX.fullmatch(value):
        seconds = float(value)
        if math.isfinite(seconds):
            return seconds
    try:
        return parse_rfc3339(value)
    except (ValueError, OverflowError):
        raise _bad(name, f"expected {_TIME}") from None


def _integer(name: str, value: str | None, low: int, high: int) -> int | None:
    if value is None:
        return None
    if value.isascii() and value.isdigit() and len(value) <= 19 and low <= int(value) <= high:
        return int(value)
    raise _bad(name, f"expected an integer within {low}..{high}")
