"""Batched evaluation: one PromQL query per check per cycle, whatever the number of targets.

Workers whose evaluation is due call ``measure``; requests arriving within ``gather`` seconds
of each other are evaluated together. For each distinct check (same template, same window and
parameters) the template is rendered once for the whole batch: every label variable of the
targets (``{{job}}`` ...) becomes an anchored regular-expression alternation of their values,
``{{deployment}}`` becomes ``canary`` and ``{{group}}`` the labels that tell targets apart, so
``sum by ({{group}}) (rate(x{job=~"{{job}}"}[{{window}}]))`` returns one series per target.
The answer is split by those labels and each target gets its own ``Measurement``.

Cost therefore grows with the number of checks, not targets × checks (SPEC §7). The engine
schedules every evaluation on a shared grid (``core.stages.next_tick``: multiples of the
interval), so all rollouts with the same interval are due at the same instant and land in the
same batch, however far apart they started.

Canary request counts (for ``min_requests``) are the request rate over the policy's window
times the evaluation interval (an ``increase`` over the interval itself would need two scrapes
inside it, which short intervals do not have). They ride along with one of the cycle's check
queries, so a cycle costs exactly one query per check: the two are joined as
``label_replace(<check>, "canaryd_part", "0", "", "") or label_replace(<count>, ...)`` and the
answer is split again by ``canaryd_part``. Should Prometheus refuse the joined query (a check
whose result is not an instant vector cannot be labelled), both are asked again on their own.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from canaryd.core import compare, scope, templates
from canaryd.core.durations import format_duration
from canaryd.core.errors import SourceUnavailable
from canaryd.core.model import Check, Counts, Histograms, Measurement, Policy, Rollout

CANARY = "canary"
STABLE = "stable"
BOTH = (CANARY, STABLE)  # what a compare check's {{deployment}} matches
_PART = "canaryd_part"  # the label that tells the parts of a joined query apart
_COUNT = object()  # key of a request count that goes alone
DEFAULT_REQUESTS_QUERY = (
    'sum by ({{group}}) (rate(http_requests_total{job=~"{{job}}",'
    'deployment=~"{{deployment}}"}[{{window}}])) * {{interval_seconds}}'
)


class Answer(Protocol):
    """What the evaluator needs of a query result (``adapters.prometheus.QueryResult``)."""

    @property
    def kind(self) -> str: ...

    @property
    def series(self) -> Sequence[tuple[Mapping[str, str], float]]: ...

    @property
    def error(self) -> str: ...


class QuerySource(Protocol):
    async def query(self, promql: str) -> Answer: ...


@dataclass
class _Request:
    labels: Mapping[str, str]
    state: Rollout
    future: asyncio.Future[tuple[tuple[Measurement, ...], float | None]]
    age: int | None = None  # whole seconds of the rollout's own evidence; None: old enough


@dataclass
class Evaluator:
    source: QuerySource
    gather: float = 0.25
    requests_query: str = DEFAULT_REQUESTS_QUERY
    clock: Callable[[], float] = time.time  # the clock rollouts' timestamps are on
    queries: int = 0  # sent so far; the scale benchmark reads it
    batches: list[tuple[int, int]] = field(default_factory=list)  # (targets, queries), recent
    _pending: list[_Request] = field(default_factory=list)
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def measure(
        self, labels: Mapping[str, str], state: Rollout
    ) -> tuple[tuple[Measurement, ...], float | None]:
        future: asyncio.Future[tuple[tuple[Measurement, ...], float | None]] = (
            asyncio.get_running_loop().create_future()
        )
        self._pending.append(_Request(labels, state, future))
        self._arrived.set()
        return await future

    async def run(self) -> None:
        """Eternal: wait for requests, gather a batch, evaluate it."""
        while True:
            await self._arrived.wait()
            await asyncio.sleep(self.gather)
            batch, self._pending = self._pending, []
            self._arrived.clear()
            try:
                await self.evaluate(batch)
            except Exception as exc:  # never leave a worker waiting
                for request in batch:
                    if not request.future.done():
                        request.future.set_exception(exc)

    async def evaluate(self, batch: list[_Request]) -> None:
        before = self.queries
        try:
            await self._evaluate(batch)
        finally:
            self.batches = [*self.batches[-99:], (len(batch), self.queries - before)]

    async def _evaluate(self, batch: list[_Request]) -> None:
        now = self.clock()
        for request in batch:
            request.age = self._age(request.state, now)
        groups: dict[tuple[object, ...], list[_Request]] = {}
        results: dict[int, dict[str, Measurement]] = {id(r): {} for r in batch}
        for request in batch:
            policy = request.state.policy
            for name in request.state.current_stage.checks:
                check = policy.checks[name]
                key = _check_key(check, request)
                groups.setdefault(key, []).append(request)
        counted: dict[tuple[object, ...], list[_Request]] = {}
        for request in batch:
            counted.setdefault(_requests_key(request), []).append(request)
        riders: dict[tuple[object, ...], list[_Request]] = {}  # check key -> count members
        check_keys = [k for k in groups if k[7] != "compare"]  # a compare query hosts no count
        for count_key, members in counted.items():
            host = next((k for k in check_keys if _requests_key_of(k) == count_key), None)
            if host is not None and host not in riders:
                riders[host] = members
            else:  # no check of this interval in the batch: the count goes alone
                groups[(_COUNT, count_key)] = members
        requests: dict[int, float | None] = {}

        def counts(members: list[_Request], found: dict[int, _Found]) -> None:
            for request in members:
                value = found.get(id(request))
                requests[id(request)] = value if isinstance(value, float) else None

        async def one_query(key: tuple[object, ...], members: list[_Request]) -> None:
            if key[0] is _COUNT:
                counts(members, (await self._run([(self.requests_query, members)]))[0])
                return
            check = members[0].state.policy.checks[str(key[0])]
            if check.kind == "compare":
                both = await self._run([(q, members) for q in check.queries.values()], BOTH)
                for request in members:
                    found_parts = [part[id(request)] for part in both]
                    results[id(request)][check.name] = _compared(check, found_parts)
                return
            parts = [(check.query, members)]
            if key in riders:
                parts.append((self.requests_query, riders[key]))
            found = await self._run(parts)
            for request in members:
                value = found[0].get(id(request))
                results[id(request)][check.name] = _measurement(check.name, value)
            if key in riders:
                counts(riders[key], found[1])

        async with asyncio.TaskGroup() as tg:
            for key, members in groups.items():
                tg.create_task(one_query(key, members))
        for request in batch:
            found = results[id(request)]  # in the stage's order, whichever answer came first
            ordered = tuple(found[n] for n in request.state.current_stage.checks if n in found)
            if not request.future.done():
                request.future.set_result((ordered, requests.get(id(request))))

    async def _run(
        self, parts: list[tuple[str, list[_Request]]], sides: tuple[str, ...] = (CANARY,)
    ) -> list[dict[int, Any]]:
        """Render each (template, members) part, ask Prometheus once for all of them, and split
        the answer per part and per member: the canary's value (``_split``), or with both
        ``sides`` each side's series by ``le`` (``_split_sides``). A part whose members are
        too young for its windows (``core.scope``) is not asked: None for each member."""
        split = _split if sides == (CANARY,) else _split_sides
        rendered = [self._render(template, members, sides) for template, members in parts]
        asked = [(i, q) for i, q in enumerate(rendered) if q is not None]  # None: too young
        out: list[dict[int, Any]] = [{id(m): None for m in members} for _, members in parts]
        if len(asked) > 1:
            joined = " or ".join(
                f'label_replace({promql}\n, "{_PART}", "{i}", "", "")'  # \n: ends a # comment
                for i, promql in asked
            )
            answer = await self._ask(joined)
            if isinstance(answer, SourceUnavailable) or answer.kind != "error":
                for i, _ in asked:
                    out[i] = split(answer, parts[i][1], tag=str(i))
                return out
        for i, promql in asked:
            out[i] = split(await self._ask(promql), parts[i][1])
        return out

    def _age(self, state: Rollout, now: float) -> int | None:
        """The rollout's evidence age in whole seconds while some query of its policy reaches
        back further (its windows are clipped), else None (every query as written): rollouts
        of the same age share a batch, old ones all share theirs."""
        age = max(0, math.floor(now - scope.evidence_since(state)))
        policy = state.policy
        reach = max(
            [scope.template_lookback(policy, self.requests_query)]
            + [scope.check_lookback(policy, c) for c in policy.checks.values()]
        )
        return age if age < reach else None

    def _render(
        self, template: str, members: list[_Request], sides: tuple[str, ...] = (CANARY,)
    ) -> str | None:
        """The template filled for ``members``, its windows scoped to their age (None: they
        are too young for it, ask nothing)."""
        state = members[0].state
        labels = {name: [m.labels[name] for m in members] for name in members[0].labels}
        variables = template_variables(state.policy, labels, sides)
        if len(members) == 1:
            variables.setdefault("target", members[0].state.target)
            variables.setdefault("version", members[0].state.image)
        promql = templates.render(template, variables)
        age = members[0].age
        if age is None or not scope.clipped_template(state.policy, template):
            return promql
        return scope.scoped(promql, age, state.policy.min_window)

    async def _ask(self, promql: str) -> Answer | SourceUnavailable:
        self.queries += 1
        try:
            return await self.source.query(promql)
        except SourceUnavailable as exc:
            return exc


@dataclass(frozen=True, slots=True)
class _Unanswered:
    """Why a query gave a member no value (the source's error, or an ambiguous answer):
    typed, so it never passes for a value and is never parsed back out of text."""

    error: str


_Found = float | _Unanswered | None  # a member's value, why it has none, or no series


def _split(
    answer: Answer | SourceUnavailable, members: list[_Request], tag: str | None = None
) -> dict[int, _Found]:
    """Each member's value: the canary series whose target labels are the member's (and, in a
    joined query, whose ``canaryd_part`` is ``tag``); an error for all if there is no answer."""
    if isinstance(answer, SourceUnavailable):
        return {id(m): _Unanswered(str(answer)) for m in members}
    if answer.kind == "error":
        return {id(m): _Unanswered(str(answer.error)) for m in members}
    names = sorted(members[0].labels)
    out: dict[int, _Found] = {id(m): None for m in members}
    # Targets with the same label values (two targets on one job) share their series.
    by_labels: dict[tuple[str, ...], list[_Request]] = {}
    for m in members:
        by_labels.setdefault(tuple(m.labels[n] for n in names), []).append(m)
    for labels, value in answer.series:
        if labels.get("deployment", CANARY) != CANARY:
            continue
        if tag is not None and labels.get(_PART) != tag:
            continue
        for member in by_labels.get(tuple(labels.get(n, "") for n in names), ()):
            if out[id(member)] is not None:
                out[id(member)] = _Unanswered("ambiguous: more than one series for this target")
            else:
                out[id(member)] = value
    return out


_Sides = dict[str, dict[str, float]]  # side -> le ("" for a plain counter) -> value
_SideFound = _Sides | _Unanswered


def _split_sides(
    answer: Answer | SourceUnavailable, members: list[_Request], tag: str | None = None
) -> dict[int, _SideFound]:
    """Each member's canary and stable series (by ``le`` for a histogram) of a compare part."""
    if isinstance(answer, SourceUnavailable):
        return {id(m): _Unanswered(str(answer)) for m in members}
    if answer.kind == "error":
        return {id(m): _Unanswered(str(answer.error)) for m in members}
    names = sorted(members[0].labels)
    out: dict[int, _SideFound] = {id(m): {} for m in members}
    by_labels: dict[tuple[str, ...], list[_Request]] = {}
    for m in members:
        by_labels.setdefault(tuple(m.labels[n] for n in names), []).append(m)
    for labels, value in answer.series:
        side = labels.get("deployment", "")
        if side not in BOTH or (tag is not None and labels.get(_PART) != tag):
            continue
        try:
            le = compare.bound_label(labels["le"]) if "le" in labels else ""
        except ValueError:
            continue  # not a bucket bound: not a series this check reads
        for member in by_labels.get(tuple(labels.get(n, "") for n in names), ()):
            found = out[id(member)]
            if isinstance(found, _Unanswered):
                continue
            if le in found.setdefault(side, {}):
                out[id(member)] = _Unanswered(f"ambiguous: more than one {side} series")
            else:
                found[side][le] = value
    return out


def _compared(check: Check, parts: list[_SideFound]) -> Measurement:
    """A compare check's measurement from its parts' answers for one target: the counters of
    both sides, no data when a side has none (a side without an error series has had no
    errors: such counters appear with the first one)."""
    for part in parts:
        if isinstance(part, _Unanswered):
            return Measurement(check.name, error=part.error)
    found = [p for p in parts if isinstance(p, dict)]
    if check.compare == compare.LATENCY:
        canary, stable = (found[0].get(side, {}) for side in BOTH)
        if compare.INF not in canary or compare.INF not in stable:
            return Measurement(check.name)
        return Measurement(check.name, histograms=Histograms(canary, stable))
    requests, errors = found
    if any("" not in requests.get(side, {}) for side in BOTH):
        return Measurement(check.name)
    n_c, n_s = (requests[side][""] for side in BOTH)
    e_c, e_s = (errors.get(side, {}).get("", 0.0) for side in BOTH)
    return Measurement(check.name, counts=Counts(n_c, e_c, n_s, e_s))


def template_variables(
    policy: Policy, labels: Mapping[str, Sequence[str]], deployments: Sequence[str] = (CANARY,)
) -> dict[str, str]:
    """The values of a policy's ``{{variables}}`` for the targets whose label values are
    ``labels`` (name -> each target's value): each label an anchored regular-expression
    alternation of its values, ``{{group}}`` their names plus ``deployment``. ``canaryctl
    render`` fills its documents with the same values, so they match what the daemon asks."""
    names = sorted(labels)
    variables: dict[str, str] = {
        "window": policy.window,
        "interval": format_duration(policy.interval),
        "interval_seconds": f"{policy.interval:g}",
        "deployment": "|".join(promql_regex_literal(d) for d in deployments),
        "group": ", ".join([*names, "deployment"]),
        **dict(policy.params),
    }
    for name in names:
        variables[name] = "|".join(promql_regex_literal(v) for v in sorted(set(labels[name])))
    return variables


_REGEX_SPECIAL = re.compile(r"([.^$*+?()\[\]{}|\\])")


def promql_regex_literal(value: str) -> str:
    """``value`` matched literally by a PromQL ``=~"..."`` matcher.

    Two layers of escaping: RE2's (a backslash before each metacharacter) and then PromQL's
    double-quoted string (backslashes and quotes). Python's ``re.escape`` is wrong here: it
    escapes ``-``, and a backslash before ``-`` is not a valid escape in a PromQL string.
    """
    escaped = _REGEX_SPECIAL.sub(r"\\\1", value)
    return escaped.replace("\\", "\\\\").replace('"', '\\"')


def _check_key(check: Check, request: _Request) -> tuple[object, ...]:
    policy = request.state.policy
    texts = [check.query, *check.queries.values()]
    per_target = any({"target", "version"} & set(templates.variables(t)) for t in texts)
    return (
        check.name,
        (check.query, tuple(sorted(check.queries.items()))),
        policy.window,
        policy.interval,
        tuple(sorted(policy.params.items())),
        tuple(sorted(request.labels)),
        request.state.id if per_target else None,
        (request.age, policy.min_window, policy.scope),  # _requests_key_of reads it at [7]
        check.kind,
    )


def _requests_key(request: _Request) -> tuple[object, ...]:
    policy = request.state.policy
    return (policy.interval, tuple(sorted(request.labels)), (request.age, policy.min_window))


def _requests_key_of(check_key: tuple[object, ...]) -> tuple[object, ...]:
    """The request-count group a check group's members belong to (see ``_check_key``)."""
    scoping = check_key[7]
    assert isinstance(scoping, tuple)
    return (check_key[3], check_key[5], scoping[:2])


def _measurement(check: str, value: _Found) -> Measurement:
    if isinstance(value, _Unanswered):
        return Measurement(check, error=value.error)
    if value is None or value != value:  # no series, or NaN
        return Measurement(check, value=None)
    return Measurement(check, value=value)
