"""``canaryd serve`` driving Argo Rollouts end to end: the ``argo-rollouts`` router against the
validating Kubernetes emulator, with the fake Argo controller (tests/support/fakeargo.py)
moving each Rollout's status as Argo does, and a real Prometheus judging the stages.

One stack per module: the demo service as stable (v1) and canary (v2) under steady load,
Prometheus scraping both every second as job ``argo-e2e``, the emulator and the fake controller
on a loop of their own (a thread: the test's calls block), and ``canaryd serve`` reaching the
emulator through a kubeconfig (``KUBECONFIG``) with three targets, one Rollout each:

- ``web-good``: the canary stays healthy; canaryd promotes through every pause (one promote
  patch on the status subresource per pause) and Argo makes the canary the stable;
- ``web-bad``: the canary is made to fail half its requests; the ``success-rate`` PromQL check
  fails and canaryd aborts the Rollout (``status.abort: true``);
- ``web-alert``: an Alertmanager webhook (Alertmanager's payload, posted as Alertmanager posts
  it, with the bearer token) names the target; the Rollout is aborted within 2 s.
"""

from __future__ import annotations

import datetime
import json
import os
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from support import fakeargo, kube, procs
from support.procs import stop_process
from support.servekit import (
    TOKENS,
    WEBHOOK_TOKEN,
    Serve,
    TargetSpec,
    call,
    start_load,
    wait_until,
    write_config,
)

NS = "shop"
JOB = "argo-e2e"
GOOD, BAD, ALERTED = "web-good", "web-bad", "web-alert"
WEIGHTS = [10, 50, 100]
OLD, NEW = "registry.example/web:1.0", "registry.example/web:2.0"
LOAD_RPS = 20.0
CANARY = f'job="{JOB}",deployment="canary"'
ERROR_RATIO = (
    f'sum(rate(http_requests_total{{{CANARY},status=~"5.."}}[10s]))'
    f" / sum(rate(http_requests_total{{{CANARY}}}[10s]))"
)

POLICY = {
    "name": "argo-e2e",
    "interval": "1s",
    "window": "10s",
    "scale_down_delay": "1s",
    "limits": {
        "failure_limit": 0,
        "inconclusive_limit": 30,
        "consecutive_error_limit": 4,
        "progress_deadline": "30s",
        "on_inconclusive": "pause",
    },
    "checks": {
        "success-rate": {
            "query": 'sum by ({{group}}) (rate(http_requests_total{job=~"{{job}}",'
            'deployment=~"{{deployment}}",status!~"5.."}[{{window}}])) / sum by ({{group}}) '
            '(rate(http_requests_total{job=~"{{job}}",deployment=~"{{deployment}}"}[{{window}}]))',
            "op": ">=",
            "threshold": 0.95,
        }
    },
    "stages": [
        {"weight": w, "duration": "3s", "checks": ["success-rate"], "min_requests": 5}
        for w in WEIGHTS
    ],
    "alerts": [
        {"name": "critical-rollback", "match": {"severity": "critical"}, "action": "rollback"}
    ],
}


