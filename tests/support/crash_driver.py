"""Drive one simulated rollout through the real engine and the SQLite store, and be killable.

``tests/runtime/test_crash_safety.py`` runs this script as a subprocess and kills it
(``--crash-at N`` makes it SIGKILL itself at its Nth crash point; the test also kills it from
outside), restarts it, and checks that the history it leaves is the one an uninterrupted run
leaves (SPEC §7).

It is the daemon's loop in miniature: ``simulate.settle`` runs decide → persist → reconcile →
apply at each instant of a virtual clock; persist is ``SqliteStore.commit`` (durable before any
effect), and the world is a fake router/platform kept in files, so that it survives the kill
like a real router would. Everything lives in ``--dir``:

    state.db     the SqliteStore: rollout record, decisions, measurements
    world.json   the fake router and platform (canary weight, canary present, stable image),
                 replaced atomically (temp file + ``os.replace``) after each effect
    effects.log  append-only, one JSON line per effect, written *before* the effect is applied
                 (a kill in between repeats the effect on resume: a consecutive duplicate, never
                 a gap)
    clock.json   the virtual clock: the instant being settled and whether settling it finished

Resume rule. The rollout comes from the store (or is started and committed if there is none).
The instant comes from ``clock.json``: if it was not settled, settle it again at the same
instant, which is idempotent (evaluations are consumed through ``next_eval_at`` and alerts
through ``handled_alerts`` in the committed record; effects are level-triggered); then carry on
exactly as ``simulate.run`` does, from ``stages.next_wakeup`` and the timeline's event times.
The daemon needs no such file: its clock is the wall clock. The driver owns a virtual one, so
it must persist it; it is written before any commit of the instant, and checked against the
store's last decision on resume.

``--outage-at T`` makes the fake platform lose the canary, and the router fall back to stable,
once, as instant T begins (recorded in ``world.json`` so a resumed run does not repeat it): the
engine does not decide anything about it, reconcile repairs it with two effects in one pass.

Timeline commands are refused: the daemon acknowledges an operator's command only after its
commit, so a command is at most once by design, and a replayed timeline has no acknowledgement
to consult.

Crash points: before and after the start commit, at the start and end of each instant, before
and after each commit, and after each effect is logged and after it is applied.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from canaryd.adapters.store.sqlite import SqliteStore
from canaryd.config.policies import load_policy, resolve
from canaryd.core import stages
from canaryd.core.model import Action, Effect, Measurement, Rollout
from canaryd.offline import simulate

ROLLOUT_ID = "matriz-crash-1"
TARGET = "matriz"
IMAGE = "registry.local/matriz:2.0"
_EPS = 1e-9


class Crasher:
    """Counts crash points and SIGKILLs this very process at the chosen one."""

    def __init__(self, crash_at: int | None) -> None:
        self.crash_at = crash_at
        self.passed: list[str] = []

    def point(self, where: str) -> None:
        self.passed.append(where)
        if len(self.passed) == self.crash_at:
            print(f"crash point {len(self.passed)}: {where}", file=sys.stderr, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)


def write_atomically(path: Path, data: Any) -> None:
    temp = path.with_name(path.name + ".tmp")
    temp.write_text(json.dumps(data), encoding="utf-8")
    os.replace(temp, path)


class FileWorld(simulate.World):
    """``simulate.World`` whose state survives a kill: the fake router and platform."""

    def __init__(self, directory: Path, crash: Crasher) -> None:
        self._file = directory / "world.json"
        self._log = directory / "effects.log"
        self._crash = crash
        saved = json.loads(self._file.read_text(encoding="utf-8")) if self._file.exists() else {}
        self.outages: list[float] = saved.pop("outages", [])
        weights = [(float(t), int(w)) for t, w in saved.pop("weights", [])]
        super().__init__(**saved, weights=weights)

    def save(self) -> None:
        write_atomically(
            self._file,
            {
                "stable_image": self.stable_image,
                "weight": self.weight,
                "canary_present": self.canary_present,
                "outages": self.outages,
                "weights": self.weights,  # what the timeline's by_weight lines split by
            },
        )

    def note(self, now: float) -> None:
        before = len(self.weights)
        super().note(now)
        if len(self.weights) != before:
            self.save()

    def outage(self, now: float) -> None:
        """The canary's node dies and the router falls back to stable, once at ``now``."""
        if now in self.outages:
            return
        self.outages.append(now)
        self.canary_present, self.weight = False, 0
        self.save()

    def apply(self, effects: Iterable[Effect]) -> None:
        todo = list(effects)
        for number, effect in enumerate(todo, start=1):
            name = f"effect {number}/{len(todo)} {effect.kind}"
            entry = {"kind": str(effect.kind), "weight": effect.weight, "image": effect.image}
            fd = os.open(self._log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, (json.dumps(entry) + "\n").encode())  # one write: a whole line
            finally:
                os.close(fd)
            self._crash.point(f"{name} logged, not applied")
            super().apply((effect,))
            self.save()
            self._crash.point(f"{name} applied")


