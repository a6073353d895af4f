"""The ``nginx-ingress`` router: the split lives in a canary Ingress for ingress-nginx.

ingress-nginx splits traffic with a second Ingress for the same hosts and paths, marked
``nginx.ingress.kubernetes.io/canary: "true"`` (annotations.md §Canary, ingress-nginx
``controller-v1.15.1``; ``internal/ingress/annotations/canary/main.go``). canaryd owns that
second Ingress, ``<name>-canary`` in ``namespace``, and never touches the user's stable Ingress
``name``:

- ``spec``: the stable Ingress's ``ingressClassName``, ``tls`` and ``rules``, with every path's
  backend Service replaced by ``canary_service`` (on ``port`` when set, else on the port the
  stable backend names). Without ``canary_service``, the stable Ingress must send to one
  Service ``S``, and the canary is ``S-canary`` (the Service the ``kubernetes`` platform keeps);
- annotations (values are strings, as Kubernetes requires): ``canary: "true"``,
  ``canary-weight: "<w>"`` (of the default total 100), ``canary-by-header: X-Canary-Deploy`` and
  ``canary-by-header-value: canary``: the header pins a request to the canary at every weight
  (header before cookie before weight), any other value of it falls through to the weight;
- ``canaryd.io/weight: "<w>"`` beside them, the weight canaryd wrote, and the label
  ``app.kubernetes.io/managed-by: canaryd``. An Ingress of that name without the label is the
  user's, and canaryd refuses to overwrite it.

At weight 25, for a stable Ingress ``web`` sending ``web.example.com/`` to ``web:8080``::

    metadata:
      name: web-canary
      labels: {app.kubernetes.io/managed-by: canaryd}
      annotations:
        canaryd.io/weight: "25"
        nginx.ingress.kubernetes.io/canary: "true"
        nginx.ingress.kubernetes.io/canary-by-header: X-Canary-Deploy
        nginx.ingress.kubernetes.io/canary-by-header-value: canary
        nginx.ingress.kubernetes.io/canary-weight: "25"
    spec:
      ingressClassName: nginx
      rules:
      - host: web.example.com
        http:
          paths:
          - path: /
            pathType: Prefix
            backend: {service: {name: web-canary, port: {number: 8080}}}

Writing: read, compare, create or replace with the ``resourceVersion`` read; on 409 read again
and re-apply, up to ``ATTEMPTS`` times, then ``RouterConflict``. Already right: no write.

Reading back: no canary Ingress is weight 0 (all traffic on the stable Ingress: the state
before a rollout and after ``finalize``). Otherwise ``w`` only if the canary Ingress is
exactly what ``set_weight(w)`` writes for the stable Ingress as it is now, ``canary-weight``
equal to ``canaryd.io/weight``; anything else (a hand edit of the weight, rules that no longer
match the stable's) is ``None``, "cannot tell", and the worker re-asserts its weight.

``finalize``: the canary Ingress is deleted (with its ``resourceVersion`` as a precondition);
the stable Ingress has all the traffic again.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from canaryd.adapters.kube import KubeClient, KubeConflict
from canaryd.adapters.routers.kubeobject import (
    ATTEMPTS,
    OWNER_LABEL,
    Obj,
    Objects,
    owned,
    put,
)
from canaryd.config.kinds import Kind, Loader, object_ref, to_name, to_port
from canaryd.core.errors import RouterConflict, RouterUnavailable

GROUP, VERSION, PLURAL = "networking.k8s.io", "v1", "ingresses"
PREFIX = "nginx.ingress.kubernetes.io/"
WEIGHT_NOTE = "canaryd.io/weight"
CANARY_HEADER, CANARY_VALUE = "X-Canary-Deploy", "canary"


class IngressShapeError(ValueError):
    """The stable Ingress has nothing canaryd can copy (see ``canary_spec``)."""


def _backends(rules: list[Any]) -> list[Obj]:
    """Every path backend's ``service`` of ``rules``."""
    return [
        path["backend"]["service"]
        for rule in rules
        for path in ((rule.get("http") or {}).get("paths") or [])
        if isinstance(path, dict) and isinstance((path.get("backend") or {}).get("service"), dict)
    ]


def canary_service_of(stable_spec: Any) -> str:
    """``S-canary`` for a stable Ingress whose paths all send to Service ``S``."""
    rules = stable_spec.get("rules") if isinstance(stable_spec, dict) else None
    names = {b.get("name") for b in _backends(rules if isinstance(rules, list) else [])}
    if len(names) != 1:
        raise IngressShapeError(
            f"its paths send to {len(names)} Services; set the router's canary_service"
        )
    return f"{names.pop()}-canary"


def canary_spec(stable_spec: Any, canary: str, port: int | None) -> Obj:
    """The canary Ingress's spec: the stable's rules with ``canary`` as every path's Service."""
    stable = stable_spec if isinstance(stable_spec, dict) else {}
    rules = copy.deepcopy(stable.get("rules"))
    if not isinstance(rules, list) or not _backends(rules):
        raise IngressShapeError("it has no rule with a path to a Service to copy")
    for backend in _backends(rules):
        kept = backend.get("port") if port is None else {"number": port}
        backend.clear()
        backend["name"] = canary
        if kept is not None:
            backend["port"] = kept
    spec: Obj = {"rules": rules}
    for kept_key in ("ingressClassName", "tls"):
        if kept_key in stable:
            spec[kept_key] = copy.deepcopy(stable[kept_key])
    return spec


