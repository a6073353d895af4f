"""The verified split against a real Prometheus, through a real ``canaryd serve``.

The demo service as stable (v1) and as canary (v2), equally healthy, each under its own
``python -m canaryd.demo.load``; Prometheus scraping both every second; ``canaryd serve`` with
one target on the ``noop`` router, so the router reads back exactly the weight asked. The
policy asks canary 50% with ``split: {tolerance: 0.05}``, but the load generator sends the
canary half of what it should (15 req/s beside stable's 30: a third of the requests). Every
check passes; only the measured share can tell, and it must: the stage holds, never passes,
and at ``progress_deadline`` the rollout is rolled back with a reason naming the share.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from support import procs
from support.servekit import Serve, TargetSpec, start_load, stop_process, wait_until, write_config

ROOT = Path(__file__).resolve().parents[2]
JOB = "split-e2e"
TARGET = "split"
STABLE_RPS, CANARY_RPS = 30.0, 15.0  # canary asked 50%, sent a third


def policy() -> str:
    """Fast-track's ``errors-vs-stable`` (the per-side request counters) and a lenient
    success-rate SLO; one 20 s stage at 50% with a 15 s deadline beyond it."""
    shipped = yaml.safe_load((ROOT / "rules" / "matriz-fast-track.yaml").read_text())
    checks = {"errors-vs-stable": shipped["checks"]["errors-vs-stable"]}
    checks["success-rate"] = {**shipped["checks"]["success-rate"], "threshold": 0.7}
    doc = {
        "name": "split-e2e",
        "interval": "1s",
        "error_backoff": "1s",
        "window": "10s",
        "scale_down_delay": "1s",
        "alpha": 0.05,
        "split": {"tolerance": 0.05},
        "limits": {**shipped["limits"], "progress_deadline": "15s"},
        "checks": checks,
        "stages": [
            {"weight": 50, "duration": "20s", "checks": list(checks), "min_requests": 10},
            {"weight": 100, "duration": "0s", "checks": list(checks), "min_requests": 10},
        ],
    }
    return yaml.safe_dump(doc, sort_keys=False)


def gauge(exposition: str, name: str) -> float | None:
    """The value of ``name{target="split"}`` in a scrape (None: not exported)."""
    found = re.search(rf'^{name}\{{target="{TARGET}"\}} (\S+)$', exposition, re.MULTILINE)
    return None if found is None else float(found.group(1))


def test_a_split_forced_off_holds_the_stage_and_rolls_back_naming_the_share(
    tmp_path: Path,
) -> None:
    started: list[procs.Proc] = []
    loads = []
    serve: Serve | None = None
    try:
        stable = procs.start_demo_service(
            version="v1", deployment="stable", error_rate=0.0, tmp=tmp_path
        )
        started.append(stable)
        canary = procs.start_demo_service(
            version="v2", deployment="canary", error_rate=0.0, tmp=tmp_path
        )
        started.append(canary)
        loads = [
            start_load(f"{s.url}/", rps, 120.0, tmp_path / f"load-{s.name}.log")
            for s, rps in ((stable, STABLE_RPS), (canary, CANARY_RPS))
        ]
        scrape = [f"127.0.0.1:{s.port}" for s in (stable, canary)]
        prometheus = procs.start_prometheus(tmp_path, {JOB: scrape})
        started.append(prometheus)
        (tmp_path / "split.yaml").write_text(policy())
        config = write_config(
            tmp_path,
            [TargetSpec(TARGET, "split.yaml", {"job": JOB})],
            prometheus_url=prometheus.url,
        )
        serve = Serve(config)
        serve.start()
        procs.wait_for_up(prometheus, JOB, 2)
        rollout = serve.start_rollout(TARGET, "registry.local/matriz:v2")
        held = wait_until(
            lambda: serve.metrics() if serve is not None else "",
            lambda text: any(
                line.startswith("canaryd_decisions_total{")
                and 'action="hold"' in line
                and 'reason="split-off"' in line
                for line in text.splitlines()
            ),
            60,
            "a hold for the split",
        )
        measured = gauge(held, "canaryd_observed_weight")
        router = gauge(held, "canaryd_router_weight")
        final = wait_until(
            lambda: serve.rollout(TARGET) or {},
            lambda r: r.get("phase") in ("Succeeded", "RolledBack", "Failed"),
            90,
            "the rollout to end",
        )
        status, doc = serve.call("GET", f"/api/v1/targets/{TARGET}/history")
        assert status == 200, doc
        decisions = [d for d in doc["decisions"] if d["rollout_id"] == rollout["id"]]
    finally:
        code = serve.stop() if serve is not None else 0
        for load in loads:
            stop_process(load)
        for proc in reversed(started):
            proc.stop()
    assert code == 0

    # the router did what it was asked; the requests did not follow
    assert router == 50.0
    assert measured is not None and 25.0 < measured < 42.0, measured
    assert final["phase"] == "RolledBack", decisions
    reason = final["rollback_reason"]
    share = re.match(r"canary received (\d+\.\d)% of requests, asked 50% \(tolerance ±5;", reason)
    assert share is not None, reason
    assert 25.0 < float(share.group(1)) < 42.0, reason
    assert "progress deadline: stage 1 not passed within 35s" in reason
    holds = [d for d in decisions if d["action"] == "hold" and d["cause"] == "split-off"]
    assert holds and holds[0]["reason"].startswith("split off: canary received")
    # every check passed all along: the split alone held the stage and rolled it back
    assert all(
        v.get("verdict") in ("successful", "inconclusive")
        for d in decisions
        for k, v in d["evidence"].items()
        if k in ("errors-vs-stable", "success-rate") and isinstance(v, dict)
    )
    rollback = next(d for d in decisions if d["action"] == "rollback")
    assert rollback["cause"] == "split-off"
    facts = rollback["evidence"]["split"]
    assert facts["asked"] == 50 and facts["e_value"] >= facts["bound"]
    assert not any(d["action"] == "stage-passed" or d["cause"] == "stage-passed" for d in decisions)
