"""Schema 5 of the state store: each decision keeps its rollout's trace id (``tracing:``), and
a schema 4 file (no ``trace_id`` column, records without the trace fields) is migrated in place
and still opens, real SQLite file throughout."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import replace
from pathlib import Path

from canaryd.adapters.store.sqlite import SCHEMA_VERSION, SqliteStore
from canaryd.core import stages
from canaryd.core.model import Command, CommandKind, Findings
from support.enginekit import make_policy, world

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def test_each_decision_carries_its_rollouts_trace_id(tmp_path: Path) -> None:
    s, first = stages.start("r1", "svc", "v2", make_policy(), 0.0)
    s = replace(s, trace_id=TRACE, trace_parent="00f067aa0ba902b7")
    s2, acts = stages.decide(s, world(s), Findings(commands=(Command(CommandKind.PAUSE),)), 1.0)
    untraced, first_untraced = stages.start("r2", "other", "v2", make_policy(), 0.0)
    with SqliteStore(tmp_path / "state.db") as store:
        store.commit(s2, (first, *acts), 1.0)
        store.commit(untraced, (first_untraced,), 1.0)
        assert [h["trace_id"] for h in store.history(rollout_id="r1")] == [TRACE, TRACE]
        assert [h["trace_id"] for h in store.history(target="other")] == [None]
        loaded = store.get("r1")
    assert loaded is not None
    assert (loaded.trace_id, loaded.trace_parent) == (TRACE, "00f067aa0ba902b7")


def _as_schema_4(path: Path) -> None:
    """What canaryd with schema 4 wrote: no ``trace_id`` column, no trace fields in records."""
    conn = sqlite3.connect(path)
    try:
        conn.execute("ALTER TABLE decisions DROP COLUMN trace_id")
        for rid, text in conn.execute("SELECT id, record FROM rollouts").fetchall():
            record = json.loads(text)
            del record["trace_id"], record["trace_parent"]
            conn.execute("UPDATE rollouts SET record = ? WHERE id = ?", (json.dumps(record), rid))
        conn.execute("PRAGMA user_version = 4")
        conn.commit()
    finally:
        conn.close()


def test_a_schema_4_database_is_migrated_in_place_and_its_old_rows_have_no_trace(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.db"
    s, first = stages.start("r1", "svc", "v2", make_policy(), 0.0)
    with SqliteStore(path) as store:
        store.commit(s, (first,), 0.0)
    _as_schema_4(path)
    with SqliteStore(path) as store:
        assert [h["trace_id"] for h in store.history(rollout_id="r1")] == [None]
        (loaded,) = store.load_active()
        assert loaded.trace_id is None and loaded.trace_parent is None
        traced = replace(loaded, trace_id=TRACE)
        s2, acts = stages.decide(
            traced, world(traced), Findings(commands=(Command(CommandKind.PAUSE),)), 2.0
        )
        store.commit(s2, acts, 2.0)
        assert [h["trace_id"] for h in store.history(rollout_id="r1")] == [None, TRACE]
    probe = sqlite3.connect(path)
    try:
        assert probe.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 5
    finally:
        probe.close()
