"""``canaryd serve`` killed with -9 mid-rollout and restarted never repeats or loses a step.

SPEC §7: "a restart (even ``kill -9``) resumes each rollout at the same stage with its timers
computed from stored timestamps; no step is taken twice, no rollback is lost". Unlike
``test_crash_safety.py`` (the engine and store in a driver script), this kills the real daemon:
HTTP API, controller, workers and store, on the ``noop`` router and ``none`` platform, which
report nothing after a restart, so every incarnation has to re-assert the weight it stored.

Each test loops: spawn ``canaryd serve``, let it run a seeded random 0.2-2.5 s (sometimes only
a few milliseconds, so some kills land while it is still loading), SIGKILL it, read the stored
record, stay down a random moment, respawn on the same config and state, wait for ``/readyz``
and read the record again. Every record read is compared with the previous one (``Witness``):

* it is the same rollout, and its stage index never decreases;
* a stage whose timer had started keeps its ``stage_started_at`` for as long as it is the
  current stage (the timer is resumed, not restarted);
* within a stage the credited analysis time never decreases and grows by at most the time a
  daemon actually ran since the previous read plus one ``interval`` (the one evaluation after a
  restart credits at most an interval of the gap), so downtime never counts as analysis;
* a terminal phase stays what it was.

At the end the decisions table must hold every step exactly once, in order. The first two
tests use stages without checks (nothing to query: the fastest way through the whole serve
loop); the third runs fast-track's success-rate check against a real Prometheus scraping the
demo service, so evaluations, request counts and their schedule cross the restarts too.

``/readyz`` is probed from the moment the process is spawned: it may refuse the connection
(not listening yet) or answer 503 (listening, state still loading), never 200 before the state
is loaded and reconciled. What is asserted is the consequence: right after the first 200 the
API already shows the stored rollout at the stored stage.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from support import procs
from support.servekit import (
    TOKENS,
    Serve,
    TargetSpec,
    start_load,
    stop_process,
    stored_decisions,
    stored_rollout,
    wait_until,
    write_config,
)

ROOT = Path(__file__).resolve().parents[2]

TARGET = "matriz"
IMAGE = "registry.local/matriz:2.0"
WEIGHTS = [10, 25, 50, 100]
MIN_KILLS = 10
OVERALL_TIMEOUT = 150.0
TERMINAL = ("Succeeded", "RolledBack", "Failed")
JOB = "lukhas-matriz-canary"

# Stages without checks pass on credited time alone; the one check exists because a policy
# needs at least one. Nothing listens at the config's Prometheus URL, and nothing asks it.
POLICY = """\
name: crash-quick
interval: 250ms
error_backoff: 250ms
scale_down_delay: 500ms
limits: {progress_deadline: 3m}
checks:
  unused: {query: vector(1), threshold: 0}
stages:
  - {weight: 10, duration: 3s}
  - {weight: 25, duration: 3s}
  - {weight: 50, duration: 3s}
  - {weight: 100, duration: 3s}
"""


def checked_policy() -> str:
    """Fast-track's success-rate on every stage, against real Prometheus: 2 s stages."""
    fast_track = yaml.safe_load((ROOT / "rules" / "matriz-fast-track.yaml").read_text())
    stages = [
        {"weight": w, "duration": "2s", "checks": ["success-rate"], "min_requests": 5}
        for w in WEIGHTS
    ]
    policy = {
        "name": "crash-checked",
        "interval": "500ms",
        "error_backoff": "500ms",
        "window": "10s",
        "scale_down_delay": "500ms",
        "limits": {"progress_deadline": "3m"},
        "checks": {"success-rate": fast_track["checks"]["success-rate"]},
        "stages": stages,
    }
    return yaml.safe_dump(policy, sort_keys=False)


@dataclass
class Read:
    record: dict[str, Any]
    at: float  # time.monotonic() of the read


class Witness:
    """Reads the stored record after every kill and every restart; checks each against the
    previous read (the invariants in the module docstring)."""

    def __init__(self, serve: Serve, target: str) -> None:
        self.serve, self.target = serve, target
        self.last: Read | None = None
        self.reads = 0

    def read(self, what: str) -> dict[str, Any]:
        record = stored_rollout(self.serve.state, self.target)
        assert record is not None, f"{what}: no rollout stored"
        now = time.monotonic()
        if self.last is not None:
            ran = now - max(self.last.at, self.serve.spawned_at)
            self.check(self.last.record, record, ran, what)
        self.last = Read(record, now)
        self.reads += 1
        return record

    def check(self, before: dict[str, Any], after: dict[str, Any], ran: float, what: str) -> None:
        where = (
            f"{what}: stage {before['stage']}→{after['stage']}, {before['phase']}→{after['phase']}"
        )
        assert after["id"] == before["id"], f"{where}: a different rollout"
        assert after["stage"] >= before["stage"], f"{where}: the stage went back"
        if before["phase"] in TERMINAL:
            assert after["phase"] == before["phase"], f"{where}: a terminal phase changed"
        stages = after["policy"]["stages"]
        if after["phase"] == "Progressing":
            weight = stages[after["stage"]]["weight"]
            assert after["weight"] == weight, f"{where}: weight {after['weight']}, not {weight}"
        if after["stage"] != before["stage"] or before["stage_started_at"] is None:
            return
        assert after["stage_started_at"] == before["stage_started_at"], (
            f"{where}: the stage timer restarted "
            f"({before['stage_started_at']} → {after['stage_started_at']})"
        )
        gained = after["credited"] - before["credited"]
        assert gained >= -1e-9, f"{where}: credit went back by {-gained:.3f}s"
        assert gained <= ran + after["policy"]["interval"] + 0.05, (
            f"{where}: {gained:.3f}s credited in {ran:.3f}s of running: downtime was counted"
        )


