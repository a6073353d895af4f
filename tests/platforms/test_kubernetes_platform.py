"""The kubernetes platform through the real kubernetes_asyncio client against kmock's emulator.

The emulator is ``support/kube.py``'s (resourceVersion, replace, 409 Conflict). It runs no
controllers: a test plays the Deployment controller by writing ``status`` itself
(``roll_out``), as another writer would.

No OpenAPI schema for apps/v1 or core/v1 is in ``tests/upstream`` (only CRDs), so what
the platform creates is validated structurally against kubernetes_asyncio's models, which are
generated from the Kubernetes OpenAPI spec: every field must be one the model knows, of its
type, and every required field present (the models' client-side validation) — see
``model_errors``.
"""

from __future__ import annotations

import asyncio
import copy
import re
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import kmock
import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client import models

from canaryd.adapters.platforms.kubernetes import (
    KubernetesDeploymentPlatform,
    label_value,
    selects,
)
from canaryd.app import build_platform, load_config
from canaryd.core.errors import CanarydError, PlatformUnavailable
from support import kube

DEPLOYMENTS = kmock.resource("apps", "v1", "deployments")
SERVICES = kmock.resource("", "v1", "services")
NS = "shop"
V1, V2, V3 = "registry.example/web:1.0", "registry.example/web:2.0", "registry.example/web:3.0"


def stable_deployment(replicas: int = 3) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "web",
            "labels": {"app": "web", "app.kubernetes.io/instance": "shop"},
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "web"}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}},
            "template": {
                "metadata": {
                    "labels": {"app": "web", "tier": "front"},
                    "annotations": {"prometheus.io/scrape": "true"},
                },
                "spec": {
                    "containers": [
                        {
                            "name": "web",
                            "image": V1,
                            "env": [{"name": "MODE", "value": "prod"}],
                            "ports": [{"name": "http", "containerPort": 8080}],
                            "readinessProbe": {
                                "httpGet": {"path": "/healthz", "port": "http"},
                                "periodSeconds": 2,
                            },
                        },
                        {"name": "sidecar", "image": "registry.example/proxy:7"},
                    ]
                },
            },
        },
    }


def user_service() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }


def roll_out(k8s: kube.Cluster, name: str, ready: int | None = None) -> None:
    """Play the Deployment controller: every replica of the current spec updated and ``ready``
    (default: all) of them ready."""

    def edit(obj: dict[str, Any]) -> None:
        replicas = obj["spec"].get("replicas", 1)
        obj["status"] = {
            "observedGeneration": obj["metadata"]["generation"],
            "replicas": replicas,
            "updatedReplicas": replicas,
            "readyReplicas": replicas if ready is None else ready,
            "availableReplicas": replicas if ready is None else ready,
        }

    k8s.write(DEPLOYMENTS, NS, name, edit)


def model_errors(value: Any, type_name: str, path: str = "") -> list[str]:
    """How ``value`` (JSON) breaks the kubernetes_asyncio model ``type_name``: unknown fields,
    wrong types, missing required fields."""
    if type_name.startswith("list["):
        if not isinstance(value, list):
            return [f"{path}: not a list"]
        item = type_name[5:-1]
        return [e for i, v in enumerate(value) for e in model_errors(v, item, f"{path}[{i}]")]
    if type_name.startswith("dict("):
        inner = type_name[5:-1].split(", ", 1)[1]
        return [e for k, v in value.items() for e in model_errors(v, inner, f"{path}.{k}")]
    primitives: dict[str, type | tuple[type, ...]] = {
        "str": str,
        "int": int,
        "bool": bool,
        "float": (int, float),
        "object": (str, int, dict, list),
        "datetime": str,
    }
    if type_name in primitives:
        ok = isinstance(value, primitives[type_name])
        return [] if ok else [f"{path}: {value!r} is not {type_name}"]
    cls = getattr(models, type_name)
    if not isinstance(value, dict):
        return [f"{path}: not an object ({type_name})"]
    by_json = {j: a for a, j in cls.attribute_map.items()}
    errors = [f"{path}.{k}: unknown field of {type_name}" for k in value if k not in by_json]
    for key, sub in value.items():
        if key in by_json:
            errors += model_errors(sub, cls.openapi_types[by_json[key]], f"{path}.{key}")
    try:  # the setters enforce required fields and enums
        cls(**{by_json[k]: v for k, v in value.items() if k in by_json})
    except ValueError as exc:
        errors.append(f"{path}: {exc}")
    return errors


