"""The ``traefik-service`` router: the split lives in a weighted ``TraefikService`` of Traefik's
Kubernetes CRD provider (``traefik.io/v1alpha1``), the header pin in an ``IngressRoute``.

canaryd owns two objects in ``namespace`` and leaves the user's own alone:

- the TraefikService ``name``, which the user's IngressRoute sends to (``kind:
  TraefikService``). canaryd writes its whole ``spec``: a ``weighted`` service over the
  ``stable_service`` and ``canary_service`` Kubernetes Services (on ``port`` when set), integer
  weights ``100 - w`` and ``w``; a side at 0 is left out of the list rather than given weight
  0, as the ``traefik-file`` router does, so no Traefik version has to decide what a zero
  weight means;
- the IngressRoute ``<name>-canary`` (the *pin*): for each route of the user's IngressRoute
  ``ingress_route`` that sends to the TraefikService, the same route (``kind``, middlewares,
  ``priority``) with ``match`` ``(<match>) && Header(`X-Canary-Deploy`, `canary`)`` and the
  canary Service as its only service, on the same ``entryPoints`` and ``tls``. Traefik ranks
  routes by priority, by default the length of the rule, and the pin's rule is the longer one;
  a route with an explicit priority gets ``priority + 1`` in the pin. So a request with the
  header goes to the canary at every weight, and only on the hosts and paths the user routes.

For target ``web`` (``stable_service: web``, ``canary_service: web-canary``, ``port: 8080``)
at weight 25 the TraefikService's spec reads::

    weighted:
      services:
      - {kind: Service, name: web, port: 8080, weight: 75}
      - {kind: Service, name: web-canary, port: 8080, weight: 25}

Both objects carry ``app.kubernetes.io/managed-by: canaryd``; an object of either name that
lacks it is the user's, and canaryd refuses to overwrite it (``RouterUnavailable``).

Writing: read, compare, and create or replace with the ``resourceVersion`` read; on 409 read
again and re-apply, up to ``ATTEMPTS`` times, then ``RouterConflict``. Objects already right
are not written. The pin is written before the weights, so the canary never takes weighted
traffic without its header route.

Reading back: ``get_weight`` returns ``w`` only if the TraefikService is exactly what
``set_weight(w)`` writes and the pin is exactly what it writes for the user's IngressRoute as
it is now (at 0, no pin is the finalized state); anything else (a hand edit, weights not
adding up to 100, a pin stale after the user's route changed) is ``None``, "cannot tell", and
the worker re-asserts its weight.

``finalize``: weight 0 (stable only) and the pin deleted; the TraefikService stays, since the
user's IngressRoute names it (Traefik drops a route whose service is gone).
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from canaryd.adapters.kube import KubeClient, KubeConflict
from canaryd.adapters.routers.kubeobject import (
    ATTEMPTS,
    OWNER_LABEL,
    Obj,
    Objects,
    owned,
    put,
)
from canaryd.config.kinds import Kind, Loader, object_ref, to_name, to_port
from canaryd.core.errors import RouterConflict, RouterUnavailable

GROUP, VERSION = "traefik.io", "v1alpha1"
CANARY_HEADER, CANARY_VALUE = "X-Canary-Deploy", "canary"
PIN = f"Header(`{CANARY_HEADER}`, `{CANARY_VALUE}`)"


class IngressRouteShapeError(ValueError):
    """The user's IngressRoute has no route to the TraefikService."""


def weighted_spec(stable: str, canary: str, port: int | None, weight: int) -> Obj:
    """The TraefikService's spec at ``weight``: integer weights adding up to 100, a side at 0
    left out."""
    if not 0 <= weight <= 100:
        raise ValueError(f"weight must be within 0..100, got {weight}")
    services = []
    for name, share in ((stable, 100 - weight), (canary, weight)):
        if share:
            ref: Obj = {"kind": "Service", "name": name}
            if port is not None:
                ref["port"] = port
            services.append({**ref, "weight": share})
    return {"weighted": {"services": services}}


