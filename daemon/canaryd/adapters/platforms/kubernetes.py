"""The ``kubernetes`` platform: the canary is a Deployment cloned from the stable one.

**The stable Deployment** is ``<deployment>`` in ``namespace``; canaryd changes nothing in it
but, on promotion, the image of one container (``container``, default the first). Its labels,
selector and pods are left alone, so the user's own Service, HPA and ``kubectl rollout`` keep
working as before.

**The canary** is the Deployment ``<deployment>-canary``, labelled ``canaryd.io/target``,
``canaryd.io/role=canary`` and ``canaryd.io/version`` (the image as a label value), with the
exact image in the annotation ``canaryd.io/image``. Its spec is the stable's (strategy,
``minReadySeconds``, the whole pod template: environment, ports, probes, volumes, annotations)
with three changes:

- the new image in the chosen container;
- its own selector, ``canaryd.io/target=<deployment>, canaryd.io/role=canary``;
- pod labels that the stable's selector does **not** match: every label the stable's selector
  tests by value (``matchLabels``, ``In``) gets ``-canary`` appended (``app: web`` becomes
  ``app: web-canary``), and the canaryd labels above are added.

The last point is what keeps the stable side intact without touching it (a Deployment's selector
is immutable, so the stable's cannot be narrowed): the stable Deployment's ReplicaSets, its HPA
and the user's Service, which selects the stable's pods by the same labels, never see a canary
pod, and the canary's selector never sees a stable pod (they lack ``canaryd.io/role=canary``).
Both facts are checked before anything is written; a stable selector made only of ``NotIn`` or
``DoesNotExist`` expressions cannot be kept apart this way and is refused. A Service selecting
by a pod label that is *not* in the Deployment's selector would still reach the canary's pods:
select by the selector's labels. The Deployment's own labels (``app.kubernetes.io/instance``,
which Argo CD tracks and prunes by) are not copied. The canary runs as many replicas as the
stable asks for when it is created (at least one), so it can carry any share of the traffic.

**Services.** When the chosen container declares ports, canaryd keeps two ClusterIP Services
with those ports for a router to split between: ``<deployment>-canary`` (selecting the canary's
pods by the two canaryd labels) and ``<deployment>-stable`` (selecting by the stable's
``matchLabels``, so only the stable's pods; none when the selector has no ``matchLabels``).
They are created when missing, corrected when someone changed them, and refused if a Service of
that name is not canaryd's. They outlive ``remove_canary``: a router keeps naming both
backends at weight 0 and an nginx whose upstream host no longer resolves refuses to reload; an
empty canary Service costs nothing. Remove them with
``kubectl delete service -l canaryd.io/target=<deployment>`` once canaryd lets go of the target.

**Readiness** is the rule ``kubectl rollout status`` applies: a Deployment is rolled out when
``status.observedGeneration >= metadata.generation``, ``updatedReplicas == spec.replicas``,
``readyReplicas >= spec.replicas`` and no old replica is left (``status.replicas ==
updatedReplicas``). The canary is ready when it is rolled out with the image last ensured.

**Promotion.** ``update_stable`` changes the stable's image and returns: the rolling update is
Kubernetes' work. ``stable_image`` reports the image only once the stable is rolled out (and
``None`` while it is rolling, as the docker platform does for a mixed set of containers), so
the engine moves on from ``update-stable`` exactly when every stable pod runs the new image, and
its ``progress_deadline`` covers a rollout that never finishes.

**Pinning** (SPEC §8). The node pulls the image, so a tag cannot be resolved before the canary
runs: once the canary is ready, ``canary_pin`` reads the chosen container's ``imageID`` in the
canary's pods (``docker-pullable://repo@sha256:…``, ``repo@sha256:…`` or ``sha256:…``, parsed
strictly) and the rollout records ``repo@sha256:…`` before its first stage; promotion puts
that reference on the stable, whatever the tag names by then. A canary pod recreated later is
created from the Deployment's tag (its bytes judged as they come).

**Cheap and idempotent.** The worker calls ``ensure_canary`` on every pass until the canary is
ready: a canary that already has the image costs four reads and no write. Every write is a
replace carrying the ``resourceVersion`` it was computed from; a 409 (someone wrote in between)
re-reads and retries a few times. Objects are read and written as raw JSON rather than the
client's models, which would drop fields newer than the client.

**The API.** Through a ``KubeClient`` (``adapters.kube``): the daemon's one client, shared by
every Kubernetes adapter and closed by the daemon at stop (``kube=``); else one of this
platform's own, around the ``ApiClient`` tests inject or, on first use, the in-cluster
configuration or the kubeconfig (``KUBECONFIG``, ``~/.kube/config``), closed by ``aclose``.
Either way one client serves every pass. Every call has a timeout and every failure becomes a
``PlatformUnavailable`` naming ``namespace/name`` and what was being done (the worker logs it
and retries the effect on its next pass).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp
from kubernetes_asyncio import client

from canaryd.adapters.kube import KubeClient, KubeConflict, KubeUnavailable
from canaryd.adapters.platforms.images import ImageCanaryPlatform
from canaryd.adapters.platforms.pinning import pinned_from_image_id
from canaryd.config.kinds import Kind, Loader, object_ref, to_name
from canaryd.core.errors import PlatformUnavailable

CALL_TIMEOUT = 30.0  # seconds for one API call
CONFLICT_RETRIES = 5  # re-reads after a 409 before giving up for this pass

TARGET, ROLE, VERSION, IMAGE = (
    "canaryd.io/target",
    "canaryd.io/role",
    "canaryd.io/version",
    "canaryd.io/image",
)
_LABEL_MAX = 63
_NOT_LABEL = re.compile(r"[^A-Za-z0-9_.-]")

Obj = dict[str, Any]  # an API object as JSON


class KubernetesDeploymentPlatform(ImageCanaryPlatform):
    """``Platform`` on Kubernetes: a stable Deployment and a cloned ``<deployment>-canary``."""

    kind = "kubernetes"

    def __init__(
        self,
        deployment: str,
        *,
        namespace: str = "default",
        container: str | None = None,
        api_client: client.ApiClient | None = None,
        call_timeout: float = CALL_TIMEOUT,
        kube: KubeClient | None = None,
    ) -> None:
        super().__init__()
        self.deployment, self.namespace, self.container = deployment, namespace, container
        self.canary_name = f"{deployment}-canary"
        self.stable_service, self.canary_service = f"{deployment}-stable", f"{deployment}-canary"
        self._owned = kube is None  # our own client (closed by aclose), or the daemon's
        self.kube = kube if kube is not None else KubeClient(api_client)
        self._call_timeout = call_timeout

    # ---------------------------------------------------------------- Platform

    async def ensure_canary(self, image: str) -> None:
        async with self._lock, self._session() as api:
            self._wanted = image
            for _ in range(CONFLICT_RETRIES):
                stable = await self._stable(api)
                try:
                    await self._converge_canary(api, stable, image)
                except KubeConflict:
                    continue
                break
            else:
                raise self._gave_up("write", self.canary_name)
            await self._ensure_services(api, stable)

    async def canary_status(self) -> tuple[bool, bool]:
        async with self._session() as api:
            canary = await self._get(api, "deployments", self.canary_name)
        if canary is None or not self._ours(canary):
            return False, False
        if not self._runs_wanted(canary_image(canary)):
            return True, False  # a previous rollout's canary: ensure_canary replaces it
        return True, rolled_out(canary)

    async def stable_image(self) -> str | None:
        async with self._session() as api:
            stable = await self._stable(api)
        return self._stable_container(stable)["image"] if rolled_out(stable) else None

    async def update_stable(self, image: str) -> None:
        async with self._lock, self._session() as api:
            for _ in range(CONFLICT_RETRIES):
                stable = await self._stable(api)
                container = self._stable_container(stable)
                if container["image"] == image:
                    return
                container["image"] = image  # ``stable`` is a fresh copy: change it in place
                try:
                    await self._write(api, "replace", "deployments", self.deployment, stable)
                except KubeConflict:
                    continue
                return
            raise self._gave_up("update the image of", self.deployment)

    async def remove_canary(self) -> None:
        async with self._lock, self._session() as api:
            canary = await self._get(api, "deployments", self.canary_name)
            if canary is not None and self._ours(canary):
                await self._delete(api, "deployments", self.canary_name)

    async def canary_pin(self, image: str) -> str:
        """``repo@sha256:…`` for the bytes the canary's pods of ``image`` run (``ports.
        PinsRunningCanary``), read from the chosen container's ``imageID`` in every such pod
        (``pinning.pinned_from_image_id``). Pods being deleted are left out; every other
        one must report an ID and all must agree, else ``PlatformUnavailable`` says why."""
        selector = {TARGET: self.deployment, ROLE: "canary", VERSION: label_value(image)}
        labels = ",".join(f"{k}={v}" for k, v in selector.items())
        async with self._session() as api:
            call = client.CoreV1Api(api).list_namespaced_pod(
                self.namespace,
                label_selector=labels,
                _preload_content=False,
                _request_timeout=self._call_timeout,
            )
            _, listed = await self._call("list pods", self.canary_name, call)
        pods = [  # the selector again: a server that ignored it must not mix in other pods
            pod
            for pod in listed.get("items") or ()
            if selects({"matchLabels": selector}, (pod.get("metadata") or {}).get("labels") or {})
            and not (pod.get("metadata") or {}).get("deletionTimestamp")
        ]
        pins = {self._pod_pin(pod, image) for pod in pods}
        if len(pins) == 1:
            return pins.pop()
        what = "no pod" if not pins else f"pods that disagree ({', '.join(sorted(pins))})"
        raise PlatformUnavailable(
            f"kubernetes platform of {self._at(self.canary_name)}: cannot pin {image}: "
            f"{what} labelled {labels}"
        )

    def _pod_pin(self, pod: Obj, image: str) -> str:
        """The pinned reference one canary pod reports for the chosen container."""
        name = str((pod.get("metadata") or {}).get("name") or "?")
        container = self._container(self.canary_name, pod.get("spec") or {})
        statuses = (pod.get("status") or {}).get("containerStatuses") or ()
        status = next((s for s in statuses if s.get("name") == container.get("name")), None)
        image_id = str((status or {}).get("imageID") or "")
        try:
            if not image_id:
                raise ValueError("it reports no imageID yet (not started)")
            return pinned_from_image_id(image, image_id)
        except ValueError as exc:
            raise PlatformUnavailable(
                f"kubernetes platform of {self._at(name)}: cannot pin {image} from container "
                f"{container.get('name')!r}: {exc}"
            ) from exc

    # ---------------------------------------------------------------- the canary

    async def _converge_canary(self, api: client.ApiClient, stable: Obj, image: str) -> None:
        canary = await self._get(api, "deployments", self.canary_name)
        if canary is not None and not self._ours(canary):
            raise PlatformUnavailable(
                f"kubernetes platform of {self._at(self.canary_name)}: a Deployment of that "
                f"name exists and is not canaryd's (no {TARGET}={self.deployment} label); "
                "canaryd will not overwrite it"
            )
        if canary is not None and canary["metadata"].get("deletionTimestamp"):
            raise PlatformUnavailable(
                f"kubernetes platform of {self._at(self.canary_name)}: the previous canary "
                "is still being deleted"
            )
        if canary is not None and canary_image(canary) == image:
            return  # already there: no write
        wanted = self.clone(stable, image)
        if canary is None:
            await self._write(api, "create", "deployments", self.canary_name, wanted)
        elif canary["spec"].get("selector") != wanted["spec"]["selector"]:
            await self._delete(api, "deployments", self.canary_name)  # selectors are immutable
            await self._write(api, "create", "deployments", self.canary_name, wanted)
        else:
            wanted["metadata"]["resourceVersion"] = canary["metadata"].get("resourceVersion")
            await self._write(api, "replace", "deployments", self.canary_name, wanted)

    def clone(self, stable: Obj, image: str) -> Obj:
        """The canary Deployment for ``stable`` with ``image`` (see the module docstring)."""
        spec = copy.deepcopy(stable["spec"])
        stable_selector = spec.get("selector") or {}
        template = spec["template"]
        pod_meta = template.setdefault("metadata", {})
        stable_labels = dict(pod_meta.get("labels") or {})
        labels = canary_pod_labels(stable_selector, stable_labels)
        labels.update({TARGET: self.deployment, ROLE: "canary", VERSION: label_value(image)})
        selector = {"matchLabels": {TARGET: self.deployment, ROLE: "canary"}}
        if selects(stable_selector, labels) or selects(selector, stable_labels):
            raise PlatformUnavailable(
                f"kubernetes platform of {self._at(self.deployment)}: its selector "
                f"{json.dumps(stable_selector)} would also select the canary's pods; "
                "select by matchLabels or In expressions"
            )
        pod_meta["labels"] = labels
        self._container(self.deployment, template.get("spec") or {})["image"] = image
        spec.pop("paused", None)
        spec["selector"] = selector
        spec["replicas"] = max(1, int(spec.get("replicas", 1)))
        return {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": self.canary_name,
                "namespace": self.namespace,
                "labels": {TARGET: self.deployment, ROLE: "canary", VERSION: label_value(image)},
                "annotations": {IMAGE: image},
            },
            "spec": spec,
        }

    def _ours(self, obj: Obj) -> bool:
        return bool((obj["metadata"].get("labels") or {}).get(TARGET) == self.deployment)

    # ---------------------------------------------------------------- Services

    async def _ensure_services(self, api: client.ApiClient, stable: Obj) -> None:
        ports = service_ports(self._stable_container(stable))
        if not ports:
            return
        canary_selector = {TARGET: self.deployment, ROLE: "canary"}
        await self._ensure_service(api, self.canary_service, "canary", canary_selector, ports)
        stable_selector = dict((stable["spec"].get("selector") or {}).get("matchLabels") or {})
        if stable_selector:
            await self._ensure_service(api, self.stable_service, "stable", stable_selector, ports)

    async def _ensure_service(
        self,
        api: client.ApiClient,
        name: str,
        role: str,
        selector: Mapping[str, str],
        ports: list[Obj],
    ) -> None:
        for _ in range(CONFLICT_RETRIES):
            found = await self._get(api, "services", name)
            body: Obj
            if found is None:
                body = {
                    "apiVersion": "v1",
                    "kind": "Service",
                    "metadata": {
                        "name": name,
                        "namespace": self.namespace,
                        "labels": {TARGET: self.deployment, ROLE: role},
                    },
                    "spec": {"type": "ClusterIP", "selector": dict(selector), "ports": ports},
                }
            elif not self._ours(found):
                raise PlatformUnavailable(
                    f"kubernetes platform of {self._at(name)}: a Service of that name exists "
                    f"and is not canaryd's (no {TARGET}={self.deployment} label)"
                )
            elif found["spec"].get("selector") == selector and found["spec"].get("ports") == ports:
                return
            else:
                body = found
                body["spec"].update(selector=dict(selector), ports=ports)
            try:
                await self._write(api, "replace" if found else "create", "services", name, body)
            except KubeConflict:
                continue
            return
        raise self._gave_up("write", name)

    # ---------------------------------------------------------------- reading and writing

    async def _stable(self, api: client.ApiClient) -> Obj:
        stable = await self._get(api, "deployments", self.deployment)
        if stable is None:
            raise PlatformUnavailable(
                f"kubernetes platform: the stable Deployment {self._at(self.deployment)} "
                "does not exist (platform.deployment and platform.namespace name it)"
            )
        return stable

    def _container(self, owner: str, pod_spec: Obj) -> Obj:
        """The chosen container of a pod spec (``owner`` names the Deployment in errors):
        ``container`` by name, else the first. The object itself, to change in place."""
        containers: list[Obj] = pod_spec.get("containers") or []
        for c in containers:
            if self.container is None or c.get("name") == self.container:
                return c
        names = ", ".join(str(c.get("name")) for c in containers) or "none"
        raise PlatformUnavailable(
            f"kubernetes platform of {self._at(owner)}: no container "
            f"{self.container!r} in its pod template (containers: {names})"
        )

    def _stable_container(self, stable: Obj) -> Obj:
        return self._container(self.deployment, stable["spec"]["template"].get("spec") or {})

    async def _get(self, api: client.ApiClient, plural: str, name: str) -> Obj | None:
        method = self._method(api, "read", plural)
        status, body = await self._call(f"read {plural[:-1]}", name, method(name, self.namespace))
        if status == 404:
            return None
        return body

    async def _write(
        self, api: client.ApiClient, verb: str, plural: str, name: str, body: Obj
    ) -> None:
        method = self._method(api, verb, plural)
        call = (
            method(self.namespace, body) if verb == "create" else method(name, self.namespace, body)
        )
        status, _ = await self._call(f"{verb} {plural[:-1]}", name, call)
        if status == 409:
            raise KubeConflict(name)
        if status == 404:
            raise PlatformUnavailable(
                f"kubernetes platform of {self._at(name)}: cannot {verb} {plural[:-1]}: "
                "it disappeared"
            )

    async def _delete(self, api: client.ApiClient, plural: str, name: str) -> None:
        method = self._method(api, "delete", plural)
        # Background: the ReplicaSets and pods go after the Deployment, which leaves at once
        await self._call(
            f"delete {plural[:-1]}",
            name,
            method(name, self.namespace, propagation_policy="Background"),
        )  # a 404 is fine: someone deleted it first

    def _method(self, api: client.ApiClient, verb: str, plural: str) -> Callable[..., Any]:
        kind = {"deployments": "deployment", "services": "service"}[plural]
        group = client.AppsV1Api(api) if plural == "deployments" else client.CoreV1Api(api)
        method: Callable[..., Awaitable[Any]] = getattr(group, f"{verb}_namespaced_{kind}")

        def call(*args: Any, **kwargs: Any) -> Awaitable[Any]:
            return method(
                *args, _preload_content=False, _request_timeout=self._call_timeout, **kwargs
            )

        return call

    async def _call(self, what: str, name: str, call: Awaitable[Any]) -> tuple[int, Obj]:
        """Run one API call: (status, body) for a 2xx, 404 or 409; anything else raises."""
        try:
            async with asyncio.timeout(self._call_timeout):
                response = await call
                async with response:
                    status = int(response.status)
                    text = await response.text()
        except (client.ApiException, aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise self._error(what, name, exc) from exc
        try:
            body = json.loads(text) if text else {}
        except ValueError:
            body = {"message": text[:200]}
        if 200 <= status < 300 or status in (404, 409):
            return status, body
        message = body.get("message") or body.get("reason") or text[:200]
        raise PlatformUnavailable(
            f"kubernetes platform of {self._at(name)}: cannot {what}: {status} {message}"
        )

    # ---------------------------------------------------------------- the API server

    @contextlib.asynccontextmanager
    async def _session(self) -> AsyncIterator[client.ApiClient]:
        """The one client (made on first use); ``PlatformUnavailable`` if there is no API."""
        try:
            api = await self.kube.api()
        except KubeUnavailable as exc:
            raise PlatformUnavailable(
                f"kubernetes platform of {self._at(self.deployment)}: no API server to talk "
                f"to: {exc}"
            ) from exc
        yield api

    async def aclose(self) -> None:
        """Close the API client if this platform made it (the daemon closes a shared one)."""
        if self._owned:
            await self.kube.aclose()

    def _error(self, what: str, name: str, exc: BaseException) -> PlatformUnavailable:
        if isinstance(exc, TimeoutError):
            cause = f"no answer within {self._call_timeout:g}s"
        elif isinstance(exc, client.ApiException):
            cause = f"{exc.status} {exc.reason}"
        else:
            cause = str(exc) or type(exc).__name__
        return PlatformUnavailable(
            f"kubernetes platform of {self._at(name)}: cannot {what} ({self._where()}): {cause}"
        )

    def _gave_up(self, what: str, name: str) -> PlatformUnavailable:
        return PlatformUnavailable(
            f"kubernetes platform of {self._at(name)}: cannot {what} it: it changed under "
            f"canaryd {CONFLICT_RETRIES} times in a row (409 Conflict); retrying next pass"
        )

    def _at(self, name: str) -> str:
        return f"{self.namespace}/{name}"

    def _where(self) -> str:
        return self.kube.host or "the configured API server"


# ------------------------------------------------------------------------ pure helpers


def rolled_out(deployment: Obj) -> bool:
    """Whether a Deployment runs its current spec on every replica (``kubectl rollout
    status``'s rule)."""
    meta, spec, status = deployment["metadata"], deployment["spec"], deployment.get("status") or {}
    replicas = int(spec.get("replicas", 1))
    updated = int(status.get("updatedReplicas") or 0)
    return (
        int(status.get("observedGeneration") or 0) >= int(meta.get("generation") or 0)
        and updated == replicas
        and int(status.get("readyReplicas") or 0) >= replicas
        and int(status.get("replicas") or 0) == updated
    )


def canary_image(canary: Obj) -> str | None:
    return (canary["metadata"].get("annotations") or {}).get(IMAGE)


def canary_pod_labels(selector: Obj, labels: Mapping[str, str]) -> dict[str, str]:
    """``labels`` with every label ``selector`` tests by value made different (``-canary``)."""
    keys = set(selector.get("matchLabels") or {})
    keys |= {e["key"] for e in selector.get("matchExpressions") or () if e["operator"] == "In"}
    return {k: _suffixed(v) if k in keys else v for k, v in labels.items()}


def selects(selector: Obj, labels: Mapping[str, str]) -> bool:
    """Whether a label selector (``matchLabels`` and ``matchExpressions``) matches ``labels``;
    an empty selector matches nothing, as an apps/v1 selector may not be empty."""
    match = selector.get("matchLabels") or {}
    expressions = selector.get("matchExpressions") or ()
    if not match and not expressions:
        return False
    if any(labels.get(k) != v for k, v in match.items()):
        return False
    for e in expressions:
        key, op, values = e["key"], e["operator"], e.get("values") or ()
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }.get(op, False)
        if not ok:
            return False
    return True


