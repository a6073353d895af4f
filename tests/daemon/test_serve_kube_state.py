"""``canaryd serve`` on ``state: {backend: kubernetes}`` killed with -9 mid-rollout and restarted
never repeats or loses a step, and never loses an acknowledged webhook (SPEC §7).

``test_serve_crash``'s kill loop (its ``Chaos`` and ``Witness`` invariants, reused here) with the
state in ConfigMaps of the validating Kubernetes emulator instead of a SQLite file: ``serve``
reaches the emulator through a kubeconfig (``KUBECONFIG``), its one target routes through the
``gateway-api`` router on an HTTPRoute of the same emulator, and fast-track's success-rate check
runs against a real Prometheus scraping the demo service under load.

The daemon is SIGKILLed at seeded random moments (at least ``MIN_KILLS``, some while it starts)
and respawned each time on the same config and cluster; every stored record read (from the
target's ConfigMap, as the emulator holds it) is checked against the previous one: same
rollout, the stage never goes back, a running stage keeps its ``stage_started_at``, credited
time never counts downtime. Meanwhile a thread posts Alertmanager webhooks; each one answered
200 must be in the alert journal (``canaryd-alerts``) at the end.

At the end the rollout has ended as an uninterrupted one does: the same decisions (each step
exactly once, holds aside) and the same effects on the HTTPRoute (the canary's weight went
0 → 10 → 25 → 50 → 100 → 0 and never back). The test prints its duration and kill count.
"""

from __future__ import annotations

import copy
import http.client
import json
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from test_serve_crash import (
    IMAGE,
    JOB,
    MIN_KILLS,
    TARGET,
    TERMINAL,
    WEIGHTS,
    Chaos,
    Read,
    Witness,
    checked_policy,
    describe,
    once_each,
)

from canaryd.adapters.store.kubernetes import ALERTS, object_name
from support import kube, procs
from support.apikit import reference, rfc3339
from support.routercases import user_route
from support.servekit import (
    WEBHOOK_TOKEN,
    Serve,
    TargetSpec,
    call,
    start_load,
    stop_process,
    wait_until,
    write_config,
)

STATE_NS = "canaryd"
ROUTE_NS = "shop"
SEED = 20261202


def route() -> dict[str, Any]:
    """The user's HTTPRoute for ``TARGET``: canaryd takes over its rule to ``TARGET-stable``."""
    doc = user_route()
    doc["metadata"]["name"] = TARGET
    doc["spec"]["rules"][1]["backendRefs"] = [{"name": f"{TARGET}-stable", "port": 8080}]
    return doc


def canary_weight(version: dict[str, Any]) -> int:
    """The canary's weight in one stored version of the HTTPRoute (0: not in the main rule)."""
    for rule in version["spec"]["rules"]:
        refs = rule.get("backendRefs") or []
        if any(r["name"] == f"{TARGET}-stable" for r in refs):
            return sum(int(r.get("weight", 1)) for r in refs if r["name"] == f"{TARGET}-canary")
    return 0


class ClusterState:
    """What the daemon stored, read from the emulator's objects (never through a store)."""

    def __init__(self, t: kube.Threaded) -> None:
        self.t = t

    def lines(self, name: str, key: str) -> list[dict[str, Any]]:
        obj = self.t.call(lambda: self.t.c.get(kube.CONFIGMAPS, STATE_NS, name))
        if obj is None:
            return []
        return [json.loads(line) for line in obj["data"].get(key, "").splitlines()]

    def record(self) -> dict[str, Any] | None:
        rows = self.lines(object_name(TARGET), "rollouts")
        return dict(rows[-1]["record"]) if rows else None

    def decisions(self, rollout_id: str) -> list[dict[str, Any]]:
        rows = self.lines(object_name(TARGET), "decisions")
        return [r for r in rows if r["rollout_id"] == rollout_id]

    def journalled(self) -> set[str]:
        return {a[0] for row in self.lines(ALERTS, "journal") for a in row["alerts"]}

    def canary_weights(self) -> list[int]:
        """The canary's weight in every version of the HTTPRoute, repeats collapsed."""
        key = (kube.HTTPROUTES, ROUTE_NS, TARGET)
        versions = self.t.call(lambda: list(self.t.c.emulator.objects[key].history))
        weights: list[int] = []
        for version in versions:
            w = canary_weight(version)
            if not weights or weights[-1] != w:
                weights.append(w)
        return weights


class KubeWitness(Witness):
    """``Witness`` reading the record from the target's ConfigMap."""

    def __init__(self, serve: Serve, state: ClusterState) -> None:
        super().__init__(serve, TARGET)
        self.state = state

    def read(self, what: str) -> dict[str, Any]:
        record = self.state.record()
        assert record is not None, f"{what}: no rollout stored"
        now = time.monotonic()
        if self.last is not None:
            ran = now - max(self.last.at, self.serve.spawned_at)
            self.check(self.last.record, record, ran, what)
        self.last = Read(record, now)
        self.reads += 1
        return record


