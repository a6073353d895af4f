"""OpenTelemetry traces of rollouts (``tracing: {otlp_endpoint}``), exported over OTLP/HTTP.

One trace per rollout. Its tree, as a collector receives it::

    rollout                      (root: started_at → the end; ERROR when rolled back)
    ├── platform ensure-canary   (each router/platform action, with its duration)
    ├── stage 1                  (the stage's weight requested → the next stage, a promotion…)
    │   ├── router set-weight
    │   ├── evaluation           (each check's query, value and verdict as attributes)
    │   └── evaluation
    ├── stage 2 …
    └── promotion | rollback     (the ending: its actions as children)

Every span carries the runbook's attributes: ``deployment.strategy=canary``, ``service.version``
(the image), ``deployment.environment`` (``tracing.environment``; left out when not set) and
``canaryd.rollout.id``. (Not a target label: a target's labels select its series in every
query, so an ``environment`` label there would have to be on every series too.)

Why it is built this way:

* **A rollout outlives the process that started it**, so no span is held open across a pass.
  The trace id is stored in the rollout's record (``Rollout.trace_id``; by default derived from
  the rollout id) and every span id of the root and of the stage/promotion/rollback spans is
  derived from (rollout id, which span): a daemon restarted mid-rollout goes on with the same
  trace and parents its new spans under the same ids. Those long spans are created and ended at
  once when they end, with the start time taken from the record (``weight_set_at``,
  ``rollback_at``, ``started_at``); evaluations and actions are exported as they happen.
* **Joined to the caller's trace**: a start request that carries a W3C ``traceparent`` puts
  the rollout's root under the request's span in the caller's trace (``api.tracing`` makes that
  span and hands it over in ``INCOMING``); the record keeps that parent too.
* **Free when off**: this module imports OpenTelemetry only when a ``Tracer`` is made, which
  ``app`` does only with a ``tracing:`` section. The SDK's batch processor exports from its own
  thread, so nothing here blocks the event loop; ``shutdown`` (the final flush) is run in a
  thread by the caller.
* **Never in the way of a rollback**: every runtime event reaches the metrics first
  (``TracedEvents``), and a tracing failure is logged, never raised into the worker.
"""

from __future__ import annotations

import contextvars
import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import structlog

from canaryd.core import compare
from canaryd.core.model import Action, Effect, EffectKind, Measurement, Observed, Phase, Rollout
from canaryd.ports import Clock, RuntimeEvents

log = structlog.get_logger("canaryd.tracing")

EXPORT_DELAY_MS = 1000  # the batch processor's schedule: spans reach the collector within ~1 s


@dataclass(frozen=True, slots=True)
class Incoming:
    """The span of the API request being served (its caller sent a ``traceparent``)."""

    trace_id: str  # 32 hex digits
    span_id: str  # 16 hex digits


INCOMING: contextvars.ContextVar[Incoming | None] = contextvars.ContextVar(
    "canaryd_incoming_span", default=None
)

_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


def parse_traceparent(header: str | None) -> Incoming | None:
    """A W3C ``traceparent`` (version 00) as ids, or None for anything else: the header comes
    from outside, so an all-zero id, upper case, extra fields or a long value are refused."""
    if header is None or len(header) != 55:
        return None
    found = _TRACEPARENT.match(header)
    if found is None or set(found[1]) == {"0"} or set(found[2]) == {"0"}:
        return None
    return Incoming(found[1], found[2])


def derived_id(*parts: str, digits: int = 32) -> str:
    """A stable id (hex) for a rollout's trace or one of its long spans; never all zeros."""
    text = hashlib.sha256("\0".join(parts).encode("utf-8", "surrogatepass")).hexdigest()[:digits]
    return text if set(text) != {"0"} else "1".rjust(digits, "0")


def trace_fields(rollout_id: str) -> tuple[str, str | None]:
    """(trace id, parent span id) of a rollout begun now: under the request's span when its
    caller is tracing, else a trace of its own (derived from the rollout id)."""
    incoming = INCOMING.get()
    if incoming is not None:
        return incoming.trace_id, incoming.span_id
    return derived_id("trace", rollout_id), None


