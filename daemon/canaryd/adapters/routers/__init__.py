"""Routers: how traffic is split between stable and canary, one module per kind.

``ROUTERS`` is the one table of router kinds (Flagger's ``pkg/router/factory.go``): each row is
the ``KIND`` its module declares (config dataclass, reader, factory, description). Adding a
router kind is its module plus one row here; ``canaryd check`` and ``canaryd serve`` both read
this table, through the composition root. The order is the order error messages list them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from canaryd.adapters.kube import KubeClient
from canaryd.adapters.routers import (
    argo_rollouts,
    gateway_api,
    nginx,
    nginx_ingress,
    noop,
    traefik_file,
    traefik_service,
)
from canaryd.config.kinds import Kind, table
from canaryd.ports import Router


class OwnedRouter(Router, Protocol):
    """A router the daemon built and closes at stop (a no-op where nothing is held)."""

    async def aclose(self) -> None: ...


RouterFactory = Callable[[str, Any, KubeClient | None], OwnedRouter]
"""A router kind's factory: (target name, its config value, the daemon's Kubernetes client)."""

ROUTERS: dict[str, Kind[Any, Any]] = table(
    gateway_api.KIND,
    traefik_service.KIND,
    argo_rollouts.KIND,
    nginx_ingress.KIND,
    traefik_file.KIND,
    nginx.KIND,
    noop.KIND,
)
