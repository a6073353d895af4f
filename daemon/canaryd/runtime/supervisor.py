"""The supervisor: owns every task, turns SIGTERM/SIGINT into an ordered shutdown.

Everything runs inside one ``asyncio.TaskGroup``: eternal services (the evaluator, the watchdog
pinger) and one task per rollout worker. An eternal task that crashes is logged and restarted
after a pause instead of silently dying (kopf's lesson); a worker that ends has finished its
rollout. On a signal the supervisor stops taking requests first (``before_stop``), then cancels
the workers: every decision they took is already durable (committed before being acted on),
so cancelling between passes loses nothing, and a restart resumes exactly there.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

Service = Callable[[], Coroutine[Any, Any, None]]
Hook = Callable[[], Awaitable[None]]


class Supervisor:
    def __init__(self, *, on_crash: Callable[[str, BaseException], None]) -> None:
        self._on_crash = on_crash
        self._group: asyncio.TaskGroup | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.stopping = asyncio.Event()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run ``coro`` as an owned task (workers); cancelled at shutdown."""
        assert self._group is not None, "spawn() only inside run()"
        task = self._group.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def keep(self, name: str, service: Service, restart_after: float = 1.0) -> None:
        """Run an eternal ``service``; restart it if it crashes."""

        async def guarded() -> None:
            while True:
                try:
                    await service()
                    return
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self._on_crash(name, exc)
                    await asyncio.sleep(restart_after)

        self.spawn(guarded())

    def stop(self) -> None:
        self.stopping.set()

    async def run(self, start: Hook, before_stop: Hook, after_stop: Hook) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
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
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)
            await after_stop()
