"""The RBAC of ``state: {backend: kubernetes}``, measured: every request the ConfigMap store
makes in a session that goes through each of its paths (open, first write, later writes, a
409 and its re-read, both journals, compaction, the write probe) is recorded by the emulator
and mapped to its RBAC rule; the set is exactly ``STATE_RULES``, which the ``canaryd-state``
Role of ``config/kubernetes/rbac.yaml`` grants (``test_kubernetes_manifests.py``)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from pathlib import Path

import pytest
from test_guide_kubernetes import Rule, _needed, recording_cluster

from canaryd.adapters.store.kubernetes import KubeStore, object_name
from canaryd.config.kubeaccess import KubeAccess
from canaryd.core import stages
from canaryd.core.model import Action, ActionKind, Alert, Phase
from canaryd.ports import StateLocked
from support import kube

NS = "canaryd"
STATE_RULES: set[Rule] = {("", "configmaps", verb) for verb in ("get", "list", "create", "update")}


def _kubeconfig(path: Path, url: str) -> Path:
    cluster = {"name": "e", "cluster": {"server": url}}
    context = {"name": "e", "context": {"cluster": "e", "user": "u"}}
    doc = {"apiVersion": "v1", "kind": "Config", "clusters": [cluster]}
    doc.update(users=[{"name": "u", "user": {}}], contexts=[context], **{"current-context": "e"})
    path.write_text(json.dumps(doc))
    return path


async def test_the_state_store_needs_exactly_the_state_roles_verbs(tmp_path: Path) -> None:
    from canaryd.config.policies import load_policy, resolve

    policy = load_policy(resolve("matriz-fast-track"))
    rollout, _ = stages.start("r1", "matriz", "matriz:2", policy, 0.0)
    async with recording_cluster() as (c, emulator):
        config = _kubeconfig(tmp_path / "kubeconfig", c.url)
        store = await asyncio.to_thread(KubeStore, NS, KubeAccess(kubeconfig=config))
        try:
            start = Action(ActionKind.START, "started", 0)
            await asyncio.to_thread(store.commit, rollout, (start,), 0.0)  # create
            later = replace(rollout, phase=Phase.PROGRESSING, weight=10)
            await asyncio.to_thread(store.commit, later, (), 1.0)  # update
            await asyncio.to_thread(store.audit, 1.0, "alice", "start", "matriz", "ok")
            alert = Alert("f1", "firing", {"alertname": "A"}, 1.0)  # type: ignore[arg-type]
            await asyncio.to_thread(store.record_alerts, [alert], 1.0)
            await asyncio.to_thread(store.record_alerts, [alert], 2.0)
            c.before_next_write(  # another writer between read and write: 409, then get
                lambda r: c.write(kube.CONFIGMAPS, NS, object_name("matriz"), lambda o: None)
            )
            with pytest.raises(StateLocked):
                await asyncio.to_thread(store.commit, later, (), 2.0)
            c.before_next_write(
                lambda r: c.write(kube.CONFIGMAPS, NS, "canaryd-audit", lambda o: None)
            )
            await asyncio.to_thread(store.audit, 2.0, "bob", "pause", "matriz", "ok")
            await asyncio.to_thread(store.compact_alerts, 10.0)
            await asyncio.to_thread(store.compact_audit, 10.0, 0)
            await asyncio.to_thread(store._probe)
        finally:
            await asyncio.to_thread(store.close)
        seen = list(emulator.seen)

    assert set(_needed(seen)) == STATE_RULES, seen
