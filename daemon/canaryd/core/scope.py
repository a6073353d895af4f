"""Rollout-scoped evidence: no rollout is judged on samples from before its canary was ready.

A check such as ``rate(http_requests_total{deployment="canary"}[2m])`` asked 9 s after a
rollout's canary became ready reads 111 s of samples that are not its own: on a systemd host the
previous canary's (same job, same ``deployment="canary"`` label), on Kubernetes or Docker the
old canary's series of the same job. A healthy successor started right after a rollback was
rolled back that way on the previous version's errors. So every range window of a query is
clipped to the age of the *rollout's* evidence, ``now - ready_at`` (``scoped``).

Why the rollout's age and not the stage's: the canary runs one version for the whole rollout,
so the samples of its earlier stages are its own evidence; clipping per stage would throw them
away and leave every new stage blind for a while, which delays a rollback (the one thing
canaryd must always do). A check that depends on the weight (an absolute request rate) mixes
stages within its window, as it always did.

Too short a window is no evidence: ``rate()`` needs two samples per series, so a rollout younger
than ``min(min_window, the query's own lookback)`` gets no data for the query ("no data yet",
inconclusive, never a pass), and the engine does not count that towards ``inconclusive_limit``
(``young``). ``min_window`` should be about twice the scrape interval (policy key, default
30 s: twice the 15 s of Prometheus's example configuration).

How a query is rewritten (pure text surgery on the PromQL; strings and comments are skipped):

- a range selector ``x[2m]`` whose range exceeds the budget becomes ``x[<budget>]``;
- a subquery ``expr[5m:30s]`` looks back its range *plus* the lookback of ``expr``; when that
  exceeds the budget, the inner ranges get ``min(inner, max(budget - range, budget / 2))`` and
  the subquery's range what is left, so no sample before the rollout is read;
- a selector or subquery with ``offset`` or ``@`` asks for another time on purpose (a baseline
  from yesterday) and is left as written;
- instant selectors (``up{...}``) are not windows: they read the latest sample, as always.

Budgets are whole seconds (floored: a shorter window never reaches back further). The daemon's
evaluator, ``canaryctl replay`` and the engine's "no data yet" all call these functions, so they
agree; ``canaryctl render`` has no rollout and keeps the policy's window (its output says so).
Checks that select the canary by ``{{version}}`` under ``scope: version`` are not clipped: their
samples are the rollout's image by construction.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache

from canaryd.core import templates
from canaryd.core.durations import format_duration
from canaryd.core.model import Check, Policy, Rollout, Scope

_UNIT = {
    "ms": 0.001,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
    "w": 604800.0,
    "y": 31536000.0,
}
_DURATION = r"(?:\d+(?:ms|s|m|h|d|w|y))+"
_BRACKET = re.compile(rf"\s*({_DURATION})\s*(?:(:)\s*({_DURATION})?\s*)?")
_PART = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")
_MODIFIER = re.compile(r"\s*(?:offset\b|@)", re.IGNORECASE)


def promql_seconds(text: str) -> float:
    """Seconds in a PromQL duration literal (``1h30m``, ``500ms``)."""
    return sum(int(n) * _UNIT[unit] for n, unit in _PART.findall(text))


def promql_duration(seconds: float) -> str:
    """A PromQL duration literal for ``seconds`` (floored to the millisecond)."""
    ms = math.floor(seconds * 1000 + 1e-6)
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


@dataclass(frozen=True, slots=True)
class _Bracket:
    """One ``[range]`` or ``[range:step]`` of a query, where its range is, what it applies to."""

    start: int  # index of "["
    range_start: int
    range_end: int
    seconds: float
    subquery: bool
    fixed: bool  # followed by offset or @: left as written
    operand: tuple[int, int] | None  # a subquery's parenthesised operand (open, close)


def _brackets(query: str) -> list[_Bracket]:
    """Every range bracket of ``query``, skipping strings and comments."""
    out: list[_Bracket] = []
    opens: list[int] = []
    closes: dict[int, int] = {}
    i, n = 0, len(query)
    while i < n:
        ch = query[i]
        if ch in "\"'`":
            i = _string_end(query, i)
            continue
        if ch == "#":
            end = query.find("\n", i)
            i = n if end < 0 else end + 1
            continue
        if ch == "(":
            opens.append(i)
        elif ch == ")" and opens:
            closes[i] = opens.pop()
        elif ch == "[":
            end = query.find("]", i)
            match = _BRACKET.fullmatch(query, i + 1, end) if end > 0 else None
            if match is not None:
                out.append(_bracket(query, i, end, match, closes))
                i = end + 1
                continue
        i += 1
    return out


def _string_end(query: str, i: int) -> int:
    quote, j = query[i], i + 1
    while j < len(query):
        if query[j] == "\\" and quote != "`":
            j += 2
            continue
        if query[j] == quote:
            return j + 1
        j += 1
    return len(query)


def _bracket(
    query: str, i: int, end: int, match: re.Match[str], closes: dict[int, int]
) -> _Bracket:
    subquery = match.group(2) is not None
    operand = None
    if subquery:
        before = query[:i].rstrip()
        close = len(before) - 1
        if before.endswith(")") and close in closes:
            operand = (closes[close], close)
    return _Bracket(
        start=i,
        range_start=match.start(1),
        range_end=match.end(1),
        seconds=promql_seconds(match.group(1)),
        subquery=subquery,
        fixed=_MODIFIER.match(query, end + 1) is not None,
        operand=operand,
    )


def _children(brackets: list[_Bracket], lo: int, hi: int) -> list[_Bracket]:
    """The brackets within (lo, hi) that are not inside a subquery's operand within it."""
    inside = [b for b in brackets if lo < b.start < hi]
    nested = [b.operand for b in inside if b.operand is not None]
    return [b for b in inside if not any(o[0] < b.start < o[1] for o in nested)]


