"""``canaryctl render argo-rollout``: a Rollout whose steps are the policy's stages, valid
against the Rollout CRD (Argo Rollouts v1.9.1, tests/upstream/argo-rollouts), accepted by the
validating emulator as a create, and driven by the ``argo-rollouts`` router with the fake Argo
controller through every pause."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import yaml

from canaryd.adapters.kube import KubeClient
from canaryd.adapters.routers.argo_rollouts import ArgoRolloutsRouter, step_mismatch
from canaryd.config.policies import RULES_DIR, load_policy
from canaryd.ctl import main as ctl
from support import fakeargo, kube

CRD = "argo-rollouts/rollout-crd.yaml"
POLICIES = sorted(p.stem for p in RULES_DIR.glob("*.yaml"))


def rendered(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, object]:
    assert ctl.main(["render", "argo-rollout", *args]) == 0
    doc = yaml.safe_load(capsys.readouterr().out)
    assert isinstance(doc, dict)
    return doc


@pytest.mark.parametrize("policy", POLICIES)
def test_every_policy_renders_a_rollout_the_crd_accepts_with_steps_the_router_accepts(
    policy: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--policy", policy, "--name", "matriz", "--image", "ghcr.io/lukhas/matriz:v2"]
    doc = rendered(capsys, *args, "--namespace", "lukhas-ai", "--port", "8080")
    assert kube.schema_errors(doc, CRD, "v1alpha1") == []
    canary = doc["spec"]["strategy"]["canary"]  # type: ignore[index]
    weights = [s.weight for s in load_policy(RULES_DIR / f"{policy}.yaml").stages]
    assert step_mismatch(weights, canary["steps"]) is None
    assert canary["trafficRouting"] == {"traefik": {"weightedTraefikServiceName": "matriz"}}
    assert (canary["stableService"], canary["canaryService"]) == ("matriz-stable", "matriz-canary")
    container = doc["spec"]["template"]["spec"]["containers"][0]  # type: ignore[index]
    assert container["image"] == "ghcr.io/lukhas/matriz:v2"


async def test_the_rendered_rollout_is_driven_through_every_pause(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = tmp_path / "rollout.yaml"
    assert (
        ctl.main(
            [
                "render",
                "argo-rollout",
                "--policy",
                "matriz-standard",
                "--name",
                "web",
                "--image",
                "web:1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    doc = yaml.safe_load(out.read_text())
    async with kube.cluster() as c, fakeargo.running(c, "shop"):
        c.seed(kube.ROLLOUTS, "shop", doc)  # validated as the apiserver validates a create
        router = ArgoRolloutsRouter("web", namespace="shop", kube=KubeClient(c.api))
        async with asyncio.timeout(10):
            while await router.stable_image() != "web:1":
                await asyncio.sleep(0.01)
            assert await router.refusal([10, 25, 50, 100], "web:2") is None
            await router.ensure_canary("web:2")
            for weight in (10, 25, 50, 100):
                await router.set_weight(weight)
                while await router.get_weight() != weight:
                    await asyncio.sleep(0.01)
            await router.update_stable("web:2")
            while await router.stable_image() != "web:2":
                await asyncio.sleep(0.01)


def test_without_an_image_the_placeholder_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    doc = rendered(capsys, "--policy", "matriz-fast-track")
    assert doc["metadata"] == {  # the target's name: the policy's job by default
        "name": "matriz-fast-track",
        "labels": {"app.kubernetes.io/managed-by": "canaryctl"},
        "annotations": {"canaryd/policy": "matriz-fast-track"},
    }
    container = doc["spec"]["template"]["spec"]["containers"][0]  # type: ignore[index]
    assert container["image"] == "REPLACE-ME:latest"
