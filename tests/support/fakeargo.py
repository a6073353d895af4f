"""A small fake of the Argo Rollouts controller, for the ``argo-rollouts`` router's tests.

It plays the part of Argo that canaryd relies on, against the validating emulator
(``support.kube``): it reads a Rollout through the API and writes its ``status`` back through
the **status subresource** (a PUT carrying the resourceVersion read; on 409 it reads again on
its next tick), so every status it writes is checked against the Rollout CRD (v1.9.1,
tests/upstream/argo-rollouts) as a real apiserver would. One transition per tick, so the states
in between (a ``setWeight`` applied, the pause not reached yet) are seen by canaryd too.

What it reproduces, and from which Argo source (argoproj/argo-rollouts v1.9):

- the pod template hash: a new ``spec.template`` is a new revision (``currentPodHash``); the
  first revision a Rollout ever has is stable at once, without steps (``rollout/canary.go``:
  no stable ReplicaSet yet → the new one is stable);
- a new revision resets the status as ``resetRolloutStatus`` does (``rollout/sync.go``): pause
  conditions cleared, ``abort`` removed, ``promoteFull`` false, ``currentStepIndex`` 0; a new
  template equal to the stable one (an undo, or canaryd restoring the stable) is promoted at
  once, as the stable ReplicaSet is already there;
- the steps (``rollout/canary.go`` ``completedCurrentCanaryStep``, ``utils/replicaset/canary.go``
  ``GetCurrentCanaryStep``/``GetCurrentSetWeight``): a ``setWeight`` step completes on the next
  tick (the fake has no pods: "at desired replica counts" at once); a ``pause: {}`` adds a
  ``CanaryPauseStep`` pause condition with ``controllerPause: true`` and phase ``Paused``
  (``rollout/pause.go``), and completes once the pause conditions are gone while
  ``controllerPause`` is still set (what ``kubectl argo rollouts promote`` does, clearing them
  on the status subresource), or when ``currentStepIndex`` was moved past it; a ``pause`` with
  a ``duration`` completes once the duration has passed; any other step completes at once;
- ``spec.paused``: no step advances (``completedCurrentCanaryStep`` returns false);
- traffic routing (``rollout/trafficrouting.go``): ``status.canary.weights`` with the canary
  at the current ``setWeight`` and the stable at the rest, 0 once aborted or promoted;
- ``status.abort`` (``abort``, or Argo's own analysis failing: ``analysis_failed``): phase
  ``Degraded``, message ``RolloutAborted: Rollout aborted update to revision N``, weight 0,
  pause conditions cleared (``rollout/sync.go`` ``calculateRolloutConditions``);
- ``promoteFull``, or the last step completed: the canary revision becomes ``stableRS``,
  ``currentStepIndex`` the step count, phase ``Healthy``, ``promoteFull`` false;
- ``observedGeneration`` (a string, as Argo writes it) is the generation of the spec seen.

Not reproduced: ReplicaSets and pods (no replica counts beyond ``replicas``), experiments,
AnalysisRuns (``analysis_failed`` stands in for one failing), ``setCanaryScale``, header and
mirror routes, anti-affinity, blue-green, ``abortScaleDownDelaySeconds``, steps changed mid-way.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime
import hashlib
import json
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from support import kube

GROUP, VERSION, PLURAL = "argoproj.io", "v1alpha1", "rollouts"
T = TypeVar("T")
MERGE: dict[str, Any] = {"_content_type": "application/merge-patch+json"}


def pod_hash(template: Any) -> str:
    """A pod template's hash (Argo uses a FNV hash of the template; any stable one serves)."""
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _set_weight(steps: list[Any], index: int) -> int:
    """The weight of the last ``setWeight`` at or before ``index`` (``GetCurrentSetWeight``)."""
    for step in reversed(steps[: index + 1]):
        if isinstance(step, dict) and isinstance(step.get("setWeight"), int):
            return int(step["setWeight"])
    return 0


