"""``canaryd check``'s worst case against reality: a real breach, a real Prometheus, a real serve.

The demo service as canary under steady load, Prometheus scraping it every second (its config
file is the one ``check`` reads with ``--prometheus-config``), ``canaryd serve`` with one target
on the ``noop`` router and a success-rate check on a 10 s window, evaluated every 2 s. Once the
rollout is judged healthy the canary starts failing every request (a full breach, the model's
case); the time from that moment to the rollback decision must not exceed what ``check``
printed for the target.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml

from support import procs
from support.servekit import Serve, TargetSpec, start_load, stop_process, wait_until, write_config

ROOT = Path(__file__).resolve().parents[2]
JOB = "breach-timing"
TARGET = "timed"
CHECK = (sys.executable, "-m", "canaryd.cli", "check")
PROMQL_LINE = re.compile(r"full breach → rollback by PromQL ≤ (\S+) ")


def policy() -> str:
    """Fast-track's success-rate query at 95 %, one long stage: only a breach can end it."""
    shipped = yaml.safe_load((ROOT / "rules" / "matriz-fast-track.yaml").read_text())
    check = {**shipped["checks"]["success-rate"], "threshold": 0.95}
    doc = {
        "name": "breach-timing",
        "interval": "2s",
        "error_backoff": "1s",
        "window": "10s",
        "scale_down_delay": "1s",
        "limits": {**shipped["limits"], "progress_deadline": "60s"},
        "checks": {"success-rate": check},
        "stages": [{"weight": 10, "duration": "5m", "checks": ["success-rate"]}],
    }
    return yaml.safe_dump(doc, sort_keys=False)


def printed_worst_case(config: Path, prometheus_config: Path) -> float:
    """Run ``canaryd check`` and read the target's PromQL worst case, in seconds."""
    done = subprocess.run(
        [*CHECK, "-c", str(config), "--prometheus-config", str(prometheus_config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    found = PROMQL_LINE.search(done.stdout)
    assert found, done.stdout
    # the model for this case: lag ceil(5% of 10s / 1s) + 1s scrape = 2s, then 1 × 2s, noop +0s
    assert found.group(1) == "4s", done.stdout
    return 4.0


def set_errors(url: str, rate: float) -> None:
    body = json.dumps({"error_rate": rate}).encode()
    request = urllib.request.Request(
        f"{url}/admin/fault", body, {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200


def evaluations(serve: Serve, rollout_id: str) -> list[dict[str, object]]:
    status, doc = serve.call("GET", f"/api/v1/targets/{TARGET}/history")
    assert status == 200, doc
    return [d for d in doc["decisions"] if d["rollout_id"] == rollout_id]


def test_a_full_breach_is_rolled_back_within_the_worst_case_check_printed(tmp_path: Path) -> None:
    started: list[procs.Proc] = []
    load = None
    serve: Serve | None = None
    try:
        canary = procs.start_demo_service(version="v2", deployment="canary", tmp=tmp_path)
        started.append(canary)
        load = start_load(f"{canary.url}/", 40.0, 120.0, tmp_path / "load.log")
        prometheus = procs.start_prometheus(tmp_path, {JOB: [f"127.0.0.1:{canary.port}"]})
        started.append(prometheus)
        (tmp_path / "timed.yaml").write_text(policy())
        config = write_config(
            tmp_path,
            [TargetSpec(TARGET, "timed.yaml", {"job": JOB})],
            prometheus_url=prometheus.url,
        )
        worst = printed_worst_case(config, prometheus.extra["config"])
        serve = Serve(config)
        serve.start()
        procs.wait_for_up(prometheus, JOB, 1)
        rollout = serve.start_rollout(TARGET, "registry.local/matriz:v2")
        # judged healthy at least twice (4 s of stage credit): a window of good samples
        wait_until(
            lambda: serve.rollout(TARGET) or {},  # type: ignore[union-attr]
            lambda r: float(r.get("credited") or 0) >= 4,
            40,
            "two passing evaluations",
        )
        breach = time.time()
        set_errors(canary.url, 1.0)
        final = wait_until(
            lambda: serve.rollout(TARGET) or {},  # type: ignore[union-attr]
            lambda r: r.get("phase") in ("Succeeded", "RolledBack", "Failed"),
            30,
            "the rollout to end",
        )
        decisions = evaluations(serve, rollout["id"])
    finally:
        code = serve.stop() if serve is not None else 0
        if load is not None:
            stop_process(load)
        for proc in reversed(started):
            proc.stop()
    assert code == 0
    assert final["phase"] == "RolledBack", decisions
    assert final["rollback_reason"].startswith("check success-rate failed"), final
    rollback = next(d for d in decisions if d["action"] == "rollback")
    took = float(rollback["t_unix"]) - breach
    print(f"breach→rollback measured {took:.2f}s, printed worst case {worst:g}s")
    assert 0 < took <= worst, (took, decisions)
