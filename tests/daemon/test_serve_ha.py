"""Two ``canaryd serve`` replicas on one state (``state: {backend: kubernetes}``), the leader
SIGKILLed again and again mid-stage: the other takes over by the Lease and the rollout ends as
an uninterrupted one does (SPEC §7: HA by Lease, only the leader acts).

Both replicas reach the validating Kubernetes emulator through a kubeconfig (``KUBECONFIG``);
the state is in its ConfigMaps (``KubeStore``), the target routes through the ``gateway-api``
router on an HTTPRoute of the same emulator, and the replicas elect their leader on the Lease
``canaryd/canaryd`` with a short lease (3 s lease, 2 s renew deadline, 0.25 s retry). The
policy's stages have no checks (``test_serve_crash``'s quick policy, 4 s stages): they pass on
credited time alone, so no Prometheus is needed.

The loop: find the leader (the Lease's holder, ``<host>_<pid>``), wait a seeded random moment
while its stage runs, SIGKILL it and start it again at once (two replicas run again, the
restarted one a follower), then measure from the kill to the Lease changing hands and to the
new leader's first action (its first write of the target's state). At least ``MIN_KILLS``
times. Meanwhile a thread posts Alertmanager webhooks to either replica at random; a follower
forwards them to the leader; every one answered 200 must be in the alert journal at the end.

At the end: the rollout Succeeded, each stage started exactly once, the decisions are an
uninterrupted rollout's, the HTTPRoute's canary weight went 0 → 10 → 25 → 50 → 100 → 0 and
never back. The test prints its duration, the kills and the takeover times (min/max).
"""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_serve_crash import MIN_KILLS, TARGET, TERMINAL, WEIGHTS, describe, once_each
from test_serve_kube_state import ROUTE_NS, STATE_NS, ClusterState, Webhooks, emulated

from canaryd.adapters.store.kubernetes import object_name
from support import kube
from support.servekit import Serve, TargetSpec, call, wait_until, write_config

NS = STATE_NS  # the state's ConfigMaps and the Lease
SEED = 20261203
IMAGE = "registry.local/matriz:2.0"
LEASE_PATH = f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases/canaryd"
OVERALL_TIMEOUT = 150.0

POLICY = """\
name: ha-quick
interval: 250ms
error_backoff: 250ms
scale_down_delay: 500ms
limits: {progress_deadline: 3m}
checks:
  unused: {query: vector(1), threshold: 0}
stages:
  - {weight: 10, duration: 4s}
  - {weight: 25, duration: 4s}
  - {weight: 50, duration: 4s}
  - {weight: 100, duration: 4s}
"""
STATE = (
    f"state: {{backend: kubernetes, namespace: {NS}, lease: canaryd, lease_duration: 3s, "
    "renew_deadline: 2s, retry_period: 250ms}"
)


class Cluster(ClusterState):
    """``ClusterState`` plus who holds the Lease and when the replicas wrote."""

    def holder(self) -> str:
        lease = self.t.call(lambda: self.t.c.get(kube.LEASES, NS, "canaryd"))
        return str(((lease or {}).get("spec") or {}).get("holderIdentity") or "")

    def writes_since(self, since: float) -> list[tuple[float, str, str]]:
        return [w for w in self.t.call(lambda: list(self.t.c.emulator.write_times)) if w[0] > since]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[kube.Threaded]:
    with emulated(tmp_path, None) as t:  # replicas named <host>_<pid>: a new one each start
        yield t


def replica(directory: Path) -> Serve:
    directory.mkdir()
    (directory / "policy.yaml").write_text(POLICY)
    config = write_config(directory, [TargetSpec(TARGET, "policy.yaml", {"job": TARGET})])
    text = config.read_text().replace("state: {backend: sqlite, path: state.db}", STATE)
    text = text.replace(
        "router: {kind: noop}",
        f"router: {{kind: gateway-api, name: {TARGET}, namespace: {ROUTE_NS}, "
        f"stable_service: {TARGET}-stable, canary_service: {TARGET}-canary}}",
    )
    config.write_text(text)
    return Serve(config)


def leader_of(replicas: list[Serve], state: Cluster) -> Serve | None:
    holder = state.holder()
    for serve in replicas:
        if serve.running and holder == f"{socket.gethostname()}_{serve.pid}":
            return serve
    return None


