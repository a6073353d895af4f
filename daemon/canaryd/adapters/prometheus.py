"""Prometheus HTTP API client: PromQL in, classified results out.

Every check boils down to "what number does this query give right now", and the answer has more
shapes than a number, so a query's result is classified once, here, into a ``ResultKind``:

- ``value``      exactly one sample with a number (``+Inf``/``-Inf`` included: a P95 in the
                 ``+Inf`` bucket is a real, very bad, value);
- ``no_data``    an empty result (nothing matched, or no traffic yet);
- ``nan``        exactly one sample whose value is NaN (typically 0/0: a ratio with no traffic);
- ``ambiguous``  more than one series where one was expected (a missing ``sum``);
- ``error``      Prometheus answered, but with an error (bad PromQL, execution error, a
                 server-side timeout, "TSDB not ready"): ``error_type`` and ``error`` hold
                 Prometheus's own ``errorType`` and message, word for word.

``series`` always holds every returned sample as ``(labels, value)``, so one batched
``sum by (target, deployment) (...)`` query is evaluated once and split per target by the
evaluator (``runtime.evaluator``), which also turns each part into the core's ``Measurement``.

Failure design: **raise when Prometheus did not answer, return ``kind=error`` when it did.**
Connection errors, the client-side ``asyncio.timeout()``, HTTP errors without Prometheus's JSON
error envelope (a proxy's 502, a wrong base path's 404), non-JSON bodies and malformed envelopes
raise ``SourceUnavailable`` (``from`` the underlying error). An answer with ``"status": "error"``
(whatever its HTTP code: 400 bad_data, 422 execution, 503 timeout, 500 internal/unavailable)
is returned as a result of kind ``error``. The decision engine treats both the same way (an
error measurement: retried, never a failure, SPEC §3), but only the second carries a message
worth showing an operator verbatim, and it is a value the parser can be tested on without I/O.
Every query also sends Prometheus's own ``timeout`` parameter (the client timeout), so a query
canaryd gave up on does not keep running in Prometheus.

Answers are size-capped (``max_bytes``, default ``MAX_ANSWER_BYTES`` = 16 MiB): a larger one is
refused as ``SourceUnavailable`` naming the cap, from its ``Content-Length`` before reading, or
while reading when it has none, so a runaway query never lands in memory. Bodies past
``OFF_LOOP_BYTES`` are decoded and classified in a thread (``asyncio.to_thread``) so the event
loop keeps serving webhooks and health checks meanwhile; small ones (a batched query for 1,000
targets is ~200 KB) stay on the loop, where a thread hop would cost more than the parse.

The optional ``on_query(seconds, outcome)`` hook sees every query with its duration on the loop
clock and its outcome (a ``ResultKind`` value or ``"unavailable"``); the telemetry adapter feeds
``canaryd_promql_duration_seconds`` and ``canaryd_promql_errors_total`` from it (SPEC §5.4).
"""

from __future__ import annotations

import asyncio
import gc
import json
import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple, TypeVar

import aiohttp

from canaryd.core.errors import SourceUnavailable

QueryHook = Callable[[float, str], None]

MIB = 1024 * 1024
MAX_ANSWER_BYTES = 16 * MIB
OFF_LOOP_BYTES = 256 * 1024
_READ_CHUNK = 64 * 1024


class ResultKind(StrEnum):
    VALUE = "value"
    NO_DATA = "no_data"
    NAN = "nan"
    AMBIGUOUS = "ambiguous"
    ERROR = "error"


class Series(NamedTuple):
    """One sample of an instant query: the series' labels and its value."""

    labels: Mapping[str, str]
    value: float


class RangeSeries(NamedTuple):
    """One series of a range query: its labels and ``(timestamp, value)`` points."""

    labels: Mapping[str, str]
    points: tuple[tuple[float, float], ...]


