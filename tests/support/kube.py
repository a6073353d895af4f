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
        c.emulator.write_times             # (monotonic time, method, path) of each of them

    with kube.threaded() as t:             # the same on a loop of its own, in a thread, for
        t.cluster                          # code whose calls block (a synchronous client, a
        t.call(fn)                         # subprocess): fn() run on the emulator's loop
        t.kubeconfig(path)                 # a kubeconfig naming the emulator, written to path
    kube.kubeconfig(path, c.url)           # the same for an emulator at c.url

    kube.HTTPROUTES                        # kmock.resource for gateway.networking.k8s.io/v1
    kube.DEPLOYMENTS, kube.SERVICES        # kmock.resource for apps/v1 and core v1
    kube.INGRESSES, kube.LEASES, kube.CONFIGMAPS, kube.TRAEFIKSERVICES, kube.INGRESSROUTES,
    kube.ROLLOUTS                          # the other types canaryd's adapters touch
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
  changes), on create, patch and replace; ``apiVersion`` and ``kind`` filled in as the
  apiserver returns them. kmock returns none of these.
- Replace (``PUT`` on a named object): kmock does not serve it at all. Here it replaces the
  whole object, requires ``metadata.resourceVersion`` (422 Invalid without it, as for custom
  resources) and answers 409 Conflict with the apiserver's message when it is stale.
- 201 Created for a create (kmock answers 200, and kubernetes_asyncio's generated client then
  returns None instead of the object).
- 409 Conflict on a ``PATCH`` whose body carries a stale ``metadata.resourceVersion``, and on a
  ``DELETE`` whose ``preconditions.resourceVersion`` is stale (the apiserver's preconditions);
  without one, a patch or delete applies unconditionally, as upstream.
- JSON patch (``application/json-patch+json``): 400 for an object body, as the apiserver
  answers (kubernetes_asyncio sends a dict to ``patch_namespaced_custom_object`` as a JSON patch
  unless ``_content_type="application/merge-patch+json"``: kmock would have accepted that bug);
  415 for a list body: not emulated. Merge and strategic merge patches are both applied as an
  RFC 7386 merge patch (``null`` removes a key, lists are replaced whole).
- The **status subresource** as its own endpoint, for the types that declare one (built-in
  Deployment, Service, Ingress; a CRD with ``subresources.status``, e.g. HTTPRoute, Rollout):
  ``PUT``/``PATCH`` on ``.../NAME/status`` change ``status`` only (everything else in the body
  is ignored), a write to the object itself keeps the stored ``status``, and a create drops
  the ``status`` it is given. For a type without one (TraefikService, IngressRoute, Lease,
  ConfigMap) ``.../status`` is 404 and a write to the object writes its ``status`` too.
- **Server-side validation**: every create, replace and patch (status ones included) is
  checked, after the patch is applied, against the type's schema (``support.kubeschema``:
  the Kubernetes schemas ``kubernetes-validate`` ships for built-in kinds, the CRDs'
  ``openAPIV3Schema`` in ``tests/upstream`` for custom resources, ``metadata.name`` as a DNS
  name); a broken object is refused with 422 and the apiserver's Status body (``reason:
  Invalid``, ``details.causes[]`` with ``reason``/``message``/``field``) and nothing is
  stored. Objects ``seed`` stores are checked the same way.
- A resource type the emulated server does not know (no CRD in ``support.kubeschema``) is 404,
  as on a cluster without it; ``Lease`` (``coordination.k8s.io/v1``) and ``ConfigMap`` are
  stored like any other object.
- **Namespaces** (``/api/v1/namespaces``, which kmock cannot parse): create, read, list and
  delete; a delete deletes every object in the namespace. Nothing requires a namespace to
  exist before objects are written into it (tests here never create one).
- A list of a served type that has no object yet is an empty list (kmock answers 404 until it
  has seen one object of the type). kmock ignores ``labelSelector`` and answers every object
  of the type.
- ``write_times``: ``(time.monotonic(), method, path)`` of every write request, for tests that
  ask when a writer last wrote.
- kmock's own request log is not kept (it scans the log on every request, which made long
  tests quadratic): assert on ``writes`` / ``write_times``, or subclass as
  ``tests/quality/test_guide_kubernetes.py`` does to see reads.