@pytest.fixture
async def k8s() -> AsyncIterator[kube.Cluster]:
    async with kube.cluster() as c:
        c.seed(DEPLOYMENTS, NS, stable_deployment())
        c.seed(SERVICES, NS, user_service())
        roll_out(c, "web")
        yield c


def platform_for(k8s: kube.Cluster, **kwargs: Any) -> KubernetesDeploymentPlatform:
    return KubernetesDeploymentPlatform(
        "web", namespace=NS, api_client=k8s.api, call_timeout=5, **kwargs
    )


# --------------------------------------------------------------------------- the canary


async def test_ensure_canary_clones_the_stable_template_with_the_new_image(
    k8s: kube.Cluster,
) -> None:
    stable_before = k8s.get(DEPLOYMENTS, NS, "web")
    await platform_for(k8s).ensure_canary(V2)

    canary = k8s.get(DEPLOYMENTS, NS, "web-canary")
    assert canary is not None
    assert model_errors(canary, "V1Deployment") == []
    web, sidecar = canary["spec"]["template"]["spec"]["containers"]
    stable_web = stable_deployment()["spec"]["template"]["spec"]["containers"][0]
    assert web == {**stable_web, "image": V2}  # env, ports, probe kept; only the image changed
    assert sidecar["image"] == "registry.example/proxy:7"
    assert canary["spec"]["replicas"] == 3
    assert canary["spec"]["strategy"] == stable_deployment()["spec"]["strategy"]
    assert canary["metadata"]["labels"] == {
        "canaryd.io/target": "web",
        "canaryd.io/role": "canary",
        "canaryd.io/version": "registry.example_web_2.0",
    }
    assert canary["metadata"]["annotations"] == {"canaryd.io/image": V2}
    pod_meta = canary["spec"]["template"]["metadata"]
    assert pod_meta["annotations"] == {"prometheus.io/scrape": "true"}
    assert pod_meta["labels"] == {
        "app": "web-canary",
        "tier": "front",
        "canaryd.io/target": "web",
        "canaryd.io/role": "canary",
        "canaryd.io/version": "registry.example_web_2.0",
    }
    # the stable is untouched and the two sides never select each other's pods
    assert k8s.get(DEPLOYMENTS, NS, "web") == stable_before
    stable_pods = stable_deployment()["spec"]["template"]["metadata"]["labels"]
    assert selects(canary["spec"]["selector"], pod_meta["labels"])
    assert not selects(canary["spec"]["selector"], stable_pods)
    assert selects(stable_deployment()["spec"]["selector"], stable_pods)
    assert not selects(stable_deployment()["spec"]["selector"], pod_meta["labels"])
    user_selector = {"matchLabels": user_service()["spec"]["selector"]}
    assert not selects(user_selector, pod_meta["labels"])  # the user's Service: stable only


async def test_ensure_canary_keeps_a_service_per_side(k8s: kube.Cluster) -> None:
    users = k8s.get(SERVICES, NS, "web")
    await platform_for(k8s).ensure_canary(V2)
    canary_svc = k8s.get(SERVICES, NS, "web-canary")
    stable_svc = k8s.get(SERVICES, NS, "web-stable")
    assert canary_svc is not None and stable_svc is not None
    for svc in (canary_svc, stable_svc):
        assert model_errors(svc, "V1Service") == []
        assert svc["spec"]["ports"] == [
            {"name": "http", "port": 8080, "targetPort": 8080, "protocol": "TCP"}
        ]
    canary = k8s.get(DEPLOYMENTS, NS, "web-canary")
    assert canary is not None
    canary_pods = canary["spec"]["template"]["metadata"]["labels"]
    stable_pods = stable_deployment()["spec"]["template"]["metadata"]["labels"]
    as_selector = lambda svc: {"matchLabels": svc["spec"]["selector"]}  # noqa: E731
    assert selects(as_selector(canary_svc), canary_pods)
    assert not selects(as_selector(canary_svc), stable_pods)
    assert selects(as_selector(stable_svc), stable_pods)
    assert not selects(as_selector(stable_svc), canary_pods)
    assert k8s.get(SERVICES, NS, "web") == users  # the user's own, untouched
    assert canary_svc["metadata"]["labels"] == {
        "canaryd.io/target": "web",
        "canaryd.io/role": "canary",
    }


