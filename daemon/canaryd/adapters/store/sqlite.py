"""The embedded state store (SPEC §7): rollouts, decisions, measurements, audit and Alertmanager's
alerts in SQLite.

Why it is shaped this way:

* One ``commit`` is one transaction: the rollout record is upserted and every decision and
  measurement that produced it appended, or none of it is. With WAL and ``synchronous=FULL``
  SQLite fsyncs the log before ``COMMIT`` returns, so a decision is durable before the runtime
  acts on it, and a ``kill -9`` loses at most a decision whose action was never taken.
* The record is the codec's JSON (``canaryd.core.codec``), which embeds the policy the rollout
  started with; the other ``rollouts`` columns are copies for queries and for the partial
  unique index that enforces "at most one active rollout per target" in the database itself.
* Alerts are an append-only journal, one row per webhook commit (see ``ALERT_JOURNAL``): the
  webhook's durable write is an append, and a restart replays the journal as the inbox took it.
* The schema is versioned with ``PRAGMA user_version``, created in one transaction on open and
  migrated step by step from an older canaryd's (``schema.MIGRATIONS``); a database from a newer
  canaryd, or one that is not ours, is refused, never "repaired".
* Calls block. The runtime runs them with ``asyncio.to_thread``; a lock makes the one
  connection safe for whichever thread holds it (sqlite3 connections are not re-entrant).
* One state, one actor: ``StateLock`` is held from before the database is read until
  ``close``, and every write first checks the lock and the state file are still ours;
  ``WriteHealth`` is why writes fail, for ``write_problem`` (both in ``store.lock``).
* Nothing from outside can make a write fail: text is made storable before it is bound (lone
  UTF-16 surrogates, which JSON can carry and UTF-8 cannot, become U+FFFD), and a value SQLite
  still cannot bind is ``UnstorableValue``, never a raw ``UnicodeEncodeError``.
* Opening refuses, before it changes anything, a file that is not ours, and refuses damage
  (``PRAGMA quick_check``, every record still owed work, the alert journal) before the daemon
  calls itself ready, rather than meeting it mid-rollout.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, cast

from canaryd.adapters.store.lock import StateLock, WriteHealth
from canaryd.adapters.store.schema import (
    DECISION_COLUMNS,
    INSERT_DECISION,
    MIGRATIONS,
    SCHEMA,
    SCHEMA_VERSION,
    UnstorableValue,
    commit_rows,
    compact_json,
    encoding,
    firing_of,
    foreign_database,
    json_storable,
    newer_schema,
    optional_storable,
    optional_time,
    storable,
)
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
    StateStore,
    StoreUnavailable,
)

BUSY_TIMEOUT = 5.0  # seconds a writer waits for another connection's lock
AUDIT_CHUNK = 5000  # rows deleted per transaction by compact_audit: writers wait less


_DECISION_COLUMNS = DECISION_COLUMNS
_MEASUREMENT_COLUMNS = (
    'seq, rollout_id, t, check_name AS "check", value, error, canary_requests, '
    "canary_errors, stable_requests, stable_errors"
)


class SqliteStore:
    """``StateStore`` on one SQLite file; open it once per process."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        """Lock, refuse what is not ours or is damaged, create or migrate. Raises (in one line
        naming the file) ``StateLocked``, ``CorruptState`` or ``StoreUnavailable``."""
        self.path = os.fspath(path)
        self._lock = threading.Lock()
        self._health = WriteHealth(self.path, self._probe)
        self._closed = False
        # The lock first: nothing is read or written before we know we are the only actor.
        self._owner = None if self.path == ":memory:" else StateLock(self.path)
        try:
            self._conn = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            self._release()
            raise StoreUnavailable(f"{self.path}: cannot open: {exc}") from exc
        self._conn.row_factory = sqlite3.Row  # rows read by column name, records built from them
        try:
            with self._errors("open"):
                self._inspect()
                self._configure()
                self._migrate()
                self._verify()
            if self._owner is not None:
                self._owner.pin_state()
        except BaseException:
            self._conn.close()
            self._release()
            raise

    # ------------------------------------------------------------------- lifecycle

    def _inspect(self) -> None:
        """Refuse a database that is not ours, reading only: nothing is changed in a file
        canaryd does not own (WAL mode, set next, rewrites the header)."""
        conn = self._conn
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}")
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise newer_schema(self.path, version)
        tables = self._tables(conn)
        if version == 0 and tables:
            raise foreign_database(self.path, tables)

    def _verify(self) -> None:
        """Meet damage now, as one clear error, not mid-rollout: the file's structure, every
        record the runtime is about to resume, and the alert journal it will replay."""
        (result,) = self._conn.execute("PRAGMA quick_check(1)").fetchone()
        if result != "ok":
            found = " ".join(result.replace("*** in database main ***", "").split())
            raise CorruptState(f"{self.path}: the database is damaged: {found}")
        self.load_active()
        self.alert_journal()

    def _configure(self) -> None:
        conn = self._conn
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
                raise newer_schema(self.path, version)
            if version == 0:
                self._create(conn)
            else:
                for step in range(version, SCHEMA_VERSION):
                    MIGRATIONS[step](conn)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _create(self, conn: sqlite3.Connection) -> None:
        tables = self._tables(conn)
        if tables:
            raise foreign_database(self.path, tables)
        for statement in SCHEMA:
            conn.execute(statement)

    @staticmethod
    def _tables(conn: sqlite3.Connection) -> list[str]:
        return [
            row[0]
            for row in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' "
                "AND name NOT LIKE 'sqlite_%' ORDER BY name"
            )
        ]

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._conn.close()
            self._release()

    def _release(self) -> None:
        if self._owner is not None:
            self._owner.release()

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
        except sqlite3.ProgrammingError as exc:
            if "binding" not in str(exc):
                raise CorruptState(f"{self.path}: {doing}: {exc}") from exc
            raise UnstorableValue(f"{self.path}: {doing}: cannot store: {exc}") from exc
        except sqlite3.DatabaseError as exc:
            raise CorruptState(f"{self.path}: {doing}: {exc}") from exc
        except (UnicodeError, OverflowError) as exc:  # a value bound as it came
            raise UnstorableValue(f"{self.path}: {doing}: cannot store: {exc}") from exc

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
        """One write transaction, refused at once if the lock or the state file was lost;
        its failure or success is what ``write_problem`` reports."""
        with self._lock:
            if self._closed:  # a late probe, or a write racing shutdown: not a disk problem
                raise StoreUnavailable(f"{self.path}: {doing}: the store is closed")
            lost = None if self._owner is None else self._owner.lost()
            if lost is not None:
                self._health.failed(lost)
                raise StoreUnavailable(lost)
            try:
                with self._errors(doing), self._transaction() as conn:
                    yield conn
            except UnstorableValue:
                raise
            except (StoreUnavailable, CorruptState) as exc:
                self._health.failed(str(exc))
                raise
            self._health.succeeded()

    def write_problem(self) -> str | None:
        """None while writes work; else why the last one failed (``WriteHealth``)."""
        lost = None if self._owner is None else self._owner.lost()
        if lost is not None:
            self._health.failed(lost)
            return lost
        return self._health.problem()

    def _probe(self) -> None:
        """A tiny real write (the schema version, rewritten as it is): it needs the disk to
        take a page, as every write does. Success clears the problem (in ``_writing``)."""
        with (
            contextlib.suppress(CanarydError, sqlite3.Error),
            self._writing("probe a write") as conn,
        ):
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

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
        with encoding(self.path, f"commit rollout {rollout.id}"):
            record = json_storable(rollout_to_dict(rollout))
            rid, target = storable(rollout.id), storable(rollout.target)
            decisions, measured = commit_rows(rollout, rid, target, actions, now, measurements)
        with self._writing(f"commit rollout {rid}") as conn:
            try:
                conn.execute(
                    "INSERT INTO rollouts (id, target, phase, active, image, started_at, "
                    "updated_at, cleanup_at, record) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (id) DO UPDATE SET target = excluded.target, "
                    "phase = excluded.phase, active = excluded.active, image = excluded.image, "
                    "started_at = excluded.started_at, updated_at = excluded.updated_at, "
                    "cleanup_at = excluded.cleanup_at, record = excluded.record",
                    (
                        rid,
                        target,
                        str(rollout.phase),
                        int(not rollout.ended),
                        storable(rollout.image),
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
                    (target,),
                ).fetchone()
                raise RolloutConflict(
                    f"target {target} already has an active rollout "
                    f"{other[0] if other else '?'} ({other[1] if other else '?'}); "
                    f"refusing to make {rid} active beside it"
                ) from exc
            conn.executemany(INSERT_DECISION, decisions)
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
            cast(
                DecisionRecord,
                {**dict(row), "evidence": self._json(row["evidence"], f"decision {row['seq']}")},
            )
            for row in rows
        ]

    def measurements(self, rollout_id: str) -> list[MeasurementRecord]:
        with self._reading("read measurements") as conn:
            rows = conn.execute(
                f"SELECT {_MEASUREMENT_COLUMNS} FROM measurements "
                "WHERE rollout_id = ? ORDER BY seq",
                (rollout_id,),
            ).fetchall()
        return [cast(MeasurementRecord, dict(row)) for row in rows]

    # ------------------------------------------------------------------- alerts

    def record_alerts(self, alerts: Sequence[Alert], now: float) -> None:
        """Durably append Alertmanager's alerts to the journal, as received at ``now``."""
        self.write_alerts(self.prepare_alerts(alerts, now))

    def prepare_alerts(self, alerts: Sequence[Alert], now: float) -> PreparedAlerts:
        """The journal row for ``write_alerts``: pure Python, run it on the event loop.

        Split from the write because the webhook is the hot path: encoding needs the GIL
        either way, while the write (an append and the fsync) runs in a thread that releases
        it for as long as SQLite works, and takes it back only three times per commit.
        """
        rows = [[a.fingerprint, a.status, a.labels, a.starts_at, a.ends_at] for a in alerts]
        with encoding(self.path, "record alerts"):
            return now, storable(compact_json(rows))

    def write_alerts(self, prepared: PreparedAlerts) -> None:
        """Append a prepared journal row in one durable transaction."""
        with self._writing("record alerts") as conn:
            conn.execute("INSERT INTO alert_journal (received_at, alerts) VALUES (?, ?)", prepared)

    def alert_journal(self) -> list[Alert]:
        """Every journalled alert, in the order received (repeats included)."""
        with self._reading("read alerts") as conn:
            rows = conn.execute("SELECT seq, alerts FROM alert_journal ORDER BY seq").fetchall()
        return [alert for seq, text in rows for alert in self._journal_row(seq, text)]

    def firing_alerts(self, now: float, expire_after: float = float("inf")) -> list[Alert]:
        """The alerts active at ``now`` after replaying the journal through
        ``core.alertbook`` (the inbox's own rule): ordered by Alertmanager's times, a resolved
        instance never re-opened, a firing one last received ``expire_after`` ago expired."""
        return alertbook.replay(self._timed_journal(), now, expire_after)

    def alert_book(self, now: float, expire_after: float) -> list[tuple[float, Alert]]:
        """The inbox's book replayed from the journal: (last received, alert) per fingerprint."""
        book = alertbook.rebuild(self._timed_journal(), now, expire_after)
        return [(entry.seen, entry.alert) for entry in book.values()]

    def _timed_journal(self) -> list[tuple[float, Alert]]:
        with self._reading("read alerts") as conn:
            rows = conn.execute(
                "SELECT seq, received_at, alerts FROM alert_journal ORDER BY seq"
            ).fetchall()
        return [
            (float(received), alert)
            for seq, received, text in rows
            for alert in self._journal_row(seq, text)
        ]

    def compact_alerts(self, before: float) -> int:
        """Forget journal rows received before ``before``, keeping the alerts they hold that
        still fire; return how many rows went. The survivors take the place (``seq``) of the
        newest row removed, so a replay still sees every later notification after them."""
        with self._writing("compact alerts") as conn:
            rows = conn.execute(
                "SELECT seq, received_at, alerts FROM alert_journal WHERE received_at < ? "
                "ORDER BY seq",
                (before,),
            ).fetchall()
            if len(rows) < 2:
                return 0
            old = [alert for seq, _, text in rows for alert in self._journal_row(seq, text)]
            last_seq, last_received = rows[-1][0], rows[-1][1]
            conn.execute("DELETE FROM alert_journal WHERE seq <= ?", (last_seq,))
            _, text = self.prepare_alerts(firing_of(old, before), last_received)
            conn.execute(
                "INSERT INTO alert_journal (seq, received_at, alerts) VALUES (?, ?, ?)",
                (last_seq, last_received, text),
            )
            return len(rows) - 1

    def _journal_row(self, seq: int, text: str) -> list[Alert]:
        try:
            return [
                Alert(str(fp), AlertStatus(status), dict(labels), float(start), optional_time(end))
                for fp, status, labels, start, end in json.loads(text)
            ]
        except (ValueError, TypeError) as exc:
            raise CorruptState(f"{self.path}: alert journal row {seq}: unreadable: {exc}") from exc

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
            row = (
                now,
                storable(who),
                storable(what),
                optional_storable(target),
                storable(outcome),
                json_storable(dict(detail or {})),
            )
        with self._writing("append audit") as conn:
            conn.execute(
                "INSERT INTO audit (t, who, what, target, outcome, detail) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                row,
            )

    def compact_audit(self, before: float, keep: int) -> int:
        """Forget audit rows older than ``before`` and all but the newest ``keep``; return how
        many went. In chunks of ``AUDIT_CHUNK`` rows, one transaction each, so the webhook and
        the workers never wait behind one long delete."""
        if keep < 0:
            raise ValueError(f"compact_audit: keep must be >= 0, not {keep}")
        with self._reading("find the audit cut-off") as conn:
            row = conn.execute(
                "SELECT seq FROM audit ORDER BY seq DESC LIMIT 1 OFFSET ?", (keep,)
            ).fetchone()
        gone = self._delete_audit("t < ?", before)
        if row is not None:
            gone += self._delete_audit("seq <= ?", row[0])
        return gone

    def _delete_audit(self, where: str, value: float) -> int:
        gone = 0
        while True:
            with self._writing("compact audit") as conn:
                deleted = conn.execute(
                    f"DELETE FROM audit WHERE seq IN "
                    f"(SELECT seq FROM audit WHERE {where} LIMIT {AUDIT_CHUNK})",
                    (value,),
                ).rowcount
            gone += deleted
            if deleted < AUDIT_CHUNK:
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
        """Audit rows matching every filter given (``since <= t <= until``; ``before``/``after``
        are ``seq`` cursors, exclusive). ``limit`` keeps the N rows nearest the cursor: the
        newest, or with ``after`` the oldest past it, so that paging forward skips nothing.
        Oldest first unless ``newest_first``. ``seq`` orders the rows, not ``t``: a clock
        stepped back cannot reorder the log or make a cursor skip a row."""
        values = dict(target=target, who=who, outcome=outcome, since=since, until=until)
        values.update(before=before, after=after)
        given = {k: v for k, v in values.items() if v is not None}
        where = " AND ".join(_AUDIT_TESTS[k] for k in given)
        args: list[object] = list(given.values())
        forward = after is not None or (limit is None and not newest_first)
        sql = "SELECT seq, t, who, what, target, outcome, detail FROM audit "
        sql += f"WHERE {where} " if where else ""
        sql += "ORDER BY seq" + ("" if forward else " DESC")
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        with self._reading("read audit log") as conn:
            rows = conn.execute(sql, args).fetchall()
        if forward == newest_first:
            rows.reverse()
        return [
            cast(
                AuditRecord,
                {**dict(row), "detail": self._json(row["detail"], f"audit {row['seq']}")},
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


# The ``audit_log`` filters: each one given is a test on its column, its value a parameter.
_AUDIT_TESTS = {
    "target": "target = ?",
    "who": "who = ?",
    "outcome": "outcome = ?",
    "since": "t >= ?",
    "until": "t <= ?",
    "before": "seq < ?",
    "after": "seq > ?",
}


if TYPE_CHECKING:  # mypy proves here that the class satisfies the port
    _PORT: type[StateStore] = SqliteStore
