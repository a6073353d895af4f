"""The verify commands run for real (issue 13 point 2): scripts written by the test that pass,
fail, hang, print megabytes, fork children, or do not exist. No shell is involved, a hung
command is killed with its whole process group, output is kept bounded, and the event loop
keeps running throughout."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from canaryd.adapters.verify import OUTPUT_KEPT, CommandVerifier

IMAGE = "registry.example/matriz@sha256:" + "cd" * 32


def script(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text(f"#!{sys.executable}\n{body}")
    path.chmod(0o755)
    return str(path)


async def test_a_command_that_exits_zero_passes_and_sees_the_image(tmp_path: Path) -> None:
    ok = script(
        tmp_path,
        "ok",
        "import sys\nprint('verified', sys.argv[1:])\nprint('note', file=sys.stderr)",
    )
    verdict = await CommandVerifier([[ok, "--key", "k.pub", "{image}"]], timeout=30)(IMAGE)
    assert verdict.passed and verdict.summary == "1 verify command passed"
    (only,) = verdict.evidence["commands"]  # type: ignore[misc]
    assert only["argv"] == [ok, "--key", "k.pub", IMAGE] and only["exit_code"] == 0
    assert only["stdout"] == f"verified ['--key', 'k.pub', '{IMAGE}']\n"
    assert only["stderr"] == "note\n"


async def test_the_first_failing_command_fails_it_and_the_rest_do_not_run(tmp_path: Path) -> None:
    ran = tmp_path / "ran"
    ok = script(tmp_path, "ok", "")
    bad = script(
        tmp_path, "bad", "import sys\nprint('no signatures found', file=sys.stderr)\nsys.exit(3)"
    )
    never = script(tmp_path, "never", f"open({str(ran)!r}, 'w').close()")
    verdict = await CommandVerifier([[ok, "{image}"], [bad, "{image}"], [never]], timeout=30)(IMAGE)
    assert not verdict.passed
    assert verdict.summary == f"{bad} exited with code 3"
    commands = verdict.evidence["commands"]
    assert [c["exit_code"] for c in commands] == [0, 3]  # type: ignore[attr-defined]
    assert commands[1]["stderr"] == "no signatures found\n"  # type: ignore[index]
    assert not ran.exists()


async def test_no_shell_reads_the_image_reference(tmp_path: Path) -> None:
    """An image name from a request is one argument, whatever it holds."""
    marker = tmp_path / "pwned"
    echo = script(tmp_path, "echo", "import sys\nprint(repr(sys.argv[1:]))")
    hostile = f"x; touch {marker} $(touch {marker})"
    verdict = await CommandVerifier([[echo, "{image}"]], timeout=30)(hostile)
    assert verdict.passed and not marker.exists()
    assert verdict.evidence["commands"][0]["stdout"] == repr([hostile]) + "\n"  # type: ignore[index]


async def test_a_hung_command_is_killed_at_the_timeout_with_its_process_group(
    tmp_path: Path,
) -> None:
    pids = tmp_path / "pids"
    hang = script(
        tmp_path,
        "hang",
        "import os, subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        f"open({str(pids)!r}, 'w').write(f'{{os.getpid()}} {{child.pid}}')\n"
        "print('waiting for the transparency log', flush=True)\n"
        "time.sleep(600)\n",
    )
    verdict = await CommandVerifier([[hang, "{image}"]], timeout=1.5)(IMAGE)
    assert not verdict.passed
    assert verdict.summary == f"{hang} did not finish within 1.5s (killed)"
    (only,) = verdict.evidence["commands"]  # type: ignore[misc]
    assert only["timed_out"] is True and only["exit_code"] is None
    assert only["stdout"] == "waiting for the transparency log\n"
    for pid in map(int, pids.read_text().split()):  # the script and the child it forked
        assert await _gone(pid), f"process {pid} of the hung command outlived the timeout"


async def test_megabytes_of_output_are_kept_bounded_and_the_loop_keeps_running(
    tmp_path: Path,
) -> None:
    loud = script(
        tmp_path,
        "loud",
        "import sys\nline = b'x' * 1023 + b'\\n'\n"
        "for _ in range(40 * 1024):\n    sys.stdout.buffer.write(line)\n"
        "sys.stdout.buffer.write(b'THE END\\n')\n"
        "for _ in range(8 * 1024):\n    sys.stderr.buffer.write(line)\n",
    )
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    try:
        verdict = await CommandVerifier([[loud]], timeout=60)(IMAGE)
    finally:
        task.cancel()
    assert verdict.passed
    (only,) = verdict.evidence["commands"]  # type: ignore[misc]
    assert len(only["stdout"]) == OUTPUT_KEPT and only["stdout"].endswith("THE END\n")
    assert len(only["stderr"]) == OUTPUT_KEPT
    written = 40 * 1024 * 1024 + len("THE END\n") + 8 * 1024 * 1024
    assert only["output_dropped_bytes"] == written - 2 * OUTPUT_KEPT
    assert ticks > 100  # the loop ran while 48 MiB went through the pipes


async def test_a_command_that_cannot_start_fails_the_verification_and_says_why(
    tmp_path: Path,
) -> None:
    missing = str(tmp_path / "cosign")
    verdict = await CommandVerifier([[missing, "verify", "{image}"]], timeout=5)(IMAGE)
    assert not verdict.passed
    assert verdict.summary == f"{missing} could not run: No such file or directory"


async def test_a_cancelled_verification_leaves_no_process_behind(tmp_path: Path) -> None:
    """The worker cancels the commands when an operator rolls back meanwhile, or at stop."""
    pids = tmp_path / "pids"
    hang = script(
        tmp_path,
        "hang",
        f"import os, time\nopen({str(pids)!r}, 'w').write(str(os.getpid()))\ntime.sleep(600)\n",
    )
    task = asyncio.create_task(CommandVerifier([[hang]], timeout=600)(IMAGE))
    for _ in range(200):
        if pids.exists() and pids.read_text():
            break
        await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await _gone(int(pids.read_text()))


async def _gone(pid: int) -> bool:
    """Whether ``pid`` has ended, allowing the kernel a moment to finish a SIGKILL and init to
    reap an orphan (bounded: 5 s)."""
    for _ in range(100):
        if not _alive(pid):
            return True
        await asyncio.sleep(0.05)
    return False


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie awaiting its parent counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
