"""The RBAC of leader election (``state: {backend: kubernetes}``, several replicas), measured:
every request ``adapters.lease`` makes in a session through each of its paths (create the
Lease, renew it, lose a race with 409, take an expired one over, release it) is recorded by the
emulator and mapped to its RBAC rule; the set is exactly ``LEASE_RULES``, which the
``canaryd-state`` Role of ``config/kubernetes/rbac.yaml`` grants besides the store's
ConfigMaps (``test_kubernetes_manifests.py``)."""

from __future__ import annotations

from test_guide_kubernetes import Rule, _needed, recording_cluster

from canaryd.adapters.kube import KubeClient
from canaryd.adapters.lease import LeaseElector
from support import kube

NS = "canaryd"
LEASE_RULES: set[Rule] = {("coordination.k8s.io", "leases", v) for v in ("get", "create", "update")}


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_leader_election_needs_exactly_get_create_update_on_leases() -> None:
    async with recording_cluster() as (c, emulator):
        clock = Clock()
        a, b = (
            LeaseElector(KubeClient(api_client=c.api), NS, "canaryd", identity=who, clock=clock)
            for who in ("a_1", "b_2")
        )
        assert await a.attempt()  # get (404), create
        assert await a.attempt()  # get, update
        assert not await b.attempt()  # get: held
        clock.now += 60
        c.before_next_write(  # a renews between b's read and b's write: 409
            lambda r: c.write(kube.LEASES, NS, "canaryd", lambda o: None)
        )
        assert not await b.attempt()
        clock.now += 60
        assert await b.attempt()  # get, update: taken over
        await b.release()  # get, update
        seen = list(emulator.seen)
    assert set(_needed(seen)) == LEASE_RULES, seen