def _sends_to(route: Any, service: str) -> bool:
    return isinstance(route, dict) and any(
        isinstance(s, dict) and s.get("kind") == "TraefikService" and s.get("name") == service
        for s in route.get("services") or []
    )


def pin_spec(user_spec: Any, service: str, canary: str, port: int | None) -> Obj:
    """The pin IngressRoute's spec, from the user's IngressRoute spec (see the module doc)."""
    user = user_spec if isinstance(user_spec, dict) else {}
    routes = [r for r in user.get("routes") or [] if _sends_to(r, service)]
    if not routes:
        raise IngressRouteShapeError(f"no route sends to TraefikService {service}")
    target: Obj = {"kind": "Service", "name": canary}
    if port is not None:
        target["port"] = port
    pins = []
    for route in routes:
        pin = {k: copy.deepcopy(v) for k, v in route.items() if k not in ("services", "syntax")}
        pin["match"] = f"({route.get('match', '')}) && {PIN}"
        if isinstance(route.get("priority"), int):
            pin["priority"] = route["priority"] + 1
        pin["services"] = [dict(target)]
        pins.append(pin)
    spec: Obj = {"routes": pins}
    for kept in ("entryPoints", "tls"):
        if kept in user:
            spec[kept] = copy.deepcopy(user[kept])
    return spec


def _labelled(name: str, spec: Obj) -> Obj:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "metadata": {"name": name, "labels": dict([OWNER_LABEL])},
        "spec": spec,
    }


def weight_of(spec: Any, stable: str, canary: str) -> int | None:
    """The canary's weight in a TraefikService spec canaryd could have written, else None."""
    services = (
        ((spec or {}).get("weighted") or {}).get("services") if isinstance(spec, dict) else None
    )
    if not isinstance(services, list):
        return None
    shares = {s.get("name"): s.get("weight") for s in services if isinstance(s, dict)}
    canary_share = shares.get(canary, 0)
    if isinstance(canary_share, bool) or not isinstance(canary_share, int):
        return None
    return canary_share if 0 <= canary_share <= 100 else None


