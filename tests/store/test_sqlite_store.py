"""The SQLite state store against a real SQLite file: what is committed is what is read back."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from canaryd.adapters.store.sqlite import SCHEMA_VERSION, SqliteStore
from canaryd.config.policies import load_policy, resolve
from canaryd.core import stages
from canaryd.core.model import (
    Action,
    ActionKind,
    Counts,
    Measurement,
    Phase,
    Rollout,
)
from canaryd.ports import CorruptState, RolloutConflict, StateStore

POLICY = load_policy(resolve("matriz-fast-track"))


def started(rollout_id: str = "r1", target: str = "matriz", at: float = 0.0) -> Rollout:
    rollout, _ = stages.start(rollout_id, target, f"matriz:{rollout_id}", POLICY, at)
    return rollout


def begin(store: SqliteStore, rollout: Rollout) -> None:
    store.commit(
        rollout, (Action(ActionKind.START, f"{rollout.id} started", 0),), rollout.started_at
    )


def rolled_back(rollout: Rollout, at: float) -> Rollout:
    return replace(
        rollout, phase=Phase.ROLLED_BACK, weight=0, rollback_reason="bad", finished_at=at
    )


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state.db"


@pytest.fixture
def store(path: Path) -> Iterator[SqliteStore]:
    opened = SqliteStore(path)
    yield opened
    opened.close()


def test_the_store_is_a_state_store(store: SqliteStore) -> None:
    port: StateStore = store
    assert port.load_active() == []


# --------------------------------------------------------------------------- rollouts


def test_a_committed_rollout_reads_back_equal(store: SqliteStore) -> None:
    rollout = replace(
        started(),
        phase=Phase.PAUSED,
        stage=1,
        weight=25,
        stage_started_at=120.0,
        credited=60.0,
        failures={"latency-p95": 1},
        alert_pauses=frozenset({"fp-1"}),
        handled_alerts=frozenset({"fp-1:firing:100.000", "fp-0:firing:50.000"}),
        paused_at=180.0,
        pause_reason="alert HighLatency firing",
    )
    store.commit(rollout, (), 180.0)

    assert store.get("r1") == rollout
    assert store.latest_for_target("matriz") == rollout
    assert store.load_active() == [rollout]


def test_an_unknown_rollout_or_target_reads_as_none(store: SqliteStore) -> None:
    assert store.get("nope") is None
    assert store.latest_for_target("nope") is None


def test_a_later_commit_replaces_the_record(store: SqliteStore) -> None:
    first = started()
    begin(store, first)
    later = replace(first, phase=Phase.PROGRESSING, weight=10, weight_set_at=5.0)
    store.commit(later, (), 5.0)

    assert store.get("r1") == later


def test_everything_committed_survives_closing_and_reopening(path: Path) -> None:
    rollout = started()
    with SqliteStore(path) as store:
        begin(store, rollout)
        store.commit(rollout, (), 30.0, (Measurement("success-rate", 0.999),))
        store.audit(1.0, "alice", "start", "matriz", "accepted")

    with SqliteStore(path) as reopened:
        assert reopened.get("r1") == rollout
        assert [d["action"] for d in reopened.history(rollout_id="r1")] == ["start"]
        assert [m["value"] for m in reopened.measurements("r1")] == [0.999]
        assert [a["who"] for a in reopened.audit_log()] == ["alice"]


def test_a_commit_is_visible_to_another_connection_at_once(path: Path) -> None:
    with SqliteStore(path) as writer:  # a reader is another connection: the store is locked
        reader = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            begin(writer, started())
            row = reader.execute("SELECT record FROM rollouts WHERE id = 'r1'").fetchone()
            assert row is not None and json.loads(row[0])["id"] == "r1"
        finally:
            reader.close()


# --------------------------------------------------------------------------- one active per target


def test_a_target_has_at_most_one_active_rollout(store: SqliteStore) -> None:
    begin(store, started("r1"))

    with pytest.raises(RolloutConflict, match="matriz already has an active rollout r1"):
        begin(store, started("r2", at=10.0))

    assert store.get("r2") is None
    assert [d["rollout_id"] for d in store.history(target="matriz")] == ["r1"]


def test_a_new_rollout_may_start_once_the_last_one_ended(store: SqliteStore) -> None:
    first = started("r1")
    begin(store, first)
    store.commit(rolled_back(first, 20.0), (), 20.0)
    begin(store, started("r2", at=30.0))

    assert store.latest_for_target("matriz") == started("r2", at=30.0)
    assert [r.id for r in store.load_active()] == ["r2"]


def test_other_targets_have_their_own_active_rollout(store: SqliteStore) -> None:
    begin(store, started("r1", "matriz"))
    begin(store, started("r2", "billing"))

    assert sorted(r.id for r in store.load_active()) == ["r1", "r2"]


def test_a_rolled_back_canary_awaiting_scale_down_is_still_loaded(store: SqliteStore) -> None:
    ended = replace(rolled_back(started(), 20.0), cleanup_at=50.0)
    store.commit(ended, (), 20.0)
    assert store.load_active() == [ended]

    store.commit(replace(ended, cleanup_at=None), (), 50.0)
    assert store.load_active() == []


# --------------------------------------------------------------------------- history


def test_decisions_are_appended_in_order_with_phase_stage_and_weight(store: SqliteStore) -> None:
    rollout = started()
    begin(store, rollout)
    progressing = replace(rollout, phase=Phase.PROGRESSING, stage=1, weight=25)
    store.commit(
        progressing,
        (
            Action(ActionKind.SET_WEIGHT, "stage 1 passed", 25, {"sr": {"value": 0.999}}),
            Action(ActionKind.HOLD, "no data"),
        ),
        120.0,
    )
    store.commit(progressing, (), 150.0)  # a passing evaluation: a new record, no decision

    history = store.history(rollout_id="r1")

    assert [(d["t"], d["phase"], d["stage"], d["weight"], d["action"]) for d in history] == [
        (0.0, "Pending", 1, 0, "start"),
        (120.0, "Progressing", 2, 25, "set-weight"),
        (120.0, "Progressing", 2, 25, "hold"),  # no weight of its own: the rollout's
    ]
    assert history[1]["evidence"] == {"sr": {"value": 0.999}}
    assert [d["seq"] for d in history] == sorted(d["seq"] for d in history)


def test_history_by_target_spans_its_rollouts(store: SqliteStore) -> None:
    first = started("r1")
    begin(store, first)
    store.commit(rolled_back(first, 20.0), (Action(ActionKind.ROLLBACK, "bad", 0),), 20.0)
    begin(store, started("r2", at=30.0))
    begin(store, started("r3", "billing"))

    assert [(d["rollout_id"], d["action"]) for d in store.history(target="matriz")] == [
        ("r1", "start"),
        ("r1", "rollback"),
        ("r2", "start"),
    ]


def test_history_needs_exactly_one_key(store: SqliteStore) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        store.history()
    with pytest.raises(ValueError, match="exactly one"):
        store.history(rollout_id="r1", target="matriz")


def test_measurements_keep_values_errors_and_counts(store: SqliteStore) -> None:
    rollout = started()
    begin(store, rollout)
    store.commit(
        rollout,
        (),
        30.0,
        (
            Measurement("success-rate", 0.999, Counts(100, 1, 900, 2)),
            Measurement("latency-p95", None),
            Measurement("error-rate", error="timeout"),
        ),
    )

    rows = store.measurements("r1")

    assert [(m["t"], m["check"], m["value"], m["error"]) for m in rows] == [
        (30.0, "success-rate", 0.999, None),
        (30.0, "latency-p95", None, None),
        (30.0, "error-rate", None, "timeout"),
    ]
    assert (rows[0]["canary_requests"], rows[0]["stable_errors"]) == (100, 2)
    assert rows[1]["canary_requests"] is None


def test_a_refused_commit_leaves_no_decision_or_measurement(store: SqliteStore) -> None:
    begin(store, started("r1"))
    with pytest.raises(RolloutConflict):
        store.commit(
            started("r2", at=5.0),
            (Action(ActionKind.START, "r2 started", 0),),
            5.0,
            (Measurement("success-rate", 1.0),),
        )

    assert store.history(rollout_id="r2") == []
    assert store.measurements("r2") == []


# --------------------------------------------------------------------------- audit


def test_audit_rows_are_appended_in_order(store: SqliteStore) -> None:
    store.audit(1.0, "alice", "start", "matriz", "accepted", {"image": "matriz:2"})
    store.audit(2.0, "bob", "promote", "matriz", "refused: not paused")
    store.audit(3.0, "alice", "reload", None, "ok")

    log = store.audit_log()

    assert [(a["t"], a["who"], a["what"], a["target"], a["outcome"]) for a in log] == [
        (1.0, "alice", "start", "matriz", "accepted"),
        (2.0, "bob", "promote", "matriz", "refused: not paused"),
        (3.0, "alice", "reload", None, "ok"),
    ]
    assert log[0]["detail"] == {"image": "matriz:2"}
    assert log[1]["detail"] == {}
    assert [a["what"] for a in store.audit_log(target="matriz")] == ["start", "promote"]


# --------------------------------------------------------------------------- the file


def test_the_journal_is_wal_and_commits_are_synced(store: SqliteStore, path: Path) -> None:
    probe = sqlite3.connect(path)
    try:
        assert probe.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        probe.close()
    assert store._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_the_schema_version_is_recorded(store: SqliteStore, path: Path) -> None:
    probe = sqlite3.connect(path)
    try:
        assert probe.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        probe.close()


def test_a_database_from_a_newer_canaryd_is_refused(path: Path) -> None:
    SqliteStore(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")

    with pytest.raises(CorruptState, match=f"schema version {SCHEMA_VERSION + 1} is newer"):
        SqliteStore(path)


def test_a_database_that_is_not_ours_is_refused(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE notes (body TEXT)")

    with pytest.raises(CorruptState, match="not a canaryd state database"):
        SqliteStore(path)


def test_a_file_that_is_not_a_database_is_refused(path: Path) -> None:
    path.write_bytes(b"this is not SQLite, just text that is long enough " * 40)

    with pytest.raises(CorruptState, match="not a database"):
        SqliteStore(path)


@pytest.mark.parametrize(
    "damage",
    [
        "{not json",
        json.dumps({"schema": 99, "id": "r1"}),
        json.dumps({"schema": 1, "id": "r1"}),
    ],
    ids=["bad-json", "unknown-schema", "missing-fields"],
)
def test_a_damaged_record_raises_a_clear_error(store: SqliteStore, path: Path, damage: str) -> None:
    begin(store, started())
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE rollouts SET record = ? WHERE id = 'r1'", (damage,))

    with pytest.raises(CorruptState, match="rollout r1: unreadable record"):
        store.get("r1")
    with pytest.raises(CorruptState):
        store.load_active()


# --------------------------------------------------------------------------- threads


def test_the_store_works_from_worker_threads(store: SqliteStore) -> None:
    async def main() -> Rollout | None:
        await asyncio.to_thread(begin, store, started())
        return await asyncio.to_thread(store.get, "r1")

    assert asyncio.run(main()) == started()


def test_commits_from_several_threads_all_land(store: SqliteStore) -> None:
    def commit_many(rollout_id: str) -> None:
        rollout = started(rollout_id, target=rollout_id)
        for n in range(20):
            store.commit(rollout, (Action(ActionKind.HOLD, f"hold {n}"),), float(n))

    threads = [threading.Thread(target=commit_many, args=(f"r{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    for n in range(4):
        reasons = [d["reason"] for d in store.history(rollout_id=f"r{n}")]
        assert reasons == [f"hold {i}" for i in range(20)]


def test_alerts_are_journalled_and_the_firing_ones_survive_a_reopen(tmp_path: Path) -> None:
    from canaryd.core.model import Alert

    path = tmp_path / "alerts.db"
    firing = Alert("f1", "firing", {"alertname": "A", "target": "t"}, 100.0)
    other = Alert("f2", "firing", {"alertname": "B"}, 100.0)
    with SqliteStore(path) as store:
        store.record_alerts([firing, other], 101.0)
        store.record_alerts([firing], 102.0)  # a repeat of the same notification
        store.record_alerts([Alert("f2", "resolved", {"alertname": "B"}, 100.0, 103.0)], 103.0)
    with SqliteStore(path) as store:
        assert [a.fingerprint for a in store.firing_alerts(104.0)] == ["f1"]
        assert store.firing_alerts(104.0)[0].labels == {"alertname": "A", "target": "t"}
        assert len(store.alert_journal()) == 4  # repeats are kept; the replay ignores them


def test_the_replay_takes_alerts_in_as_the_inbox_does(store: SqliteStore) -> None:
    from canaryd.core.model import Alert
    from canaryd.runtime.inbox import Inbox

    labels = {"alertname": "A"}
    sent = [
        Alert("f1", "firing", labels, 100.0),
        Alert("f1", "resolved", labels, 100.0, 150.0),
        Alert("f1", "firing", labels, 100.0),  # a late retry of the first: changes nothing
        Alert("f2", "firing", labels, 120.0, 500.0),  # ends at 500
        Alert("f3", "firing", labels, 130.0),
        Alert("f3", "resolved", labels, 130.0, 160.0),
        Alert("f3", "firing", labels, 170.0),  # fires again: a new startsAt
    ]
    for i, alert in enumerate(sent):
        store.record_alerts([alert], 200.0 + i)
    inbox = Inbox({})
    inbox.receive(sent)
    assert store.firing_alerts(300.0) == list(inbox.active.values())
    assert [(a.fingerprint, a.starts_at) for a in store.firing_alerts(300.0)] == [
        ("f2", 120.0),
        ("f3", 170.0),
    ]
    assert [a.fingerprint for a in store.firing_alerts(600.0)] == ["f3"]  # f2 has ended


def test_compaction_forgets_old_alerts_but_keeps_the_ones_still_firing(
    store: SqliteStore,
) -> None:
    from canaryd.core.model import Alert

    labels = {"alertname": "A"}
    for n in range(50):  # old and over: 50 alerts that fired and resolved
        store.record_alerts([Alert(f"old{n}", "firing", labels, 10.0)], 10.0 + n)
        store.record_alerts([Alert(f"old{n}", "resolved", labels, 10.0, 70.0)], 70.0 + n)
    store.record_alerts([Alert("still", "firing", labels, 100.0)], 100.0)
    store.record_alerts([Alert("ended", "firing", labels, 100.0, 150.0)], 101.0)
    store.record_alerts([Alert("later", "firing", labels, 300.0)], 300.0)
    store.record_alerts([Alert("still", "resolved", labels, 100.0, 310.0)], 310.0)
    before = store.firing_alerts(400.0)

    assert store.compact_alerts(200.0) == 101  # 102 rows before t=200 became one
    assert store.compact_alerts(200.0) == 0  # nothing more to do
    assert store.firing_alerts(400.0) == before  # same state: "still" resolved after the cut
    assert [a.fingerprint for a in store.firing_alerts(400.0)] == ["later"]
    kept = [a.fingerprint for a in store.alert_journal()]
    assert kept == ["still", "later", "still"]  # "ended" ended before t=200: forgotten


def test_a_schema_1_database_is_migrated_and_keeps_its_alerts(path: Path) -> None:
    with sqlite3.connect(path) as conn:  # what canaryd 0.1 wrote: one row per alert
        conn.execute(
            "CREATE TABLE alerts (key TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, status TEXT "
            "NOT NULL, labels TEXT NOT NULL, starts_at REAL NOT NULL, ends_at REAL, "
            "received_at REAL NOT NULL)"
        )
        conn.execute("CREATE INDEX alerts_by_fingerprint ON alerts (fingerprint, received_at)")
        rows = [
            ("f1:firing:100.000", "f1", "firing", '{"alertname": "A"}', 100.0, None, 101.0),
            ("f2:firing:100.000", "f2", "firing", '{"alertname": "B"}', 100.0, None, 101.0),
            ("f2:resolved:100.000", "f2", "resolved", '{"alertname": "B"}', 100.0, 102.0, 102.0),
        ]
        conn.executemany("INSERT INTO alerts VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        for statement in (
            "CREATE TABLE rollouts (id TEXT PRIMARY KEY, target TEXT NOT NULL, phase TEXT NOT "
            "NULL, active INTEGER NOT NULL, image TEXT NOT NULL, started_at REAL NOT NULL, "
            "updated_at REAL NOT NULL, cleanup_at REAL, record TEXT NOT NULL)",
            "CREATE TABLE decisions (seq INTEGER PRIMARY KEY)",
            "CREATE TABLE measurements (seq INTEGER PRIMARY KEY)",
            "CREATE TABLE audit (seq INTEGER PRIMARY KEY AUTOINCREMENT, t REAL NOT NULL, "
            "who TEXT NOT NULL, what TEXT NOT NULL, target TEXT, outcome TEXT NOT NULL, "
            "detail TEXT NOT NULL)",
            "PRAGMA user_version = 1",
        ):
            conn.execute(statement)
    with SqliteStore(path) as store:
        assert [(a.fingerprint, a.labels) for a in store.firing_alerts(200.0)] == [
            ("f1", {"alertname": "A"})
        ]
    probe = sqlite3.connect(path)
    try:
        assert probe.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        tables = {r[0] for r in probe.execute("SELECT name FROM sqlite_master")}
        assert "alert_journal" in tables and "alerts" not in tables
        assert "audit_by_time" in tables  # schema 3: compact_audit by age uses it
    finally:
        probe.close()
