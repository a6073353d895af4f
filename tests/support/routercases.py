"""Every router kind, set up for the router contract suite (``routers/test_router_contract.py``).

A ``RouterKind`` opens a ``RouterCase``: the router under test, built with its adapter's own
constructor, plus what the suite needs to look at it from outside: what it wrote (``writes``),
how to edit its object by hand, what ``finalize`` must have given back, and for a real proxy how
to wait until the proxy serves a weight and where to send requests. Each real component runs
for real and on 127.0.0.1 only: nginx (``procs.start_nginx``), Traefik (``traefik.start_traefik``),
the gateway-api router's HTTPRoute in kmock's Kubernetes emulator (``kube.cluster``), in front of
in-process backends (``backends``). The traefik-service and nginx-ingress routers' objects live
in the same emulator, which validates every one of them as it is written (their CRD, the
Kubernetes Ingress schema); no Traefik or ingress-nginx controller reads them here.

Adding a router kind to the suites: write its ``_open_<kind>`` below, declare its
``RouterKind``, and add that to ``ROUTERS`` at the top of the suite.
"""

from __future__ import annotations

import asyncio
import copy
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from canaryd.adapters.kube import KubeClient
from canaryd.adapters.routers.gateway_api import GatewayApiHTTPRouteRouter
from canaryd.adapters.routers.nginx import NginxFileRouter, upstream_name
from canaryd.adapters.routers.nginx_ingress import NginxIngressRouter
from canaryd.adapters.routers.noop import NoopRouter
from canaryd.adapters.routers.traefik_file import TraefikFileProviderRouter
from canaryd.adapters.routers.traefik_service import TraefikServiceRouter
from canaryd.ports import Router
from support import kube, procs
from support import traefik as tk
from support.backends import start_backend

TARGET = "web"
HAND_EDIT_AT = 40  # the weight the suite sets before a hand edit (60 stable / 40 canary)

Op = Callable[[], Awaitable[None]]


@dataclass
class RouterCase:
    """One router under test and the view from outside it."""

    router: Router
    # The same router as a restarted canaryd would build it (same object or file, new process).
    restarted: Callable[[], Router]
    # A value that changes whenever the router writes or reloads anything outside the process.
    writes: Callable[[], Awaitable[Hashable]]
    # Asserts that what the router took over is given back (called after ``finalize``).
    released: Callable[[], Awaitable[None]]
    # Edits the router's object or file by hand, as a person would (at ``HAND_EDIT_AT``).
    hand_edit: Op | None = None
    # For a real proxy: run an op (set_weight, finalize), then wait until the proxy serves
    # ``weight``; and the proxy's URL.
    through: Callable[[Op, int], Awaitable[None]] | None = None
    url: str = ""
    writes_outside: bool = True  # False: it keeps its weight in the process, ``writes`` is fixed


@dataclass(frozen=True)
class RouterKind:
    """A router kind as the suites know it."""

    kind: str
    open: Callable[[Path], AbstractAsyncContextManager[RouterCase]]
    data_plane: bool  # a real proxy runs in front of backends: the traffic cases apply
    cannot_hand_edit: str | None = None  # why there is no hand edit to read back, if there is not

    def __str__(self) -> str:
        return self.kind


# --------------------------------------------------------------------------- noop


@asynccontextmanager
async def _open_noop(tmp: Path) -> AsyncIterator[RouterCase]:
    router = NoopRouter()

    async def nothing() -> Hashable:
        return "noop writes nothing outside the process"

    async def released() -> None:
        assert await router.get_weight() is None, "noop forgets the weight it was told"

    yield RouterCase(router, NoopRouter, nothing, released, writes_outside=False)


NOOP = RouterKind(
    "noop",
    _open_noop,
    data_plane=False,
    cannot_hand_edit=(
        "noop owns no object or file: another tool moves the traffic, and noop reports the "
        "weight it was last told (nothing after a restart), so there is nothing to edit by hand"
    ),
)


# --------------------------------------------------------------------------- nginx


async def _backends(runners: list[web.AppRunner]) -> tuple[str, str]:
    """A stable and a canary backend: their ``host:port``."""
    addresses = []
    for role in ("stable", "canary"):
        runner, address = await start_backend(role)
        runners.append(runner)
        addresses.append(address)
    return addresses[0], addresses[1]