class Webhooks:
    """Posts one Alertmanager notification (a new fingerprint each) every ``every`` seconds to
    one of ``replicas`` at random; remembers which were answered 200 (those the daemon
    acknowledged as durable), and by which replica."""

    def __init__(
        self, replicas: list[Serve], rng: random.Random, every: float = 0.1, timeout: float = 5
    ) -> None:
        self.replicas, self.rng, self.every, self.timeout = replicas, rng, every, timeout
        self.acked: list[str] = []
        self.acked_by: Counter[int] = Counter()  # replica index -> 200s
        self.refused: Counter[int] = Counter()  # by status (0: no answer)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        n = 0
        while not self._stop.wait(self.every):
            n += 1
            fingerprint = f"noise{n:05d}"
            doc = copy.deepcopy(reference("webhook-firing.json"))
            alert = doc["alerts"][0]
            alert.update(fingerprint=fingerprint, startsAt=rfc3339(time.time()))
            # about the target (else not journalled), matching no rule of its policy
            alert["labels"] = {"alertname": "Noise", "target": TARGET, "n": str(n)}
            doc.update(alerts=[alert], commonLabels={})
            index = self.rng.randrange(len(self.replicas))
            url = self.replicas[index].url
            try:
                status, _ = call(
                    url, "POST", "/api/v1/alerts", doc, token=WEBHOOK_TOKEN, timeout=self.timeout
                )
            except (OSError, http.client.HTTPException):
                status = 0  # killed mid-request, or not listening: not acknowledged
            if status == 200:
                self.acked.append(fingerprint)
                self.acked_by[index] += 1
            else:
                self.refused[status] += 1

    def __enter__(self) -> Webhooks:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(self.timeout + 5)


@contextmanager
def emulated(tmp_path: Path, pod_name: str | None) -> Iterator[kube.Threaded]:
    """The emulator in a thread with the user's HTTPRoute, reached through ``KUBECONFIG``;
    ``POD_NAME`` set to ``pod_name`` (the Lease identity of a replica in a pod) or unset."""
    saved = {key: os.environ.get(key) for key in ("KUBECONFIG", "POD_NAME")}
    with kube.threaded() as t:
        t.call(lambda: t.c.seed(kube.HTTPROUTES, ROUTE_NS, route()))
        os.environ["KUBECONFIG"] = str(t.kubeconfig(tmp_path / "kubeconfig"))
        os.environ.pop("POD_NAME", None)
        if pod_name is not None:
            os.environ["POD_NAME"] = pod_name
        try:
            yield t
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[kube.Threaded]:
    # One replica, as a pod whose container is killed and restarted: the same Lease
    # identity, so each restart renews its own lease at once (HA by Lease).
    with emulated(tmp_path, "canaryd-0") as t:
        yield t


def configure(tmp_path: Path, prometheus_url: str) -> Serve:
    (tmp_path / "policy.yaml").write_text(checked_policy())
    config = write_config(
        tmp_path, [TargetSpec(TARGET, "policy.yaml", {"job": JOB})], prometheus_url=prometheus_url
    )
    text = config.read_text()
    text = text.replace(
        "state: {backend: sqlite, path: state.db}",
        f"state: {{backend: kubernetes, namespace: {STATE_NS}}}",
    )
    text = text.replace(
        "router: {kind: noop}",
        f"router: {{kind: gateway-api, name: {TARGET}, namespace: {ROUTE_NS}, "
        f"stable_service: {TARGET}-stable, canary_service: {TARGET}-canary}}",
    )
    config.write_text(text)
    return Serve(config)


def test_serve_on_kubernetes_state_killed_at_random_resumes_and_loses_no_webhook(
    tmp_path: Path, cluster: kube.Threaded, prometheus: Any, demo_service: Any
) -> None:
    began = time.monotonic()
    stable = demo_service(version="v1", deployment="stable")
    canary = demo_service(version="v2", deployment="canary")
    loads = [
        start_load(f"{s.url}/", 20, 120, tmp_path / f"load-{s.name}.log") for s in (stable, canary)
    ]
    prom = prometheus({JOB: [f"127.0.0.1:{s.port}" for s in (stable, canary)]})
    serve = configure(tmp_path, prom.url)
    state = ClusterState(cluster)
    try:
        procs.wait_for_up(prom, JOB, 2)
        time.sleep(2)  # two scrapes of each inside the window: rate() has data
        serve.start()
        rollout_id = str(serve.start_rollout(TARGET, IMAGE)["id"])
        chaos = Chaos(serve, KubeWitness(serve, state), random.Random(SEED))
        with Webhooks([serve], random.Random(SEED + 1)) as hooks:
            chaos.run_until(lambda r: r["phase"] in TERMINAL, MIN_KILLS)
            final = wait_until(
                lambda: state.record() or {},
                lambda r: r.get("phase") in TERMINAL,
                60,
                "the rollout to finish",
            )
        code = serve.stop()
        assert code == 0, f"canaryd exited {code}:\n{serve.tail()}"
    finally:
        serve.stop()
        for load in loads:
            stop_process(load)
    took = time.monotonic() - began

    decisions = state.decisions(rollout_id)
    assert final["phase"] == "Succeeded", describe(decisions)
    assert chaos.kills >= MIN_KILLS, chaos
    assert once_each(decisions, "stage-started") == [1, 2, 3, 4]
    steps = [d for d in decisions if d["action"] != "hold" and d["cause"] != "alert-ignored"]
    assert [d["action"] for d in steps] == [
        "start",
        *["set-weight", "stage-started"] * len(WEIGHTS),
        "promote", "set-weight", "remove-canary", "succeeded",
    ], describe(decisions)  # fmt: skip
    assert state.canary_weights() == [0, *WEIGHTS, 0]  # each effect once, never back
    lost = sorted(set(hooks.acked) - state.journalled())
    assert hooks.acked and not lost, f"acknowledged but not journalled: {lost}"
    print(
        f"\nkube-state crash test: {took:.1f} s, {chaos.kills} kills "
        f"({chaos.early_kills} while starting, {chaos.resumed_mid_stage} resumed mid-stage), "
        f"{len(hooks.acked)} webhooks acknowledged, not: {dict(hooks.refused)}, none lost"
    )
