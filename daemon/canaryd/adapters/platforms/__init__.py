"""Platforms: where the canary runs, one module per kind.

``PLATFORMS`` is the one table of platform kinds: each row is the ``KIND`` its module declares
(config dataclass, reader, factory, description). Adding a platform kind is its module plus one
row here; ``canaryd check`` and ``canaryd serve`` both read this table, through the composition
root. The order is the order error messages list them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from canaryd.adapters.kube import KubeClient
from canaryd.adapters.platforms import docker, kubernetes, none
from canaryd.config.kinds import Kind, table
from canaryd.ports import Platform


class OwnedPlatform(Platform, Protocol):
    """A platform the daemon built and closes at stop (a no-op where nothing is held)."""

    async def aclose(self) -> None: ...


PlatformFactory = Callable[[str, Any, KubeClient | None], OwnedPlatform]
"""A platform kind's factory: (target name, its config value, the daemon's Kubernetes client)."""

PLATFORMS: dict[str, Kind[Any, Any]] = table(kubernetes.KIND, docker.KIND, none.KIND)
