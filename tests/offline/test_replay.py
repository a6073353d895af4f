"""`canaryctl replay` on a real Prometheus's history of the demo service.

One history is recorded for the whole module (~45 s): stable and canary under steady load,
scraped every second; the canary turns bad (30% errors) about 20 s in, and a warning alert
starts firing 10 s in (its rule is loaded once t = 0 is known, through Prometheus's reload).
The policy is fast-track's with stages of seconds, a 2 s interval and a 10 s window
(clipped to the replayed rollout's age from t = 0, no data before 2 s).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from canaryd.adapters.prometheus import RangeResult, RangeSeries, ResultKind
from canaryd.offline.replay import ReplayError, Window, alert_lines, check_lines, parse_time
from support import procs

ROOT = Path(__file__).resolve().parents[2]
JOB = "matriz-replay"
FAULT_AT = 20.0
ALERT_AT = 10.0
LENGTH = 40.0


@dataclass(frozen=True)
class History:
    prometheus: procs.Proc
    t0: float  # Unix seconds of the replays' t = 0
    fault_at: float  # seconds after t0 when the canary turned bad
    policy: Path


def write_policy(path: Path) -> Path:
    doc = yaml.safe_load((ROOT / "rules/matriz-fast-track.yaml").read_text())
    # min_window: twice the 1 s scrape interval (core.scope), as the daemon would be told
    doc.update(interval="2s", window="10s", min_window="2s", scale_down_delay="1s")
    doc["limits"]["progress_deadline"] = "20s"
    for stage, seconds in zip(doc["stages"], (8, 8, 30, 0), strict=True):
        stage.update(duration=f"{seconds}s", min_requests=10)
    doc["alerts"].append(
        {"name": "warning-pause", "match": {"severity": "warning"}, "action": "pause"}
    )
    path.write_text(yaml.safe_dump(doc))
    return path


def post(url: str, body: object) -> None:
    request = urllib.request.Request(url, json.dumps(body).encode(), method="POST")
    request.add_header("Content-Type", "application/json")
    urllib.request.urlopen(request, timeout=5).close()


def sleep_until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.time()))


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Iterator[History]:
    tmp = tmp_path_factory.mktemp("replay")
    rules = tmp / "rules.yaml"
    rules.write_text("groups: []\n")
    started: list[procs.Proc] = []
    load: list[subprocess.Popen[bytes]] = []
    try:
        for deployment, version in (("stable", "v1"), ("canary", "v2")):
            started.append(
                procs.start_demo_service(version=version, deployment=deployment, tmp=tmp)
            )
        addresses = [f"127.0.0.1:{p.port}" for p in started]
        prometheus = procs.start_prometheus(tmp, {JOB: addresses}, rule_files=[rules])
        started.append(prometheus)
        procs.wait_for_up(prometheus, JOB, 2)
        for service in started[:2]:
            argv = ["--url", f"{service.url}/", "--rps", "25", "--duration", str(LENGTH + 15)]
            load.append(subprocess.Popen([sys.executable, "-m", "canaryd.demo.load", *argv]))
        time.sleep(4)  # rate() windows fill with both deployments' traffic
        t0 = round(time.time())
        sleep_until(t0)
        rules.write_text(
            yaml.safe_dump(
                {
                    "groups": [
                        {
                            "name": "replay",
                            "interval": "1s",
                            "rules": [
                                {
                                    "alert": "CanaryLooksOdd",
                                    "expr": f"vector(time()) > {t0 + ALERT_AT}",
                                    "labels": {"severity": "warning", "job": JOB},
                                }
                            ],
                        }
                    ]
                }
            )
        )
        post(f"{prometheus.url}/-/reload", {})
        sleep_until(t0 + FAULT_AT)
        post(f"{started[1].url}/admin/fault", {"error_rate": 0.3})
        fault_at = time.time() - t0
        sleep_until(t0 + LENGTH + 2)  # the last step's scrapes are in
        yield History(prometheus, t0, fault_at, write_policy(tmp / "short.yaml"))
    finally:
        for process in load:
            procs.stop_process(process)
        for proc in started:
            proc.stop()


def replay(h: History, start: float, end: float, *extra: str) -> subprocess.CompletedProcess[str]:
    argv = ["--policy", str(h.policy), "--prometheus", h.prometheus.url, "--label", f"job={JOB}"]
    argv += ["--from", f"{start:.3f}", "--to", f"{end:.3f}", *extra]
    return subprocess.run(
        [sys.executable, "-m", "canaryd.ctl", "-o", "json", "replay", *argv],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )


def records(done: subprocess.CompletedProcess[str]) -> list[dict[str, object]]:
    assert done.returncode == 0, done.stderr
    out: list[dict[str, object]] = json.loads(done.stdout)
    return out


def test_a_canary_that_turns_bad_is_rolled_back_after_the_fault_for_its_success_rate(
    history: History,
) -> None:
    h = history
    out = records(replay(h, h.t0, h.t0 + LENGTH, "--no-alerts"))
    rollbacks = [r for r in out if r["action"] == "rollback"]
    assert rollbacks, out
    first = rollbacks[0]
    assert h.fault_at < float(first["t"]) <= h.fault_at + 12, out  # type: ignore[arg-type]
    assert "success-rate" in str(first["reason"]), first
    before = [r for r in out if float(r["t"]) < h.fault_at]  # type: ignore[arg-type]
    assert {25, 50} <= {r["weight"] for r in before}, out  # stages passed while healthy
    assert out[-1]["phase"] == "RolledBack", out


def test_a_healthy_range_progresses_through_stages_without_rollback(history: History) -> None:
    h = history
    done = replay(h, h.t0, h.t0 + h.fault_at - 1, "--no-alerts")
    out = records(done)
    weights = [r["weight"] for r in out]
    assert sorted(set(weights)) == [0, 10, 25, 50] and weights == sorted(weights), out
    assert not [r for r in out if r["phase"] in ("RollingBack", "RolledBack")], out


def test_a_firing_alert_in_the_history_is_replayed_as_an_alert(
    history: History, tmp_path: Path
) -> None:
    h = history
    saved = tmp_path / "samples.jsonl"
    out = records(replay(h, h.t0, h.t0 + h.fault_at - 1, "--save-samples", str(saved)))
    paused = [r for r in out if r["phase"] == "Paused"]
    assert paused and "CanaryLooksOdd" in str(paused[0]["reason"]), out
    assert ALERT_AT <= float(paused[0]["t"]) <= ALERT_AT + 4, out  # type: ignore[arg-type]
    lines = [json.loads(line) for line in saved.read_text().splitlines()]
    assert any(line.get("alert", {}).get("status") == "firing" for line in lines)
    assert any(line.get("check") == "success-rate" for line in lines)


def test_the_table_is_simulates_table(history: History) -> None:
    h = history
    done = replay(h, h.t0, h.t0 + 10, "--no-alerts", "-o", "table")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0].split() == [
        "t",
        "phase",
        "stage",
        "weight",
        "action",
        "reason",
    ]
    assert done.stdout.splitlines()[-1].startswith("final: ")


def test_a_query_prometheus_refuses_is_exit_2_naming_the_check(
    history: History, tmp_path: Path
) -> None:
    doc = yaml.safe_load(history.policy.read_text())
    doc["checks"]["success-rate"]["query"] = "sum(rate(http_requests_total[{{window}}]"
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(doc))
    h = History(history.prometheus, history.t0, history.fault_at, broken)
    done = replay(h, h.t0, h.t0 + 10)
    assert done.returncode == 2, done.stderr
    assert "Prometheus refused the query of check 'success-rate': bad_data" in done.stderr


def test_an_unreachable_prometheus_is_exit_3_naming_the_check(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{procs.free_port()}"
    argv = ["--policy", "matriz-fast-track", "--prometheus", url, "--label", "job=x"]
    done = subprocess.run(
        [sys.executable, "-m", "canaryd.ctl", "replay", *argv, "--from=-10m", "--to", "now"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=30,
    )
    assert done.returncode == 3, done.stderr
    assert "check 'success-rate'" in done.stderr and "cannot reach Prometheus" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("extra", "said"),
    [
        (["--from", "yesterday", "--to", "now"], "--from: expected RFC 3339"),
        (["--from", "now", "--to=-1h"], "--to must be later than --from"),
        (["--from", "now-1h", "--to", "now", "--step", "0.1"], "more than Prometheus's 11000"),
    ],
)
def test_bad_times_are_exit_2_before_any_query(extra: list[str], said: str) -> None:
    argv = ["--policy", "matriz-fast-track", "--prometheus", "http://127.0.0.1:9", "--label"]
    done = subprocess.run(
        [sys.executable, "-m", "canaryd.ctl", "replay", *argv, "job=x", *extra],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=30,
    )
    assert done.returncode == 2, done.stderr
    assert said in done.stderr


def test_times_read_as_rfc3339_unix_seconds_or_relative_to_now() -> None:
    now = 1_714_564_800.0  # 2024-05-01T12:00:00Z
    assert parse_time("2024-05-01T12:00:00Z", now) == now
    assert parse_time("2024-05-01T14:00:00+02:00", now) == now
    assert parse_time("1714564800", now) == now
    assert parse_time("now", now) == now
    assert parse_time("-30m", now) == now - 1800
    assert parse_time("now-1h30m", now) == now - 5400
    for bad in ("2024-05-01T12:00:00", "soon", "-", ""):
        with pytest.raises(ReplayError):
            parse_time(bad, now)


def test_missing_points_are_no_data_nan_is_no_data_and_two_series_are_an_error() -> None:
    span = Window(100.0, 110.0, 2.0)
    result = RangeResult(
        ResultKind.VALUE,
        (
            RangeSeries(
                {"job": "a", "deployment": "canary"},
                ((100.0, 0.99), (102.0, 0.99), (106.0, float("nan")), (108.0, 0.5)),
            ),
            RangeSeries({"job": "a", "deployment": "stable"}, ((104.0, 1.0),)),
            RangeSeries({"job": "b", "deployment": "canary"}, ((104.0, 1.0),)),
            RangeSeries({"job": "a"}, ((110.0, 1.0),)),
            RangeSeries({"job": "a", "deployment": "canary", "x": "1"}, ((110.0, 1.0),)),
        ),
    )
    lines = list(check_lines("c", result, {"job": "a"}, span))
    assert lines == [
        {"t": 0.0, "check": "c", "value": 0.99},
        {"t": 4.0, "check": "c", "value": None},
        {"t": 8.0, "check": "c", "value": 0.5},
        {"t": 10.0, "check": "c", "error": "ambiguous: 2 series for this target"},
    ]


def test_an_alert_fires_where_its_series_starts_and_resolves_where_it_ends() -> None:
    span = Window(100.0, 110.0, 2.0)
    labels = {"__name__": "ALERTS", "alertname": "X", "alertstate": "firing", "job": "a"}
    series = RangeSeries(labels, ((102.0, 1.0), (104.0, 1.0)))
    other = RangeSeries({**labels, "job": "b"}, ((100.0, 1.0),))
    lines = list(
        alert_lines(RangeResult(ResultKind.AMBIGUOUS, (series, other)), {"job": "a"}, "t", span)
    )
    assert [(line["t"], line["alert"]["status"]) for line in lines] == [
        (2.0, "firing"),
        (6.0, "resolved"),
    ]
    assert lines[0]["alert"]["labels"] == {"alertname": "X", "job": "a"}
    assert lines[0]["alert"]["startsAt"] == "1970-01-01T00:01:42+00:00"


def test_replay_scopes_windows_to_the_replayed_rollouts_age_as_the_daemon_does(
    history: History, tmp_path: Path
) -> None:
    """The rollout is ready at --from: before min_window no data, then until the window is
    full the check's query with its windows clipped to the age, asked at that step."""
    from canaryd.config.policies import load_policy
    from canaryd.core import scope
    from canaryd.offline.replay import queries

    h = history
    start = h.t0 + h.fault_at + 4  # the canary has been bad for 4 s: the full window sees it
    saved = tmp_path / "samples.jsonl"
    records(replay(h, start, start + 12, "--no-alerts", "--save-samples", str(saved)))
    lines = [json.loads(line) for line in saved.read_text().splitlines()]
    success = [line for line in lines if line.get("check") == "success-rate"]
    assert success[0] == {"t": 0.0, "check": "success-rate", "value": None}, success
    policy = load_policy(h.policy)
    query = queries(policy, {"job": JOB}, JOB)["success-rate"]
    for t in (2.0, 4.0, 6.0):
        clipped = scope.scoped(query, t, policy.min_window)
        assert clipped is not None and f"[{t:g}s]" in clipped and "[10s]" not in clipped
        data = urllib.parse.urlencode({"query": clipped, "time": f"{start + t:.3f}"}).encode()
        with urllib.request.urlopen(f"{h.prometheus.url}/api/v1/query", data, timeout=5) as r:
            expected = float(json.load(r)["data"]["result"][0]["value"][1])
        replayed = [line for line in success if line["t"] <= t][-1]["value"]
        assert replayed == pytest.approx(expected), (t, success)
