"""``canaryd demo --fast``, run as a newcomer runs it: real Prometheus, Alertmanager, nginx.

One run (about two minutes) is shared by the tests of this module: the command's exit code,
the JSON report on stdout, the HTML report, the traffic nginx really split, and that nothing
it started is left running.
"""

from __future__ import annotations

import json
import os
import re
import socket
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

DEMO_TIMEOUT = 420


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    workdir = tmp_path_factory.mktemp("demo")
    done = subprocess.run(
        [sys.executable, "-m", "canaryd.cli", "demo", "--fast", "-o", "json", "--dir", workdir],
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT,
        check=False,
    )
    return {
        "code": done.returncode,
        "stdout": done.stdout,
        "stderr": done.stderr,
        "dir": Path(workdir),
        "report": json.loads(done.stdout) if done.stdout.strip().startswith("{") else None,
    }


def _explain(demo: dict[str, Any]) -> str:
    log = demo["dir"] / "canaryd.log"
    tail = log.read_text()[-3000:] if log.exists() else ""
    return f"exit {demo['code']}\n--- stderr ---\n{demo['stderr'][-4000:]}\n--- log ---\n{tail}"


def test_the_good_version_is_promoted_through_every_stage(demo: dict[str, Any]) -> None:
    assert demo["code"] == 0 and demo["report"] is not None, _explain(demo)
    good = demo["report"]["rollouts"][0]
    assert good["name"] == "good" and good["phase"] == "Succeeded", _explain(demo)
    weights = good["weights_seen"]
    assert [w for w in weights if w in (10, 25, 50, 100)] == [10, 25, 50, 100], weights
    actions = [d["action"] for d in good["decisions"]]
    assert "promote" in actions or any("promot" in str(d["reason"]) for d in good["decisions"])


def test_the_bad_version_is_rolled_back_by_canaryd(demo: dict[str, Any]) -> None:
    assert demo["report"] is not None, _explain(demo)
    bad = demo["report"]["rollouts"][1]
    assert bad["name"] == "bad" and bad["phase"] == "RolledBack", _explain(demo)
    assert bad["fault_at"] is not None and bad["rollback_reason"], bad
    assert bad["fault_to_rollback_seconds"] is not None and bad["fault_to_rollback_seconds"] > 0
    assert 100 not in bad["weights_seen"]  # it never reached full traffic
    progress = demo["stderr"]
    assert "bad v2.1.0: RolledBack" in progress or "bad rollout ended RolledBack" in progress


def test_nginx_really_moved_the_traffic(demo: dict[str, Any]) -> None:
    """The samples pair the weight canaryd set with the share of answers the load generator got
    from the canary behind nginx: at 25 % and 50 % the canary really served that share."""
    assert demo["report"] is not None, _explain(demo)
    html = (demo["dir"] / "report.html").read_text()
    assert html.count("<svg") == 6 and "answers seen from the canary" in html
    include = (demo["dir"] / "nginx" / "matriz.conf").read_text()
    assert include.startswith("# canaryd: target=matriz weight=0")  # given back to stable
    for rollout in demo["report"]["rollouts"]:  # the header pins to the canary at each weight
        assert rollout["header_pinned"] and set(rollout["header_pinned"].values()) == {5}
    good = demo["report"]["rollouts"][0]["timeline"]
    for weight in (10, 25, 50):  # steady for 2 s (4 samples): the share nginx really served
        steady = [
            good[i]["canary_share"]
            for i in range(4, len(good))
            if all(s["weight"] == weight for s in good[i - 4 : i + 1])
            and good[i]["canary_share"] is not None
        ]
        assert steady, (weight, good)
        assert abs(statistics.median(steady) - weight) <= 5, (weight, steady)


def test_progress_shows_checks_against_thresholds_time_left_and_why_it_rolled_back(
    demo: dict[str, Any],
) -> None:
    """The demo's progress (stderr under ``-o json``) in the words of ``canaryctl watch``."""
    assert demo["report"] is not None, _explain(demo)
    progress = demo["stderr"]
    assert re.search(r"success-rate [0-9.]+% (≥|>=) 99\.5% (✓|ok)", progress), progress
    assert re.search(r"latency-p95 [0-9.]+ ms (≤|<=) 250 ms (✓|ok)", progress), progress
    assert re.search(r"stage 1/4 weight 10% \(\d+s left\)", progress), progress
    rollback = re.search(r"bad v2\.1\.0: decision stage \d+\s+rollback\s+(\S.*)", progress)
    assert rollback, progress  # the moment it is taken, with its reason
    reason = demo["report"]["rollouts"][1]["rollback_reason"]
    assert rollback.group(1).strip() == reason


def test_the_report_draws_latency_stage_bands_and_rollbacks_in_red(demo: dict[str, Any]) -> None:
    assert demo["report"] is not None, _explain(demo)
    html = (demo["dir"] / "report.html").read_text()
    assert "Canary latency P95 (ms)" in html and "threshold &lt;= 250 ms" in html
    assert "one grid line per extra nine" in html and "SLO &gt;= 99.5 %" in html
    for band in ("stage 1 · 10%", "stage 3 · 50%", "succeeded", "rolled back"):
        assert band in html, band
    assert "stroke='#cf222e' stroke-width='1.5'" in html  # the rollback's mark, in red
    assert "<tr class='rollback'>" in html and "class='rollback'>RolledBack" in html
    timeline = demo["report"]["rollouts"][0]["timeline"]
    assert any(s["canary_p95_ms"] for s in timeline)  # the load generator's latency


def test_the_written_config_passes_canaryd_check(demo: dict[str, Any]) -> None:
    config = demo["dir"] / "canaryd.yaml"
    done = subprocess.run(
        [sys.executable, "-m", "canaryd.cli", "check", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert yaml.safe_load(config.read_text())["targets"][0]["router"]["kind"] == "nginx"


def test_nothing_the_demo_started_is_left_running(demo: dict[str, Any]) -> None:
    config = yaml.safe_load((demo["dir"] / "canaryd.yaml").read_text())
    ports = [int(config["listen"].rsplit(":", 1)[1])]
    ports += [int(s.rsplit(":", 1)[1]) for s in config["targets"][0]["router"]["stable_servers"]]
    ports += [int(s.rsplit(":", 1)[1]) for s in config["targets"][0]["router"]["canary_servers"]]
    for port in ports:
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still answers"
    workdir = str(demo["dir"])
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        assert workdir not in cmdline or "pytest" in cmdline, f"left running: {pid} {cmdline}"


def test_missing_binaries_are_named_with_the_packages_that_bring_them(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "canaryd.cli", "demo", "--fast", "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PATH": str(tmp_path)},  # nothing to find there
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "needs prometheus, prometheus-alertmanager, nginx" in done.stderr
    assert "apt-get install -y prometheus prometheus-alertmanager nginx-light" in done.stderr
