"""The controller: every target, its active rollout's worker, and the doors into them.

The HTTP API and the webhook call the controller; the controller never decides anything
itself. Starting a rollout goes through ``core.rules.admit`` (freeze alerts, conflicts,
superseding), commands go to the rollout's worker and return once their decision is durable,
and alerts are recorded durably, de-duplicated and delivered to the workers of the targets
they concern, which wake at once.
"""

from __future__ import annotations

import asyncio
import queue
import secrets
import threading
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from canaryd.core import stages, supply
from canaryd.core.errors import (
    CommandRejected,
    RolloutRefused,
    StillRunning,
    UnknownTarget,
)
from canaryd.core.model import (
    Action,
    Alert,
    Cause,
    Command,
    CommandKind,
    Measurement,
    Phase,
    Policy,
    Rollout,
)
from canaryd.core.rules import AdmissionVerdict, admit
from canaryd.ports import (
    ChecksStart,
    Clock,
    PinsImages,
    PinsRunningCanary,
    Platform,
    PreparedAlerts,
    Router,
    RuntimeEvents,
    StateStore,
    Verifier,
)
from canaryd.runtime.inbox import Concerns, Inbox
from canaryd.runtime.worker import Timing, Worker

MeasureTarget = Callable[
    [Mapping[str, str], Rollout], Awaitable[tuple[tuple[Measurement, ...], float | None]]
]

Spawn = Callable[[Coroutine[Any, Any, None]], "asyncio.Task[None]"]
# rollout id -> (trace id, parent span id): the trace a rollout begun now belongs to
TraceFields = Callable[[str], tuple[str, str | None]]


@dataclass
class Target:
    name: str
    policy: Policy
    router: Router
    platform: Platform
    labels: Mapping[str, str] = field(default_factory=dict)
    concerns: Concerns = lambda labels: False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    require_digest: bool = False  # a start must name ``…@sha256:<64 hex>`` (SPEC §8)
    verify: Verifier | None = None  # the target's ``verify:`` commands, run before stage 1
    routes: bool = True  # False: the router is observe-only (``noop``); rollouts record it
    deploys: bool = True  # False: the platform is observe-only (``none``)
    kube_context: str | None = None  # its cluster's kubeconfig context (None: the default)


ALERT_RETENTION = 24 * 3600.0  # journalled alerts older than this are forgotten unless firing
COMPACT_EVERY = 3600.0  # how often the alert journal and the audit log are compacted
# The audit log keeps 30 days (a month of "who did what" for a post-mortem) and at most
# 100 000 rows (tens of MB): refused requests from a flood of clients must not grow it forever.
AUDIT_RETENTION = 30 * 24 * 3600.0
AUDIT_KEEP = 100_000
RECEIVE_CHUNK = 1000  # alerts of one webhook request taken in per step; the loop runs between
REQUEST_WAIT = 10.0  # longest a request waits for a worker (cleanup, a superseded rollout)