@dataclass
class Chaos:
    """The kill loop's state: how often it killed, and what it saw of readiness."""

    serve: Serve
    witness: Witness
    rng: random.Random
    kills: int = 0
    early_kills: int = 0
    resumed_mid_stage: int = 0  # restarts that found a stage timer running
    not_ready: Counter[str] = field(default_factory=Counter)  # /readyz before its first 200

    def kill_after(self, seconds: float) -> dict[str, Any]:
        time.sleep(seconds)
        return self.kill_now()

    def kill_now(self) -> dict[str, Any]:
        self.serve.kill()
        self.kills += 1
        return self.witness.read(f"after kill {self.kills}")

    def restart(self) -> dict[str, Any]:
        """Down for a moment, then spawn again (a quarter of the time killing it once more
        while it starts), wait for ``/readyz`` and check that the API already shows the
        stored rollout at least as far as it was stored before the kill."""
        time.sleep(self.rng.uniform(0.0, 1.0))
        self.serve.spawn()
        if self.rng.random() < 0.25:
            self.early_kills += 1
            self.kill_after(self.rng.uniform(0.01, 0.3))
            time.sleep(self.rng.uniform(0.0, 0.3))
            self.serve.spawn()
        answers = self.serve.wait_ready()
        assert set(answers) <= {"refused", "503"}, answers
        self.not_ready.update(answers)
        assert self.witness.last is not None
        stored = self.witness.last.record
        shown = self.serve.rollout(TARGET)
        assert shown is not None and shown["id"] == stored["id"], shown
        assert shown["stage"] >= stored["stage"] + 1, (
            f"ready before the stored state was loaded: API {shown}, stored {stored}"
        )
        if shown["stage"] == stored["stage"] + 1 and stored["stage_started_at"] is not None:
            assert shown["stage_started_at_unix"] == stored["stage_started_at"], (shown, stored)
            if stored["phase"] == "Progressing":
                self.resumed_mid_stage += 1
        return self.witness.read(f"after restart {self.kills}")

    def run_until(self, done: Callable[[dict[str, Any]], bool], minimum: int) -> dict[str, Any]:
        """Kill at random moments until ``done`` holds of a record read and ``minimum`` kills."""
        deadline = time.monotonic() + OVERALL_TIMEOUT
        record = self.witness.read("before the kills")
        while not (done(record) and self.kills >= minimum):
            assert time.monotonic() < deadline, (
                f"not finished after {OVERALL_TIMEOUT:g}s and {self.kills} kills: {record}"
            )
            record = self.kill_after(self.rng.uniform(0.2, 2.5))
            record = self.restart()
        return record


def configure(tmp_path: Path, policy: str = POLICY, prometheus_url: str | None = None) -> Serve:
    """One target on ``policy``; nothing runs yet."""
    (tmp_path / "policy.yaml").write_text(policy)
    labels = {"job": JOB} if prometheus_url else {}
    target = TargetSpec(TARGET, "policy.yaml", labels)
    return Serve(write_config(tmp_path, [target], prometheus_url=prometheus_url))


def begin(serve: Serve, seed: int) -> tuple[Chaos, str]:
    """Start the daemon and a rollout; the kill loop's state, and the rollout's id."""
    serve.start()
    rollout = serve.start_rollout(TARGET, IMAGE)
    return Chaos(serve, Witness(serve, TARGET), random.Random(seed)), str(rollout["id"])