def _stat(path: Path) -> Hashable:
    """Which file is at ``path`` and when it was written (an atomic replace changes both)."""
    try:
        found = path.stat()
    except FileNotFoundError:
        return None
    return found.st_ino, found.st_mtime_ns


@asynccontextmanager
async def _open_nginx(tmp: Path) -> AsyncIterator[RouterCase]:
    include = tmp / "canaryd" / f"{TARGET}.conf"
    include.parent.mkdir()
    counter = tmp / "reloads"
    runners: list[web.AppRunner] = []
    nginx: procs.Proc | None = None
    try:
        stable, canary = await _backends(runners)
        servers: dict[str, Any] = {"stable_servers": [stable], "canary_servers": [canary]}
        # nginx refuses to start without the include, so a seed writes weight 0 first
        seed = NginxFileRouter(
            TARGET, include, test_command=["true"], reload_command=["true"], **servers
        )
        await seed.set_weight(0)
        pool = f"{upstream_name(TARGET)}_pool"
        nginx = await asyncio.to_thread(procs.start_nginx, tmp, include, pool)
        running = nginx

        def make() -> NginxFileRouter:
            return NginxFileRouter(
                TARGET,
                include,
                test_command=procs.nginx_argv(running, "-t"),
                reload_command=procs.counted(procs.nginx_argv(running, "-s", "reload"), counter),
                **servers,
            )

        router = make()

        async def writes() -> Hashable:
            return procs.calls(counter), _stat(include)

        async def hand_edit() -> None:
            text = include.read_text()
            edited = re.sub(r"weight=(\d+);", lambda m: f"weight={int(m[1]) + 1};", text, count=1)
            assert edited != text
            include.write_text(edited)

        async def released() -> None:
            assert include.read_bytes() == router.render(0).encode(), "the file stays, at 0"
            assert await router.get_weight() == 0

        async def through(op: Op, weight: int) -> None:
            before = procs.nginx_workers(running)
            await op()
            await asyncio.to_thread(procs.wait_nginx_reloaded, running, before)

        yield RouterCase(router, make, writes, released, hand_edit, through, nginx.url)
    finally:
        if nginx is not None:
            nginx.stop()
        for runner in runners:
            await runner.cleanup()


NGINX = RouterKind("nginx", _open_nginx, data_plane=True)


# --------------------------------------------------------------------------- traefik-file


@asynccontextmanager
async def _open_traefik_file(tmp: Path) -> AsyncIterator[RouterCase]:
    directory = tmp / "dynamic"
    directory.mkdir()
    path = directory / f"{TARGET}.yml"
    runners: list[web.AppRunner] = []
    traefik: procs.Proc | None = None
    try:
        stable, canary = await _backends(runners)
        backends = {  # the user's half: the two services and the main router
            "http": {
                "routers": {TARGET: {"rule": "PathPrefix(`/`)", "service": TARGET}},
                "services": {
                    f"{TARGET}-stable": {
                        "loadBalancer": {"servers": [{"url": f"http://{stable}"}]}
                    },
                    f"{TARGET}-canary": {
                        "loadBalancer": {"servers": [{"url": f"http://{canary}"}]}
                    },
                },
            }
        }
        (directory / "backends.yml").write_text(yaml.safe_dump(backends))
        traefik = await asyncio.to_thread(tk.start_traefik, tmp, directory)
        running = traefik

        def make() -> TraefikFileProviderRouter:
            return TraefikFileProviderRouter(TARGET, path)

        router = make()

        async def writes() -> Hashable:
            return _stat(path)

        async def hand_edit() -> None:
            text = path.read_text()
            edited = text.replace(f"weight: {100 - HAND_EDIT_AT}\n", "weight: 70\n")
            assert edited != text
            path.write_text(edited)

        async def released() -> None:
            assert path.read_bytes() == router.render(0).encode(), "the file stays, at 0"
            assert await router.get_weight() == 0

        async def through(op: Op, weight: int) -> None:
            await op()
            sides = ((router.stable_service, 100 - weight), (router.canary_service, weight))
            expected = {name: w for name, w in sides if w}
            await asyncio.to_thread(tk.wait_served, running, router.service, expected)

        yield RouterCase(router, make, writes, released, hand_edit, through, traefik.url)
    finally:
        if traefik is not None:
            traefik.stop()
        for runner in runners:
            await runner.cleanup()


