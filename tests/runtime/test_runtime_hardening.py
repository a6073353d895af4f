"""Issue 7, the runtime's points: hostile or unlucky input must never wedge a rollout.

Same harness as test_runtime.py: the controller and its workers run for real on a real SQLite
store, with the observe-only router and platform. Where the world has to misbehave (a router
that never reaches 0%, a disk that is full, a slow read) it is a small subclass of the real
adapter, changing only the one call that misbehaves.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from test_runtime import ROOT, Healthy, Running, make_controller, slow_policy

from canaryd.adapters.routers.noop import NoopRouter
from canaryd.adapters.store.sqlite import SqliteStore
from canaryd.config.policies import load_policy
from canaryd.core.errors import (
    CommandRejected,
    RolloutRefused,
    RouterUnavailable,
    StillRunning,
)
from canaryd.core.model import Alert, Command, CommandKind, Phase, Policy
from canaryd.ports import StoreUnavailable
from canaryd.runtime import controller as controller_module
from support.servekit import WEBHOOK_TOKEN, Serve, TargetSpec, call, wait_until, write_config

LONE_SURROGATE = "\udc80"


@asynccontextmanager
async def running_on(
    store: SqliteStore, policy: Policy | None = None, **options: Any
) -> AsyncIterator[Running]:
    controller = make_controller(store, policy or slow_policy(), Healthy(), **options)
    async with asyncio.TaskGroup() as tg:
        tasks: list[asyncio.Task[None]] = []

        def spawn(coro: Any) -> asyncio.Task[None]:
            tasks.append(tg.create_task(coro))
            return tasks[-1]

        await controller.load(spawn)
        try:
            yield Running(controller, store, tg)
        finally:
            for task in tasks:
                task.cancel()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    with SqliteStore(tmp_path / "state.db") as opened:
        yield opened


def alert(
    fp: str, name: str, *, status: str = "firing", at: float | None = None, **labels: str
) -> Alert:
    started = time.time() if at is None else at
    ends = time.time() if status == "resolved" else None
    return Alert(fp, status, {"alertname": name, "target": "svc", **labels}, started, ends)


async def started(running: Running, image: str = "v2") -> None:
    await running.controller.start("svc", image)
    await running.until("svc", lambda r: r.stage_started_at is not None)


# --------------------------------------------------------------------------- 1: poison input


async def test_a_lone_surrogate_label_cannot_wedge_the_rollout(store: SqliteStore) -> None:
    """A label that SQLite cannot encode used to fail every pass forever: no rollback, no
    answer to a command. Now the bad input is isolated and the rollback still happens."""
    async with running_on(store) as running:
        await started(running)
        poison = alert("fp-bad", f"Bad{LONE_SURROGATE}", note=LONE_SURROGATE)
        assert await running.controller.receive_alerts([poison]) == 1
        async with asyncio.timeout(2.0):  # answered, not left waiting on the wedged worker
            paused = await running.controller.command("svc", Command(CommandKind.PAUSE))
        assert paused.phase is Phase.PAUSED
        sent = time.time()
        await running.controller.receive_alerts([alert("fp-crit", "Boom", severity="critical")])
        done = await running.until("svc", lambda r: r.phase is Phase.ROLLED_BACK, timeout=2.0)
        assert done.rollback_at is not None and done.rollback_at - sent < 2.0
        assert "alert Boom firing" in (done.rollback_reason or "")
        reasons = [d["reason"] for d in store.history(rollout_id=done.id)]
        # kept, its text made safe (by the store: U+FFFD; by the worker's retry: the escape)
        assert any("Bad\ufffd" in r or "Bad\\udc80" in r for r in reasons), reasons


async def test_a_rollback_whose_reason_cannot_be_stored_still_rolls_back(
    store: SqliteStore,
) -> None:
    async with running_on(store) as running:
        await started(running)
        command = Command(CommandKind.ROLLBACK, by="alice", reason=f"oops {LONE_SURROGATE}")
        async with asyncio.timeout(2.0):
            result = await running.controller.command("svc", command)
        assert result.phase in (Phase.ROLLING_BACK, Phase.ROLLED_BACK)
        assert result.rollback_reason is not None and "oops" in result.rollback_reason
        stored = store.get(result.id)
        assert stored is not None and stored.phase is not Phase.PROGRESSING
        # the store keeps the text made safe: the lone surrogate became U+FFFD
        assert stored.rollback_reason == result.rollback_reason.replace(LONE_SURROGATE, "\ufffd")


async def test_a_pass_that_cannot_be_committed_is_survived(store: SqliteStore) -> None:
    """Every input poisoned at once: each dropped and logged, the worker goes on."""
    async with running_on(store) as running:
        await started(running)
        bad = [alert(f"fp{n}{LONE_SURROGATE}", f"B{n}{LONE_SURROGATE}") for n in range(3)]
        await running.controller.receive_alerts(bad)
        async with asyncio.timeout(2.0):
            moved = await running.controller.command("svc", Command(CommandKind.PROMOTE))
        assert moved.stage == 1
        assert running.controller.workers()["svc"].state.stage == 1


# --------------------------------------------------------------------------- 4: refusals


async def test_concurrent_commands_the_engine_refused_are_rejected(store: SqliteStore) -> None:
    """A rollback and five promote --full queued into one pass: the engine takes the first
    and refuses the rest; each refused caller now hears so (409), not 200."""
    async with running_on(store) as running:
        await started(running)
        worker = running.controller.workers()["svc"]
        commands = [Command(CommandKind.ROLLBACK, by="alice")] + [
            Command(CommandKind.PROMOTE_FULL, by=f"bob{n}") for n in range(5)
        ]
        async with asyncio.timeout(2.0):
            results = await asyncio.gather(
                *(worker.command(c) for c in commands), return_exceptions=True
            )
        assert not isinstance(results[0], BaseException)
        assert results[0].rollback_reason is not None
        refused = results[1:]
        assert all(isinstance(r, CommandRejected) for r in refused), refused
        assert all(str(r) for r in refused)  # the engine's reason
        history = store.history(rollout_id=results[0].id)
        assert sum(1 for d in history if d["action"] == "ignore") == 5


# --------------------------------------------------------------------------- 5: alert order


async def test_a_late_duplicate_firing_never_reopens_a_resolved_alert(store: SqliteStore) -> None:
    """Fired, resolved, restarted, then a late duplicate of the first firing (same
    fingerprint and startsAt): it used to be active again forever, and the freeze rule then
    refused every start."""
    policy = load_policy(ROOT / "rules/matriz-standard.yaml")  # has a freeze rule
    began = time.time() - 60
    firing = alert("fz", "ChangeFreeze", at=began)
    resolved = Alert("fz", "resolved", firing.labels, began, time.time())
    async with running_on(store, policy) as running:
        await running.controller.receive_alerts([firing])
        with pytest.raises(RolloutRefused, match="frozen"):
            await running.controller.start("svc", "v2")
        await running.controller.receive_alerts([resolved])
    async with running_on(store, policy) as again:  # restarted: the journal is replayed
        assert await again.controller.receive_alerts([firing]) == 0  # the late duplicate
        assert again.controller.inbox.firing_for("svc", time.time()) == []
        await again.controller.start("svc", "v2")
    assert store.firing_alerts(time.time()) == []  # and in the journal's own replay
    async with running_on(store, policy) as third:
        refired = alert("fz", "ChangeFreeze", at=time.time())  # fires again: a new startsAt
        assert await third.controller.receive_alerts([refired]) == 1
        assert [a.fingerprint for a in third.controller.inbox.firing_for("svc", time.time())] == [
            "fz"
        ]


async def test_a_firing_that_arrives_after_its_resolution_stays_resolved(
    store: SqliteStore,
) -> None:
    """Alertmanager's times decide, not arrival: a retried firing overtaken by its resolve."""
    policy = load_policy(ROOT / "rules/matriz-standard.yaml")
    began = time.time() - 60
    firing = alert("fz", "ChangeFreeze", at=began)
    resolved = Alert("fz", "resolved", firing.labels, began, time.time())
    older = alert("fz", "ChangeFreeze", at=began - 600)  # an earlier instance, late
    async with running_on(store, policy) as running:
        await running.controller.receive_alerts([resolved])
        await running.controller.receive_alerts([firing, older])
        assert running.controller.inbox.firing_for("svc", time.time()) == []
        await running.controller.start("svc", "v2")
    assert store.firing_alerts(time.time()) == []


