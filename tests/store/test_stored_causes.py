"""Schema 4 of the state store: every decision keeps its typed cause, and what an older
canaryd stored (schema 3 rows without a cause, records without ``pause_cause``, a "Failed"
record) still opens, real SQLite file throughout."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import replace
from pathlib import Path

from canaryd.adapters.store.sqlite import SCHEMA_VERSION, SqliteStore
from canaryd.core import stages
from canaryd.core.model import (
    Alert,
    Cause,
    Command,
    CommandKind,
    Findings,
    Phase,
    PromoteStep,
    Stuck,
)
from support.enginekit import make_policy, started, world


def test_the_history_shows_each_decisions_cause(tmp_path: Path) -> None:
    s, first = stages.start("r1", "svc", "v2", make_policy(), 0.0)
    s, acts = stages.decide(s, world(s), Findings(commands=(Command(CommandKind.PAUSE),)), 1.0)
    with SqliteStore(tmp_path / "state.db") as store:
        store.commit(s, (first, *acts), 1.0)
        history = store.history(rollout_id="r1")
    assert [(h["action"], h["cause"]) for h in history] == [
        ("start", "started"),
        ("pause", "manual-pause"),  # paused while Pending: it waits there
    ]


def _as_schema_3(path: Path) -> None:
    """Turn a database this canaryd wrote into what canaryd with schema 3 wrote: no ``cause``
    column, records without ``pause_cause``."""
    conn = sqlite3.connect(path)
    try:
        conn.execute("ALTER TABLE decisions DROP COLUMN cause")
        conn.execute("ALTER TABLE decisions DROP COLUMN trace_id")  # schema 5's
        for rid, text in conn.execute("SELECT id, record FROM rollouts").fetchall():
            record = json.loads(text)
            del record["pause_cause"]
            conn.execute("UPDATE rollouts SET record = ? WHERE id = ?", (json.dumps(record), rid))
        conn.execute("PRAGMA user_version = 3")
        conn.commit()
    finally:
        conn.close()


def test_a_schema_3_database_is_migrated_in_place_and_its_old_rows_have_no_cause(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.db"
    alert_paused = replace(
        started(),
        id="a",
        target="a",
        phase=Phase.PAUSED,
        paused_at=5.0,
        pause_reason="alert HighLatency firing",
        alert_pauses=frozenset({"fp"}),
    )
    operator_paused = replace(
        started(), id="o", target="o", phase=Phase.PAUSED, pause_reason="paused by ops"
    )
    stuck_rollback = replace(
        started(), id="rb", target="rb", phase=Phase.FAILED, weight=0, rollback_reason="bad"
    )
    stuck_promotion = replace(
        started(), id="pr", target="pr", phase=Phase.FAILED, promote_step="update-stable"
    )
    _, first = stages.start("a", "a", "v2", make_policy(), 0.0)
    with SqliteStore(path) as store:
        for record in (alert_paused, operator_paused, stuck_rollback, stuck_promotion):
            store.commit(record, (first,) if record.id == "a" else (), 0.0)
    _as_schema_3(path)

    with SqliteStore(path) as store:
        assert [h["cause"] for h in store.history(rollout_id="a")] == [None]  # not guessed
        loaded = {r.id: r for r in store.load_active()}
        # a new decision on the migrated file keeps its cause
        s, acts = stages.decide(
            loaded["o"], world(loaded["o"]), Findings(commands=(Command(CommandKind.RESUME),)), 9
        )
        store.commit(s, acts, 9.0)
        assert [h["cause"] for h in store.history(rollout_id="o")] == ["manual-resume"]
    probe = sqlite3.connect(path)
    try:
        assert probe.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION >= 4
    finally:
        probe.close()

    # records stored before pause causes were typed: the cause is derived once, on load
    assert loaded["a"].pause_cause is Cause.ALERT
    assert loaded["o"].pause_cause is Cause.MANUAL_PAUSE
    # the wire phase "Failed" still loads, and reads as the state it stands for
    assert loaded["rb"].phase is Phase.FAILED and loaded["rb"].stuck is Stuck.ROLLBACK
    assert loaded["pr"].stuck is Stuck.PROMOTION
    assert loaded["pr"].promote_step is PromoteStep.UPDATE_STABLE
    assert loaded["rb"].rolling_back and not loaded["rb"].promoting
    assert loaded["pr"].promoting and not loaded["pr"].rolling_back


def test_an_alert_pause_loaded_from_an_old_record_still_resumes_after_its_cooldown(
    tmp_path: Path,
) -> None:
    """The one behaviour that read the pause reason's words: it now reads the derived cause."""
    path = tmp_path / "state.db"
    s = started()
    s = replace(s, stage_started_at=1.0, last_eval_at=1.0, next_eval_at=10.0)
    firing = Alert("fp", "firing", {"severity": "warning", "alertname": "Slow"}, 2.0)
    s, _ = stages.decide(s, world(s), Findings(alerts=(firing,)), 2.0)
    assert s.phase is Phase.PAUSED and s.pause_cause is Cause.ALERT
    with SqliteStore(path) as store:
        store.commit(s, (), 2.0)
    _as_schema_3(path)
    with SqliteStore(path) as store:
        (old,) = store.load_active()
    assert old.pause_cause is Cause.ALERT
    resolved = Alert("fp", "resolved", firing.labels, 2.0, 3.0)
    old, acts = stages.decide(old, world(old), Findings(alerts=(resolved,)), 3.0)
    assert [a.cause for a in acts] == [Cause.ALERT_RESOLVED] and old.resume_at == 33.0
    old, acts = stages.decide(old, world(old), Findings(), 33.0)
    assert old.phase is Phase.PROGRESSING and [a.cause for a in acts] == [Cause.ALERT_COOLDOWN]
