"""The runtime's own behaviour: wake-ups, durability of commands, superseding, cleanup, resume.

The controller and workers run for real on the real SQLite store with the observe-only router
and platform; the metrics source is a stand-in that answers every check with a fixed value
(the real Prometheus path is covered by test_runtime_prometheus.py and the serve end-to-end
tests), so these tests are about timing and ordering only.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from canaryd.adapters.platforms.none import NonePlatform
from canaryd.adapters.routers.noop import NoopRouter
from canaryd.adapters.store.sqlite import SqliteStore
from canaryd.adapters.telemetry import Telemetry
from canaryd.config.policies import load_policy
from canaryd.core.errors import CommandRejected, RolloutRefused
from canaryd.core.model import Alert, Command, CommandKind, Measurement, Phase, Policy, Rollout
from canaryd.runtime.controller import Controller, Target
from canaryd.runtime.worker import Timing

ROOT = Path(__file__).resolve().parents[2]


def slow_policy(stage_seconds: float = 60.0, interval: float = 30.0) -> Policy:
    """Fast-track with long stages: nothing moves unless something wakes the worker."""
    policy = load_policy(ROOT / "rules/matriz-fast-track.yaml")
    stages = tuple(replace(s, duration=stage_seconds, min_requests=0) for s in policy.stages)
    return replace(policy, stages=stages, interval=interval, scale_down_delay=0.5)


class Clock:
    def time(self) -> float:
        return time.time()


class Healthy:
    """Every check passes (and counts how often it was asked)."""

    def __init__(self) -> None:
        self.calls = 0

    async def measure(
        self, labels: Mapping[str, str], state: Rollout
    ) -> tuple[tuple[Measurement, ...], float | None]:
        self.calls += 1
        values = {
            "success-rate": 0.999,
            "latency-p95": 0.1,
            "error-rate": 0.0,
            "health-score": 0.99,
        }
        checks = state.current_stage.checks
        return tuple(Measurement(c, values[c]) for c in checks), 1000.0


class Running:
    def __init__(self, controller: Controller, store: SqliteStore, tg: asyncio.TaskGroup) -> None:
        self.controller, self.store, self.tg = controller, store, tg

    async def until(self, target: str, predicate: Any, timeout: float = 5.0) -> Rollout:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            current = self.controller.current(target)
            if current is not None and predicate(current):
                return current
            await asyncio.sleep(0.02)
        raise AssertionError(f"timed out; now {self.controller.current(target)}")


def make_controller(
    store: SqliteStore, policy: Policy, source: Healthy, **options: Any
) -> Controller:
    target = Target(
        "svc",
        policy,
        NoopRouter(),
        NonePlatform(),
        labels={"job": "svc"},
        concerns=lambda labels: labels.get("target") == "svc",
    )
    return Controller(
        [target],
        store=store,
        measure=source.measure,
        clock=Clock(),
        events=Telemetry(),
        load_policy=load_policy,
        timing=Timing(observe_every=0.5, converge_every=0.02),
        **options,
    )


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    store = SqliteStore(tmp_path / "state.db")
    controller = make_controller(store, slow_policy(), Healthy())
    tasks: list[asyncio.Task[None]] = []
    try:
        async with asyncio.TaskGroup() as tg:

            def spawn(coro: Any) -> asyncio.Task[None]:
                task = tg.create_task(coro)
                tasks.append(task)
                return task

            await controller.load(spawn)
            assert controller.ready
            yield Running(controller, store, tg)
            for task in tasks:
                task.cancel()
    finally:
        store.close()


def critical(at: float) -> Alert:
    return Alert(
        "fp-1", "firing", {"alertname": "Boom", "severity": "critical", "target": "svc"}, at
    )


async def test_a_critical_alert_wakes_its_worker_and_rolls_back_at_once(running: Running) -> None:
    await running.controller.start("svc", "v2")
    await running.until("svc", lambda r: r.stage_started_at is not None)
    sent = time.time()
    assert await running.controller.receive_alerts([critical(sent)]) == 1
    done = await running.until("svc", lambda r: r.phase is Phase.ROLLED_BACK, timeout=2.0)
    assert done.rollback_at is not None and done.rollback_at - sent < 0.5  # not the 30 s tick
    assert "alert Boom firing" in (done.rollback_reason or "")


async def test_the_same_alert_delivered_again_is_new_only_once(running: Running) -> None:
    alert = replace(critical(time.time()), labels={"alertname": "X", "target": "svc"})
    assert await running.controller.receive_alerts([alert]) == 1
    assert await running.controller.receive_alerts([alert]) == 0
    assert len(running.store.firing_alerts(time.time())) == 1


async def test_alerts_about_no_configured_target_are_not_kept(running: Running) -> None:
    """Issue 7 point 16: anyone who can post alerts could grow the inbox without bound."""
    unmanaged = [
        Alert(f"fp{n}", "firing", {"alertname": "X", "target": "other"}, time.time())
        for n in range(500)
    ]
    assert await running.controller.receive_alerts(unmanaged) == 0
    assert running.controller.inbox.book == {}
    assert running.store.firing_alerts(time.time()) == []  # nor journalled


async def test_the_alert_journal_is_compacted_when_the_daemon_starts(tmp_path: Path) -> None:
    from canaryd.runtime.controller import ALERT_RETENTION

    store = SqliteStore(tmp_path / "state.db")
    long_ago = time.time() - ALERT_RETENTION - 3600
    labels = {"alertname": "X", "target": "svc"}
    for n in range(20):
        gone = Alert(f"gone{n}", "firing", labels, long_ago, long_ago + 60)
        store.record_alerts([gone], long_ago)
    store.record_alerts([Alert("still", "firing", labels, long_ago)], long_ago)
    # "still" was last sent over a day ago: it has expired unless the expiry is longer.
    controller = make_controller(store, slow_policy(), Healthy(), alert_expiry=3 * 24 * 3600)
    try:
        async with asyncio.TaskGroup() as tg:
            tasks: list[asyncio.Task[None]] = []

            def spawn(coro: Any) -> asyncio.Task[None]:
                tasks.append(tg.create_task(coro))
                return tasks[-1]

            await controller.load(spawn)
            for _ in range(100):
                if len(store.alert_journal()) == 1:
                    break
                await asyncio.sleep(0.02)
            for task in tasks:
                task.cancel()
        assert [a.fingerprint for a in store.alert_journal()] == ["still"]
        firing = controller.inbox.firing_for("svc", time.time())
        assert [a.fingerprint for a in firing] == ["still"]
    finally:
        store.close()


async def test_a_command_returns_once_its_decision_is_durable(running: Running) -> None:
    await running.controller.start("svc", "v2")
    await running.until("svc", lambda r: r.stage_started_at is not None)
    paused = await running.controller.command("svc", Command(CommandKind.PAUSE, by="alice"))
    assert paused.phase is Phase.PAUSED
    stored = running.store.get(paused.id)
    assert stored is not None and stored.phase is Phase.PAUSED
    assert running.store.history(rollout_id=paused.id)[-1]["action"] == "pause"
    with pytest.raises(CommandRejected):
        await running.controller.command("svc", Command(CommandKind.PAUSE))


async def test_promote_moves_to_the_next_stage_without_waiting(running: Running) -> None:
    await running.controller.start("svc", "v2")
    await running.until("svc", lambda r: r.stage_started_at is not None)
    moved = await running.controller.command("svc", Command(CommandKind.PROMOTE, by="alice"))
    assert (moved.stage, moved.weight) == (1, 25)


async def test_the_same_image_again_is_refused_and_a_new_one_supersedes_only_when_asked(
    running: Running,
) -> None:
    first = await running.controller.start("svc", "v2")
    await running.until("svc", lambda r: r.stage_started_at is not None)
    with pytest.raises(RolloutRefused):
        await running.controller.start("svc", "v2")
    with pytest.raises(RolloutRefused, match=f"rollout {first.id} of v2 is active") as refused:
        await running.controller.start("svc", "v3")
    assert refused.value.rollout == first.id
    still = running.controller.current("svc")
    assert still is not None and still.id == first.id and not still.phase.terminal
    second = await running.controller.start("svc", "v3", supersede=True)
    old = running.store.get(first.id)
    assert old is not None and old.phase is Phase.ROLLED_BACK and old.successor == second.id
    assert "superseded by v3" in (old.rollback_reason or "")
    current = running.controller.current("svc")
    assert current is not None and current.id == second.id and current.image == "v3"
    await running.until("svc", lambda r: r.id == second.id and r.stage_started_at is not None)


async def test_a_freeze_alert_refuses_new_rollouts(running: Running) -> None:
    freeze = Alert("fz", "firing", {"alertname": "ChangeFreeze", "target": "svc"}, time.time())
    policy = load_policy(ROOT / "rules/matriz-standard.yaml")  # has a freeze rule
    running.controller.targets["svc"].policy = policy
    await running.controller.receive_alerts([freeze])
    with pytest.raises(RolloutRefused, match="frozen"):
        await running.controller.start("svc", "v2")


async def test_cleanup_rolls_back_and_removes_the_canary_now(running: Running) -> None:
    await running.controller.start("svc", "v2")
    await running.until("svc", lambda r: r.stage_started_at is not None)
    began = time.monotonic()
    result = await running.controller.cleanup("svc", by="alice")
    assert result is not None and result.phase is Phase.ROLLED_BACK
    assert result.cleanup_at is None and time.monotonic() - began < 2.0
    platform = running.controller.targets["svc"].platform
    assert await platform.canary_status() == (False, False)


async def test_a_restarted_controller_resumes_the_same_stage_and_timer(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "state.db")
    policy = slow_policy()
    first: Rollout | None = None
    async with asyncio.TaskGroup() as tg:
        tasks: list[asyncio.Task[None]] = []
        controller = make_controller(store, policy, Healthy())

        def spawn(coro: Any) -> asyncio.Task[None]:
            tasks.append(tg.create_task(coro))
            return tasks[-1]

        await controller.load(spawn)
        await controller.start("svc", "v2")
        running = Running(controller, store, tg)
        await running.until("svc", lambda r: r.stage_started_at is not None)
        await controller.command("svc", Command(CommandKind.PROMOTE))
        first = await running.until("svc", lambda r: r.stage == 1 and r.stage_started_at)
        for task in tasks:
            task.cancel()
    assert first is not None
    async with asyncio.TaskGroup() as tg:
        tasks = []
        again = make_controller(store, policy, Healthy())
        await again.load(spawn)
        resumed = again.current("svc")
        assert resumed is not None
        assert (resumed.id, resumed.stage, resumed.stage_started_at) == (
            first.id,
            1,
            first.stage_started_at,
        )
        actions = [d["action"] for d in store.history(rollout_id=first.id)]
        assert actions.count("stage-started") == 2  # stage 1 and stage 2, once each
        for task in tasks:
            task.cancel()
    store.close()