async def test_a_changed_service_is_put_back_and_a_foreign_one_refused(
    k8s: kube.Cluster,
) -> None:
    platform = platform_for(k8s)
    await platform.ensure_canary(V2)
    wanted = k8s.get(SERVICES, NS, "web-canary")
    assert wanted is not None
    k8s.write(SERVICES, NS, "web-canary", lambda svc: svc["spec"].update(selector={"app": "x"}))
    await platform.ensure_canary(V2)
    fixed = k8s.get(SERVICES, NS, "web-canary")
    assert fixed is not None and fixed["spec"] == wanted["spec"]
    k8s.write(SERVICES, NS, "web-stable", lambda svc: svc["metadata"].update(labels={}))
    with pytest.raises(PlatformUnavailable, match=r"shop/web-stable: .*not canaryd's"):
        await platform.ensure_canary(V2)


async def test_ensure_canary_again_writes_nothing(k8s: kube.Cluster) -> None:
    platform = platform_for(k8s)
    await platform.ensure_canary(V2)
    canary = k8s.get(DEPLOYMENTS, NS, "web-canary")
    writes = list(k8s.writes)
    await platform.ensure_canary(V2)
    await platform.ensure_canary(V2)
    assert k8s.writes == writes
    assert k8s.get(DEPLOYMENTS, NS, "web-canary") == canary


async def test_canary_is_ready_only_once_its_status_says_so(k8s: kube.Cluster) -> None:
    platform = platform_for(k8s)
    assert await platform.canary_status() == (False, False)
    await platform.ensure_canary(V2)
    assert await platform.canary_status() == (True, False)  # no status yet
    roll_out(k8s, "web-canary", ready=2)
    assert await platform.canary_status() == (True, False)  # 2 of 3 ready

    def stale(obj: dict[str, Any]) -> None:
        obj["status"]["observedGeneration"] = obj["metadata"]["generation"] - 1
        obj["status"]["readyReplicas"] = 3

    roll_out(k8s, "web-canary")
    k8s.write(DEPLOYMENTS, NS, "web-canary", stale)
    assert await platform.canary_status() == (True, False)  # status of an older spec
    roll_out(k8s, "web-canary")
    assert await platform.canary_status() == (True, True)


async def test_a_new_image_updates_the_canary_in_place(k8s: kube.Cluster) -> None:
    platform = platform_for(k8s)
    await platform.ensure_canary(V2)
    roll_out(k8s, "web-canary")
    assert await platform.canary_status() == (True, True)
    await platform.ensure_canary(V3)
    canary = k8s.get(DEPLOYMENTS, NS, "web-canary")
    assert canary is not None
    assert canary["metadata"]["generation"] == 2
    assert canary["spec"]["template"]["spec"]["containers"][0]["image"] == V3
    assert canary["metadata"]["annotations"] == {"canaryd.io/image": V3}
    assert await platform.canary_status() == (True, False)  # status is of the V2 spec
    roll_out(k8s, "web-canary")
    assert await platform.canary_status() == (True, True)


async def test_the_chosen_container_gets_the_image(k8s: kube.Cluster) -> None:
    platform = platform_for(k8s, container="sidecar")
    await platform.ensure_canary("registry.example/proxy:8")
    canary = k8s.get(DEPLOYMENTS, NS, "web-canary")
    assert canary is not None
    images = [c["image"] for c in canary["spec"]["template"]["spec"]["containers"]]
    assert images == [V1, "registry.example/proxy:8"]
    assert await platform.stable_image() == "registry.example/proxy:7"
    with pytest.raises(PlatformUnavailable, match=r"shop/web: no container 'db'.*web, sidecar"):
        await platform_for(k8s, container="db").ensure_canary(V2)