def test_two_replicas_the_leader_killed_again_and_again_finish_the_rollout_once(
    tmp_path: Path, cluster: kube.Threaded, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("POD_NAME", raising=False)  # identities <host>_<pid>: two on one host
    began = time.monotonic()
    rng = random.Random(SEED)
    replicas = [replica(tmp_path / "a"), replica(tmp_path / "b")]
    state = Cluster(cluster)
    takeovers: list[tuple[float, float]] = []  # (kill -> lease taken, kill -> first action)
    kills = 0
    try:
        replicas[0].start()  # ready: it leads (nobody else there yet)
        replicas[1].spawn()
        replicas[1].wait_ready()  # a follower is ready once it sees the leader
        first = leader_of(replicas, state)
        assert first is replicas[0], (state.holder(), replicas[0].tail())
        for serve in replicas:  # both answer /readyz 200, one says it leads
            status, doc = call(serve.url, "GET", "/readyz", token=None)
            assert status == 200 and doc["leader"] is (serve is first), doc
        started = replicas[1].start_rollout(TARGET, IMAGE)  # to the follower: forwarded
        rollout_id = str(started["id"])
        with Webhooks(replicas, random.Random(SEED + 1), timeout=10) as hooks:
            while kills < MIN_KILLS:
                assert time.monotonic() - began < OVERALL_TIMEOUT, "the test ran too long"
                leader = wait_until(
                    lambda: leader_of(replicas, state), bool, 15, "a leader among the replicas"
                )
                assert leader is not None
                record = state.record() or {}
                assert record.get("phase") not in TERMINAL, (
                    f"the rollout ended after {kills} kills; kills land too late"
                )
                time.sleep(rng.uniform(0.2, 1.0))  # somewhere in the running stage
                record = state.record() or {}
                if record.get("phase") != "Progressing":
                    continue  # not mid-stage: wait for the next moment
                leader.kill()
                killed_at = time.monotonic()
                kills += 1
                leader.spawn()  # two replicas again; this one now follows
                took = wait_until(
                    lambda at=killed_at: takeover(state, at),  # type: ignore[misc]
                    lambda t: t is not None,
                    15,
                    f"a new leader acting after kill {kills}",
                )
                assert took is not None
                takeovers.append(took)
            final = wait_until(
                lambda: state.record() or {},
                lambda r: r.get("phase") in TERMINAL,
                60,
                "the rollout to finish",
            )
        for serve in replicas:
            code = serve.stop()
            assert code == 0, f"canaryd exited {code}:\n{serve.tail()}"
    finally:
        for serve in replicas:
            serve.stop()
    took_all = time.monotonic() - began

    decisions = state.decisions(rollout_id)
    assert final["phase"] == "Succeeded", describe(decisions)
    assert kills >= MIN_KILLS
    assert once_each(decisions, "stage-started") == [1, 2, 3, 4]
    steps = [d for d in decisions if d["action"] != "hold" and d["cause"] != "alert-ignored"]
    assert [d["action"] for d in steps] == [
        "start",
        *["set-weight", "stage-started"] * len(WEIGHTS),
        "promote", "set-weight", "remove-canary", "succeeded",
    ], describe(decisions)  # fmt: skip
    assert state.canary_weights() == [0, *WEIGHTS, 0], "each effect once, never back"
    lost = sorted(set(hooks.acked) - state.journalled())
    assert hooks.acked and not lost, f"acknowledged but not journalled: {lost}"
    assert len(hooks.acked_by) == 2, f"webhooks acknowledged by both replicas: {hooks.acked_by}"
    leases = [t[0] for t in takeovers]
    actions = [t[1] for t in takeovers]
    print(
        f"\nHA test: {took_all:.1f} s, {kills} leader kills; kill -> lease taken over "
        f"min {min(leases):.2f} s / max {max(leases):.2f} s; kill -> first action of the new "
        f"leader min {min(actions):.2f} s / max {max(actions):.2f} s; "
        f"{len(hooks.acked)} webhooks acknowledged ({dict(hooks.acked_by)} by replica), "
        f"not: {dict(hooks.refused)}, none lost"
    )


def takeover(state: Cluster, killed_at: float) -> tuple[float, float] | None:
    """(seconds from the kill to the Lease's next write, to the first write of the target's
    state) once both happened; the killed leader wrote nothing after its death, and the
    restarted one only follows, so both are the new leader's."""
    target = f"/api/v1/namespaces/{NS}/configmaps/{object_name(TARGET)}"
    lease = act = None
    for t, method, path in state.writes_since(killed_at):
        if lease is None and path == LEASE_PATH and method == "PUT":
            lease = t - killed_at
        if act is None and path == target and method == "PUT":
            act = t - killed_at
    if lease is None or act is None:
        return None
    return lease, act
