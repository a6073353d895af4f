"""The supervisor: owns every task, turns SIGTERM/SIGINT into an ordered shutdown.

Everything runs inside one ``asyncio.TaskGroup``: long-lived services (the evaluator, the
watchdog pinger, the state watch) and one task per rollout worker, every task named so a log
line or a task dump says what it is. A worker that ends has finished its rollout. A service
never ends on its own, so one that does, by raising or by returning, is logged
(``service_crashed`` / ``service_ended``) and then, as its ``Guard`` says (kopf's
``aiotasks.guard``):

- restarted after a backoff that doubles from ``backoff`` up to ``max_backoff``; more than
  ``limit`` ends within ``window`` seconds means it cannot go on, and the daemon stops;
- or, with ``restart=False``, the daemon stops at once.

A daemon stopped that way stops as on a signal (workers cancelled between passes, adapters
closed) and ``run`` then raises ``ServiceFailed`` naming the task: ``canaryd serve`` prints that
one line and exits 1, and systemd's ``Restart=on-failure`` starts a fresh process.

On a signal the supervisor stops taking requests first (``before_stop``), then cancels the
workers: every decision they took is already durable (committed before being acted on), so
cancelling between passes loses nothing, and a restart resumes exactly there.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from canaryd.core.errors import CanarydError

Service = Callable[[], Coroutine[Any, Any, None]]
Hook = Callable[[], Awaitable[None]]
# (task name, the exception it raised, or None when it returned)
OnCrash = Callable[[str, BaseException | None], None]


class ServiceFailed(CanarydError):
    """A long-lived task ended and could not be kept running: the daemon stopped."""


@dataclass(frozen=True, slots=True)
class Guard:
    """What to do when a long-lived service ends (see the module doc)."""

    restart: bool = True
    backoff: float = 1.0  # seconds before the first restart; doubles per end in a row
    max_backoff: float = 30.0
    limit: int = 5  # ends within ``window`` seconds after which the daemon stops instead
    window: float = 60.0


RESTART = Guard()
STOP = Guard(restart=False)


class Supervisor:
    def __init__(self, *, on_crash: OnCrash) -> None:
        self._on_crash = on_crash
        self._group: asyncio.TaskGroup | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.stopping = asyncio.Event()
        self.failure: ServiceFailed | None = None
        # SIGTERM/SIGINT stop the daemon; False when a program runs it inside itself and owns
        # the signals (``canaryd demo``: Ctrl-C stops everything the demo started, canaryd too)
        self.signals = True

    def spawn(self, coro: Coroutine[Any, Any, None], name: str | None = None) -> asyncio.Task[None]:
        """Run ``coro`` as an owned task (workers); cancelled at shutdown. Unnamed, the task
        is named after its coroutine (``GroupCommit.run``), never ``Task-7``."""
        assert self._group is not None, "spawn() only inside run()"
        task = self._group.create_task(coro, name=name or getattr(coro, "__qualname__", None))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def keep(self, name: str, service: Service, guard: Guard = RESTART) -> asyncio.Task[None]:
        """Run the long-lived ``service`` as the task ``name``, guarded by ``guard``."""
        return self.spawn(self._guarded(name, service, guard), name=name)

    async def _guarded(self, name: str, service: Service, guard: Guard) -> None:
        loop = asyncio.get_running_loop()
        ends: list[float] = []
        while True:
            error: BaseException | None = None
            try:
                await service()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                error = exc
            self._on_crash(name, error)
            now = loop.time()
            ends = [t for t in ends if now - t < guard.window] + [now]
            how = f"raised {error!r}" if error is not None else "returned"
            if not guard.restart:
                self._fail(f"task {name!r} ended ({how}); it cannot be restarted, so canaryd stops")
                return
            if len(ends) > guard.limit:
                self._fail(
                    f"task {name!r} ended {len(ends)} times within {guard.window:g}s "
                    f"(last: {how}); canaryd stops rather than run without it"
                )
                return
            await asyncio.sleep(min(guard.max_backoff, guard.backoff * 2 ** (len(ends) - 1)))

    def _fail(self, message: str) -> None:
        if self.failure is None:
            self.failure = ServiceFailed(message)
        self.stop()

    def stop(self) -> None:
        self.stopping.set()

    async def run(self, start: Hook, before_stop: Hook, after_stop: Hook) -> None:
        """Start, wait for a signal or a failed service, stop in order.

        ``ServiceFailed`` is raised after the whole shutdown when a service could not go on.
        """
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT) if self.signals else ():
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.stop)
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                await start()
                await self.stopping.wait()
                await before_stop()
                for task in list(self._tasks):
                    task.cancel()
        finally:
            self._group = None
            for sig in (signal.SIGTERM, signal.SIGINT) if self.signals else ():
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)
            await after_stop()
        if self.failure is not None:
            raise self.failure
