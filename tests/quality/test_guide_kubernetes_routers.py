"""The Kubernetes guide's "Other routers" section, measured: its TraefikService and
ingress-nginx configs drive the real routers through a rollout, and each Role it shows grants
exactly the requests those routers made.

For each router the guide's user object (the IngressRoute, the Ingress) is seeded into the
emulated API server of ``support.kube``, which validates every object the router writes (the
Traefik CRDs, the Kubernetes Ingress schema). The router is built from the guide's config block
by the daemon's own factory and driven as a rollout drives it: weights 10, 50, 100 read back,
the user's object edited by its owner (the router follows: the header pin or the canary
Ingress is rewritten), back to 0 and finalize. Every request (reads too) is mapped to the RBAC
rule it needs, as ``test_guide_kubernetes.py`` does for the gateway-api router, and the Role
the guide shows for that router must grant exactly those: none missing, none unused.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from test_guide_kubernetes import GUIDE, _blocks, _granted, _needed, _one, recording_cluster

from canaryd.adapters.kube import KubeClient
from canaryd.app import build_router, load_config
from support import kube

_FENCE = re.compile(r"^```ya?ml[ \t]*\n(.*?)^```", re.M | re.S)
CASES = {
    "traefik-service": ("IngressRoute", kube.INGRESSROUTES, "canaryd-traefik-service"),
    "nginx-ingress": ("Ingress", kube.INGRESSES, "canaryd-nginx-ingress"),
}


def _config(tmp_path: Path, kind: str) -> Path:
    blocks = [
        b
        for b in _FENCE.findall(GUIDE.read_text(encoding="utf-8"))
        if "\ntargets:" in b and f"kind: {kind}\n" in b
    ]
    assert len(blocks) == 1, f"the guide shows one canaryd config with the {kind} router"
    path = tmp_path / "canaryd.yaml"
    path.write_text(blocks[0], encoding="utf-8")
    return path


def _edit(kind: str, obj: dict[str, Any]) -> None:
    """The owner changes the host their route or Ingress serves."""
    if kind == "traefik-service":
        obj["spec"]["routes"][0]["match"] = "Host(`www.example.com`)"
    else:
        obj["spec"]["rules"][0]["host"] = "www.example.com"


async def _rollout(tmp_path: Path, kind: str) -> tuple[list[tuple[str, str]], str]:
    (target,) = load_config(_config(tmp_path, kind)).targets
    user_kind, resource, _ = CASES[kind]
    user = _one(user_kind, "web")
    namespace = user["metadata"]["namespace"]
    async with recording_cluster() as (c, emulator):
        c.seed(resource, namespace, user)
        router = build_router(target, KubeClient(c.api))
        for weight in (10, 50):
            await router.set_weight(weight)
            assert await router.get_weight() == weight
        c.write(resource, namespace, "web", lambda obj: _edit(kind, obj))
        assert await router.get_weight() is None, "the canary side no longer matches the user's"
        await router.set_weight(100)
        assert await router.get_weight() == 100
        await router.set_weight(0)
        await router.finalize()
        assert await router.get_weight() == 0
        await router.aclose()
        return list(emulator.seen), namespace


@pytest.mark.parametrize("kind", list(CASES))
async def test_the_guides_role_for_each_router_grants_exactly_what_it_uses(
    tmp_path: Path, kind: str
) -> None:
    seen, namespace = await _rollout(tmp_path, kind)
    needed = set(_needed(seen))
    role = _one("Role", CASES[kind][2])
    assert role["metadata"]["namespace"] == namespace
    granted = _granted(role)
    assert not needed - granted, f"used but not granted: {sorted(needed - granted)}"
    assert not granted - needed, f"granted but never used: {sorted(granted - needed)}"


def test_the_guide_shows_one_role_per_router() -> None:
    names = {
        d["metadata"]["name"] for d in _blocks() if isinstance(d, dict) and d.get("kind") == "Role"
    }
    argo = "canaryd-argo-rollouts"  # held by test_guide_kubernetes_argo.py
    assert names == {"canaryd", argo, *(role for _, _, role in CASES.values())}