@dataclass(frozen=True, slots=True)
class QueryResult:
    """A classified instant-query result (see the module docstring for the kinds)."""

    kind: ResultKind
    series: tuple[Series, ...] = ()
    result_type: str = ""
    timestamp: float | None = None
    error_type: str = ""  # Prometheus's errorType; "" unless kind is error
    error: str = ""  # Prometheus's message, verbatim; "" unless kind is error
    warnings: tuple[str, ...] = ()

    @property
    def value(self) -> float | None:
        """The single value for kinds ``value`` and ``nan``; None otherwise."""
        if self.kind in (ResultKind.VALUE, ResultKind.NAN):
            return self.series[0].value
        return None


@dataclass(frozen=True, slots=True)
class RangeResult:
    """A classified range-query result: ``value`` (one series), ``no_data``, ``ambiguous``
    (several series) or ``error``; NaN points stay in ``points`` as ``math.nan``."""

    kind: ResultKind
    series: tuple[RangeSeries, ...] = ()
    error_type: str = ""
    error: str = ""
    warnings: tuple[str, ...] = ()


def _classify(members: list[Series]) -> ResultKind:
    if not members:
        return ResultKind.NO_DATA
    if len(members) > 1:
        return ResultKind.AMBIGUOUS
    return ResultKind.NAN if math.isnan(members[0].value) else ResultKind.VALUE


# --------------------------------------------------------------------------- parsing


def _malformed(what: str) -> SourceUnavailable:
    return SourceUnavailable(f"malformed Prometheus response: {what}")


def _envelope(payload: object) -> tuple[dict[str, object], tuple[str, ...]]:
    if not isinstance(payload, dict) or payload.get("status") not in ("success", "error"):
        raise _malformed("no status")
    warnings = payload.get("warnings") or []
    if not isinstance(warnings, list):
        raise _malformed("warnings is not a list")
    return payload, tuple(str(w) for w in warnings)


def _error_fields(body: Mapping[str, object]) -> tuple[str, str]:
    return str(body.get("errorType") or "unknown"), str(body.get("error") or "")


def _data(body: Mapping[str, object]) -> tuple[str, list[object]]:
    data = body.get("data")
    if not isinstance(data, dict) or not isinstance(data.get("resultType"), str):
        raise _malformed("no data.resultType")
    result = data.get("result")
    if not isinstance(result, list):
        raise _malformed("data.result is not a list")
    return data["resultType"], result


def _sample(pair: object) -> tuple[float, float]:
    """A ``[<unix seconds>, "<value>"]`` pair; values are strings, maybe "NaN"/"+Inf"/"-Inf"."""
    if not isinstance(pair, list) or len(pair) != 2:
        raise _malformed(f"sample is not a [time, value] pair: {pair!r}")
    stamp, text = pair
    if isinstance(stamp, bool) or not isinstance(stamp, int | float) or not isinstance(text, str):
        raise _malformed(f"bad sample {pair!r}")
    try:
        return float(stamp), float(text)
    except ValueError as exc:
        raise _malformed(f"sample value {text!r} is not a number") from exc


def _labels(entry: object) -> tuple[Mapping[str, object], dict[str, str]]:
    if not isinstance(entry, dict) or not isinstance(entry.get("metric"), dict):
        raise _malformed(f"series without metric: {entry!r}")
    return entry, {str(k): str(v) for k, v in entry["metric"].items()}


def parse_query(payload: object) -> QueryResult:
    """Classify a decoded ``/api/v1/query`` response; raise SourceUnavailable if malformed."""
    body, warnings = _envelope(payload)
    if body["status"] == "error":
        error_type, error = _error_fields(body)
        kind = ResultKind.ERROR
        return QueryResult(kind, error_type=error_type, error=error, warnings=warnings)
    result_type, result = _data(body)
    if result_type == "scalar":
        stamp, value = _sample(result)
        members = [Series({}, value)]
    elif result_type == "vector":
        members, stamp = [], None
        for entry in result:
            fields, labels = _labels(entry)
            if "value" not in fields:
                return _unexpected("a native histogram sample; query its _count/_sum or a quantile")
            stamp, value = _sample(fields["value"])
            members.append(Series(labels, value))
    else:
        return _unexpected(f"a {result_type} result from an instant query; expected a number")
    return QueryResult(
        kind=_classify(members),
        series=tuple(members),
        result_type=result_type,
        timestamp=stamp,
        warnings=warnings,
    )