TRAEFIK_FILE = RouterKind("traefik-file", _open_traefik_file, data_plane=True)


# --------------------------------------------------------------------------- gateway-api

NS = "shop"
OTHER_RULE = {
    "matches": [{"path": {"type": "PathPrefix", "value": "/api"}}],
    "backendRefs": [{"name": "api", "port": 9090}],
}
MAIN_MATCHES = [{"path": {"type": "PathPrefix", "value": "/"}}]


def user_route() -> dict[str, Any]:
    """An HTTPRoute as its owner wrote it: canaryd takes over the rule sending to web-stable."""
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": TARGET, "namespace": NS},
        "spec": {
            "parentRefs": [{"name": "gw"}],
            "rules": [
                copy.deepcopy(OTHER_RULE),
                {
                    "matches": copy.deepcopy(MAIN_MATCHES),
                    "backendRefs": [{"name": f"{TARGET}-stable", "port": 8080}],
                },
            ],
        },
    }


def _service_ref(name: str, weight: int) -> dict[str, Any]:
    return {"group": "", "kind": "Service", "name": name, "port": 8080, "weight": weight}


@asynccontextmanager
async def _open_gateway_api(tmp: Path) -> AsyncIterator[RouterCase]:
    async with kube.cluster() as cluster:
        cluster.seed(kube.HTTPROUTES, NS, user_route())

        def make() -> GatewayApiHTTPRouteRouter:
            return GatewayApiHTTPRouteRouter(
                TARGET, f"{TARGET}-stable", f"{TARGET}-canary", namespace=NS, api_client=cluster.api
            )

        router = make()

        def rules() -> list[dict[str, Any]]:
            route = cluster.get(kube.HTTPROUTES, NS, TARGET)
            assert route is not None, f"HTTPRoute {NS}/{TARGET} is gone"
            found: list[dict[str, Any]] = route["spec"]["rules"]
            return found

        async def writes() -> Hashable:
            return sum(1 for method, _ in cluster.writes if method in ("PUT", "PATCH"))

        async def hand_edit() -> None:
            def reweigh(route: dict[str, Any]) -> None:
                for rule in route["spec"]["rules"]:
                    for ref in rule["backendRefs"]:
                        if ref["name"] == f"{TARGET}-stable":
                            ref["weight"] = 70  # 70 + 40: not a split canaryd writes

            cluster.write(kube.HTTPROUTES, NS, TARGET, reweigh)

        async def released() -> None:
            main = {
                "matches": MAIN_MATCHES,
                "backendRefs": [
                    _service_ref(f"{TARGET}-stable", 100),
                    _service_ref(f"{TARGET}-canary", 0),
                ],
            }
            assert rules() == [OTHER_RULE, main], "the pin rule gone, the user's rules kept"
            route = cluster.get(kube.HTTPROUTES, NS, TARGET)
            assert kube.schema_errors(route, kube.HTTPROUTE_CRD, "v1") == []
            assert await router.get_weight() == 0

        yield RouterCase(router, make, writes, released, hand_edit)


GATEWAY_API = RouterKind("gateway-api", _open_gateway_api, data_plane=False)


# --------------------------------------------------------------------------- traefik-service

USER_INGRESS_ROUTE = {
    "apiVersion": "traefik.io/v1alpha1",
    "kind": "IngressRoute",
    "metadata": {"name": TARGET, "namespace": NS},
    "spec": {
        "entryPoints": ["websecure"],
        "routes": [
            {
                "kind": "Rule",
                "match": "Host(`web.example.com`) && PathPrefix(`/`)",
                "middlewares": [{"name": "compress"}],
                "services": [{"kind": "TraefikService", "name": TARGET}],
            },
            {
                "kind": "Rule",
                "match": "Host(`web.example.com`) && PathPrefix(`/api`)",
                "services": [{"kind": "Service", "name": "api", "port": 9090}],
            },
        ],
        "tls": {"secretName": "web-tls"},
    },
}