def segment(state: Rollout) -> str | None:
    """The long span an event of ``state`` belongs under: a stage, the promotion, the rollback
    (None: the root itself, while the canary starts and once everything has ended)."""
    if state.phase.terminal and state.cleanup_at is None:
        return None
    if state.rolling_back or state.phase is Phase.ROLLED_BACK:
        return "rollback"
    if state.promoting:
        return "promotion"
    if state.phase is Phase.PENDING:
        return None
    return f"stage {state.stage + 1}"


QueryOf = Callable[[Rollout, Mapping[str, str], str], str]  # (state, labels, check) -> PromQL


@dataclass
class _Open:
    key: str
    start: float
    why: str | None = None  # the cause that ended the rollout (ended at ``finished``)


class Tracer:
    """Spans of rollouts, from the runtime's events; exported in the SDK's own thread."""

    def __init__(
        self,
        endpoint: str,
        clock: Clock,
        environments: Mapping[str, str | None],
        query_of: QueryOf,
        export_delay_ms: int = EXPORT_DELAY_MS,
    ) -> None:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        from canaryd import __version__

        self._trace = trace
        self._ids = _PlannedIds()
        resource = Resource.create({"service.name": "canaryd", "canaryd.version": __version__})
        self.provider = TracerProvider(
            resource=resource, id_generator=cast(Any, self._ids), shutdown_on_exit=False
        )
        exporter = OTLPSpanExporter(endpoint=endpoint, timeout=5)
        self.provider.add_span_processor(
            BatchSpanProcessor(exporter, schedule_delay_millis=export_delay_ms)
        )
        self._tracer = self.provider.get_tracer("canaryd")
        self._clock, self._environments, self._query_of = clock, environments, query_of
        self._open: dict[str, _Open] = {}  # rollout id -> its long span under way
        self._failed = False

    def shutdown(self) -> None:
        """Export what is left (blocking: run it in a thread)."""
        self.provider.shutdown()

    # ---------------------------------------------------------------- span making

    def _context(self, trace_id: str, span_id: str | None) -> Any:
        """An OpenTelemetry context whose current span is (trace_id, span_id)."""
        from opentelemetry.context import Context

        trace = self._trace
        if span_id is None:
            self._ids.trace_id = int(trace_id, 16)
            return Context()
        parent = trace.SpanContext(
            int(trace_id, 16), int(span_id, 16), True, trace.TraceFlags(trace.TraceFlags.SAMPLED)
        )
        return trace.set_span_in_context(trace.NonRecordingSpan(parent))

    def _span(
        self,
        name: str,
        trace_id: str,
        parent: str | None,
        start: float,
        end: float,
        attributes: Mapping[str, Any],
        *,
        span_id: str | None = None,
        error: str | None = None,
    ) -> None:
        """Make and end one span; ``span_id``: its derived id (else a random one)."""
        context = self._context(trace_id, parent)
        self._ids.span_id = None if span_id is None else int(span_id, 16)
        span = self._tracer.start_span(
            name, context, attributes=dict(attributes), start_time=_ns(start)
        )
        if error is not None:
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, error))
        span.end(end_time=_ns(max(start, end)))

    def _ids_of(self, state: Rollout) -> tuple[str, str]:
        trace_id = state.trace_id or derived_id("trace", state.id)
        return trace_id, derived_id("span", state.id, "rollout", digits=16)

    def _parent(self, state: Rollout) -> tuple[str, str]:
        """(trace id, span id) of the span an event of ``state`` goes under."""
        trace_id, root = self._ids_of(state)
        opened = self._open.get(state.id)
        key = segment(state) if opened is None else opened.key
        return trace_id, root if key is None else derived_id("span", state.id, key, digits=16)

    def _attributes(self, state: Rollout, **more: Any) -> dict[str, Any]:
        out: dict[str, Any] = {
            "deployment.strategy": "canary",
            "service.version": state.image,
            "canaryd.rollout.id": state.id,
            "canaryd.target": state.target,
        }
        environment = self._environments.get(state.target)
        if environment:
            out["deployment.environment"] = environment
        out.update({k: v for k, v in more.items() if v is not None})
        return out

    # ---------------------------------------------------------------- what the runtime reports

    def decided(self, state: Rollout, actions: Sequence[Action], now: float) -> None:
        """End the long span the rollout has left. Once it is over, the last one stays open
        (its last actions are still to come) until ``finished``."""
        key = segment(state)
        opened = self._open.get(state.id)
        why = next((str(a.cause) for a in reversed(actions) if a.cause is not None), None)
        if key is None and state.phase.terminal:
            if opened is not None and why is not None:  # a pass that decided nothing keeps it
                opened.why = why
            return
        if opened is not None and opened.key == key:
            return
        if opened is not None:
            self._end_segment(state, opened, now, why)
            del self._open[state.id]
        if key is not None:
            self._open[state.id] = _Open(key, _segment_start(state, key, now))

    def finished(self, state: Rollout, now: float) -> None:
        """The rollout's worker is done: end its last long span, then its root."""
        opened = self._open.pop(state.id, None)
        if opened is not None:
            self._end_segment(state, opened, now, opened.why)
        self._end_root(state, now)

    def resumed(self, state: Rollout, now: float) -> None:
        """A rollout loaded after a restart: its long span goes on under the same id."""
        key = segment(state)
        if key is not None and state.id not in self._open:
            self._open[state.id] = _Open(key, _segment_start(state, key, now))

    def _end_segment(self, state: Rollout, opened: _Open, now: float, why: str | None) -> None:
        trace_id, root = self._ids_of(state)
        span_id = derived_id("span", state.id, opened.key, digits=16)
        attributes = self._attributes(state, **{"canaryd.ended_by": why})
        if opened.key.startswith("stage "):
            attributes["canaryd.stage"] = int(opened.key.split()[1])
        self._span(opened.key, trace_id, root, opened.start, now, attributes, span_id=span_id)

    def _end_root(self, state: Rollout, now: float) -> None:
        trace_id, root = self._ids_of(state)
        attributes = self._attributes(
            state,
            **{
                "canaryd.phase": str(state.phase),
                "canaryd.policy": state.policy.name,
                "canaryd.rollback_reason": state.rollback_reason,
            },
        )
        error = state.rollback_reason if state.phase is not Phase.SUCCEEDED else None
        if error is None and state.phase is not Phase.SUCCEEDED:
            error = str(state.phase)
        self._span(
            "rollout",
            trace_id,
            state.trace_parent,
            state.started_at,
            now,
            attributes,
            span_id=root,
            error=error,
        )

    def evaluated(
        self,
        state: Rollout,
        labels: Mapping[str, str],
        measurements: Sequence[Measurement],
        started: float,
        ended: float,
    ) -> None:
        """One evaluation: each check's query (as rendered for this target), value, verdict."""
        trace_id, parent = self._parent(state)
        attributes = self._attributes(state, **{"canaryd.stage": state.stage + 1})
        failed = []
        for m in measurements:
            check = state.policy.checks.get(m.check)
            prefix = f"canaryd.check.{m.check}"
            if check is not None:
                attributes[f"{prefix}.query"] = self._query_of(state, labels, check.query)
                verdict = str(compare.judged(check, m, state).verdict)
                attributes[f"{prefix}.verdict"] = verdict
                if verdict == "failed":
                    failed.append(m.check)
            if m.value is not None:
                attributes[f"{prefix}.value"] = m.value
            if m.error is not None:
                attributes[f"{prefix}.error"] = m.error
        error = f"failed: {', '.join(failed)}" if failed else None
        self._span("evaluation", trace_id, parent, started, ended, attributes, error=error)

    def acted(self, state: Rollout, effect: Effect, seconds: float, failure: str | None) -> None:
        trace_id, parent = self._parent(state)
        now = self._clock.time()
        who = "router" if effect.kind is EffectKind.SET_WEIGHT else "platform"
        attributes = self._attributes(
            state,
            **{
                "canaryd.effect": str(effect.kind),
                "canaryd.weight": effect.weight,
                "canaryd.image": effect.image,
            },
        )
        name = f"{who} {effect.kind}"
        self._span(name, trace_id, parent, now - seconds, now, attributes, error=failure)

    # ---------------------------------------------------------------- API requests

    def request(self, method: str, route: str, caller: Incoming) -> RequestSpan:
        """The span of an API request whose caller sent a ``traceparent`` (a child of it)."""
        trace = self._trace
        self._ids.span_id = None
        span = self._tracer.start_span(
            f"{method} {route}",
            self._context(caller.trace_id, caller.span_id),
            kind=trace.SpanKind.SERVER,
            attributes={"http.request.method": method, "http.route": route},
        )
        ids = span.get_span_context()
        return RequestSpan(self, span, Incoming(f"{ids.trace_id:032x}", f"{ids.span_id:016x}"))