def _unexpected(what: str) -> QueryResult:
    return QueryResult(ResultKind.ERROR, error_type="unexpected_result", error=f"got {what}")


def parse_range(payload: object) -> RangeResult:
    """Classify a decoded ``/api/v1/query_range`` response; raise SourceUnavailable if
    malformed."""
    body, warnings = _envelope(payload)
    if body["status"] == "error":
        error_type, error = _error_fields(body)
        return RangeResult(ResultKind.ERROR, error_type=error_type, error=error, warnings=warnings)
    result_type, result = _data(body)
    if result_type != "matrix":
        return RangeResult(
            ResultKind.ERROR, error_type="unexpected_result", error=f"got a {result_type} result"
        )
    series = []
    for entry in result:
        fields, labels = _labels(entry)
        values = fields.get("values", [])
        if not isinstance(values, list):
            raise _malformed("values is not a list")
        series.append(RangeSeries(labels, tuple(_sample(pair) for pair in values)))
    if not series:
        kind = ResultKind.NO_DATA
    else:
        kind = ResultKind.VALUE if len(series) == 1 else ResultKind.AMBIGUOUS
    return RangeResult(kind, tuple(series), warnings=warnings)


# --------------------------------------------------------------------------- client

_R = TypeVar("_R", QueryResult, RangeResult)