def next_status(rollout: dict[str, Any], elapsed: Callable[[str], float]) -> dict[str, Any]:
    """The status the controller writes after one reconcile of ``rollout`` (see the module
    doc). ``elapsed(start_time)``: seconds since a pause condition's ``startTime``."""
    spec, meta = rollout["spec"], rollout["metadata"]
    status = copy.deepcopy(rollout.get("status") or {})
    canary = spec.get("strategy", {}).get("canary", {})
    steps = canary.get("steps") or []
    revision = pod_hash(spec.get("template"))
    status["observedGeneration"] = str(meta.get("generation", 1))
    status.setdefault("replicas", spec.get("replicas", 1))
    done = len(steps)
    if not status.get("stableRS"):
        status.update(stableRS=revision, currentPodHash=revision, currentStepIndex=done)
        return _healthy(status, canary)
    if revision != status.get("currentPodHash"):  # a new revision: resetRolloutStatus
        for key in ("pauseConditions", "abort", "abortedAt"):
            status.pop(key, None)
        status.update(currentPodHash=revision, promoteFull=False, controllerPause=False)
        if revision == status["stableRS"]:
            status["currentStepIndex"] = done
            return _healthy(status, canary)
        status.update(
            currentStepIndex=0, phase="Progressing", message="more replicas need to be updated"
        )
        return _weights(status, canary, 0)
    if status.get("abort"):
        status.pop("pauseConditions", None)
        status.setdefault("abortedAt", _now())
        message = str(status.get("message") or "")
        if not message.startswith("RolloutAborted"):
            message = f"RolloutAborted: Rollout aborted update to revision {meta['generation']}"
        status.update(controllerPause=False, phase="Degraded", message=message)
        return _weights(status, canary, 0)
    index = status.get("currentStepIndex", 0)
    if status.get("promoteFull") or index >= done:
        status.update(stableRS=revision, currentStepIndex=done)
        status.pop("pauseConditions", None)
        return _healthy(status, canary)
    if spec.get("paused"):
        status.update(phase="Paused", message="manually paused")
        return status
    step = steps[index] if isinstance(steps[index], dict) else {}
    if "pause" in step:
        status = _pause(status, step.get("pause") or {}, elapsed)
    else:  # setWeight and every other step: complete at once
        status.update(currentStepIndex=index + 1, phase="Progressing", message="")
    return _weights(status, canary, _set_weight(steps, status["currentStepIndex"]))


def _pause(
    status: dict[str, Any], pause: dict[str, Any], elapsed: Callable[[str], float]
) -> dict[str, Any]:
    conditions = status.get("pauseConditions") or []
    if not conditions and status.get("controllerPause"):  # promoted: the CLI cleared them
        status.update(currentStepIndex=status["currentStepIndex"] + 1, controllerPause=False)
        status.pop("pauseConditions", None)
        status.update(phase="Progressing", message="")
        return status
    if not conditions:
        status.update(
            pauseConditions=[{"reason": "CanaryPauseStep", "startTime": _now()}],
            controllerPause=True,
            phase="Paused",
            message="CanaryPauseStep",
        )
        return status
    duration = pause.get("duration")
    if duration is not None and elapsed(conditions[0]["startTime"]) >= _seconds(duration):
        status.pop("pauseConditions", None)
        status.update(currentStepIndex=status["currentStepIndex"] + 1, controllerPause=False)
        status.update(phase="Progressing", message="")
    return status


def _seconds(duration: Any) -> float:
    text = str(duration)
    units = {"s": 1, "m": 60, "h": 3600}
    return float(text[:-1]) * units[text[-1]] if text[-1] in units else float(text)


def _healthy(status: dict[str, Any], canary: dict[str, Any]) -> dict[str, Any]:
    status.pop("pauseConditions", None)
    status.update(phase="Healthy", message="", promoteFull=False, controllerPause=False)
    return _weights(status, canary, 0)


def _weights(status: dict[str, Any], canary: dict[str, Any], weight: int) -> dict[str, Any]:
    if canary.get("trafficRouting"):
        status.setdefault("canary", {})["weights"] = {
            "canary": {
                "weight": weight,
                "podTemplateHash": status["currentPodHash"],
                "serviceName": canary.get("canaryService", ""),
            },
            "stable": {
                "weight": 100 - weight,
                "podTemplateHash": status["stableRS"],
                "serviceName": canary.get("stableService", ""),
            },
        }
    return status