Writes are serialized (one lock), so a resourceVersion check and the write it guards are
atomic. Still missing: strategic merge semantics (list merge keys), admission, defaulting,
server-side apply, and CEL rules (``x-kubernetes-validations``): the schemas are checked
structurally only, closed as Kubernetes prunes unknown fields (an unknown field is a 422
here where a real apiserver drops it: either way canaryd would not read back what it wrote),
so a test that relies on a CEL rule asserts it itself. ``Cluster.write`` (another writer: a
controller, ``kubectl``) is not validated.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import inspect
import json
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp.web
import attrs
import kmock
from kubernetes_asyncio import client as k8s_client

from support import kubeschema

REFERENCE = kubeschema.REFERENCE
HTTPROUTE_CRD = "gateway-api/gateway.networking.k8s.io_httproutes.yaml"
HTTPROUTES = kmock.resource("gateway.networking.k8s.io", "v1", "httproutes")
DEPLOYMENTS = kmock.resource("apps", "v1", "deployments")
SERVICES = kmock.resource("", "v1", "services")
INGRESSES = kmock.resource("networking.k8s.io", "v1", "ingresses")
LEASES = kmock.resource("coordination.k8s.io", "v1", "leases")
CONFIGMAPS = kmock.resource("", "v1", "configmaps")
TRAEFIKSERVICES = kmock.resource("traefik.io", "v1alpha1", "traefikservices")
INGRESSROUTES = kmock.resource("traefik.io", "v1alpha1", "ingressroutes")
ROLLOUTS = kmock.resource("argoproj.io", "v1alpha1", "rollouts")

Hook = Callable[[kmock.Request], Awaitable[None] | None]

_NAMESPACE_PATH = re.compile(r"/api/v1/namespaces(?:/(?P<name>[^/]+))?/?")
_WRITES = {"POST", "PUT", "PATCH", "DELETE"}


def _status(code: int, reason: str, message: str) -> kmock.KubernetesError:
    return kmock.KubernetesError(status=code, reason=reason, message=message, details={})