async def test_a_firing_alert_no_longer_re_sent_expires(store: SqliteStore) -> None:
    policy = load_policy(ROOT / "rules/matriz-standard.yaml")
    async with running_on(store, policy, alert_expiry=0.3) as running:
        await running.controller.receive_alerts([alert("fz", "ChangeFreeze")])
        with pytest.raises(RolloutRefused, match="frozen"):
            await running.controller.start("svc", "v2")
        await asyncio.sleep(0.35)
        await running.controller.start("svc", "v2")  # the freeze has expired
    assert store.firing_alerts(time.time(), expire_after=0.3) == []
    assert len(store.firing_alerts(time.time())) == 1  # without an expiry it would still fire


# --------------------------------------------------------------------------- 8: a flood


async def test_a_flood_of_alerts_does_not_hold_the_loop_and_a_critical_one_still_rolls_back(
    store: SqliteStore,
) -> None:
    async with running_on(store) as running:
        await started(running)
        now = time.time()
        flood = [
            Alert(f"fp{n}", "firing", {"alertname": f"Noise{n}", "target": "svc"}, now)
            for n in range(48_000)
        ]
        flood.append(alert("fp-crit", "Boom", severity="critical"))
        gaps: list[float] = []

        async def ticker() -> None:
            last = time.monotonic()
            while True:
                await asyncio.sleep(0.01)
                gaps.append(time.monotonic() - last)
                last = time.monotonic()

        ticking = asyncio.create_task(ticker())
        try:
            async with asyncio.timeout(60):  # the old O(n²) pass took minutes
                await running.controller.receive_alerts(flood)
                received = time.time()
                done = await running.until("svc", lambda r: r.phase is Phase.ROLLED_BACK, 10)
        finally:
            ticking.cancel()
        assert done.rollback_at is not None and done.rollback_at - received < 2.0
        assert max(gaps) < 1.0, f"the loop stalled {max(gaps):.2f}s"


