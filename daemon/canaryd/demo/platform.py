"""The demo's platform: the demo service as local processes, one stable and one canary.

``canaryd demo`` has no Docker image or cluster to deploy to, so "deploying image X" means
running ``python -m canaryd.demo.service --version X`` on the canary's (or the stable's) fixed
loopback port. It implements the same ``Platform`` port as the real platforms, so the worker
drives it exactly as it drives Docker or Kubernetes: ``ensure_canary`` before the first stage,
``update_stable`` while promoting (the stable process is replaced by one of the new version while
the canary takes all the traffic), ``remove_canary`` after a rollback or a promotion.

Every process is ours: started by ``demo.stack.launch`` (no shell, waited until it answers),
its output in ``<workdir>/<deployment>-<version>.log``, stopped by its pid (SIGTERM, then
SIGKILL).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from canaryd.core.errors import PlatformUnavailable
from canaryd.demo.stack import Process, StackError, launch


@dataclass
class _Running:
    image: str
    process: Process


class LocalProcesses:
    """``Platform`` on local demo-service processes: stable on one port, canary on another."""

    kind = "demo-processes"

    def __init__(
        self,
        workdir: Path,
        *,
        stable_port: int,
        canary_port: int,
        latency: float = 0.05,
        latencies: Mapping[str, float] | None = None,
    ) -> None:
        self.workdir = workdir
        self.ports = {"stable": stable_port, "canary": canary_port}
        self.latency = latency
        # per image: a version that is slower than the others from its first request on (the
        # demo's subtly bad version), where a fault injected later would be a different story
        self.latencies = dict(latencies or {})
        self._running: dict[str, _Running] = {}
        self._lock = asyncio.Lock()

    # ------------------------------------------------------------------ Platform

    async def ensure_canary(self, image: str) -> None:
        async with self._lock:
            await self._ensure("canary", image)

    async def canary_status(self) -> tuple[bool, bool]:
        running = self._running.get("canary")
        if running is None or not running.process.alive:
            return False, False
        return True, await self._healthy("canary")

    async def stable_image(self) -> str | None:
        running = self._running.get("stable")
        return running.image if running and running.process.alive else None

    async def update_stable(self, image: str) -> None:
        async with self._lock:
            await self._ensure("stable", image)

    async def remove_canary(self) -> None:
        async with self._lock:
            await self._stop("canary")

    # ------------------------------------------------------------------ for the demo

    async def start_stable(self, image: str) -> None:
        async with self._lock:
            await self._ensure("stable", image)

    def url(self, deployment: str) -> str:
        return f"http://127.0.0.1:{self.ports[deployment]}"

    def image(self, deployment: str) -> str | None:
        running = self._running.get(deployment)
        return running.image if running else None

    async def close(self) -> None:
        async with self._lock:
            for deployment in list(self._running):
                await self._stop(deployment)

    # ------------------------------------------------------------------ processes

    async def _ensure(self, deployment: str, image: str) -> None:
        running = self._running.get(deployment)
        if running and running.image == image and running.process.alive:
            return
        await self._stop(deployment)
        argv = [
            sys.executable,
            "-m",
            "canaryd.demo.service",
            f"--port={self.ports[deployment]}",
            f"--version={image}",
            f"--deployment={deployment}",
            f"--latency={self.latencies.get(image, self.latency)}",
        ]
        name = f"{deployment}-{_safe(image)}"
        try:
            started = await launch(name, argv, self.workdir, self.ports[deployment], "/health")
        except StackError as exc:
            raise PlatformUnavailable(f"{deployment} {image}: {exc}") from exc
        self._running[deployment] = _Running(image, started)

    async def _healthy(self, deployment: str) -> bool:
        timeout = aiohttp.ClientTimeout(total=1.0)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.get(f"{self.url(deployment)}/health") as response,
            ):
                return response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def _stop(self, deployment: str) -> None:
        running = self._running.pop(deployment, None)
        if running is not None:
            await running.process.stop()


def _safe(image: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in image)