def _lookback(b: _Bracket, brackets: list[_Bracket]) -> float:
    if b.fixed:
        return 0.0
    if b.operand is None:
        return b.seconds
    inner = _children(brackets, *b.operand)
    return b.seconds + max((_lookback(c, brackets) for c in inner), default=0.0)


def lookback(query: str) -> float:
    """How far back from the evaluation time ``query`` reads samples through its windows."""
    brackets = _brackets(query)
    top = _children(brackets, -1, len(query) + 1)
    return max((_lookback(b, brackets) for b in top), default=0.0)


def _clip(
    b: _Bracket, brackets: list[_Bracket], budget: float, edits: list[tuple[int, int, str]]
) -> None:
    if b.fixed or _lookback(b, brackets) <= budget:
        return
    if b.operand is None:
        edits.append((b.range_start, b.range_end, promql_duration(budget)))
        return
    inner = _children(brackets, *b.operand)
    deepest = max((_lookback(c, brackets) for c in inner), default=0.0)
    inner_budget = min(deepest, max(budget - b.seconds, budget / 2))
    for child in inner:
        _clip(child, brackets, inner_budget, edits)
    outer = min(b.seconds, budget - inner_budget)
    if outer < b.seconds:
        edits.append((b.range_start, b.range_end, promql_duration(outer)))


def young(age: float, query_lookback: float, min_window: float) -> bool:
    """Whether evidence ``age`` seconds old is too little for a query looking back that far:
    shorter than ``min_window`` and than the query's own windows (whole seconds)."""
    return query_lookback > 0 and math.floor(age) < min(min_window, query_lookback)


def scoped(query: str, age: float, min_window: float) -> str | None:
    """``query`` with every window clipped to ``age`` seconds (floored to whole seconds);
    None when the evidence is too young for it (no data yet); unchanged when old enough."""
    brackets = _brackets(query)
    top = _children(brackets, -1, len(query) + 1)
    reach = max((_lookback(b, brackets) for b in top), default=0.0)
    if young(age, reach, min_window):
        return None
    budget = float(math.floor(age))
    if reach <= budget:
        return query
    edits: list[tuple[int, int, str]] = []
    for b in top:
        _clip(b, brackets, budget, edits)
    for start, end, text in sorted(edits, reverse=True):
        query = query[:start] + text + query[end:]
    return query


# --------------------------------------------------------------------------- rollouts


def evidence_since(s: Rollout) -> float:
    """When the rollout's own evidence begins: its canary became ready (a record stored
    before ``ready_at`` existed: the rollout's start, the nearest bound it has)."""
    return s.ready_at if s.ready_at is not None else s.started_at


def clipped(policy: Policy, check: Check) -> bool:
    """Whether the check's windows are clipped (``scope: version`` spares the checks that
    select the canary by ``{{version}}``)."""
    return clipped_template(policy, check.query)


def clipped_template(policy: Policy, template: str) -> bool:
    """``clipped`` for any query template of the policy (the request count's too)."""
    return policy.scope is Scope.AGE or "version" not in templates.variables(template)


@lru_cache(maxsize=512)
def _template_lookback(
    query: str, window: str, interval: str, params: tuple[tuple[str, str], ...]
) -> float:
    values = {"window": window, "interval": interval, **dict(params)}
    filled = re.sub(
        r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}", lambda m: values.get(m.group(1), "x"), query
    )
    return lookback(filled)


def template_lookback(policy: Policy, template: str) -> float:
    """``lookback`` of a policy's query template, its window, interval and params filled."""
    params = tuple(sorted(policy.params.items()))
    return _template_lookback(template, policy.window, format_duration(policy.interval), params)


def check_lookback(policy: Policy, check: Check) -> float:
    """How far back the check reads, 0 if it is not clipped (nothing to wait for)."""
    return template_lookback(policy, check.query) if clipped(policy, check) else 0.0


def young_checks(s: Rollout, now: float) -> tuple[str, ...]:
    """The current stage's checks that have no data yet because the rollout is too young."""
    age = now - evidence_since(s)
    policy = s.policy
    return tuple(
        name
        for name in s.current_stage.checks
        if young(age, check_lookback(policy, policy.checks[name]), policy.min_window)
    )
