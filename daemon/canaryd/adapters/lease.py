"""Leader election on a ``coordination.k8s.io/v1`` Lease (``state: {backend: kubernetes}``).

Several canaryd replicas share one state on Kubernetes objects; only one of them may act. They
elect it the way client-go's ``leaderelection`` package does (``tryAcquireOrRenew`` with the
``LeaseLock`` resource lock), so a ``kubectl get lease`` reads the same fields a Go controller
writes:

- ``spec.holderIdentity``: who leads (``identity()``: the pod's name, else the host name and
  the process id); ``spec.leaseDurationSeconds``: how long the others wait, after they last
  saw the record change, before they may take it; ``spec.acquireTime`` when the holder took
  it, ``spec.renewTime`` its last renewal (MicroTime, RFC 3339 with microseconds);
  ``spec.leaseTransitions``: how many times it changed hands.
- Every write is a create (when there is no Lease yet) or a **replace carrying the
  resourceVersion read just before**: two candidates that both see an expired lease both try,
  the API server lets exactly one through and answers the other 409 Conflict.
- Expiry is judged on **this process's monotonic clock**, never on the ``renewTime`` written by
  another host's clock: a candidate remembers when it last saw the record change
  (``observed_at``) and takes the Lease only once ``leaseDurationSeconds`` have passed since,
  with no change in between. Clock skew between hosts cannot shorten a lease.
- ``valid_until`` is what fencing reads: the monotonic start of the last successful acquire or
  renew plus ``renew_deadline``. Every other replica's ``observed_at`` of that write is later
  than its start, so none can take over before ``start + lease_duration``; a leader that acts
  only while ``now < valid_until`` stops ``lease_duration - renew_deadline`` seconds (5 s by
  default) before anyone else may start.
- The annotation ``canaryd.io/api-url`` carries the holder's API address (``advertise_url``):
  a follower forwards state-changing requests there.

``release`` (at a clean shutdown) gives the Lease up as client-go's ``ReleaseOnCancel`` does:
holder cleared, ``leaseDurationSeconds: 1``, so the next replica takes over within a second
instead of a whole lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import structlog
from kubernetes_asyncio import client

from canaryd.adapters.kube import KubeClient, KubeUnavailable
from canaryd.ports import Leader

API_URL_ANNOTATION = "canaryd.io/api-url"
log = structlog.get_logger("canaryd.lease")


def identity() -> str:
    """This process's name in the Lease: ``$POD_NAME`` (the downward API) in a pod, else the
    host name and the pid, so two daemons on one host differ.

    A pod runs one canaryd, so its name alone is unique among the live candidates, and a
    container restarted in the same pod (its process killed, OOM, a crash) finds itself the
    holder and renews at once instead of waiting out its own dead predecessor's lease."""
    pod = os.environ.get("POD_NAME")
    return pod if pod else f"{socket.gethostname()}_{os.getpid()}"


def micro_time(seconds: float) -> str:
    """A Kubernetes MicroTime: RFC 3339, UTC, six fraction digits (``...T12:00:00.000000Z``)."""
    moment = datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True, slots=True)
class LeaseTiming:
    """client-go's three durations, in seconds (``state.lease_duration``, ``renew_deadline``,
    ``retry_period``): the Lease is written with ``lease_duration`` (whole seconds, as the
    field is an integer); a leader acts while its last renewal began less than
    ``renew_deadline`` ago; every replica tries (or renews) every ``retry_period``."""

    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    @property
    def request_timeout(self) -> float:
        """One API call's bound: a hung call must not hold the loop that renews."""
        return max(self.retry_period, self.renew_deadline / 2)