class GroupCommit:
    """Record alerts durably with one transaction for every request that arrived meanwhile.

    Each webhook request must not be answered before its alerts are on disk, and a durable
    SQLite commit costs a thread hop and an fsync. Requests queue their alerts and wait; one
    committer task (``run``, owned by the controller's task group) takes everything queued so
    far, commits it in one transaction and answers all of those requests. Under load the batch
    grows and the commit's cost is shared, so throughput scales without giving up durability.
    While it runs, the committer has a writer thread of its own: handing a batch over is a
    ``SimpleQueue.put``, cheaper than a round through the loop's default executor. Before the
    committer runs (tests that never ``load``), a request commits on its own, in a thread.
    """

    def __init__(self, store: StateStore, clock: Clock, events: RuntimeEvents) -> None:
        self._store, self._clock, self._events = store, clock, events
        self._compacted = float("-inf")
        self._pending: list[tuple[list[Alert], asyncio.Future[None]]] = []
        self._arrived = asyncio.Event()
        self._running = False
        self._writes: queue.SimpleQueue[tuple[PreparedAlerts, asyncio.Future[None]] | None]
        self._writes = queue.SimpleQueue()

    async def record(self, alerts: list[Alert]) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((alerts, future))
        if self._running:
            self._arrived.set()
        else:
            await self._commit(self._write_in_a_thread)
        await future

    async def run(self) -> None:
        """Eternal: commit whatever is queued, as one transaction per round."""
        loop = asyncio.get_running_loop()
        writer = threading.Thread(
            target=self._writer, args=(loop,), name="canaryd-alerts", daemon=True
        )
        writer.start()
        self._running = True
        try:
            while True:
                if self._clock.time() - self._compacted >= COMPACT_EVERY:
                    await self._compact()  # here, so the journal has one writer at a time
                await self._arrived.wait()
                await asyncio.sleep(0)  # one loop tick: requests already readable join in
                self._arrived.clear()
                await self._commit(self._write_in_the_writer)
        finally:
            self._running = False
            self._writes.put(None)
            await asyncio.to_thread(writer.join)
            await self._commit(self._write_in_a_thread)  # answer whoever is still waiting

    async def _compact(self) -> None:
        now = self._clock.time()
        self._compacted = now
        try:
            await asyncio.to_thread(self._store.compact_alerts, now - ALERT_RETENTION)
        except Exception as exc:  # the journal only grows meanwhile; alerts keep flowing
            self._events.housekeeping_failed("compact the alert journal", exc)
        try:
            await asyncio.to_thread(self._store.compact_audit, now - AUDIT_RETENTION, AUDIT_KEEP)
        except Exception as exc:
            self._events.housekeeping_failed("compact the audit log", exc)

    async def _commit(self, write: Callable[[PreparedAlerts], Awaitable[None]]) -> None:
        batch, self._pending = self._pending, []
        if not batch:
            return
        merged = [a for group, _ in batch for a in group]
        try:
            await write(self._store.prepare_alerts(merged, self._clock.time()))
        except Exception as exc:
            for _, waiting in batch:
                if not waiting.done():
                    waiting.set_exception(exc)
            return
        for _, waiting in batch:
            if not waiting.done():
                waiting.set_result(None)

    async def _write_in_a_thread(self, prepared: PreparedAlerts) -> None:
        await asyncio.to_thread(self._store.write_alerts, prepared)

    async def _write_in_the_writer(self, prepared: PreparedAlerts) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._writes.put((prepared, done))
        await done

    def _writer(self, loop: asyncio.AbstractEventLoop) -> None:
        """The writer thread: one durable write at a time, each answered on the loop."""
        while (job := self._writes.get()) is not None:
            prepared, done = job
            try:
                self._store.write_alerts(prepared)
            except Exception as exc:
                loop.call_soon_threadsafe(_settle, done, exc)
            else:
                loop.call_soon_threadsafe(_settle, done, None)


def _settle(future: asyncio.Future[None], error: Exception | None) -> None:
    if future.done():  # the awaiting task was cancelled meanwhile
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


