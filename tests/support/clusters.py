"""One cluster handle for the real-cluster suite (``tests/realcluster/``): the Kubernetes cluster
of ``KUBECONFIG``, or the emulator (``support.kube``) with the controllers a cluster would run.

The same scenarios run against either, so the suite can be proven here, where no cluster runs::

    CANARYD_REALCLUSTER=emulator python3 -m pytest -m realcluster tests/realcluster   # emulator
    KUBECONFIG=~/.kube/config python3 -m pytest -m realcluster tests/realcluster      # a cluster

or, the emulator standing in for a cluster behind a kubeconfig (the real-cluster path: the
kubeconfig loaded, namespaces created and deleted through the API, one server for all tests)::

    python3 tests/realcluster/run_against_emulator.py

``CANARYD_REALCLUSTER_CONTEXT`` picks a kubeconfig context (default: its current one) and
``CANARYD_REALCLUSTER_TIMEOUT`` how long a scenario waits for a controller (default 180 s on a
cluster, where pods are pulled and started; 10 s on the emulator). Selected without
``KUBECONFIG`` and without ``CANARYD_REALCLUSTER=emulator``, every scenario fails saying so:
a run that was asked for never passes by doing nothing.

Everything a scenario does goes through the Kubernetes API over HTTP with the real
``kubernetes_asyncio`` client, on both: ``seed`` creates (POST), ``get`` reads, ``replace``
edits as a person's ``kubectl edit`` would (read, change, PUT with the resourceVersion read).
What differs is only what the emulator does not have:

- **the namespace**: on a cluster each scenario gets its own, ``canaryd-rc-<random>`` (labelled
  ``canaryd.io/realcluster-test=true``, so a leftover is easy to find), created before and
  deleted after, whatever the outcome. With ``CANARYD_REALCLUSTER=emulator`` the namespace is
  only a name (the emulator stores objects in any namespace) and the emulator is thrown away
  whole after each scenario.
- **the controllers**: a cluster runs its own Deployment controller, and the Argo Rollouts
  controller if installed; on the emulator a background task (``play_controllers``) plays
  both, every 20 ms: each Deployment whose status is behind its generation is rolled out
  (``kube.roll_out``, all replicas ready), and each Rollout is reconciled by the fake Argo
  controller (``fakeargo.FakeArgo``, through the status subresource). Scenarios only wait
  for what a real controller really does (a Deployment's status catching up, a Rollout's
  steps), never for a field only the fakes write.
- **the CRDs**: ``require`` lists the resource in the scenario's namespace; a 404 (the type is
  not served: no CRD) fails the scenario naming the CRD and how to install it. The emulator
  serves the CRDs it has in ``tests/upstream`` (``support.kubeschema``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import kmock
import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from canaryd.adapters.kube import load_configuration
from canaryd.config.kubeaccess import KubeAccess
from support import fakeargo, kube

MODE_ENV = "CANARYD_REALCLUSTER"  # "emulator": the emulator plays the cluster
CONTEXT_ENV = "CANARYD_REALCLUSTER_CONTEXT"
TIMEOUT_ENV = "CANARYD_REALCLUSTER_TIMEOUT"
LABEL = "canaryd.io/realcluster-test"
EMULATOR_TIMEOUT = 10.0
CLUSTER_TIMEOUT = 180.0
CONTROLLER_ANNOTATIONS = "deployment.kubernetes.io/"  # written by the Deployment controller

T = TypeVar("T")

# What a scenario needs installed, by resource type: the CRD's name and where it comes from.
CRDS: dict[kmock.resource, tuple[str, str]] = {
    kube.HTTPROUTES: (
        "httproutes.gateway.networking.k8s.io",
        "the Gateway API CRDs, standard channel (https://gateway-api.sigs.k8s.io/guides/)",
    ),
    kube.TRAEFIKSERVICES: (
        "traefikservices.traefik.io",
        "Traefik's Kubernetes CRDs (https://doc.traefik.io/traefik/providers/kubernetes-crd/)",
    ),
    kube.INGRESSROUTES: (
        "ingressroutes.traefik.io",
        "Traefik's Kubernetes CRDs (https://doc.traefik.io/traefik/providers/kubernetes-crd/)",
    ),
    kube.ROLLOUTS: (
        "rollouts.argoproj.io",
        "Argo Rollouts, its CRDs and its controller "
        "(https://argo-rollouts.readthedocs.io/en/stable/installation/)",
    ),
}


@dataclass
class Cluster:
    """A throwaway namespace on a cluster or on the emulator, and a client for it."""

    api: client.ApiClient
    namespace: str
    emulated: bool
    timeout: float  # how long to wait for a controller

    def _objects(self) -> client.CustomObjectsApi:
        # Every resource a scenario touches has a group (apps, networking.k8s.io, the CRDs'),
        # so the custom objects API reaches them all, built-in ones included.
        return client.CustomObjectsApi(self.api)

    @staticmethod
    def _where(resource: kmock.resource) -> tuple[str, str, str]:
        assert resource.group and resource.version and resource.plural, resource
        return resource.group, resource.version, resource.plural

    async def require(self, *resources: kmock.resource) -> None:
        """Fail naming the CRD of the first of ``resources`` the cluster does not serve."""
        for resource in resources:
            group, version, plural = self._where(resource)
            try:
                await self._objects().list_namespaced_custom_object(
                    group, version, self.namespace, plural, limit=1
                )
            except ApiException as exc:
                if exc.status != 404:
                    raise
                crd, install = CRDS.get(resource, (f"{plural}.{group}", "its CRD"))
                pytest.fail(
                    f"the cluster does not serve {group}/{version} {plural}: CRD {crd} is "
                    f"missing; install {install}",
                    pytrace=False,
                )

    async def seed(self, resource: kmock.resource, obj: dict[str, Any]) -> dict[str, Any]:
        """Create ``obj`` in the namespace (as ``kubectl create``); the object as stored."""
        group, version, plural = self._where(resource)
        body = {**obj, "metadata": {**obj["metadata"], "namespace": self.namespace}}
        created: dict[str, Any] = await self._objects().create_namespaced_custom_object(
            group, version, self.namespace, plural, body
        )
        return created

    async def get(self, resource: kmock.resource, name: str) -> dict[str, Any] | None:
        """The object as stored, or None when there is none."""
        group, version, plural = self._where(resource)
        try:
            found: dict[str, Any] = await self._objects().get_namespaced_custom_object(
                group, version, self.namespace, plural, name
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return found

    async def replace(
        self, resource: kmock.resource, name: str, edit: Callable[[dict[str, Any]], None]
    ) -> dict[str, Any]:
        """A person's ``kubectl edit``: read, ``edit`` in place, replace (one retry on 409)."""
        group, version, plural = self._where(resource)
        for attempt in range(2):
            current = await self.get(resource, name)
            assert current is not None, f"{plural} {self.namespace}/{name} is not there to edit"
            edit(current)
            try:
                replaced: dict[str, Any] = await self._objects().replace_namespaced_custom_object(
                    group, version, self.namespace, plural, name, current
                )
            except ApiException as exc:
                if exc.status != 409 or attempt:
                    raise
                continue
            return replaced
        raise AssertionError("unreachable")

    async def footprint(self, *objects: tuple[kmock.resource, str]) -> Hashable:
        """A value that changes when one of ``objects`` is created, deleted or written, but not
        when a controller writes its status (which a cluster does at any time): each one's
        uid, generation (bumped by a spec change), labels and annotations, less the ones the
        Deployment controller keeps (``deployment.kubernetes.io/revision``)."""
        seen: list[Hashable] = []
        for resource, name in objects:
            found = await self.get(resource, name)
            if found is None:
                seen.append(None)
                continue
            meta = found["metadata"]
            seen.append(
                (
                    meta.get("uid"),
                    meta.get("generation"),
                    tuple(sorted((meta.get("labels") or {}).items())),
                    tuple(
                        sorted(
                            (key, value)
                            for key, value in (meta.get("annotations") or {}).items()
                            if not key.startswith(CONTROLLER_ANNOTATIONS)
                        )
                    ),
                )
            )
        return tuple(seen)

    async def until(
        self, read: Callable[[], Awaitable[T]], wanted: T, what: str, hint: str = ""
    ) -> T:
        """Poll ``read`` until it returns ``wanted``; fail naming ``what`` after ``timeout``."""
        deadline = time.monotonic() + self.timeout
        seen = await read()
        while seen != wanted:
            if time.monotonic() > deadline:
                pytest.fail(
                    f"{what}: still {seen!r} after {self.timeout:g}s, wanted {wanted!r}"
                    + (f" ({hint})" if hint and not self.emulated else ""),
                    pytrace=False,
                )
            await asyncio.sleep(0.02 if self.emulated else 0.5)
            seen = await read()
        return seen