class LeaseElector:
    """One candidate for one Lease (see the module doc). ``attempt`` is one round of
    client-go's ``tryAcquireOrRenew``; the runtime (``runtime.leadership``) calls it every
    ``retry_period`` and reads ``valid_until`` and ``leader``."""

    def __init__(
        self,
        kube: KubeClient,
        namespace: str,
        name: str,
        *,
        identity: str,
        timing: LeaseTiming | None = None,
        api_url: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.kube = kube
        self.namespace, self.name = namespace, name
        self.identity = identity
        self.timing = timing or LeaseTiming()
        self.api_url = api_url
        self._clock, self._wall = clock, wall
        self._observed: dict[str, Any] | None = None  # the Lease's spec and annotation, as read
        self._observed_at = float("-inf")  # monotonic: when the record last changed, for us
        self.valid_until = float("-inf")  # monotonic: leadership holds while clock() < this

    @property
    def retry_period(self) -> float:
        return self.timing.retry_period

    # ---------------------------------------------------------------- what others read

    def leading(self) -> bool:
        return self._clock() < self.valid_until

    def leader(self) -> Leader | None:
        """The holder as last seen, while its lease has not expired for us; None: nobody."""
        record = self._observed
        if record is None or not record.get("holder"):
            return None
        if self._observed_at + record["duration"] <= self._clock():
            return None
        return Leader(str(record["holder"]), record.get("url"))

    # ---------------------------------------------------------------- one round

    async def attempt(self) -> bool:
        """Acquire or renew once; True when this candidate holds the Lease now (and
        ``valid_until`` moved on). Errors talking to the API server are raised (the caller logs
        them and tries again); a lost race (409) is just False."""
        started = self._clock()
        api = await self._api()
        timeout = self.timing.request_timeout
        leases: Any = client.CoordinationV1Api(api)  # bodies are dicts: raw JSON in and out
        status, lease = await self._call(
            leases.read_namespaced_lease(
                self.name, self.namespace, _preload_content=False, _request_timeout=timeout
            )
        )
        now = self._wall()
        if status == 404:
            body = self._body(None, now)
            status, lease = await self._call(
                leases.create_namespaced_lease(
                    self.namespace, body, _preload_content=False, _request_timeout=timeout
                )
            )
            return self._written(status, lease, started)
        self._observe(lease)
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        if holder and holder != self.identity and self.leader() is not None:
            return False  # held by another, not expired
        body = self._body(lease, now)
        status, written = await self._call(
            leases.replace_namespaced_lease(
                self.name, self.namespace, body, _preload_content=False, _request_timeout=timeout
            )
        )
        return self._written(status, written, started)

    async def release(self) -> None:
        """Give the Lease up if this candidate holds it (a clean shutdown): holder cleared and
        a one-second duration, so the next replica need not wait a whole lease. Best effort:
        the lease expires by itself anyway."""
        if not self.leading():
            return
        self.valid_until = float("-inf")  # nothing acts on our behalf from here
        with contextlib.suppress(Exception):
            api = await self._api()
            leases: Any = client.CoordinationV1Api(api)  # bodies are dicts: raw JSON in and out
            status, lease = await self._call(
                leases.read_namespaced_lease(
                    self.name, self.namespace, _preload_content=False, _request_timeout=2.0
                )
            )
            spec = lease.get("spec") or {}
            if status != 200 or spec.get("holderIdentity") != self.identity:
                return
            body = self._body(lease, self._wall())
            body["spec"].update(holderIdentity="", leaseDurationSeconds=1)
            body["metadata"]["annotations"].pop(API_URL_ANNOTATION, None)
            await self._call(
                leases.replace_namespaced_lease(
                    self.name, self.namespace, body, _preload_content=False, _request_timeout=2.0
                )
            )
            log.info("lease_released", lease=f"{self.namespace}/{self.name}")

    # ---------------------------------------------------------------- helpers

    def _body(self, lease: dict[str, Any] | None, now: float) -> dict[str, Any]:
        """The Lease this candidate writes: a fresh one, or ``lease`` taken over or renewed
        (its resourceVersion kept: the replace's precondition)."""
        old_meta = (lease or {}).get("metadata") or {}
        old = (lease or {}).get("spec") or {}
        ours = old.get("holderIdentity") == self.identity
        annotations = dict(old_meta.get("annotations") or {})
        if self.api_url:
            annotations[API_URL_ANNOTATION] = self.api_url
        else:
            annotations.pop(API_URL_ANNOTATION, None)
        meta: dict[str, Any] = {
            "name": self.name,
            "namespace": self.namespace,
            "annotations": annotations,
        }
        for kept in ("resourceVersion", "labels", "uid"):
            if kept in old_meta:
                meta[kept] = old_meta[kept]
        transitions = int(old.get("leaseTransitions") or 0)
        if lease is not None and not ours and old.get("holderIdentity"):
            transitions += 1  # it changes hands (client-go counts only a real holder's loss)
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": meta,
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": max(1, round(self.timing.lease_duration)),
                "acquireTime": old.get("acquireTime") if ours else micro_time(now),
                "renewTime": micro_time(now),
                "leaseTransitions": transitions,
            },
        }

    def _observe(self, lease: dict[str, Any]) -> None:
        """Remember the record; ``observed_at`` moves only when it changed (client-go)."""
        spec = lease.get("spec") or {}
        annotations = (lease.get("metadata") or {}).get("annotations") or {}
        record = {
            "holder": spec.get("holderIdentity") or "",
            "duration": float(spec.get("leaseDurationSeconds") or self.timing.lease_duration),
            "renew": spec.get("renewTime"),
            "acquire": spec.get("acquireTime"),
            "transitions": spec.get("leaseTransitions"),
            "url": annotations.get(API_URL_ANNOTATION),
        }
        if record != self._observed:
            self._observed, self._observed_at = record, self._clock()

    def _written(self, status: int, lease: dict[str, Any], started: float) -> bool:
        if status == 409:  # another candidate wrote first: it leads (we learn who next round)
            return False
        if not 200 <= status < 300:
            message = lease.get("message") or lease.get("reason") or status
            raise LeaseUnavailable(f"lease {self.namespace}/{self.name}: {status} {message}")
        was = self.leading()
        self._observe(lease)
        self.valid_until = started + self.timing.renew_deadline
        if not was:
            log.info(
                "lease_acquired",
                lease=f"{self.namespace}/{self.name}",
                identity=self.identity,
                transitions=(lease.get("spec") or {}).get("leaseTransitions"),
            )
        return True

    async def _api(self) -> client.ApiClient:
        try:
            return await self.kube.api()
        except KubeUnavailable as exc:
            raise LeaseUnavailable(f"lease {self.namespace}/{self.name}: {exc}") from exc

    async def _call(self, call: Any) -> tuple[int, dict[str, Any]]:
        """(status, body) of one call; 2xx, 404 and 409 are answers, the rest raises."""
        try:
            async with asyncio.timeout(self.timing.request_timeout):
                response = await call
                async with response:
                    status = int(response.status)
                    text = await response.text()
        except client.ApiException as exc:
            status, text = int(exc.status or 0), str(exc.body or exc.reason or "")
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            cause = str(exc) or type(exc).__name__
            raise LeaseUnavailable(f"lease {self.namespace}/{self.name}: {cause}") from exc
        try:
            body = json.loads(text) if text else {}
        except ValueError:
            body = {"message": text[:200]}
        if not isinstance(body, dict):
            body = {}
        if 200 <= status < 300 or status in (404, 409):
            return status, body
        message = body.get("message") or body.get("reason") or text[:200]
        raise LeaseUnavailable(f"lease {self.namespace}/{self.name}: {status} {message}")


class LeaseUnavailable(Exception):
    """The Lease could not be read or written just now (no API server, an error answer, a
    timeout): this round is lost; a leader that keeps losing rounds stops at its renew
    deadline."""
