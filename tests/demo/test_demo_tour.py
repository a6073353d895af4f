"""``canaryd demo --fast``, run as a newcomer runs it: real Prometheus, Alertmanager, nginx.

One run (about two minutes) is shared by the tests of this module: the command's exit code,
the JSON report on stdout, the HTML report, the traffic nginx really split, the daemon's state
file (what it measured and decided), and that nothing it started is left running.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import sqlite3
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from canaryd.config.policies import RULES_DIR, load_policy
from canaryd.core import compare

DEMO_TIMEOUT = 420


def latency_bound() -> float:
    """``1/alpha`` of ``latency-vs-stable`` in the demo: the shipped fast track's checks and
    verified split, so its share of the policy's alpha."""
    shipped = load_policy(RULES_DIR / "matriz-fast-track.yaml")
    return 1 / compare.alpha_share(shipped, shipped.checks["latency-vs-stable"])


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


def _rollout(demo: dict[str, Any], name: str) -> dict[str, Any]:
    assert demo["report"] is not None, _explain(demo)
    found = [r for r in demo["report"]["rollouts"] if r["name"] == name]
    assert len(found) == 1, [r["name"] for r in demo["report"]["rollouts"]]
    return found[0]


def test_the_good_version_is_promoted_through_every_stage(demo: dict[str, Any]) -> None:
    assert demo["code"] == 0 and demo["report"] is not None, _explain(demo)
    assert [r["name"] for r in demo["report"]["rollouts"]] == ["good", "subtle", "bad"]
    good = demo["report"]["rollouts"][0]
    assert good["name"] == "good" and good["phase"] == "Succeeded", _explain(demo)
    weights = good["weights_seen"]
    assert [w for w in weights if w in (10, 25, 50, 100)] == [10, 25, 50, 100], weights
    actions = [d["action"] for d in good["decisions"]]
    assert "promote" in actions or any("promot" in str(d["reason"]) for d in good["decisions"])


def test_the_bad_version_is_rolled_back_by_canaryd(demo: dict[str, Any]) -> None:
    assert demo["report"] is not None, _explain(demo)
    bad = _rollout(demo, "bad")
    assert bad["phase"] == "RolledBack", _explain(demo)
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
    # three charts per rollout, and the subtle one's evidence: rates per side, the test
    assert html.count("<svg") == 3 * 3 + 2 and "answers seen from the canary" in html
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
    reason = _rollout(demo, "bad")["rollback_reason"]
    assert rollback.group(1).strip() == reason
    subtle = re.search(r"subtle v2\.2\.0: decision stage \d+\s+rollback\s+(\S.*)", progress)
    assert subtle, progress
    assert subtle.group(1).strip() == _rollout(demo, "subtle")["rollback_reason"]
    # a compare check in the shared formatter: its e-value against the bound it must stay under
    shown = f"{latency_bound():.4g}"  # 220: 1 / (0.05 / 11)
    assert re.search(rf"latency-vs-stable [0-9.e+-]+ < {shown} (✓|ok)", progress), progress


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


# --------------------------------------------------------------------------- the subtle version


def _stored(demo: dict[str, Any], rollout_id: str) -> tuple[list[dict[str, Any]], list[Any]]:
    """The daemon's own record of a rollout: its decisions and measurements (state.db)."""
    with sqlite3.connect(demo["dir"] / "state.db") as db:
        db.row_factory = sqlite3.Row
        decisions = [
            dict(row)
            for row in db.execute(
                "SELECT * FROM decisions WHERE rollout_id = ? ORDER BY seq", (rollout_id,)
            )
        ]
        measurements = db.execute(
            "SELECT check_name, value FROM measurements WHERE rollout_id = ?", (rollout_id,)
        ).fetchall()
    return decisions, measurements