def finish(serve: Serve, done: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """The last incarnation runs until ``done``, then stops cleanly with exit 0."""
    final = wait_until(
        lambda: stored_rollout(serve.state, TARGET) or {}, done, 60, "the rollout to finish"
    )
    code = serve.stop()
    assert code == 0, f"canaryd exited {code}:\n{serve.tail()}"
    return final


def once_each(decisions: list[dict[str, Any]], action: str) -> list[int]:
    """The stages (1-based) of every ``action`` decision, asserting no stage has two."""
    stages = [d["stage"] for d in decisions if d["action"] == action]
    repeated = [s for s, n in Counter(stages).items() if n > 1]
    assert not repeated, f"{action} repeated in stages {repeated}: {describe(decisions)}"
    return stages


def describe(decisions: list[dict[str, Any]]) -> str:
    return "\n".join(
        f"  {d['seq']:>4} {d['phase']:<12} {d['stage']} {d['weight']:>3}% {d['action']:<14} "
        f"{d['reason']}"
        for d in decisions
    )


def test_serve_killed_at_random_moments_resumes_each_stage_and_never_repeats_a_step(
    tmp_path: Path,
) -> None:
    serve = configure(tmp_path)
    try:
        chaos, rollout_id = begin(serve, seed=20240917)
        chaos.run_until(lambda r: r["phase"] in TERMINAL, MIN_KILLS)
        final = finish(serve, lambda r: r.get("phase") in TERMINAL)
    finally:
        serve.stop()

    decisions = stored_decisions(serve.state, rollout_id)
    assert final["phase"] == "Succeeded" and final["weight"] == 0, describe(decisions)
    assert chaos.kills >= MIN_KILLS and chaos.resumed_mid_stage > 0, chaos
    assert once_each(decisions, "stage-started") == [1, 2, 3, 4]
    set_weights = [d["weight"] for d in decisions if d["action"] == "set-weight"]
    assert set_weights == [*WEIGHTS, 0], describe(decisions)  # 0: promoted, traffic to stable
    assert [d["action"] for d in decisions] == [
        "start",
        *["set-weight", "stage-started"] * len(WEIGHTS),
        "promote", "set-weight", "remove-canary", "succeeded",
    ], describe(decisions)  # fmt: skip


def test_a_rollback_acknowledged_just_before_a_kill_is_never_lost_or_repeated(
    tmp_path: Path,
) -> None:
    serve = configure(tmp_path)
    reason = "p95 doubled on the canary"
    try:
        chaos, rollout_id = begin(serve, seed=7321)
        # Up to stage 3 (50 %) through kills, then a rollback and a kill right after its 200.
        chaos.run_until(lambda r: r["stage"] >= 2 and r["stage_started_at"] is not None, 3)
        status, body = serve.call(
            "POST", f"/api/v1/targets/{TARGET}/rollback", {"reason": reason},
            token=TOKENS["operator"],
        )  # fmt: skip
        assert status == 200, (status, body)
        killed = chaos.kill_now()
        assert killed["phase"] in ("RollingBack", "RolledBack"), killed
        assert killed["weight"] == 0 and reason in killed["rollback_reason"], killed
        chaos.restart()
        chaos.run_until(lambda r: r["phase"] == "RolledBack" and r["cleanup_at"] is None, MIN_KILLS)
        shown = serve.rollout(TARGET)
        final = finish(serve, lambda r: r.get("phase") == "RolledBack" and not r["cleanup_at"])
    finally:
        serve.stop()

    decisions = stored_decisions(serve.state, rollout_id)
    actions = [d["action"] for d in decisions]
    assert final["phase"] == "RolledBack" and final["weight"] == 0, describe(decisions)
    assert shown is not None and (shown["phase"], shown["weight"]) == ("RolledBack", 0)
    assert actions.count("rollback") == 1 and actions.count("rolled-back") == 1, actions
    rollback = next(d for d in decisions if d["action"] == "rollback")
    assert rollback["reason"] == f"manual rollback by operator-user: {reason}"
    assert rollback["stage"] >= 3 and rollback["weight"] == 0
    before, after = decisions[: decisions.index(rollback)], decisions[decisions.index(rollback) :]
    assert once_each(before, "stage-started") == list(range(1, rollback["stage"] + 1))
    assert [d["weight"] for d in before if d["action"] == "set-weight"] == WEIGHTS[
        : rollback["stage"]
    ]
    assert [d["action"] for d in after] == ["rollback", "rolled-back", "remove-canary"], describe(
        decisions
    )
    assert "promote" not in actions and "succeeded" not in actions


def test_with_checks_against_real_prometheus_killed_serve_resumes_its_evaluations(
    tmp_path: Path, prometheus: Any, demo_service: Any
) -> None:
    stable = demo_service(version="v1", deployment="stable")
    canary = demo_service(version="v2", deployment="canary")
    loads = [
        start_load(f"{s.url}/", 20, 120, tmp_path / f"load-{s.name}.log") for s in (stable, canary)
    ]
    prom = prometheus({JOB: [f"127.0.0.1:{s.port}" for s in (stable, canary)]})
    serve = configure(tmp_path, checked_policy(), prom.url)
    try:
        procs.wait_for_up(prom, JOB, 2)
        time.sleep(2)  # two scrapes of each inside the window: rate() has data
        chaos, rollout_id = begin(serve, seed=99)
        chaos.run_until(lambda r: r["phase"] in TERMINAL, 5)
        final = finish(serve, lambda r: r.get("phase") in TERMINAL)
    finally:
        serve.stop()
        for load in loads:
            stop_process(load)

    decisions = stored_decisions(serve.state, rollout_id)
    assert final["phase"] == "Succeeded", describe(decisions)
    assert once_each(decisions, "stage-started") == [1, 2, 3, 4]
    assert [d["action"] for d in decisions if d["action"] != "hold"] == [
        "start",
        *["set-weight", "stage-started"] * len(WEIGHTS),
        "promote", "set-weight", "remove-canary", "succeeded",
    ], describe(decisions)  # fmt: skip