@dataclass
class Stack:
    serve: Serve
    cluster: fakeargo.InThread
    prometheus: procs.Proc
    canary: procs.Proc

    def set_canary_errors(self, rate: float) -> None:
        body = json.dumps({"error_rate": rate}).encode()
        request = urllib.request.Request(
            f"{self.canary.url}/admin/fault", body, {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 200

    def canary_error_ratio(self) -> float | None:
        result = procs.prometheus_query(self.prometheus, ERROR_RATIO)
        return float(result[0]["value"][1]) if result else None  # type: ignore[index]

    def wait_for_a_clean_window(self) -> None:
        wait_until(self.canary_error_ratio, lambda v: v == 0.0, 30, "a canary without 5xx")

    def rollout(self, name: str) -> dict[str, Any]:
        found = self.cluster.get(name)
        assert found is not None
        return found

    def finished(self, target: str, timeout: float) -> dict[str, Any]:
        return wait_until(
            lambda: self.serve.rollout(target) or {},
            lambda r: r.get("phase") in ("Succeeded", "RolledBack", "Failed"),
            timeout,
            f"{target}'s rollout to end",
        )

    def history(self, target: str) -> list[dict[str, Any]]:
        status, doc = self.serve.call("GET", f"/api/v1/targets/{target}/history")
        assert status == 200, doc
        decisions: list[dict[str, Any]] = doc["decisions"]
        return decisions

    def status_patches(self, name: str) -> list[tuple[str, str]]:
        assert self.cluster.cluster is not None
        path = f"/namespaces/{NS}/rollouts/{name}/status"
        return [w for w in self.cluster.cluster.writes if w[0] == "PATCH" and w[1].endswith(path)]


def argo_config(config: Path) -> None:
    """``write_config``'s targets moved onto their Rollouts (``platform: none``: Argo deploys)."""
    lines, out = config.read_text().splitlines(), []
    name = ""
    for line in lines:
        if line.startswith("  - name: "):
            name = line.split(": ", 1)[1]
        if line.strip() == "router: {kind: noop}":
            line = f"    router: {{kind: argo-rollouts, name: {name}, namespace: {NS}}}"
        out.append(line)
    config.write_text("\n".join(out) + "\n")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    directory = tmp_path_factory.mktemp("serve-argo")
    started: list[procs.Proc] = []
    loads = []
    serve: Serve | None = None
    saved = os.environ.get("KUBECONFIG")
    with fakeargo.InThread(NS).started() as cluster:
        assert cluster.cluster is not None
        for name in (GOOD, BAD, ALERTED):
            cluster.seed(fakeargo.rollout_manifest(name, OLD, WEIGHTS))
        try:
            stable = procs.start_demo_service(version="v1", deployment="stable", tmp=directory)
            started.append(stable)
            canary = procs.start_demo_service(version="v2", deployment="canary", tmp=directory)
            started.append(canary)
            loads = [
                start_load(f"{s.url}/", LOAD_RPS, 300, directory / f"load-{s.name}.log")
                for s in (stable, canary)
            ]
            scrape = [f"127.0.0.1:{s.port}" for s in (stable, canary)]
            prometheus = procs.start_prometheus(directory, {JOB: scrape})
            started.append(prometheus)
            (directory / "argo-e2e.yaml").write_text(yaml.safe_dump(POLICY, sort_keys=False))
            specs = [TargetSpec(n, "argo-e2e.yaml", {"job": JOB}) for n in (GOOD, BAD, ALERTED)]
            config = write_config(directory, specs, prometheus_url=prometheus.url)
            argo_config(config)
            access = kube.kubeconfig(directory / "kubeconfig", cluster.cluster.url)
            os.environ["KUBECONFIG"] = str(access)
            serve = Serve(config)
            serve.start()
            procs.wait_for_up(prometheus, JOB, 2)
            running = Stack(serve, cluster, prometheus, canary)
            for name in (GOOD, BAD, ALERTED):  # the fake made each first revision stable
                wait_until(
                    lambda n=name: running.rollout(n).get("status", {}).get("phase"),  # type: ignore[misc]
                    lambda phase: phase == "Healthy",
                    10,
                    f"{name} healthy",
                )
            running.wait_for_a_clean_window()
            yield running
        finally:
            if saved is None:
                os.environ.pop("KUBECONFIG", None)
            else:
                os.environ["KUBECONFIG"] = saved
            code = serve.stop() if serve is not None else 0
            for load in loads:
                stop_process(load)
            for proc in reversed(started):
                proc.stop()
    assert code == 0, f"canaryd exited {code}:\n{serve.tail() if serve else ''}"


def test_a_good_canary_is_promoted_through_every_pause(stack: Stack) -> None:
    stack.wait_for_a_clean_window()
    stack.serve.start_rollout(GOOD, NEW)
    rollout = stack.finished(GOOD, 90)
    assert rollout["phase"] == "Succeeded", (rollout, stack.serve.tail())
    status = stack.rollout(GOOD)["status"]
    assert status["phase"] == "Healthy" and status["stableRS"] == status["currentPodHash"]
    image = stack.rollout(GOOD)["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == NEW
    assert len(stack.status_patches(GOOD)) == len(WEIGHTS), "one promote per pause, no more"
    started = [d["weight"] for d in stack.history(GOOD) if d["cause"] == "stage-started"]
    assert started == WEIGHTS, "each stage judged once Argo stood at its pause"


def test_a_bad_canary_is_aborted_by_the_promql_check(stack: Stack) -> None:
    stack.wait_for_a_clean_window()
    stack.serve.start_rollout(BAD, NEW)
    wait_until(
        lambda: stack.serve.rollout(BAD) or {},
        lambda r: r.get("weight") == 10 and r.get("phase") == "Progressing",
        30,
        "the first stage",
    )
    stack.set_canary_errors(0.5)
    try:
        rollout = stack.finished(BAD, 60)
    finally:
        stack.set_canary_errors(0.0)
    assert rollout["phase"] == "RolledBack", rollout
    causes = [d["cause"] for d in stack.history(BAD)]
    assert "check-failed" in causes, causes
    status = stack.rollout(BAD)["status"]
    assert status["abort"] is True and status["phase"] == "Degraded"
    assert status["canary"]["weights"]["canary"]["weight"] == 0


def test_an_alertmanager_webhook_aborts_the_rollout_within_2s(stack: Stack) -> None:
    stack.wait_for_a_clean_window()
    stack.serve.start_rollout(ALERTED, NEW)
    wait_until(
        lambda: stack.rollout(ALERTED).get("status", {}).get("pauseConditions"),
        bool,
        30,
        "the Rollout at its first pause",
    )
    alert = {
        "status": "firing",
        "labels": {"alertname": "CanaryErrorsCritical", "severity": "critical", "target": ALERTED},
        "annotations": {"summary": "canary 5xx ratio over 5%"},
        "startsAt": datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z"),
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://127.0.0.1:9090/graph",
        "fingerprint": "a1b2c3d4e5f60718",
    }
    payload = {
        "version": "4",
        "groupKey": '{}:{alertname="CanaryErrorsCritical"}',
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": "canaryd",
        "groupLabels": {"alertname": "CanaryErrorsCritical"},
        "commonLabels": alert["labels"],
        "commonAnnotations": alert["annotations"],
        "externalURL": "http://127.0.0.1:9093",
        "alerts": [alert],
    }
    posted = time.monotonic()
    status, body = call(stack.serve.url, "POST", "/api/v1/alerts", payload, token=WEBHOOK_TOKEN)
    assert status == 200, body
    wait_until(
        lambda: stack.rollout(ALERTED).get("status", {}).get("abort"),
        bool,
        2.0,
        "the Rollout aborted within 2 s of the webhook",
    )
    took = time.monotonic() - posted
    print(f"webhook to status.abort on the Rollout: {took:.3f}s")
    assert took < 2.0
    rollout = stack.finished(ALERTED, 30)
    assert rollout["phase"] == "RolledBack"
    assert "alert" in [d["cause"] for d in stack.history(ALERTED)]


def test_an_abort_by_argos_own_analysis_is_a_rollback_decision(stack: Stack) -> None:
    """After the good rollout: a third image on the same Rollout, aborted by Argo itself."""
    stack.finished(GOOD, 90)
    stack.wait_for_a_clean_window()
    stack.serve.start_rollout(GOOD, "registry.example/web:3.0")
    wait_until(
        lambda: stack.rollout(GOOD).get("status", {}).get("pauseConditions"),
        bool,
        30,
        "the Rollout at its first pause",
    )
    argo = stack.cluster.argo
    assert argo is not None
    stack.cluster.call(lambda: argo.analysis_failed(GOOD, "argo-own-check"))
    rollout = stack.finished(GOOD, 30)
    assert rollout["phase"] == "RolledBack", rollout
    [decision] = [d for d in stack.history(GOOD) if d["action"] == "rollback"]
    assert decision["cause"] == "router-not-applied"
    assert 'Metric "argo-own-check" assessed Failed' in decision["reason"], decision


def test_a_new_image_after_an_aborted_rollout_is_not_taken_for_argos_abort(stack: Stack) -> None:
    """The Rollout the PromQL check aborted still says ``abort: true`` until Argo sees the new
    image: that abort is the previous rollout's, and the new one runs to its end."""
    stack.finished(BAD, 60)
    assert stack.rollout(BAD)["status"]["abort"] is True
    stack.wait_for_a_clean_window()
    status, body = stack.serve.call(
        "POST", f"/api/v1/targets/{BAD}/rollouts", {"image": NEW}, token=TOKENS["operator"]
    )
    assert status == 409 and "retry" in str(body), (status, body)  # the same image: refused
    stack.serve.start_rollout(BAD, "registry.example/web:3.0")
    rollout = stack.finished(BAD, 90)
    assert rollout["phase"] == "Succeeded", (rollout, stack.history(BAD))
