"""The ``argo-rollouts`` router: canaryd drives an Argo Rollouts ``Rollout`` as the Argo CLI does.

Argo owns the ReplicaSets and moves the traffic; canaryd decides when. The Rollout's canary
steps are ``setWeight``/``pause: {}`` pairs, one pair per canaryd stage, and canaryd writes
exactly what ``kubectl argo rollouts`` writes (argo-rollouts v1.9, ``pkg/kubectl-argo-rollouts/
cmd``):

- start (``ensure_canary``): the pod template's image, of the container named ``container`` or
  else the first, by a read and a replace carrying the ``resourceVersion`` read (``set image``
  does a Get and an Update);
- each stage's weight (``set_weight(w)``): nothing while the Rollout moves; once it stands at
  the pause after ``setWeight: w'`` with ``w' < w``, the patches of ``promote`` (``promote.go``
  ``getPatches``): ``{"spec":{"paused":false}}`` when ``spec.paused``, and on the **status
  subresource** ``{"status":{"pauseConditions":null}}`` when there are pause conditions, else
  ``{"status":{"pauseConditions":null,"currentStepIndex":i+1}}``. The read comes first, so a
  repeated call never promotes through two pauses;
- rollback (``set_weight(0)`` of a canary still in progress): ``abort`` (``abort.go``),
  ``{"status":{"abort":true}}`` on the status subresource;
- promotion (``update_stable(image)`` of the image the template runs): ``promote`` through the
  last pause, then Argo finishes the steps and makes the canary the stable; of another image
  (a rollback that must restore the stable): the template back to that image, which Argo
  rolls out at once, without steps, since it is the stable ReplicaSet's;
- ``promote_full``: ``{"status":{"promoteFull":true}}`` (``promote --full``), and ``pause``/
  ``resume``: ``spec.paused`` true / false, for operators' tools built on this class.

Reading: ``get_weight`` is the weight of the pause the Rollout stands at (the last
``setWeight`` before it), and, when the Rollout uses ``trafficRouting``, only if
``status.canary.weights.canary.weight`` shows it too: that is the stage's verify. An aborted
Rollout, or one whose canary became the stable, is at 0; one still moving is ``None`` (cannot
tell), so the stage's timer does not start before Argo stands at the pause. Only a status
the controller wrote for the current spec counts (``status.observedGeneration``).

Steps and stages must agree: ``step_mismatch`` names the first step that differs, and a
rollout is refused at its start (``refusal``) rather than left to stall at a pause canaryd
does not expect. A Rollout Argo aborted on its own (its own ``analysis`` failed) is reported
through ``external_abort`` so the worker decides a rollback with Argo's message.

The same object plays the target's platform (``platform: {kind: none}`` in the config: Argo
owns the ReplicaSets): ``canary_status`` is (a canary ReplicaSet exists and is not aborted,
it stands at a pause or beyond), ``stable_image`` the template's image once the stable
ReplicaSet is the current one.
"""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from canaryd.adapters.kube import KubeClient, KubeConflict, KubeUnavailable
from canaryd.adapters.routers.kubeobject import ATTEMPTS, TIMEOUT, Obj, Objects, reason
from canaryd.config.kinds import Kind, Loader, object_ref, to_name
from canaryd.core.errors import PlatformUnavailable, RouterConflict, RouterUnavailable

GROUP, VERSION, PLURAL = "argoproj.io", "v1alpha1", "rollouts"
MERGE: dict[str, Any] = {"_content_type": "application/merge-patch+json"}  # as the CLI
PAUSE_REASON = "CanaryPauseStep"


# --------------------------------------------------------------------------- the steps


@dataclass(frozen=True, slots=True)
class Pause:
    """A pause step of the Rollout: its index and the weight the steps set before it."""

    index: int
    weight: int
    timed: bool  # ``pause: {duration: ...}``: Argo resumes on its own


def steps_of(rollout: Obj) -> list[Any]:
    canary = ((rollout.get("spec") or {}).get("strategy") or {}).get("canary")
    steps = (canary or {}).get("steps") if isinstance(canary, dict) else None
    return steps if isinstance(steps, list) else []


def pauses(steps: Sequence[Any]) -> list[Pause]:
    """Every pause step, with the weight the last ``setWeight`` before it set (0: none)."""
    out, weight = [], 0
    for i, step in enumerate(steps):
        if not isinstance(step, dict):
            continue
        if isinstance(step.get("setWeight"), int):
            weight = step["setWeight"]
        elif "pause" in step:
            pause = step.get("pause") or {}
            out.append(Pause(i, weight, isinstance(pause, dict) and "duration" in pause))
    return out