@attrs.define(kw_only=True)
class VersionedEmulator(kmock.KubernetesEmulator):
    """kmock's emulator plus what the apiserver does that canaryd relies on (see the module doc)."""

    revision: int = 0
    writes: list[tuple[str, str]] = attrs.field(factory=list)
    write_times: list[tuple[float, str, str]] = attrs.field(factory=list)
    _once: list[Hook] = attrs.field(factory=list)
    _always: list[Hook] = attrs.field(factory=list)
    _write_lock: asyncio.Lock = attrs.field(factory=asyncio.Lock)
    namespaces: dict[str, dict[str, Any]] = attrs.field(factory=dict)

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        """Namespaces are served here: kmock cannot parse ``/api/v1/namespaces``."""
        found = _NAMESPACE_PATH.fullmatch(raw_request.path)
        if found is None:
            return await super().__call__(raw_request)
        return await self._namespace(raw_request, found["name"])

    async def _namespace(
        self, raw_request: aiohttp.web.BaseRequest, name: str | None
    ) -> aiohttp.web.StreamResponse:
        """Create, read, list and delete a Namespace (a delete deletes the objects in it, as the
        namespace controller does; nothing requires a namespace to exist before use)."""
        method = raw_request.method.upper()

        def answer(code: int, reason: str, message: str) -> aiohttp.web.StreamResponse:
            body = {"kind": "Status", "apiVersion": "v1", "status": "Failure"}
            body.update(code=code, reason=reason, message=message)
            return aiohttp.web.json_response(body, status=code)

        if name is None and method == "GET":
            items = [copy.deepcopy(ns) for ns in self.namespaces.values()]
            return aiohttp.web.json_response({"kind": "NamespaceList", "items": items})
        if name is None and method == "POST":
            body = await raw_request.json()
            wanted = str((body.get("metadata") or {}).get("name") or "")
            if not wanted:
                return answer(422, "Invalid", "metadata.name: Required value")
            if wanted in self.namespaces:
                return answer(409, "AlreadyExists", f'namespaces "{wanted}" already exists')
            async with self._write_lock:
                body.update(apiVersion="v1", kind="Namespace", status={"phase": "Active"})
                self.namespaces[wanted] = self.stamp_new(body, None)
            return aiohttp.web.json_response(self.namespaces[wanted], status=201)
        if name is None or name not in self.namespaces:
            return answer(404, "NotFound", f'namespaces "{name}" not found')
        if method == "GET":
            return aiohttp.web.json_response(self.namespaces[name])
        if method == "DELETE":
            async with self._write_lock:
                gone = self.namespaces.pop(name)
                for (_, namespace, _), obj in list(self.objects.items()):
                    if namespace == name and not obj.deleted:
                        obj.delete()
            gone["status"] = {"phase": "Terminating"}
            return aiohttp.web.json_response(gone)
        return answer(405, "MethodNotAllowed", f"{method} on a namespace: not emulated")

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
        # kmock logs every request and scans the whole log to route each new one: quadratic, a
        # 1000-request test took minutes. Only the request being served is kept (nothing here
        # asserts on kmock's log; ``writes`` and ``write_times`` are the emulator's own).
        del self._requests[:-1]
        method = str(request.method.value).upper()
        if request.resource is None:
            return await super()._handle(request)
        kind = _served(request.resource)
        if request.subresource not in (None, "status") or (
            request.subresource == "status" and not kind.status
        ):
            raise _status(404, "NotFound", "the server could not find the requested resource")
        if method not in _WRITES:
            return await super()._handle(request)
        async with self._write_lock:
            self.writes.append((method, request.url.path))
            self.write_times.append((time.monotonic(), method, request.url.path))
            hooks, self._once = [*self._once, *self._always], []
            for hook in hooks:
                result = hook(request)
                if inspect.isawaitable(result):
                    await result
            if request.action == kmock.action.CREATE and isinstance(request.data, dict):
                return await self._create(request, kind)
            if method in ("PUT", "PATCH") and request.name is not None:
                return await self._update(request, kind)
            if method == "DELETE" and request.name is not None:
                self._check_delete(request)
            return await super()._handle(request)

    async def _serve_list(self, request: kmock.Request) -> Any:
        """A list of a served type with no object yet is empty, as on the apiserver (kmock
        answers 404 for a type it has not seen an object of; ``_handle`` has already answered
        404 for a type the emulated server does not serve)."""
        try:
            return await super()._serve_list(request)
        except kmock.KubernetesResourceNotFoundError:
            return {"metadata": {"resourceVersion": str(self.revision)}, "items": []}

    async def _create(
        self, request: kmock.Request, kind: kubeschema.ResourceType
    ) -> aiohttp.web.StreamResponse:
        body = request.data
        body.setdefault("apiVersion", kind.api_version)
        body.setdefault("kind", kind.kind)
        if kind.status:
            body.pop("status", None)  # a create ignores status where status is a subresource
        self.stamp_new(body, request.namespace)
        _validate(kind, body)
        response = await super()._handle(request)
        if response.status == 200 and not response.prepared:
            response.set_status(201)  # the client decodes only a 201 for a create
        return response

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

    def _check_delete(self, request: kmock.Request) -> None:
        """A delete's ``preconditions`` (DeleteOptions): 409 when they no longer hold."""
        body = request.data if isinstance(request.data, dict) else {}
        wanted = (body.get("preconditions") or {}).get("resourceVersion")
        if self._stored(request).raw and wanted is not None:
            self._check_version(request, self._stored(request).raw, wanted)

    def _patched(self, request: kmock.Request, stored: dict[str, Any]) -> dict[str, Any]:
        """A PATCH applied to a copy of ``stored`` (merge patch semantics, RFC 7386)."""
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
        self._check_version(
            request, stored, (request.data.get("metadata") or {}).get("resourceVersion")
        )
        patched: dict[str, Any] = merge_patch(copy.deepcopy(stored), request.data)
        return patched

    def _replacement(self, request: kmock.Request, stored: dict[str, Any]) -> dict[str, Any]:
        """A PUT's body, checked as the apiserver checks a replace."""
        body = request.data
        if not isinstance(body, dict):
            raise _status(400, "BadRequest", "the body of a replace must be an object")
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
        return copy.deepcopy(body)

    async def _update(
        self, request: kmock.Request, kind: kubeschema.ResourceType
    ) -> aiohttp.web.StreamResponse:
        """A replace or a patch, of the object or of its status; validated before it is stored."""
        obj = self._stored(request)
        stored = obj.raw
        method = str(request.method.value).upper()
        new = (
            self._replacement(request, stored)
            if method == "PUT"
            else self._patched(request, stored)
        )
        if request.subresource == "status":  # only status changes; the rest is the stored one
            status = new.get("status")
            new = copy.deepcopy(stored)
            new.pop("status", None)
            if status is not None:
                new["status"] = status
        elif kind.status:  # a write to the object leaves status as it was
            new.pop("status", None)
            if "status" in stored:
                new["status"] = copy.deepcopy(stored["status"])
        old_meta = stored.get("metadata", {})
        new_meta = new.setdefault("metadata", {})
        for kept in ("uid", "creationTimestamp", "namespace", "name"):
            if kept in old_meta:
                new_meta[kept] = old_meta[kept]
        new.setdefault("apiVersion", kind.api_version)
        new.setdefault("kind", kind.kind)
        generation = int(old_meta.get("generation", 1))
        new_meta["generation"] = generation + (new.get("spec") != stored.get("spec"))
        _validate(kind, new)
        new_meta["resourceVersion"] = self.next_revision()
        obj.history.append(new)
        assert request.resource is not None
        await self._buses[request.resource].put({"type": "MODIFIED", "object": new})
        return aiohttp.web.json_response(new)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge, ``null`` removes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def _served(resource: kmock.resource) -> kubeschema.ResourceType:
    """The resource's type, or 404 as from a server without it (no CRD, no such API)."""
    found = kubeschema.lookup(resource.group or "", resource.version or "", resource.plural or "")
    if found is None:
        raise _status(404, "NotFound", "the server could not find the requested resource")
    return found


