"""One Kubernetes client per daemon, closed at stop; one client per adapter across passes.

The daemon runs in this process (as the tour runs it) against kmock's emulated API server
(``support.kube``), reached through a kubeconfig the way ``canaryd serve`` reaches a cluster.
"""

from __future__ import annotations

import asyncio
import gc
import textwrap
import warnings
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import kmock
import pytest

from canaryd.adapters.kube import KubeClient
from canaryd.adapters.platforms.kubernetes import KubernetesDeploymentPlatform
from canaryd.adapters.routers.gateway_api import GatewayApiHTTPRouteRouter
from canaryd.app import Daemon, load_config
from support import kube
from support.procs import free_port

DEPLOYMENTS = kmock.resource("apps", "v1", "deployments")
NS = "shop"
IMAGE = "registry.example/web:1.0"


def deployment() -> dict[str, Any]:
    labels = {"app": "web"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "labels": labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "web", "image": IMAGE}]},
            },
        },
    }


def rolled_out(obj: dict[str, Any]) -> None:
    obj["status"] = {
        "observedGeneration": obj["metadata"]["generation"],
        "replicas": 1,
        "updatedReplicas": 1,
        "readyReplicas": 1,
        "availableReplicas": 1,
    }


@pytest.fixture
async def k8s(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[kube.Cluster]:
    """The emulator, a rolled-out Deployment, and KUBECONFIG pointing at them."""
    async with kube.cluster() as c:
        c.seed(DEPLOYMENTS, NS, deployment())
        c.write(DEPLOYMENTS, NS, "web", rolled_out)
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(
            textwrap.dedent(
                f"""\
                apiVersion: v1
                kind: Config
                clusters: [{{name: kmock, cluster: {{server: "{c.url}"}}}}]
                users: [{{name: tester, user: {{token: not-checked}}}}]
                contexts: [{{name: kmock, context: {{cluster: kmock, user: tester}}}}]
                current-context: kmock
                """
            ),
            encoding="utf-8",
        )
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
        yield c


def write_config(tmp_path: Path) -> Path:
    path = tmp_path / "canaryd.yaml"
    path.write_text(
        textwrap.dedent(
            f"""\
            listen: 127.0.0.1:{free_port()}
            state: {{backend: sqlite, path: {tmp_path / "state.db"}}}
            prometheus: {{url: http://127.0.0.1:9090}}
            targets:
              - name: web
                policy: matriz-fast-track
                platform: {{kind: kubernetes, deployment: web, namespace: {NS}}}
                router: {{kind: gateway-api, name: web, namespace: {NS},
                          stable_service: web-stable, canary_service: web-canary}}
              - name: api
                policy: matriz-fast-track
                platform: {{kind: kubernetes, deployment: web, namespace: {NS}}}
                router: {{kind: gateway-api, name: api, namespace: {NS},
                          stable_service: api-stable, canary_service: api-canary}}
            """
        ),
        encoding="utf-8",
    )
    return path


async def until(holds: Any, what: str, timeout: float = 10.0) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not holds():
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"not {what} within {timeout}s") from None


async def run_daemon_and_stop(config: Path) -> None:
    """Start a daemon, use every adapter twice, stop it; assert the client is one and closed."""
    daemon = Daemon(load_config(config))
    running = asyncio.create_task(daemon.run())
    await until(lambda: daemon.controller is not None and daemon.controller.ready, "ready")
    assert daemon.controller is not None
    for name in ("web", "api"):  # two targets, two passes each: platform and router
        target = daemon.controller.targets[name]
        for _ in range(2):
            assert await target.platform.stable_image() == IMAGE
            assert await target.router.get_weight() is None  # no HTTPRoute: cannot tell
    assert daemon.kube.opened == 1
    pool = (await daemon.kube.api()).rest_client.pool_manager
    assert not pool.closed

    daemon.supervisor.stop()
    await asyncio.wait_for(running, 10)
    assert daemon.kube.closed and pool.closed


@pytest.mark.usefixtures("k8s")
async def test_one_client_per_daemon_shared_by_every_adapter_and_closed_at_stop(
    tmp_path: Path,
) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        await run_daemon_and_stop(write_config(tmp_path))
        gc.collect()
    unclosed = [str(w.message) for w in caught if "nclosed" in str(w.message)]
    assert unclosed == []


async def test_a_platform_of_its_own_reuses_one_client_across_passes_and_closes_it(
    k8s: kube.Cluster,
) -> None:
    platform = KubernetesDeploymentPlatform("web", namespace=NS)
    try:
        for _ in range(3):
            assert await platform.stable_image() == IMAGE
            assert await platform.canary_status() == (False, False)
        assert platform.kube.opened == 1
    finally:
        await platform.aclose()
    assert platform.kube.closed


async def test_an_adapter_given_the_shared_client_leaves_it_open(k8s: kube.Cluster) -> None:
    """The daemon closes the shared client, once, after every adapter's ``aclose``."""
    shared = KubeClient()
    platform = KubernetesDeploymentPlatform("web", namespace=NS, kube=shared)
    router = GatewayApiHTTPRouteRouter("web", "a", "b", namespace=NS, kube=shared)
    assert await platform.stable_image() == IMAGE
    await router.get_weight()
    await platform.aclose()
    await router.aclose()
    assert not shared.closed and shared.opened == 1
    await shared.aclose()
    assert shared.closed
