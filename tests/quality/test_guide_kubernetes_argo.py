"""The Kubernetes guide's "Argo Rollouts" section, measured: its Rollout (what ``canaryctl
render argo-rollout`` writes) is what the command prints, its config drives the real router
through a rollout, and its Role grants exactly the requests the router made.

The Rollout is seeded into the emulated API server of ``support.kube`` (validated against the
Rollout CRD); the fake Argo controller (``support.fakeargo``) moves its status out of band, so
that only canaryd's requests are recorded. Each request is mapped to the RBAC rule it needs, a
write to ``.../rollouts/NAME/status`` to the ``rollouts/status`` subresource.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest
import yaml
from test_guide_kubernetes import GUIDE, _granted, _one, recording_cluster

from canaryd.adapters.kube import KubeClient
from canaryd.app import build_router, load_config
from canaryd.ctl import main as ctl
from support import fakeargo, kube

_FENCE = re.compile(r"^```ya?ml[ \t]*\n(.*?)^```", re.M | re.S)
_PATH = re.compile(
    r"^/apis/(?P<group>[^/]+)/[^/]+/namespaces/[^/]+/(?P<res>[^/]+)(?:/[^/]+)?(?P<sub>/status)?$"
)
_VERBS = {"GET": "get", "POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


def _config(tmp_path: Path) -> Path:
    text = GUIDE.read_text(encoding="utf-8")
    blocks = [b for b in _FENCE.findall(text) if "\ntargets:" in b and "argo-rollouts" in b]
    assert len(blocks) == 1, "the guide shows one canaryd config with the argo-rollouts router"
    path = tmp_path / "canaryd.yaml"
    path.write_text(blocks[0], encoding="utf-8")
    return path


def _needed(seen: list[tuple[str, str]]) -> set[tuple[str, str, str]]:
    rules = set()
    for method, path in seen:
        found = _PATH.match(path)
        assert found, f"a request the test cannot map to RBAC: {method} {path}"
        resource = found.group("res") + ("/status" if found.group("sub") else "")
        rules.add((found.group("group"), resource, _VERBS[method]))
    return rules


def test_the_guides_rollout_is_what_render_prints(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--policy", "matriz-standard", "--name", "web", "--namespace", "shop"]
    args += ["--image", "registry.example/web:1.4.2", "--port", "8080"]
    assert ctl.main(["render", "argo-rollout", *args]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == _one("Rollout", "web")


async def _until(read: object, expected: object) -> None:
    async with asyncio.timeout(10):
        while await read() != expected:  # type: ignore[operator]
            await asyncio.sleep(0.01)


async def test_the_guides_role_grants_exactly_what_the_router_uses(tmp_path: Path) -> None:
    (target,) = load_config(_config(tmp_path)).targets
    rollout = _one("Rollout", "web")
    namespace = rollout["metadata"]["namespace"]
    weights = [stage.weight for stage in target.policy.stages]
    async with recording_cluster() as (c, emulator):
        c.seed(kube.ROLLOUTS, namespace, rollout)
        async with fakeargo.running(c, namespace, out_of_band=True):
            router = build_router(target, KubeClient(c.api))
            await _until(router.stable_image, "registry.example/web:1.4.2")  # type: ignore[attr-defined]
            await router.ensure_canary("registry.example/web:1.5.0")  # type: ignore[attr-defined]
            for weight in weights:
                await router.set_weight(weight)
                await _until(router.get_weight, weight)
            await router.update_stable("registry.example/web:1.5.0")  # type: ignore[attr-defined]
            await _until(router.stable_image, "registry.example/web:1.5.0")  # type: ignore[attr-defined]
            await router.ensure_canary("registry.example/web:1.6.0")  # type: ignore[attr-defined]
            await _until(router.get_weight, weights[0])
            await router.set_weight(0)  # rollback: abort
            await _until(router.get_weight, 0)
            await router.finalize()
            await router.aclose()
    assert c.get(kube.ROLLOUTS, namespace, "web")["status"]["abort"] is True  # type: ignore[index]
    needed = _needed(emulator.seen)
    role = _one("Role", "canaryd-argo-rollouts")
    assert role["metadata"]["namespace"] == namespace
    granted = _granted(role)
    assert not needed - granted, f"used but not granted: {sorted(needed - granted)}"
    assert not granted - needed, f"granted but never used: {sorted(granted - needed)}"
