"""The ``argo-rollouts`` router against the validating emulator (tests/support/kube.py) with the
fake Argo controller (tests/support/fakeargo.py) moving the Rollout's status as Argo does.

The router is driven here as the worker drives it (``ensure_canary``, ``set_weight`` per stage,
``update_stable``, ``set_weight(0)``), and every request it makes is one the Argo CLI makes:
the status patches go to the status subresource (the emulator ignores anything but ``status``
there, and validates the result against the Rollout CRD)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from canaryd.adapters.kube import KubeClient
from canaryd.adapters.routers.argo_rollouts import (
    ArgoRolloutsRouter,
    promote_patches,
    step_mismatch,
)
from canaryd.core.errors import RouterUnavailable
from support import fakeargo, kube

NS = "shop"
WEIGHTS = [10, 25, 50, 100]
OLD, NEW = "registry.example/web:1.0", "registry.example/web:2.0"
TIMEOUT = 10.0


@pytest.fixture
async def k8s() -> AsyncIterator[kube.Cluster]:
    async with kube.cluster() as c:
        yield c


@pytest.fixture
async def argo(k8s: kube.Cluster) -> AsyncIterator[fakeargo.FakeArgo]:
    async with fakeargo.running(k8s, NS) as controller:
        yield controller


async def until(what: Callable[[], Awaitable[Any]], expected: Any) -> None:
    """Poll ``what`` until it answers ``expected`` (bounded: the fake ticks every 20 ms)."""
    async with asyncio.timeout(TIMEOUT):
        while (got := await what()) != expected:
            await asyncio.sleep(0.01)
    assert got == expected


def stored(k8s: kube.Cluster) -> dict[str, Any]:
    found = k8s.get(kube.ROLLOUTS, NS, "web")
    assert found is not None
    return found


async def healthy_rollout(k8s: kube.Cluster, routed: bool = True) -> ArgoRolloutsRouter:
    k8s.seed(kube.ROLLOUTS, NS, fakeargo.rollout_manifest("web", OLD, WEIGHTS, routed=routed))
    router = ArgoRolloutsRouter("web", namespace=NS, kube=KubeClient(k8s.api))
    await until(router.stable_image, OLD)
    return router


def status_writes(k8s: kube.Cluster) -> list[tuple[str, str]]:
    return [w for w in k8s.writes if w[1].endswith("/status") and w[0] == "PATCH"]


@pytest.mark.parametrize("routed", [True, False], ids=["traffic-routing", "replica-ratio"])
async def test_a_good_rollout_is_promoted_through_every_pause(
    k8s: kube.Cluster, argo: fakeargo.FakeArgo, routed: bool
) -> None:
    router = await healthy_rollout(k8s, routed)
    assert await router.refusal(WEIGHTS, NEW) is None
    await router.ensure_canary(NEW)
    assert stored(k8s)["spec"]["template"]["spec"]["containers"][0]["image"] == NEW
    await until(router.canary_status, (True, True))  # Argo stands at the first pause
    assert await router.get_weight() == 10
    for weight in WEIGHTS[1:]:
        await router.set_weight(weight)
        await router.set_weight(weight)  # repeated (a pass before Argo moved): no second promote
        await until(router.get_weight, weight)
        status = stored(k8s)["status"]
        assert status["pauseConditions"][0]["reason"] == "CanaryPauseStep"
        if routed:
            assert status["canary"]["weights"]["canary"]["weight"] == weight
    assert len(status_writes(k8s)) == len(WEIGHTS) - 1, "one promote per stage"
    assert await router.stable_image() is None  # the stable still runs the old revision
    await router.update_stable(NEW)  # promotion: through the last pause
    await until(router.stable_image, NEW)
    assert await router.get_weight() == 0
    assert await router.canary_status() == (False, False)
    assert stored(k8s)["status"]["phase"] == "Healthy"
    await router.set_weight(0)  # promotion's shift to stable: nothing to abort
    assert "abort" not in stored(k8s)["status"]
    for write in status_writes(k8s):  # the CLI's promote patch, on the status subresource
        assert write[1].endswith(f"/namespaces/{NS}/rollouts/web/status")


async def test_rollback_is_argos_abort_on_the_status_subresource(
    k8s: kube.Cluster, argo: fakeargo.FakeArgo
) -> None:
    router = await healthy_rollout(k8s)
    await router.ensure_canary(NEW)
    await until(router.get_weight, 10)
    await router.set_weight(25)
    await until(router.get_weight, 25)
    await router.set_weight(0)
    await until(router.get_weight, 0)
    status = stored(k8s)["status"]
    assert status["abort"] is True and status["phase"] == "Degraded"
    assert status["canary"]["weights"]["canary"]["weight"] == 0
    assert await router.canary_status() == (False, False)  # nothing left to scale down
    assert (await router.external_abort(NEW) or "").startswith("Rollout shop/web is Degraded")
    assert await router.external_abort("registry.example/web:3.0") is None  # not its abort
    await router.remove_canary()  # already aborted: no second patch
    assert len(status_writes(k8s)) == 2
    # the same image again would change nothing in Argo: the start says so
    assert "retry" in (await router.refusal(WEIGHTS, NEW) or "")
    assert await router.refusal(WEIGHTS, "registry.example/web:3.0") is None


async def test_a_rollback_during_promotion_restores_the_stable_revision(
    k8s: kube.Cluster, argo: fakeargo.FakeArgo
) -> None:
    router = await healthy_rollout(k8s)
    await router.ensure_canary(NEW)
    await until(router.get_weight, 10)
    await router.set_weight(0)
    await until(router.get_weight, 0)
    await router.update_stable(OLD)  # canaryd's restore: the template back to the stable's
    await until(router.stable_image, OLD)
    status = stored(k8s)["status"]
    assert status["phase"] == "Healthy" and "abort" not in status


async def test_promote_full_and_pause_resume_are_the_clis_patches(
    k8s: kube.Cluster, argo: fakeargo.FakeArgo
) -> None:
    router = await healthy_rollout(k8s)
    await router.ensure_canary(NEW)
    await until(router.get_weight, 10)
    await router.pause()
    assert stored(k8s)["spec"]["paused"] is True
    await router.resume()
    assert stored(k8s)["spec"]["paused"] is False
    await router.promote_full()
    await until(router.stable_image, NEW)
    assert stored(k8s)["status"]["currentStepIndex"] == 2 * len(WEIGHTS)


async def test_an_abort_by_argos_own_analysis_is_reported(
    k8s: kube.Cluster, argo: fakeargo.FakeArgo
) -> None:
    router = await healthy_rollout(k8s)
    await router.ensure_canary(NEW)
    await until(router.get_weight, 10)
    assert await router.external_abort(NEW) is None
    await argo.analysis_failed("web", "success-rate")
    await until(router.get_weight, 0)
    why = await router.external_abort(NEW)
    assert why is not None and 'Metric "success-rate" assessed Failed' in why
    with pytest.raises(RouterUnavailable, match="aborted"):
        await router.set_weight(25)  # canaryd does not un-abort what Argo aborted


async def test_a_weight_off_the_steps_is_refused_with_the_step(
    k8s: kube.Cluster, argo: fakeargo.FakeArgo
) -> None:
    router = await healthy_rollout(k8s)
    await router.ensure_canary(NEW)
    await until(router.get_weight, 10)
    with pytest.raises(RouterUnavailable, match=r"step 1 \(10%\); its next pause is at 25%"):
        await router.set_weight(40)
    assert status_writes(k8s) == []


async def test_a_moving_rollout_reads_as_cannot_tell(k8s: kube.Cluster) -> None:
    """Without the controller the new spec is never observed: no weight, not ready."""
    k8s.seed(kube.ROLLOUTS, NS, fakeargo.rollout_manifest("web", OLD, WEIGHTS))
    router = ArgoRolloutsRouter("web", namespace=NS, kube=KubeClient(k8s.api))
    assert await router.get_weight() is None
    await router.ensure_canary(NEW)
    assert await router.canary_status() == (False, False)
    await router.set_weight(25)  # nothing to promote from: no write
    assert status_writes(k8s) == []


async def test_a_missing_rollout_is_named(k8s: kube.Cluster) -> None:
    router = ArgoRolloutsRouter("web", namespace=NS, kube=KubeClient(k8s.api))
    assert await router.get_weight() is None
    assert await router.refusal(WEIGHTS, NEW) == "Rollout shop/web not found"
    with pytest.raises(RouterUnavailable, match="Rollout shop/web not found"):
        await router.set_weight(10)


async def test_the_named_container_is_the_one_set(
    k8s: kube.Cluster, argo: fakeargo.FakeArgo
) -> None:
    manifest = fakeargo.rollout_manifest("web", OLD, WEIGHTS)
    containers = manifest["spec"]["template"]["spec"]["containers"]
    containers.insert(0, {"name": "proxy", "image": "envoy:1"})
    k8s.seed(kube.ROLLOUTS, NS, manifest)
    router = ArgoRolloutsRouter("web", namespace=NS, container="app", kube=KubeClient(k8s.api))
    await router.ensure_canary(NEW)
    images = [c["image"] for c in stored(k8s)["spec"]["template"]["spec"]["containers"]]
    assert images == ["envoy:1", NEW]


# --------------------------------------------------------------------------- steps vs stages


def steps(*pairs: tuple[int, dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for weight, pause in pairs:
        out += [{"setWeight": weight}, {"pause": pause}]
    return out


def test_steps_that_agree_with_the_stages() -> None:
    assert step_mismatch([10, 50], steps((10, {}), (50, {}))) is None
    analysis = [{"analysis": {"templates": [{"templateName": "x"}]}}]
    assert step_mismatch([10, 50], steps((10, {})) + analysis + steps((50, {}))) is None


@pytest.mark.parametrize(
    ("weights", "given", "message"),
    [
        ([10, 25], steps((10, {}), (30, {})), "step 3 pauses at setWeight 30, canaryd stage 2 "),
        ([10, 25, 50], steps((10, {}), (25, {})), "canaryd stage 3 (50%) has no pause step"),
        ([10], steps((10, {}), (25, {})), "step 3 is a pause after canaryd's last stage"),
        ([10], steps((10, {"duration": "1m"})), "step 1 is a pause with a duration"),
        ([10], [], "steps is empty"),
    ],
)
def test_the_first_step_that_differs_is_named(
    weights: list[int], given: list[Any], message: str
) -> None:
    assert message in (step_mismatch(weights, given) or "")


def test_promote_patches_are_the_clis() -> None:
    at_pause: dict[str, Any] = {
        "spec": {"strategy": {"canary": {"steps": steps((10, {}))}}},
        "status": {"currentStepIndex": 1, "pauseConditions": [{"reason": "CanaryPauseStep"}]},
    }
    assert promote_patches(at_pause) == (None, {"status": {"pauseConditions": None}})
    at_pause["spec"]["paused"] = True
    assert promote_patches(at_pause)[0] == {"spec": {"paused": False}}
    no_conditions = {**at_pause, "spec": {}, "status": {"currentStepIndex": 1}}
    patch = {"status": {"pauseConditions": None, "currentStepIndex": 1}}  # no steps: kept
    assert promote_patches(no_conditions) == (None, patch)
