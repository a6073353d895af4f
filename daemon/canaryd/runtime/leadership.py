"""Leadership: with several replicas on one state, only the one holding the Lease acts.

``state: {backend: kubernetes}`` lets several ``canaryd serve`` replicas share one state; they
elect a leader through an ``Elector`` (``adapters.lease``: a coordination.k8s.io Lease, as
client-go's leaderelection). ``Leadership.run`` is the eternal service that drives it:

- every ``retry_period`` it asks the elector to acquire or renew. A follower that acquires
  starts a **term**: ``elected(spawn)`` runs in a task of its own (the controller loads the
  state and resumes every rollout, exactly as after a restart), and every task the term spawns
  (workers, the alert committer) belongs to the term.
- A leader whose renewals fail keeps acting only until ``elector.valid_until`` (its last
  successful renewal's start plus the renew deadline); then the term's tasks are cancelled and
  ``deposed()`` resets the controller, **before** the lease can expire for any other replica.
  Learning that another replica holds the Lease ends the term at once.
- **Fencing** does not trust the cancellation to be in time: ``check`` raises ``NotLeader``
  unless ``time.monotonic() < valid_until``, and it runs before every state write
  (``FencedStore``) and every router or platform action (the worker's and the controller's
  ``fence``). A pass cancelled too late, or a thread already committing, is refused at the
  write itself; the store's own resourceVersion preconditions are the last line.

Followers keep serving reads from the shared store; the API forwards their writes to the
leader (``api.forward``). With the SQLite backend there is no ``Leadership`` at all.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any

import structlog

from canaryd.core.model import Action, Alert, Measurement, Rollout
from canaryd.ports import (
    AuditRecord,
    DecisionRecord,
    Elector,
    Leader,
    MeasurementRecord,
    NotLeader,
    PreparedAlerts,
    StateStore,
)

log = structlog.get_logger("canaryd.leadership")

Spawn = Callable[..., "asyncio.Task[None]"]
Elected = Callable[[Spawn], Coroutine[Any, Any, None]]


class Leadership:
    """Drives an ``Elector`` and owns the current term's tasks (see the module doc)."""

    def __init__(
        self,
        elector: Elector,
        *,
        spawn: Spawn,
        elected: Elected,
        deposed: Callable[[], None],
        changed: Callable[[bool], None] = lambda leading: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.elector = elector
        self._spawn, self._elected, self._deposed = spawn, elected, deposed
        self._changed, self._clock = changed, clock
        self._term: set[asyncio.Task[None]] | None = None
        self.terms = 0  # terms begun by this process (tests, logs)

    # ---------------------------------------------------------------- what others ask

    @property
    def identity(self) -> str:
        return self.elector.identity

    def leading(self) -> bool:
        """This replica is in a term and its lease still holds (monotonic clock)."""
        return self._term is not None and self._clock() < self.elector.valid_until

    def leader(self) -> Leader | None:
        """Who leads, as last seen (this replica included); None: nobody, or not known yet."""
        return self.elector.leader()

    def check(self, what: str = "act") -> None:
        """Fencing: ``NotLeader`` unless this replica may still act."""
        if not self.leading():
            raise NotLeader(
                f"cannot {what}: this replica ({self.identity}) does not hold the lease "
                "(any more); the leader does it"
            )

    # ---------------------------------------------------------------- the service

    async def run(self) -> None:
        """Eternal: acquire or renew every ``retry_period``; begin and end terms."""
        try:
            while True:
                await self._round()
                await asyncio.sleep(self._pause())
        finally:
            if self._term is not None:
                await self._depose("canaryd is stopping")

    async def _round(self) -> None:
        elector = self.elector
        held = False
        try:
            if self._term is None:
                held = await elector.attempt()
            else:  # never past the deadline: a hung renewal must not delay the step-down
                async with asyncio.timeout(max(0.0, elector.valid_until - self._clock())):
                    held = await elector.attempt()
                if not held:  # another replica holds it: it may act already
                    await self._depose("another replica holds the lease")
                    return
        except Exception as exc:  # this round is lost; the deadline decides
            log.warning("lease_round_failed", identity=self.identity, error=str(exc) or repr(exc))
        if held and self._term is None:
            self._elect()
        elif self._term is not None and not self.leading():
            await self._depose("the lease could not be renewed before the renew deadline")

    def _pause(self) -> float:
        """Until the next round: the retry period, but a leader wakes by its deadline."""
        pause = self.elector.retry_period
        if self._term is not None:
            pause = min(pause, max(0.0, self.elector.valid_until - self._clock()))
        return pause

    # ---------------------------------------------------------------- terms

    def _elect(self) -> None:
        self._term = set()
        self.terms += 1
        log.info("leading", identity=self.identity, term=self.terms)
        self._changed(True)
        self.spawn(self._elected(self.spawn), "leadership-term")

    def spawn(self, coro: Coroutine[Any, Any, None], name: str | None = None) -> asyncio.Task[None]:
        """Run ``coro`` as a task of the current term (cancelled when it ends); outside a
        term ``NotLeader``: a follower starts no worker."""
        term = self._term
        if term is None:
            coro.close()
            raise NotLeader(f"this replica ({self.identity}) does not lead; it starts nothing")
        task = self._spawn(coro, name)
        term.add(task)
        task.add_done_callback(term.discard)
        return task

    async def _depose(self, why: str) -> None:
        term, self._term = self._term, None
        if term is None:
            return
        log.warning("stepped_down", identity=self.identity, reason=why)
        self._changed(False)
        for task in term:
            task.cancel()
        await asyncio.gather(*term, return_exceptions=True)
        self._deposed()


class FencedStore:
    """A ``StateStore`` whose every write first asks ``check`` (``Leadership.check``): a
    replica that lost the Lease writes nothing, even from a pass that was already running.

    ``reopen`` (a store that caches what it read, as the kubernetes one does) opens the store
    afresh: ``refresh`` swaps the fresh one in. A new leader refreshes before it loads (its
    cache may predate the last leader's writes); a follower refreshes now and then, so its
    reads follow the leader's writes. A follower's refresh that finishes after a leader's
    began is dropped: the leader's view is never replaced by an older one. The store swapped
    out stays open until the next swap, for reads still running on it.
    """

    def __init__(
        self,
        store: StateStore,
        check: Callable[[str], None],
        reopen: Callable[[], StateStore] | None = None,
    ) -> None:
        self.store = store
        self._check = check
        self._reopen = reopen
        self._previous: StateStore | None = None
        self._lock = threading.Lock()
        self._generation = 0  # leaders' refreshes so far

    def refresh(self, *, leading: bool) -> bool:
        """Open the store afresh and use it (blocking: run it in a thread); False when a
        follower's refresh was dropped, or there is nothing to reopen."""
        if self._reopen is None:
            return False
        with self._lock:
            began = self._generation
        fresh = self._reopen()
        with self._lock:
            if not leading and self._generation != began:
                stale: StateStore | None = fresh
            else:
                self._generation += leading
                stale, self._previous, self.store = self._previous, self.store, fresh
        if stale is not None:
            stale.close()
        return stale is not fresh

    # writes: fenced

    def commit(
        self,
        rollout: Rollout,
        actions: Sequence[Action],
        now: float,
        measurements: Sequence[Measurement] = (),
    ) -> None:
        self._check("commit a decision")
        self.store.commit(rollout, actions, now, measurements)

    def audit(
        self,
        now: float,
        who: str,
        what: str,
        target: str | None,
        outcome: str,
        detail: Mapping[str, object] | None = None,
    ) -> None:
        self._check("write the audit log")
        self.store.audit(now, who, what, target, outcome, detail)

    def record_alerts(self, alerts: Sequence[Alert], now: float) -> None:
        self._check("record alerts")
        self.store.record_alerts(alerts, now)

    def prepare_alerts(self, alerts: Sequence[Alert], now: float) -> PreparedAlerts:
        return self.store.prepare_alerts(alerts, now)

    def write_alerts(self, prepared: PreparedAlerts) -> None:
        self._check("record alerts")
        self.store.write_alerts(prepared)

    def compact_alerts(self, before: float) -> int:
        self._check("compact the alert journal")
        return self.store.compact_alerts(before)

    def compact_audit(self, before: float, keep: int) -> int:
        self._check("compact the audit log")
        return self.store.compact_audit(before, keep)

    # reads: anyone

    def load_active(self) -> list[Rollout]:
        return self.store.load_active()

    def get(self, rollout_id: str) -> Rollout | None:
        return self.store.get(rollout_id)

    def latest_for_target(self, target: str) -> Rollout | None:
        return self.store.latest_for_target(target)

    def audit_log(
        self,
        target: str | None = None,
        *,
        who: str | None = None,
        outcome: str | None = None,
        since: float | None = None,
        until: float | None = None,
        before: int | None = None,
        after: int | None = None,
        limit: int | None = None,
        newest_first: bool = False,
    ) -> list[AuditRecord]:
        return self.store.audit_log(
            target,
            who=who,
            outcome=outcome,
            since=since,
            until=until,
            before=before,
            after=after,
            limit=limit,
            newest_first=newest_first,
        )

    def firing_alerts(self, now: float, expire_after: float = float("inf")) -> list[Alert]:
        return self.store.firing_alerts(now, expire_after)

    def alert_book(self, now: float, expire_after: float) -> list[tuple[float, Alert]]:
        return self.store.alert_book(now, expire_after)

    def history(
        self, *, rollout_id: str | None = None, target: str | None = None
    ) -> list[DecisionRecord]:
        return self.store.history(rollout_id=rollout_id, target=target)

    def measurements(self, rollout_id: str) -> list[MeasurementRecord]:
        return self.store.measurements(rollout_id)

    def write_problem(self) -> str | None:
        """The store's, while this replica may write; a follower writes nothing, so it has
        no write problem (and must not probe one with a write)."""
        try:
            self._check("probe the store")
        except NotLeader:
            return None
        return self.store.write_problem()

    def close(self) -> None:
        with self._lock:
            previous, self._previous = self._previous, None
        if previous is not None:
            previous.close()
        self.store.close()
