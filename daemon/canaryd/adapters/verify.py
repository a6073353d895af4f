"""A target's ``verify:`` commands (SPEC §8): ``cosign verify``, an image scanner, anything
that answers with its exit code, run before a rollout's first stage.

Each command is an argv list with ``{image}`` replaced by the rollout's image reference (the
pinned one when there is one): executed directly, never through a shell, so nothing in an
image name can become a second command. They run one after the other; the first that exits
non-zero, cannot be started, or outlives the timeout fails the verification, and the rest do
not run.

What a command may do is bounded, because it is someone else's program:

* **time**: ``timeout`` seconds for each command; then its whole process group (it runs in a
  session of its own, so a shell script's children go too) gets SIGKILL;
* **memory**: its output is read as it comes, in chunks, and only the last ``OUTPUT_KEPT``
  bytes of stdout and of stderr are kept (with a count of what was dropped), so a command
  that prints gigabytes costs a few KiB; those tails go into the decision's evidence;
* **the event loop**: everything is asynchronous (``create_subprocess_exec``, pipe reads).

If the daemon itself is killed while a command runs, the command is not waited for: the
rollout still has its gate closed on restart and the commands run again from the start.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass

from canaryd.core.model import Verification
from canaryd.core.supply import substitute

DEFAULT_TIMEOUT = 120.0  # seconds for one verify command (``verify_timeout``)
OUTPUT_KEPT = 8192  # bytes of stdout and of stderr kept per command (the last ones)
_CHUNK = 65536


@dataclass(frozen=True, slots=True)
class CommandResult:
    argv: tuple[str, ...]
    exit_code: int | None  # None: timed out or could not start
    seconds: float
    stdout: str
    stderr: str
    dropped: int = 0  # output bytes not kept (beyond OUTPUT_KEPT per stream)
    timed_out: bool = False
    error: str | None = None  # why it could not start

    @property
    def passed(self) -> bool:
        return self.exit_code == 0

    def evidence(self) -> dict[str, object]:
        out: dict[str, object] = {
            "argv": list(self.argv),
            "exit_code": self.exit_code,
            "seconds": round(self.seconds, 3),
            "stdout": self.stdout,
            "stderr": self.stderr,
        }
        if self.dropped:
            out["output_dropped_bytes"] = self.dropped
        if self.timed_out:
            out["timed_out"] = True
        if self.error is not None:
            out["error"] = self.error
        return out

    def summary(self, timeout: float) -> str:
        name = self.argv[0] if self.argv else "?"
        if self.error is not None:
            return f"{name} could not run: {self.error}"
        if self.timed_out:
            return f"{name} did not finish within {timeout:g}s (killed)"
        return f"{name} exited with code {self.exit_code}"


class CommandVerifier:
    """``ports.Verifier`` for one target: its commands and their timeout."""

    def __init__(
        self,
        commands: Sequence[Sequence[str]],
        timeout: float = DEFAULT_TIMEOUT,
        kept: int = OUTPUT_KEPT,
    ) -> None:
        if not commands or any(not argv for argv in commands):
            raise ValueError("verify needs at least one command, each a non-empty argv list")
        self.commands = tuple(tuple(argv) for argv in commands)
        self.timeout, self.kept = timeout, kept

    async def __call__(self, image: str) -> Verification:
        results: list[CommandResult] = []
        for argv in self.commands:
            result = await run_command(substitute(argv, image), self.timeout, self.kept)
            results.append(result)
            if not result.passed:
                break
        evidence = {"commands": [r.evidence() for r in results]}
        last = results[-1]
        if not last.passed:
            return Verification(False, last.summary(self.timeout), evidence)
        count = f"{len(results)} verify command" + ("s" if len(results) > 1 else "")
        return Verification(True, f"{count} passed", evidence)


class _Tail:
    """The last ``kept`` bytes of a stream, and how many were dropped before them."""

    def __init__(self, kept: int) -> None:
        self.kept, self.data, self.dropped = kept, bytearray(), 0

    def add(self, chunk: bytes) -> None:
        self.data += chunk
        extra = len(self.data) - self.kept
        if extra > 0:
            del self.data[:extra]
            self.dropped += extra

    def text(self) -> str:
        return self.data.decode("utf-8", "replace")


async def _drain(stream: asyncio.StreamReader | None, tail: _Tail) -> None:
    if stream is None:
        return
    while chunk := await stream.read(_CHUNK):
        tail.add(chunk)


async def run_command(argv: tuple[str, ...], timeout: float, kept: int) -> CommandResult:
    """Run ``argv`` (no shell) in its own session, bounded in time and kept output."""
    started = time.monotonic()
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # its own process group: killed as a whole
        )
    except OSError as exc:
        why = exc.strerror or str(exc)
        return CommandResult(argv, None, time.monotonic() - started, "", "", error=why)
    out, err = _Tail(kept), _Tail(kept)
    timed_out = False
    try:
        async with asyncio.timeout(timeout):
            await asyncio.gather(_drain(proc.stdout, out), _drain(proc.stderr, err))
            await proc.wait()
    except TimeoutError:
        timed_out = True
    finally:  # a timeout, or the worker cancelled (rolled back, shutting down)
        if proc.returncode is None:
            _kill_group(proc.pid)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    return CommandResult(
        argv,
        None if timed_out else proc.returncode,
        time.monotonic() - started,
        out.text(),
        err.text(),
        dropped=out.dropped + err.dropped,
        timed_out=timed_out,
    )


def _kill_group(pid: int) -> None:
    """SIGKILL the command's whole process group (its session: ``start_new_session``)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
