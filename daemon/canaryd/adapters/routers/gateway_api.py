"""The ``gateway-api`` router: the split lives in the weights of a Gateway API ``HTTPRoute``.

canaryd does not create the route: the user owns it, its ``parentRefs``, ``hostnames``,
``matches`` and filters. canaryd takes over two things in it, for the HTTPRoute ``name`` in
``namespace``:

- the weights of the *main rule*, the one rule whose ``backendRefs`` name ``stable_service`` or
  ``canary_service`` (a Service of the route's namespace). Its ``backendRefs`` become exactly
  ``[stable_service weight 100-w, canary_service weight w]``, both on ``port``; a Service
  reference needs one (a CEL rule of the CRD), so with ``port`` unset the port of the rule's
  existing reference to either service is kept. Other fields of an existing reference
  (``filters``) are kept;
- one *pin rule*, first in ``rules``: the main rule's matches, each with the header match
  ``X-Canary-Deploy: canary`` added (``type: Exact``), and the main rule's filters and
  timeouts, sending to ``canary_service`` only. Gateway API ranks matches by precedence
  (path, method, then the number of header matches), so the pin wins over the main rule for
  every request it matches; list order breaks the remaining ties, hence first. It is found
  again by its shape (one backend, the canary; every match has the header), not by a rule
  ``name``, which older CRDs would prune.

For a route ``web`` whose rule sends ``/`` to ``web-stable:8080``, weight 25 reads::

    rules:
    - matches: [{path: {type: PathPrefix, value: /},
                 headers: [{type: Exact, name: X-Canary-Deploy, value: canary}]}]
      backendRefs: [{group: "", kind: Service, name: web-canary, port: 8080, weight: 100}]
    - matches: [{path: {type: PathPrefix, value: /}}]
      backendRefs:
      - {group: "", kind: Service, name: web-stable, port: 8080, weight: 75}
      - {group: "", kind: Service, name: web-canary, port: 8080, weight: 25}

Every field the apiserver would default (``group``, ``kind``, ``weight``, a header's ``type``,
a missing ``matches``) is written out, so what is read back equals what was written.

Writing: read-modify-write with optimistic concurrency. ``set_weight`` reads the route,
rewrites ``spec.rules`` and replaces the object with the ``resourceVersion`` it read; on 409
Conflict (someone else wrote in between: a GitOps sync, ``kubectl edit``) it reads again and
reapplies, so the other writer's change is kept, up to ``ATTEMPTS`` times, then raises
``RouterConflict``. A route already right is not written.

Reading back: ``get_weight`` returns the canary's weight only if the rules are exactly what
``set_weight`` writes for that weight (``finalize``'s state included: weight 0, no pin rule);
anything else (a hand edit, a second main rule, a stale pin after the main rule's matches
changed) is ``None``, "cannot tell", and the worker re-asserts its weight.

``finalize`` sets weight 0 and removes the pin rule; the canary's reference stays at weight 0
(no traffic) and the route otherwise is the user's again.

Connecting: through a ``KubeClient`` (``adapters.kube``): the daemon's shared one (``kube=``,
which the daemon closes at stop), else one of this router's own around the ``ApiClient`` passed
in (tests) or, on first use, the in-cluster configuration or the kubeconfig. ``aclose`` closes
a client of its own, never the shared one.

Errors: a missing route, a route without (or with two) main rules, a refused write, an
unreachable API are ``RouterUnavailable`` naming ``namespace/name``; 409s past the retries
are ``RouterConflict``. Both are temporary: the worker applies its weight again on its next
pass. Every call runs under ``asyncio.timeout(TIMEOUT)``.
"""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from canaryd.adapters.kube import KubeClient, KubeConflict, KubeUnavailable
from canaryd.config.kinds import Kind, Loader, to_name, to_port
from canaryd.core.errors import RouterConflict, RouterUnavailable