def test_the_subtly_bad_version_is_rolled_back_by_latency_vs_stable(demo: dict[str, Any]) -> None:
    """40 % slower than stable from its first request, inside every absolute SLO: the
    comparison with stable rolls it back, and nothing else does."""
    subtle = _rollout(demo, "subtle")
    assert subtle["image"] == "v2.2.0" and subtle["phase"] == "RolledBack", _explain(demo)
    reason = subtle["rollback_reason"]
    assert reason.startswith("check latency-vs-stable failed: canary worse than stable"), reason
    assert subtle["fault_at"] is None  # nothing was injected: it was slower all along
    decisions, _ = _stored(demo, subtle["rollout_id"])
    rollback = [d for d in decisions if d["action"] == "rollback"]
    assert len(rollback) == 1 and rollback[0]["cause"] == "check-failed", decisions
    evidence = json.loads(rollback[0]["evidence"])
    assert evidence["latency-vs-stable"]["verdict"] == "failed", evidence
    assert evidence["latency-vs-stable"]["value"] >= 40, evidence  # 1 / (0.05 / 2)
    others = {k: v["verdict"] for k, v in evidence.items() if k != "latency-vs-stable"}
    assert set(others.values()) <= {"successful"}, others


def test_the_subtly_bad_version_stays_inside_every_absolute_slo(demo: dict[str, Any]) -> None:
    """Every threshold check the daemon measured on the subtle canary holds its SLO (from the
    state file), and what it counted for the comparison keeps the ones its stages never reached:
    no request failed (error rate 0 ≤ 0.1 %) and every one took at most 100 ms (P95 ≤ 250 ms,
    the guardian's share within its 100 ms budget). Only a comparison can tell it is worse."""
    subtle = _rollout(demo, "subtle")
    policy = yaml.safe_load((demo["dir"] / "policy.yaml").read_text())
    thresholds = {
        name: (c["op"], c["threshold"]) for name, c in policy["checks"].items() if "op" in c
    }
    assert {"success-rate", "latency-p95", "error-rate", "health-score"} <= set(thresholds)
    _, measurements = _stored(demo, subtle["rollout_id"])
    judged = [(m["check_name"], m["value"]) for m in measurements if m["check_name"] in thresholds]
    holds = {">=": lambda v, t: v >= t, "<=": lambda v, t: v <= t}
    for name, value in judged:
        op, threshold = thresholds[name]
        assert value is None or holds[op](value, threshold), (name, value, op, threshold)
    success = [v for name, v in judged if name == "success-rate" and v is not None]
    assert success and set(success) == {1.0}, judged  # not one 5xx
    counted = subtle["evidence"]["points"][-1]["counted"]
    assert counted["canary.le=+Inf"] > 0, counted
    assert counted["canary.le=0.1"] == counted["canary.le=+Inf"], counted  # all within 100 ms


def test_the_report_shows_the_compare_evidence(demo: dict[str, Any]) -> None:
    """Per-side rates and the e-value against its bound, one point per evaluation, as the
    daemon's e-process had them; and the two charts that draw them."""
    evidence = _rollout(demo, "subtle")["evidence"]
    assert evidence and evidence["check"] == "latency-vs-stable", evidence
    assert evidence["event"] == "slower than 50 ms", evidence  # stable's median is 50 ms
    points = evidence["points"]
    assert len(points) >= 3, points
    last = points[-1]
    bound = latency_bound()
    assert last["concluded"] and last["e_value"] >= last["bound"], last
    assert last["bound"] == pytest.approx(bound), last
    assert math.isclose(last["log_bound"], math.log(bound))
    assert not any(p["concluded"] for p in points[:-1]) or points[-2]["e_value"] >= 40
    assert last["canary_rate"] > 1.5 * last["stable_rate"] > 0, last  # ~100 % against ~50 %
    assert last["canary_requests"] > 0 and last["stable_requests"] > last["canary_requests"]
    for good in ("good", "bad"):
        assert _rollout(demo, good)["evidence"] is None
    html = (demo["dir"] / "report.html").read_text()
    assert "latency-vs-stable: share of requests slower than 50 ms" in html
    assert "latency-vs-stable: the test&#x27;s log e-value against its boundary" in html
    assert f"boundary log(1/alpha) = log {bound:.4g}" in html


def test_each_rollout_judges_its_own_canary(demo: dict[str, Any]) -> None:
    """Every version ran in its own canary process: the demo starts a rollout only once the
    previous canary is gone, so none takes over a canary slot still running another version."""
    for image in ("v2.0.0", "v2.1.0", "v2.2.0"):
        assert (demo["dir"] / f"canary-{image}.log").exists(), sorted(demo["dir"].iterdir())
    progress = demo["stderr"]
    assert "canary slot handed over" not in progress, progress
    assert "subtle: canary removed; stable v2.0.0 serves everything" in progress, progress
