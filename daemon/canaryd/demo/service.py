"""The demo service: a stand-in for the MATRIZ orchestrator with a fault knob.

Run it as ``python -m canaryd.demo.service --port 8081 --version v2 --deployment canary
--error-rate 0.2 --latency 0.05``. Every ``GET /`` or ``GET /api/...`` is one "pipeline
request": it sleeps about ``latency`` seconds (±25 % jitter), fails with HTTP 500 with
probability ``error_rate``, and is recorded in the runbook's metrics (SPEC §4):

- ``http_requests_total{status, deployment, version}``
- ``lukhas_matriz_pipeline_duration_seconds{deployment, version}`` (histogram, has ``le="0.25"``)
- ``guardian_decision_duration_seconds{deployment, version}`` (histogram, has ``le="0.1"``);
  the guardian's decision is modelled as a fixed share of the request's time.

``POST /admin/fault`` with ``{"error_rate": x, "latency": y}`` (either key optional) changes the
behaviour at once, ``GET /admin/fault`` reads it back, ``GET /health`` is a liveness probe and
``GET /metrics`` the Prometheus exposition. Every response carries ``X-Version`` and
``X-Deployment`` so a load generator can count where traffic went.

The metrics live in a private ``CollectorRegistry`` (one per service object), so several services
can run in one test process. The 200 and 500 series are created at start with value 0: a counter
that first appears mid-window loses its first increments to ``rate()``, and a 5xx series that
exists at 0 makes "no errors" a real 0 instead of no data.
"""

from __future__ import annotations

import argparse
import asyncio
import random
from collections.abc import Sequence
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import generate_latest

PIPELINE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
GUARDIAN_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
GUARDIAN_SHARE = 0.2  # the guardian's decision takes this share of a request's time
JITTER = 0.25
# prometheus-client >= 0.22 labels its output "version=1.0.0"; the bytes are the classic text
# format, and 0.0.4 is the label every Prometheus (2.42 included) knows.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(slots=True)
class Fault:
    """The service's current behaviour; mutable on purpose (it is the runtime knob)."""

    error_rate: float = 0.0
    latency: float = 0.05

    def update(self, error_rate: object = None, latency: object = None) -> None:
        """Apply the given settings after checking all of them; raise ValueError if bad."""
        rate = self.error_rate if error_rate is None else _number("error_rate", error_rate)
        delay = self.latency if latency is None else _number("latency", latency)
        if not 0.0 <= rate <= 1.0:
            raise ValueError("error_rate must be within [0, 1]")
        if not 0.0 <= delay <= 60.0:
            raise ValueError("latency must be within [0, 60] seconds")
        self.error_rate, self.latency = rate, delay


def _number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number")
    return float(value)


class DemoService:
    """One deployment of the demo service: its identity, its fault knob, its metrics."""

    def __init__(
        self,
        version: str,
        deployment: str,
        fault: Fault | None = None,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.version = version
        self.deployment = deployment
        self.fault = fault if fault is not None else Fault()
        self.rng = rng if rng is not None else random.Random()
        self.registry = CollectorRegistry()
        labels = ("deployment", "version")
        self.requests = Counter(
            "http_requests_total",
            "HTTP requests served, by status code.",
            ("status", *labels),
            registry=self.registry,
        )
        self.pipeline = Histogram(
            "lukhas_matriz_pipeline_duration_seconds",
            "Time spent in the MATRIZ pipeline per request.",
            labels,
            buckets=PIPELINE_BUCKETS,
            registry=self.registry,
        )
        self.guardian = Histogram(
            "guardian_decision_duration_seconds",
            "Time the guardian took to decide per request.",
            labels,
            buckets=GUARDIAN_BUCKETS,
            registry=self.registry,
        )
        for status in ("200", "500"):
            self.requests.labels(status, deployment, version)
        self.pipeline.labels(deployment, version)
        self.guardian.labels(deployment, version)

    async def serve_one(self) -> int:
        """Serve one pipeline request: wait, decide success or failure, record it."""
        fault = self.fault
        took = fault.latency * self.rng.uniform(1.0 - JITTER, 1.0 + JITTER)
        await asyncio.sleep(took)
        status = 500 if self.rng.random() < fault.error_rate else 200
        self.requests.labels(str(status), self.deployment, self.version).inc()
        self.pipeline.labels(self.deployment, self.version).observe(took)
        self.guardian.labels(self.deployment, self.version).observe(took * GUARDIAN_SHARE)
        return status

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


SERVICE = web.AppKey("service", DemoService)


async def _handle_request(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    status = await service.serve_one()
    body = {"version": service.version, "deployment": service.deployment, "status": status}
    return web.json_response(body, status=status)


async def _handle_health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _handle_metrics(request: web.Request) -> web.Response:
    body = request.app[SERVICE].exposition()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


def _fault_body(fault: Fault) -> dict[str, float]:
    return {"error_rate": fault.error_rate, "latency": fault.latency}


async def _get_fault(request: web.Request) -> web.Response:
    return web.json_response(_fault_body(request.app[SERVICE].fault))


async def _set_fault(request: web.Request) -> web.Response:
    fault = request.app[SERVICE].fault
    try:
        payload = await request.json()
        if not isinstance(payload, dict):
            raise ValueError("expected a JSON object")
        unknown = set(payload) - {"error_rate", "latency"}
        if unknown:
            raise ValueError(f"unknown keys: {', '.join(sorted(unknown))}")
        fault.update(payload.get("error_rate"), payload.get("latency"))
    except ValueError as exc:  # json.JSONDecodeError is a ValueError
        return web.json_response({"error": str(exc)}, status=400)
    return web.json_response(_fault_body(fault))


async def _stamp_identity(request: web.Request, response: web.StreamResponse) -> None:
    service = request.app[SERVICE]
    response.headers["X-Version"] = service.version
    response.headers["X-Deployment"] = service.deployment


def create_app(service: DemoService) -> web.Application:
    app = web.Application(client_max_size=64 * 1024)
    app[SERVICE] = service
    app.on_response_prepare.append(_stamp_identity)
    app.router.add_get("/", _handle_request)
    app.router.add_get("/api/{tail:.*}", _handle_request)
    app.router.add_get("/health", _handle_health)
    app.router.add_get("/metrics", _handle_metrics)
    app.router.add_get("/admin/fault", _get_fault)
    app.router.add_post("/admin/fault", _set_fault)
    return app


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m canaryd.demo.service", description=__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--version", default="v1", help="value of the version label")
    parser.add_argument("--deployment", default="stable", help="stable or canary")
    parser.add_argument("--error-rate", type=float, default=0.0, help="share of 500s, 0..1")
    parser.add_argument("--latency", type=float, default=0.05, help="seconds per request")
    parser.add_argument("--seed", type=int, default=None, help="seed for reproducible runs")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = _parse_args(argv)
    fault = Fault()
    try:
        fault.update(args.error_rate, args.latency)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    service = DemoService(args.version, args.deployment, fault, rng=random.Random(args.seed))
    web.run_app(create_app(service), host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
