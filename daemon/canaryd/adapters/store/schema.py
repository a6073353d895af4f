"""What the SQLite state store keeps and how values get there: the schema, its version and
migrations, the rows of a commit, the encoding that makes any text storable, and the errors
for what cannot be stored or opened. Split from ``store.sqlite``, which holds the logic.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from canaryd.core import alertbook
from canaryd.core.codec import action_to_dict
from canaryd.core.model import Action, Alert, Measurement, Rollout
from canaryd.ports import CorruptState

SCHEMA_VERSION = 5
# Made once: it is the hot path. Not ASCII-escaped, so that ``storable`` sees (and replaces)
# lone surrogates instead of storing "\\udc80" escapes that every reader would decode back.
compact_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


class UnstorableValue(CorruptState):
    """A value SQLite cannot store (a number beyond 64 bits, a key JSON cannot write): the
    fault of this one write's input, not of the store, so ``write_problem`` ignores it."""


@contextmanager
def encoding(path: str, doing: str) -> Iterator[None]:
    """Encoding a value for SQLite (JSON, text) failed: the input's fault, a store error."""
    try:
        yield
    except (TypeError, ValueError, OverflowError) as exc:
        raise UnstorableValue(f"{path}: {doing}: cannot store: {exc}") from exc


def newer_schema(path: str, version: int) -> CorruptState:
    return CorruptState(
        f"{path}: state schema version {version} is newer than this canaryd "
        f"understands ({SCHEMA_VERSION}); refusing to touch it"
    )


def foreign_database(path: str, tables: Sequence[str]) -> CorruptState:
    return CorruptState(
        f"{path}: not a canaryd state database "
        f"(tables {', '.join(tables)} but no schema version); refusing to touch it"
    )


# Alertmanager's alerts as an append-only journal: one row per durable commit of the webhook,
# holding that commit's new alerts as a JSON list of [fingerprint, status, labels, starts_at,
# ends_at]. Appending one row costs a page or two whatever the batch; one row per alert keyed
# by (fingerprint, status, startsAt) cost a random B-tree insert per alert and per index, ten
# times the CPU on the webhook's hot path. De-duplication is the inbox's job, in memory; the
# journal is replayed in order on restart (``firing_alerts``) and compacted (``compact_alerts``).
ALERT_JOURNAL = """
    CREATE TABLE alert_journal (
        seq          INTEGER PRIMARY KEY,
        received_at  REAL NOT NULL,
        alerts       TEXT NOT NULL
    )
"""

SCHEMA = (
    """
    CREATE TABLE rollouts (
        id          TEXT PRIMARY KEY,
        target      TEXT NOT NULL,
        phase       TEXT NOT NULL,
        active      INTEGER NOT NULL CHECK (active IN (0, 1)),
        image       TEXT NOT NULL,
        started_at  REAL NOT NULL,
        updated_at  REAL NOT NULL,
        cleanup_at  REAL,
        record      TEXT NOT NULL
    )
    """,
    "CREATE UNIQUE INDEX rollouts_one_active_per_target ON rollouts (target) WHERE active = 1",
    "CREATE INDEX rollouts_by_target ON rollouts (target, started_at)",
    """
    CREATE TABLE decisions (
        seq         INTEGER PRIMARY KEY AUTOINCREMENT,
        rollout_id  TEXT NOT NULL REFERENCES rollouts (id),
        target      TEXT NOT NULL,
        t           REAL NOT NULL,
        phase       TEXT NOT NULL,
        stage       INTEGER NOT NULL,
        weight      INTEGER NOT NULL,
        action      TEXT NOT NULL,
        reason      TEXT NOT NULL,
        evidence    TEXT NOT NULL,
        cause       TEXT, -- core.model.Cause; NULL for decisions stored before schema 4
        trace_id    TEXT  -- the rollout's OpenTelemetry trace; NULL untraced or before 5
    )
    """,
    "CREATE INDEX decisions_by_rollout ON decisions (rollout_id, seq)",
    "CREATE INDEX decisions_by_target ON decisions (target, seq)",
    """
    CREATE TABLE measurements (
        seq              INTEGER PRIMARY KEY AUTOINCREMENT,
        rollout_id       TEXT NOT NULL REFERENCES rollouts (id),
        t                REAL NOT NULL,
        check_name       TEXT NOT NULL,
        value            REAL,
        error            TEXT,
        canary_requests  REAL,
        canary_errors    REAL,
        stable_requests  REAL,
        stable_errors    REAL
    )
    """,
    "CREATE INDEX measurements_by_rollout ON measurements (rollout_id, seq)",
    """
    CREATE TABLE audit (
        seq      INTEGER PRIMARY KEY AUTOINCREMENT,
        t        REAL NOT NULL,
        who      TEXT NOT NULL,
        what     TEXT NOT NULL,
        target   TEXT,
        outcome  TEXT NOT NULL,
        detail   TEXT NOT NULL
    )
    """,
    ALERT_JOURNAL,
    AUDIT_BY_TIME := "CREATE INDEX audit_by_time ON audit (t)",  # compact_audit by age
)


