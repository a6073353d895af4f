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

Canary request counts (for ``min_requests``) come from one more batched query per cycle: the
request rate over the policy's window times the evaluation interval (an ``increase`` over the
interval itself would need two scrapes inside it, which short intervals do not have).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from canaryd.core import templates
from canaryd.core.durations import format_duration
from canaryd.core.errors import SourceUnavailable
from canaryd.core.model import Check, Measurement, Rollout

CANARY = "canary"
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


@dataclass
class Evaluator:
    source: QuerySource
    gather: float = 0.25
    requests_query: str = DEFAULT_REQUESTS_QUERY
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

        async def one_check(key: tuple[object, ...], members: list[_Request]) -> None:
            check = members[0].state.policy.checks[str(key[0])]
            found = await self._run(check.query, members)
            for request in members:
                value = found.get(id(request))
                results[id(request)][check.name] = _measurement(check.name, value)

        requests: dict[int, float | None] = {}

        async def one_count(members: list[_Request]) -> None:
            found = await self._run(self.requests_query, members)
            for request in members:
                value = found.get(id(request))
                requests[id(request)] = value if isinstance(value, float) else None

        async with asyncio.TaskGroup() as tg:
            for key, members in groups.items():
                tg.create_task(one_check(key, members))
            for members in counted.values():
                tg.create_task(one_count(members))
        for request in batch:
            ordered = tuple(results[id(request)].values())
            if not request.future.done():
                request.future.set_result((ordered, requests.get(id(request))))

    async def _run(self, template: str, members: list[_Request]) -> dict[int, float | str | None]:
        """Render ``template`` for ``members``, query once, and split the answer per member."""
        state = members[0].state
        names = sorted(members[0].labels)
        variables: dict[str, str] = {
            "window": state.policy.window,
            "interval": format_duration(state.policy.interval),
            "interval_seconds": f"{state.policy.interval:g}",
            "deployment": CANARY,
            "group": ", ".join([*names, "deployment"]),
            **dict(state.policy.params),
        }
        for name in names:
            values = sorted({m.labels[name] for m in members})
            variables[name] = "|".join(promql_regex_literal(v) for v in values)
        if len(members) == 1:
            variables.setdefault("target", members[0].state.target)
            variables.setdefault("version", members[0].state.image)
        self.queries += 1
        try:
            answer = await self.source.query(templates.render(template, variables))
        except SourceUnavailable as exc:
            return {id(m): f"error: {exc}" for m in members}
        if answer.kind == "error":
            return {id(m): f"error: {answer.error}" for m in members}
        out: dict[int, float | str | None] = {id(m): None for m in members}
        # Targets with the same label values (two targets on one job) share their series.
        by_labels: dict[tuple[str, ...], list[_Request]] = {}
        for m in members:
            by_labels.setdefault(tuple(m.labels[n] for n in names), []).append(m)
        for labels, value in answer.series:
            if labels.get("deployment", CANARY) != CANARY:
                continue
            for member in by_labels.get(tuple(labels.get(n, "") for n in names), ()):
                if out[id(member)] is not None:
                    out[id(member)] = "error: ambiguous: more than one series for this target"
                else:
                    out[id(member)] = value
        return out


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
    per_target = bool({"target", "version"} & set(templates.variables(check.query)))
    return (
        check.name,
        check.query,
        policy.window,
        policy.interval,
        tuple(sorted(policy.params.items())),
        tuple(sorted(request.labels)),
        request.state.id if per_target else None,
    )


def _requests_key(request: _Request) -> tuple[object, ...]:
    policy = request.state.policy
    return (policy.interval, tuple(sorted(request.labels)))


def _measurement(check: str, value: float | str | None) -> Measurement:
    if isinstance(value, str):
        return Measurement(check, error=value.removeprefix("error: "))
    if value is None or value != value:  # no series, or NaN
        return Measurement(check, value=None)
    return Measurement(check, value=value)