class TraefikServiceRouter:
    kind = "traefik-service"

    def __init__(
        self,
        name: str,
        stable_service: str,
        canary_service: str,
        *,
        namespace: str = "default",
        ingress_route: str | None = None,
        port: int | None = None,
        kube: KubeClient | None = None,
    ) -> None:
        self.name, self.namespace, self.port = name, namespace, port
        self.stable_service, self.canary_service = stable_service, canary_service
        self.ingress_route = ingress_route or name
        self.pin_name = f"{name}-canary"
        self._owned = kube is None
        self.kube = kube if kube is not None else KubeClient()
        self._services = Objects(
            self.kube, GROUP, VERSION, "traefikservices", namespace, "TraefikService"
        )
        self._routes = Objects(
            self.kube, GROUP, VERSION, "ingressroutes", namespace, "IngressRoute"
        )
        self._lock = asyncio.Lock()

    async def set_weight(self, weight: int) -> None:
        wanted = self._service(weight)  # refuses a weight outside 0..100 before any request
        async with self._lock:
            await self._retrying(weight, lambda: self._apply(wanted, pin=True))

    async def get_weight(self) -> int | None:
        try:
            service = await self._services.read(self.name)
            if service is None:
                return None
            weight = weight_of(service.get("spec"), self.stable_service, self.canary_service)
            if weight is None or service.get("spec") != self._service(weight)["spec"]:
                return None
            pin = await self._routes.read(self.pin_name)
            if pin is None:
                return weight if weight == 0 else None
            wanted = await self._pin()
        except (RouterUnavailable, IngressRouteShapeError):
            return None
        return weight if pin.get("spec") == wanted["spec"] else None

    async def finalize(self) -> None:
        """Everything to stable, the pin gone; the TraefikService stays (the user's route
        names it)."""
        async with self._lock:
            await self._retrying(0, lambda: self._apply(self._service(0), pin=False))

    async def aclose(self) -> None:
        if self._owned:
            await self.kube.aclose()

    def _service(self, weight: int) -> Obj:
        spec = weighted_spec(self.stable_service, self.canary_service, self.port, weight)
        return {"kind": "TraefikService", **_labelled(self.name, spec)}

    async def _pin(self) -> Obj:
        user = await self._routes.read(self.ingress_route)
        if user is None:
            raise RouterUnavailable(
                f"IngressRoute {self.namespace}/{self.ingress_route} not found: canaryd pins "
                f"the header on the routes that send to TraefikService {self.name}"
            )
        spec = pin_spec(user.get("spec"), self.name, self.canary_service, self.port)
        return {"kind": "IngressRoute", **_labelled(self.pin_name, spec)}

    async def _apply(self, service: Obj, *, pin: bool) -> None:
        current_pin = await self._routes.read(self.pin_name)
        if pin:
            try:
                wanted_pin = await self._pin()
            except IngressRouteShapeError as exc:
                raise RouterUnavailable(
                    f"IngressRoute {self.namespace}/{self.ingress_route}: {exc}"
                ) from exc
            await put(self._routes, wanted_pin, current_pin)
        await put(self._services, service, await self._services.read(self.name))
        if not pin and current_pin is not None and owned(current_pin):  # never a user's
            await self._routes.delete(self.pin_name, current_pin["metadata"]["resourceVersion"])

    async def _retrying(self, weight: int, apply: Any) -> None:
        for _ in range(ATTEMPTS):
            try:
                await apply()
                return
            except KubeConflict:
                continue  # someone else wrote in between: read their version, reapply
        raise RouterConflict(
            f"TraefikService {self.namespace}/{self.name} or IngressRoute {self.pin_name} "
            f"changed under canaryd {ATTEMPTS} times in a row (409 Conflict); "
            f"weight {weight} not applied"
        )


# --------------------------------------------------------------------------- the kind


@dataclass(frozen=True, slots=True)
class TraefikServiceConfig:
    """``router: {kind: traefik-service, ...}``: a weighted TraefikService canaryd owns."""

    name: str  # the TraefikService
    stable_service: str
    canary_service: str
    namespace: str = "default"
    ingress_route: str | None = None  # the user's IngressRoute; default: ``name``
    port: int | None = None
    kind: Literal["traefik-service"] = field(default="traefik-service", init=False)


def read_config(ld: Loader, m: Mapping[str, Any], where: str) -> TraefikServiceConfig:
    name, namespace = object_ref(ld, m, where)
    f = ld.r.field
    return TraefikServiceConfig(
        name=name,
        stable_service=ld.need(m, "stable_service", where, to_name, ""),
        canary_service=ld.need(m, "canary_service", where, to_name, ""),
        namespace=namespace,
        ingress_route=f(m, "ingress_route", where, to_name, None),
        port=f(m, "port", where, to_port, None),
    )


def build(target: str, c: TraefikServiceConfig, kube: KubeClient | None) -> TraefikServiceRouter:
    return TraefikServiceRouter(
        c.name,
        c.stable_service,
        c.canary_service,
        namespace=c.namespace,
        ingress_route=c.ingress_route,
        port=c.port,
        kube=kube,
    )


KIND: Kind[TraefikServiceConfig, Any] = Kind(
    name="traefik-service",
    keys=frozenset(
        {"name", "namespace", "stable_service", "canary_service", "ingress_route", "port"}
    ),
    read=read_config,
    build=build,
    describe=lambda c: f"traefik-service ({c.namespace}/{c.name})",
    identity=lambda c: ("traefik-service", c.namespace, c.name) if c.name else None,
)