GROUP, VERSION, PLURAL = "gateway.networking.k8s.io", "v1", "httproutes"
CANARY_HEADER, CANARY_VALUE = "X-Canary-Deploy", "canary"
ATTEMPTS = 5  # reads + replaces before a run of 409s is a RouterConflict
TIMEOUT = 10.0  # seconds per API call

Rule = dict[str, Any]


class RouteShapeError(ValueError):
    """The route's rules are not something canaryd can take over (see ``main_rule``)."""


def _is_service(ref: Any, name: str) -> bool:
    return (
        isinstance(ref, dict)
        and ref.get("name") == name
        and ref.get("group", "") == ""
        and ref.get("kind", "Service") == "Service"
    )


def _has_pin_header(match: Any) -> bool:
    headers = match.get("headers") if isinstance(match, dict) else None
    return isinstance(headers, list) and any(
        isinstance(h, dict)
        and str(h.get("name", "")).lower() == CANARY_HEADER.lower()
        and h.get("value") == CANARY_VALUE
        and h.get("type", "Exact") == "Exact"
        for h in headers
    )


def is_pin_rule(rule: Any, canary_service: str) -> bool:
    """One backend, the canary, and every match carries ``X-Canary-Deploy: canary``."""
    if not isinstance(rule, dict):
        return False
    refs, matches = rule.get("backendRefs"), rule.get("matches")
    return (
        isinstance(refs, list)
        and len(refs) == 1
        and _is_service(refs[0], canary_service)
        and isinstance(matches, list)
        and bool(matches)
        and all(_has_pin_header(m) for m in matches)
    )


def main_rule(rules: list[Any], stable_service: str, canary_service: str) -> int:
    """The index of the one rule, pin rules aside, that sends to either service."""
    found = [
        i
        for i, rule in enumerate(rules)
        if isinstance(rule, dict)
        and not is_pin_rule(rule, canary_service)
        and any(
            _is_service(ref, stable_service) or _is_service(ref, canary_service)
            for ref in rule.get("backendRefs") or []
        )
    ]
    if len(found) != 1:
        raise RouteShapeError(
            f"{len(found)} rules send to {stable_service} or {canary_service}; "
            "canaryd needs exactly one"
        )
    return found[0]


def _backend_ref(name: str, port: int, weight: int, existing: list[Any]) -> dict[str, Any]:
    ref: dict[str, Any] = next((copy.deepcopy(r) for r in existing if _is_service(r, name)), {})
    ref.update(group="", kind="Service", name=name, port=port, weight=weight)
    return ref


def _pin_rule(main: Rule, canary_ref: dict[str, Any]) -> Rule:
    header = {"type": "Exact", "name": CANARY_HEADER, "value": CANARY_VALUE}
    matches = copy.deepcopy(main.get("matches")) or [{"path": {"type": "PathPrefix", "value": "/"}}]
    for match in matches:
        others = [
            h
            for h in match.get("headers") or []
            if str(h.get("name", "")).lower() != CANARY_HEADER.lower()
        ]
        match["headers"] = [*others, dict(header)]
    pin: Rule = {"matches": matches}
    for kept in ("filters", "timeouts"):
        if kept in main:
            pin[kept] = copy.deepcopy(main[kept])
    ref = {k: v for k, v in canary_ref.items() if k != "filters"}
    pin["backendRefs"] = [{**ref, "weight": 100}]
    return pin


