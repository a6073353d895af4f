"""The runtime against a real Prometheus scraping the demo service as stable and canary.

The controller, workers and batched evaluator run in-process with the real SQLite store, the
real Prometheus client and the observe-only router/platform; traffic comes from the bounded
load generator hitting both services. Policies are the shipped fast-track checks with the
stage durations shortened to seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp

from canaryd.adapters.platforms.none import NonePlatform
from canaryd.adapters.prometheus import PrometheusClient
from canaryd.adapters.routers.noop import NoopRouter
from canaryd.adapters.store.sqlite import SqliteStore
from canaryd.adapters.telemetry import Telemetry
from canaryd.config.policies import load_policy
from canaryd.core.model import Phase, Policy, Rollout
from canaryd.demo.load import generate
from canaryd.runtime.controller import Controller, Target
from canaryd.runtime.evaluator import Evaluator
from canaryd.runtime.worker import Timing
from support import procs

ROOT = Path(__file__).resolve().parents[2]
JOB = "lukhas-matriz-canary"


def short_policy(stage_seconds: float = 3.0) -> Policy:
    """Fast-track's checks, stages of a few seconds, 1 s evaluations over a 10 s window. No
    verified split: the noop router moves nothing and each side has its own load at the same
    rate, so the canary serves half the requests whatever the weight."""
    policy = replace(load_policy(ROOT / "rules/matriz-fast-track.yaml"), split_tolerance=None)
    stages = tuple(
        replace(s, duration=stage_seconds if s.duration else 0.0, min_requests=5)
        for s in policy.stages
    )
    limits = replace(policy.limits, progress_deadline=30.0)
    return replace(
        policy, stages=stages, interval=1.0, window="10s", limits=limits, scale_down_delay=1.0
    )


class Clock:
    def time(self) -> float:
        return time.time()


@dataclass
class Stack:
    controller: Controller
    store: SqliteStore
    evaluator: Evaluator
    prometheus: procs.Proc
    canary: procs.Proc
    stable: procs.Proc

    async def until_measured(self, target: str, timeout: float = 20.0) -> Rollout:
        """The target's rollout once its first stage has started (its checks have data)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            current = self.controller.current(target)
            if current is not None and current.stage_started_at is not None:
                return current
            await asyncio.sleep(0.2)
        raise AssertionError(f"stage never started: {self.controller.current(target)}")

    async def finished(self, target: str, timeout: float = 60.0) -> Rollout:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            current = self.controller.current(target)
            if current is not None and current.phase.terminal:
                return current
            await asyncio.sleep(0.2)
        raise AssertionError(f"rollout not finished: {self.controller.current(target)}")


@contextlib.asynccontextmanager
async def stack(
    tmp_path: Path,
    prometheus: Callable[..., procs.Proc],
    demo_service: Callable[..., procs.Proc],
    *,
    canary_error_rate: float = 0.0,
    policy: Policy | None = None,
    targets: list[str] | None = None,
) -> AsyncIterator[Stack]:
    """One target ``matriz`` (job JOB), or several, each a job scraping the same services."""
    stable = demo_service(version="v1", deployment="stable")
    canary = demo_service(version="v2", deployment="canary", error_rate=canary_error_rate)
    jobs = {name: name for name in targets} if targets else {"matriz": JOB}
    addresses = [f"127.0.0.1:{p.port}" for p in (stable, canary)]
    prom = prometheus({job: addresses for job in jobs.values()})
    for job in jobs.values():
        procs.wait_for_up(prom, job, 2)
    store = SqliteStore(tmp_path / "state.db")
    async with aiohttp.ClientSession() as session, asyncio.TaskGroup() as tg:
        load = [tg.create_task(generate(f"{s.url}/", 40, 120)) for s in (stable, canary)]
        client = PrometheusClient(session, prom.url, 5.0)
        evaluator = Evaluator(client, gather=0.1)
        tasks: list[asyncio.Task[Any]] = [tg.create_task(evaluator.run())]
        chosen = policy or short_policy()
        members = [
            Target(
                name,
                chosen,
                NoopRouter(),
                NonePlatform(),
                labels={"job": job},
                concerns=lambda labels, name=name: labels.get("target") == name,
            )
            for name, job in jobs.items()
        ]
        controller = Controller(
            members,
            store=store,
            measure=evaluator.measure,
            clock=Clock(),
            events=Telemetry(),
            load_policy=load_policy,
            timing=Timing(observe_every=0.5),
        )

        def spawn(coro: Any) -> asyncio.Task[None]:
            task = tg.create_task(coro)
            tasks.append(task)
            return task

        await controller.load(spawn)
        await asyncio.sleep(3)  # let rate() windows fill with both deployments' traffic
        try:
            yield Stack(controller, store, evaluator, prom, canary, stable)
        finally:
            for task in [*tasks, *load]:
                task.cancel()
    store.close()


async def test_a_good_canary_passes_every_stage_and_is_promoted(
    tmp_path: Path, prometheus: Any, demo_service: Any
) -> None:
    async with stack(tmp_path, prometheus, demo_service) as s:
        await s.controller.start("matriz", "v2")
        final = await s.finished("matriz")
        assert final.phase is Phase.SUCCEEDED, final.rollback_reason
        history = s.store.history(target="matriz")
        weights = [d["weight"] for d in history if d["action"] == "set-weight"]
        assert weights[:4] == [10, 25, 50, 100]
        measured = s.store.measurements(final.id)
        assert {m["check"] for m in measured} >= {
            "success-rate",
            "latency-p95",
            "error-rate",
            "health-score",
        }
        # No data only while the rollout was younger than its 10 s window (core.scope: the
        # window is never filled with samples from before the canary was ready), then always.
        values = [m["value"] for m in measured if m["check"] == "success-rate"]
        young = len(values) - len(list(itertools.dropwhile(lambda v: v is None, values)))
        assert young < len(values) and None not in values[young:], values
        assert young <= 11, values  # one evaluation a second for at most the 10 s window


