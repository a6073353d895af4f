"""Ctrl-C in ``canaryd demo``: quiet, exit 130, and nothing it started left running.

A real ``canaryd demo --fast`` runs as a subprocess (real nginx, Prometheus, Alertmanager, the
demo service's processes, canaryd in-process) and is sent SIGINT, as a terminal sends it, once
its progress shows it has reached a given point: while it is still bringing its stack up, and
mid-rollout. Every process it started is collected from ``/proc`` (its descendants) before the
signal; after it exits none of them may be alive (a pid is matched with its start time, so a
reused pid is not mistaken for a survivor).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REACH_TIMEOUT = 120.0  # seconds to reach the point where Ctrl-C is pressed
STOP_TIMEOUT = 60.0  # seconds the demo may take to stop everything after it


def _stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, start time) of a live process; None once it is gone (or a zombie)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    state, ppid, started = fields[0], int(fields[1]), fields[19]
    return None if state in ("Z", "X") else (ppid, started)


def _descendants(root: int) -> dict[int, str]:
    """Every live descendant of ``root``: pid -> start time."""
    parents: dict[int, tuple[int, str]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _stat(int(entry))) is not None:
            parents[int(entry)] = stat
    found: dict[int, str] = {}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, started) in parents.items():
            if ppid == parent and pid not in found:
                found[pid] = started
                frontier.append(pid)
    return found


@pytest.mark.parametrize(
    "marker",
    ["prometheus on", "good v2.0.0: Progressing"],
    ids=["while-starting-the-stack", "mid-rollout"],
)
def test_ctrl_c_stops_the_demo_quietly_with_130_and_leaves_nothing_running(
    tmp_path: Path, marker: str
) -> None:
    demo = subprocess.Popen(
        [sys.executable, "-m", "canaryd.cli", "demo", "--fast", "--dir", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert demo.stdout is not None and demo.stderr is not None
    seen: list[str] = []
    started: dict[int, str] = {}
    try:
        deadline = time.monotonic() + REACH_TIMEOUT
        while not any(marker in line for line in seen):  # readline blocks: bounded by the demo
            line = demo.stdout.readline()
            assert line and time.monotonic() < deadline, f"never reached {marker!r}: {seen}"
            seen.append(line)
        started = _descendants(demo.pid)
        assert len(started) >= 4, started  # nginx, prometheus, alertmanager, the stable service
        demo.send_signal(signal.SIGINT)
        rest, err = demo.communicate(timeout=STOP_TIMEOUT)
        left = _alive(started)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait(10)
        for pid in _alive(started):  # only after a failed run: leave the machine clean
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert demo.returncode == 130, f"exit {demo.returncode}\n{err}"
    assert "Traceback" not in err and "ExceptionGroup" not in err, err
    assert err.strip() == "", err  # a bare newline, so the prompt starts on its own line
    assert "interrupted: stopping canaryd and everything the demo started" in rest
    assert not left, f"still running after Ctrl-C: {left}"


def _alive(started: dict[int, str]) -> set[int]:
    """The pids of ``started`` still running as the same processes (same start time)."""
    return {pid for pid, when in started.items() if (s := _stat(pid)) and s[1] == when}