def audit_index_v2_to_v3(conn: sqlite3.Connection) -> None:
    """Schema 3 indexes the audit table by time, so compacting it by age is cheap."""
    conn.execute(AUDIT_BY_TIME)


def decision_cause_v3_to_v4(conn: sqlite3.Connection) -> None:
    """Schema 4 stores each decision's typed cause. Rows written before it keep a NULL cause:
    their reason text is kept as it was, and no cause is guessed from words."""
    conn.execute("ALTER TABLE decisions ADD COLUMN cause TEXT")


def decision_trace_v4_to_v5(conn: sqlite3.Connection) -> None:
    """Schema 5 stores the trace id of the rollout a decision belongs to (``tracing:``), so
    the history can link each decision to its trace. Older rows keep NULL: none was traced."""
    conn.execute("ALTER TABLE decisions ADD COLUMN trace_id TEXT")


DECISION_COLUMNS = (
    "seq, rollout_id, target, t, phase, stage, weight, action, cause, reason, evidence, trace_id"
)
INSERT_DECISION = (
    "INSERT INTO decisions (rollout_id, target, t, phase, stage, weight, action, reason, "
    "evidence, cause, trace_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def storable(text: str) -> str:
    """``text`` as SQLite can store it: lone UTF-16 surrogates (which JSON's ``\\udc80`` and
    Python's ``surrogateescape`` produce, and UTF-8 cannot encode) become U+FFFD; a pair
    becomes the character it encodes. The common case, ASCII, costs one scan."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def optional_storable(text: str | None) -> str | None:
    return None if text is None else storable(text)


def json_storable(value: object) -> str:
    """``value`` as JSON text for a column, storable (see ``storable``): keys sorted, anything
    JSON cannot name written as ``str`` (evidence holds enums and the like)."""
    return storable(json.dumps(value, sort_keys=True, default=str, ensure_ascii=False))


def commit_rows(
    rollout: Rollout,
    rid: str,
    target: str,
    actions: Sequence[Action],
    now: float,
    measurements: Sequence[Measurement],
) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    """The decision and measurement rows of one commit, every text made storable."""
    stage = rollout.stage + 1
    decisions: list[tuple[object, ...]] = [
        (
            rid,
            target,
            now,
            str(action.phase or rollout.phase),
            stage,
            rollout.weight if action.weight is None else action.weight,
            str(action.kind),
            storable(action.reason),
            json_storable(action_to_dict(action)["evidence"]),
            None if action.cause is None else str(action.cause),
            optional_storable(rollout.trace_id),
        )
        for action in actions
    ]
    measured: list[tuple[object, ...]] = [
        (
            rid,
            now,
            storable(m.check),
            m.value,
            optional_storable(m.error),
            *(
                (None, None, None, None)
                if m.counts is None
                else (
                    m.counts.canary_requests,
                    m.counts.canary_errors,
                    m.counts.stable_requests,
                    m.counts.stable_errors,
                )
            ),
        )
        for m in measurements
    ]
    return decisions, measured


def alerts_v1_to_v2(conn: sqlite3.Connection) -> None:
    """Schema 1 kept one row per alert notification; 2 journals one row per commit."""
    conn.execute(ALERT_JOURNAL)
    batches: dict[float, list[list[object]]] = {}
    for fp, status, labels, starts, ends, received in conn.execute(
        "SELECT fingerprint, status, labels, starts_at, ends_at, received_at FROM alerts "
        "ORDER BY received_at, rowid"
    ):
        batches.setdefault(received, []).append([fp, status, json.loads(labels), starts, ends])
    conn.executemany(
        "INSERT INTO alert_journal (received_at, alerts) VALUES (?, ?)",
        [(t, compact_json(rows)) for t, rows in batches.items()],
    )
    conn.execute("DROP TABLE alerts")


# From version N to N + 1, inside the open transaction (``SqliteStore._migrate``).
MIGRATIONS = {
    1: alerts_v1_to_v2,
    2: audit_index_v2_to_v3,
    3: decision_cause_v3_to_v4,
    4: decision_trace_v4_to_v5,
}


def optional_time(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]


def firing_of(journal: Sequence[Alert], now: float) -> list[Alert]:
    """The journal's active alerts at ``now`` by ``core.alertbook``'s rule (the inbox's), for
    alerts without their received times (compaction): none expires for want of a re-send."""
    return alertbook.replay(((now, alert) for alert in journal), now, float("inf"))