def desired_rules(
    rules: list[Any],
    *,
    stable_service: str,
    canary_service: str,
    weight: int,
    port: int | None = None,
    pin: bool = True,
) -> list[Rule]:
    """``rules`` with the main rule's split at ``weight`` and the pin rule first (or none)."""
    if not 0 <= weight <= 100:
        raise ValueError(f"weight must be within 0..100, got {weight}")
    index = main_rule(rules, stable_service, canary_service)
    main: Rule = copy.deepcopy(rules[index])
    existing = list(main.get("backendRefs") or [])
    if port is None:
        ports = [
            r["port"]
            for r in existing
            if (_is_service(r, stable_service) or _is_service(r, canary_service))
            and isinstance(r.get("port"), int)
        ]
        if not ports:
            raise RouteShapeError(
                f"no port for {stable_service}/{canary_service}: set the router's port"
            )
        port = ports[0]
    stable_ref = _backend_ref(stable_service, port, 100 - weight, existing)
    canary_ref = _backend_ref(canary_service, port, weight, existing)
    main["backendRefs"] = [stable_ref, canary_ref]
    out: list[Rule] = [_pin_rule(main, canary_ref)] if pin else []
    for i, rule in enumerate(rules):
        if i == index:
            out.append(main)
        elif not is_pin_rule(rule, canary_service):
            out.append(copy.deepcopy(rule))
    return out


class GatewayApiHTTPRouteRouter:
    kind = "gateway-api"

    def __init__(
        self,
        name: str,
        stable_service: str,
        canary_service: str,
        *,
        namespace: str = "default",
        port: int | None = None,
        api_client: client.ApiClient | None = None,
        kube: KubeClient | None = None,
    ) -> None:
        self.name, self.namespace, self.port = name, namespace, port
        self.stable_service, self.canary_service = stable_service, canary_service
        self._owned = kube is None  # our own client (closed by aclose), or the daemon's
        self.kube = kube if kube is not None else KubeClient(api_client)
        self._lock = asyncio.Lock()  # one read-modify-write at a time

    @property
    def route(self) -> str:
        return f"HTTPRoute {self.namespace}/{self.name}"

    async def set_weight(self, weight: int) -> None:
        if not 0 <= weight <= 100:
            raise ValueError(f"weight must be within 0..100, got {weight}")
        await self._rewrite(weight, pin=True)

    async def get_weight(self) -> int | None:
        try:
            route = await self._read()
        except RouterUnavailable:
            return None
        rules = _rules(route)
        try:
            main = rules[main_rule(rules, self.stable_service, self.canary_service)]
        except RouteShapeError:
            return None
        weights = [
            r.get("weight")
            for r in main.get("backendRefs") or []
            if _is_service(r, self.canary_service)
        ]
        weight = weights[0] if len(weights) == 1 else None
        if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= 100:
            return None
        pins = (True, False) if weight == 0 else (True,)
        if any(rules == self._desired(rules, weight, pin) for pin in pins):
            return weight
        return None

    async def finalize(self) -> None:
        """Everything to stable and the pin rule gone; the route stays the user's."""
        await self._rewrite(0, pin=False)

    async def aclose(self) -> None:
        """Close the API client if this router made it (the daemon closes a shared one)."""
        if self._owned:
            await self.kube.aclose()

    def _desired(self, rules: list[Any], weight: int, pin: bool) -> list[Rule] | None:
        """``_wanted``, or None for a route this router cannot shape (read back: cannot tell)."""
        try:
            return self._wanted(rules, weight, pin)
        except RouteShapeError:
            return None

    def _wanted(self, rules: list[Any], weight: int, pin: bool) -> list[Rule]:
        """``rules`` with this router's services at ``weight``; ``RouteShapeError`` if it cannot."""
        return desired_rules(
            rules,
            stable_service=self.stable_service,
            canary_service=self.canary_service,
            weight=weight,
            port=self.port,
            pin=pin,
        )

    async def _rewrite(self, weight: int, *, pin: bool) -> None:
        async with self._lock:
            for _ in range(ATTEMPTS):
                route = await self._read()
                rules = _rules(route)
                try:
                    wanted = self._wanted(rules, weight, pin)
                except RouteShapeError as exc:
                    raise RouterUnavailable(f"{self.route}: {exc}") from exc
                if wanted == rules:
                    return
                route.setdefault("spec", {})["rules"] = wanted
                try:
                    await self._replace(route, weight)
                    return
                except KubeConflict:
                    continue  # someone else wrote in between: read their version, reapply
            raise RouterConflict(
                f"{self.route} changed under canaryd {ATTEMPTS} times in a row "
                f"(409 Conflict); weight {weight} not applied"
            )

    async def _objects(self) -> client.CustomObjectsApi:
        try:
            return client.CustomObjectsApi(await self.kube.api())
        except KubeUnavailable as exc:
            raise RouterUnavailable(f"no Kubernetes API for {self.route}: {exc}") from exc

    async def _read(self) -> dict[str, Any]:
        api = await self._objects()
        try:
            async with asyncio.timeout(TIMEOUT):
                route = await api.get_namespaced_custom_object(
                    GROUP, VERSION, self.namespace, PLURAL, self.name
                )
        except ApiException as exc:
            if exc.status == 404:
                raise RouterUnavailable(
                    f"{self.route} not found: canaryd sets the weights of a route it does "
                    "not create"
                ) from exc
            raise RouterUnavailable(f"cannot read {self.route}: {_reason(exc)}") from exc
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise RouterUnavailable(f"cannot read {self.route}: {exc!r}") from exc
        if not isinstance(route, dict):
            raise RouterUnavailable(f"cannot read {self.route}: not an object")
        return route

    async def _replace(self, route: dict[str, Any], weight: int) -> None:
        api = await self._objects()
        try:
            async with asyncio.timeout(TIMEOUT):
                await api.replace_namespaced_custom_object(
                    GROUP, VERSION, self.namespace, PLURAL, self.name, route
                )
        except ApiException as exc:
            if exc.status == 409:
                raise KubeConflict from exc
            raise RouterUnavailable(
                f"{self.route}: weight {weight} refused: {_reason(exc)}"
            ) from exc
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise RouterUnavailable(f"cannot write {self.route}: {exc!r}") from exc