# --------------------------------------------------------------------------- 10: disk full


@contextmanager
def disk_full(store: SqliteStore) -> Iterator[None]:
    """SQLite's own "database or disk is full" (SQLITE_FULL): the file may not grow."""
    conn: sqlite3.Connection = store._conn
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages}")
    try:
        yield
    finally:
        conn.execute("PRAGMA max_page_count = 4294967294")


async def test_a_command_that_cannot_be_written_fails_at_once_and_is_not_applied_later(
    store: SqliteStore,
) -> None:
    async with running_on(store) as running:
        await started(running)
        filler = "x" * 20_000  # the decision's reason names who: it needs new pages
        with disk_full(store), pytest.raises(StoreUnavailable):
            async with asyncio.timeout(2.0):
                # a reason long enough that its decision needs a new page
                await running.controller.command("svc", Command(CommandKind.PAUSE, by=filler))
        for _ in range(3):  # passes after the disk has room again, each woken by a command
            with pytest.raises(CommandRejected):  # RESUME of a progressing rollout: refused
                await running.controller.command("svc", Command(CommandKind.RESUME, by="ops"))
        current = running.controller.current("svc")
        assert current is not None and current.phase is Phase.PROGRESSING
        assert all(d["action"] != "pause" for d in store.history(rollout_id=current.id))


# --------------------------------------------------------------------------- 13: bounded waits


class StuckRouter(NoopRouter):
    """A router that never gets the canary to 0%: every change after the first fails."""

    async def set_weight(self, weight: int) -> None:
        if weight == 0 and await self.get_weight():
            raise RouterUnavailable("the proxy refuses every reload")
        await super().set_weight(weight)


async def test_cleanup_waits_bounded_then_answers_still_running(store: SqliteStore) -> None:
    async with running_on(store, request_wait=0.5) as running:
        running.controller.targets["svc"].router = StuckRouter()
        await started(running)
        began = time.monotonic()
        with pytest.raises(StillRunning) as raised:
            async with asyncio.timeout(5.0):
                await running.controller.cleanup("svc", by="alice")
        assert raised.value.target == "svc" and time.monotonic() - began < 3.0


async def test_a_start_that_supersedes_waits_bounded_and_frees_the_lock(
    store: SqliteStore,
) -> None:
    async with running_on(store, request_wait=0.5) as running:
        running.controller.targets["svc"].router = StuckRouter()
        await started(running)
        async with asyncio.timeout(5.0):
            with pytest.raises(RolloutRefused, match="has not finished within"):
                await running.controller.start("svc", "v3", supersede=True)
            assert not running.controller.targets["svc"].lock.locked()
            with pytest.raises(RolloutRefused):  # answered again, promptly
                await running.controller.start("svc", "v3", supersede=True)


class SlowReads(SqliteStore):
    """The real store whose ``latest_for_target`` takes a while (a slow disk)."""

    gate = threading.Event()

    def latest_for_target(self, target: str) -> Any:
        self.gate.wait(timeout=2.0)
        return super().latest_for_target(target)


