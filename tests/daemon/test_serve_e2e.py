"""``canaryd serve`` end to end with real processes on loopback (SPEC §3, §5.2, §9).

One stack per module, every piece a real process: the demo service as stable (v1) and as
canary (v2), both under steady load from ``python -m canaryd.demo.load``; Prometheus scraping
both every second as job ``lukhas-matriz-canary`` and evaluating an alerting rule on the
canary's 5xx ratio; Alertmanager receiving from Prometheus and posting to canaryd's webhook
with the bearer token named by ``auth.webhook.bearer_token_file``; and ``canaryd serve`` with
three targets on that job, all on the ``noop`` router and the ``none`` platform.

The policies are ``rules/matriz-fast-track.yaml``'s checks with stages of seconds, a 1 s
interval over a 10 s window and small ``min_requests``. ``matriz-promoted`` keeps the
runbook's thresholds and must be promoted, and so must ``matriz-twin``, rolled out at the
same moment with the same policy and labels: their checks share each batched query, and its
one answer belongs to both. ``matriz-alerted``'s thresholds tolerate a canary failing half its
requests, so when the canary is made bad mid-rollout only the alert can roll it back:
Prometheus fires ``CanaryErrorsCritical`` (``severity="critical"``, ``target="matriz-alerted"``),
Alertmanager posts it, and the policy's ``{severity: critical}`` rule rolls back at once. The
alert carries no ``job`` label (the rule's ``sum`` drops it), so it concerns only the target it
names.

The good canary runs first (pytest keeps file order): the bad one leaves 5xx in the window.
Either test waits for a clean window before starting anyway.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from support import procs
from support.servekit import (
    WEBHOOK_TOKEN,
    Serve,
    TargetSpec,
    metric_sum,
    start_load,
    stop_process,
    wait_until,
    write_config,
)

ROOT = Path(__file__).resolve().parents[2]
JOB = "lukhas-matriz-canary"
PROMOTED, TWIN, ALERTED = "matriz-promoted", "matriz-twin", "matriz-alerted"
ALERT = "CanaryErrorsCritical"
LOAD_RPS = 20.0
LOAD_SECONDS = 240.0  # an upper bound; the load is stopped with the module

_CANARY = f'job="{JOB}",deployment="canary"'
ERROR_RATIO = (
    f'sum(rate(http_requests_total{{{_CANARY},status=~"5.."}}[10s]))'
    f" / sum(rate(http_requests_total{{{_CANARY}}}[10s]))"
)


def alerting_rules(directory: Path) -> Path:
    rules = {
        "groups": [
            {
                "name": "canary",
                "interval": "1s",
                "rules": [
                    {
                        "alert": ALERT,
                        "expr": f"{ERROR_RATIO} > 0.05",
                        "for": "0s",
                        "labels": {"severity": "critical", "target": ALERTED},
                        "annotations": {"summary": "canary 5xx ratio over 5% for 10s"},
                    }
                ],
            }
        ]
    }
    path = directory / "canary-rules.yml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    return path


def fast_track(name: str, stage_seconds: list[float], tolerant: bool = False) -> str:
    """``matriz-fast-track``'s checks and alert rule; stages of seconds, 1 s evaluations."""
    policy = yaml.safe_load((ROOT / "rules" / "matriz-fast-track.yaml").read_text())
    policy.update(name=name, interval="1s", error_backoff="1s", window="10s", scale_down_delay="1s")
    policy["limits"]["progress_deadline"] = "30s"
    # no verified split: the noop router moves nothing and each side has its own steady load,
    # so the canary serves half the requests whatever the weight (test_serve_split tests it)
    policy.pop("split", None)
    for stage, seconds in zip(policy["stages"], stage_seconds, strict=True):
        stage.update(duration=f"{seconds:g}s", min_requests=10)
    if tolerant:  # half the requests may fail before a check notices
        thresholds = {"success-rate": 0.3, "error-rate": 0.7, "health-score": 0.5}
        for check, threshold in thresholds.items():
            policy["checks"][check]["threshold"] = threshold
        # and no comparison with stable, which would see a 50% error canary at once: this
        # target shows the alert path (the compare checks have tests of their own)
        compares = {n for n, c in policy["checks"].items() if "compare" in c}
        policy["checks"] = {n: c for n, c in policy["checks"].items() if n not in compares}
        for stage in policy["stages"]:
            stage["checks"] = [c for c in stage["checks"] if c not in compares]
        policy.pop("alpha", None)
    assert policy["alerts"] == [
        {"name": "critical-rollback", "match": {"severity": "critical"}, "action": "rollback"}
    ]
    return yaml.safe_dump(policy, sort_keys=False)


