"""Every platform kind, set up for the platform contract suite
(``platforms/test_platform_contract.py``).

A ``PlatformKind`` opens a ``PlatformCase``: the platform under test, built with its adapter's
own constructor, with a stable version already running (image ``old``), plus what the suite
needs around it: ``settle`` plays whatever runs outside canaryd and is not there in a test (the
Kubernetes Deployment controller, which kmock's emulator does not run), and ``footprint`` is a
value that changes whenever the platform creates, replaces or writes something. Each runs for
real where it can: the private Docker engine (``dockerkit``), kmock's Kubernetes emulator
(``kube``), the demo's local processes on 127.0.0.1.

Adding a platform kind to the suites: write its ``_open_<kind>`` below, declare its
``PlatformKind``, and add that to ``PLATFORMS`` at the top of the suite.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from canaryd.adapters.platforms.docker import DockerEnginePlatform
from canaryd.adapters.platforms.kubernetes import KubernetesDeploymentPlatform
from canaryd.adapters.platforms.none import NonePlatform
from canaryd.demo.platform import LocalProcesses
from canaryd.ports import Platform
from support import dockerkit, kube, procs


async def _nothing() -> None:
    """Nothing runs outside canaryd that a test must play."""


@dataclass
class PlatformCase:
    """One platform under test, its stable running ``old``; ``new`` is the next version."""

    platform: Platform
    old: str
    new: str
    # A value that changes whenever the platform creates, replaces or writes anything.
    footprint: Callable[[], Awaitable[Hashable]]
    # Play what would run outside canaryd (a controller) after each change.
    settle: Callable[[], Awaitable[None]] = _nothing
    # What ``stable_image`` reads before any ``update_stable`` (``old``, or None if it cannot).
    stable_at_start: str | None = None
    ready_within: float = 10.0  # seconds a canary may take to get ready
    creates: bool = True  # False: it runs nothing itself, so ``footprint`` never changes


@dataclass(frozen=True)
class PlatformKind:
    """A platform kind as the suites know it."""

    kind: str
    open: Callable[[Path], AbstractAsyncContextManager[PlatformCase]]

    def __str__(self) -> str:
        return self.kind


# --------------------------------------------------------------------------- none


@asynccontextmanager
async def _open_none(tmp: Path) -> AsyncIterator[PlatformCase]:
    async def nothing() -> Hashable:
        return "none creates nothing outside the process"

    # Something else deploys: none cannot read the stable image until it is told one.
    yield PlatformCase(NonePlatform(), "v1", "v2", nothing, stable_at_start=None, creates=False)


NONE = PlatformKind("none", _open_none)


# --------------------------------------------------------------------------- docker


@asynccontextmanager
async def _open_docker(tmp: Path) -> AsyncIterator[PlatformCase]:
    dockerkit.ensure_images(tmp)
    async with dockerkit.owned_target() as target:
        await target.run_stable(1, "v1")
        platform = DockerEnginePlatform(
            target.name,
            service=target.name,
            project=dockerkit.PROJECT,
            host=dockerkit.URL,
            stop_timeout=1,  # busybox httpd ignores SIGTERM
            ready_timeout=20.0,
        )

        async def footprint() -> Hashable:
            return tuple(str(info["Id"]) for info in await target.owned())

        old, new = f"{dockerkit.IMAGE}:v1", f"{dockerkit.IMAGE}:v2"
        yield PlatformCase(platform, old, new, footprint, stable_at_start=old)


DOCKER = PlatformKind("docker", _open_docker)


# --------------------------------------------------------------------------- kubernetes

NS = "shop"
K8S_OLD, K8S_NEW = "registry.example/web:1.0", "registry.example/web:2.0"


def stable_deployment() -> dict[str, Any]:
    """The user's Deployment ``web``: two replicas of one container serving on 8080."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "labels": {"app": "web"}},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "containers": [
                        {
                            "name": "web",
                            "image": K8S_OLD,
                            "ports": [{"name": "http", "containerPort": 8080}],
                        }
                    ]
                },
            },
        },
    }


@asynccontextmanager
async def _open_kubernetes(tmp: Path) -> AsyncIterator[PlatformCase]:
    async with kube.cluster() as cluster:
        cluster.seed(kube.DEPLOYMENTS, NS, stable_deployment())
        kube.roll_out(cluster, NS, "web")
        platform = KubernetesDeploymentPlatform("web", namespace=NS, api_client=cluster.api)

        async def footprint() -> Hashable:
            return tuple(cluster.writes)

        async def settle() -> None:
            for name in ("web", "web-canary"):
                if cluster.get(kube.DEPLOYMENTS, NS, name) is not None:
                    kube.roll_out(cluster, NS, name)

        yield PlatformCase(
            platform, K8S_OLD, K8S_NEW, footprint, settle=settle, stable_at_start=K8S_OLD
        )


KUBERNETES = PlatformKind("kubernetes", _open_kubernetes)


# --------------------------------------------------------------------------- demo processes


@asynccontextmanager
async def _open_demo_processes(tmp: Path) -> AsyncIterator[PlatformCase]:
    ports = {"stable": procs.free_port(), "canary": procs.free_port()}
    platform = LocalProcesses(
        tmp, stable_port=ports["stable"], canary_port=ports["canary"], latency=0.0
    )
    try:
        await platform.start_stable("v1")

        async def footprint() -> Hashable:
            """Which process serves each side: a new one means it was (re)started."""
            return tuple(procs.listener_pid(port) for port in ports.values())

        yield PlatformCase(platform, "v1", "v2", footprint, stable_at_start="v1")
    finally:
        await platform.close()


DEMO_PROCESSES = PlatformKind("demo-processes", _open_demo_processes)
