"""`canaryctl simulate` on the shipped fast-track policy: the issue's acceptance scenarios."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
INTERVAL = 30


def even_sides() -> list[dict[str, object]]:
    """The compare checks' counters of a canary exactly like stable, sent by the weight the
    simulated router has (``by_weight``): 1,000 requests per interval in all, one error in a
    thousand on each side, the same latency histogram."""
    n = 1000 / INTERVAL
    side = {"requests": n, "errors": n / 1000}
    buckets = {"buckets": {"0.1": n * 0.6, "0.25": n * 0.95, "+Inf": n}}
    common = {"t": 0, "per_second": True, "by_weight": True}
    return [
        {**common, "check": "errors-vs-stable", "canary": side, "stable": side},
        {**common, "check": "latency-vs-stable", "canary": buckets, "stable": buckets},
    ]


HEALTHY = [
    {"t": 0, "check": "success-rate", "value": 0.999},
    {"t": 0, "check": "latency-p95", "value": 0.18},
    {"t": 0, "check": "error-rate", "value": 0.0004},
    {"t": 0, "check": "health-score", "value": 0.993},
    *even_sides(),
]


def simulate(
    tmp_path: Path, lines: list[dict[str, object]], *extra: str
) -> list[dict[str, object]]:
    samples = tmp_path / "samples.jsonl"
    samples.write_text("".join(json.dumps(line) + "\n" for line in lines))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "canaryd.ctl",
            "simulate",
            "--policy",
            str(ROOT / "rules/matriz-fast-track.yaml"),
            "--samples",
            str(samples),
            "-o",
            "json",
            *extra,
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    records: list[dict[str, object]] = json.loads(done.stdout)
    return records


def run_ctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "canaryd.ctl", *args], capture_output=True, text=True, cwd=ROOT
    )


def weight_changes(records: list[dict[str, object]]) -> list[tuple[float, object]]:
    changes, last = [], None
    for r in records:
        if r["weight"] != last:
            changes.append((float(r["t"]), r["weight"]))  # type: ignore[arg-type]
            last = r["weight"]
    return changes


def test_healthy_canary_moves_through_every_stage_on_time_and_succeeds(tmp_path: Path) -> None:
    records = simulate(tmp_path, HEALTHY)
    rising = [(t, w) for t, w in weight_changes(records) if w != 0]
    assert [w for _, w in rising] == [10, 25, 50, 100]
    for (t, _), expected in zip(rising, [0, 120, 420, 1020], strict=True):
        assert abs(t - expected) <= INTERVAL
    assert records[-1]["phase"] == "Succeeded"


def test_counts_that_do_not_follow_the_weights_hold_and_roll_back_naming_the_share(
    tmp_path: Path,
) -> None:
    """The same counters fixed at 10 % canary (not ``by_weight``): the verified split of the
    shipped policy sees a quarter asked and a tenth served, holds stage 2 and rolls it back at
    the deadline, naming the share."""
    fixed = [
        {**line, "per_second": True, "by_weight": False}
        | {"canary": _scaled(line["canary"], 0.1), "stable": _scaled(line["stable"], 0.9)}
        for line in even_sides()
    ]
    records = simulate(tmp_path, [*HEALTHY[:4], *fixed])
    holds = [r for r in records if r["action"] == "hold" and r["stage"] == 2]
    assert holds and "split off: canary received 10.0% of requests, asked 25%" in str(
        holds[0]["reason"]
    )
    rollback = next(r for r in records if r["action"] == "rollback")
    assert records[-1]["phase"] == "RolledBack" and "progress deadline" in str(rollback["reason"])
    assert "canary received 10.0% of requests, asked 25% (tolerance ±3" in str(rollback["reason"])


def _scaled(side: object, share: float) -> dict[str, object]:
    assert isinstance(side, dict)
    if "buckets" in side:
        return {"buckets": {k: v * share for k, v in side["buckets"].items()}}
    return {k: v * share for k, v in side.items()}


def test_success_rate_dropping_at_200_rolls_back_within_one_interval(tmp_path: Path) -> None:
    records = simulate(tmp_path, [*HEALTHY, {"t": 200, "check": "success-rate", "value": 0.98}])
    last = records[-1]
    assert last["phase"] == "RolledBack"
    assert last["weight"] == 0
    rollback = next(r for r in records if r["action"] == "rollback")
    assert 200 <= float(rollback["t"]) <= 200 + INTERVAL  # type: ignore[arg-type]
    assert "success-rate" in str(rollback["reason"])
    assert not any(r["phase"] == "Succeeded" for r in records)


def test_all_null_samples_never_succeed(tmp_path: Path) -> None:
    nulls = [{"t": 0, "check": line["check"], "value": None} for line in HEALTHY]
    records = simulate(tmp_path, nulls, "--until", "5000")
    assert not any(r["phase"] in ("Succeeded", "Promoting") for r in records)
    assert max(int(r["weight"]) for r in records) == 10  # type: ignore[call-overload]
    assert records[-1]["action"] == "pause"


def test_no_samples_at_all_never_succeed(tmp_path: Path) -> None:
    records = simulate(tmp_path, [], "--until", "5000")
    assert not any(r["phase"] == "Succeeded" for r in records)


def test_firing_critical_alert_at_100_rolls_back_at_100_exactly(tmp_path: Path) -> None:
    alert = {"status": "firing", "labels": {"alertname": "MatrizDown", "severity": "critical"}}
    records = simulate(tmp_path, [*HEALTHY, {"t": 100, "alert": alert}])
    rollback = next(r for r in records if r["action"] == "rollback")
    assert rollback["t"] == 100
    assert records[-1] == {**records[-1], "t": 100, "phase": "RolledBack", "weight": 0}


def test_alert_that_started_before_the_rollout_is_ignored(tmp_path: Path) -> None:
    alert = {
        "status": "firing",
        "labels": {"severity": "critical"},
        "startsAt": "1969-12-31T23:59:00Z",
    }
    records = simulate(tmp_path, [*HEALTHY, {"t": 100, "alert": alert}])
    assert records[-1]["phase"] == "Succeeded"
    assert any(r["action"] == "ignore" and r["t"] == 100 for r in records)


def test_too_few_canary_requests_hold_the_stage(tmp_path: Path) -> None:
    records = simulate(tmp_path, [*HEALTHY, {"t": 0, "requests": 0.1}])
    assert not any(
        r["weight"] == 25 and r["phase"] == "Progressing" and float(r["t"]) < 900 for r in records
    )  # type: ignore[arg-type]
    holds = [r for r in records if r["action"] == "hold" and r["stage"] == 1]
    # the first evaluation takes the compare checks' baseline (no data yet); then only requests
    assert "no data for errors-vs-stable" in str(holds[0]["reason"])
    assert holds[1:] and all("canary requests" in str(r["reason"]) for r in holds[1:])
    assert records[-1]["phase"] != "Succeeded"


def test_enough_requests_arriving_later_let_the_stage_pass(tmp_path: Path) -> None:
    records = simulate(tmp_path, [*HEALTHY, {"t": 0, "requests": 0}, {"t": 150, "requests": 10}])
    advance = next(r for r in records if r["weight"] == 25)
    assert float(advance["t"]) >= 150 + 10  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "bad", ['{"t": "soon"}', '{"t": 1, "check": "x", "value": "high"}', "not json", '{"t": 1}']
)
def test_a_bad_samples_line_is_named_and_exits_2(tmp_path: Path, bad: str) -> None:
    samples = tmp_path / "bad.jsonl"
    samples.write_text('{"t": 0, "requests": 5}\n' + bad + "\n")
    done = run_ctl("simulate", "--policy", "matriz-fast-track", "--samples", str(samples))
    assert done.returncode == 2
    assert f"{samples}:2:" in done.stderr


def test_table_output_ends_with_the_final_phase(tmp_path: Path) -> None:
    samples = tmp_path / "s.jsonl"
    samples.write_text("".join(json.dumps(line) + "\n" for line in HEALTHY))
    done = run_ctl("simulate", "--policy", "matriz-fast-track", "--samples", str(samples))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1].startswith("final: Succeeded")


def test_manual_gates_wait_for_promote_commands(tmp_path: Path) -> None:
    samples = tmp_path / "gated.jsonl"
    samples.write_text("".join(json.dumps(line) + "\n" for line in HEALTHY))
    cmd = [
        sys.executable,
        "-m",
        "canaryd.ctl",
        "simulate",
        "--policy",
        "matriz-conservative",
        "--samples",
        str(samples),
        "-o",
        "json",
    ]
    waiting = json.loads(
        subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT).stdout
    )
    assert waiting[-1]["phase"] == "Paused" and "manual promote" in waiting[-1]["reason"]
    assert waiting[-1]["t"] == 600 + 60  # 10 min of credit after the baseline evaluation
    with samples.open("a") as f:
        for t in (700, 1700, 3000):
            f.write(json.dumps({"t": t, "command": "promote"}) + "\n")
    done = json.loads(
        subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT).stdout
    )
    assert done[-1]["phase"] == "Succeeded"
