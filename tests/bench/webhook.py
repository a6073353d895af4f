"""Benchmark: sustained Alertmanager-webhook ingest of canaryd next to a bare aiohttp handler.

    python tests/bench/webhook.py [--seconds 5] [--rounds 3] [--concurrency 16] [--alerts 5]

Two servers are measured in the same run, in alternating rounds (this machine is noisy: the
ratio of each round compares neighbours in time), each in its own process pinned to CPU 0 while
the load generator runs pinned to CPU 1:

* ``bare``: an aiohttp handler that parses the JSON body and answers 200 (the baseline);
* ``canaryd``: the real ``POST /api/v1/alerts`` of ``canaryd.api.server`` with the
  real controller and SQLite store: bearer check, parsing into alerts, a durable (fsynced)
  group commit, de-duplication and target matching, then 200.

Every request carries ``--alerts`` alerts with fresh fingerprints (nothing is a duplicate), in
Alertmanager's v0.34 payload shape. Printed per round: alerts/s, requests/s, p50/p99 latency
and the ratio canaryd/bare; then the medians. Targets (issue 3): ≥ 3,000 alerts/s on one core,
p99 < 20 ms, ratio ≥ 0.5.
Loopback only; the run is bounded by ``--seconds``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TOKEN = "bench-webhook-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pin(cpu: int) -> None:
    if hasattr(os, "sched_setaffinity") and cpu < (os.cpu_count() or 1):
        os.sched_setaffinity(0, {cpu})


# --------------------------------------------------------------------------- servers


def serve_bare(port: int, ready: Any) -> None:
    from aiohttp import web

    pin(0)

    async def handle(request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response({"received": len(body.get("alerts", []))})

    app = web.Application()
    app.router.add_post("/api/v1/alerts", handle)
    ready.set()
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def serve_canaryd(port: int, ready: Any, state_dir: str) -> None:
    from aiohttp import web

    from canaryd.adapters.platforms.none import NonePlatform
    from canaryd.adapters.routers.noop import NoopRouter
    from canaryd.adapters.store.sqlite import SqliteStore
    from canaryd.adapters.telemetry import Telemetry, configure_logging
    from canaryd.api.server import build_app
    from canaryd.api.webhook import WebhookCredential
    from canaryd.config.policies import load_policy
    from canaryd.runtime.controller import Controller, Target

    pin(0)
    configure_logging("info", json_logs=True)  # as `canaryd serve` runs
    root = Path(__file__).resolve().parents[2]
    policy = load_policy(root / "rules/matriz-fast-track.yaml")

    class Clock:
        def time(self) -> float:
            return time.time()

    async def measure(labels: Any, state: Any) -> Any:
        return (), None

    async def main() -> None:
        store = SqliteStore(Path(state_dir) / "state.db")
        target = Target(
            "matriz",
            policy,
            NoopRouter(),
            NonePlatform(),
            labels={"job": "matriz"},
            concerns=lambda labels: labels.get("target") == "matriz",
        )
        controller = Controller(
            [target],
            store=store,
            measure=measure,
            clock=Clock(),
            events=Telemetry(),
            load_policy=load_policy,
        )
        async with asyncio.TaskGroup() as tg:
            await controller.load(tg.create_task)
            app = build_app(
                controller,
                store,
                Telemetry(),
                tokens=(),
                webhook=WebhookCredential(token=TOKEN),
                clock=Clock(),
            )
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            ready.set()
            await asyncio.Event().wait()

    asyncio.run(main())


# --------------------------------------------------------------------------- load


def payload(n: int, alerts: int) -> bytes:
    items = []
    for k in range(alerts):
        labels = {
            "alertname": "HighLatency",
            "service": f"svc-{k}",
            "severity": "warning",
            "instance": f"10.0.{k}.1:8080",
        }
        items.append(
            {
                "status": "firing",
                "labels": labels,
                "annotations": {"summary": "p99 high"},
                "startsAt": f"2026-11-28T10:{(n // 60) % 60:02d}:{n % 60:02d}.{k:03d}Z",
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "http://127.0.0.1:9090/graph?g0.expr=x",
                "fingerprint": f"{n:012x}{k:04x}",
            }
        )
    body = {
        "receiver": "canaryd",
        "status": "firing",
        "alerts": items,
        "notification_reason": "new alerts added",
        "groupLabels": {"alertname": "HighLatency"},
        "commonLabels": {"alertname": "HighLatency"},
        "commonAnnotations": {},
        "routeLabels": {},
        "externalURL": "http://127.0.0.1:9093",
        "version": "4",
        "groupKey": '{}:{alertname="HighLatency"}',
        "truncatedAlerts": 0,
    }
    return json.dumps(body).encode()


async def load(port: int, seconds: float, concurrency: int, alerts: int) -> dict[str, float]:
    import aiohttp

    url = f"http://127.0.0.1:{port}/api/v1/alerts"
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    latencies: list[float] = []
    failures = 0
    counter = iter(range(10**9))
    deadline = time.perf_counter() + seconds

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal failures
        while time.perf_counter() < deadline:
            body = payload(next(counter), alerts)
            started = time.perf_counter()
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()
                if response.status != 200:
                    failures += 1
                    continue
            latencies.append(time.perf_counter() - started)

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        # warm-up, not measured
        async with session.post(url, data=payload(10**8, alerts), headers=headers) as r:
            await r.read()
        began = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    latencies.sort()
    return {
        "requests/s": len(latencies) / elapsed,
        "alerts/s": len(latencies) * alerts / elapsed,
        "p50 ms": statistics.median(latencies) * 1000,
        "p99 ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
        "failures": float(failures),
    }


def measure(name: str, args: argparse.Namespace) -> dict[str, float]:
    port = free_port()
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    with tempfile.TemporaryDirectory() as state_dir:
        if name == "bare":
            proc = ctx.Process(target=serve_bare, args=(port, ready), daemon=True)
        else:
            proc = ctx.Process(target=serve_canaryd, args=(port, ready, state_dir), daemon=True)
        proc.start()
        try:
            if not ready.wait(30):
                raise SystemExit(f"{name}: server did not start")
            time.sleep(0.5)
            pin(1)
            return asyncio.run(load(port, args.seconds, args.concurrency, args.alerts))
        finally:
            proc.terminate()
            proc.join(10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per server per round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating bare/canaryd rounds")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--alerts", type=int, default=5, help="alerts per webhook request")
    args = parser.parse_args()
    rounds = []
    for _ in range(args.rounds):  # alternate, so a noisy moment hits both servers alike
        rounds.append({name: measure(name, args) for name in ("bare", "canaryd")})
    print(
        f"webhook ingest, {args.rounds} rounds of {args.seconds:g}s per server, concurrency "
        f"{args.concurrency}, {args.alerts} alerts per request, server on CPU 0, load on CPU 1"
    )
    print(
        f"{'round':<6} {'server':<9} {'alerts/s':>10} {'requests/s':>11} {'p50 ms':>8} "
        f"{'p99 ms':>8} {'ratio':>6}"
    )
    ratios = []
    for i, results in enumerate(rounds, start=1):
        ratio = results["canaryd"]["alerts/s"] / results["bare"]["alerts/s"]
        ratios.append(ratio)
        for name, r in results.items():
            shown = f"{ratio:>6.2f}" if name == "canaryd" else ""
            print(
                f"{i:<6} {name:<9} {r['alerts/s']:>10.0f} {r['requests/s']:>11.0f} "
                f"{r['p50 ms']:>8.2f} {r['p99 ms']:>8.2f} {shown}"
                + (f"  ({r['failures']:.0f} failed)" if r["failures"] else "")
            )
    canaryd = [r["canaryd"] for r in rounds]
    rate = statistics.median(r["alerts/s"] for r in canaryd)
    p99 = max(r["p99 ms"] for r in canaryd)
    ratio = statistics.median(ratios)
    print(
        f"canaryd: median {rate:.0f} alerts/s (target ≥ 3000), worst p99 {p99:.2f} ms "
        f"(target < 20), median ratio canaryd/bare {ratio:.2f} (target ≥ 0.5)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
