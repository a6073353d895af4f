"""A Kubernetes API for tests, without a cluster: kmock's emulator over HTTP on 127.0.0.1, driven
by the real ``kubernetes_asyncio`` client, plus validation against the upstream CRDs.

Stable API (other tests build on it; extend, do not change)::

    from support import kube

    async with kube.cluster() as c:        # c: kube.Cluster
        c.api                              # kubernetes_asyncio.client.ApiClient for the emulator
        c.url                              # the emulator's base URL (http://127.0.0.1:<port>)
        c.emulator                         # the VersionedEmulator (kmock.KubernetesEmulator)
        obj = c.seed(HTTPROUTES, "default", {...})   # store an object as if created (stamped)
        c.get(HTTPROUTES, "default", "web")          # the stored object (a plain dict) or None
        c.write(HTTPROUTES, "default", "web", fn)    # an out-of-band writer: fn(obj) edits a
                                                     # copy in place; a new resourceVersion
        c.before_next_write(hook)          # hook(request) runs once, just before the next write
                                           # is checked (simulate a writer between read and write)
        c.before_every_write(hook)         # the same for every write (a persistent conflict)
        c.writes                           # (method, path) of every write request served

    kube.HTTPROUTES                        # kmock.resource for gateway.networking.k8s.io/v1
    kube.DEPLOYMENTS, kube.SERVICES        # kmock.resource for apps/v1 and core v1
    kube.roll_out(c, "default", "web")     # play the Deployment controller (see roll_out)
    kube.crd_schema("gateway-api/gateway.networking.k8s.io_httproutes.yaml", "v1")
    kube.schema_errors(obj, "gateway-api/gateway.networking.k8s.io_httproutes.yaml", "v1")
                                           # [] when obj validates; "path: message" otherwise

As a pytest fixture::

    @pytest.fixture
    async def k8s() -> AsyncIterator[kube.Cluster]:
        async with kube.cluster() as c:
            yield c

What kmock (0.8) lacks and ``VersionedEmulator`` adds, because canaryd's Kubernetes adapters
depend on it (a subclass of ``kmock.KubernetesEmulator`` that wraps its ``_handle``; kmock
documents inheriting for "special" behaviour):

- ``metadata.resourceVersion`` on every write (a counter shared by all objects, as etcd's
  revision), plus ``uid``, ``creationTimestamp`` and ``generation`` (bumped when ``spec``
  changes), on create, patch and replace. kmock returns none of these.
- Replace (``PUT`` on a named object): kmock does not serve it at all. Here it replaces the
  whole object (``status`` kept from the stored one, as with a status subresource), requires
  ``metadata.resourceVersion`` (422 Invalid without it, as for custom resources) and answers
  409 Conflict with the apiserver's message when it is stale.
- 201 Created for a create (kmock answers 200, and kubernetes_asyncio's generated client then
  returns None instead of the object).
- 409 Conflict on a ``PATCH`` whose body carries a stale ``metadata.resourceVersion`` (the
  apiserver's precondition); without one, a patch applies unconditionally, as upstream.
- JSON patch (``application/json-patch+json``): 400 for an object body, as the apiserver
  answers (kubernetes_asyncio sends a dict to ``patch_namespaced_custom_object`` as a JSON patch
  unless ``_content_type="application/merge-patch+json"``: kmock would have accepted that bug);
  415 for a list body, which kmock would merge into the object: not emulated. Merge and
  strategic merge patches are both applied as kmock's dict merge.

Writes are serialized (one lock), so a resourceVersion check and the write it guards are
atomic. Still missing, as in kmock: strategic merge semantics (patches merge dicts and replace
lists), the status subresource as its own endpoint, admission, and CEL rules
(``x-kubernetes-validations``): ``schema_errors`` checks the structural schema only, closed
as Kubernetes prunes unknown fields, so a test that relies on a CEL rule asserts it itself.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import inspect
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import aiohttp.web
import attrs
import jsonschema
import kmock
import yaml
from kubernetes_asyncio import client as k8s_client

REFERENCE = Path(__file__).resolve().parents[1] / "upstream"
HTTPROUTE_CRD = "gateway-api/gateway.networking.k8s.io_httproutes.yaml"
HTTPROUTES = kmock.resource("gateway.networking.k8s.io", "v1", "httproutes")
DEPLOYMENTS = kmock.resource("apps", "v1", "deployments")
SERVICES = kmock.resource("", "v1", "services")

Hook = Callable[[kmock.Request], Awaitable[None] | None]

_WRITES = {"POST", "PUT", "PATCH", "DELETE"}


def _status(code: int, reason: str, message: str) -> kmock.KubernetesError:
    return kmock.KubernetesError(status=code, reason=reason, message=message, details={})


@attrs.define(kw_only=True)
class VersionedEmulator(kmock.KubernetesEmulator):
    """kmock's emulator plus resourceVersion, replace and 409 Conflict (see the module doc)."""

    revision: int = 0
    writes: list[tuple[str, str]] = attrs.field(factory=list)
    _once: list[Hook] = attrs.field(factory=list)
    _always: list[Hook] = attrs.field(factory=list)
    _write_lock: asyncio.Lock = attrs.field(factory=asyncio.Lock)

    def add_hook(self, hook: Hook, *, once: bool) -> None:
        """``hook(request)`` before a write is checked: the next write only, or every one."""
        (self._once if once else self._always).append(hook)

    def next_revision(self) -> str:
        self.revision += 1
        return str(self.revision)

    def stamp_new(self, obj: dict[str, Any], namespace: str | None) -> dict[str, Any]:
        meta = obj.setdefault("metadata", {})
        if namespace is not None:
            meta.setdefault("namespace", namespace)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = (
            datetime.datetime.now(tz=datetime.UTC).replace(microsecond=0).isoformat()
        ).replace("+00:00", "Z")
        meta["generation"] = 1
        meta["resourceVersion"] = self.next_revision()
        return obj

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        method = str(request.method.value).upper()
        if request.resource is None or method not in _WRITES:
            return await super()._handle(request)
        async with self._write_lock:
            self.writes.append((method, request.url.path))
            hooks, self._once = [*self._once, *self._always], []
            for hook in hooks:
                result = hook(request)
                if inspect.isawaitable(result):
                    await result
            if method == "PUT" and request.name is not None and request.subresource is None:
                return await self._replace(request)
            if request.action == kmock.action.CREATE and isinstance(request.data, dict):
                self.stamp_new(request.data, request.namespace)
                response = await super()._handle(request)
                if response.status == 200 and not response.prepared:
                    response.set_status(201)  # the client decodes only a 201 for a create
                return response
            if request.action == kmock.action.UPDATE and request.name is not None:
                self._prepare_patch(request)
            return await super()._handle(request)

    def _stored(self, request: kmock.Request) -> kmock.Object:
        key = (request.resource, request.namespace, request.name)
        if key not in self.objects or self.objects[key].deleted:
            raise kmock.KubernetesObjectNotFoundError()
        obj: kmock.Object = self.objects[key]
        return obj

    def _check_version(self, request: kmock.Request, stored: dict[str, Any], wanted: Any) -> None:
        if wanted is not None and str(wanted) != stored.get("metadata", {}).get("resourceVersion"):
            assert request.resource is not None
            raise _status(
                409,
                "Conflict",
                f"Operation cannot be fulfilled on {request.resource.plural}."
                f'{request.resource.group} "{request.name}": the object has been modified; '
                "please apply your changes to the latest version and try again",
            )

    def _prepare_patch(self, request: kmock.Request) -> None:
        content_type = request.headers.get("Content-Type", "")
        if "json-patch" in content_type and isinstance(request.data, dict):
            # what the apiserver answers; kubernetes_asyncio sends a dict to a custom object's
            # patch as a JSON patch unless _content_type="application/merge-patch+json"
            raise _status(
                400,
                "BadRequest",
                "json: cannot unmarshal object into Go value of type jsonpatch.Patch",
            )
        if "json-patch" in content_type or not isinstance(request.data, dict):
            raise _status(415, "UnsupportedMediaType", f"{content_type}: not emulated")
        stored = self._stored(request).raw
        self._check_version(
            request, stored, request.data.get("metadata", {}).get("resourceVersion")
        )
        meta = request.data.setdefault("metadata", {})
        meta["resourceVersion"] = self.next_revision()
        if "spec" in request.data:
            meta["generation"] = int(stored.get("metadata", {}).get("generation", 1)) + 1

    async def _replace(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        body = request.data
        if not isinstance(body, dict):
            raise _status(400, "BadRequest", "the body of a replace must be an object")
        obj = self._stored(request)
        stored = obj.raw
        meta = body.get("metadata") or {}
        if meta.get("name") != request.name or meta.get("namespace", request.namespace) != (
            request.namespace
        ):
            raise _status(400, "BadRequest", "the name/namespace in the body and URL differ")
        if not meta.get("resourceVersion"):
            raise _status(
                422,
                "Invalid",
                "metadata.resourceVersion: Invalid value: 0x0: must be specified for an update",
            )
        self._check_version(request, stored, meta["resourceVersion"])
        new = copy.deepcopy(body)
        old_meta = stored.get("metadata", {})
        new_meta = new["metadata"]
        for kept in ("uid", "creationTimestamp", "namespace"):
            if kept in old_meta:
                new_meta[kept] = old_meta[kept]
        generation = int(old_meta.get("generation", 1))
        new_meta["generation"] = generation + (new.get("spec") != stored.get("spec"))
        new_meta["resourceVersion"] = self.next_revision()
        if "status" in stored:
            new["status"] = copy.deepcopy(stored["status"])
        else:
            new.pop("status", None)
        obj.history.append(new)
        assert request.resource is not None
        await self._buses[request.resource].put({"type": "MODIFIED", "object": new})
        return aiohttp.web.json_response(new)


@dataclass
class Cluster:
    """An emulated API server and a real client for it (see the module doc)."""

    emulator: VersionedEmulator
    url: str
    api: k8s_client.ApiClient
    _hooks: list[Hook] = field(default_factory=list)

    @property
    def writes(self) -> list[tuple[str, str]]:
        return self.emulator.writes

    def seed(self, resource: kmock.resource, namespace: str, obj: dict[str, Any]) -> dict[str, Any]:
        """Store ``obj`` as if it had been created (metadata stamped); returns the stored copy."""
        stored = self.emulator.stamp_new(copy.deepcopy(obj), namespace)
        self.emulator.objects[resource, namespace, stored["metadata"]["name"]] = stored
        return copy.deepcopy(stored)

    def get(self, resource: kmock.resource, namespace: str, name: str) -> dict[str, Any] | None:
        key = (resource, namespace, name)
        if key not in self.emulator.objects or self.emulator.objects[key].deleted:
            return None
        raw: dict[str, Any] = copy.deepcopy(self.emulator.objects[key].raw)
        return raw

    def write(
        self,
        resource: kmock.resource,
        namespace: str,
        name: str,
        edit: Callable[[dict[str, Any]], None],
    ) -> dict[str, Any]:
        """Another writer: ``edit`` changes a copy of the object in place, which is stored with a
        new resourceVersion (call it from a hook to land between a client's read and write)."""
        current = self.get(resource, namespace, name)
        if current is None:
            raise KeyError(f"{namespace}/{name}")
        edit(current)
        current["metadata"]["resourceVersion"] = self.emulator.next_revision()
        self.emulator.objects[resource, namespace, name].history.append(current)
        return copy.deepcopy(current)

    def before_next_write(self, hook: Hook) -> None:
        self.emulator.add_hook(hook, once=True)

    def before_every_write(self, hook: Hook) -> None:
        self.emulator.add_hook(hook, once=False)


def roll_out(c: Cluster, namespace: str, name: str, ready: int | None = None) -> None:
    """Play the Deployment controller, which the emulator does not run: every replica of the
    current spec updated and ``ready`` (default: all) of them ready, written as another writer
    would (a new resourceVersion, no request counted in ``c.writes``)."""

    def edit(obj: dict[str, Any]) -> None:
        replicas = obj["spec"].get("replicas", 1)
        obj["status"] = {
            "observedGeneration": obj["metadata"]["generation"],
            "replicas": replicas,
            "updatedReplicas": replicas,
            "readyReplicas": replicas if ready is None else ready,
            "availableReplicas": replicas if ready is None else ready,
        }

    c.write(DEPLOYMENTS, namespace, name, edit)


@asynccontextmanager
async def cluster() -> AsyncIterator[Cluster]:
    """The emulator on 127.0.0.1 (a free port) and an ApiClient for it; both closed on exit."""
    async with VersionedEmulator() as emulator, kmock.Server(emulator) as server:
        configuration = k8s_client.Configuration(host=str(server.url).rstrip("/"))
        api = k8s_client.ApiClient(configuration)
        try:
            yield Cluster(emulator, str(server.url).rstrip("/"), api)
        finally:
            await api.close()


# --------------------------------------------------------------------------- CRD schemas


def _closed(schema: Any) -> Any:
    """Every object schema that lists its properties closed to others, as Kubernetes' structural
    pruning drops unknown fields (unless x-kubernetes-preserve-unknown-fields says otherwise)."""
    if isinstance(schema, dict):
        out: dict[str, Any] = {}
        for key, value in schema.items():
            if key == "properties" and isinstance(value, dict):  # names -> schemas
                out[key] = {name: _closed(sub) for name, sub in value.items()}
            elif key in ("default", "example", "enum"):  # values, not schemas
                out[key] = value
            else:
                out[key] = _closed(value)
        if (
            isinstance(out.get("properties"), dict)
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_closed(v) for v in schema]
    return schema


@cache
def _crd_schema_json(crd: str, version: str | None) -> str:
    document = yaml.safe_load((REFERENCE / crd).read_text())
    versions = document["spec"]["versions"]
    chosen = (
        next(v for v in versions if v["name"] == version)
        if version
        else next(v for v in versions if v.get("storage"))
    )
    return json.dumps(chosen["schema"]["openAPIV3Schema"])


def crd_schema(crd: str, version: str | None = None) -> dict[str, Any]:
    """The ``openAPIV3Schema`` of ``version`` (default: the storage version) of the CRD at
    ``crd``, a path relative to ``tests/upstream``."""
    schema: dict[str, Any] = json.loads(_crd_schema_json(crd, version))
    return schema


def validator(crd: str, version: str | None = None) -> jsonschema.Draft7Validator:
    """A validator for whole objects: the structural schema closed like pruning; ``metadata``
    stays open (the apiserver's ObjectMeta, not part of the CRD)."""
    schema = _closed(crd_schema(crd, version))
    schema["properties"]["metadata"] = {"type": "object"}
    return jsonschema.Draft7Validator(schema)


def schema_errors(obj: Any, crd: str, version: str | None = None) -> list[str]:
    """``path: message`` for each way ``obj`` breaks the CRD's schema; ``[]`` when it validates."""
    return [
        f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in validator(crd, version).iter_errors(obj)
    ]