def step_mismatch(weights: Sequence[int], steps: Sequence[Any]) -> str | None:
    """Why the Rollout's steps do not match canaryd's stage ``weights``, naming the first step
    that differs (indexes as ``status.currentStepIndex`` counts them), or None if they agree:
    one indefinite ``pause: {}`` per stage, after a ``setWeight`` of the stage's weight."""
    if not steps:
        return "spec.strategy.canary.steps is empty: canaryd needs a setWeight/pause pair per stage"
    found = pauses(steps)
    for n, weight in enumerate(weights):
        if n >= len(found):
            return (
                f"canaryd stage {n + 1} ({weight}%) has no pause step: the steps end after "
                f"{len(found)} pause(s); add setWeight: {weight} and pause: {{}}"
            )
        p = found[n]
        if p.timed:
            return (
                f"step {p.index} is a pause with a duration: Argo would resume on its own; "
                "canaryd promotes through each pause itself, use pause: {}"
            )
        if p.weight != weight:
            return (
                f"step {p.index} pauses at setWeight {p.weight}, canaryd stage {n + 1} "
                f"expects {weight}"
            )
    if len(found) > len(weights):
        extra = found[len(weights)]
        return (
            f"step {extra.index} is a pause after canaryd's last stage ({len(weights)} "
            "stages): nothing would promote through it"
        )
    return None


# --------------------------------------------------------------------------- the status


@dataclass(frozen=True, slots=True)
class Standing:
    """Where a Rollout stands, as the controller last wrote it for the current spec."""

    observed: bool  # the status is about the current spec (observedGeneration)
    aborted: bool
    promoted: bool  # no canary apart from the stable: currentPodHash == stableRS
    pause: Pause | None  # the pause it stands at, if any
    weight: int | None  # the canary weight traffic routing reports (None: no routing / unset)
    routed: bool  # the Rollout uses trafficRouting
    phase: str
    message: str


def standing(rollout: Obj) -> Standing:
    meta, spec = rollout.get("metadata") or {}, rollout.get("spec") or {}
    status = rollout.get("status") or {}
    observed = str(status.get("observedGeneration", "")) == str(meta.get("generation", ""))
    index = status.get("currentStepIndex")
    here = None
    if status.get("pauseConditions") and isinstance(index, int):
        here = next((p for p in pauses(steps_of(rollout)) if p.index == index), None)
        reasons = {c.get("reason") for c in status["pauseConditions"] if isinstance(c, dict)}
        here = here if PAUSE_REASON in reasons else None
    canary = ((spec.get("strategy") or {}).get("canary")) or {}
    weights = ((status.get("canary") or {}).get("weights") or {}).get("canary") or {}
    weight = weights.get("weight") if isinstance(weights, dict) else None
    stable, current = status.get("stableRS"), status.get("currentPodHash")
    return Standing(
        observed=observed,
        aborted=bool(status.get("abort")),
        promoted=bool(stable) and stable == current,
        pause=here,
        weight=weight if isinstance(weight, int) else None,
        routed=bool(canary.get("trafficRouting")),
        phase=str(status.get("phase") or ""),
        message=str(status.get("message") or ""),
    )


def weight_of(s: Standing) -> int | None:
    """The canary's weight the Rollout shows (see the module doc), else None."""
    if not s.observed:
        return None
    if s.aborted or s.promoted:
        return 0 if not s.routed or not s.weight else None
    if s.pause is None or s.pause.timed:
        return None
    if s.routed and s.weight != s.pause.weight:
        return None
    return s.pause.weight


def promote_patches(rollout: Obj) -> tuple[Obj | None, Obj | None]:
    """(spec patch, status patch) of ``kubectl argo rollouts promote`` (``getPatches``'
    default case), for a Rollout with a status subresource."""
    spec_patch = {"spec": {"paused": False}} if (rollout.get("spec") or {}).get("paused") else None
    status = rollout.get("status") or {}
    if status.get("pauseConditions"):
        return spec_patch, {"status": {"pauseConditions": None}}
    index = status.get("currentStepIndex")
    steps = len(steps_of(rollout))
    if isinstance(index, int):
        index = index + 1 if index < steps else index
        return spec_patch, {"status": {"pauseConditions": None, "currentStepIndex": index}}
    return spec_patch, None


def container_image(rollout: Obj, container: str | None) -> tuple[int, str | None]:
    """The index and image of the container named ``container`` (else the first) in the pod
    template; ``PlatformUnavailable`` when there is none."""
    containers = (((rollout.get("spec") or {}).get("template") or {}).get("spec") or {}).get(
        "containers"
    ) or []
    for i, c in enumerate(containers):
        if isinstance(c, dict) and (container is None or c.get("name") == container):
            return i, c.get("image")
    named = f"no container named {container!r}" if container else "no container"
    raise PlatformUnavailable(f"Rollout pod template has {named}")


