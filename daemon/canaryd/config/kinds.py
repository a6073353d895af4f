"""The platform and router kinds of a target: one small dataclass and one reader per kind.

A target's ``platform`` (where the canary runs) and ``router`` (how traffic is split) are tagged
by ``kind``. Each kind is its own frozen dataclass with exactly the keys that kind understands,
so an adapter receives a typed value and ``mypy`` narrows the ``Platform`` / ``Router`` union on
``kind``. To teach canaryd a new kind, add its dataclass here, one reader function, and a row in
``PLATFORMS`` or ``ROUTERS`` (its keys and its reader); ``settings`` picks it up from the tables.

Why apart from ``settings``: the kinds grow with the adapters (every new router brings its own
keys), while the rest of the config file changes rarely; kept here they are one table to read,
and ``settings`` stays the file's overall shape. ``settings`` re-exports every public name,
so ``from canaryd.config.settings import NginxRouter`` keeps working. The readers see the loader
through ``Loader`` (the three members they use), so this module never imports ``settings``;
for the same reason the converters both modules need (names, ports, label sets) live here, the
lower of the two.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

from canaryd.config.reader import Reader, join, to_int, to_str

T = TypeVar("T")

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_LABEL = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TRAEFIK_REF = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(?:@[A-Za-z0-9][A-Za-z0-9_-]*)?")
_TRAEFIK_SUFFIXES = (".yml", ".yaml")
# Compose's short port syntax: [IP:]HOST_PORT:CONTAINER_PORT[/PROTO] (IPv4 or [IPv6])
_PUBLISH = re.compile(
    r"(?:([0-9.]+|\[[0-9A-Fa-f:.]+\]):)?([0-9]{1,5}):([0-9]{1,5})(?:/(tcp|udp|sctp))?"
)
# host:port as nginx's upstream ``server`` takes it; nothing that could end the directive
_SERVER = re.compile(
    r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?):([0-9]{1,5})"
)


# --------------------------------------------------------------------------- values


# ---- platforms: where the canary runs


@dataclass(frozen=True, slots=True)
class KubernetesPlatform:
    deployment: str
    namespace: str = "default"
    container: str | None = None  # which container's image changes (default: the first)
    kind: Literal["kubernetes"] = field(default="kubernetes", init=False)


@dataclass(frozen=True, slots=True)
class DockerPlatform:
    """A Compose service (``service``) or the containers carrying all of ``labels``."""

    service: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    project: str | None = None  # com.docker.compose.project, when several share a host
    host: str | None = None  # Docker endpoint, e.g. unix:///var/run/docker.sock
    probe_path: str | None = None  # HTTP readiness probe when the image has no HEALTHCHECK
    probe_port: int | None = None
    # "8080/tcp" -> (host ip, host port): where the canary's ports are published for the router
    canary_ports: Mapping[str, tuple[str, int]] = field(default_factory=dict)
    kind: Literal["docker"] = field(default="docker", init=False)


@dataclass(frozen=True, slots=True)
class NoPlatform:
    """Something else deploys the canary; canaryd only routes and judges."""

    kind: Literal["none"] = field(default="none", init=False)


Platform = KubernetesPlatform | DockerPlatform | NoPlatform


# ---- routers: how traffic is split


@dataclass(frozen=True, slots=True)
class GatewayApiRouter:
    name: str  # the HTTPRoute
    stable_service: str
    canary_service: str
    namespace: str = "default"
    port: int | None = None
    kind: Literal["gateway-api"] = field(default="gateway-api", init=False)


@dataclass(frozen=True, slots=True)
class TraefikServiceRouter:
    name: str  # the TraefikService
    namespace: str = "default"
    stable_service: str | None = None
    canary_service: str | None = None
    port: int | None = None
    kind: Literal["traefik-service"] = field(default="traefik-service", init=False)


@dataclass(frozen=True, slots=True)
class ArgoRolloutsRouter:
    name: str  # the Rollout
    namespace: str = "default"
    kind: Literal["argo-rollouts"] = field(default="argo-rollouts", init=False)


@dataclass(frozen=True, slots=True)
class NginxIngressRouter:
    name: str  # the stable Ingress; the canary one is "<name>-canary"
    namespace: str = "default"
    canary_service: str | None = None
    port: int | None = None
    kind: Literal["nginx-ingress"] = field(default="nginx-ingress", init=False)


@dataclass(frozen=True, slots=True)
class TraefikFileRouter:
    path: Path  # the dynamic-configuration file (.yml or .yaml) in Traefik's watched directory
    service: str | None = None  # name of the weighted service (default: the target's name)
    stable_service: str | None = None  # default "<service>-stable"; may be "name@provider"
    canary_service: str | None = None  # default "<service>-canary"; may be "name@provider"
    rule: str | None = None  # the main router's match; the header pin is ANDed with it
    entry_points: tuple[str, ...] = ()  # the pin router's entry points (default: all)
    kind: Literal["traefik-file"] = field(default="traefik-file", init=False)


@dataclass(frozen=True, slots=True)
class NginxRouter:
    path: Path  # the include file with the upstream and the header map
    reload_command: tuple[str, ...] = ("nginx", "-s", "reload")
    test_command: tuple[str, ...] = ("nginx", "-t")
    upstream: str | None = None  # upstream name (default: the target's name)
    # "host:port" of each server; required by the loader (empty only in a hand-built value)
    stable_servers: tuple[str, ...] = ()
    canary_servers: tuple[str, ...] = ()
    kind: Literal["nginx"] = field(default="nginx", init=False)


@dataclass(frozen=True, slots=True)
class NoopRouter:
    """Observe only: weights are recorded, never applied (and cannot be verified)."""

    kind: Literal["noop"] = field(default="noop", init=False)


Router = (
    GatewayApiRouter
    | TraefikServiceRouter
    | ArgoRolloutsRouter
    | NginxIngressRouter
    | TraefikFileRouter
    | NginxRouter
    | NoopRouter
)


# --------------------------------------------------------------------------- reading


class Loader(Protocol):
    """What a kind's reader uses of ``settings``' loader."""

    @property
    def r(self) -> Reader: ...

    def need(
        self, m: Mapping[str, Any], key: str, where: str, convert: Callable[[Any], T], missing: T
    ) -> T:
        """A required key: a problem if absent; ``missing`` stands in for a bad or absent value."""
        ...

    def path(self, value: Any) -> Path:
        """A path from the config, relative to the config file's directory."""
        ...