@dataclass
class FakeArgo:
    """The fake controller for the Rollouts of one namespace of one emulated cluster."""

    cluster: kube.Cluster
    namespace: str
    interval: float = 0.02
    # out of band: read and write the emulator's store directly (``Cluster.write``), so the
    # fake's requests are not among those a test records (RBAC); its statuses then go unchecked
    out_of_band: bool = False

    def _api(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.cluster.api)

    async def reconcile(self, name: str) -> bool:
        """One reconcile of the Rollout ``name``: True if it wrote a new status."""
        if self.out_of_band:
            return self._reconcile_out_of_band(name)
        api = self._api()
        try:
            rollout = await api.get_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, name
            )
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        status = next_status(rollout, _elapsed)
        if status == (rollout.get("status") or {}):
            return False
        body = {**rollout, "status": status}
        try:
            await api.replace_namespaced_custom_object_status(
                GROUP, VERSION, self.namespace, PLURAL, name, body
            )
        except ApiException as exc:
            if exc.status == 409:  # written meanwhile: the next tick reads it again
                return False
            raise
        return True

    def _reconcile_out_of_band(self, name: str) -> bool:
        rollout = self.cluster.get(kube.ROLLOUTS, self.namespace, name)
        if rollout is None:
            return False
        status = next_status(rollout, _elapsed)
        if status == (rollout.get("status") or {}):
            return False

        def edit(obj: dict[str, Any]) -> None:
            obj["status"] = status

        self.cluster.write(kube.ROLLOUTS, self.namespace, name, edit)
        return True

    async def run(self) -> None:
        """Reconcile every Rollout of the namespace each ``interval``, until cancelled."""
        while True:
            for resource, namespace, name in list(self.cluster.emulator.objects):
                if (resource, namespace) == (kube.ROLLOUTS, self.namespace):
                    await self.reconcile(name)
            await asyncio.sleep(self.interval)

    async def analysis_failed(self, name: str, metric: str) -> None:
        """Argo's own analysis failed: what the controller writes then (abort and its words)."""
        patch = {
            "status": {
                "abort": True,
                "message": f'RolloutAborted: Metric "{metric}" assessed Failed due to failed '
                "(1) > failureLimit (0)",
            }
        }
        await self._api().patch_namespaced_custom_object_status(
            GROUP,
            VERSION,
            self.namespace,
            PLURAL,
            name,
            patch,
            **MERGE,
        )


def _elapsed(start_time: str) -> float:
    started = datetime.datetime.strptime(start_time, "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=datetime.UTC
    )
    return (datetime.datetime.now(datetime.UTC) - started).total_seconds()


@contextlib.asynccontextmanager
async def running(
    c: kube.Cluster, namespace: str, out_of_band: bool = False
) -> AsyncIterator[FakeArgo]:
    """The fake controller running in the background of the current loop."""
    argo = FakeArgo(c, namespace, out_of_band=out_of_band)
    task = asyncio.create_task(argo.run())
    try:
        yield argo
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class InThread:
    """The emulator and the fake controller on a loop of their own, in a thread, for tests
    that drive a ``canaryd serve`` subprocess with blocking calls (``support.servekit``)."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self.cluster: kube.Cluster | None = None
        self.argo: FakeArgo | None = None
        self._thread = threading.Thread(target=self.loop.run_until_complete, args=(self._main(),))

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        async with kube.cluster() as c, running(c, self.namespace) as argo:
            self.cluster, self.argo = c, argo
            self._ready.set()
            await self._stop.wait()

    def call(self, make: Callable[[], Awaitable[T]], timeout: float = 10.0) -> T:
        """Run ``make()`` on the emulator's loop and return its result."""

        async def wrapped() -> T:
            return await make()

        return asyncio.run_coroutine_threadsafe(wrapped(), self.loop).result(timeout)

    def seed(self, manifest: dict[str, Any]) -> None:
        """Store a Rollout as if ``kubectl apply`` had created it (validated, stamped)."""
        assert self.cluster is not None
        cluster = self.cluster

        async def put() -> None:
            cluster.seed(kube.ROLLOUTS, self.namespace, manifest)

        self.call(put)

    def get(self, name: str) -> dict[str, Any] | None:
        assert self.cluster is not None
        cluster = self.cluster

        async def read() -> dict[str, Any] | None:
            return cluster.get(kube.ROLLOUTS, self.namespace, name)

        return self.call(read)

    @contextlib.contextmanager
    def started(self) -> Iterator[InThread]:
        self._thread.start()
        if not self._ready.wait(20):
            raise RuntimeError("the emulator did not start within 20 s")
        try:
            yield self
        finally:
            assert self._stop is not None
            self.loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(20)
            self.loop.close()


def rollout_manifest(
    name: str, image: str, weights: list[int], *, routed: bool = True
) -> dict[str, Any]:
    """A Rollout as the runbook's ``matriz-canary-deployment.yaml`` shapes it: one
    ``setWeight``/``pause: {}`` pair per weight, Traefik weighted-service traffic routing
    over ``<name>-stable``/``<name>-canary``, container ``app`` running ``image``."""
    steps: list[dict[str, Any]] = []
    for weight in weights:
        steps += [{"setWeight": weight}, {"pause": {}}]
    canary: dict[str, Any] = {"steps": steps}
    if routed:
        canary.update(
            stableService=f"{name}-stable",
            canaryService=f"{name}-canary",
            trafficRouting={"traefik": {"weightedTraefikServiceName": name}},
        )
    labels = {"app": name}
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Rollout",
        "metadata": {"name": name},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "app", "image": image}]},
            },
            "strategy": {"canary": canary},
        },
    }
