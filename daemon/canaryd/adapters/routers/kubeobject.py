"""Read, create, replace and delete one kind of namespaced Kubernetes object, as plain dicts.

The ``traefik-service`` and ``nginx-ingress`` routers own whole objects (a TraefikService, an
IngressRoute, an Ingress) where ``gateway-api`` edits part of the user's. They share this: the
API's errors turned into the routers' own (``RouterUnavailable`` naming the object, 409 as
``KubeConflict`` for the caller to read again and re-apply), every call under
``asyncio.timeout``, and objects as the dicts the API server sends. ``CustomObjectsApi`` serves
any ``/apis/GROUP/VERSION/namespaces/NS/PLURAL`` path, built-in groups included, so an Ingress
goes through it as a dict too: no generated model in between that would rename or drop
fields, so what is compared on read-back is what the server stored.

Ownership: the objects canaryd creates carry ``OWNER_LABEL``; a router refuses to take over an
object of the same name without it (``owned``), so it never overwrites a user's own object.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import aiohttp
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from canaryd.adapters.kube import KubeClient, KubeConflict, KubeUnavailable
from canaryd.core.errors import RouterUnavailable

OWNER_LABEL = ("app.kubernetes.io/managed-by", "canaryd")
TIMEOUT = 10.0  # seconds per API call
ATTEMPTS = 5  # reads + writes before a run of 409s is a RouterConflict

Obj = dict[str, Any]


def owned(obj: Obj) -> bool:
    """Whether canaryd made ``obj`` (it carries ``OWNER_LABEL``)."""
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return isinstance(labels, dict) and labels.get(OWNER_LABEL[0]) == OWNER_LABEL[1]


def reason(exc: ApiException) -> str:
    """The apiserver's Status message when there is one, else the HTTP status and reason."""
    try:
        message = json.loads(exc.body or b"").get("message")
    except (TypeError, ValueError, AttributeError):
        message = None
    return f"{exc.status} {exc.reason}" + (f": {message}" if message else "")


@dataclass
class Objects:
    """One resource type in one namespace: ``kind`` names it in messages (``Ingress``)."""

    kube: KubeClient
    group: str
    version: str
    plural: str
    namespace: str
    kind: str

    def named(self, name: str) -> str:
        return f"{self.kind} {self.namespace}/{name}"

    async def _api(self, name: str) -> client.CustomObjectsApi:
        try:
            return client.CustomObjectsApi(await self.kube.api())
        except KubeUnavailable as exc:
            raise RouterUnavailable(f"no Kubernetes API for {self.named(name)}: {exc}") from exc

    async def read(self, name: str) -> Obj | None:
        """The object, or None when there is none."""
        api = await self._api(name)
        try:
            async with asyncio.timeout(TIMEOUT):
                found = await api.get_namespaced_custom_object(
                    self.group, self.version, self.namespace, self.plural, name
                )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise RouterUnavailable(f"cannot read {self.named(name)}: {reason(exc)}") from exc
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise RouterUnavailable(f"cannot read {self.named(name)}: {exc!r}") from exc
        if not isinstance(found, dict):
            raise RouterUnavailable(f"cannot read {self.named(name)}: not an object")
        return found

    async def create(self, obj: Obj) -> None:
        """Create ``obj``; ``KubeConflict`` if one of its name appeared since it was read."""
        name = obj["metadata"]["name"]
        await self._write(
            name,
            "create",
            lambda api: api.create_namespaced_custom_object(
                self.group, self.version, self.namespace, self.plural, obj
            ),
        )

    async def replace(self, obj: Obj) -> None:
        """Replace ``obj`` (it carries the ``resourceVersion`` read); ``KubeConflict`` on 409."""
        name = obj["metadata"]["name"]
        await self._write(
            name,
            "replace",
            lambda api: api.replace_namespaced_custom_object(
                self.group, self.version, self.namespace, self.plural, name, obj
            ),
        )

    async def delete(self, name: str, resource_version: str) -> None:
        """Delete the object as it was read (a precondition); gone already is fine."""
        options = {"preconditions": {"resourceVersion": resource_version}}
        try:
            await self._write(
                name,
                "delete",
                lambda api: api.delete_namespaced_custom_object(
                    self.group, self.version, self.namespace, self.plural, name, body=options
                ),
            )
        except _Gone:
            return

    async def _write(self, name: str, verb: str, call: Any) -> None:
        api = await self._api(name)
        try:
            async with asyncio.timeout(TIMEOUT):
                await call(api)
        except ApiException as exc:
            if exc.status == 409:
                raise KubeConflict from exc
            if exc.status == 404 and verb == "delete":
                raise _Gone from exc
            raise RouterUnavailable(f"cannot {verb} {self.named(name)}: {reason(exc)}") from exc
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise RouterUnavailable(f"cannot {verb} {self.named(name)}: {exc!r}") from exc


class _Gone(Exception):
    """404 on a delete: what was to be deleted is gone already."""


async def put(objects: Objects, wanted: Obj, current: Obj | None) -> bool:
    """Make the object ``wanted`` (its ``metadata`` labels/annotations and ``spec``) from
    ``current`` (as read; None: there is none): nothing if it is already so, else a create or a
    replace carrying the read ``resourceVersion``. True if it wrote. ``KubeConflict`` on 409."""
    name = wanted["metadata"]["name"]
    if current is None:
        await objects.create(wanted)
        return True
    if not owned(current):
        raise RouterUnavailable(
            f"{objects.named(name)} exists and was not made by canaryd (no label "
            f"{OWNER_LABEL[0]}={OWNER_LABEL[1]}): rename or remove it"
        )
    if same(current, wanted):
        return False
    replacement = {k: v for k, v in current.items() if k != "status"}
    replacement["metadata"] = {**current["metadata"], **wanted["metadata"]}
    replacement["spec"] = wanted["spec"]
    await objects.replace(replacement)
    return True


def same(current: Obj, wanted: Obj) -> bool:
    """``current`` has ``wanted``'s spec, labels and annotations (other metadata aside)."""
    meta, want = current.get("metadata") or {}, wanted["metadata"]
    return current.get("spec") == wanted["spec"] and all(
        (meta.get(key) or {}) == (want.get(key) or {}) for key in ("labels", "annotations")
    )
