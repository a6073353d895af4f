"""The Kubernetes routers and the ``kubernetes`` platform set up on a ``clusters.Cluster`` (a real
cluster or the emulator), for the real-cluster suite (``tests/realcluster/``).

They are the contract suites' cases (``support.routercases``, ``support.platformcases``) with the
same user objects, moved into the scenario's throwaway namespace and seen only through the API,
so that the contract tests themselves run unchanged against a cluster. Two things differ from
the emulator-only cases, because a real cluster differs:

- what a router wrote is seen through ``Cluster.footprint`` (uid, generation, labels,
  annotations of its objects), not by counting requests: a cluster's controllers write
  statuses at any time, and only the emulator records requests;
- what ``finalize`` gave back is compared with the user's objects **as the server stored them**
  when seeded (an apiserver fills in defaults, e.g. an HTTPRoute backendRef's ``group``,
  ``kind`` and ``weight``), not with the manifests as written;
- the platform's images are ones a cluster can pull and run (``registry.k8s.io/pause``, two
  tags), since there the Deployment controller waits for real pods to be ready.
"""

from __future__ import annotations

import copy
from collections.abc import Awaitable, Callable, Hashable
from typing import Any

from canaryd.adapters.kube import KubeClient
from canaryd.adapters.platforms.kubernetes import KubernetesDeploymentPlatform
from canaryd.adapters.routers.gateway_api import GatewayApiHTTPRouteRouter
from canaryd.adapters.routers.nginx_ingress import NginxIngressRouter
from canaryd.adapters.routers.traefik_service import TraefikServiceRouter
from support import kube, platformcases, routercases
from support.clusters import Cluster
from support.platformcases import PlatformCase
from support.routercases import TARGET, RouterCase

STABLE, CANARY = f"{TARGET}-stable", f"{TARGET}-canary"
OLD_IMAGE, NEW_IMAGE = "registry.k8s.io/pause:3.9", "registry.k8s.io/pause:3.10"


def _in(cluster: Cluster, manifest: dict[str, Any]) -> dict[str, Any]:
    """``manifest`` (a contract case's user object) moved into the scenario's namespace."""
    moved = copy.deepcopy(manifest)
    moved["metadata"]["namespace"] = cluster.namespace
    return moved


def _footprint(cluster: Cluster, *objects: tuple[Any, str]) -> Callable[[], Awaitable[Hashable]]:
    async def footprint() -> Hashable:
        return await cluster.footprint(*objects)

    return footprint


# --------------------------------------------------------------------------- gateway-api


async def gateway_api(cluster: Cluster) -> RouterCase:
    await cluster.require(kube.HTTPROUTES)
    seeded = await cluster.seed(kube.HTTPROUTES, _in(cluster, routercases.user_route()))
    other, main = seeded["spec"]["rules"]

    def make() -> GatewayApiHTTPRouteRouter:
        return GatewayApiHTTPRouteRouter(
            TARGET, STABLE, CANARY, namespace=cluster.namespace, api_client=cluster.api
        )

    router = make()

    async def hand_edit() -> None:
        def reweigh(route: dict[str, Any]) -> None:
            for rule in route["spec"]["rules"]:
                for ref in rule["backendRefs"]:
                    if ref["name"] == STABLE:
                        ref["weight"] = 70  # 70 + 40: not a split canaryd writes

        await cluster.replace(kube.HTTPROUTES, TARGET, reweigh)

    async def released() -> None:
        route = await cluster.get(kube.HTTPROUTES, TARGET)
        assert route is not None, f"HTTPRoute {cluster.namespace}/{TARGET} is gone"
        rules = route["spec"]["rules"]
        assert len(rules) == 2, "the pin rule is gone, the user's two rules are kept"
        assert rules[0] == other, "the user's other rule is as the server stored it"
        assert rules[1]["matches"] == main["matches"]
        refs = [(ref["name"], ref.get("weight")) for ref in rules[1]["backendRefs"]]
        assert refs == [(STABLE, 100), (CANARY, 0)]
        assert await router.get_weight() == 0

    footprint = _footprint(cluster, (kube.HTTPROUTES, TARGET))
    return RouterCase(router, make, footprint, released, hand_edit)


# --------------------------------------------------------------------------- traefik-service