# --------------------------------------------------------------------------- the adapter


class ArgoRolloutsRouter:
    """One Rollout, driven through its pauses; also the target's platform (Argo deploys)."""

    kind = "argo-rollouts"

    def __init__(
        self,
        name: str,
        *,
        namespace: str = "default",
        container: str | None = None,
        kube: KubeClient | None = None,
    ) -> None:
        self.name, self.namespace, self.container = name, namespace, container
        self._owned = kube is None
        self.kube = kube if kube is not None else KubeClient()
        self._rollouts = Objects(self.kube, GROUP, VERSION, PLURAL, namespace, "Rollout")
        self._lock = asyncio.Lock()

    @property
    def named(self) -> str:
        return f"Rollout {self.namespace}/{self.name}"

    # ------------------------------------------------------------ reading

    async def read(self) -> Obj:
        found = await self._rollouts.read(self.name)
        if found is None:
            raise RouterUnavailable(f"{self.named} not found")
        return found

    async def get_weight(self) -> int | None:
        try:
            return weight_of(standing(await self.read()))
        except RouterUnavailable:
            return None

    async def refusal(self, weights: Sequence[int], image: str) -> str | None:
        """Why a rollout of ``image`` with stage ``weights`` cannot run on this Rollout (its
        steps differ, it cannot be read, it was aborted with that very image: setting it again
        would change nothing, Argo starts over only on a new pod template), else None: asked
        at start, before anything is written."""
        try:
            rollout = await self.read()
            current = container_image(rollout, self.container)[1]
        except (RouterUnavailable, PlatformUnavailable) as exc:
            return str(exc)
        why = step_mismatch(weights, steps_of(rollout))
        if why:
            return f"{self.named}: {why}"
        if standing(rollout).aborted and current == image:
            return (
                f"{self.named} was aborted with {image} already: run `kubectl argo rollouts "
                f"retry rollout {self.name} -n {self.namespace}` or start another image"
            )
        return None

    async def steps_problem(self, weights: Sequence[int]) -> str | None:
        """Why the Rollout's steps do not match stage ``weights`` (or it cannot be read), else
        None: ``canaryd check --kubeconfig`` asks it of every argo-rollouts target."""
        try:
            why = step_mismatch(weights, steps_of(await self.read()))
        except RouterUnavailable as exc:
            return str(exc)
        return f"{self.named}: {why}" if why else None

    async def external_abort(self, image: str) -> str | None:
        """Argo's words when the Rollout of ``image`` is aborted or Degraded, else None. Only a
        status about the current spec running ``image`` counts: the abort of an earlier
        rollout, still there until Argo sees the new image, is not this one's."""
        try:
            rollout = await self.read()
            current = container_image(rollout, self.container)[1]
        except (RouterUnavailable, PlatformUnavailable):
            return None
        s = standing(rollout)
        if current != image or not s.observed or not (s.aborted or s.phase == "Degraded"):
            return None
        return f"{self.named} is {s.phase or 'aborted'}: {s.message or 'aborted'}"

    # ------------------------------------------------------------ the router

    async def set_weight(self, weight: int) -> None:
        if not 0 <= weight <= 100:
            raise ValueError(f"weight must be within 0..100, got {weight}")
        async with self._lock:
            rollout = await self.read()
            s = standing(rollout)
            if weight == 0:
                if not (s.aborted or s.promoted):
                    await self._status({"status": {"abort": True}})
                return
            if s.aborted:
                raise RouterUnavailable(f"{self.named} is aborted: {s.message or 'no message'}")
            if s.pause is None or s.pause.weight >= weight or not s.observed:
                return  # moving (or already there): Argo's to do
            upcoming = [p for p in pauses(steps_of(rollout)) if p.index > s.pause.index]
            if not upcoming or upcoming[0].weight != weight:
                then = f"{upcoming[0].weight}%" if upcoming else "full promotion"
                raise RouterUnavailable(
                    f"{self.named} stands at step {s.pause.index} ({s.pause.weight}%); its next "
                    f"pause is at {then}, not {weight}%: canaryd moves only through its steps"
                )
            await self._promote(rollout)

    async def finalize(self) -> None:
        """Nothing canaryd made is left to remove: the Rollout is the user's."""

    async def aclose(self) -> None:
        if self._owned:
            await self.kube.aclose()

    # ------------------------------------------------------------ the platform

    async def ensure_canary(self, image: str) -> None:
        async with self._lock:
            await self._set_image(image)

    async def canary_status(self) -> tuple[bool, bool]:
        try:
            s = standing(await self.read())
        except RouterUnavailable as exc:
            raise PlatformUnavailable(str(exc)) from exc
        present = s.observed and not (s.aborted or s.promoted)
        return present, present and s.pause is not None

    async def stable_image(self) -> str | None:
        try:
            rollout = await self.read()
        except RouterUnavailable as exc:
            raise PlatformUnavailable(str(exc)) from exc
        s = standing(rollout)
        if not (s.observed and s.promoted):
            return None
        return container_image(rollout, self.container)[1]

    async def update_stable(self, image: str) -> None:
        async with self._lock:
            rollout = await self.read()
            if container_image(rollout, self.container)[1] != image:
                await self._set_image(image)  # back to the stable's: Argo rolls it at once
                return
            s = standing(rollout)
            if s.observed and not s.aborted and s.pause is not None:
                await self._promote(rollout)

    async def remove_canary(self) -> None:
        await self.set_weight(0)

    # ------------------------------------------------------------ the CLI's other verbs

    async def promote_full(self) -> None:
        """``kubectl argo rollouts promote --full``."""
        s = standing(await self.read())
        if not s.promoted:
            await self._status({"status": {"promoteFull": True}})

    async def pause(self) -> None:
        """``kubectl argo rollouts pause``."""
        await self._patch({"spec": {"paused": True}}, status=False)

    async def resume(self) -> None:
        """``kubectl argo rollouts resume``: the spec patch only (recent CLIs clear no
        condition)."""
        await self._patch({"spec": {"paused": False}}, status=False)

    # ------------------------------------------------------------ writing

    async def _promote(self, rollout: Obj) -> None:
        spec_patch, status_patch = promote_patches(rollout)
        if status_patch is not None:
            await self._status(status_patch)
        if spec_patch is not None:
            await self._patch(spec_patch, status=False)

    async def _set_image(self, image: str) -> None:
        for _ in range(ATTEMPTS):
            rollout = await self.read()
            index, current = container_image(rollout, self.container)
            if current == image:
                return
            replacement = copy.deepcopy({k: v for k, v in rollout.items() if k != "status"})
            replacement["spec"]["template"]["spec"]["containers"][index]["image"] = image
            try:
                await self._rollouts.replace(replacement)
                return
            except KubeConflict:
                continue
            except RouterUnavailable as exc:
                raise PlatformUnavailable(str(exc)) from exc
        raise RouterConflict(
            f"{self.named} changed under canaryd {ATTEMPTS} times in a row (409 Conflict); "
            f"image {image} not set"
        )

    async def _status(self, patch: Obj) -> None:
        await self._patch(patch, status=True)

    async def _patch(self, patch: Obj, *, status: bool) -> None:
        """A merge patch of the Rollout (``status``: of its status subresource), as the CLI."""
        what = "status" if status else "spec"
        try:
            api = client.CustomObjectsApi(await self.kube.api())
        except KubeUnavailable as exc:
            raise RouterUnavailable(f"no Kubernetes API for {self.named}: {exc}") from exc
        call = (
            api.patch_namespaced_custom_object_status
            if status
            else api.patch_namespaced_custom_object
        )
        try:
            async with asyncio.timeout(TIMEOUT):
                await call(GROUP, VERSION, self.namespace, PLURAL, self.name, patch, **MERGE)
        except ApiException as exc:
            raise RouterUnavailable(
                f"cannot patch {self.named} {what} with {json.dumps(patch)}: {reason(exc)}"
            ) from exc
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise RouterUnavailable(f"cannot patch {self.named} {what}: {exc!r}") from exc