class Controller:
    def __init__(
        self,
        targets: list[Target],
        *,
        store: StateStore,
        measure: MeasureTarget,
        clock: Clock,
        events: RuntimeEvents,
        load_policy: Callable[[str], Policy],
        timing: Timing | None = None,
        alert_expiry: float = 12 * 3600,
        request_wait: float = REQUEST_WAIT,
        trace: TraceFields | None = None,
        fence: Callable[[str], None] | None = None,
    ) -> None:
        self.targets = {t.name: t for t in targets}
        self.inbox = Inbox({t.name: t.concerns for t in targets}, expire_after=alert_expiry)
        self._fence = fence  # runtime.leadership.Leadership.check with several replicas
        self._request_wait = request_wait
        self._store, self._measure, self._clock = store, measure, clock
        self._events, self._load_policy, self._timing = events, load_policy, timing or Timing()
        self._workers: dict[str, Worker] = {}
        self._recorder = GroupCommit(store, clock, events)
        self._spawn: Spawn | None = None
        self.ready = False
        self._trace = trace  # None: rollouts are not traced (no ``tracing:``)

    # ---------------------------------------------------------------- lifecycle

    async def load(self, spawn: Spawn) -> None:
        """Resume every stored rollout that still owes work, and run one pass of each."""
        self._spawn = spawn
        spawn(self._recorder.run())
        now = self._clock.time()
        self.inbox.restore(
            await asyncio.to_thread(self._store.alert_book, now, self.inbox.expire_after)
        )
        stored = await asyncio.to_thread(self._store.load_active)
        newest = {r.target: r for r in sorted(stored, key=lambda r: r.started_at)}
        for rollout in sorted(stored, key=lambda r: r.started_at):
            if rollout.target not in self.targets:
                self._events.orphan(rollout)
                continue
            if self._trace is not None and rollout.trace_id is None:  # begun untraced
                rollout = self._traced(rollout)
            worker = self._worker_for(rollout)
            successor = newest[rollout.target]
            if successor is not rollout:
                worker.hand_over(successor.id)  # an older rollout's canary slot is taken
            try:
                await worker.step()  # one reconcile pass before we call ourselves ready
            except Exception as exc:  # retried by the worker; never a reason not to serve
                self._events.failed_pass(rollout, exc)
            self._run(worker)
        self.ready = True

    def _worker_for(self, rollout: Rollout) -> Worker:
        target = self.targets[rollout.target]
        labels = target.labels

        async def measure(state: Rollout) -> tuple[tuple[Measurement, ...], float | None]:
            return await self._measure(labels, state)

        worker = Worker(
            rollout,
            router=target.router,
            platform=target.platform,
            store=self._store,
            measure=measure,
            clock=self._clock,
            events=self._events,
            timing=self._timing,
            verify=target.verify,
            fence=self._fence,
        )
        self._workers[rollout.target] = worker
        firing = [a for a in self.inbox.firing_for(rollout.target, self._clock.time())]
        if firing:
            worker.deliver(firing)  # re-delivery is idempotent (handled_alerts)
        return worker

    def _run(self, worker: Worker) -> None:
        assert self._spawn is not None, "controller.load() first"
        self._spawn(self._guard(worker))

    async def _guard(self, worker: Worker) -> None:
        try:
            await worker.run()
        finally:
            if self._workers.get(worker.state.target) is worker:
                del self._workers[worker.state.target]
            if worker.done:  # not when a shutdown stopped it
                self._events.finished(worker.state)

    def reset(self) -> None:
        """Forget the in-memory side after this replica stopped leading (its term's tasks, the
        workers and the alert committer, are already cancelled): a next ``load`` starts from
        the store, as after a restart."""
        self._workers = {}
        self.ready = False
        self.inbox = Inbox(
            {t.name: t.concerns for t in self.targets.values()},
            expire_after=self.inbox.expire_after,
        )
        self._recorder = GroupCommit(self._store, self._clock, self._events)

    # ---------------------------------------------------------------- reads

    def target(self, name: str) -> Target:
        if name not in self.targets:
            raise UnknownTarget(f"no target named {name!r}")
        return self.targets[name]

    def current(self, name: str) -> Rollout | None:
        """The target's active rollout, else its latest one."""
        self.target(name)
        worker = self._workers.get(name)
        if worker is not None:
            return worker.state
        return self._store.latest_for_target(name)

    # ---------------------------------------------------------------- writes

    async def start(
        self,
        name: str,
        image: str,
        *,
        traffic: int | None = None,
        policy: str | None = None,
        by: str = "operator",
        supersede: bool = False,
    ) -> Rollout:
        """Admit and begin a rollout; an active one is replaced only when ``supersede`` asks
        (else ``RolloutRefused`` naming it). The target's lock is held for at most
        ``request_wait`` while a superseded rollout rolls back (then 409: start again once it
        has)."""
        target = self.target(name)
        if target.require_digest and (refusal := supply.digest_refusal(name, image)):
            raise RolloutRefused(refusal)  # before anything is looked up or created
        chosen = self._load_policy(policy) if policy else target.policy
        if traffic is not None:
            stages.plan_stages(chosen, traffic)  # ValueError for a bad percentage
        async with target.lock:
            active = self._workers.get(name)
            now = self._clock.time()
            firing = [a.labels for a in self.inbox.firing_for(name, now)]
            verdict = admit(active.state if active else None, image, chosen, firing, supersede)
            if verdict.verdict is AdmissionVerdict.REFUSE:
                raise RolloutRefused(verdict.reason, verdict.active)
            rollout_id = f"{name}-{int(now)}-{secrets.token_hex(3)}"
            if why := await _refusal(target.platform, chosen, traffic, image):
                raise RolloutRefused(why)  # the platform cannot run it (argo-rollouts' steps)
            pinned = await _pin(target.platform, image)  # before the old rollout is touched
            if active is not None:  # superseded, or rolled back and awaiting its scale-down
                await self._supersede(active, rollout_id, image, by)
            rollout, first = stages.start(
                rollout_id,
                name,
                image,
                chosen,
                self._clock.time(),
                traffic,
                pinned=pinned,
                verify=target.verify is not None,
                routes=target.routes,
                deploys=target.deploys,
                pin_on_ready=_pins_late(target.platform, image),
            )
            if self._trace is not None:
                rollout = self._traced(rollout)
            # Durable and running even if the request is cancelled meanwhile (client gone).
            await asyncio.shield(self._begin(rollout, first))
            return rollout

    def _traced(self, rollout: Rollout) -> Rollout:
        assert self._trace is not None
        trace_id, parent = self._trace(rollout.id)
        return replace(rollout, trace_id=trace_id, trace_parent=parent)

    async def _begin(self, rollout: Rollout, first: Action) -> None:
        await asyncio.to_thread(self._store.commit, rollout, (first,), rollout.started_at)
        self._events.decided(rollout, (first,), (), rollout.started_at)
        self._run(self._worker_for(rollout))

    async def _supersede(self, old: Worker, successor: str, image: str, by: str) -> None:
        """Roll ``old`` back, wait (bounded) until it has, then leave its canary slot to
        ``successor``. The slot is handed over only once the start will go ahead: a start that
        gives up here leaves the old rollout to scale its canary down as usual."""
        wait = self._request_wait
        try:
            async with asyncio.timeout(wait):
                if stages.check_command(old.state, Command(CommandKind.ROLLBACK)) is None:
                    reason = f"superseded by {image}"
                    why = Cause.SUPERSEDED
                    await old.command(Command(CommandKind.ROLLBACK, by, reason, cause=why))
                await old.wait_until(lambda s: s.phase is Phase.ROLLED_BACK)
                old.hand_over(successor)
                await old.finished.wait()
        except TimeoutError as exc:
            raise RolloutRefused(
                f"rollout {old.state.id} is rolling back to make room for {image} but has not "
                f"finished within {wait:g}s; start again once it has (GET the target to see)"
            ) from exc

    async def command(self, name: str, command: Command) -> Rollout:
        self.target(name)
        worker = self._workers.get(name)
        if worker is None:
            latest = await asyncio.to_thread(self._store.latest_for_target, name)
            worker = self._workers.get(name)  # another request may have started one meanwhile
        if worker is None:
            if latest is None:
                raise CommandRejected(f"target {name} has no rollout")
            refusal = stages.check_command(latest, command)
            if refusal is not None or latest.ended:
                raise CommandRejected(refusal or f"rollout {latest.id} already ended")
            worker = self._worker_for(latest)
            self._run(worker)
        return await worker.command(command)

    async def cleanup(self, name: str, by: str) -> Rollout | None:
        """Roll back what is active, remove the canary now, and give the router back.

        Waits at most ``request_wait`` for the worker to finish (a router that never reaches
        0% would hold the request forever); then ``StillRunning``: the cleanup goes on, the
        caller polls the target (HTTP 202 + Location)."""
        target = self.target(name)
        worker = self._workers.get(name)
        if worker is not None:
            latest: Rollout | None = worker.state
        else:
            latest = await asyncio.to_thread(self._store.latest_for_target, name)
        result = latest
        cmd = Command(CommandKind.CLEANUP, by=by)
        if latest is not None and stages.check_command(latest, cmd) is None:
            result = await self.command(name, cmd)
            worker = self._workers.get(name)
            if worker is not None:
                try:
                    async with asyncio.timeout(self._request_wait):
                        await worker.finished.wait()
                except TimeoutError as exc:
                    raise StillRunning(
                        f"cleanup of rollout {worker.state.id} is under way but has not "
                        f"finished within {self._request_wait:g}s (phase "
                        f"{worker.state.phase}, weight {worker.state.weight}%)",
                        name,
                    ) from exc
                result = worker.state
        if self._fence is not None:
            self._fence("clean up")
        await target.platform.remove_canary()
        await target.router.finalize()
        return result

    async def receive_alerts(self, alerts: list[Alert]) -> int:
        """Record alerts durably, then deliver the new ones to the workers they concern.

        Returns how many were new. When this returns the alerts are on disk, so the webhook
        may answer 2xx: a crash afterwards re-delivers them from the store on restart. Alerts
        that concern no configured target are neither kept nor recorded. A large request is
        taken in ``RECEIVE_CHUNK`` alerts at a time, the loop free in between.
        """
        fresh = 0
        for i in range(0, len(alerts), RECEIVE_CHUNK):
            fresh += await self._receive_chunk(alerts[i : i + RECEIVE_CHUNK])
        return fresh

    async def _receive_chunk(self, alerts: list[Alert]) -> int:
        inbox = self.inbox
        kept = [a for a in alerts if inbox.concerned(a)]
        record = inbox.to_record(kept, self._clock.time())
        if record:  # repeats recorded recently are on disk already
            await self._recorder.record(record)
        else:
            await asyncio.sleep(0)  # a chunk of repeats still lets the loop run
        fresh = inbox.receive(kept, self._clock.time())
        by_target: dict[str, list[Alert]] = {}
        for alert in fresh:
            for name in inbox.targets_of(alert):
                by_target.setdefault(name, []).append(alert)
        for name, concerning in by_target.items():
            worker = self._workers.get(name)
            if worker is not None and worker.state.phase is not Phase.ROLLED_BACK:
                worker.deliver(concerning)
        return len(fresh)

    def workers(self) -> dict[str, Worker]:
        return dict(self._workers)


async def _pin(platform: Platform, image: str) -> str | None:
    """The reference naming exactly the bytes ``image`` names now, resolved once, at start
    (SPEC §8); None when the platform cannot tell. A platform that cannot find the image
    (``PlatformUnavailable``: not on the host) refuses the start with its reason (503): a
    rollout of an image that cannot be pinned could not promote what it judged."""
    if supply.is_pinned(image) or not isinstance(platform, PinsImages):
        return None
    return await platform.pin(image)


async def _refusal(
    platform: Platform, policy: Policy, traffic: int | None, image: str
) -> str | None:
    """Why the platform cannot run these stages (``ports.ChecksStart``), else None."""
    if not isinstance(platform, ChecksStart):
        return None
    weights = [stage.weight for stage in stages.plan_stages(policy, traffic).stages]
    return await platform.refusal(weights, image)


def _pins_late(platform: Platform, image: str) -> bool:
    """Whether ``image`` is pinned only once the canary runs (``ports.PinsRunningCanary``)."""
    return not supply.is_pinned(image) and isinstance(platform, PinsRunningCanary)
