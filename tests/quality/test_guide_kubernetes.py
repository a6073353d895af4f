"""``docs/guides/kubernetes.md`` is what canaryd needs on a cluster, measured rather than guessed.

The guide shows a canaryd config (checked by ``test_doc_configs.py``), the cluster objects a
user owns (a Deployment, its Service, an HTTPRoute) and the RBAC canaryd needs. Here the
guide's own blocks drive the real adapters, built from the guide's config by the daemon's
factories, through a whole rollout (canary made and ready, its Service edited by someone else
and put right, weights 10 → 50 → 100, promotion, canary removed, route handed back) against
the Kubernetes emulator of ``support.kube`` and the real ``kubernetes_asyncio`` client. Every
request the adapters make is recorded and mapped to the RBAC rule it needs (API group,
resource, verb), and:

- every one of them is granted by the guide's Role, and the Role grants nothing more (least
  privilege, so a verb the adapters stop using leaves the guide too);
- the guide's RoleBinding binds that Role to the ServiceAccount the guide's canaryd Deployment
  runs as, in the namespace of the config's targets;
- the guide's Prometheus scrape config passes ``promtool check config``.

What this does not show: a real API server's admission, RBAC evaluation and controllers (the
emulator runs none; the test plays the Deployment controller), nor a Gateway implementation
routing by the weights; the guide says so.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import kmock
import yaml
from kubernetes_asyncio import client as k8s_client

from canaryd.adapters.kube import KubeClient
from canaryd.app import build_platform, build_router, load_config
from support import kube, procs

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "guides" / "kubernetes.md"
_FENCE = re.compile(r"^```ya?ml[ \t]*\n(.*?)^```", re.M | re.S)
_PATH = re.compile(
    r"^/(?:api/v1|apis/(?P<group>[^/]+)/[^/]+)/namespaces/(?P<ns>[^/]+)/(?P<res>[^/]+)(?P<name>/[^/]+)?"
)
_VERBS = {"GET": "get", "POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}

Rule = tuple[str, str, str]  # (API group, resource, verb)


class RecordingEmulator(kube.VersionedEmulator):
    """The tests' emulator, remembering every request (reads too) as (method, path)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[tuple[str, str]] = []

    async def _handle(self, request: kmock.Request) -> Any:
        self.seen.append((str(request.method.value).upper(), request.url.path))
        return await super()._handle(request)


@asynccontextmanager
async def recording_cluster() -> AsyncIterator[tuple[kube.Cluster, RecordingEmulator]]:
    """``support.kube.cluster()`` with the recording emulator."""
    async with RecordingEmulator() as emulator, kmock.Server(emulator) as server:
        configuration = k8s_client.Configuration(host=str(server.url).rstrip("/"))
        api = k8s_client.ApiClient(configuration)
        try:
            yield kube.Cluster(emulator, str(server.url).rstrip("/"), api), emulator
        finally:
            await api.close()


def _blocks() -> list[Any]:
    """Every YAML document of every yaml block of the guide."""
    text = GUIDE.read_text(encoding="utf-8")
    return [d for block in _FENCE.findall(text) for d in yaml.safe_load_all(block) if d]


def _manifests(kind: str) -> list[dict[str, Any]]:
    return [d for d in _blocks() if isinstance(d, dict) and d.get("kind") == kind]


