"""The ``argo-rollouts`` router end to end against a cluster whose Argo Rollouts controller moves
the Rollout (on the emulator, the fake controller of ``support.fakeargo`` plays it).

The router is driven as the worker drives it (``ensure_canary``, ``set_weight`` per stage,
``update_stable``; or ``set_weight(0)`` for a rollback) and only what the controller really
does is waited for: the Rollout standing at each pause, the new revision becoming stable, the
abort. The Rollout splits by replica count (no ``trafficRouting``), so the scenario needs
Argo Rollouts and nothing else: no Traefik, no mesh. Its pods run ``registry.k8s.io/pause``.
"""

from __future__ import annotations

from typing import Any

import pytest

from canaryd.adapters.kube import KubeClient
from canaryd.adapters.routers.argo_rollouts import ArgoRolloutsRouter
from support import clustercases, clusters, fakeargo, kube

pytestmark = pytest.mark.realcluster

WEIGHTS = [25, 50, 100]
OLD, NEW = clustercases.OLD_IMAGE, clustercases.NEW_IMAGE
NO_ARGO = "is the Argo Rollouts controller running and able to start registry.k8s.io/pause pods?"


async def healthy_rollout(cluster: clusters.Cluster) -> ArgoRolloutsRouter:
    """The Rollout ``web`` created at ``OLD``, once the controller has made that its stable."""
    await cluster.require(kube.ROLLOUTS)
    manifest = fakeargo.rollout_manifest("web", OLD, WEIGHTS, routed=False)
    await cluster.seed(kube.ROLLOUTS, manifest)
    router = ArgoRolloutsRouter("web", namespace=cluster.namespace, kube=KubeClient(cluster.api))
    await cluster.until(router.stable_image, OLD, "the new Rollout's stable image", NO_ARGO)
    return router


async def status(cluster: clusters.Cluster) -> dict[str, Any]:
    rollout = await cluster.get(kube.ROLLOUTS, "web")
    assert rollout is not None, f"Rollout {cluster.namespace}/web is gone"
    found: dict[str, Any] = rollout.get("status") or {}
    return found


async def test_a_good_rollout_is_promoted_through_every_pause(cluster: clusters.Cluster) -> None:
    router = await healthy_rollout(cluster)
    assert await router.refusal(WEIGHTS, NEW) is None
    await router.ensure_canary(NEW)
    await cluster.until(router.canary_status, (True, True), "the canary at the first pause")
    assert await router.get_weight() == WEIGHTS[0]
    for weight in WEIGHTS[1:]:
        await router.set_weight(weight)
        await router.set_weight(weight)  # a pass before Argo moved: no second promote
        await cluster.until(router.get_weight, weight, f"the Rollout at {weight}%", NO_ARGO)
        pauses = (await status(cluster)).get("pauseConditions") or []
        assert [p["reason"] for p in pauses] == ["CanaryPauseStep"], pauses
    assert await router.stable_image() is None, "the stable still runs the old revision"
    await router.update_stable(NEW)  # promotion: through the last pause
    await cluster.until(router.stable_image, NEW, "the new revision as the stable", NO_ARGO)
    assert await router.get_weight() == 0
    assert await router.canary_status() == (False, False)
    await router.set_weight(0)  # promotion's shift to stable: nothing to abort
    assert "abort" not in await status(cluster)


async def test_a_rollback_is_argos_abort_and_the_stable_is_restored(
    cluster: clusters.Cluster,
) -> None:
    router = await healthy_rollout(cluster)
    await router.ensure_canary(NEW)
    await cluster.until(router.get_weight, WEIGHTS[0], "the canary at the first pause", NO_ARGO)
    await router.set_weight(0)
    await cluster.until(router.get_weight, 0, "the aborted Rollout at 0%", NO_ARGO)
    assert (await status(cluster)).get("abort") is True

    async def phase() -> Any:
        return (await status(cluster)).get("phase")

    await cluster.until(phase, "Degraded", "the aborted Rollout's phase", NO_ARGO)
    await cluster.until(router.canary_status, (False, False), "no canary left to scale down")
    assert (await router.external_abort(NEW) or "").startswith(
        f"Rollout {cluster.namespace}/web is Degraded"
    )
    await router.update_stable(OLD)  # canaryd's restore: the template back to the stable's
    await cluster.until(router.stable_image, OLD, "the stable revision restored", NO_ARGO)
    restored = await status(cluster)
    assert "abort" not in restored, restored
