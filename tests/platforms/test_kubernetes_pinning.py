"""Digest pinning on the kubernetes platform (issue 13 point 1): the node pulls the image, so a
tag is pinned once the canary runs, from its pods' ``status.containerStatuses[].imageID``, and
promotion puts that ``repo@sha256:…`` on the stable, even when the tag is moved mid-rollout and
canaryd is restarted afterwards.

The controller, its worker, the SQLite store and the kubernetes platform (the real
``kubernetes_asyncio`` client) are real, against ``support/kube.py``'s emulator; the router is
``noop``. The emulator runs no controllers: the test plays the Deployment controller
(``kube.roll_out``) and the kubelet (it writes the canary's pods and their ``imageID``).
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import kmock
import pytest

from canaryd.adapters.platforms.kubernetes import KubernetesDeploymentPlatform
from canaryd.adapters.platforms.pinning import pinned_from_image_id
from canaryd.adapters.routers.noop import NoopRouter
from canaryd.adapters.store.sqlite import SqliteStore
from canaryd.adapters.telemetry import Telemetry
from canaryd.core.errors import PlatformUnavailable
from canaryd.core.model import Cause, Phase, Policy, Rollout, Stage
from canaryd.ports import PinsImages, PinsRunningCanary
from canaryd.runtime.controller import Controller, Target
from support import kube
from support.apikit import FAST, WallClock, no_checks

NS = "shop"
PODS = kmock.resource("", "v1", "pods")
V1, TAG = "registry.example/web:1.0", "registry.example/web:2.0"
JUDGED = "sha256:" + "a1" * 32
MOVED = "sha256:" + "b2" * 32
PINNED = f"registry.example/web@{JUDGED}"
POLICY = Policy(
    name="pin-quick",
    stages=(Stage(50, 0.5), Stage(100, 0.5)),
    checks={},
    interval=0.25,
    scale_down_delay=0.0,
)


@pytest.fixture
async def k8s() -> AsyncIterator[kube.Cluster]:
    async with kube.cluster() as c:
        yield c


def stable_deployment() -> dict[str, Any]:
    container = {"name": "web", "image": V1}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "containers": [container, {"name": "proxy", "image": "registry.example/p:7"}]
                },
            },
        },
    }


def canary_pod(c: kube.Cluster, name: str, image_id: str, *, web_first: bool = True) -> None:
    """A pod of the canary Deployment as the kubelet reports it: the template's labels and
    containers, each container's ``imageID`` (the proxy's is another image's digest)."""
    canary = c.get(kube.DEPLOYMENTS, NS, "web-canary")
    assert canary is not None
    template = copy.deepcopy(canary["spec"]["template"])
    statuses = [
        {"name": "web", "ready": True, "restartCount": 0, "image": TAG, "imageID": image_id},
        {
            "name": "proxy",
            "ready": True,
            "restartCount": 0,
            "image": "registry.example/p:1",
            "imageID": "registry.example/p@sha256:" + "cc" * 32,
        },
    ]
    c.seed(
        PODS,
        NS,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "labels": template["metadata"]["labels"]},
            "spec": template["spec"],
            "status": {
                "phase": "Running",
                "containerStatuses": statuses if web_first else statuses[::-1],
            },
        },
    )


def kubelet_restarts(c: kube.Cluster, name: str, image_id: str) -> None:
    """The container restarts and pulls the tag again, which now names other bytes."""

    def edit(pod: dict[str, Any]) -> None:
        (web,) = [s for s in pod["status"]["containerStatuses"] if s["name"] == "web"]
        web["imageID"] = image_id

    c.write(PODS, NS, name, edit)


def stable_images(c: kube.Cluster) -> list[str]:
    stable = c.get(kube.DEPLOYMENTS, NS, "web")
    assert stable is not None
    return [str(x["image"]) for x in stable["spec"]["template"]["spec"]["containers"]]