def _one(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [m for m in _manifests(kind) if name is None or m["metadata"]["name"] == name]
    assert len(found) == 1, f"docs/guides/kubernetes.md shows {len(found)} {kind} {name or ''}"
    return found[0]


def _config_block(tmp_path: Path) -> Path:
    blocks = [
        b
        for b in _FENCE.findall(GUIDE.read_text(encoding="utf-8"))
        if "\ntargets:" in b and "kind: gateway-api" in b
    ]
    assert len(blocks) == 1, "the guide shows one canaryd config with the gateway-api router"
    config = tmp_path / "canaryd.yaml"
    config.write_text(blocks[0], encoding="utf-8")
    return config


def _needed(seen: list[tuple[str, str]]) -> Iterator[Rule]:
    for method, path in seen:
        found = _PATH.match(path)
        assert found, f"a request the test cannot map to RBAC: {method} {path}"
        verb = _VERBS[method]
        if method == "GET" and not found.group("name"):
            verb = "list"
        yield found.group("group") or "", found.group("res"), verb


def _granted(role: dict[str, Any]) -> set[Rule]:
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def _canary_pod(c: kube.Cluster, namespace: str, canary: str, digest: str) -> dict[str, Any]:
    """A pod of the canary Deployment as the kubelet reports it (its imageID: ``digest``)."""
    deployment = c.get(kube.DEPLOYMENTS, namespace, canary)
    assert deployment is not None
    template = deployment["spec"]["template"]
    statuses = [
        {
            "name": x["name"],
            "ready": True,
            "restartCount": 0,
            "image": x["image"],
            "imageID": f"docker-pullable://registry.example/web@{digest}",
        }
        for x in template["spec"]["containers"]
    ]
    return {
        "metadata": {"name": f"{canary}-1", "labels": template["metadata"]["labels"]},
        "spec": template["spec"],
        "status": {"phase": "Running", "containerStatuses": statuses},
    }


async def _whole_rollout(tmp_path: Path) -> tuple[list[tuple[str, str]], str]:
    """The guide's objects seeded, a rollout driven through the adapters the guide's config
    builds; the requests made, and the namespace."""
    settings = load_config(_config_block(tmp_path))
    (target,) = settings.targets
    deployment, service, route = (
        _one("Deployment", target.platform.deployment),  # type: ignore[attr-defined]
        _one("Service", target.router.stable_service),  # type: ignore[attr-defined]
        _one("HTTPRoute", target.router.name),  # type: ignore[attr-defined]
    )
    namespace = deployment["metadata"]["namespace"]
    async with recording_cluster() as (c, emulator):
        for resource, obj in (
            (kube.DEPLOYMENTS, deployment),
            (kube.SERVICES, service),
            (kube.HTTPROUTES, route),
        ):
            assert obj["metadata"]["namespace"] == namespace, obj["metadata"]
            c.seed(resource, namespace, obj)
        kube.roll_out(c, namespace, deployment["metadata"]["name"])
        shared = KubeClient(c.api)
        platform, router = build_platform(target, shared), build_router(target, shared)
        new_image = "registry.example/web:2.0"
        await platform.ensure_canary(new_image)
        canary = f"{deployment['metadata']['name']}-canary"
        # someone edits the canary's Service: canaryd puts it right on its next pass
        c.write(kube.SERVICES, namespace, canary, lambda s: s["spec"].update(selector={}))
        await platform.ensure_canary(new_image)
        corrected = c.get(kube.SERVICES, namespace, canary)
        assert corrected is not None and corrected["spec"]["selector"], corrected
        kube.roll_out(c, namespace, canary)
        assert await platform.canary_status() == (True, True)
        # the kubelet's pod of the canary: canaryd pins the tag to the digest it runs
        digest = "sha256:" + "d1" * 32
        c.seed(
            kmock.resource("", "v1", "pods"), namespace, _canary_pod(c, namespace, canary, digest)
        )
        pinned = await platform.canary_pin(new_image)  # type: ignore[attr-defined]
        assert pinned == f"registry.example/web@{digest}"
        for weight in (10, 50, 100):
            await router.set_weight(weight)
            assert await router.get_weight() == weight
        await platform.update_stable(new_image)
        kube.roll_out(c, namespace, deployment["metadata"]["name"])
        assert await platform.stable_image() == new_image
        await router.set_weight(0)
        await platform.remove_canary()
        await router.finalize()
        assert await router.get_weight() == 0
        await platform.aclose()
        await router.aclose()
        return list(emulator.seen), namespace


async def test_the_guides_role_grants_exactly_what_a_whole_rollout_needs(tmp_path: Path) -> None:
    seen, namespace = await _whole_rollout(tmp_path)
    needed = set(_needed(seen))
    role = _one("Role", "canaryd")
    assert role["metadata"]["namespace"] == namespace
    granted = _granted(role)
    assert not needed - granted, f"used but not granted: {sorted(needed - granted)}"
    assert not granted - needed, f"granted but never used: {sorted(granted - needed)}"


def test_the_role_is_bound_to_the_account_canaryd_runs_as() -> None:
    role, binding = _one("Role", "canaryd"), _one("RoleBinding")
    account = _one("ServiceAccount")
    canaryd = _one("Deployment", "canaryd")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["metadata"]["namespace"] == role["metadata"]["namespace"]
    assert {
        "kind": "ServiceAccount",
        "name": account["metadata"]["name"],
        "namespace": account["metadata"]["namespace"],
    } in binding["subjects"]
    pod = canaryd["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == account["metadata"]["name"]
    assert canaryd["metadata"]["namespace"] == account["metadata"]["namespace"]
    # one daemon per state file: never two pods at once
    assert canaryd["spec"]["replicas"] == 1
    assert canaryd["spec"]["strategy"] == {"type": "Recreate"}


def test_the_guides_scrape_config_passes_promtool(tmp_path: Path) -> None:
    """Its syntax only: promtool does not run the relabelling. Debian's Prometheus is built
    without Kubernetes discovery (``field kubernetes_sd_configs not found``), so the discovery
    is swapped for static targets carrying the pod labels it would give."""
    (scrape,) = [d for d in _blocks() if isinstance(d, dict) and "scrape_configs" in d]
    for job in scrape["scrape_configs"]:
        assert job.pop("kubernetes_sd_configs") == [
            {"role": "pod", "namespaces": {"names": ["shop"]}}
        ]
        job["static_configs"] = [
            {"targets": [f"127.0.0.1:{port}"], "labels": labels}
            for port, labels in (
                (8080, {"__meta_kubernetes_pod_label_app": "web"}),
                (
                    8081,
                    {
                        "__meta_kubernetes_pod_label_app": "web-canary",
                        "__meta_kubernetes_pod_label_canaryd_io_role": "canary",
                    },
                ),
            )
        ]
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump(scrape), encoding="utf-8")
    tool = procs.find_binary("promtool")  # .ci/run installs prometheus
    done = subprocess.run(
        [tool, "check", "config", str(config)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