async def test_remove_canary_deletes_the_deployment_and_keeps_the_services(
    k8s: kube.Cluster,
) -> None:
    platform = platform_for(k8s)
    await platform.ensure_canary(V2)
    await platform.remove_canary()
    assert k8s.get(DEPLOYMENTS, NS, "web-canary") is None
    assert ("DELETE", f"/apis/apps/v1/namespaces/{NS}/deployments/web-canary") in k8s.writes
    assert await platform.canary_status() == (False, False)
    assert k8s.get(SERVICES, NS, "web-canary") is not None  # the router may still name it
    assert k8s.get(DEPLOYMENTS, NS, "web") is not None
    await platform.remove_canary()  # nothing left: no error


async def test_a_foreign_deployment_named_like_the_canary_is_left_alone(
    k8s: kube.Cluster,
) -> None:
    foreign = copy.deepcopy(stable_deployment())
    foreign["metadata"] = {"name": "web-canary"}
    k8s.seed(DEPLOYMENTS, NS, foreign)
    platform = platform_for(k8s)
    with pytest.raises(PlatformUnavailable, match=r"shop/web-canary.*not canaryd's"):
        await platform.ensure_canary(V2)
    assert await platform.canary_status() == (False, False)
    await platform.remove_canary()
    assert k8s.get(DEPLOYMENTS, NS, "web-canary") is not None


# --------------------------------------------------------------------------- the stable


async def test_stable_image_is_reported_once_the_stable_is_rolled_out(k8s: kube.Cluster) -> None:
    platform = platform_for(k8s)
    assert await platform.stable_image() == V1
    before = k8s.get(DEPLOYMENTS, NS, "web")
    assert before is not None
    await platform.update_stable(V2)
    after = k8s.get(DEPLOYMENTS, NS, "web")
    assert after is not None
    # only the image changed (and what the API server stamps on a spec change)
    expected = copy.deepcopy(before)
    expected["spec"]["template"]["spec"]["containers"][0]["image"] = V2
    for stamped in ("resourceVersion", "generation"):
        expected["metadata"][stamped] = after["metadata"][stamped]
    assert after == expected
    assert after["metadata"]["generation"] == before["metadata"]["generation"] + 1
    assert await platform.stable_image() is None  # rolling: the engine keeps waiting
    roll_out(k8s, "web")
    assert await platform.stable_image() == V2
    writes = list(k8s.writes)
    await platform.update_stable(V2)  # already there: no write
    assert k8s.writes == writes


async def test_a_conflicting_write_is_retried_on_the_latest_version(k8s: kube.Cluster) -> None:
    def scale(request: kmock.Request) -> None:  # an HPA writes between our read and write
        k8s.write(DEPLOYMENTS, NS, "web", lambda obj: obj["spec"].update(replicas=5))

    k8s.before_next_write(scale)
    await platform_for(k8s).update_stable(V2)
    stable = k8s.get(DEPLOYMENTS, NS, "web")
    assert stable is not None
    assert stable["spec"]["replicas"] == 5  # the other writer's change survived
    assert stable["spec"]["template"]["spec"]["containers"][0]["image"] == V2
    puts = [w for w in k8s.writes if w[0] == "PUT"]
    assert len(puts) == 2  # the first one got 409


async def test_a_conflict_that_never_ends_is_a_clear_error(k8s: kube.Cluster) -> None:
    def touch(request: kmock.Request) -> None:  # another writer before every write of ours
        k8s.write(DEPLOYMENTS, NS, "web", lambda obj: None)

    k8s.before_every_write(touch)
    with pytest.raises(PlatformUnavailable, match=r"shop/web.*409 Conflict"):
        await platform_for(k8s).update_stable(V2)


# --------------------------------------------------------------------------- failures