async def until(what: str, holds: Callable[[], bool], timeout: float = 30) -> None:
    async with asyncio.timeout(timeout):
        while not holds():
            await asyncio.sleep(0.02)


class Daemon:
    """One incarnation of canaryd's runtime over a store: a controller and its tasks."""

    def __init__(self, c: kube.Cluster, store: SqliteStore) -> None:
        self.platform = KubernetesDeploymentPlatform("web", namespace=NS, api_client=c.api)
        self.controller = Controller(
            [Target("web", POLICY, NoopRouter(), self.platform)],
            store=store,
            measure=no_checks,
            clock=WallClock(),
            events=Telemetry(),
            load_policy=lambda name: POLICY,
            timing=FAST,
        )
        self.tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Daemon:
        def spawn(coro: Any) -> asyncio.Task[None]:
            task = asyncio.get_running_loop().create_task(coro)
            self.tasks.add(task)
            return task

        await self.controller.load(spawn)
        return self

    async def __aexit__(self, *_: object) -> None:  # killed: nothing is shut down politely
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def wait(self, holds: Callable[[Rollout], bool], timeout: float = 30) -> Rollout:
        worker = self.controller.workers()["web"]
        async with asyncio.timeout(timeout):
            await worker.wait_until(holds)
        return worker.state


# --------------------------------------------------------------------------- imageID


@pytest.mark.parametrize(
    ("image_id", "pinned"),
    [
        (f"docker-pullable://registry.example/web@{JUDGED}", PINNED),
        (f"registry.example/web@{JUDGED}", PINNED),
        (f"mirror.local:5000/team/web@{JUDGED}", f"mirror.local:5000/team/web@{JUDGED}"),
        (JUDGED, PINNED),  # no repository: the image's own
    ],
)
def test_every_imageid_form_pins_to_a_repository_digest(image_id: str, pinned: str) -> None:
    assert pinned_from_image_id(TAG, image_id) == pinned


@pytest.mark.parametrize(
    "image_id",
    [
        "",
        "registry.example/web:2.0",  # a tag names nothing
        "sha256:" + "a1" * 31,  # too short
        "sha256:" + "A1" * 32,  # not lowercase
        JUDGED + "\n",
        "sha512:" + "a1" * 64,
        f"docker://{JUDGED}",  # another scheme
        f"containerd://registry.example/web@{JUDGED}",
        f"registry.example/web:2.0@{JUDGED}",  # a tag in the repository
        f"Registry/Web@{JUDGED}",
        f"../../web@{JUDGED}",
        f"a@b@{JUDGED}",
        f"docker-pullable://@{JUDGED}",
        f"web name@{JUDGED}",
    ],
)
def test_garbage_imageids_are_refused(image_id: str) -> None:
    with pytest.raises(ValueError, match="imageID"):
        pinned_from_image_id(TAG, image_id)


# --------------------------------------------------------------------------- the platform


async def test_the_platform_pins_only_what_every_current_canary_pod_agrees_on(
    k8s: kube.Cluster,
) -> None:
    k8s.seed(kube.DEPLOYMENTS, NS, stable_deployment())
    platform = KubernetesDeploymentPlatform("web", namespace=NS, api_client=k8s.api)
    assert isinstance(platform, PinsRunningCanary) and not isinstance(platform, PinsImages)
    await platform.ensure_canary(TAG)
    with pytest.raises(PlatformUnavailable, match=r"cannot pin .*: no pod labelled"):
        await platform.canary_pin(TAG)
    canary_pod(k8s, "web-canary-1", "")  # created, its container not started yet
    with pytest.raises(PlatformUnavailable, match=r"web-canary-1.*no imageID yet"):
        await platform.canary_pin(TAG)
    kubelet_restarts(k8s, "web-canary-1", f"docker-pullable://registry.example/web@{JUDGED}")
    canary_pod(k8s, "web-canary-2", f"registry.example/web@{JUDGED}", web_first=False)
    # a stable pod (not the canary's labels) running other bytes is not asked
    k8s.seed(
        PODS,
        NS,
        {
            "metadata": {"name": "web-1", "labels": {"app": "web"}},
            "spec": stable_deployment()["spec"]["template"]["spec"],
            "status": {
                "containerStatuses": [
                    {
                        "name": "web",
                        "ready": True,
                        "restartCount": 0,
                        "image": TAG,
                        "imageID": MOVED,
                    }
                ]
            },
        },
    )
    assert await platform.canary_pin(TAG) == PINNED
    kubelet_restarts(k8s, "web-canary-2", f"registry.example/web@{MOVED}")
    with pytest.raises(PlatformUnavailable, match="pods that disagree"):
        await platform.canary_pin(TAG)
    kubelet_restarts(k8s, "web-canary-2", "registry.example/web:2.0")
    with pytest.raises(PlatformUnavailable, match=r"web-canary-2.*is not docker-pullable"):
        await platform.canary_pin(TAG)


