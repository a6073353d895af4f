"""A real HTTP receiver on 127.0.0.1 for notification tests: an aiohttp server in a thread.

Every POST is recorded (path, headers, JSON body, when it arrived, when it was answered).
What a path answers is chosen per path:

- ``fail_first={path: n}``: the first ``n`` requests to ``path`` get HTTP 500, then 200;
- ``always={path: status}``: every request to ``path`` gets ``status``;
- ``hang={path}``: requests to ``path`` get no answer until ``release()`` (or the receiver
  stops), as a receiver that accepts the connection and then stalls;
- every other path answers 200 at once.

The server runs on its own event loop in a daemon thread, so a test (synchronous, or with its
own loop) and a ``canaryd serve`` subprocess can both reach it.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web


@dataclass
class Received:
    path: str
    headers: Mapping[str, str]
    body: Any
    arrived: float  # time.time()
    answered: float | None = None  # time.time() when answered (None: still pending)
    status: int | None = None


class Receiver:
    def __init__(
        self,
        *,
        fail_first: Mapping[str, int] | None = None,
        hang: Iterable[str] = (),
        always: Mapping[str, int] | None = None,
    ) -> None:
        self.fail_first = dict(fail_first or {})
        self.always = dict(always or {})
        self.hang = set(hang)
        self.received: list[Received] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._released: asyncio.Event | None = None
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Receiver:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    async def _start(self) -> None:
        self._released = asyncio.Event()
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def _handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError:
            body = raw.decode(errors="replace")
        record = Received(request.path, dict(request.headers), body, time.time())
        with self._lock:
            self.received.append(record)
            earlier = sum(1 for r in self.received if r.path == request.path) - 1
        status = 500 if earlier < self.fail_first.get(request.path, 0) else 200
        status = self.always.get(request.path, status)
        if request.path in self.hang:
            assert self._released is not None
            await self._released.wait()
        record.answered, record.status = time.time(), status
        return web.Response(status=status, text="ok" if status == 200 else "refusing on purpose")

    def release(self) -> None:
        """Answer every hanging request (and the ones still to come) at once."""

        def _set() -> None:
            assert self._released is not None
            self._released.set()

        self._loop.call_soon_threadsafe(_set)

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        self.release()
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def at(self, path: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.path == path]

    def wait_for(
        self,
        path: str,
        holds: Callable[[list[Received]], bool],
        timeout: float,
        what: str,
    ) -> list[Received]:
        """Poll what ``path`` received until ``holds``; fail naming ``what`` and what came."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.at(path)
            if holds(got):
                return got
            if time.monotonic() >= deadline:
                bodies = [r.body for r in got]
                raise AssertionError(f"{what}: not within {timeout:g}s; {path} got {bodies!r}")
            time.sleep(0.05)
