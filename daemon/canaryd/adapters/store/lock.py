"""One state, one actor (SPEC §7): an exclusive lock on a state file, and proof it still holds.

Why it is shaped this way:

* The lock is ``flock(LOCK_EX | LOCK_NB)`` on a file of its own, ``<state>.lock``, not on the
  database: SQLite takes and drops its own POSIX locks on the database file, and closing any
  descriptor of that file would silently drop a POSIX lock of ours. ``flock`` belongs to the
  open file description, so the kernel releases it when the process dies, even by ``kill -9``:
  no stale lock outlives its daemon and nothing needs cleaning up.
* The file holds the owner's pid, so a refused second daemon can say who holds the state.
* The lock file is never deleted (deleting a lock file is how two processes end up holding
  "the" lock on two different files). If someone deletes or replaces it anyway, or the state
  file itself, ``lost()`` says so: the store calls it before every write, so a daemon whose
  lock was taken over, or whose state nobody will ever read again, stops deciding at once.
* A file at the lock's path that is not a canaryd lock (not empty, not a pid) is refused, not
  overwritten: canaryd writes only to files it owns.
* ``WriteHealth`` remembers why the store's last write failed (a full disk, the lock lost),
  logs the change loudly once, and runs a probe write, in a thread of its own and at most once
  a second, so that ``/readyz`` notices recovery without ever waiting on the disk itself.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from collections.abc import Callable

import structlog

from canaryd.ports import CorruptState, StateLocked, StoreUnavailable

_MAX_LOCK_TEXT = 64  # a pid and a newline; anything longer is not ours
PROBE_INTERVAL = 1.0  # seconds between write probes while writes fail
log = structlog.get_logger("canaryd.store")


class StateLock:
    """An exclusive lock on ``state_path``, held until ``release``."""

    def __init__(self, state_path: str) -> None:
        self.state_path = state_path
        self.path = f"{state_path}.lock"
        self._fd = self._acquire()
        self._identity = _identity(os.fstat(self._fd))
        self._state_identity: tuple[int, int] | None = None

    def _acquire(self) -> int:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StoreUnavailable(
                f"{self.state_path}: cannot open lock file {self.path}: {exc.strerror or exc}"
            ) from exc
        try:
            text = _read(fd)
            if text.strip() and not text.strip().isdigit():
                raise CorruptState(
                    f"{self.state_path}: {self.path} is not a canaryd lock file "
                    "(it holds something other than a pid); refusing to overwrite it"
                )
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StateLocked(  # read again: the holder may have written its pid since
                    f"{self.state_path}: the state is held by another canaryd "
                    f"({_holder(_read(fd))}, lock {self.path}); one state, one actor: stop "
                    "that daemon or give this one its own state.path"
                ) from None
            if _identity(os.fstat(fd)) != _path_identity(self.path):
                raise StateLocked(  # deleted or replaced between our open and our lock
                    f"{self.state_path}: lock file {self.path} was replaced while locking it; "
                    "another canaryd is starting on the same state"
                )
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def pin_state(self) -> None:
        """Remember which file the state is, now that it exists (after the store opened it)."""
        self._state_identity = _path_identity(self.state_path)

    def lost(self) -> str | None:
        """None while this lock and the state file are still the files we opened; else why
        not. Two ``stat`` calls: cheap enough for every write."""
        if _path_identity(self.path) != self._identity:
            return (
                f"{self.state_path}: lock file {self.path} was deleted or replaced: the lock "
                "is lost (another canaryd may hold the state now); refusing to write"
            )
        pinned = self._state_identity
        if pinned is not None and _path_identity(self.state_path) != pinned:
            return (
                f"{self.state_path}: the state file was deleted or replaced under the "
                "running daemon; refusing to write decisions nobody would read"
            )
        return None

    def release(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)  # closing the only descriptor drops the flock


class WriteHealth:
    """Whether the store can write, as its writes found out; ``probe`` tries a tiny write."""

    def __init__(self, path: str, probe: Callable[[], None]) -> None:
        self._path = path
        self._probe = probe
        self._problem: str | None = None
        self._guard = threading.Lock()
        self._probing = False
        self._probed_at = 0.0

    def failed(self, problem: str) -> None:
        if self._problem is None:
            log.error("state_store_cannot_write", file=self._path, problem=problem)
        self._problem = problem

    def succeeded(self) -> None:
        if self._problem is not None:
            log.warning("state_store_writes_again", file=self._path)
        self._problem = None

    def problem(self) -> str | None:
        """Why writes fail, or None; never blocks: a due probe runs in a thread."""
        problem = self._problem
        if problem is not None:
            self._start_probe()
        return problem

    def _start_probe(self) -> None:
        with self._guard:
            now = time.monotonic()
            if self._probing or now - self._probed_at < PROBE_INTERVAL:
                return
            self._probing, self._probed_at = True, now
        threading.Thread(target=self._run_probe, name="canaryd-store-probe", daemon=True).start()

    def _run_probe(self) -> None:
        try:
            self._probe()
        finally:
            self._probing = False


def _identity(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def _path_identity(path: str) -> tuple[int, int] | None:
    try:
        return _identity(os.stat(path))
    except OSError:
        return None


def _read(fd: int) -> str:
    return os.pread(fd, _MAX_LOCK_TEXT + 1, 0).decode("utf-8", "replace")


def _holder(text: str) -> str:
    pid = text.strip()
    return f"pid {pid}" if pid.isdigit() else "pid unknown"