async def test_a_command_reads_the_store_off_the_loop(tmp_path: Path) -> None:
    with SlowReads(tmp_path / "state.db") as slow:
        slow.gate.set()
        async with running_on(slow) as running:
            await started(running)
            await running.controller.command("svc", Command(CommandKind.ROLLBACK))
            await running.until("svc", lambda r: r.phase is Phase.ROLLED_BACK)
            for _ in range(100):  # its worker ends once the canary is scaled down
                if "svc" not in running.controller.workers():
                    break
                await asyncio.sleep(0.02)
            slow.gate.clear()
            asking = asyncio.create_task(
                running.controller.command("svc", Command(CommandKind.PAUSE))
            )
            began = time.monotonic()
            await asyncio.sleep(0.05)  # runs only if the loop is free
            assert time.monotonic() - began < 1.0, "the loop was held by the store read"
            slow.gate.set()
            with pytest.raises(CommandRejected):
                await asking


# --------------------------------------------------------------------------- 9: housekeeping


class CountingAudit(SqliteStore):
    """The real store, noting the audit compactions asked of it."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.compactions: list[tuple[float, int]] = []

    def compact_audit(self, before: float, keep: int) -> int:
        self.compactions.append((before, keep))
        return 0


async def test_the_hourly_housekeeping_compacts_the_audit_log(tmp_path: Path) -> None:
    with CountingAudit(tmp_path / "state.db") as counting:
        async with running_on(counting):
            for _ in range(100):
                if counting.compactions:
                    break
                await asyncio.sleep(0.02)
        assert len(counting.compactions) == 1
        before, keep = counting.compactions[0]
        assert keep == controller_module.AUDIT_KEEP == 100_000
        assert abs(time.time() - controller_module.AUDIT_RETENTION - before) < 60


# --------------------------------------------------------------------------- 1: a real daemon

SERVE_POLICY = """\
name: poison-slow
interval: 30s
scale_down_delay: 500ms
checks:
  unused: {query: vector(1), threshold: 0}
stages:
  - {weight: 10, duration: 10m}
  - {weight: 100, duration: 10m}
alerts:
  - name: critical-rollback
    match: {severity: critical}
    action: rollback
"""


def webhook_body(fp: str, labels: dict[str, str]) -> dict[str, Any]:
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    alerts = [
        {
            "status": "firing",
            "labels": labels,
            "annotations": {},
            "startsAt": now,
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "",
            "fingerprint": fp,
        }
    ]
    return {
        "version": "4",
        "groupKey": "{}:{}",
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": "canaryd",
        "groupLabels": {},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://127.0.0.1:9093",
        "alerts": alerts,
    }


def test_serve_survives_a_lone_surrogate_rolls_back_and_restarts(tmp_path: Path) -> None:
    """Issue 7 point 1 against ``canaryd serve``: the poisoned alert and rollback reason are
    answered, a critical alert still rolls back within 2 s, SIGTERM ends it and it restarts."""
    (tmp_path / "policy.yaml").write_text(SERVE_POLICY)
    serve = Serve(write_config(tmp_path, [TargetSpec("svc", "policy.yaml", {"job": "svc"})]))
    try:
        serve.start()
        serve.start_rollout("svc", "v2")
        hook = {"token": WEBHOOK_TOKEN}
        bad = {"alertname": f"Bad{LONE_SURROGATE}", "target": "svc", "x": LONE_SURROGATE}
        status, _ = serve.call("POST", "/api/v1/alerts", webhook_body("aaaa0001", bad), **hook)
        assert status in (200, 400, 422), serve.tail()  # taken in (made safe) or refused
        status, doc = call(serve.url, "POST", "/api/v1/targets/svc/pause", {}, timeout=5)
        assert status == 200, (status, doc, serve.tail())  # answered, not stuck behind it
        critical = {"alertname": "Boom", "target": "svc", "severity": "critical"}
        sent = time.monotonic()
        status, _ = serve.call("POST", "/api/v1/alerts", webhook_body("bbbb0002", critical), **hook)
        assert status == 200
        wait_until(
            lambda: serve.rollout("svc") or {},
            lambda r: r.get("phase") == "RolledBack",
            2.0,
            "the rollback after the poisoned input",
        )
        assert time.monotonic() - sent < 2.5
        assert serve.stop() == 0, serve.tail()
        serve.start()  # ready again on the same state
        assert (serve.rollout("svc") or {}).get("phase") == "RolledBack"
        serve.start_rollout("svc", "v3")
        reason = {"reason": f"oops {LONE_SURROGATE}"}
        path = "/api/v1/targets/svc/rollback"
        status, doc = call(serve.url, "POST", path, reason, timeout=5)
        assert status in (200, 400, 422), (status, doc, serve.tail())  # made safe, or refused
    finally:
        serve.stop()