class PrometheusClient:
    """Queries one Prometheus through a session the caller owns (one per upstream)."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        timeout: float,
        on_query: QueryHook | None = None,
        max_bytes: int = MAX_ANSWER_BYTES,
    ) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        self._session = session
        self._base = base_url.rstrip("/")
        self._timeout = timeout
        self._on_query = on_query
        self._max_bytes = max_bytes

    @property
    def base_url(self) -> str:
        return self._base

    async def query(self, promql: str, at: float | None = None) -> QueryResult:
        """Evaluate ``promql`` at ``at`` (Unix seconds; default: Prometheus's now)."""
        form = {"query": promql, "timeout": f"{self._timeout:g}"}
        if at is not None:
            form["time"] = f"{at:.3f}"
        return await self._timed("query", form, parse_query)

    async def query_range(self, promql: str, start: float, end: float, step: float) -> RangeResult:
        """Evaluate ``promql`` from ``start`` to ``end`` (Unix seconds) every ``step`` s."""
        form = {
            "query": promql,
            "start": f"{start:.3f}",
            "end": f"{end:.3f}",
            "step": f"{step:g}",
            "timeout": f"{self._timeout:g}",
        }
        return await self._timed("query_range", form, parse_range)

    async def _timed(
        self, endpoint: str, form: dict[str, str], parse: Callable[[object], _R]
    ) -> _R:
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            answer = await self._post(endpoint, form)
            if len(answer.body) > OFF_LOOP_BYTES:
                result = await asyncio.to_thread(answer.parse_off_loop, parse)
            else:
                result = answer.parse(parse)
        except SourceUnavailable:
            self._report(loop.time() - started, "unavailable")
            raise
        self._report(loop.time() - started, result.kind.value)
        return result

    def _report(self, seconds: float, outcome: str) -> None:
        # A cancelled query is neither an answer nor a failure of the source: not reported.
        if self._on_query is not None:
            self._on_query(seconds, outcome)

    async def _post(self, endpoint: str, form: dict[str, str]) -> _Answer:
        url = f"{self._base}/api/v1/{endpoint}"
        try:
            async with (
                asyncio.timeout(self._timeout),
                self._session.post(url, data=form) as response,
            ):
                return _Answer(url, response.status, await self._read(url, response))
        except TimeoutError as exc:
            raise SourceUnavailable(
                f"Prometheus did not answer within {self._timeout:g}s ({url})"
            ) from exc
        except aiohttp.ClientError as exc:
            raise SourceUnavailable(f"cannot reach Prometheus at {url}: {exc}") from exc

    async def _read(self, url: str, response: aiohttp.ClientResponse) -> bytearray:
        """The body, refused as soon as it is known to exceed the cap: from the announced
        length when there is one, else once the bytes read so far pass it (a chunked or
        compressed answer has no usable length), so memory never holds more than the cap."""
        announced = response.content_length
        if announced is not None and announced > self._max_bytes:
            raise self._too_large(url, f"announces {announced} bytes")
        body = bytearray()
        async for chunk in response.content.iter_chunked(_READ_CHUNK):
            body += chunk
            if len(body) > self._max_bytes:
                raise self._too_large(url, f"passed {len(body)} bytes while being read")
        return body

    def _too_large(self, url: str, what: str) -> SourceUnavailable:
        cap = f"{self._max_bytes / MIB:g} MiB"
        return SourceUnavailable(
            f"Prometheus answer from {url} {what}, larger than the {cap} cap "
            f"({self._max_bytes} bytes): narrow the query (fewer series or a larger step)"
        )


def _keep_pairs(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """``json.loads``'s object hook for bodies decoded in a thread: plain ``dict(pairs)``, but
    written in Python on purpose. The C decoder never releases the GIL, so a large body decoded
    in a thread would stall the event loop just as long as on it; running Python bytecode once
    per JSON object lets the interpreter hand the GIL to the loop at its switch interval."""
    return dict(pairs)


class _GcPause:
    """Holds the cyclic garbage collector off while large answers are parsed in threads.

    Parsing a 16 MiB answer creates over a million objects, which triggers full collections
    that walk the whole heap holding the GIL, on whichever thread allocates: measured, those
    pauses are most of the event loop's lag during a threaded parse (0.2-0.9 s for 29 MB,
    against ~0.03 s with the collector held off). Decoded JSON holds no reference cycles, the
    pause is bounded by the size cap, and concurrent parses share one pause (a count under a
    lock), so the collector is re-enabled exactly when the last one ends, and only if it was
    enabled before the first began.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._depth = 0
        self._resume = False

    def __enter__(self) -> None:
        with self._lock:
            if self._depth == 0:
                self._resume = gc.isenabled()
                gc.disable()
            self._depth += 1

    def __exit__(self, *exc_info: object) -> None:
        with self._lock:
            self._depth -= 1
            if self._depth == 0 and self._resume:
                gc.enable()


_GC_PAUSE = _GcPause()


@dataclass(frozen=True, slots=True)
class _Answer:
    """An HTTP answer read within the cap, not yet decoded."""

    url: str
    status: int
    body: bytearray

    def parse_off_loop(self, parse: Callable[[object], _R]) -> _R:
        """``parse`` for a thread: without collector pauses and yielding the GIL while
        decoding (see ``_GcPause`` and ``_keep_pairs``)."""
        with _GC_PAUSE:
            return self.parse(parse, off_loop=True)

    def parse(self, parse: Callable[[object], _R], off_loop: bool = False) -> _R:
        """Decode and classify; ``off_loop`` when running in a thread (see ``_keep_pairs``)."""
        try:
            payload: object = json.loads(
                self.body, object_pairs_hook=_keep_pairs if off_loop else None
            )
        except (ValueError, RecursionError) as exc:  # RecursionError: absurdly nested JSON
            raise SourceUnavailable(
                f"Prometheus answered HTTP {self.status} without JSON ({self.url}): "
                f"{bytes(self.body[:200])!r}"
            ) from exc
        answered_error = isinstance(payload, dict) and payload.get("status") == "error"
        if self.status >= 400 and not answered_error:
            raise SourceUnavailable(
                f"HTTP {self.status} from {self.url}: {bytes(self.body[:200])!r}"
            )
        return parse(payload)
