"""The state store in the cluster (SPEC §7, ``state: {backend: kubernetes, namespace: NS}``):
rollouts, decisions, measurements, Alertmanager's alerts and the audit log in ConfigMaps.

Why ConfigMaps of canaryd's own, and not a custom resource: nothing to install before the
daemon starts (no CRD, no CRD upgrade to order against a canaryd upgrade), and the RBAC is one
resource in one namespace (``configmaps``: ``get``, ``list``, ``create``, ``update``; nothing is
ever deleted). Every object carries ``app.kubernetes.io/managed-by: canaryd`` and
``canaryd.io/state`` (which of the three it is); opening lists exactly those.

The objects, each a ConfigMap whose values are JSON Lines (one record per line, so a write
appends text and ``kubectl get -o yaml`` stays readable):

* ``canaryd-target-<slug>-<hash>``, one per target: its rollouts (the codec's record, as the
  SQLite store keeps it), their decisions and measurements. Target names allow capitals,
  ``_`` and any length, DNS names do not: the slug is the name made DNS-safe and cut short,
  the hash (of the name itself, kept in the object's ``target`` key) keeps two names apart.
* ``canaryd-alerts``: the alert journal, one line per webhook commit, as ``ALERT_JOURNAL``.
* ``canaryd-audit``: the audit log.

The records are the SQLite store's: the same codec (``core.codec``), the same decision and
measurement rows (``schema.commit_rows``), the same ``storable`` text, so both stores keep the
same data and answer the same reads.

How it keeps SPEC §7's promises:

* Durable: ``commit`` returns once the API server acknowledged the replace (etcd has the
  write). A write that fails or whose answer never comes raises ``StoreUnavailable`` and the
  cache keeps what the cluster last acknowledged.
* One writer: every write is a replace carrying the ``metadata.resourceVersion`` read (a create
  for a new object). A 409 on a target's object means it changed since it was read: it is
  re-read and, if the last write in it is one of this store's whose answer never came (each
  write carries a token in the object's ``writer`` key), adopted and the commit retried on
  top of it (the runtime, told the unanswered commit failed, acted on nothing and re-decided
  the same: the record converges, the history may hold that pass twice). Otherwise another
  writer (another canaryd, ``kubectl edit``) changed it: ``StateLocked`` is raised
  (permanent: two canaryds on one state is for leader election to settle, not a retry) and
  the cache takes the cluster's object. The alert and audit journals are append-only: on a
  409 they are re-read, this write's lines appended to what is there and written again, at
  most ``RETRIES`` times.
* Bounded: etcd refuses objects over 1 MiB. Each object is kept under ``BUDGET`` (512 KiB): a
  target's object drops, oldest first, the measurements, then the decisions, then the records
  of finished rollouts (never the latest rollout's record, never an active one), then the
  oldest measurements and decisions of the rollouts still there, down to ``LOW_WATER`` of the
  budget so that it does not compact on every commit. The alert journal folds its older half
  as ``compact_alerts`` does (what still fires is kept); the audit log drops its oldest rows.
  What is dropped is gone: this store keeps recent history, the SQLite one keeps all of it.
* Reads come from memory: while this store leads it is the only writer, and every write it
  makes updates the cache only once acknowledged. A restart lists the objects again and
  rebuilds everything from the cluster.

The port is synchronous (SQLite's shape) and the runtime calls it through
``asyncio.to_thread``; kubernetes_asyncio is not. The store runs its own event loop in a thread
of its own, with its own ``KubeClient``, and each call waits for its coroutine there
(``run_coroutine_threadsafe(...).result(TIMEOUT)``); a lock serializes the calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar, cast

import aiohttp
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from canaryd.adapters.kube import KubeClient, KubeUnavailable
from canaryd.adapters.store.lock import WriteHealth
from canaryd.adapters.store.schema import (
    UnstorableValue,
    commit_rows,
    compact_json,
    encoding,
    firing_of,
    json_storable,
    optional_storable,
    optional_time,
    storable,
)
from canaryd.config.kubeaccess import KubeAccess
from canaryd.core import alertbook
from canaryd.core.codec import rollout_from_dict, rollout_to_dict
from canaryd.core.errors import CanarydError
from canaryd.core.model import Action, Alert, AlertStatus, Measurement, Rollout
from canaryd.ports import (
    AuditRecord,
    CorruptState,
    DecisionRecord,
    MeasurementRecord,
    PreparedAlerts,
    RolloutConflict,
    StateLocked,
    StateStore,
    StoreUnavailable,
)

T = TypeVar("T")

SCHEMA = "1"  # the layout of the objects below; a newer one is refused, never rewritten
BUDGET = 512 * 1024  # bytes of data per object: half etcd's 1 MiB limit
LOW_WATER = 0.75  # a compaction goes down to this share of the budget
TIMEOUT = 15.0  # seconds one call may wait for the API server
RETRIES = 5  # writes of an append-only journal after a 409, before giving up
MANAGED = {"app.kubernetes.io/managed-by": "canaryd"}
ROLE_LABEL = "canaryd.io/state"
SELECTOR = "app.kubernetes.io/managed-by=canaryd,canaryd.io/state"
ALERTS, AUDIT = "canaryd-alerts", "canaryd-audit"
_UNSAFE = re.compile(r"[^a-z0-9]+")


def object_name(target: str) -> str:
    """The ConfigMap of ``target``: a DNS label (<= 63 characters) that names it apart from
    every other target, whatever characters the name has."""
    digest = hashlib.sha256(target.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    slug = _UNSAFE.sub("-", target.lower()).strip("-")[:36].strip("-")
    return f"canaryd-target-{slug}-{digest}" if slug else f"canaryd-target-{digest}"


@dataclass
class _Doc:
    """One ConfigMap as the cache holds it: its JSON Lines per key, and the scalars."""

    name: str
    role: str
    rv: str | None = None  # None: not in the cluster yet (the first write creates it)
    lines: dict[str, list[str]] = field(default_factory=dict)
    scalars: dict[str, str] = field(default_factory=dict)
    writer: str = ""  # the token of the write that stored it (``KubeStore._put``)

    def data(self) -> dict[str, str]:
        data = dict(self.scalars)
        data["schema"] = SCHEMA
        data["writer"] = self.writer
        for key, lines in self.lines.items():
            data[key] = "".join(line + "\n" for line in lines)
        return data

    def size(self) -> int:
        return sum(len(k) + len(v.encode("utf-8")) for k, v in self.data().items())

    def copy(self) -> _Doc:
        return _Doc(
            self.name,
            self.role,
            self.rv,
            {k: list(v) for k, v in self.lines.items()},
            dict(self.scalars),
            self.writer,
        )


def _line_size(line: str) -> int:
    return len(line.encode("utf-8")) + 1


class KubeStore:
    """``StateStore`` on ConfigMaps of one namespace; open it once per process (and, with
    several replicas, only in the leader)."""

    def __init__(
        self,
        namespace: str,
        access: KubeAccess | None = None,
        *,
        api_client: client.ApiClient | None = None,
        budget: int = BUDGET,
        timeout: float = TIMEOUT,
    ) -> None:
        """List and read every object of ours in ``namespace`` (refusing damage now, not
        mid-rollout). Raises ``StoreUnavailable`` (no API server, or it failed) or
        ``CorruptState`` (an object canaryd cannot read), in one line naming the namespace."""
        self.namespace = namespace
        self.path = f"kubernetes namespace {namespace}"  # what messages name, as SQLite's path
        self.budget = budget
        self._timeout = timeout
        self._id = uuid.uuid4().hex  # this store's writes, told apart from another writer's
        self._writes = 0
        self._unanswered: set[str] = set()  # tokens of writes whose answer never came
        self._lock = threading.RLock()
        self._closed = False
        self._since: float | None = None  # when writes started failing
        self._health = WriteHealth(self.path, self._probe)
        self._docs: dict[str, _Doc] = {}  # target name -> its object
        self._owner: dict[str, str] = {}  # rollout id -> target name
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="canaryd-kube-store", daemon=True
        )
        self._thread.start()
        self._kube = KubeClient(api_client, access)
        try:
            self._alerts = _Doc(ALERTS, "alerts", lines={"journal": []})
            self._audit = _Doc(AUDIT, "audit", lines={"log": []})
            self._call("open", self._load())
        except BaseException:
            self._stop()
            raise

    # ------------------------------------------------------------------- lifecycle

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._stop()

    def _stop(self) -> None:
        if self._loop.is_closed():
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._kube.aclose(), self._loop).result(self._timeout)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(self._timeout)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> KubeStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------- plumbing

    def _call(self, doing: str, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the store's loop and wait for it; the API's failures become
        ``StoreUnavailable`` naming what was being done."""
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(self._timeout)
        except TimeoutError as exc:
            future.cancel()
            raise StoreUnavailable(
                f"kubernetes API: {self.path}: {doing}: no answer in {self._timeout:g} s"
            ) from exc
        except ApiException as exc:
            raise StoreUnavailable(
                f"kubernetes API: {self.path}: {doing}: {exc.status} {exc.reason}{_message(exc)}"
            ) from exc
        except KubeUnavailable as exc:
            raise StoreUnavailable(f"kubernetes API: {self.path}: {doing}: {exc}") from exc
        except (OSError, aiohttp.ClientError) as exc:  # no connection, or it broke
            raise StoreUnavailable(
                f"kubernetes API: {self.path}: {doing}: {type(exc).__name__}: {exc}"
            ) from exc

    async def _api(self) -> client.CoreV1Api:
        return client.CoreV1Api(await self._kube.api())

    async def _load(self) -> None:
        api = await self._api()
        listed = await api.list_namespaced_config_map(
            self.namespace, label_selector=SELECTOR, _request_timeout=self._timeout
        )
        for item in listed.items:
            labels = item.metadata.labels or {}
            if labels.get(ROLE_LABEL) is None or any(
                labels.get(k) != v for k, v in MANAGED.items()
            ):
                continue  # not ours (a server that ignores the selector shows them all)
            doc = self._parse(item)
            if doc.role == "target":
                target = doc.scalars.get("target", "")
                self._docs[target] = doc
                for line in doc.lines.get("rollouts", []):
                    self._owner[self._row(line, doc.name)["id"]] = target
            elif doc.name == ALERTS:
                self._alerts = doc
            elif doc.name == AUDIT:
                self._audit = doc
        for target in self._docs:  # every record the runtime may resume, decoded now
            self._rollouts(target)
        self._alert_rows()

    def _parse(self, item: client.V1ConfigMap) -> _Doc:
        meta = item.metadata
        name = str(meta.name)
        data: dict[str, str] = dict(item.data or {})
        schema = data.pop("schema", None)
        if schema != SCHEMA:
            raise CorruptState(
                f"{self.path}: ConfigMap {name}: state schema {schema!r} is not {SCHEMA!r} "
                "(from another canaryd version, or not ours); refusing to touch it"
            )
        role = str((meta.labels or {}).get(ROLE_LABEL, ""))
        keys = {"target": ("rollouts", "decisions", "measurements"), "alerts": ("journal",)}
        keys["audit"] = ("log",)
        if role not in keys:
            raise CorruptState(f"{self.path}: ConfigMap {name}: unknown {ROLE_LABEL} {role!r}")
        writer = data.pop("writer", "")
        lines = {key: data.pop(key, "").splitlines() for key in keys[role]}
        return _Doc(name, role, str(meta.resource_version), lines, data, writer)

    def _row(self, line: str, where: str) -> dict[str, Any]:
        try:
            value = json.loads(line)
        except ValueError as exc:
            raise CorruptState(f"{self.path}: ConfigMap {where}: unreadable line: {exc}") from exc
        if not isinstance(value, dict):
            raise CorruptState(f"{self.path}: ConfigMap {where}: a line is not a JSON object")
        return value

    def _body(self, doc: _Doc) -> client.V1ConfigMap:
        return client.V1ConfigMap(
            metadata=client.V1ObjectMeta(
                name=doc.name,
                namespace=self.namespace,
                labels={**MANAGED, ROLE_LABEL: doc.role},
                resource_version=doc.rv,
            ),
            data=doc.data(),
        )

    async def _write(self, doc: _Doc) -> str:
        """Create or replace ``doc`` (guarded by its resourceVersion); the new version."""
        api = await self._api()
        body = self._body(doc)
        if doc.rv is None:
            made = await api.create_namespaced_config_map(
                self.namespace, body, _request_timeout=self._timeout
            )
        else:
            made = await api.replace_namespaced_config_map(
                doc.name, self.namespace, body, _request_timeout=self._timeout
            )
        return str(made.metadata.resource_version)

    async def _read(self, name: str) -> client.V1ConfigMap | None:
        api = await self._api()
        try:
            found: client.V1ConfigMap = await api.read_namespaced_config_map(
                name, self.namespace, _request_timeout=self._timeout
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return found

    def _put(self, doc: _Doc, doing: str) -> str | None:
        """Write ``doc``, stamped with a token of this write; its new resourceVersion, or
        None on a 409 (changed since read, or created meanwhile). Other failures raise
        ``StoreUnavailable``, and the token is remembered: that write may have landed."""
        self._writes += 1
        doc.writer = f"{self._id}.{self._writes}"
        try:
            return self._call(doing, self._write(doc))
        except StoreUnavailable as exc:
            cause = exc.__cause__
            if isinstance(cause, ApiException) and cause.status == 409:
                return None
            self._unanswered.add(doc.writer)
            raise

    def _reread(self, name: str, role: str, doing: str) -> _Doc:
        found = self._call(doing, self._read(name))
        if found is None:
            return _Doc(name, role)
        return self._parse(found)

    @contextmanager
    def _writing(self, doing: str) -> Iterator[None]:
        """One write: refused once closed; its failure or success is what ``write_problem``
        reports (a value that cannot be stored is the input's fault, not the store's)."""
        with self._lock:
            if self._closed:
                raise StoreUnavailable(f"{self.path}: {doing}: the store is closed")
            try:
                yield
            except StoreUnavailable as exc:
                self._failed(str(exc))
                raise
            except StateLocked as exc:
                self._failed(str(exc))
                raise
            self._since = None
            self._health.succeeded()

    def _failed(self, problem: str) -> None:
        if self._since is None:
            self._since = time.time()
        since = datetime.fromtimestamp(self._since, UTC).isoformat(timespec="seconds")
        self._health.failed(f"{problem} (since {since.replace('+00:00', 'Z')})")

    def write_problem(self) -> str | None:
        return self._health.problem()

    def _probe(self) -> None:
        """A tiny write, as a commit makes one: the audit object written again as it is
        (re-read first, so a stale version is not the problem). Success clears the problem."""
        with contextlib.suppress(CanarydError), self._writing("probe a write"):
            doc = self._reread(AUDIT, "audit", "probe a write")
            doc.lines.setdefault("log", [])
            rv = self._put(doc, "probe a write")
            if rv is not None:
                doc.rv = rv
                self._audit = doc

    # ------------------------------------------------------------------- rollouts

    def _rollouts(self, target: str) -> list[tuple[dict[str, Any], Rollout]]:
        doc = self._docs.get(target)
        if doc is None:
            return []
        out = []
        for line in doc.lines.get("rollouts", []):
            row = self._row(line, doc.name)
            out.append((row, self._decode(str(row.get("id")), row.get("record"))))
        return out

    def _decode(self, rollout_id: str, record: Any) -> Rollout:
        try:
            rollout = rollout_from_dict(record)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CorruptState(
                f"{self.path}: rollout {rollout_id}: unreadable record: {exc!r}"
            ) from exc
        if rollout.id != rollout_id:
            raise CorruptState(f"{self.path}: rollout {rollout_id}: record is of {rollout.id}")
        return rollout

    def load_active(self) -> list[Rollout]:
        with self._lock:
            found = [
                (row["started_at"], rollout)
                for target in list(self._docs)
                for row, rollout in self._rollouts(target)
                if row.get("active") or row.get("cleanup_at") is not None
            ]
        found.sort(key=lambda pair: pair[0])
        return [rollout for _, rollout in found]

    def get(self, rollout_id: str) -> Rollout | None:
        with self._lock:
            target = self._owner.get(rollout_id)
            if target is None:
                return None
            for row, rollout in self._rollouts(target):
                if row.get("id") == rollout_id:
                    return rollout
        return None

    def latest_for_target(self, target: str) -> Rollout | None:
        with self._lock:
            rows = self._rollouts(storable(target))
        if not rows:
            return None
        # the latest start; of equal starts, the one stored last (SQLite's rowid order)
        return max(enumerate(rows), key=lambda p: (p[1][0]["started_at"], p[0]))[1][1]

    def commit(
        self,
        rollout: Rollout,
        actions: Sequence[Action],
        now: float,
        measurements: Sequence[Measurement] = (),
    ) -> None:
        with encoding(self.path, f"commit rollout {rollout.id}"):
            record = json.loads(json_storable(rollout_to_dict(rollout)))
            rid, target = storable(rollout.id), storable(rollout.target)
            decisions, measured = commit_rows(rollout, rid, target, actions, now, measurements)
            row = {
                "id": rid,
                "active": not rollout.ended,
                "started_at": rollout.started_at,
                "updated_at": now,
                "cleanup_at": rollout.cleanup_at,
                "record": record,
            }
            line = storable(compact_json(row))
        doing = f"commit rollout {rid}"
        with self._writing(doing):
            base = self._docs.get(target) or _Doc(object_name(target), "target")
            for _ in range(RETRIES):
                doc = self._applied(base, target, rid, line, decisions, measured)
                rv = self._put(doc, doing)
                if rv is not None:
                    doc.rv = rv
                    self._docs[target] = doc
                    self._owner[rid] = target
                    return
                base = self._reread(doc.name, "target", doing)
                if base.rv is not None and base.writer not in self._unanswered:
                    self._adopt(target, base)
                    raise StateLocked(
                        f"{self.path}: ConfigMap {doc.name} (target {target}) was written by "
                        "another canaryd since this one read it; one state, one actor: "
                        "refusing to overwrite it"
                    )
                self._adopt(target, base)  # our own write, its answer lost: build on it
            raise StoreUnavailable(f"{self.path}: {doing}: still conflicting after {RETRIES}")

    def _adopt(self, target: str, doc: _Doc) -> None:
        if doc.rv is None:
            self._docs.pop(target, None)
            return
        doc.scalars["target"] = target
        self._docs[target] = doc
        for line in doc.lines.get("rollouts", []):
            self._owner[self._row(line, doc.name)["id"]] = target

    def _applied(
        self,
        base: _Doc,
        target: str,
        rid: str,
        line: str,
        decisions: list[tuple[object, ...]],
        measured: list[tuple[object, ...]],
    ) -> _Doc:
        """``base`` with the commit applied (a copy: the cache changes once acknowledged)."""
        doc = base.copy()
        doc.scalars["target"] = target
        rollouts = doc.lines.setdefault("rollouts", [])
        rows = [self._row(text, doc.name) for text in rollouts]
        for row in rows if json.loads(line)["active"] else []:
            if row.get("active") and row.get("id") != rid:
                phase = (row.get("record") or {}).get("phase", "?")
                raise RolloutConflict(
                    f"target {target} already has an active rollout {row['id']} ({phase}); "
                    f"refusing to make {rid} active beside it"
                )
        at = next((i for i, row in enumerate(rows) if row.get("id") == rid), None)
        if at is None:
            rollouts.append(line)
        else:
            rollouts[at] = line
        seq = int(doc.scalars.get("seq", "0"))
        out = doc.lines.setdefault("decisions", [])
        for rid_, tgt, t, phase, stage, weight, kind, reason, evidence, cause, trace in decisions:
            seq += 1
            out.append(
                compact_json(
                    {
                        "seq": seq,
                        "rollout_id": rid_,
                        "target": tgt,
                        "t": t,
                        "phase": phase,
                        "stage": stage,
                        "weight": weight,
                        "action": kind,
                        "cause": cause,
                        "reason": reason,
                        "evidence": json.loads(str(evidence)),
                        "trace_id": trace,
                    }
                )
            )
        mout = doc.lines.setdefault("measurements", [])
        for rid_, t, check, value, error, cr, ce, sr, se in measured:
            seq += 1
            mout.append(
                compact_json(
                    {
                        "seq": seq,
                        "rollout_id": rid_,
                        "t": t,
                        "check": check,
                        "value": value,
                        "error": error,
                        "canary_requests": cr,
                        "canary_errors": ce,
                        "stable_requests": sr,
                        "stable_errors": se,
                    }
                )
            )
        doc.scalars["seq"] = str(seq)
        if doc.size() > self.budget:
            self._compact_target(doc)
        return doc

    def _compact_target(self, doc: _Doc) -> None:
        """Bring a target's object down to ``LOW_WATER`` of the budget (see the module doc)."""
        goal = int(self.budget * LOW_WATER)
        excess = doc.size() - goal
        rows = [self._row(text, doc.name) for text in doc.lines["rollouts"]]
        finished = [r["id"] for r in rows[:-1] if not r.get("active") and r["cleanup_at"] is None]
        everyone = [r["id"] for r in rows]

        def drop(key: str, ids: Sequence[str]) -> None:
            nonlocal excess
            for rid in ids:
                kept = []
                for text in doc.lines[key]:
                    if excess > 0 and json.loads(text)["rollout_id"] == rid:
                        excess -= _line_size(text)
                    else:
                        kept.append(text)
                doc.lines[key] = kept

        drop("measurements", finished)
        drop("decisions", finished)
        if excess > 0:
            gone = set()
            for rid, text in zip(everyone, list(doc.lines["rollouts"]), strict=True):
                if excess > 0 and rid in finished:
                    gone.add(rid)
                    excess -= _line_size(text)
            doc.lines["rollouts"] = [
                t for r, t in zip(everyone, doc.lines["rollouts"], strict=True) if r not in gone
            ]
        drop("measurements", everyone)
        drop("decisions", everyone)
        if doc.size() > self.budget:
            raise StoreUnavailable(
                f"{self.path}: ConfigMap {doc.name}: the target's rollouts alone exceed the "
                f"{self.budget}-byte budget"
            )

    # ------------------------------------------------------------------- history

    def history(
        self, *, rollout_id: str | None = None, target: str | None = None
    ) -> list[DecisionRecord]:
        if (rollout_id is None) == (target is None):
            raise ValueError("history needs exactly one of rollout_id or target")
        with self._lock:
            target = self._owner.get(str(rollout_id)) if target is None else storable(target)
            doc = self._docs.get(str(target)) if target is not None else None
            lines = list(doc.lines.get("decisions", [])) if doc else []
        rows = [self._row(text, doc.name) for text in lines] if doc else []
        if rollout_id is not None:
            rows = [r for r in rows if r["rollout_id"] == rollout_id]
        return cast(list[DecisionRecord], rows)

    def measurements(self, rollout_id: str) -> list[MeasurementRecord]:
        with self._lock:
            target = self._owner.get(rollout_id)
            doc = self._docs.get(target) if target is not None else None
            lines = list(doc.lines.get("measurements", [])) if doc else []
        rows = [self._row(text, doc.name) for text in lines] if doc else []
        return cast(list[MeasurementRecord], [r for r in rows if r["rollout_id"] == rollout_id])

    # ------------------------------------------------------------------- journals

    def _append(
        self,
        attr: str,
        key: str,
        doing: str,
        change: Callable[[_Doc], None],
    ) -> None:
        """Apply ``change`` to a journal (alerts or audit) and write it; on a 409, re-read,
        apply it again to what is there, at most ``RETRIES`` times."""
        with self._writing(doing):
            base: _Doc = getattr(self, attr)
            for _ in range(RETRIES):
                doc = base.copy()
                doc.lines.setdefault(key, [])
                change(doc)
                rv = self._put(doc, doing)
                if rv is not None:
                    doc.rv = rv
                    setattr(self, attr, doc)
                    return
                base = self._reread(doc.name, doc.role, doing)
                setattr(self, attr, base)
            raise StoreUnavailable(
                f"kubernetes API: {self.path}: {doing}: ConfigMap {base.name} still "
                f"conflicting after {RETRIES} attempts"
            )

    def record_alerts(self, alerts: Sequence[Alert], now: float) -> None:
        self.write_alerts(self.prepare_alerts(alerts, now))

    def prepare_alerts(self, alerts: Sequence[Alert], now: float) -> PreparedAlerts:
        rows = [[a.fingerprint, a.status, a.labels, a.starts_at, a.ends_at] for a in alerts]
        with encoding(self.path, "record alerts"):
            return now, storable(compact_json(rows))

    def write_alerts(self, prepared: PreparedAlerts) -> None:
        received, text = prepared

        def append(doc: _Doc) -> None:
            seq = int(doc.scalars.get("seq", "0")) + 1
            doc.scalars["seq"] = str(seq)
            # the alerts' JSON as prepared, inside the line: no decode and re-encode
            doc.lines["journal"].append(f'{{"seq":{seq},"t":{received!r},"alerts":{text}}}')
            if doc.size() > self.budget:
                self._fold_alerts(doc)

        self._append("_alerts", "journal", "record alerts", append)

    def _fold_alerts(self, doc: _Doc) -> None:
        """Over budget: fold the older lines as ``compact_alerts`` does, more of them each
        time, until the journal fits ``LOW_WATER`` (raises if the firing alerts alone do not)."""
        journal = doc.lines["journal"]
        for keep in (len(journal) // 2, len(journal) // 4, 1, 0):
            if keep >= len(journal) - 1 or len(journal) < 2:
                continue
            cut = float(self._row(journal[len(journal) - keep - 1], doc.name)["t"])
            self._compact_lines(doc, cut, inclusive=True)
            if doc.size() <= self.budget * LOW_WATER:
                return
        if doc.size() > self.budget:
            raise StoreUnavailable(
                f"{self.path}: ConfigMap {doc.name}: the alerts still firing exceed the "
                f"{self.budget}-byte budget"
            )

    def _compact_lines(self, doc: _Doc, before: float, *, inclusive: bool = False) -> int:
        journal = doc.lines["journal"]
        rows = [self._row(text, doc.name) for text in journal]
        old = [r for r in rows if r["t"] < before or (inclusive and r["t"] == before)]
        if len(old) < 2:
            return 0
        last = old[-1]
        alerts = [alert for r in old for alert in self._alerts_of(r, doc.name)]
        _, text = self.prepare_alerts(firing_of(alerts, before), last["t"])
        folded = f'{{"seq":{last["seq"]},"t":{float(last["t"])!r},"alerts":{text}}}'
        doc.lines["journal"] = [folded, *journal[len(old) :]]
        return len(old) - 1

    def _alerts_of(self, row: Mapping[str, Any], where: str) -> list[Alert]:
        try:
            return [
                Alert(str(fp), AlertStatus(status), dict(labels), float(start), optional_time(end))
                for fp, status, labels, start, end in row["alerts"]
            ]
        except (ValueError, TypeError, KeyError) as exc:
            raise CorruptState(
                f"{self.path}: ConfigMap {where}: alert journal row {row.get('seq')}: "
                f"unreadable: {exc}"
            ) from exc

    def _alert_rows(self) -> list[tuple[float, Alert]]:
        with self._lock:
            doc = self._alerts
            lines = list(doc.lines.get("journal", []))
        return [
            (float(row["t"]), alert)
            for row in (self._row(text, doc.name) for text in lines)
            for alert in self._alerts_of(row, doc.name)
        ]

    def alert_journal(self) -> list[Alert]:
        """Every journalled alert, in the order received (repeats included)."""
        return [alert for _, alert in self._alert_rows()]

    def firing_alerts(self, now: float, expire_after: float = float("inf")) -> list[Alert]:
        return alertbook.replay(self._alert_rows(), now, expire_after)

    def alert_book(self, now: float, expire_after: float) -> list[tuple[float, Alert]]:
        book = alertbook.rebuild(self._alert_rows(), now, expire_after)
        return [(entry.seen, entry.alert) for entry in book.values()]

    def compact_alerts(self, before: float) -> int:
        """As ``SqliteStore.compact_alerts``: lines received before ``before`` become one
        holding what still fires then, in the place of the newest of them."""
        gone = 0

        def fold(doc: _Doc) -> None:
            nonlocal gone
            gone = self._compact_lines(doc, before)

        with self._lock:
            rows = [self._row(t, ALERTS) for t in self._alerts.lines.get("journal", [])]
            if sum(1 for r in rows if r["t"] < before) < 2:
                return 0
            self._append("_alerts", "journal", "compact alerts", fold)
        return gone

    # ------------------------------------------------------------------- audit

    def audit(
        self,
        now: float,
        who: str,
        what: str,
        target: str | None,
        outcome: str,
        detail: Mapping[str, object] | None = None,
    ) -> None:
        with encoding(self.path, "append audit"):
            fields = {
                "t": now,
                "who": storable(who),
                "what": storable(what),
                "target": optional_storable(target),
                "outcome": storable(outcome),
                "detail": json.loads(json_storable(dict(detail or {}))),
            }

        def append(doc: _Doc) -> None:
            seq = int(doc.scalars.get("seq", "0")) + 1
            doc.scalars["seq"] = str(seq)
            doc.lines["log"].append(compact_json({"seq": seq, **fields}))
            if doc.size() > self.budget:  # capped: the oldest rows go
                goal, log = doc.size() - int(self.budget * LOW_WATER), doc.lines["log"]
                cut = 0
                while goal > 0 and cut < len(log) - 1:
                    goal -= _line_size(log[cut])
                    cut += 1
                doc.lines["log"] = log[cut:]

        self._append("_audit", "log", "append audit", append)

    def compact_audit(self, before: float, keep: int) -> int:
        if keep < 0:
            raise ValueError(f"compact_audit: keep must be >= 0, not {keep}")
        gone = 0

        def cut(doc: _Doc) -> None:
            nonlocal gone
            log = doc.lines["log"]
            kept = [t for t in log if self._row(t, AUDIT)["t"] >= before]
            kept = kept[len(kept) - keep :] if keep else []
            gone = len(log) - len(kept)
            doc.lines["log"] = kept

        with self._lock:
            log = self._audit.lines.get("log", [])
            if not log or (
                len(log) <= keep and all(self._row(t, AUDIT)["t"] >= before for t in log)
            ):
                return 0
            self._append("_audit", "log", "compact audit", cut)
        return gone

    def audit_log(
        self,
        target: str | None = None,
        *,
        who: str | None = None,
        outcome: str | None = None,
        since: float | None = None,
        until: float | None = None,
        before: int | None = None,
        after: int | None = None,
        limit: int | None = None,
        newest_first: bool = False,
    ) -> list[AuditRecord]:
        """As ``SqliteStore.audit_log`` (its filters, cursors and order), from memory."""
        with self._lock:
            lines = list(self._audit.lines.get("log", []))
        tests: list[Callable[[dict[str, Any]], bool]] = []
        if target is not None:
            tests.append(lambda r: r["target"] == target)
        if who is not None:
            tests.append(lambda r: r["who"] == who)
        if outcome is not None:
            tests.append(lambda r: r["outcome"] == outcome)
        if since is not None:
            tests.append(lambda r: r["t"] >= since)
        if until is not None:
            tests.append(lambda r: r["t"] <= until)
        if before is not None:
            tests.append(lambda r: r["seq"] < before)
        if after is not None:
            tests.append(lambda r: r["seq"] > after)
        rows = [r for r in (self._row(t, AUDIT) for t in lines) if all(f(r) for f in tests)]
        forward = after is not None or (limit is None and not newest_first)
        if not forward:
            rows.reverse()
        if limit is not None:
            rows = rows[:limit]
        if forward == newest_first:
            rows.reverse()
        return cast(list[AuditRecord], rows)


def _message(exc: ApiException) -> str:
    try:
        message = json.loads(exc.body or "{}").get("message")
    except (ValueError, AttributeError):
        message = None
    return f": {message}" if message else ""


__all__ = ["BUDGET", "KubeStore", "UnstorableValue", "object_name"]


if TYPE_CHECKING:  # mypy proves here that the class satisfies the port
    _PORT: type[StateStore] = KubeStore