async def traefik_service(cluster: Cluster) -> RouterCase:
    await cluster.require(kube.TRAEFIKSERVICES, kube.INGRESSROUTES)
    user = await cluster.seed(kube.INGRESSROUTES, _in(cluster, routercases.USER_INGRESS_ROUTE))
    shared = KubeClient(cluster.api)

    def make() -> TraefikServiceRouter:
        return TraefikServiceRouter(
            TARGET, STABLE, CANARY, namespace=cluster.namespace, port=8080, kube=shared
        )

    router = make()

    async def hand_edit() -> None:
        def reweigh(service: dict[str, Any]) -> None:
            for ref in service["spec"]["weighted"]["services"]:
                if ref["name"] == STABLE:
                    ref["weight"] = 70  # 70 + 40: not a split canaryd writes

        await cluster.replace(kube.TRAEFIKSERVICES, TARGET, reweigh)

    async def released() -> None:
        service = await cluster.get(kube.TRAEFIKSERVICES, TARGET)
        assert service is not None, "the TraefikService stays: the user's route names it"
        assert service["spec"] == {
            "weighted": {
                "services": [{"kind": "Service", "name": STABLE, "port": 8080, "weight": 100}]
            }
        }
        assert await cluster.get(kube.INGRESSROUTES, CANARY) is None, "the pin route is gone"
        kept = await cluster.get(kube.INGRESSROUTES, TARGET)
        assert kept is not None and kept["spec"] == user["spec"], "the user's route untouched"
        assert await router.get_weight() == 0

    footprint = _footprint(
        cluster,
        (kube.TRAEFIKSERVICES, TARGET),
        (kube.INGRESSROUTES, TARGET),
        (kube.INGRESSROUTES, CANARY),
    )
    return RouterCase(router, make, footprint, released, hand_edit)


# --------------------------------------------------------------------------- nginx-ingress


async def nginx_ingress(cluster: Cluster) -> RouterCase:
    await cluster.require(kube.INGRESSES)
    stable = await cluster.seed(kube.INGRESSES, _in(cluster, routercases.STABLE_INGRESS))
    shared = KubeClient(cluster.api)

    def make() -> NginxIngressRouter:
        return NginxIngressRouter(TARGET, namespace=cluster.namespace, kube=shared)

    router = make()

    async def hand_edit() -> None:
        def reweigh(ingress: dict[str, Any]) -> None:
            annotations = ingress["metadata"]["annotations"]
            annotations["nginx.ingress.kubernetes.io/canary-weight"] = "70"  # not canaryd's

        await cluster.replace(kube.INGRESSES, CANARY, reweigh)

    async def released() -> None:
        assert await cluster.get(kube.INGRESSES, CANARY) is None, "the canary Ingress is gone"
        kept = await cluster.get(kube.INGRESSES, TARGET)
        assert kept is not None and kept["spec"] == stable["spec"], "the user's Ingress untouched"
        assert await router.get_weight() == 0

    footprint = _footprint(cluster, (kube.INGRESSES, TARGET), (kube.INGRESSES, CANARY))
    return RouterCase(router, make, footprint, released, hand_edit)


ROUTERS: dict[str, Callable[[Cluster], Awaitable[RouterCase]]] = {
    "gateway-api": gateway_api,
    "traefik-service": traefik_service,
    "nginx-ingress": nginx_ingress,
}


# --------------------------------------------------------------------------- kubernetes


def runnable_deployment() -> dict[str, Any]:
    """The contract's Deployment ``web`` running an image a cluster can pull and start."""
    deployment = platformcases.stable_deployment()
    deployment["spec"]["template"]["spec"]["containers"][0]["image"] = OLD_IMAGE
    return deployment


async def kubernetes(cluster: Cluster) -> PlatformCase:
    """The ``kubernetes`` platform over the user's Deployment ``web``, already rolled out."""
    await cluster.require(kube.DEPLOYMENTS)
    await cluster.seed(kube.DEPLOYMENTS, runnable_deployment())
    platform = KubernetesDeploymentPlatform(
        "web", namespace=cluster.namespace, api_client=cluster.api
    )
    await cluster.until(
        platform.stable_image,
        OLD_IMAGE,
        "the seeded Deployment web rolled out",
        "can the nodes pull registry.k8s.io/pause?",
    )
    footprint = _footprint(cluster, (kube.DEPLOYMENTS, "web"), (kube.DEPLOYMENTS, "web-canary"))
    return PlatformCase(
        platform,
        OLD_IMAGE,
        NEW_IMAGE,
        footprint,
        stable_at_start=OLD_IMAGE,
        ready_within=cluster.timeout,
    )