def _validate(kind: kubeschema.ResourceType, obj: dict[str, Any]) -> None:
    """422 Invalid, with the apiserver's Status body, for an object that breaks its schema."""
    causes = kind.causes(obj)
    if not causes:
        return
    name = obj.get("metadata", {}).get("name", "")
    listed = ", ".join(f"{c.field}: {c.message}" for c in causes)
    raise kmock.KubernetesError(
        status=422,
        reason="Invalid",
        message=f'{kind.qualified} "{name}" is invalid: [{listed}]'
        if len(causes) > 1
        else f'{kind.qualified} "{name}" is invalid: {listed}',
        details={
            "name": name,
            "group": kind.group,
            "kind": kind.kind,
            "causes": [
                {"reason": c.reason, "message": c.message, "field": c.field} for c in causes
            ],
        },
    )


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
        """Store ``obj`` as if it had been created (metadata stamped, validated as a create
        is: a seed the apiserver would refuse is a broken test); returns the stored copy."""
        kind = _served(resource)
        stored = self.emulator.stamp_new(copy.deepcopy(obj), namespace)
        stored.setdefault("apiVersion", kind.api_version)
        stored.setdefault("kind", kind.kind)
        _validate(kind, stored)
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


class Threaded:
    """``cluster()`` on a loop of its own in a thread (see ``threaded``)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.cluster: Cluster | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(
            target=self.loop.run_until_complete, args=(self._main(),), daemon=True
        )

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        async with cluster() as c:
            self.cluster = c
            self._ready.set()
            await self._stop.wait()

    @property
    def c(self) -> Cluster:
        assert self.cluster is not None
        return self.cluster

    def call(self, fn: Callable[[], Any], timeout: float = 10.0) -> Any:
        """``fn()`` on the emulator's loop (so it never races a request being served)."""

        async def wrapped() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(wrapped(), self.loop).result(timeout)

    def kubeconfig(self, path: Path) -> Path:
        """A kubeconfig whose current context is the emulator (``kubeconfig``)."""
        return kubeconfig(path, self.c.url)


def kubeconfig(path: Path, url: str) -> Path:
    """Write a kubeconfig whose current context is the emulator at ``url`` (plain HTTP, no
    credentials: the emulator checks none) to ``path``."""
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "emulator", "cluster": {"server": url}}],
                "users": [{"name": "test", "user": {}}],
                "contexts": [
                    {"name": "emulator", "context": {"cluster": "emulator", "user": "test"}}
                ],
                "current-context": "emulator",
            }
        )
    )
    return path


@contextmanager
def threaded() -> Iterator[Threaded]:
    """The emulator on a loop of its own, in a thread: for tests whose calls block (a
    synchronous store, a subprocess and the HTTP calls to it). Stopped on exit."""
    t = Threaded()
    t._thread.start()
    if not t._ready.wait(20):
        raise RuntimeError("the emulator did not start within 20 s")
    try:
        yield t
    finally:
        assert t._stop is not None
        t.loop.call_soon_threadsafe(t._stop.set)
        t._thread.join(20)
        if not t._thread.is_alive():
            t.loop.close()


# --------------------------------------------------------------------------- CRD schemas

crd_schema = kubeschema.crd_schema
validator = kubeschema.validator
schema_errors = kubeschema.schema_errors