def _rules(route: dict[str, Any]) -> list[Any]:
    spec = route.get("spec")
    rules = spec.get("rules") if isinstance(spec, dict) else None
    return list(rules) if isinstance(rules, list) else []


def _reason(exc: ApiException) -> str:
    """The apiserver's Status message when there is one, else the HTTP status and reason."""
    try:
        message = json.loads(exc.body or b"").get("message")
    except (TypeError, ValueError, AttributeError):
        message = None
    return f"{exc.status} {exc.reason}" + (f": {message}" if message else "")


# --------------------------------------------------------------------------- the kind


@dataclass(frozen=True, slots=True)
class GatewayApiConfig:
    """``router: {kind: gateway-api, ...}``: the weights of an existing HTTPRoute."""

    name: str  # the HTTPRoute
    stable_service: str
    canary_service: str
    namespace: str = "default"
    port: int | None = None
    kind: Literal["gateway-api"] = field(default="gateway-api", init=False)


def read_config(ld: Loader, m: Mapping[str, Any], where: str) -> GatewayApiConfig:
    f = ld.r.field
    return GatewayApiConfig(
        name=ld.need(m, "name", where, to_name, ""),
        stable_service=ld.need(m, "stable_service", where, to_name, ""),
        canary_service=ld.need(m, "canary_service", where, to_name, ""),
        namespace=f(m, "namespace", where, to_name, "default"),
        port=f(m, "port", where, to_port, None),
    )


def build(target: str, c: GatewayApiConfig, kube: KubeClient | None) -> GatewayApiHTTPRouteRouter:
    return GatewayApiHTTPRouteRouter(
        c.name, c.stable_service, c.canary_service, namespace=c.namespace, port=c.port, kube=kube
    )


KIND: Kind[GatewayApiConfig, Any] = Kind(
    name="gateway-api",
    keys=frozenset({"name", "namespace", "stable_service", "canary_service", "port"}),
    read=read_config,
    build=build,
    describe=lambda c: f"gateway-api ({c.namespace}/{c.name})",
    identity=lambda c: ("gateway-api", c.namespace, c.name) if c.name else None,
)