def _kubernetes(ld: Loader, m: Mapping[str, Any], where: str) -> Platform:
    f = ld.r.field
    return KubernetesPlatform(
        deployment=ld.need(m, "deployment", where, to_name, ""),
        namespace=f(m, "namespace", where, to_name, "default"),
        container=f(m, "container", where, to_name, None),
    )


def _docker(ld: Loader, m: Mapping[str, Any], where: str) -> Platform:
    r = ld.r
    service = r.field(m, "service", where, to_str, None)
    labels = read_labels(r, m.get("labels", {}), join(where, "labels"), names=False)
    if (service is None) == (not labels):
        r.problem(where, "needs exactly one of service (a Compose service) or labels")
    probe_path = r.field(m, "probe_path", where, to_str, None)
    if probe_path is not None and not probe_path.startswith("/"):
        r.problem(join(where, "probe_path"), f"must start with '/', got {probe_path!r}")
    return DockerPlatform(
        service=service,
        labels=labels,
        project=r.field(m, "project", where, to_str, None),
        host=r.field(m, "host", where, to_str, None),
        probe_path=probe_path,
        probe_port=r.field(m, "probe_port", where, to_port, None),
        canary_ports=_published_ports(r, m.get("canary_ports", []), join(where, "canary_ports")),
    )


def _published_ports(r: Reader, raw: Any, where: str) -> dict[str, tuple[str, int]]:
    """Compose-style ``[IP:]HOST_PORT:CONTAINER_PORT[/PROTO]``, by container port; without an
    address the port is published on 127.0.0.1 only (unlike Compose: it is for a router on
    this host). Each bad entry is named by its index."""
    if not isinstance(raw, list):
        r.problem(where, f"expected a list such as ['127.0.0.1:18080:8080'], got {raw!r}")
        return {}
    ports: dict[str, tuple[str, int]] = {}
    for i, item in enumerate(raw):
        found = _PUBLISH.fullmatch(item) if isinstance(item, str) else None
        if found is None:
            r.problem(
                join(where, i),
                f"expected [IP:]HOST_PORT:CONTAINER_PORT[/tcp|udp] such as "
                f"127.0.0.1:18080:8080, got {item!r}",
            )
            continue
        ip, host_port, port, proto = found.groups()
        if not all(1 <= int(p) <= 65535 for p in (host_port, port)):
            r.problem(join(where, i), f"ports must be within 1..65535, got {item!r}")
            continue
        key = f"{int(port)}/{proto or 'tcp'}"
        if key in ports:
            r.problem(join(where, i), f"container port {key} is published twice")
            continue
        ports[key] = ((ip or "127.0.0.1").strip("[]"), int(host_port))
    return ports


def _no_platform(ld: Loader, m: Mapping[str, Any], where: str) -> Platform:
    return NoPlatform()


def _gateway_api(ld: Loader, m: Mapping[str, Any], where: str) -> Router:
    f = ld.r.field
    return GatewayApiRouter(
        name=ld.need(m, "name", where, to_name, ""),
        stable_service=ld.need(m, "stable_service", where, to_name, ""),
        canary_service=ld.need(m, "canary_service", where, to_name, ""),
        namespace=f(m, "namespace", where, to_name, "default"),
        port=f(m, "port", where, to_port, None),
    )