def canary_annotations(weight: int) -> dict[str, str]:
    """The canary annotations at ``weight`` (strings, as Kubernetes requires)."""
    return {
        WEIGHT_NOTE: str(weight),
        f"{PREFIX}canary": "true",
        f"{PREFIX}canary-weight": str(weight),
        f"{PREFIX}canary-by-header": CANARY_HEADER,
        f"{PREFIX}canary-by-header-value": CANARY_VALUE,
    }


def weight_of(obj: Obj) -> int | None:
    """The weight canaryd noted on a canary Ingress, if it is a whole number 0..100."""
    note = ((obj.get("metadata") or {}).get("annotations") or {}).get(WEIGHT_NOTE)
    if not isinstance(note, str) or not note.isdigit():
        return None
    weight = int(note)
    return weight if weight <= 100 else None


class NginxIngressRouter:
    kind = "nginx-ingress"

    def __init__(
        self,
        name: str,
        *,
        namespace: str = "default",
        canary_service: str | None = None,
        port: int | None = None,
        kube: KubeClient | None = None,
    ) -> None:
        self.name, self.namespace = name, namespace
        self.canary_service, self.port = canary_service, port
        self.canary_name = f"{name}-canary"
        self._owned = kube is None
        self.kube = kube if kube is not None else KubeClient()
        self._ingresses = Objects(self.kube, GROUP, VERSION, PLURAL, namespace, "Ingress")
        self._lock = asyncio.Lock()

    async def set_weight(self, weight: int) -> None:
        if not 0 <= weight <= 100:
            raise ValueError(f"weight must be within 0..100, got {weight}")
        async with self._lock:
            for _ in range(ATTEMPTS):
                try:
                    wanted = await self._wanted(weight)
                    await put(self._ingresses, wanted, await self._ingresses.read(self.canary_name))
                    return
                except KubeConflict:
                    continue  # someone else wrote in between: read their version, reapply
            raise RouterConflict(
                f"Ingress {self.namespace}/{self.canary_name} changed under canaryd {ATTEMPTS} "
                f"times in a row (409 Conflict); weight {weight} not applied"
            )

    async def get_weight(self) -> int | None:
        try:
            current = await self._ingresses.read(self.canary_name)
            if current is None:
                return 0  # no canary Ingress: the stable one has all the traffic
            weight = weight_of(current)
            if weight is None or not owned(current):
                return None
            wanted = await self._wanted(weight)
        except RouterUnavailable:
            return None
        meta = current.get("metadata") or {}
        same = current.get("spec") == wanted["spec"] and all(
            (meta.get(k) or {}) == wanted["metadata"][k] for k in ("labels", "annotations")
        )
        return weight if same else None

    async def finalize(self) -> None:
        """The canary Ingress deleted: the stable Ingress has all the traffic again."""
        async with self._lock:
            for _ in range(ATTEMPTS):
                current = await self._ingresses.read(self.canary_name)
                if current is None or not owned(current):
                    return  # gone already, or the user's (never deleted)
                try:
                    version = current["metadata"]["resourceVersion"]
                    await self._ingresses.delete(self.canary_name, version)
                    return
                except KubeConflict:
                    continue
            raise RouterConflict(
                f"Ingress {self.namespace}/{self.canary_name} changed under canaryd {ATTEMPTS} "
                "times in a row (409 Conflict); not deleted"
            )

    async def aclose(self) -> None:
        if self._owned:
            await self.kube.aclose()

    async def _wanted(self, weight: int) -> Obj:
        stable = await self._ingresses.read(self.name)
        if stable is None:
            raise RouterUnavailable(
                f"Ingress {self.namespace}/{self.name} not found: canaryd copies the stable "
                "Ingress's rules into the canary one"
            )
        try:
            canary = self.canary_service or canary_service_of(stable.get("spec"))
            spec = canary_spec(stable.get("spec"), canary, self.port)
        except IngressShapeError as exc:
            raise RouterUnavailable(f"Ingress {self.namespace}/{self.name}: {exc}") from exc
        return {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "Ingress",
            "metadata": {
                "name": self.canary_name,
                "labels": dict([OWNER_LABEL]),
                "annotations": canary_annotations(weight),
            },
            "spec": spec,
        }


# --------------------------------------------------------------------------- the kind


@dataclass(frozen=True, slots=True)
class NginxIngressConfig:
    """``router: {kind: nginx-ingress, ...}``: a canary Ingress beside the stable one."""

    name: str  # the stable Ingress; the canary one is "<name>-canary"
    namespace: str = "default"
    canary_service: str | None = None
    port: int | None = None
    kind: Literal["nginx-ingress"] = field(default="nginx-ingress", init=False)


def read_config(ld: Loader, m: Mapping[str, Any], where: str) -> NginxIngressConfig:
    name, namespace = object_ref(ld, m, where)
    f = ld.r.field
    return NginxIngressConfig(
        name=name,
        namespace=namespace,
        canary_service=f(m, "canary_service", where, to_name, None),
        port=f(m, "port", where, to_port, None),
    )


def build(target: str, c: NginxIngressConfig, kube: KubeClient | None) -> NginxIngressRouter:
    return NginxIngressRouter(
        c.name, namespace=c.namespace, canary_service=c.canary_service, port=c.port, kube=kube
    )


KIND: Kind[NginxIngressConfig, Any] = Kind(
    name="nginx-ingress",
    keys=frozenset({"name", "namespace", "canary_service", "port"}),
    read=read_config,
    build=build,
    describe=lambda c: f"nginx-ingress ({c.namespace}/{c.name}, canary {c.name}-canary)",
    identity=lambda c: ("nginx-ingress", c.namespace, c.name) if c.name else None,
)
