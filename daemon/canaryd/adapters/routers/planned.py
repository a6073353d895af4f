"""Router kinds the SPEC names that this build cannot run yet: their config, not their adapter.

``traefik-service``, ``argo-rollouts`` and ``nginx-ingress`` are read and checked like any kind
(a typo in their keys is named), then refused with one clear line by ``canaryd check`` and
``canaryd serve`` alike: a row without a factory. When one lands, its dataclass and reader move
to its own module beside its adapter, with a factory, and its row in ``ROUTERS`` points there.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from canaryd.config.kinds import Kind, Loader, to_name, to_port

USE_MEANWHILE = "use noop (observe-only) for now"


@dataclass(frozen=True, slots=True)
class TraefikServiceConfig:
    name: str  # the TraefikService
    namespace: str = "default"
    stable_service: str | None = None
    canary_service: str | None = None
    port: int | None = None
    kind: Literal["traefik-service"] = field(default="traefik-service", init=False)


@dataclass(frozen=True, slots=True)
class ArgoRolloutsConfig:
    name: str  # the Rollout
    namespace: str = "default"
    kind: Literal["argo-rollouts"] = field(default="argo-rollouts", init=False)


@dataclass(frozen=True, slots=True)
class NginxIngressConfig:
    name: str  # the stable Ingress; the canary one is "<name>-canary"
    namespace: str = "default"
    canary_service: str | None = None
    port: int | None = None
    kind: Literal["nginx-ingress"] = field(default="nginx-ingress", init=False)


def _traefik_service(ld: Loader, m: Mapping[str, Any], where: str) -> TraefikServiceConfig:
    f = ld.r.field
    return TraefikServiceConfig(
        name=ld.need(m, "name", where, to_name, ""),
        namespace=f(m, "namespace", where, to_name, "default"),
        stable_service=f(m, "stable_service", where, to_name, None),
        canary_service=f(m, "canary_service", where, to_name, None),
        port=f(m, "port", where, to_port, None),
    )


def _argo_rollouts(ld: Loader, m: Mapping[str, Any], where: str) -> ArgoRolloutsConfig:
    f = ld.r.field
    return ArgoRolloutsConfig(
        name=ld.need(m, "name", where, to_name, ""),
        namespace=f(m, "namespace", where, to_name, "default"),
    )


def _nginx_ingress(ld: Loader, m: Mapping[str, Any], where: str) -> NginxIngressConfig:
    f = ld.r.field
    return NginxIngressConfig(
        name=ld.need(m, "name", where, to_name, ""),
        namespace=f(m, "namespace", where, to_name, "default"),
        canary_service=f(m, "canary_service", where, to_name, None),
        port=f(m, "port", where, to_port, None),
    )


def _object(c: Any) -> tuple[object, ...] | None:
    """A named Kubernetes object: two targets may not share it."""
    return (c.kind, c.namespace, c.name) if c.name else None


def _named(c: Any) -> str:
    return f"{c.kind} ({c.namespace}/{c.name})"


TRAEFIK_SERVICE: Kind[TraefikServiceConfig, Any] = Kind(
    name="traefik-service",
    keys=frozenset({"name", "namespace", "stable_service", "canary_service", "port"}),
    read=_traefik_service,
    build=None,
    describe=_named,
    identity=_object,
    fallback=USE_MEANWHILE,
)
ARGO_ROLLOUTS: Kind[ArgoRolloutsConfig, Any] = Kind(
    name="argo-rollouts",
    keys=frozenset({"name", "namespace"}),
    read=_argo_rollouts,
    build=None,
    describe=_named,
    identity=_object,
    fallback=USE_MEANWHILE,
)
NGINX_INGRESS: Kind[NginxIngressConfig, Any] = Kind(
    name="nginx-ingress",
    keys=frozenset({"name", "namespace", "canary_service", "port"}),
    read=_nginx_ingress,
    build=None,
    describe=_named,
    identity=_object,
    fallback=USE_MEANWHILE,
)