async def test_a_missing_stable_deployment_is_a_clear_error() -> None:
    async with kube.cluster() as k8s:
        platform = platform_for(k8s)
        with pytest.raises(CanarydError, match="stable Deployment shop/web does not exist"):
            await platform.ensure_canary(V2)
        with pytest.raises(PlatformUnavailable, match="shop/web does not exist"):
            await platform.stable_image()
        assert k8s.get(DEPLOYMENTS, NS, "web-canary") is None


async def test_an_unreachable_api_server_is_a_clear_error() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    api = client.ApiClient(client.Configuration(host=f"http://127.0.0.1:{port}"))
    try:
        platform = KubernetesDeploymentPlatform("web", namespace=NS, api_client=api)
        with pytest.raises(
            PlatformUnavailable,
            match=rf"shop/web: cannot read deployment \(http://127.0.0.1:{port}\)",
        ):
            await platform.stable_image()
    finally:
        await api.close()


async def test_an_api_server_that_does_not_answer_times_out() -> None:
    done = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await done.wait()  # accept, read nothing, answer nothing
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    api = client.ApiClient(client.Configuration(host=f"http://127.0.0.1:{port}"))
    try:
        platform = KubernetesDeploymentPlatform(
            "web", namespace=NS, api_client=api, call_timeout=0.3
        )
        with pytest.raises(PlatformUnavailable, match=r"shop/web-canary.*no answer within 0\.3s"):
            await platform.canary_status()
    finally:
        done.set()
        await api.close()
        server.close()
        await server.wait_closed()


async def test_a_stable_selector_that_cannot_be_kept_apart_is_refused(k8s: kube.Cluster) -> None:
    def only_not_in(obj: dict[str, Any]) -> None:
        obj["spec"]["selector"] = {
            "matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["db"]}]
        }

    k8s.write(DEPLOYMENTS, NS, "web", only_not_in)
    with pytest.raises(PlatformUnavailable, match="would also select the canary's pods"):
        await platform_for(k8s).ensure_canary(V2)
    assert k8s.get(DEPLOYMENTS, NS, "web-canary") is None


async def test_an_in_expression_is_kept_apart_too(k8s: kube.Cluster) -> None:
    selector = {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["front"]}]}
    k8s.write(DEPLOYMENTS, NS, "web", lambda obj: obj["spec"].update(selector=selector))
    await platform_for(k8s).ensure_canary(V2)
    canary = k8s.get(DEPLOYMENTS, NS, "web-canary")
    assert canary is not None
    labels = canary["spec"]["template"]["metadata"]["labels"]
    assert labels["tier"] == "front-canary"
    assert not selects(selector, labels)
    assert k8s.get(SERVICES, NS, "web-stable") is None  # no matchLabels for a Service


# --------------------------------------------------------------------------- helpers, wiring


def test_label_values_are_valid_and_keep_the_tag() -> None:
    assert label_value("web:1.2.3") == "web_1.2.3"
    long = "registry.example.com/team/" + "x" * 80 + ":v1.2.3"
    value = label_value(long)
    assert len(value) == 63
    assert re.fullmatch(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?", value)
    assert re.fullmatch(r"x+_v1\.2\.3-[0-9a-f]{10}", value)
    assert label_value(long) != label_value(long.replace(":v1", ":v9"))


def test_build_platform_reads_the_kubernetes_settings(tmp_path: Path) -> None:
    path = tmp_path / "canaryd.yaml"
    path.write_text(
        """\
listen: 127.0.0.1:9870
prometheus: {url: http://127.0.0.1:9090}
targets:
  - name: web
    policy: matriz-fast-track
    router: {kind: noop}
    platform: {kind: kubernetes, deployment: web, namespace: shop, container: app}
""",
        encoding="utf-8",
    )
    [target] = load_config(path).targets
    platform = build_platform(target)
    assert isinstance(platform, KubernetesDeploymentPlatform)
    assert (platform.kind, platform.deployment, platform.namespace, platform.container) == (
        "kubernetes",
        "web",
        "shop",
        "app",
    )
    assert platform.canary_name == "web-canary"