async def test_a_canary_made_bad_mid_stage_is_rolled_back_by_the_promql_path(
    tmp_path: Path, prometheus: Any, demo_service: Any
) -> None:
    async with stack(tmp_path, prometheus, demo_service, policy=short_policy(8.0)) as s:
        await s.controller.start("matriz", "v2")
        await asyncio.sleep(4)
        async with aiohttp.ClientSession() as session:
            await session.post(f"{s.canary.url}/admin/fault", json={"error_rate": 0.3})
        final = await s.finished("matriz")
        assert final.phase is Phase.ROLLED_BACK
        reason = final.rollback_reason or ""
        # the absolute SLOs, or the compare check that sees canary worse than stable first
        assert any(c in reason for c in ("success-rate", "error-rate", "errors-vs-stable")), reason
        assert final.weight == 0


async def test_checks_of_all_targets_cost_one_query_per_check_per_cycle(
    tmp_path: Path, prometheus: Any, demo_service: Any
) -> None:
    names = [f"svc-{i}" for i in range(4)]
    async with stack(tmp_path, prometheus, demo_service, targets=names) as s:
        for name in names:
            await s.controller.start(name, "v2")
        finals = [await s.finished(name) for name in names]
        assert all(f.phase is Phase.SUCCEEDED for f in finals)
        # success-rate; + latency; + error-rate; health-score; each stage with the two compare
        # checks (one query each for all targets, both sides in one answer)
        checks_per_stage = {1: 3, 2: 4, 3: 5, 4: 3}
        full = [(n, q) for n, q in s.evaluator.batches if n == len(names)]
        assert full, s.evaluator.batches
        asked = [queries for _, queries in full if queries]
        assert asked, s.evaluator.batches
        compare_only = 2  # while young: the threshold checks wait (core.scope), the compare
        # checks (raw counters from a baseline, core.compare) are asked all the same
        for queries in asked:
            # one query per check of the stage for all 4 targets (the request count rides along)
            allowed = {*checks_per_stage.values(), compare_only}
            assert queries in allowed, (queries, s.evaluator.batches)
        # while the rollouts are younger than their window only the compare checks are asked
        assert asked[0] == compare_only, full


async def test_the_request_count_rides_along_and_is_asked_apart_if_refused(
    tmp_path: Path, prometheus: Any, demo_service: Any
) -> None:
    """A check query and the request count are one joined query; the values are those the two
    queries give alone. A check Prometheus cannot label (a scalar) costs a retry, not the count."""
    policy = short_policy(stage_seconds=600.0)
    scalar = replace(
        policy.checks["success-rate"],
        query='scalar(sum(rate(http_requests_total{job=~"{{job}}"}[{{window}}])))',
    )
    names = ["svc-0", "svc-1"]
    async with stack(tmp_path, prometheus, demo_service, policy=policy, targets=names) as s:
        for name in names:
            await s.controller.start(name, "v2")
        # as if their canaries had been ready for a minute: windows as written (core.scope)
        states = [await s.until_measured(name) for name in names]
        states = [replace(st, ready_at=time.time() - 60) for st in states]
        client = s.evaluator.source
        mine = Evaluator(client, gather=0.1)  # its own query counter: the workers use theirs
        running = asyncio.create_task(mine.run())

        async def batch(*states: Rollout) -> list[Any]:
            before = mine.queries
            found = await asyncio.gather(*(mine.measure({"job": st.target}, st) for st in states))
            return [mine.queries - before, *found]

        queries, *found = await batch(*states)
        assert queries == 3  # stage 1: success-rate (the count rode along) and 2 compare checks
        for state, (measurements, count) in zip(states, found, strict=True):
            alone = await client.query(
                f'sum(rate(http_requests_total{{job="{state.target}",deployment="canary"}}[10s]))'
            )
            assert count is not None and alone.value is not None
            assert abs(count - alone.value * policy.interval) <= 0.5 * count
            assert measurements[0].check == "success-rate"
            assert measurements[0].value is not None and measurements[0].value > 0.9

        odd = [
            replace(st, policy=replace(policy, checks={**policy.checks, "success-rate": scalar}))
            for st in states
        ]
        queries, *found = await batch(*odd)
        assert queries == 5  # the joined query was refused, then both were asked apart (+ 2)
        for measurements, count in found:
            assert count is not None and count > 0
            assert measurements[0].error is None
        running.cancel()


async def test_prometheus_killed_mid_rollout_never_promotes(
    tmp_path: Path, prometheus: Any, demo_service: Any
) -> None:
    async with stack(tmp_path, prometheus, demo_service, policy=short_policy(6.0)) as s:
        await s.controller.start("matriz", "v2")
        await asyncio.sleep(2)
        s.prometheus.stop()
        final = await s.finished("matriz", timeout=60)
        assert final.phase is Phase.ROLLED_BACK
        assert "source errors" in (final.rollback_reason or "")
        assert not any(d["action"] == "promote" for d in s.store.history(target="matriz"))
