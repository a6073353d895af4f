"""Back to back against a real Prometheus: a healthy successor is judged on its own samples.

The bug as a user saw it: a canary rolled back for 20% errors, the fault fixed, a new healthy
rollout started at once was rolled back seconds after its start on success rate, because the
policy's window still held the previous canary's errors (same job, same ``deployment="canary"``
label, as on a systemd host where the canary slot is one process).

Every piece is real: the demo service as stable and as canary under steady load, Prometheus
scraping both every second as job ``lukhas-matriz-canary``, and ``canaryd serve`` with one
target on the ``noop`` router and the ``none`` platform (the canary is ready at once). The policy
is ``rules/matriz-fast-track.yaml``'s checks with a 30 s window, 1 s evaluations, stages of
seconds and ``min_window: 3s`` (three scrapes). The successor starts while the 30 s window
still holds the 20% errors (the test checks that the trap is armed); with windows clipped to
the rollout's age (``core.scope``) it waits for its own samples and is promoted.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from support import procs
from support.servekit import Serve, TargetSpec, start_load, stop_process, wait_until, write_config

ROOT = Path(__file__).resolve().parents[2]
JOB = "lukhas-matriz-canary"
TARGET = "matriz"
LOAD_RPS = 20.0
LOAD_SECONDS = 180.0  # an upper bound; the load is stopped with the module
WINDOW = "30s"
SUCCESS = (
    f'sum(rate(http_requests_total{{job="{JOB}",deployment="canary",status!~"5.."}}[{WINDOW}]))'
    f' / sum(rate(http_requests_total{{job="{JOB}",deployment="canary"}}[{WINDOW}]))'
)


def policy_text() -> str:
    """``matriz-fast-track``'s checks; a 30 s window, 1 s evaluations, stages of seconds."""
    policy = yaml.safe_load((ROOT / "rules" / "matriz-fast-track.yaml").read_text())
    policy.update(
        name="scoped",
        interval="1s",
        error_backoff="1s",
        window=WINDOW,
        min_window="3s",
        scale_down_delay="1s",
    )
    policy["limits"]["progress_deadline"] = "30s"
    # no verified split: the noop router moves nothing and each side has its own steady load,
    # so the canary's share of requests is what the loads make it, whatever the weight
    policy.pop("split", None)
    for stage, seconds in zip(policy["stages"], [3, 3, 3, 2], strict=True):
        stage.update(duration=f"{seconds}s", min_requests=10)
    return yaml.safe_dump(policy, sort_keys=False)


@dataclass
class Stack:
    serve: Serve
    prometheus: procs.Proc
    canary: procs.Proc

    def set_canary_errors(self, rate: float) -> None:
        body = json.dumps({"error_rate": rate}).encode()
        request = urllib.request.Request(
            f"{self.canary.url}/admin/fault", body, {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 200

    def canary_success_rate(self) -> float | None:
        result = procs.prometheus_query(self.prometheus, SUCCESS)
        return float(result[0]["value"][1]) if result else None  # type: ignore[index]

    def finished(self, rollout_id: str, timeout: float) -> dict[str, Any]:
        def current() -> dict[str, Any]:
            rollout = self.serve.rollout(TARGET) or {}
            return rollout if rollout.get("id") == rollout_id else {}

        return wait_until(
            current,
            lambda r: r.get("phase") in ("Succeeded", "RolledBack", "Failed"),
            timeout,
            f"rollout {rollout_id} to end",
        )

    def decisions(self, rollout_id: str) -> list[dict[str, Any]]:
        status, doc = self.serve.call("GET", f"/api/v1/targets/{TARGET}/history")
        assert status == 200, doc
        return [d for d in doc["decisions"] if d["rollout_id"] == rollout_id]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    directory = tmp_path_factory.mktemp("scoped")
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
        scrape = [f"127.0.0.1:{s.port}" for s in (stable, canary)]
        prometheus = procs.start_prometheus(directory, {JOB: scrape})
        started.append(prometheus)
        (directory / "scoped.yaml").write_text(policy_text())
        config = write_config(
            directory,
            [TargetSpec(TARGET, "scoped.yaml", {"job": JOB})],
            prometheus_url=prometheus.url,
        )
        serve = Serve(config)
        serve.start()
        procs.wait_for_up(prometheus, JOB, 2)
        running = Stack(serve, prometheus, canary)
        wait_until(running.canary_success_rate, lambda v: v == 1.0, 30, "a clean canary window")
        yield running
    finally:
        code = serve.stop() if serve is not None else 0
        for load in loads:
            stop_process(load)
        for proc in reversed(started):
            proc.stop()
    assert code == 0, f"canaryd exited {code}:\n{serve.tail() if serve else ''}"


def test_a_healthy_successor_started_right_after_a_rollback_is_not_rolled_back(
    stack: Stack,
) -> None:
    stack.set_canary_errors(0.2)
    bad = stack.serve.start_rollout(TARGET, "registry.local/matriz:v2")
    first = stack.finished(bad["id"], timeout=30)
    assert first["phase"] == "RolledBack", (first, stack.decisions(bad["id"]))
    # the absolute SLO or canary-against-stable, whichever has the evidence first
    failed = ("check success-rate failed", "check errors-vs-stable failed")
    assert first["rollback_reason"].startswith(failed), first

    stack.set_canary_errors(0.0)  # the fault is fixed; the successor starts at once
    trap = stack.canary_success_rate()
    assert trap is not None and trap < 0.995, f"the {WINDOW} window no longer holds the errors"
    good = stack.serve.start_rollout(TARGET, "registry.local/matriz:v3")
    final = stack.finished(good["id"], timeout=60)

    decisions = stack.decisions(good["id"])
    assert final["phase"] == "Succeeded", (final, decisions)
    assert final["rollback_reason"] is None
    assert not any(d["action"] == "rollback" for d in decisions), decisions
    assert not any("failed" in d["reason"] for d in decisions), decisions
    # It waited for its own samples first: "no data yet", a hold that is not counted.
    waits = [d for d in decisions if d["reason"].startswith("no data yet")]
    assert waits and all(d["action"] == "hold" for d in waits), decisions
    assert not any(d["action"] == "pause" for d in decisions), decisions