def _writes(cluster: kube.Cluster) -> Callable[[], Awaitable[Hashable]]:
    async def writes() -> Hashable:
        return len(cluster.writes)

    return writes


@asynccontextmanager
async def _open_traefik_service(tmp: Path) -> AsyncIterator[RouterCase]:
    async with kube.cluster() as cluster:
        cluster.seed(kube.INGRESSROUTES, NS, copy.deepcopy(USER_INGRESS_ROUTE))
        shared = KubeClient(cluster.api)

        def make() -> TraefikServiceRouter:
            return TraefikServiceRouter(
                TARGET, f"{TARGET}-stable", f"{TARGET}-canary", namespace=NS, port=8080, kube=shared
            )

        router = make()

        async def hand_edit() -> None:
            def reweigh(service: dict[str, Any]) -> None:
                for ref in service["spec"]["weighted"]["services"]:
                    if ref["name"] == f"{TARGET}-stable":
                        ref["weight"] = 70  # 70 + 40: not a split canaryd writes

            cluster.write(kube.TRAEFIKSERVICES, NS, TARGET, reweigh)

        async def released() -> None:
            service = cluster.get(kube.TRAEFIKSERVICES, NS, TARGET)
            assert service is not None, "the TraefikService stays: the user's route names it"
            assert service["spec"] == {
                "weighted": {
                    "services": [
                        {"kind": "Service", "name": f"{TARGET}-stable", "port": 8080, "weight": 100}
                    ]
                }
            }
            assert cluster.get(kube.INGRESSROUTES, NS, f"{TARGET}-canary") is None, "pin gone"
            user = cluster.get(kube.INGRESSROUTES, NS, TARGET)
            assert user is not None and user["spec"] == USER_INGRESS_ROUTE["spec"], "untouched"
            assert await router.get_weight() == 0

        yield RouterCase(router, make, _writes(cluster), released, hand_edit)


TRAEFIK_SERVICE = RouterKind("traefik-service", _open_traefik_service, data_plane=False)


# --------------------------------------------------------------------------- nginx-ingress

STABLE_INGRESS = {
    "apiVersion": "networking.k8s.io/v1",
    "kind": "Ingress",
    "metadata": {"name": TARGET, "namespace": NS, "annotations": {"team": "shop"}},
    "spec": {
        "ingressClassName": "nginx",
        "tls": [{"hosts": ["web.example.com"], "secretName": "web-tls"}],
        "rules": [
            {
                "host": "web.example.com",
                "http": {
                    "paths": [
                        {
                            "path": "/",
                            "pathType": "Prefix",
                            "backend": {"service": {"name": TARGET, "port": {"number": 8080}}},
                        }
                    ]
                },
            }
        ],
    },
}


@asynccontextmanager
async def _open_nginx_ingress(tmp: Path) -> AsyncIterator[RouterCase]:
    async with kube.cluster() as cluster:
        cluster.seed(kube.INGRESSES, NS, copy.deepcopy(STABLE_INGRESS))
        shared = KubeClient(cluster.api)

        def make() -> NginxIngressRouter:
            return NginxIngressRouter(TARGET, namespace=NS, kube=shared)

        router = make()

        async def hand_edit() -> None:
            def reweigh(ingress: dict[str, Any]) -> None:
                ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/canary-weight"] = (
                    "70"  # not the weight canaryd wrote (canaryd.io/weight)
                )

            cluster.write(kube.INGRESSES, NS, f"{TARGET}-canary", reweigh)

        async def released() -> None:
            assert cluster.get(kube.INGRESSES, NS, f"{TARGET}-canary") is None, "canary gone"
            stable = cluster.get(kube.INGRESSES, NS, TARGET)
            assert stable is not None and stable["spec"] == STABLE_INGRESS["spec"], "untouched"
            assert await router.get_weight() == 0

        yield RouterCase(router, make, _writes(cluster), released, hand_edit)


NGINX_INGRESS = RouterKind("nginx-ingress", _open_nginx_ingress, data_plane=False)
