"""Leader election on a coordination.k8s.io/v1 Lease (``adapters.lease``) and the runtime's
leadership with fencing (``runtime.leadership``), against the validating Kubernetes emulator
(every Lease written is checked against the Kubernetes schema) through the real client.

Candidates' clocks are injected where a test is about expiry, so no test waits a lease out;
the fencing test runs on the real monotonic clock, as the emulator's ``write_times`` do, and
asserts the property that matters: no write of the old leader's after its lease expired.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import kmock
import pytest

from canaryd.adapters.kube import KubeClient
from canaryd.adapters.lease import API_URL_ANNOTATION, LeaseElector, LeaseTiming, identity
from canaryd.core.model import Rollout
from canaryd.ports import Leader, NotLeader
from canaryd.runtime.leadership import FencedStore, Leadership
from support import kube

NS, NAME = "canaryd", "canaryd"
LEASE_PATH = f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases"


@pytest.fixture
async def k8s() -> AsyncIterator[kube.Cluster]:
    async with kube.cluster() as c:
        yield c


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def elector(
    c: kube.Cluster,
    who: str,
    clock: Callable[[], float] = time.monotonic,
    timing: LeaseTiming | None = None,
    url: str | None = None,
) -> LeaseElector:
    return LeaseElector(
        KubeClient(api_client=c.api),
        NS,
        NAME,
        identity=who,
        timing=timing,
        api_url=url or f"http://{who}.example:9870",
        clock=clock,
    )


def lease(c: kube.Cluster) -> dict[str, Any]:
    found = c.get(kube.LEASES, NS, NAME)
    assert found is not None, "no Lease stored"
    return found


async def test_the_first_candidate_creates_the_lease_and_leads(k8s: kube.Cluster) -> None:
    a = elector(k8s, "a_1")
    assert await a.attempt() is True
    stored = lease(k8s)
    spec = stored["spec"]
    assert spec["holderIdentity"] == "a_1"
    assert spec["leaseDurationSeconds"] == 15
    assert spec["leaseTransitions"] == 0
    assert spec["acquireTime"] == spec["renewTime"]
    assert spec["renewTime"].endswith("Z") and len(spec["renewTime"].split(".")[1]) == 7
    assert stored["metadata"]["annotations"][API_URL_ANNOTATION] == "http://a_1.example:9870"
    assert a.leading()
    assert a.leader() == Leader("a_1", "http://a_1.example:9870")
    assert k8s.writes == [("POST", LEASE_PATH)]


async def test_the_leader_renews_by_replace_keeping_its_acquire_time(k8s: kube.Cluster) -> None:
    a = elector(k8s, "a_1")
    await a.attempt()
    first = lease(k8s)
    await asyncio.sleep(0.01)  # a later renewTime
    assert await a.attempt() is True
    second = lease(k8s)
    assert second["spec"]["acquireTime"] == first["spec"]["acquireTime"]
    assert second["spec"]["renewTime"] > first["spec"]["renewTime"]
    assert second["spec"]["leaseTransitions"] == 0
    assert int(second["metadata"]["resourceVersion"]) > int(first["metadata"]["resourceVersion"])
    assert k8s.writes[-1] == ("PUT", f"{LEASE_PATH}/{NAME}")


async def test_no_takeover_before_the_lease_expires(k8s: kube.Cluster) -> None:
    clock = Clock()
    a, b = elector(k8s, "a_1"), elector(k8s, "b_2", clock)
    assert await a.attempt()
    before = lease(k8s)
    assert await b.attempt() is False  # b sees the record for the first time at 1000
    clock.now += 14.9
    assert await b.attempt() is False
    assert not b.leading()
    assert b.leader() == Leader("a_1", "http://a_1.example:9870")
    assert lease(k8s) == before, "a follower writes nothing"


async def test_takeover_after_expiry_counts_a_transition(k8s: kube.Cluster) -> None:
    clock = Clock()
    a, b = elector(k8s, "a_1"), elector(k8s, "b_2", clock)
    assert await a.attempt()
    acquired = lease(k8s)["spec"]["acquireTime"]
    assert await b.attempt() is False
    clock.now += 15.1  # nothing changed on the Lease for a whole lease duration
    assert await b.attempt() is True
    spec = lease(k8s)["spec"]
    assert spec["holderIdentity"] == "b_2"
    assert spec["leaseTransitions"] == 1
    assert spec["acquireTime"] != acquired
    assert b.leader() == Leader("b_2", "http://b_2.example:9870")
    # the old leader learns it lost: its next round fails, it does not write over b
    assert await a.attempt() is False
    assert lease(k8s)["spec"]["holderIdentity"] == "b_2"


async def test_a_renewal_seen_resets_the_wait(k8s: kube.Cluster) -> None:
    clock = Clock()
    a, b = elector(k8s, "a_1"), elector(k8s, "b_2", clock)
    await a.attempt()
    await b.attempt()
    clock.now += 10
    await a.attempt()  # a renews: a new record for b
    assert await b.attempt() is False
    clock.now += 10  # 20 s after b first saw a, 10 s after it saw a renew
    assert await b.attempt() is False


async def test_a_stale_resource_version_loses_the_race(k8s: kube.Cluster) -> None:
    clock = Clock()
    a, b = elector(k8s, "a_1"), elector(k8s, "b_2", clock)
    await a.attempt()
    await b.attempt()
    clock.now += 16  # expired for b

    def a_renews_first(request: kmock.Request) -> None:
        def renew(obj: dict[str, Any]) -> None:
            obj["spec"]["renewTime"] = "2030-01-01T00:00:00.000000Z"

        k8s.write(kube.LEASES, NS, NAME, renew)  # between b's read and b's replace

    k8s.before_next_write(a_renews_first)
    assert await b.attempt() is False  # 409 Conflict on b's replace
    assert not b.leading()
    assert lease(k8s)["spec"]["holderIdentity"] == "a_1"


async def test_release_hands_the_lease_over_at_once(k8s: kube.Cluster) -> None:
    a, b = elector(k8s, "a_1"), elector(k8s, "b_2")
    await a.attempt()
    assert await b.attempt() is False
    await a.release()
    assert not a.leading()
    spec = lease(k8s)["spec"]
    assert spec["holderIdentity"] == "" and spec["leaseDurationSeconds"] == 1
    assert await b.attempt() is True
    assert lease(k8s)["spec"]["leaseTransitions"] == 0  # released, not lost: no transition


# --------------------------------------------------------------------------- leadership


class Term:
    """What a term does in these tests: write a ConfigMap of its own every 20 ms, each write
    behind the fence, as the worker checks before every action."""

    def __init__(self, c: kube.Cluster, who: str) -> None:
        self.c, self.who = c, who
        self.leadership: Leadership | None = None
        self.elected = 0
        self.deposed = 0

    @property
    def name(self) -> str:
        return "acted-" + self.who.replace("_", "-")

    @property
    def path(self) -> str:
        return f"/api/v1/namespaces/{NS}/configmaps/{self.name}"

    async def run(self, spawn: Callable[..., asyncio.Task[None]]) -> None:
        self.elected += 1
        assert self.leadership is not None
        api = self.c.api
        from kubernetes_asyncio import client

        core = client.CoreV1Api(api)
        if self.c.get(kube.CONFIGMAPS, NS, self.name) is None:
            self.c.seed(kube.CONFIGMAPS, NS, {"metadata": {"name": self.name}})
        n = 0
        while True:
            try:
                self.leadership.check("act")
            except NotLeader:  # as the worker: this action fails, the term ends soon
                await asyncio.sleep(0.02)
                continue
            n += 1
            await core.patch_namespaced_config_map(self.name, NS, {"data": {"n": str(n)}})
            await asyncio.sleep(0.02)

    def down(self) -> None:
        self.deposed += 1


def leadership_for(
    c: kube.Cluster, who: str, timing: LeaseTiming, tg: asyncio.TaskGroup
) -> tuple[Leadership, Term]:
    term = Term(c, who)

    def spawn(coro: Coroutine[Any, Any, None], name: str | None = None) -> asyncio.Task[None]:
        return tg.create_task(coro, name=name)

    lead = Leadership(
        elector(c, who, timing=timing), spawn=spawn, elected=term.run, deposed=term.down
    )
    term.leadership = lead
    return lead, term


async def wait_for(holds: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not holds():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g}s")
        await asyncio.sleep(0.01)


async def test_a_leader_that_cannot_renew_stops_acting_before_its_lease_expires(
    k8s: kube.Cluster,
) -> None:
    timing = LeaseTiming(lease_duration=2, renew_deadline=1, retry_period=0.1)
    async with asyncio.TaskGroup() as tg:
        a, term_a = leadership_for(k8s, "a_1", timing, tg)
        b, term_b = leadership_for(k8s, "b_2", timing, tg)
        runs = [tg.create_task(a.run())]
        try:
            await wait_for(a.leading, 5, "a leads")
            runs.append(tg.create_task(b.run()))
            await wait_for(lambda: term_a.elected == 1, 5, "a's term runs")
            await asyncio.sleep(0.3)  # a renews and acts for a while
            assert not b.leading() and term_b.elected == 0

            failing = time.monotonic()

            def lease_writes_fail(request: kmock.Request) -> None:
                if "/leases" in request.url.path:
                    raise kmock.KubernetesError(
                        status=500, reason="InternalError", message="etcd is away", details={}
                    )

            k8s.before_every_write(lease_writes_fail)  # for a; b never gets the lease meanwhile
            await wait_for(lambda: term_a.deposed == 1, 5, "a steps down")
            stepped_down = time.monotonic()
            assert not a.leading()
            with pytest.raises(NotLeader):
                a.check("act")
        finally:
            for run in runs:
                run.cancel()
    renewed = [t for t, m, p in k8s.emulator.write_times if "/leases" in p and t < failing]
    expires = renewed[-1] + timing.lease_duration  # the earliest another may take over
    acted = [t for t, m, p in k8s.emulator.write_times if p == term_a.path]
    assert acted, "a acted while it led"
    assert max(acted) < expires, "a wrote after its lease could have been taken over"
    assert stepped_down < expires
    print(
        f"\nfencing: last renewal +{stepped_down - renewed[-1]:.2f}s stepped down, "
        f"last action {expires - max(acted):.2f}s before the lease expired"
    )


async def test_the_follower_takes_over_when_the_leader_stops(k8s: kube.Cluster) -> None:
    timing = LeaseTiming(lease_duration=2, renew_deadline=1, retry_period=0.1)
    async with asyncio.TaskGroup() as tg:
        a, term_a = leadership_for(k8s, "a_1", timing, tg)
        b, term_b = leadership_for(k8s, "b_2", timing, tg)
        run_a = tg.create_task(a.run())
        await wait_for(a.leading, 5, "a leads")
        run_b = tg.create_task(b.run())
        await wait_for(lambda: b.leader() is not None, 5, "b sees a leader")
        leader = b.leader()
        assert leader is not None and leader.identity == "a_1"
        assert not b.leading()
        with pytest.raises(NotLeader):
            b.spawn(asyncio.sleep(0))  # a follower starts nothing
        run_a.cancel()  # a stops (its tasks with it); the lease runs out
        await asyncio.gather(run_a, return_exceptions=True)
        assert term_a.deposed == 1
        await wait_for(b.leading, 5, "b takes over")
        await wait_for(lambda: term_b.elected == 1, 5, "b's term runs")
        spec = lease(k8s)["spec"]
        assert spec["holderIdentity"] == "b_2" and spec["leaseTransitions"] == 1
        run_b.cancel()


class Recording:
    def __init__(self) -> None:
        self.commits: list[str] = []

    def commit(self, rollout: Rollout, actions: Any, now: float, measurements: Any = ()) -> None:
        self.commits.append(rollout.id)

    def latest_for_target(self, target: str) -> None:
        return None


def test_the_fenced_store_refuses_writes_but_serves_reads() -> None:
    allowed = [True]

    def check(what: str) -> None:
        if not allowed[0]:
            raise NotLeader(f"cannot {what}")

    inner = Recording()
    store = FencedStore(inner, check)  # type: ignore[arg-type]
    assert store.latest_for_target("web") is None
    allowed[0] = False
    with pytest.raises(NotLeader, match="commit a decision"):
        store.commit(object(), (), 0.0)  # type: ignore[arg-type]
    assert inner.commits == []
    assert store.latest_for_target("web") is None


class Opened:
    def __init__(self, n: int) -> None:
        self.n = n
        self.closed = False

    def close(self) -> None:
        self.closed = True


def test_a_followers_refresh_never_replaces_a_newer_leaders_view() -> None:
    """A follower's refresh that began before a leader's refresh finished is dropped; the
    view swapped out stays open until the next swap (reads may still run on it)."""
    opened: list[Opened] = []
    slow = threading.Event()
    follower_reading = threading.Event()

    def reopen() -> Opened:
        store = Opened(len(opened))
        opened.append(store)
        if threading.current_thread().name == "follower":
            follower_reading.set()
            slow.wait(5)
        return store

    first = Opened(-1)
    store = FencedStore(first, lambda what: None, reopen)  # type: ignore[arg-type]
    results: list[bool] = []
    follower = threading.Thread(
        target=lambda: results.append(store.refresh(leading=False)), name="follower"
    )
    follower.start()
    assert follower_reading.wait(5)
    assert store.refresh(leading=True) is True  # the new leader's view: opened second
    leaders = store.store
    slow.set()
    follower.join(5)
    assert results == [False]
    assert store.store is leaders, "the leader's view stays"
    assert opened[0].closed, "the follower's late view is closed"
    assert not first.closed, "swapped out, still open for reads in flight"
    assert store.refresh(leading=False) is True  # a later follower refresh is fine
    assert first.closed and not leaders.closed


async def test_the_same_identity_restarted_takes_its_lease_back_at_once(
    k8s: kube.Cluster,
) -> None:
    """A pod's container restarted (same ``$POD_NAME``): its predecessor is dead, so the new
    process renews its own lease at once instead of waiting it out, keeping acquireTime."""
    clock = Clock()
    assert await elector(k8s, "web-0").attempt()
    acquired = lease(k8s)["spec"]["acquireTime"]
    again = elector(k8s, "web-0", clock)  # a new process: it never saw the Lease before
    assert await again.attempt() is True
    spec = lease(k8s)["spec"]
    assert spec["acquireTime"] == acquired and spec["leaseTransitions"] == 0


def test_the_identity_is_the_pods_name_else_host_and_pid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAME", "canaryd-7d9f-abcde")
    assert identity() == "canaryd-7d9f-abcde"
    monkeypatch.delenv("POD_NAME")
    assert identity() == f"{socket.gethostname()}_{os.getpid()}"
