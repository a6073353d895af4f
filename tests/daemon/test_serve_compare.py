"""``errors-vs-stable`` against a real Prometheus, through a real ``canaryd serve``.

The demo service as stable (v1, 10 % of its requests fail) and as canary (v2, 20 % fail), both
under steady load from ``python -m canaryd.demo.load``; Prometheus scraping both every second;
``canaryd serve`` with one target on the ``noop`` router. The policy is fast-track's stages
(of a minute each, 1 s evaluations) with a success-rate SLO of 70 %, which both versions keep,
and the shipped ``errors-vs-stable`` and ``latency-vs-stable`` checks unchanged. The canary is
twice as bad as stable and inside the absolute SLO: only the comparison can roll it back, and
it must, long before the stages would have let it through.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from canaryd.config.policies import load_policy
from canaryd.core import compare
from support import procs
from support.servekit import Serve, TargetSpec, start_load, stop_process, wait_until, write_config

ROOT = Path(__file__).resolve().parents[2]
JOB = "compare-e2e"
TARGET = "compared"
LOAD_RPS = 25.0


def policy() -> str:
    """Fast-track's compare checks beside a lenient success-rate SLO; one-minute stages. No
    verified split: the noop router moves nothing, and each side gets its own load at the same
    rate, so the canary serves half the requests whatever the weight."""
    shipped = yaml.safe_load((ROOT / "rules" / "matriz-fast-track.yaml").read_text())
    checks = {name: shipped["checks"][name] for name in ("errors-vs-stable", "latency-vs-stable")}
    checks["success-rate"] = {**shipped["checks"]["success-rate"], "threshold": 0.7}
    doc = {
        "name": "compare-e2e",
        "interval": "1s",
        "error_backoff": "1s",
        "window": "10s",
        "min_window": "8s",  # enough samples at 1 s scrapes that the SLO is not noise
        "scale_down_delay": "1s",
        "alpha": shipped["alpha"],
        "limits": {**shipped["limits"], "progress_deadline": "60s"},
        "checks": checks,
        "stages": [
            {"weight": w, "duration": "60s", "checks": list(checks), "min_requests": 10}
            for w in (10, 25, 50, 100)
        ],
    }
    return yaml.safe_dump(doc, sort_keys=False)


def test_a_canary_twice_as_bad_as_stable_inside_the_slo_is_rolled_back_by_errors_vs_stable(
    tmp_path: Path,
) -> None:
    started: list[procs.Proc] = []
    loads = []
    serve: Serve | None = None
    try:
        stable = procs.start_demo_service(
            version="v1", deployment="stable", error_rate=0.1, tmp=tmp_path
        )
        started.append(stable)
        canary = procs.start_demo_service(
            version="v2", deployment="canary", error_rate=0.2, tmp=tmp_path
        )
        started.append(canary)
        loads = [
            start_load(f"{s.url}/", LOAD_RPS, 180.0, tmp_path / f"load-{s.name}.log")
            for s in (stable, canary)
        ]
        scrape = [f"127.0.0.1:{s.port}" for s in (stable, canary)]
        prometheus = procs.start_prometheus(tmp_path, {JOB: scrape})
        started.append(prometheus)
        (tmp_path / "compare.yaml").write_text(policy())
        config = write_config(
            tmp_path,
            [TargetSpec(TARGET, "compare.yaml", {"job": JOB})],
            prometheus_url=prometheus.url,
        )
        serve = Serve(config)
        serve.start()
        procs.wait_for_up(prometheus, JOB, 2)
        rollout = serve.start_rollout(TARGET, "registry.local/matriz:v2")
        final = wait_until(
            lambda: serve.rollout(TARGET) or {},
            lambda r: r.get("phase") in ("Succeeded", "RolledBack", "Failed"),
            150,
            "the rollout to end",
        )
        status, doc = serve.call("GET", f"/api/v1/targets/{TARGET}/history")
        assert status == 200, doc
        decisions = [d for d in doc["decisions"] if d["rollout_id"] == rollout["id"]]
        # the target's view and the metrics judge a compare check on the rollout's evidence
        # (they used to fail on it: a compare reading has no verdict alone)
        status, view = serve.call("GET", f"/api/v1/targets/{TARGET}")
        assert status == 200, view
        metrics = serve.metrics()
    finally:
        code = serve.stop() if serve is not None else 0
        for load in loads:
            stop_process(load)
        for proc in reversed(started):
            proc.stop()
    assert code == 0

    assert final["phase"] == "RolledBack", decisions
    reason = final["rollback_reason"]
    assert reason.startswith("check errors-vs-stable failed: canary worse than stable"), reason
    rollback = next(d for d in decisions if d["action"] == "rollback")
    evidence = rollback["evidence"]["errors-vs-stable"]
    written = tmp_path / "expected-policy.yaml"
    written.write_text(policy())
    judged = load_policy(written)
    share = compare.alpha_share(judged, judged.checks["errors-vs-stable"])  # 0.05 × 9 / 10
    assert evidence["verdict"] == "failed" and evidence["value"] >= 1 / share
    # the absolute SLO held all along: the comparison alone rolled it back (the first pass may
    # come before Prometheus has two samples in the 10 s window: "no data", never a breach)
    verdicts = [d["evidence"].get("success-rate", {}).get("verdict") for d in decisions]
    assert "failed" not in verdicts, verdicts  # (often still "no data yet": the comparison
    # concludes before the SLO's window has filled, core.scope)
    assert not any(d["action"] == "promote" for d in decisions)
    evidence_now = view["rollout"]["compare"]["errors-vs-stable"]
    assert evidence_now["concluded"] and evidence_now["e_value"] >= evidence_now["bound"]
    assert evidence_now["bound"] == pytest.approx(1 / share)
    assert evidence_now["counted"]["canary.requests"] > 0, evidence_now
    assert view["checks"]["errors-vs-stable"]["verdict"] == "failed", view["checks"]
    failed = 'check="errors-vs-stable",result="failed",target="compared"'
    assert any(failed in line for line in metrics.splitlines()), metrics[-3000:]
