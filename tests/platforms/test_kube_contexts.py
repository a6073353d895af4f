"""Which cluster each target talks to: ``kubernetes: {kubeconfig, context}`` per daemon and per
target, and ``$CANARYD_KUBE_CONTEXT`` (config.kubeaccess, adapters.kube).

Two emulated API servers (``support.kube``) stand for two regions, one kubeconfig holds a
context for each, as the runbook's ``KUBECTL_CONTEXT=us-east-1`` / ``eu-west-1`` do. Each
emulator holds a Deployment ``web`` with its own image, so what a target reads says which
cluster it reached, and the emulators' write logs say where a target's writes went.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from canaryd.adapters.kube import KubeClient, KubeUnavailable
from canaryd.adapters.routers.gateway_api import GatewayApiHTTPRouteRouter
from canaryd.app import Daemon, load_config
from canaryd.config.kubeaccess import CONTEXT_ENV, KubeAccess
from canaryd.core.errors import ConfigError
from support import kube
from support.procs import free_port

NS = "shop"
IMAGES = {"us-east-1": "registry.example/web:us", "eu-west-1": "registry.example/web:eu"}


def deployment(image: str) -> dict[str, Any]:
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
                "spec": {"containers": [{"name": "web", "image": image}]},
            },
        },
    }


@dataclass
class Regions:
    clusters: dict[str, kube.Cluster]  # by context name
    kubeconfig: Path


@pytest.fixture
async def regions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Regions]:
    """Two emulators and one kubeconfig with a context for each (current: neither of them, so a
    test that reached a cluster through the current context would fail to connect)."""
    async with kube.cluster() as us, kube.cluster() as eu:
        clusters = {"us-east-1": us, "eu-west-1": eu}
        for context, c in clusters.items():
            c.seed(kube.DEPLOYMENTS, NS, deployment(IMAGES[context]))
            kube.roll_out(c, NS, "web")
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(
            textwrap.dedent(
                f"""\
                apiVersion: v1
                kind: Config
                clusters:
                  - {{name: us, cluster: {{server: "{us.url}"}}}}
                  - {{name: eu, cluster: {{server: "{eu.url}"}}}}
                  - {{name: away, cluster: {{server: "http://127.0.0.1:{free_port()}"}}}}
                users: [{{name: tester, user: {{token: not-checked}}}}]
                contexts:
                  - {{name: us-east-1, context: {{cluster: us, user: tester}}}}
                  - {{name: eu-west-1, context: {{cluster: eu, user: tester}}}}
                  - {{name: away, context: {{cluster: away, user: tester}}}}
                current-context: away
                """
            ),
            encoding="utf-8",
        )
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        monkeypatch.delenv("KUBECONFIG", raising=False)
        monkeypatch.delenv(CONTEXT_ENV, raising=False)
        yield Regions(clusters, kubeconfig)


def write_config(tmp_path: Path, kubeconfig: Path, daemon_context: str | None) -> Path:
    """Target ``us`` names no cluster (the daemon's), ``eu`` names eu-west-1 itself."""
    top = f"kubernetes: {{kubeconfig: {kubeconfig}"
    top += f", context: {daemon_context}}}" if daemon_context else "}"
    path = tmp_path / "canaryd.yaml"
    path.write_text(
        textwrap.dedent(
            f"""\
            listen: 127.0.0.1:{free_port()}
            state: {{backend: sqlite, path: {tmp_path / "state.db"}}}
            prometheus: {{url: http://127.0.0.1:9090}}
            {top}
            targets:
              - name: us
                policy: matriz-fast-track
                platform: {{kind: kubernetes, deployment: web, namespace: {NS}}}
                router: {{kind: gateway-api, name: us, namespace: {NS},
                          stable_service: web-stable, canary_service: web-canary}}
              - name: eu
                policy: matriz-fast-track
                kubernetes: {{context: eu-west-1}}
                platform: {{kind: kubernetes, deployment: web, namespace: {NS}}}
                router: {{kind: gateway-api, name: eu, namespace: {NS},
                          stable_service: web-stable, canary_service: web-canary}}
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


async def images_seen(config: Path) -> dict[str, str | None]:
    """Run a daemon on ``config``, read each target's stable image, stop it; by target."""
    daemon = Daemon(load_config(config))
    running = asyncio.create_task(daemon.run())
    try:
        await until(lambda: daemon.controller is not None and daemon.controller.ready, "ready")
        assert daemon.controller is not None
        targets = daemon.controller.targets
        seen = {name: await targets[name].platform.stable_image() for name in ("us", "eu")}
        assert {name: targets[name].kube_context for name in targets} == {
            "us": daemon.settings.kubernetes.context,
            "eu": "eu-west-1",
        }
        clients = daemon.kubes.clients
    finally:
        daemon.supervisor.stop()
        await asyncio.wait_for(running, 10)
    assert all(c.closed for c in clients)  # every cluster's client closed at stop
    return seen


async def test_each_target_talks_to_the_cluster_of_its_context(
    regions: Regions, tmp_path: Path
) -> None:
    config = write_config(tmp_path, regions.kubeconfig, "us-east-1")
    assert await images_seen(config) == {"us": IMAGES["us-east-1"], "eu": IMAGES["eu-west-1"]}


async def test_the_environment_chooses_the_daemons_context_a_targets_own_stays(
    regions: Regions, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One canaryd per region: ``$CANARYD_KUBE_CONTEXT`` replaces the config's default."""
    monkeypatch.setenv(CONTEXT_ENV, "eu-west-1")
    config = write_config(tmp_path, regions.kubeconfig, "us-east-1")
    assert load_config(config).kubernetes == KubeAccess(regions.kubeconfig, "eu-west-1")
    assert await images_seen(config) == {"us": IMAGES["eu-west-1"], "eu": IMAGES["eu-west-1"]}


async def test_writes_go_to_the_targets_cluster_only(regions: Regions) -> None:
    """A router on eu-west-1 writes its HTTPRoute there and nowhere else."""
    us, eu = regions.clusters["us-east-1"], regions.clusters["eu-west-1"]
    for c in (us, eu):
        c.seed(kube.HTTPROUTES, NS, httproute())
    client = KubeClient(access=KubeAccess(regions.kubeconfig, "eu-west-1"))
    router = GatewayApiHTTPRouteRouter("web", "web-stable", "web-canary", namespace=NS, kube=client)
    try:
        await router.set_weight(25)
    finally:
        await router.aclose()
        await client.aclose()
    assert us.writes == []
    assert eu.writes and all("/httproutes/web" in path for _, path in eu.writes)


def httproute() -> dict[str, Any]:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "web"},
        "spec": {
            "parentRefs": [{"name": "gateway"}],
            "rules": [{"backendRefs": [{"name": "web-stable", "port": 80, "weight": 100}]}],
        },
    }


async def test_a_context_the_kubeconfig_lacks_is_named_when_used(regions: Regions) -> None:
    client = KubeClient(access=KubeAccess(regions.kubeconfig, "ap-south-1"))
    with pytest.raises(KubeUnavailable, match=r"context 'ap-south-1'"):
        await client.api()
    await client.aclose()


def test_check_warns_of_a_context_not_in_the_kubeconfig_and_of_a_missing_file(
    tmp_path: Path, regions: Regions
) -> None:
    config = write_config(tmp_path, regions.kubeconfig, "ap-south-1")
    warnings = [str(w) for w in load_config(config).warnings]
    assert any(
        "kubernetes.context: context 'ap-south-1' is not in kubeconfig" in w
        and "(contexts: us-east-1, eu-west-1, away)" in w
        for w in warnings
    ), warnings
    missing = write_config(tmp_path, tmp_path / "nowhere", "us-east-1")
    warnings = [str(w) for w in load_config(missing).warnings]
    assert any(
        "kubernetes.kubeconfig: kubeconfig" in w and "does not exist (yet)" in w for w in warnings
    )
    assert any("targets[1].kubernetes.kubeconfig: kubeconfig" in w for w in warnings)


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("kubernetes: {context: ' eu'}", "kubernetes.context: expected a kubeconfig context name"),
        ("kubernetes: {contxt: a}", "kubernetes.contxt"),
        ("kubernetes: [a]", "kubernetes: expected a mapping"),
    ],
)
def test_a_bad_kubernetes_section_is_named(tmp_path: Path, section: str, message: str) -> None:
    config = tmp_path / "canaryd.yaml"
    config.write_text(
        textwrap.dedent(
            f"""\
            prometheus: {{url: http://127.0.0.1:9090}}
            {section}
            targets:
              - {{name: web, policy: matriz-fast-track, platform: {{kind: none}},
                  router: {{kind: noop}}}}
            """
        ),
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    assert message in str(caught.value)


def test_a_bad_environment_context_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CONTEXT_ENV, " padded ")
    config = tmp_path / "canaryd.yaml"
    config.write_text(
        "prometheus: {url: http://127.0.0.1:9090}\n"
        "targets: [{name: web, policy: matriz-fast-track, platform: {kind: none}, "
        "router: {kind: noop}}]\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError, match=r"kubernetes: \$CANARYD_KUBE_CONTEXT: expected"):
        load_config(config)


def test_the_same_object_name_in_two_clusters_is_two_objects(
    tmp_path: Path, regions: Regions
) -> None:
    """The runbook's regions name the same Ingress; only within one cluster is that a clash."""
    config = write_config(tmp_path, regions.kubeconfig, "us-east-1")
    text = config.read_text().replace("name: eu, namespace", "name: us, namespace")
    config.write_text(text)
    us, eu = load_config(config).targets
    assert us.router == eu.router  # the same kind, namespace and name
    clash = tmp_path / "clash.yaml"
    clash.write_text(
        text.replace("kubernetes: {context: eu-west-1}", "kubernetes: {context: us-east-1}")
    )
    with pytest.raises(ConfigError, match=r"targets\[1\]\.router: targets\[0\] already routes"):
        load_config(clash)


def test_check_names_each_targets_cluster(
    tmp_path: Path, regions: Regions, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``canaryd check`` (a subprocess, as run by hand) with ``$CANARYD_KUBE_CONTEXT`` set:
    the target without its own context takes it, the one with its own keeps that."""
    config = write_config(tmp_path, regions.kubeconfig, None)
    env = {**os.environ, CONTEXT_ENV: "us-east-1"}
    done = subprocess.run(
        [sys.executable, "-m", "canaryd.cli", "check", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "warning" not in done.stderr, done.stderr
    lines = {  # each target's own line (check's timing lines also begin "target NAME:")
        line.split(":")[0].strip(): line for line in done.stdout.splitlines() if ": policy " in line
    }
    shown = f"kubeconfig {regions.kubeconfig}"
    assert lines["target us"].endswith(f", cluster context us-east-1 {shown}")
    assert lines["target eu"].endswith(f", cluster context eu-west-1 {shown}")