def service_ports(container: Obj) -> list[Obj]:
    """Service ports for a container's declared ports, each under its own number."""
    ports = []
    for p in container.get("ports") or ():
        number, protocol = int(p["containerPort"]), str(p.get("protocol") or "TCP")
        name = p.get("name") or f"{protocol.lower()}-{number}"
        ports.append({"name": name, "port": number, "targetPort": number, "protocol": protocol})
    return ports


def label_value(text: str) -> str:
    """``text`` as a valid label value: other characters become ``_`` and a value too long
    keeps its end (the tag) and a hash of the whole."""
    value = _NOT_LABEL.sub("_", text).strip("-_.")
    if len(value) > _LABEL_MAX:
        digest = hashlib.sha256(text.encode()).hexdigest()[:10]
        value = value[-(_LABEL_MAX - len(digest) - 1) :].lstrip("-_.") + "-" + digest
    return value


def _suffixed(value: str) -> str:
    return (value[: _LABEL_MAX - len("-canary")].rstrip("-_.") + "-canary").lstrip("-")


# ------------------------------------------------------------------------ the kind


@dataclass(frozen=True, slots=True)
class KubernetesConfig:
    """``platform: {kind: kubernetes, ...}``: a Deployment and its cloned canary."""

    deployment: str
    namespace: str = "default"
    container: str | None = None  # which container's image changes (default: the first)
    kind: Literal["kubernetes"] = field(default="kubernetes", init=False)


def read_config(ld: Loader, m: Mapping[str, Any], where: str) -> KubernetesConfig:
    deployment, namespace = object_ref(ld, m, where, "deployment")
    container = ld.r.field(m, "container", where, to_name, None)
    return KubernetesConfig(deployment, namespace, container)


def build(
    target: str, c: KubernetesConfig, kube: KubeClient | None
) -> KubernetesDeploymentPlatform:
    return KubernetesDeploymentPlatform(
        c.deployment, namespace=c.namespace, container=c.container, kube=kube
    )


KIND: Kind[KubernetesConfig, Any] = Kind(
    name="kubernetes",
    keys=frozenset({"deployment", "namespace", "container"}),
    read=read_config,
    build=build,
    describe=lambda c: f"kubernetes (deployment {c.namespace}/{c.deployment})",
)