def _traefik_service(ld: Loader, m: Mapping[str, Any], where: str) -> Router:
    f = ld.r.field
    return TraefikServiceRouter(
        name=ld.need(m, "name", where, to_name, ""),
        namespace=f(m, "namespace", where, to_name, "default"),
        stable_service=f(m, "stable_service", where, to_name, None),
        canary_service=f(m, "canary_service", where, to_name, None),
        port=f(m, "port", where, to_port, None),
    )


def _argo_rollouts(ld: Loader, m: Mapping[str, Any], where: str) -> Router:
    f = ld.r.field
    return ArgoRolloutsRouter(
        name=ld.need(m, "name", where, to_name, ""),
        namespace=f(m, "namespace", where, to_name, "default"),
    )


def _nginx_ingress(ld: Loader, m: Mapping[str, Any], where: str) -> Router:
    f = ld.r.field
    return NginxIngressRouter(
        name=ld.need(m, "name", where, to_name, ""),
        namespace=f(m, "namespace", where, to_name, "default"),
        canary_service=f(m, "canary_service", where, to_name, None),
        port=f(m, "port", where, to_port, None),
    )


def _traefik_file(ld: Loader, m: Mapping[str, Any], where: str) -> Router:
    """Traefik's file provider loads ``.yml``, ``.yaml`` and ``.toml`` files and skips others
    (a ``.json`` would be written and never read); canaryd writes YAML, so ``.yml``/``.yaml``."""
    r, f = ld.r, ld.r.field
    path = ld.need(m, "path", where, ld.path, Path())
    if path != Path() and path.suffix.lower() not in _TRAEFIK_SUFFIXES:
        r.problem(
            join(where, "path"),
            f"must end in .yml or .yaml, got {path.name!r}: canaryd writes YAML, and Traefik's "
            "file provider skips a file with another suffix (.toml it reads, canaryd does not "
            "write)",
        )
    router = TraefikFileRouter(
        path=path,
        service=f(m, "service", where, to_name, None),
        stable_service=f(m, "stable_service", where, _traefik_ref, None),
        canary_service=f(m, "canary_service", where, _traefik_ref, None),
        rule=f(m, "rule", where, _traefik_rule, None),
        entry_points=f(m, "entry_points", where, _entry_points, ()),
    )
    # The defaults (<service>-stable, <service>-canary) differ; two names given may not.
    if router.stable_service is not None and router.canary_service == router.stable_service:
        r.problem(
            join(where, "canary_service"), f"is the stable service too ({router.stable_service!r})"
        )
    return router


def _nginx(ld: Loader, m: Mapping[str, Any], where: str) -> Router:
    f = ld.r.field
    base = NginxRouter(path=Path())
    return NginxRouter(
        path=ld.need(m, "path", where, ld.path, Path()),
        reload_command=f(m, "reload_command", where, _command, base.reload_command),
        test_command=f(m, "test_command", where, _command, base.test_command),
        upstream=f(m, "upstream", where, _label_name, None),
        stable_servers=_servers(ld, m, "stable_servers", where),
        canary_servers=_servers(ld, m, "canary_servers", where, also=m.get("stable_servers")),
    )


def _servers(
    ld: Loader, m: Mapping[str, Any], key: str, where: str, also: Any = None
) -> tuple[str, ...]:
    """A required, non-empty list of ``host:port``; each bad entry is named by its index.

    The addresses end up inside nginx's configuration, so nothing but a host name, an IPv4
    address or a bracketed IPv6 address and a port gets through. An address may not appear
    twice, nor in both lists (``also``: the other list): a server on both sides would blur the
    split and defeat the ``X-Canary-Deploy`` pin.
    """
    r, path = ld.r, join(where, key)
    raw: list[Any] = ld.need(m, key, where, _server_list, [])
    others: set[Any] = set(also) if isinstance(also, list) else set()
    servers: list[str] = []
    for i, item in enumerate(raw):
        try:
            server = to_server(item)
        except ValueError as exc:
            r.problem(join(path, i), str(exc))
            continue
        if server in servers:
            r.problem(join(path, i), f"{server!r} is listed twice")
        elif server in others:
            r.problem(join(path, i), f"{server!r} is also a stable server")
        servers.append(server)
    return tuple(servers)


def _server_list(value: Any) -> list[Any]:
    if not isinstance(value, list) or not value:
        raise ValueError(
            f"expected a non-empty list of host:port addresses such as [127.0.0.1:8080], "
            f"got {value!r}"
        )
    return value