def _timeout(default: float) -> float:
    text = os.environ.get(TIMEOUT_ENV)
    return float(text) if text else default


async def play_controllers(c: kube.Cluster) -> None:
    """Play the Deployment controller and the Argo Rollouts controller, until cancelled."""
    while True:
        for resource, namespace, name in list(c.emulator.objects):
            if resource == kube.DEPLOYMENTS:
                found = c.get(resource, namespace, name)
                if found is None:
                    continue
                generation = found["metadata"].get("generation")
                if (found.get("status") or {}).get("observedGeneration") != generation:
                    kube.roll_out(c, namespace, name)
            elif resource == kube.ROLLOUTS:
                await fakeargo.FakeArgo(c, namespace).reconcile(name)
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def emulated() -> AsyncIterator[Cluster]:
    """The emulator, its controllers running, and a namespace of its own."""
    async with kube.cluster() as c:
        task = asyncio.create_task(play_controllers(c))
        try:
            namespace = f"canaryd-rc-{uuid.uuid4().hex[:8]}"
            yield Cluster(c.api, namespace, emulated=True, timeout=_timeout(EMULATOR_TIMEOUT))
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


@contextlib.asynccontextmanager
async def real(kubeconfig: str, context: str | None) -> AsyncIterator[Cluster]:
    """The cluster of ``kubeconfig`` (at ``context``), and a namespace created for the scenario
    and deleted after it."""
    access = KubeAccess(kubeconfig=Path(kubeconfig), context=context)
    api = client.ApiClient(await load_configuration(access))
    core = client.CoreV1Api(api)
    namespace = f"canaryd-rc-{uuid.uuid4().hex[:8]}"
    try:
        await core.create_namespace({"metadata": {"name": namespace, "labels": {LABEL: "true"}}})
        try:
            yield Cluster(api, namespace, emulated=False, timeout=_timeout(CLUSTER_TIMEOUT))
        finally:
            await core.delete_namespace(namespace)
    finally:
        await api.close()


@contextlib.asynccontextmanager
async def cluster() -> AsyncIterator[Cluster]:
    """The emulator with ``CANARYD_REALCLUSTER=emulator``, else the cluster of ``KUBECONFIG``
    (``CANARYD_REALCLUSTER_CONTEXT``: its context); fails when neither is given."""
    if os.environ.get(MODE_ENV) == "emulator":
        async with emulated() as c:
            yield c
        return
    kubeconfig = os.environ.get("KUBECONFIG")
    if not kubeconfig:
        pytest.fail(
            "the realcluster tests need a cluster: set KUBECONFIG (and optionally "
            f"{CONTEXT_ENV}) to run them against one, or {MODE_ENV}=emulator to run them "
            "against the emulator; see tests/README.md",
            pytrace=False,
        )
    async with real(kubeconfig, os.environ.get(CONTEXT_ENV) or None) as c:
        yield c