# --------------------------------------------------------------------------- the kind


@dataclass(frozen=True, slots=True)
class ArgoRolloutsConfig:
    """``router: {kind: argo-rollouts, name: ROLLOUT, ...}`` with ``platform: {kind: none}``."""

    name: str  # the Rollout
    namespace: str = "default"
    container: str | None = None  # the pod template's container to set; default: the first
    kind: Literal["argo-rollouts"] = field(default="argo-rollouts", init=False)


def read_config(ld: Loader, m: Mapping[str, Any], where: str) -> ArgoRolloutsConfig:
    name, namespace = object_ref(ld, m, where)
    container = ld.r.field(m, "container", where, to_name, None)
    return ArgoRolloutsConfig(name=name, namespace=namespace, container=container)


def build(target: str, c: ArgoRolloutsConfig, kube: KubeClient | None) -> ArgoRolloutsRouter:
    return ArgoRolloutsRouter(c.name, namespace=c.namespace, container=c.container, kube=kube)


KIND: Kind[ArgoRolloutsConfig, Any] = Kind(
    name="argo-rollouts",
    keys=frozenset({"name", "namespace", "container"}),
    read=read_config,
    build=build,
    describe=lambda c: f"argo-rollouts ({c.namespace}/{c.name})",
    identity=lambda c: ("argo-rollouts", c.namespace, c.name) if c.name else None,
    deploys=True,
)
