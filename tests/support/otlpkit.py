"""A real OTLP/HTTP receiver for the tracing tests: an aiohttp server on 127.0.0.1 that
accepts ``POST /v1/traces`` (protobuf, as the official exporter sends it), decodes each request
with ``opentelemetry-proto``'s ``ExportTraceServiceRequest`` and keeps every span.

It runs its own event loop in a thread, so the tests can use ``servekit``'s blocking helpers
while canaryd's exporter posts to it. ``tree`` prints a trace as indented lines (name, a few
attributes), which the tests assert on and print.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from support.procs import free_port


@dataclass
class Span:
    name: str
    trace_id: str
    span_id: str
    parent: str  # "" for a root
    start: int  # ns
    end: int
    attributes: dict[str, Any]
    status: int  # 0 unset, 1 ok, 2 error
    status_message: str
    links: list[tuple[str, str]]
    resource: dict[str, Any] = field(default_factory=dict)


def _value(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    return None if kind is None else getattr(any_value, kind)


def _attributes(items: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in items}


class Receiver:
    """``with Receiver() as r:`` — ``r.endpoint`` for canaryd's ``tracing.otlp_endpoint``."""

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.spans: list[Span] = []
        self.requests = 0
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    async def _traces(self, request: web.Request) -> web.Response:
        message = ExportTraceServiceRequest()
        message.ParseFromString(await request.read())
        got = []
        for resource_spans in message.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            for scope in resource_spans.scope_spans:
                for s in scope.spans:
                    got.append(
                        Span(
                            name=s.name,
                            trace_id=s.trace_id.hex(),
                            span_id=s.span_id.hex(),
                            parent=s.parent_span_id.hex(),
                            start=s.start_time_unix_nano,
                            end=s.end_time_unix_nano,
                            attributes=_attributes(s.attributes),
                            status=s.status.code,
                            status_message=s.status.message,
                            links=[(link.trace_id.hex(), link.span_id.hex()) for link in s.links],
                            resource=resource,
                        )
                    )
        with self._lock:
            self.spans += got
            self.requests += 1
        body = ExportTraceServiceResponse().SerializeToString()
        return web.Response(body=body, content_type="application/x-protobuf")

    async def _start(self) -> None:
        app = web.Application(client_max_size=64 << 20)
        app.router.add_post("/v1/traces", self._traces)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    def __enter__(self) -> Receiver:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    # ------------------------------------------------------------------ reading

    def trace(self, trace_id: str) -> list[Span]:
        with self._lock:
            return [s for s in self.spans if s.trace_id == trace_id]

    def wait_for(self, holds: Callable[[list[Span]], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                spans = list(self.spans)
            if holds(spans):
                return
            time.sleep(0.1)
        names = sorted({(s.name, s.trace_id[:8]) for s in self.spans})
        raise AssertionError(f"{what}: not received in {timeout:g}s; spans so far: {names}")


def children(spans: list[Span], parent: Span) -> list[Span]:
    return sorted((s for s in spans if s.parent == parent.span_id), key=lambda s: s.start)


def tree(spans: list[Span], root: Span, keys: tuple[str, ...] = ()) -> Iterator[str]:
    """``root`` and its descendants, one indented line each, children in start order."""

    def line(span: Span, depth: int) -> str:
        shown = {k: span.attributes[k] for k in keys if k in span.attributes}
        checks = {
            k.removeprefix("canaryd.check."): v
            for k, v in span.attributes.items()
            if k.startswith("canaryd.check.") and not k.endswith(".query")
        }
        status = " ERROR" if span.status == 2 else ""
        took = (span.end - span.start) / 1e9
        extra = " ".join(f"{k}={v}" for k, v in {**shown, **checks}.items())
        return f"{'  ' * depth}{span.name} [{took:.3f}s]{status} {extra}".rstrip()

    def walk(span: Span, depth: int) -> Iterator[str]:
        yield line(span, depth)
        for child in children(spans, span):
            yield from walk(child, depth + 1)

    yield from walk(root, 0)