@dataclass
class Stack:
    serve: Serve
    prometheus: procs.Proc
    alertmanager: procs.Proc
    stable: procs.Proc
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

    def finished(self, target: str, timeout: float) -> dict[str, Any]:
        rollout = wait_until(
            lambda: self.serve.rollout(target) or {},
            lambda r: r.get("phase") in ("Succeeded", "RolledBack", "Failed"),
            timeout,
            f"{target}'s rollout to end",
        )
        return rollout

    def history(self, target: str) -> list[dict[str, Any]]:
        status, doc = self.serve.call("GET", f"/api/v1/targets/{target}/history")
        assert status == 200, doc
        decisions: list[dict[str, Any]] = doc["decisions"]
        return decisions


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    directory = tmp_path_factory.mktemp("serve-e2e")
    started: list[procs.Proc] = []
    loads = []
    serve: Serve | None = None
    try:
        stable = procs.start_demo_service(version="v1", deployment="stable", tmp=directory)
        started.append(stable)
        canary = procs.start_demo_service(version="v2", deployment="canary", tmp=directory)
        started.append(canary)
        loads = [
            start_load(f"{s.url}/", LOAD_RPS, LOAD_SECONDS, directory / f"load-{s.name}.log")
            for s in (stable, canary)
        ]
        port = procs.free_port()
        webhook = f"http://127.0.0.1:{port}/api/v1/alerts"
        alertmanager = procs.start_alertmanager(directory, webhook, WEBHOOK_TOKEN)
        started.append(alertmanager)
        scrape = [f"127.0.0.1:{s.port}" for s in (stable, canary)]
        prometheus = procs.start_prometheus(
            directory,
            {JOB: scrape},
            rule_files=[alerting_rules(directory)],
            alertmanager_url=alertmanager.url,
        )
        started.append(prometheus)
        (directory / "promoted.yaml").write_text(fast_track("e2e-promoted", [5, 5, 5, 2]))
        (directory / "alerted.yaml").write_text(fast_track("e2e-alerted", [8, 8, 8, 2], True))
        config = write_config(
            directory,
            [
                TargetSpec(PROMOTED, "promoted.yaml", {"job": JOB}),
                TargetSpec(TWIN, "promoted.yaml", {"job": JOB}),
                TargetSpec(ALERTED, "alerted.yaml", {"job": JOB}),
            ],
            port=port,
            prometheus_url=prometheus.url,
        )
        serve = Serve(config)
        serve.start()
        procs.wait_for_up(prometheus, JOB, 2)
        running = Stack(serve, prometheus, alertmanager, stable, canary)
        running.wait_for_a_clean_window()  # two scrapes of each: rate() has data
        yield running
    finally:
        code = serve.stop() if serve is not None else 0
        for load in loads:
            stop_process(load)
        for proc in reversed(started):
            proc.stop()
    assert code == 0, f"canaryd exited {code}:\n{serve.tail() if serve else ''}"


def test_a_good_canary_passes_every_stage_against_real_prometheus_and_is_promoted(
    stack: Stack,
) -> None:
    stack.wait_for_a_clean_window()
    started = stack.serve.start_rollout(PROMOTED, "registry.local/matriz:v2")
    twin = stack.serve.start_rollout(TWIN, "registry.local/matriz:v2")
    assert started["phase"] == "Pending" and started["policy"] == "e2e-promoted"

    finals = {name: stack.finished(name, timeout=60) for name in (PROMOTED, TWIN)}

    # The twin has the same job: its checks ride in the same batched queries, and the one
    # series answering them belongs to both targets.
    for name, rollout in ((PROMOTED, started), (TWIN, twin)):
        final = finals[name]
        decisions = [d for d in stack.history(name) if d["rollout_id"] == rollout["id"]]
        assert final["phase"] == "Succeeded", (name, final, decisions)
        assert final["weight"] == 0 and final["rollback_reason"] is None
        set_weights = [d["weight"] for d in decisions if d["action"] == "set-weight"]
        assert set_weights == [10, 25, 50, 100, 0], decisions  # 0: stable runs v2 now
        assert [d["stage"] for d in decisions if d["action"] == "stage-started"] == [1, 2, 3, 4]
        assert decisions[-1]["action"] == "succeeded"
        assert not any(d["action"] in ("rollback", "pause") for d in decisions), decisions


def test_a_canary_gone_bad_is_rolled_back_by_the_alert_through_alertmanager(
    stack: Stack,
) -> None:
    stack.wait_for_a_clean_window()
    alerts_before = metric_sum(stack.serve.metrics(), "canaryd_alerts_received_total")
    started = stack.serve.start_rollout(ALERTED, "registry.local/matriz:v3")
    wait_until(
        lambda: stack.serve.rollout(ALERTED) or {},
        lambda r: r.get("stage_started_at") is not None,
        15,
        "stage 1's timer to start",
    )
    try:
        stack.set_canary_errors(0.5)
        fault_at = time.monotonic()
        final = stack.finished(ALERTED, timeout=30)
        took = time.monotonic() - fault_at
    finally:
        stack.set_canary_errors(0.0)

    decisions = [d for d in stack.history(ALERTED) if d["rollout_id"] == started["id"]]
    assert final["phase"] == "RolledBack", (final, decisions)
    assert final["rollback_reason"] == f"alert {ALERT} firing", decisions
    assert final["weight"] == 0 and took < 25
    rollbacks = [d for d in decisions if d["action"] == "rollback"]
    assert [d["reason"] for d in rollbacks] == [f"alert {ALERT} firing"]
    assert rollbacks[0]["evidence"]["labels"]["target"] == ALERTED
    # The PromQL path saw the failing canary and let it pass: the alert alone rolled it back.
    assert not any(d["action"] == "hold" and "failed" in d["reason"] for d in decisions)
    alerts_after = metric_sum(stack.serve.metrics(), "canaryd_alerts_received_total")
    assert alerts_after > alerts_before >= 0 and alerts_after > 0
