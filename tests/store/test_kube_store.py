"""The Kubernetes state store (``state: {backend: kubernetes}``) against the validating emulator,
driven by the real kubernetes_asyncio client through a kubeconfig.

The SQLite store's backend-agnostic contract (``test_sqlite_store``, ``test_audit_read``) runs
here unchanged against a ``KubeStore``; then what only this backend has: 409s from another
writer, the size budget after thousands of decisions, a restart that rebuilds everything from
the cluster, and ``write_problem`` while the API fails and after it recovers. Every ConfigMap
the store writes is validated by the emulator as the apiserver would (a DNS name, string data).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import kmock
import pytest
import test_audit_read
import test_sqlite_store as contract
from test_sqlite_store import begin, rolled_back, started

from canaryd.adapters.store.kubernetes import BUDGET, KubeStore, object_name
from canaryd.config.kubeaccess import KubeAccess
from canaryd.core.model import Action, ActionKind, Alert, Measurement, Phase
from canaryd.ports import StateLocked, StoreUnavailable
from support import kube

CONTRACT: list[Callable[[Any], None]] = [
    contract.test_the_store_is_a_state_store,
    contract.test_a_committed_rollout_reads_back_equal,
    contract.test_an_unknown_rollout_or_target_reads_as_none,
    contract.test_a_later_commit_replaces_the_record,
    contract.test_a_target_has_at_most_one_active_rollout,
    contract.test_a_new_rollout_may_start_once_the_last_one_ended,
    contract.test_other_targets_have_their_own_active_rollout,
    contract.test_a_rolled_back_canary_awaiting_scale_down_is_still_loaded,
    contract.test_decisions_are_appended_in_order_with_phase_stage_and_weight,
    contract.test_history_by_target_spans_its_rollouts,
    contract.test_history_needs_exactly_one_key,
    contract.test_measurements_keep_values_errors_and_counts,
    contract.test_a_refused_commit_leaves_no_decision_or_measurement,
    contract.test_audit_rows_are_appended_in_order,
    contract.test_the_store_works_from_worker_threads,
    contract.test_commits_from_several_threads_all_land,
    contract.test_the_replay_takes_alerts_in_as_the_inbox_does,
    contract.test_compaction_forgets_old_alerts_but_keeps_the_ones_still_firing,
]
AUDIT_CONTRACT: list[Callable[[Any], None]] = [
    test_audit_read.test_without_arguments_every_row_oldest_first_as_before,
    test_audit_read.test_each_filter_and_their_combination,
    test_audit_read.test_newest_first_and_the_limit_keeps_the_newest,
    test_audit_read.test_paging_back_with_before_and_forward_with_after_skips_nothing,
    test_audit_read.test_rows_written_after_a_cursor_are_found_by_after,
]


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[kube.Threaded, Path]]:
    with kube.threaded() as t:
        yield t, t.kubeconfig(tmp_path_factory.mktemp("kube") / "kubeconfig")


@pytest.fixture
def ns() -> str:
    return f"state-{uuid.uuid4().hex[:8]}"  # a namespace per test: nothing shared


@pytest.fixture
def open_store(emulator: tuple[kube.Threaded, Path], ns: str) -> Iterator[Callable[..., KubeStore]]:
    opened: list[KubeStore] = []

    def open_(**kwargs: Any) -> KubeStore:
        store = KubeStore(ns, KubeAccess(kubeconfig=emulator[1]), **kwargs)
        opened.append(store)
        return store

    yield open_
    for store in opened:
        store.close()


@pytest.fixture
def store(open_store: Callable[..., KubeStore]) -> KubeStore:
    return open_store()


@pytest.fixture
def t(emulator: tuple[kube.Threaded, Path]) -> kube.Threaded:
    return emulator[0]


def stored(t: kube.Threaded, ns: str, name: str) -> dict[str, Any]:
    found = t.call(lambda: t.c.get(kube.CONFIGMAPS, ns, name))
    assert found is not None, name
    return dict(found)


def data_size(obj: dict[str, Any]) -> int:
    return sum(len(k) + len(v.encode()) for k, v in obj["data"].items())


# --------------------------------------------------------------------------- the contract


@pytest.mark.parametrize("case", CONTRACT, ids=lambda f: f.__name__.removeprefix("test_"))
def test_the_sqlite_contract_holds(case: Callable[[Any], None], store: KubeStore) -> None:
    case(store)


@pytest.mark.parametrize("case", AUDIT_CONTRACT, ids=lambda f: f.__name__.removeprefix("test_"))
def test_the_audit_read_contract_holds(case: Callable[[Any], None], store: KubeStore) -> None:
    for when, who, what, target, outcome in test_audit_read.ROWS:
        store.audit(when, who, what, target, outcome, {"status": 200})
    case(store)


def test_compact_audit_by_age_and_by_count(store: KubeStore) -> None:
    for n in range(100):
        store.audit(float(n), "anonymous", "refused", None, "401")
    assert store.compact_audit(before=30.0, keep=1000) == 30
    assert store.compact_audit(before=0.0, keep=10) == 60
    assert [a["t"] for a in store.audit_log()] == [float(n) for n in range(90, 100)]
    assert store.compact_audit(before=0.0, keep=10) == 0
    assert store.compact_audit(before=1000.0, keep=10) == 10
    assert store.audit_log() == []
    with pytest.raises(ValueError, match="keep"):
        store.compact_audit(before=0.0, keep=-1)


# --------------------------------------------------------------------------- the objects


def test_objects_are_valid_labelled_configmaps_one_per_target(
    store: KubeStore, t: kube.Threaded, ns: str
) -> None:
    odd = ["Matriz_EU.prod", "x" * 300, "matriz-eu-prod"]  # capitals, length, a near twin
    for n, target in enumerate(odd):
        begin(store, started(f"r{n}", target))
    store.record_alerts([Alert("f1", "firing", {"alertname": "A"}, 1.0)], 2.0)
    store.audit(1.0, "alice", "start", odd[0], "accepted")

    names = {object_name(target) for target in odd}
    assert len(names) == 3 and all(len(n) <= 63 for n in names)
    for name in [*names, "canaryd-alerts", "canaryd-audit"]:
        obj = stored(t, ns, name)  # the emulator validated every write of it
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "canaryd"
    assert stored(t, ns, object_name(odd[1]))["data"]["target"] == odd[1]


def test_a_restart_rebuilds_everything_from_the_cluster(
    store: KubeStore, open_store: Callable[..., KubeStore]
) -> None:
    first = started("r1", "matriz")
    begin(store, first)
    store.commit(
        replace(first, phase=Phase.PROGRESSING, stage=1, weight=25),
        (Action(ActionKind.SET_WEIGHT, "stage 1", 25),),
        60.0,
        (Measurement("success-rate", 0.99),),
    )
    other = started("r2", "billing", at=5.0)
    begin(store, other)
    store.commit(rolled_back(other, 20.0), (Action(ActionKind.ROLLBACK, "bad", 0),), 20.0)
    store.record_alerts([Alert("f1", "firing", {"alertname": "A"}, 100.0)], 101.0)
    store.record_alerts([Alert("f2", "firing", {"alertname": "B"}, 100.0)], 102.0)
    store.record_alerts([Alert("f2", "resolved", {"alertname": "B"}, 100.0, 103.0)], 103.0)
    store.audit(1.0, "alice", "start", "matriz", "accepted", {"image": "matriz:2"})
    expected = (
        store.load_active(),
        store.alert_book(200.0, 3600.0),
        store.audit_log(),
        store.history(target="matriz"),
        store.history(target="billing"),
        store.measurements("r1"),
        store.latest_for_target("billing"),
    )
    store.close()
    assert not store._thread.is_alive()  # close stops the store's loop thread
    with pytest.raises(StoreUnavailable, match="closed"):
        store.audit(2.0, "bob", "pause", None, "ok")

    again = open_store()
    assert (
        again.load_active(),
        again.alert_book(200.0, 3600.0),
        again.audit_log(),
        again.history(target="matriz"),
        again.history(target="billing"),
        again.measurements("r1"),
        again.latest_for_target("billing"),
    ) == expected
    assert [r.id for r in again.load_active()] == ["r1"]
    begin(again, started("r3", "billing", at=30.0))  # and it writes on from there
    assert again.latest_for_target("billing") == started("r3", "billing", at=30.0)


# --------------------------------------------------------------------------- 409


def test_another_writer_of_a_targets_object_is_refused_not_overwritten(
    store: KubeStore, t: kube.Threaded, ns: str
) -> None:
    rollout = started()
    begin(store, rollout)
    name = object_name("matriz")

    def other_writer(request: kmock.Request) -> None:
        t.c.write(kube.CONFIGMAPS, ns, name, lambda obj: obj["data"].update(seq="99"))

    t.call(lambda: t.c.before_next_write(other_writer))
    with pytest.raises(StateLocked, match="written by another canaryd"):
        store.commit(rollout, (Action(ActionKind.HOLD, "no data"),), 10.0)

    assert stored(t, ns, name)["data"]["seq"] == "99"  # theirs, not overwritten
    problem = store.write_problem()
    assert problem is not None and "another canaryd" in problem and "(since " in problem


def test_a_write_whose_answer_was_lost_is_adopted_not_doubled(
    open_store: Callable[..., KubeStore], t: kube.Threaded, ns: str
) -> None:
    store = open_store(timeout=1.0)
    rollout = started()
    begin(store, rollout)

    async def slow(request: kmock.Request) -> None:
        # The write lands (as if etcd took it) but its answer never reaches the store: the
        # body is stored here, and the request is held until the store stopped waiting.
        body = request.data
        t.c.write(kube.CONFIGMAPS, ns, object_name("matriz"), lambda o: o.update(data=body["data"]))
        await asyncio.sleep(1.5)

    t.call(lambda: t.c.before_next_write(slow))
    with pytest.raises(StoreUnavailable, match="no answer"):
        store.commit(rollout, (Action(ActionKind.HOLD, "first"),), 10.0)
    time.sleep(1.0)  # the held request ends (refused: stale by then)
    store.commit(rollout, (Action(ActionKind.HOLD, "second"),), 20.0)

    assert [d["reason"] for d in store.history(rollout_id="r1")] == [
        "r1 started",
        "first",  # it did land: adopted
        "second",
    ]
    assert store.write_problem() is None


def test_journals_merge_another_writers_lines_on_a_409(
    store: KubeStore, t: kube.Threaded, ns: str
) -> None:
    store.audit(1.0, "alice", "start", "matriz", "accepted")
    store.record_alerts([Alert("f1", "firing", {"alertname": "A"}, 1.0)], 1.0)

    def append_audit(obj: dict[str, Any]) -> None:
        row = {"seq": 2, "t": 2.0, "who": "bob", "what": "pause", "target": None}
        row.update(outcome="ok", detail={})
        obj["data"]["log"] += json.dumps(row) + "\n"
        obj["data"]["seq"] = "2"

    def append_alert(obj: dict[str, Any]) -> None:
        obj["data"]["journal"] += '{"seq":2,"t":2.0,"alerts":[["f2","firing",{},2.0,null]]}\n'
        obj["data"]["seq"] = "2"

    t.call(
        lambda: t.c.before_next_write(
            lambda r: t.c.write(kube.CONFIGMAPS, ns, "canaryd-audit", append_audit)
        )
    )
    store.audit(3.0, "carol", "resume", "matriz", "ok")
    t.call(
        lambda: t.c.before_next_write(
            lambda r: t.c.write(kube.CONFIGMAPS, ns, "canaryd-alerts", append_alert)
        )
    )
    store.record_alerts([Alert("f3", "firing", {"alertname": "C"}, 3.0)], 3.0)

    assert [(a["seq"], a["who"]) for a in store.audit_log()] == [
        (1, "alice"),
        (2, "bob"),
        (3, "carol"),
    ]
    assert [a.fingerprint for a in store.alert_journal()] == ["f1", "f2", "f3"]


def test_a_journal_that_keeps_conflicting_gives_up_after_a_bounded_number_of_tries(
    store: KubeStore, t: kube.Threaded, ns: str
) -> None:
    store.audit(1.0, "alice", "start", None, "ok")
    bump = lambda r: t.c.write(kube.CONFIGMAPS, ns, "canaryd-audit", lambda obj: None)  # noqa: E731
    t.call(lambda: t.c.before_every_write(bump))
    try:
        with pytest.raises(StoreUnavailable, match="still conflicting"):
            store.audit(2.0, "bob", "pause", None, "ok")
    finally:
        t.call(lambda: t.c.emulator._always.clear())


# --------------------------------------------------------------------------- the budget


def test_thousands_of_decisions_stay_under_the_budget(
    store: KubeStore, t: kube.Threaded, ns: str
) -> None:
    evidence = {"success-rate": {"value": 0.999, "threshold": 0.99, "query": "q" * 200}}
    decided = 0
    for n in range(40):  # 40 rollouts of one target, each with 100 decisions and measurements
        rollout = started(f"r{n:02d}", at=n * 100.0)
        begin(store, rollout)
        for batch in range(4):
            actions = [
                Action(ActionKind.HOLD, f"hold {batch}.{i}", evidence=evidence) for i in range(25)
            ]
            store.commit(rollout, actions, n * 100.0 + batch, [Measurement("sr", 0.99)] * 25)
            decided += 25
        if n < 39:
            store.commit(rolled_back(rollout, n * 100.0 + 50), (), n * 100.0 + 50)
    obj = stored(t, ns, object_name("matriz"))

    assert decided == 4000
    assert data_size(obj) <= BUDGET
    assert [r.id for r in store.load_active()] == ["r39"]
    assert len(store.history(rollout_id="r39")) == 101  # the active rollout's whole history
    assert store.get("r00") is None or store.history(rollout_id="r00") == []  # oldest dropped
    assert store.history(target="matriz")[-1]["reason"] == "hold 3.24"


def test_the_alert_journal_and_audit_log_stay_under_a_budget(
    open_store: Callable[..., KubeStore], t: kube.Threaded, ns: str
) -> None:
    budget = 32 * 1024
    store = open_store(budget=budget)
    labels = {"alertname": "HighLatency", "target": "matriz", "severity": "critical"}
    for n in range(600):
        store.record_alerts([Alert(f"old{n}", "firing", labels, float(n))], float(n))
        store.record_alerts([Alert(f"old{n}", "resolved", labels, float(n), n + 0.5)], n + 0.5)
        store.audit(float(n), "alertmanager", "alerts", None, "ok", {"alerts": 1})
    store.record_alerts([Alert("still", "firing", labels, 700.0)], 700.0)

    assert data_size(stored(t, ns, "canaryd-alerts")) <= budget
    assert data_size(stored(t, ns, "canaryd-audit")) <= budget
    assert [a.fingerprint for a in store.firing_alerts(800.0)] == ["still"]
    log = store.audit_log()
    assert log[-1]["seq"] == 600 and 50 < len(log) < 600  # the newest kept, the oldest gone


# --------------------------------------------------------------------------- write_problem


def test_write_problem_reports_api_failures_and_notices_recovery(
    store: KubeStore, t: kube.Threaded
) -> None:
    assert store.write_problem() is None

    def refuse(request: kmock.Request) -> None:
        raise kmock.KubernetesError(
            status=503,
            reason="ServiceUnavailable",
            message="etcdserver: leader changed",
            details={},
        )

    t.call(lambda: t.c.before_every_write(refuse))
    try:
        with pytest.raises(StoreUnavailable, match="503"):
            store.audit(1.0, "alice", "start", None, "ok")
        problem = store.write_problem()
        assert problem is not None
        assert problem.startswith("kubernetes API: ") and "leader changed" in problem
        assert "(since " in problem
    finally:
        t.call(lambda: t.c.emulator._always.clear())
    deadline = time.monotonic() + 10
    while store.write_problem() is not None:  # the probe (at most once a second) sees it work
        assert time.monotonic() < deadline, "write_problem never cleared"
        time.sleep(0.1)
    store.audit(2.0, "alice", "start", None, "ok")
    assert [a["t"] for a in store.audit_log()] == [2.0]


def test_no_api_server_is_a_store_error_at_open(tmp_path: Path) -> None:
    config = tmp_path / "kubeconfig"
    config.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "gone", "cluster": {"server": "http://127.0.0.1:9"}}],
                "users": [{"name": "u", "user": {}}],
                "contexts": [{"name": "gone", "context": {"cluster": "gone", "user": "u"}}],
                "current-context": "gone",
            }
        )
    )
    with pytest.raises(StoreUnavailable, match="kubernetes API: kubernetes namespace x: open"):
        KubeStore("x", KubeAccess(kubeconfig=config), timeout=5.0)


# --------------------------------------------------------------------------- damage


def test_lone_surrogates_are_stored_as_replacement_characters_and_read_back_after_a_restart(
    store: KubeStore, open_store: Callable[..., KubeStore]
) -> None:
    from test_store_hardening import BAD, PAIR, SAFE, encodable

    rollout = replace(
        started(target=f"matriz{BAD}"),
        image=f"img{BAD}",
        phase=Phase.PAUSED,
        pause_reason=f"alert {BAD}",
        paused_at=10.0,
    )
    action = Action(ActionKind.PAUSE, f"paused: {BAD}", 0, evidence={BAD: BAD, "ok": PAIR})
    store.commit(rollout, (action,), 10.0, (Measurement(f"check{BAD}", None, error=BAD),))
    store.audit(11.0, f"who{BAD}", "what", f"target{BAD}", "ok", {BAD: BAD})
    store.record_alerts([Alert(f"fp{BAD}", "firing", {"alertname": BAD}, 5.0)], 12.0)  # type: ignore[arg-type]
    store.close()

    again = open_store()
    back = again.get("r1")
    assert back is not None and (back.target, back.pause_reason) == (
        f"matriz{SAFE}",
        f"alert {SAFE}",
    )
    [decision] = again.history(rollout_id="r1")
    assert decision["evidence"] == {SAFE: SAFE, "ok": "smile \U0001f600"}
    [entry] = again.audit_log()
    assert (entry["who"], entry["target"], entry["detail"]) == (
        f"who{SAFE}",
        f"target{SAFE}",
        {SAFE: SAFE},
    )
    [alert] = again.alert_journal()
    assert alert.labels == {"alertname": SAFE}
    assert encodable([decision, entry, alert.labels, again.measurements("r1")])


def test_a_value_json_cannot_write_is_a_store_error_not_a_crash(store: KubeStore) -> None:
    from canaryd.ports import CorruptState

    with pytest.raises(CorruptState, match="cannot store"):
        store.audit(1.0, "alice", "start", None, "ok", {(1, 2): "a tuple key"})  # type: ignore[dict-item]
    store.audit(2.0, "alice", "start", None, "ok")
    assert store.write_problem() is None and [a["t"] for a in store.audit_log()] == [2.0]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"schema": "99"}, "state schema '99' is not '1'"),
        ({"schema": "1", "target": "matriz", "rollouts": "{not json\n"}, "unreadable line"),
        (
            {
                "schema": "1",
                "target": "matriz",
                "rollouts": '{"id": "r1", "record": {"id": "r1"}}\n',
            },
            "rollout r1: unreadable record",
        ),
    ],
    ids=["newer-schema", "bad-json", "bad-record"],
)
def test_a_damaged_or_foreign_object_is_refused_at_open(
    open_store: Callable[..., KubeStore],
    t: kube.Threaded,
    ns: str,
    data: dict[str, str],
    message: str,
) -> None:
    from canaryd.ports import CorruptState

    labels = {"app.kubernetes.io/managed-by": "canaryd", "canaryd.io/state": "target"}
    obj = {"metadata": {"name": object_name("matriz"), "labels": labels}, "data": data}
    t.call(lambda: t.c.seed(kube.CONFIGMAPS, ns, obj))
    with pytest.raises(CorruptState, match=message):
        open_store()


def test_configmaps_of_others_in_the_namespace_are_left_alone(
    open_store: Callable[..., KubeStore], t: kube.Threaded, ns: str
) -> None:
    other = {"metadata": {"name": "app-settings"}, "data": {"schema": "whatever"}}
    t.call(lambda: t.c.seed(kube.CONFIGMAPS, ns, other))
    store = open_store()
    begin(store, started())
    assert stored(t, ns, "app-settings")["data"] == {"schema": "whatever"}