@dataclass
class RequestSpan:
    tracer: Tracer
    span: Any
    ids: Incoming  # what a rollout begun by this request is parented under

    def finish(self, status: int, rollout: Rollout | None) -> None:
        """End the span with the answer's status, linked to the target's rollout's trace."""
        trace = self.tracer._trace
        self.span.set_attribute("http.response.status_code", status)
        if rollout is not None:
            trace_id, root = self.tracer._ids_of(rollout)
            self.span.set_attribute("canaryd.rollout.id", rollout.id)
            self.span.set_attribute("canaryd.target", rollout.target)
            linked = trace.SpanContext(
                int(trace_id, 16), int(root, 16), True, trace.TraceFlags(trace.TraceFlags.SAMPLED)
            )
            self.span.add_link(linked, {"canaryd.link": "rollout"})
        if status >= 500:
            self.span.set_status(trace.Status(trace.StatusCode.ERROR, f"HTTP {status}"))
        self.span.end()


class TracedEvents:
    """The runtime's events to the metrics first, then to the tracer (whose failures are
    logged once and never reach the worker)."""

    def __init__(self, first: RuntimeEvents, tracer: Tracer, clock: Clock) -> None:
        self.first, self.tracer, self._clock = first, tracer, clock
        self._broken = False

    def _trace(self, what: Callable[[], None]) -> None:
        try:
            what()
        except Exception as exc:  # tracing must never stop a rollout
            if not self._broken:
                log.warning("tracing_failed", error=repr(exc), hint="spans may be missing")
            self._broken = True

    def decided(
        self,
        state: Rollout,
        actions: Sequence[Action],
        measurements: Sequence[Measurement],
        now: float,
    ) -> None:
        self.first.decided(state, actions, measurements, now)
        self._trace(lambda: self.tracer.decided(state, actions, now))

    def observed(self, state: Rollout, observed: Observed) -> None:
        self.first.observed(state, observed)
        self._trace(lambda: self.tracer.resumed(state, self._clock.time()))

    def applied(self, state: Rollout, effect: Effect, seconds: float, router: str) -> None:
        self.first.applied(state, effect, seconds, router)
        self._trace(lambda: self.tracer.acted(state, effect, seconds, None))

    def effect_failed(self, state: Rollout, effect: Effect, error: Exception) -> None:
        self.first.effect_failed(state, effect, error)
        self._trace(lambda: self.tracer.acted(state, effect, 0.0, str(error) or repr(error)))

    def failed_pass(self, state: Rollout, error: Exception) -> None:
        self.first.failed_pass(state, error)

    def orphan(self, state: Rollout) -> None:
        self.first.orphan(state)

    def housekeeping_failed(self, what: str, error: Exception) -> None:
        self.first.housekeeping_failed(what, error)

    def finished(self, state: Rollout) -> None:
        self.first.finished(state)
        self._trace(lambda: self.tracer.finished(state, self._clock.time()))


def _segment_start(state: Rollout, key: str, now: float) -> float:
    """When the long span ``key`` began, from the record where it says (after a restart)."""
    if key.startswith("stage ") and state.weight_set_at is not None:
        return min(state.weight_set_at, now)
    if key == "rollback" and state.rollback_at is not None:
        return min(state.rollback_at, now)
    return now


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


class _PlannedIds:
    """The SDK's id generator, told the next ids to hand out: the derived ids of long spans
    (and of a root's trace); random ones otherwise. Used on the event loop only."""

    def __init__(self) -> None:
        from opentelemetry.sdk.trace.id_generator import RandomIdGenerator

        self._random = RandomIdGenerator()
        self.span_id: int | None = None
        self.trace_id: int | None = None
        self._random_trace = True

    def generate_span_id(self) -> int:
        planned, self.span_id = self.span_id, None
        return planned if planned is not None else self._random.generate_span_id()

    def generate_trace_id(self) -> int:
        planned, self.trace_id = self.trace_id, None
        self._random_trace = planned is None
        return planned if planned is not None else self._random.generate_trace_id()

    def is_trace_id_random(self) -> bool:
        """W3C's "random" trace flag: not for a trace id derived from a rollout id."""
        return self._random_trace