# --------------------------------------------------------------------------- a rollout


async def test_promotion_deploys_the_digest_the_canary_ran_though_the_tag_moved_meanwhile(
    k8s: kube.Cluster, tmp_path: Path
) -> None:
    k8s.seed(kube.DEPLOYMENTS, NS, stable_deployment())
    kube.roll_out(k8s, NS, "web")
    store = SqliteStore(tmp_path / "state.db")
    try:
        async with Daemon(k8s, store) as first:
            rollout = await first.controller.start("web", TAG)
            assert rollout.pinned is None and rollout.pin_on_ready  # nothing runs it yet
            await until("the canary", lambda: bool(k8s.get(kube.DEPLOYMENTS, NS, "web-canary")))
            kube.roll_out(k8s, NS, "web-canary")
            # ready, but no pod reports what it runs: the first stage waits (no traffic)
            canary_pod(k8s, "web-canary-1", "")
            canary_pod(k8s, "web-canary-2", f"docker-pullable://registry.example/web@{JUDGED}")
            assert first.controller.workers()["web"].state.phase is Phase.PENDING
            kubelet_restarts(k8s, "web-canary-1", f"registry.example/web@{JUDGED}")
            judged = await first.wait(lambda s: s.phase is Phase.PROGRESSING)
            assert judged.pinned == PINNED and not judged.pin_on_ready
            stored = store.get(rollout.id)
            assert stored is not None and stored.pinned == PINNED  # committed before traffic
        # canaryd is gone (killed); meanwhile the tag is moved and both canary containers
        # restart onto the new bytes
        kubelet_restarts(k8s, "web-canary-1", f"registry.example/web@{MOVED}")
        kubelet_restarts(k8s, "web-canary-2", f"docker-pullable://registry.example/web@{MOVED}")
        async with Daemon(k8s, store) as second:
            promoting = await second.wait(lambda s: s.phase is Phase.PROMOTING)
            assert promoting.pinned == PINNED  # not pinned again to the moved tag
            await until("the stable update", lambda: stable_images(k8s)[0] != V1)
            assert stable_images(k8s) == [PINNED, "registry.example/p:7"]
            kube.roll_out(k8s, NS, "web")
            done = await second.wait(lambda s: s.phase is Phase.SUCCEEDED)
        assert done.pinned == PINNED and stable_images(k8s)[0] == PINNED
        assert k8s.get(kube.DEPLOYMENTS, NS, "web-canary") is None
        history = store.history(rollout_id=rollout.id)
        pins = [d for d in history if d["cause"] == str(Cause.PINNED)]
        assert [(d["reason"], d["evidence"]) for d in pins] == [
            (f"canary runs {PINNED}: {TAG} pinned to it", {"image": TAG, "pinned": PINNED})
        ]
        first_weight = next(d for d in history if d["weight"] > 0)
        assert pins[0]["seq"] < first_weight["seq"]  # pinned before any traffic moved
    finally:
        store.close()
