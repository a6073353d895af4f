"""Live progress as ``canaryctl watch`` prints it, against a real ``canaryd serve`` (issue 12.7).

The stack of ``test_metrics``: a real Prometheus scrapes the daemon's own ``/metrics`` under two
jobs, ``good`` and ``bad``, and each target's checks are queries over those series, so real
PromQL reaches the real evaluator. ``good`` has a success rate (``up``: 100 %) and a latency
(P95 of canaryd's own PromQL queries, in seconds); ``bad`` an error rate pinned at 2 % against
a 0.1 % threshold, so it is rolled back on its first evaluation. Each watch must show every
check with its value, unit, threshold and verdict, the time left in the stage, and the
decision with its reason.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from support import procs
from support.procs import free_port
from support.servekit import TOKENS, Serve, TargetSpec, write_config

STAGE_SECONDS = 6
GOOD = (
    "name: good\ninterval: 1s\nwindow: 5s\nscale_down_delay: 1s\n"
    "limits: {progress_deadline: 30s, inconclusive_limit: 20}\n"
    "checks:\n"
    "  success-rate:\n"
    "    query: 'sum by ({{group}}) (up{job=~\"{{job}}\"})'\n"
    '    op: ">="\n    threshold: 0.995\n'
    "  latency-p95:\n"
    "    query: 'histogram_quantile(0.95, sum by (le, {{group}}) "
    '(rate(canaryd_promql_duration_seconds_bucket{job=~"{{job}}"}[{{window}}])))\'\n'
    '    op: "<="\n    threshold: 5\n'
    "stages:\n"
    f"  - {{weight: 50, duration: {STAGE_SECONDS}s, checks: [success-rate, latency-p95]}}\n"
)
BAD = (
    "name: bad\ninterval: 1s\nwindow: 5s\nscale_down_delay: 1s\n"
    "limits: {progress_deadline: 30s, failure_limit: 0}\n"
    "checks:\n"
    "  error-rate:\n"
    "    query: '0 * sum by ({{group}}) (up{job=~\"{{job}}\"}) + 0.02'\n"
    '    op: "<="\n    threshold: 0.001\n'
    "stages:\n  - {weight: 20, duration: 30s, checks: [error-rate]}\n"
)


@dataclass
class Stack:
    serve: Serve
    prometheus: procs.Proc


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("progress")
    port = free_port()
    me = f"127.0.0.1:{port}"
    prometheus = procs.start_prometheus(tmp, {"good": [me], "bad": [me]})
    serve: Serve | None = None
    try:
        (tmp / "good.yaml").write_text(GOOD)
        (tmp / "bad.yaml").write_text(BAD)
        targets = [TargetSpec("good", "good.yaml"), TargetSpec("bad", "bad.yaml")]
        config = write_config(tmp, targets, port=port, prometheus_url=prometheus.url)
        serve = Serve(config)
        serve.start()
        procs.wait_for_up(prometheus, "good", 1)
        procs.wait_for_up(prometheus, "bad", 1)
        yield Stack(serve, prometheus)
    finally:
        if serve is not None:
            serve.stop()
        prometheus.stop()


def watch(stack: Stack, target: str, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CANARYD_")}
    env |= {
        "CANARYD_URL": stack.serve.url,
        "CANARYD_TOKEN": TOKENS["viewer"],
        "PYTHONIOENCODING": "utf-8",
    }
    return subprocess.run(
        [sys.executable, "-m", "canaryd.ctl", "watch", target, "--interval", "0.3", *extra],
        capture_output=True,
        text=True,
        env=env,
        timeout=STAGE_SECONDS + 40,
    )


def test_watch_shows_each_check_against_its_threshold_and_the_time_left(stack: Stack) -> None:
    stack.serve.start_rollout("good", "app:v2")
    done = watch(stack, "good")
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "success-rate 100% ≥ 99.5% ✓" in out, out
    assert re.search(r"latency-p95 [0-9.]+ ms ≤ 5 s ✓", out), out
    left = [int(s) for s in re.findall(r"passed, (\d+)s left", out)]
    assert left and all(0 <= s <= STAGE_SECONDS for s in left), out
    assert "ended Succeeded" in out


def test_the_api_gives_each_check_its_threshold_unit_and_verdict(stack: Stack) -> None:
    status, doc = stack.serve.call("GET", "/api/v1/targets/good", token=TOKENS["viewer"])
    assert status == 200
    checks = doc["checks"]
    assert checks["success-rate"]["op"] == ">=" and checks["success-rate"]["threshold"] == 0.995
    assert checks["success-rate"]["unit"] == "ratio"
    assert checks["success-rate"]["verdict"] == "successful"
    assert checks["latency-p95"]["unit"] == "seconds"


def test_watch_shows_the_failing_check_and_the_rollback_with_its_reason(stack: Stack) -> None:
    stack.serve.start_rollout("bad", "app:v3")
    done = watch(stack, "bad")
    out = done.stdout
    assert done.returncode == 10, out + done.stderr  # rolled back
    assert "error-rate 2% ≤ 0.1% ✗" in out, out
    rollback = [line for line in out.splitlines() if re.search(r"\brollback\b", line)]
    assert any("check error-rate failed" in line for line in rollback), out
    assert "reason   check error-rate failed" in out, out


def test_a_terminal_without_unicode_gets_ascii_marks(stack: Stack) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CANARYD_")}
    env |= {
        "CANARYD_URL": stack.serve.url,
        "CANARYD_TOKEN": TOKENS["viewer"],
        "PYTHONIOENCODING": "ascii",
    }
    done = subprocess.run(
        [sys.executable, "-m", "canaryd.ctl", "watch", "bad", "--once"],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert "error-rate 2% <= 0.1% FAIL" in done.stdout, done.stdout
