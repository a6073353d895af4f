"""kill -9 the engine and its store anywhere; the rollout's history must not notice (SPEC §7).

``crash_driver.py`` runs a simulated rollout through the real engine, ``SqliteStore`` and a fake
router kept in files. Each scenario is run once without interruption (the reference), then
killed at every crash point the driver has (or a spread of them, for the long promotion) and at
random wall-clock moments from outside, restarted until it finishes, and compared with the
reference: the same decisions (no step taken twice, no rollback lost), the same measurements,
the same final phase and weight, and the same effects on the router (a kill between logging an
effect and applying it repeats that effect once, so consecutive duplicates are folded).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from canaryd.adapters.store.sqlite import SqliteStore
from canaryd.config.policies import load_policy, resolve
from canaryd.offline import simulate

ROOT = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).resolve().parents[1] / "support" / "crash_driver.py"
TARGET = "matriz"  # crash_driver.TARGET
POLICY = "matriz-fast-track"
KILLED = -signal.SIGKILL
WORKERS = (os.cpu_count() or 1) + 1  # the driver spends part of its life in fsync
STARTUP_SECONDS = 0.1  # the driver's imports, before its first crash point
RUN_SECONDS = 0.3  # how long a paced run lasts after start-up


@dataclass(frozen=True)
class Scenario:
    samples: str
    final_phase: str
    options: tuple[str, ...] = ()
    every_point: bool = True  # else all eventful points and every 4th routine one


SCENARIOS = {
    "rolled-back-by-a-check-after-an-outage": Scenario(
        "degrading.jsonl", "RolledBack", ("--outage-at", "150")
    ),
    "rolled-back-by-a-critical-alert": Scenario("critical-alert.jsonl", "RolledBack"),
    "promoted": Scenario("healthy.jsonl", "Succeeded", every_point=False),
}


@dataclass(frozen=True)
class Outcome:
    decisions: tuple[tuple[Any, ...], ...]
    measurements: tuple[tuple[Any, ...], ...]
    effects: tuple[str, ...]
    phase: str
    weight: int
    world: tuple[tuple[str, Any], ...]


@dataclass(frozen=True)
class Reference:
    outcome: Outcome
    points: tuple[str, ...]


def drive(
    directory: Path, scenario: Scenario, *extra: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(DRIVER), *command(directory, scenario), *extra],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def command(directory: Path, scenario: Scenario) -> list[str]:
    samples = ROOT / "examples" / scenario.samples
    return [
        "--dir",
        str(directory),
        "--samples",
        str(samples),
        "--policy",
        POLICY,
        *scenario.options,
    ]


def finish(directory: Path, scenario: Scenario) -> dict[str, Any]:
    """Restart the driver without crashing it; it must finish on the first try."""
    done = drive(directory, scenario)
    assert done.returncode == 0, done.stderr
    summary: dict[str, Any] = json.loads(done.stdout)
    return summary


def outcome(directory: Path) -> Outcome:
    with SqliteStore(directory / "state.db") as store:
        rollout = store.latest_for_target(TARGET)
        assert rollout is not None
        decisions = tuple(
            (d["t"], d["phase"], d["stage"], d["weight"], d["action"], d["reason"], d["evidence"])
            for d in store.history(rollout_id=rollout.id)
        )
        measurements = tuple(
            (m["t"], m["check"], m["value"], m["error"]) for m in store.measurements(rollout.id)
        )
    effects: list[str] = []
    for line in read(directory / "effects.log", "").splitlines():
        if not effects or effects[-1] != line:
            effects.append(line)
    world = json.loads(read(directory / "world.json", "{}"))
    return Outcome(
        decisions=tuple((*d[:-1], json.dumps(d[-1], sort_keys=True)) for d in decisions),
        measurements=measurements,
        effects=tuple(effects),
        phase=str(rollout.phase),
        weight=rollout.weight,
        world=tuple(sorted((k, json.dumps(v)) for k, v in world.items())),
    )


def read(path: Path, missing: str) -> str:
    return path.read_text(encoding="utf-8") if path.exists() else missing


def differences(got: Outcome, want: Outcome) -> list[str]:
    found = []
    for name in Outcome.__dataclass_fields__:
        if getattr(got, name) != getattr(want, name):
            found.append(f"{name}: {getattr(got, name)!r} != {getattr(want, name)!r}")
    return found


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Reference]:
    cache: dict[str, Reference] = {}

    def get(name: str) -> Reference:
        if name not in cache:
            directory = tmp_path_factory.mktemp(f"reference-{name}")
            summary = finish(directory, SCENARIOS[name])
            cache[name] = Reference(outcome(directory), tuple(summary["crash_points"]))
        return cache[name]

    return get


def chosen_points(scenario: Scenario, points: tuple[str, ...]) -> Iterator[int]:
    routine = 0
    for number, name in enumerate(points, start=1):
        if scenario.every_point or not ("timers" in name or name.endswith(("settling", "settled"))):
            yield number
            continue
        routine += 1
        if routine % 4 == 1:
            yield number


# --------------------------------------------------------------------------- the reference


@pytest.mark.parametrize("name", SCENARIOS)
def test_an_uninterrupted_run_decides_what_the_simulator_decides(
    name: str, reference: Callable[[str], Reference]
) -> None:
    scenario, ref = SCENARIOS[name], reference(name).outcome
    policy = load_policy(resolve(POLICY))
    with (ROOT / "examples" / scenario.samples).open(encoding="utf-8") as source:
        timeline = simulate.Timeline.parse(source)
    image = json.loads(ref.effects[0])["image"]
    final, records = simulate.run(policy, timeline, image=image)
    simulated = [(r.t, r.phase, r.stage, r.weight, r.action, r.reason) for r in records]
    recorded = [d[:6] for d in ref.decisions]

    assert recorded[: len(simulated)] == simulated
    # the driver also waits out the scale-down delay of a rolled-back canary
    assert [d[4] for d in recorded[len(simulated) :]] == (
        ["remove-canary"] if final.phase == "RolledBack" else []
    )
    assert ref.phase == scenario.final_phase == final.phase
    assert ref.weight == 0
    assert dict(ref.world)["weight"] == "0"
    assert dict(ref.world)["canary_present"] == "false"
    assert ref.measurements, "evaluations are recorded with their measurements"


# --------------------------------------------------------------------------- kills


@pytest.mark.parametrize("name", SCENARIOS)
def test_a_kill_at_any_crash_point_leaves_the_history_of_an_uninterrupted_run(
    name: str, reference: Callable[[str], Reference], tmp_path: Path
) -> None:
    scenario, ref = SCENARIOS[name], reference(name)

    def crash_and_resume(number: int) -> list[str]:
        directory = tmp_path / f"crash-{number}"
        directory.mkdir()
        crashed = drive(directory, scenario, "--crash-at", str(number))
        label = f"kill at point {number} ({ref.points[number - 1]})"
        if crashed.returncode != KILLED:
            return [f"{label}: driver exited {crashed.returncode}: {crashed.stderr[-500:]}"]
        resumed = drive(directory, scenario)
        if resumed.returncode != 0:
            return [f"{label}: resume exited {resumed.returncode}: {resumed.stderr[-500:]}"]
        return [f"{label}: {d}" for d in differences(outcome(directory), ref.outcome)]

    numbers = list(chosen_points(scenario, ref.points))
    with ThreadPoolExecutor(WORKERS) as pool:
        failures = [f for found in pool.map(crash_and_resume, numbers) for f in found]

    assert len(numbers) >= 30
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("name", SCENARIOS)
def test_a_recovery_that_is_itself_killed_still_converges(
    name: str, reference: Callable[[str], Reference], tmp_path: Path
) -> None:
    # life n is killed at its own nth crash point: every restart dies inside its recovery
    scenario, ref = SCENARIOS[name], reference(name)
    lives = 0
    for life in range(1, len(ref.points) + 1):
        lives = life
        if drive(tmp_path, scenario, "--crash-at", str(life)).returncode == 0:
            break
    else:
        pytest.fail("the driver never finished")

    assert lives > 3
    assert differences(outcome(tmp_path), ref.outcome) == []


@pytest.mark.parametrize("name", SCENARIOS)
def test_kills_from_outside_at_random_moments_leave_the_same_history(
    name: str, reference: Callable[[str], Reference], tmp_path: Path
) -> None:
    scenario, ref = SCENARIOS[name], reference(name)
    rng = random.Random(f"kill -9 {name}")
    # sleep at each instant so that a run lasts about RUN_SECONDS after start-up
    instants = sum(point.endswith("settling") for point in ref.points)
    pace = RUN_SECONDS / instants

    def run_killing(directory: Path, lives: int) -> int:
        """Start and kill the driver up to ``lives`` times; how many kills hit a live run."""
        landed = 0
        for _ in range(lives):
            process = subprocess.Popen(
                [sys.executable, str(DRIVER), *command(directory, scenario), "--pace", str(pace)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                cwd=ROOT,
            )
            time.sleep(rng.uniform(STARTUP_SECONDS, STARTUP_SECONDS + 0.8 * RUN_SECONDS))
            process.send_signal(signal.SIGKILL)
            _, stderr = process.communicate(timeout=60)
            if process.returncode != KILLED:
                assert process.returncode == 0, stderr.decode()
                break  # finished before the kill: nothing left to interrupt
            landed += 1
        return landed

    directories = [tmp_path / f"run-{n}" for n in range(2)]
    landed = 0
    for directory in directories:
        directory.mkdir()
        landed += run_killing(directory, lives=6)
        finish(directory, scenario)

    # a fresh paced run outlives the kill window, so at least each first kill lands
    assert landed >= len(directories)
    for directory in directories:
        assert differences(outcome(directory), ref.outcome) == []