class Driver:
    def __init__(self, args: argparse.Namespace) -> None:
        self.dir = Path(args.dir)
        self.crash = Crasher(args.crash_at)
        self.pace: float = args.pace
        self.traffic: int | None = args.traffic
        self.outage_at: float | None = args.outage_at
        self.policy = load_policy(resolve(args.policy))
        with Path(args.samples).open(encoding="utf-8") as source:
            self.timeline = simulate.Timeline.parse(source, args.samples)
        if self.timeline.commands:
            raise SystemExit(f"{args.samples}: commands cannot be replayed safely (see docstring)")
        self.store = SqliteStore(self.dir / "state.db")
        self.world = FileWorld(self.dir, self.crash)
        self.clock = self.dir / "clock.json"

    # ------------------------------------------------------------------- one instant

    def persist(
        self,
        state: Rollout,
        actions: tuple[Action, ...],
        now: float,
        measurements: Sequence[Measurement],
    ) -> None:
        where = f"t={now:g} {'+'.join(str(a.kind) for a in actions) or 'timers'}"
        self.crash.point(f"{where}: before commit")
        self.store.commit(state, actions, now, measurements)
        self.crash.point(f"{where}: committed, effects not applied")

    def settle(self, state: Rollout, now: float) -> Rollout:
        write_atomically(self.clock, {"t": now, "settled": False})
        self.crash.point(f"t={now:g}: settling")
        if self.pace:
            time.sleep(self.pace)
        if self.outage_at is not None and abs(now - self.outage_at) < _EPS:
            self.world.outage(now)
        findings = self.timeline.findings_at(now)
        state = simulate.settle(state, self.world, self.timeline, now, self.persist, findings)
        write_atomically(self.clock, {"t": now, "settled": True})
        self.crash.point(f"t={now:g}: settled")
        return state

    # ------------------------------------------------------------------- the run

    def resume(self) -> tuple[Rollout, float]:
        state = self.store.get(ROLLOUT_ID)
        if state is None:
            state, first = stages.start(ROLLOUT_ID, TARGET, IMAGE, self.policy, 0.0, self.traffic)
            self.crash.point("before the start commit")
            self.store.commit(state, (first,), 0.0)
            self.crash.point("start committed")
        clock = (
            json.loads(self.clock.read_text(encoding="utf-8"))
            if self.clock.exists()
            else {"t": 0.0, "settled": False}
        )
        now = float(clock["t"])
        history = self.store.history(rollout_id=ROLLOUT_ID)
        if history and history[-1]["t"] > now + _EPS:
            raise SystemExit(f"clock at {now:g} but a decision was committed at {history[-1]}")
        if not clock["settled"]:
            state = self.settle(state, now)
        return state, now

    def run(self) -> tuple[Rollout, float]:
        state, now = self.resume()
        end = simulate.default_until(state.policy)
        events = self.timeline.event_times()
        while not (state.phase.terminal and state.cleanup_at is None):
            wake = stages.next_wakeup(state)
            upcoming = [t for t in events if t > now + _EPS]
            if simulate.waits_for_human(state) and not upcoming:
                break
            candidates = [t for t in (wake, upcoming[0] if upcoming else None) if t is not None]
            if not candidates:
                break
            now = max(min(candidates), now)
            if now > end + _EPS:
                break
            state = self.settle(state, now)
        return state, now


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", required=True, help="directory for the store, world and clock")
    parser.add_argument("--samples", required=True, help="JSON-lines timeline")
    parser.add_argument("--policy", default="matriz-fast-track")
    parser.add_argument("--traffic", type=int)
    parser.add_argument("--crash-at", type=int, help="SIGKILL self at this crash point (1-based)")
    parser.add_argument(
        "--outage-at", type=float, help="at this instant the canary dies and the router resets"
    )
    parser.add_argument("--pace", type=float, default=0.0, help="wall seconds slept per instant")
    args = parser.parse_args(argv)
    driver = Driver(args)
    state, now = driver.run()
    driver.store.close()
    summary = {
        "crash_points": driver.crash.passed,  # their names, in order
        "t": now,
        "phase": str(state.phase),
        "weight": state.weight,
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