def _traefik_ref(value: Any) -> str:
    """A Traefik service reference: a name, or ``name@provider`` for another provider's."""
    text = to_str(value)
    if not _TRAEFIK_REF.fullmatch(text):
        raise ValueError(
            f"{text!r} is not a Traefik service name (letters, digits, '.', '_', '-', "
            "optionally @provider as in web-stable@docker)"
        )
    return text


def _traefik_rule(value: Any) -> str:
    text = to_str(value)
    if not text.strip() or "\n" in text:
        raise ValueError(f"expected a Traefik rule on one line such as Host(`a.b`), got {text!r}")
    return text


def _entry_points(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise ValueError(f"expected a non-empty list of entry point names, got {value!r}")
    return tuple(to_name(v) for v in value)


def _noop(ld: Loader, m: Mapping[str, Any], where: str) -> Router:
    return NoopRouter()


PLATFORMS: dict[str, tuple[set[str], Callable[[Loader, Mapping[str, Any], str], Platform]]] = {
    "kubernetes": ({"deployment", "namespace", "container"}, _kubernetes),
    "docker": (
        {"service", "labels", "project", "host", "probe_path", "probe_port", "canary_ports"},
        _docker,
    ),
    "none": (set(), _no_platform),
}
ROUTERS: dict[str, tuple[set[str], Callable[[Loader, Mapping[str, Any], str], Router]]] = {
    "gateway-api": (
        {"name", "namespace", "stable_service", "canary_service", "port"},
        _gateway_api,
    ),
    "traefik-service": (
        {"name", "namespace", "stable_service", "canary_service", "port"},
        _traefik_service,
    ),
    "argo-rollouts": ({"name", "namespace"}, _argo_rollouts),
    "nginx-ingress": ({"name", "namespace", "canary_service", "port"}, _nginx_ingress),
    "traefik-file": (
        {"path", "service", "stable_service", "canary_service", "rule", "entry_points"},
        _traefik_file,
    ),
    "nginx": (
        {"path", "reload_command", "test_command", "upstream", "stable_servers", "canary_servers"},
        _nginx,
    ),
    "noop": (set(), _noop),
}
PLATFORM_KINDS = tuple(PLATFORMS)
ROUTER_KINDS = tuple(ROUTERS)


def router_identity(router: Router) -> tuple[object, ...] | None:
    """What a router takes over: two targets must never share it."""
    if isinstance(router, TraefikFileRouter | NginxRouter):
        return (router.kind, router.path.resolve()) if router.path != Path() else None
    if isinstance(router, NoopRouter) or not router.name:
        return None
    return (router.kind, router.namespace, router.name)


# --------------------------------------------------------------------------- converters


def to_name(value: Any) -> str:
    text = to_str(value)
    if not _NAME.fullmatch(text):
        raise ValueError(f"{text!r} is not a valid name (letters, digits, '.', '_', '-')")
    return text


def _label_name(value: Any) -> str:
    text = to_str(value)
    if not _LABEL.fullmatch(text):
        raise ValueError(f"{text!r} is not a valid identifier")
    return text


def to_port(value: Any) -> int:
    port = to_int(value)
    if not 1 <= port <= 65535:
        raise ValueError(f"port must be within 1..65535, got {port}")
    return port


def to_server(value: Any) -> str:
    """``host:port`` for an nginx ``server`` line: a host name, IPv4 or ``[IPv6]``, and a port."""
    text = value if isinstance(value, str) else None
    found = _SERVER.fullmatch(text) if text is not None else None
    if text is None or found is None:
        raise ValueError(
            f"expected host:port such as 127.0.0.1:8080 or web-1.internal:8080, got {value!r}"
        )
    if not 1 <= int(found.group(1)) <= 65535:
        raise ValueError(f"port must be within 1..65535, got {value!r}")
    return text


def _command(value: Any) -> tuple[str, ...]:
    """A command as an argv list, or one string split on whitespace (no shell is involved)."""
    if isinstance(value, str) and value.split():
        return tuple(value.split())
    if isinstance(value, list) and value and all(isinstance(v, str) and v for v in value):
        return tuple(value)
    raise ValueError(f"expected a command (a string or a list of strings), got {value!r}")


def read_labels(r: Reader, raw: Any, where: str, names: bool = True) -> dict[str, str]:
    """Label names (any keys, with ``names=False``) to strings; a bad entry is a problem."""
    labels: dict[str, str] = {}
    for key, value in (r.mapping(raw, where) if raw is not None else {}).items():
        if names and not _LABEL.fullmatch(key):
            r.problem(join(where, key), "not a valid Prometheus label name")
            continue
        if not isinstance(value, str):
            r.problem(
                join(where, key),
                f"expected a string, got {type(value).__name__} {value!r} (quote it)",
            )
            continue
        labels[key] = value
    return labels
