"""The embedded state store (SPEC §7): rollouts, decisions, measurements and audit in SQLite.

Why it is shaped this way:

* One ``commit`` is one transaction: the rollout record is upserted and every decision and
  measurement that produced it appended, or none of it is. With WAL and ``synchronous=FULL``
  SQLite fsyncs the log before ``COMMIT`` returns, so a decision is durable before the runtime
  acts on it, and a ``kill -9`` loses at most a decision whose action was never taken.
* The record is the codec's JSON (``canaryd.core.codec``), which embeds the policy the rollout
  started with; the other ``rollouts`` columns are copies for queries and for the partial
  unique index that enforces "at most one active rollout per target" in the database itself.
* The schema is versioned with ``PRAGMA user_version`` and created in one transaction on open;
  a database from a newer canaryd, or one that is not ours, is refused, never "repaired".
* Calls block. The runtime runs them with ``asyncio.to_thread``; a lock makes the one
  connection safe for whichever thread holds it (sqlite3 connections are not re-entrant).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from canaryd.core.codec import action_to_dict, rollout_from_dict, rollout_to_dict
from canaryd.core.model import Action, Alert, Measurement, Rollout
from canaryd.ports import (
    AuditRecord,
    CorruptState,
    DecisionRecord,
    MeasurementRecord,
    RolloutConflict,
    StateStore,
    StoreUnavailable,
)

SCHEMA_VERSION = 1
BUSY_TIMEOUT = 5.0  # seconds a writer waits for another connection's lock

_SCHEMA = (
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
        evidence    TEXT NOT NULL
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
    """
    CREATE TABLE alerts (
        key          TEXT PRIMARY KEY,
        fingerprint  TEXT NOT NULL,
        status       TEXT NOT NULL,
        labels       TEXT NOT NULL,
        starts_at    REAL NOT NULL,
        ends_at      REAL,
        received_at  REAL NOT NULL
    )
    """,
    "CREATE INDEX alerts_by_fingerprint ON alerts (fingerprint, received_at)",
)

_DECISION_COLUMNS = "seq, rollout_id, target, t, phase, stage, weight, action, reason, evidence"


class SqliteStore:
    """``StateStore`` on one SQLite file; open it once per process."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._lock = threading.Lock()
        try:
            self._conn = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"{self.path}: cannot open: {exc}") from exc
        try:
            with self._errors("open"):
                self._configure()
                self._migrate()
        except BaseException:
            self._conn.close()
            raise

    # ------------------------------------------------------------------- lifecycle

    def _configure(self) -> None:
        conn = self._conn
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal" and self.path != ":memory:":
            raise StoreUnavailable(f"{self.path}: cannot use WAL journal mode (got {mode})")
        conn.execute("PRAGMA synchronous = FULL")  # fsync the WAL on every COMMIT
        conn.execute("PRAGMA foreign_keys = ON")

    def _migrate(self) -> None:
        with self._transaction() as conn:
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if version == SCHEMA_VERSION:
                return
            if version > SCHEMA_VERSION:
                raise CorruptState(
                    f"{self.path}: state schema version {version} is newer than this canaryd "
                    f"understands ({SCHEMA_VERSION}); refusing to touch it"
                )
            tables = [
                row[0]
                for row in conn.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table' "
                    "AND name NOT LIKE 'sqlite_%' ORDER BY name"
                )
            ]
            if tables:
                raise CorruptState(
                    f"{self.path}: not a canaryd state database "
                    f"(tables {', '.join(tables)} but no schema version)"
                )
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> SqliteStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------- plumbing

    @contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        """Re-raise sqlite3's errors as ours: busy or I/O is temporary, the rest is damage."""
        try:
            yield
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(f"{self.path}: {doing}: {exc}") from exc
        except sqlite3.DatabaseError as exc:
            raise CorruptState(f"{self.path}: {doing}: {exc}") from exc

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that takes the write lock up front (no upgrade deadlocks)."""
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:  # also when COMMIT itself failed (disk full, I/O error)
                conn.execute("ROLLBACK")
            raise

    @contextmanager
    def _writing(self, doing: str) -> Iterator[sqlite3.Connection]:
        with self._lock, self._errors(doing), self._transaction() as conn:
            yield conn

    @contextmanager
    def _reading(self, doing: str) -> Iterator[sqlite3.Connection]:
        with self._lock, self._errors(doing):
            yield self._conn

    def _decode(self, rollout_id: str, text: str) -> Rollout:
        try:
            rollout = rollout_from_dict(json.loads(text))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CorruptState(
                f"{self.path}: rollout {rollout_id}: unreadable record: {exc!r}"
            ) from exc
        if rollout.id != rollout_id:
            raise CorruptState(f"{self.path}: rollout {rollout_id}: record is of {rollout.id}")
        return rollout

    # ------------------------------------------------------------------- rollouts

    def load_active(self) -> list[Rollout]:
        with self._reading("load active rollouts") as conn:
            rows = conn.execute(
                "SELECT id, record FROM rollouts WHERE active = 1 OR cleanup_at IS NOT NULL "
                "ORDER BY started_at, rowid"
            ).fetchall()
        return [self._decode(rid, record) for rid, record in rows]

    def get(self, rollout_id: str) -> Rollout | None:
        with self._reading("get rollout") as conn:
            row = conn.execute(
                "SELECT id, record FROM rollouts WHERE id = ?", (rollout_id,)
            ).fetchone()
        return None if row is None else self._decode(row[0], row[1])

    def latest_for_target(self, target: str) -> Rollout | None:
        with self._reading("get latest rollout") as conn:
            row = conn.execute(
                "SELECT id, record FROM rollouts WHERE target = ? "
                "ORDER BY started_at DESC, rowid DESC LIMIT 1",
                (target,),
            ).fetchone()
        return None if row is None else self._decode(row[0], row[1])

    def commit(
        self,
        rollout: Rollout,
        actions: Sequence[Action],
        now: float,
        measurements: Sequence[Measurement] = (),
    ) -> None:
        record = json.dumps(rollout_to_dict(rollout), sort_keys=True)
        stage = rollout.stage + 1
        decisions = [
            (
                rollout.id,
                rollout.target,
                now,
                str(action.phase or rollout.phase),
                stage,
                rollout.weight if action.weight is None else action.weight,
                str(action.kind),
                action.reason,
                json.dumps(action_to_dict(action)["evidence"], sort_keys=True, default=str),
            )
            for action in actions
        ]
        measured = [
            (
                rollout.id,
                now,
                m.check,
                m.value,
                m.error,
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
        with self._writing(f"commit rollout {rollout.id}") as conn:
            try:
                conn.execute(
                    "INSERT INTO rollouts (id, target, phase, active, image, started_at, "
                    "updated_at, cleanup_at, record) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (id) DO UPDATE SET target = excluded.target, "
                    "phase = excluded.phase, active = excluded.active, image = excluded.image, "
                    "started_at = excluded.started_at, updated_at = excluded.updated_at, "
                    "cleanup_at = excluded.cleanup_at, record = excluded.record",
                    (
                        rollout.id,
                        rollout.target,
                        str(rollout.phase),
                        int(rollout.phase.active),
                        rollout.image,
                        rollout.started_at,
                        now,
                        rollout.cleanup_at,
                        record,
                    ),
                )
            except sqlite3.IntegrityError as exc:
                if "rollouts.target" not in str(exc):
                    raise
                other = conn.execute(
                    "SELECT id, phase FROM rollouts WHERE target = ? AND active = 1",
                    (rollout.target,),
                ).fetchone()
                raise RolloutConflict(
                    f"target {rollout.target} already has an active rollout "
                    f"{other[0] if other else '?'} ({other[1] if other else '?'}); "
                    f"refusing to make {rollout.id} active beside it"
                ) from exc
            conn.executemany(
                "INSERT INTO decisions (rollout_id, target, t, phase, stage, weight, action, "
                "reason, evidence) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                decisions,
            )
            conn.executemany(
                "INSERT INTO measurements (rollout_id, t, check_name, value, error, "
                "canary_requests, canary_errors, stable_requests, stable_errors) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                measured,
            )

    # ------------------------------------------------------------------- history

    def history(
        self, *, rollout_id: str | None = None, target: str | None = None
    ) -> list[DecisionRecord]:
        if (rollout_id is None) == (target is None):
            raise ValueError("history needs exactly one of rollout_id or target")
        column, key = ("rollout_id", rollout_id) if rollout_id is not None else ("target", target)
        with self._reading("read history") as conn:
            rows = conn.execute(
                f"SELECT {_DECISION_COLUMNS} FROM decisions WHERE {column} = ? ORDER BY seq",
                (key,),
            ).fetchall()
        return [
            DecisionRecord(
                seq=row[0],
                rollout_id=row[1],
                target=row[2],
                t=row[3],
                phase=row[4],
                stage=row[5],
                weight=row[6],
                action=row[7],
                reason=row[8],
                evidence=self._json(row[9], f"decision {row[0]}"),
            )
            for row in rows
        ]

    def measurements(self, rollout_id: str) -> list[MeasurementRecord]:
        with self._reading("read measurements") as conn:
            rows = conn.execute(
                "SELECT seq, rollout_id, t, check_name, value, error, canary_requests, "
                "canary_errors, stable_requests, stable_errors FROM measurements "
                "WHERE rollout_id = ? ORDER BY seq",
                (rollout_id,),
            ).fetchall()
        return [
            MeasurementRecord(
                seq=row[0],
                rollout_id=row[1],
                t=row[2],
                check=row[3],
                value=row[4],
                error=row[5],
                canary_requests=row[6],
                canary_errors=row[7],
                stable_requests=row[8],
                stable_errors=row[9],
            )
            for row in rows
        ]

    # ------------------------------------------------------------------- alerts

    def record_alerts(self, alerts: Sequence[Alert], now: float) -> int:
        """Durably record Alertmanager's alerts; return how many were not recorded before."""
        return self.write_alerts(self.prepare_alerts(alerts, now))

    def prepare_alerts(self, alerts: Sequence[Alert], now: float) -> list[tuple[object, ...]]:
        """The rows for ``write_alerts``: pure Python, cheap, run it on the event loop.

        Split from the write because the webhook is the hot path: building rows needs the GIL
        either way, while the write (``executemany`` and the fsync) runs in a thread that
        releases it; doing the first half on the loop keeps the thread from queueing for it.
        """
        return [
            (
                a.key,
                a.fingerprint,
                a.status,
                json.dumps(a.labels, sort_keys=True),
                a.starts_at,
                a.ends_at,
                now,
            )
            for a in alerts
        ]

    def write_alerts(self, rows: Sequence[tuple[object, ...]]) -> int:
        """Insert prepared alert rows in one durable transaction; return how many were new.

        The key is (fingerprint, status, startsAt): Alertmanager's repeats and retries of the
        same notification are recorded once.
        """
        with self._writing("record alerts") as conn:
            before = conn.total_changes
            conn.executemany(
                "INSERT OR IGNORE INTO alerts (key, fingerprint, status, labels, starts_at, "
                "ends_at, received_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            return conn.total_changes - before

    def firing_alerts(self, now: float) -> list[Alert]:
        """The alerts whose latest notification is ``firing`` and that have not ended."""
        with self._reading("read alerts") as conn:
            rows = conn.execute(
                "SELECT fingerprint, status, labels, starts_at, ends_at FROM alerts a "
                "WHERE received_at = (SELECT MAX(received_at) FROM alerts b "
                "WHERE b.fingerprint = a.fingerprint) ORDER BY received_at"
            ).fetchall()
        latest: dict[str, Alert] = {}
        for fingerprint, status, labels, starts_at, ends_at in rows:
            latest[fingerprint] = Alert(
                fingerprint, status, self._json(labels, "alert"), starts_at, ends_at
            )
        return [
            a
            for a in latest.values()
            if a.status == "firing" and (a.ends_at is None or a.ends_at > now)
        ]

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
        text = json.dumps(dict(detail or {}), sort_keys=True, default=str)
        with self._writing("append audit") as conn:
            conn.execute(
                "INSERT INTO audit (t, who, what, target, outcome, detail) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (now, who, what, target, outcome, text),
            )

    def audit_log(self, target: str | None = None) -> list[AuditRecord]:
        where, args = ("WHERE target = ?", (target,)) if target is not None else ("", ())
        with self._reading("read audit log") as conn:
            rows = conn.execute(
                f"SELECT seq, t, who, what, target, outcome, detail FROM audit {where} "
                "ORDER BY seq",
                args,
            ).fetchall()
        return [
            AuditRecord(
                seq=row[0],
                t=row[1],
                who=row[2],
                what=row[3],
                target=row[4],
                outcome=row[5],
                detail=self._json(row[6], f"audit {row[0]}"),
            )
            for row in rows
        ]

    def _json(self, text: str, what: str) -> dict[str, Any]:
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise CorruptState(f"{self.path}: {what}: unreadable JSON: {exc}") from exc
        if not isinstance(value, dict):
            raise CorruptState(f"{self.path}: {what}: expected a JSON object")
        return value


if TYPE_CHECKING:  # mypy proves here that the class satisfies the port
    _PORT: type[StateStore] = SqliteStore
