"""The state store against hostile and unlucky input (issue 7), on real SQLite files.

* No text can make a write fail (point 1): lone UTF-16 surrogates in any text field are stored
  as U+FFFD, and a value SQLite cannot bind is a canaryd store error, never a raw exception.
* One state, one actor (point 2): an exclusive lock on ``<state>.lock`` is taken before the
  database is touched; every write checks that the lock file and the database are still the
  files it opened (point 16: a state file deleted under a running daemon is noticed).
* ``write_problem`` (point 10) says why writes fail, on a real write failure (RLIMIT_FSIZE in
  a subprocess: the kernel refuses to grow the files, as a full disk does), and notices
  recovery by probing.
* ``compact_audit`` (point 9) bounds the audit table by age and count.
* Damage is refused at open, and a file that is not ours is refused without being modified
  (point 14).
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest

from canaryd.adapters.store.sqlite import SqliteStore
from canaryd.config.policies import load_policy, resolve
from canaryd.core import stages
from canaryd.core.model import Action, ActionKind, Alert, Measurement, Phase, Rollout
from canaryd.ports import CorruptState, StateLocked, StoreUnavailable

POLICY = load_policy(resolve("matriz-fast-track"))
BAD = "oops \udc80 \ud800"  # two lone surrogates: not encodable as UTF-8
SAFE = "oops \ufffd \ufffd"
PAIR = "smile \ud83d\ude00"  # a surrogate pair, as JSON's "\ud83d\ude00" decodes in Python


def started(rollout_id: str = "r1", target: str = "matriz", at: float = 0.0) -> Rollout:
    rollout, _ = stages.start(rollout_id, target, f"matriz:{rollout_id}", POLICY, at)
    return rollout


def encodable(value: object) -> bool:
    """Every string in ``value`` (recursively) can be written as UTF-8."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# --------------------------------------------------------------------------- point 1


def test_lone_surrogates_in_every_text_field_are_stored_as_replacement_characters(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.db"
    rollout = replace(
        started(target=f"matriz{BAD}"),
        image=f"img{BAD}",
        phase=Phase.PAUSED,
        pause_reason=f"alert {BAD}",
        paused_at=10.0,
    )
    action = Action(ActionKind.PAUSE, f"paused: {BAD}", 0, evidence={BAD: BAD, "ok": PAIR})
    measured = Measurement(f"check{BAD}", None, error=f"query failed: {BAD}")
    with SqliteStore(path) as store:
        store.commit(rollout, (action,), 10.0, (measured,))
        store.audit(11.0, f"who{BAD}", f"what{BAD}", f"target{BAD}", f"ok{BAD}", {BAD: BAD})
        store.record_alerts([Alert(f"fp{BAD}", "firing", {"alertname": BAD}, 5.0)], 12.0)

    with SqliteStore(path) as store:  # everything reads back, after a restart too
        back = store.get("r1")
        assert back is not None
        assert (back.target, back.image, back.pause_reason) == (
            f"matriz{SAFE}",
            f"img{SAFE}",
            f"alert {SAFE}",
        )
        [decision] = store.history(rollout_id="r1")
        assert decision["reason"] == f"paused: {SAFE}"
        assert decision["evidence"] == {SAFE: SAFE, "ok": "smile \U0001f600"}
        [measurement] = store.measurements("r1")
        assert (measurement["check"], measurement["error"]) == (
            f"check{SAFE}",
            f"query failed: {SAFE}",
        )
        [entry] = store.audit_log()
        assert (entry["who"], entry["what"], entry["target"], entry["outcome"]) == (
            f"who{SAFE}",
            f"what{SAFE}",
            f"target{SAFE}",
            f"ok{SAFE}",
        )
        assert entry["detail"] == {SAFE: SAFE}
        [alert] = store.alert_journal()
        assert (alert.fingerprint, alert.labels) == (f"fp{SAFE}", {"alertname": SAFE})
        assert encodable([back.pause_reason, decision, measurement, entry, alert.labels])


def test_a_value_sqlite_cannot_store_is_a_store_error_not_a_crash(tmp_path: Path) -> None:
    with SqliteStore(tmp_path / "state.db") as store:
        with pytest.raises(CorruptState, match="cannot store"):
            store.audit(1.0, "alice", "start", None, "ok", {(1, 2): "a tuple key"})  # type: ignore[dict-item]
        with pytest.raises(CorruptState, match="cannot store"):
            store.commit(started(), (), 1.0, (Measurement("huge", 10**30),))  # type: ignore[arg-type]
        store.audit(2.0, "alice", "start", None, "ok")  # the store still works
        assert store.write_problem() is None
        assert [a["t"] for a in store.audit_log()] == [2.0]


# --------------------------------------------------------------------------- point 2


def test_a_second_store_on_the_same_state_is_refused_naming_the_holder(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with SqliteStore(path):
        before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
        with pytest.raises(StateLocked) as refused:
            SqliteStore(path)
        message = str(refused.value)
        assert str(path) in message and f"pid {os.getpid()}" in message
        assert "\n" not in message
        after = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
        assert after == before  # refused before anything was written
    with SqliteStore(path) as again:  # closing releases the lock
        assert again.load_active() == []


def test_the_lock_is_taken_before_the_database_is_created(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    lock = tmp_path / "state.db.lock"
    holder = subprocess.Popen(  # another process holds the lock; no database exists yet
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
            "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, b'%d\\n' % os.getpid()); "
            "print('locked', flush=True); sys.stdin.read()",
            str(lock),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"locked\n"
        with pytest.raises(StateLocked, match=f"pid {holder.pid}"):
            SqliteStore(path)
        assert not path.exists()
    finally:
        holder.communicate(b"", timeout=10)


def test_a_foreign_lock_file_is_not_overwritten(tmp_path: Path) -> None:
    lock = tmp_path / "state.db.lock"
    lock.write_text("somebody else's notes\n")
    with pytest.raises(CorruptState, match="not a canaryd lock file"):
        SqliteStore(tmp_path / "state.db")
    assert lock.read_text() == "somebody else's notes\n"


def test_a_state_file_deleted_under_the_store_stops_every_write(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with SqliteStore(path) as store:
        store.audit(1.0, "alice", "start", None, "ok")
        path.unlink()

        with pytest.raises(StoreUnavailable, match=r"state\.db.*deleted or replaced"):
            store.commit(started(), (Action(ActionKind.START, "go", 0),), 2.0)
        problem = store.write_problem()
        assert problem is not None and "deleted or replaced" in problem
        with pytest.raises(StoreUnavailable):
            store.audit(3.0, "alice", "pause", None, "ok")


def test_a_lock_taken_over_by_another_daemon_fences_the_first(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    first = SqliteStore(path)
    try:
        first.commit(started(), (Action(ActionKind.START, "go", 0),), 1.0)
        (tmp_path / "state.db.lock").unlink()  # someone "cleans up" the lock file
        with SqliteStore(path) as second:  # and a second daemon starts on a fresh lock
            second.audit(2.0, "bob", "start", None, "ok")

            with pytest.raises(StoreUnavailable, match=r"lock .* lost"):
                first.commit(replace(started(), phase=Phase.PAUSED), (), 3.0)
            assert "lost" in (first.write_problem() or "")
            assert second.get("r1") == started()  # the fenced write never landed
    finally:
        first.close()


# --------------------------------------------------------------------------- point 10

FULL_DISK = textwrap.dedent(
    """
    import json, os, resource, signal, sys, time
    from canaryd.adapters.store.sqlite import SqliteStore
    from canaryd.ports import StoreUnavailable

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the kernel answers EFBIG instead
    path = sys.argv[1]
    store = SqliteStore(path)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    out = {"before": store.write_problem()}
    biggest = max(os.path.getsize(path + suffix) for suffix in ("", "-wal"))
    resource.setrlimit(resource.RLIMIT_FSIZE, (biggest + 65536, hard))
    for n in range(1000):  # fill the "disk" until a write fails
        try:
            store.audit(float(n), "filler", "pad", None, "ok", {"pad": "x" * 3000})
        except StoreUnavailable as exc:
            out["error"], out["written"] = str(exc), n
            break
    out["problem"] = store.write_problem()
    resource.setrlimit(resource.RLIMIT_FSIZE, (1, hard))  # nothing at all can be written now
    time.sleep(1.2)  # past the probe interval: a probe runs, and fails
    store.write_problem()
    time.sleep(0.3)
    out["still"] = store.write_problem()
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))  # space again
    deadline = time.monotonic() + 5
    while store.write_problem() is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    out["after"] = store.write_problem()
    store.audit(9999.0, "alice", "pause", None, "ok")
    out["rows"] = len(store.audit_log())
    store.close()
    print(json.dumps(out))
    """
)


def test_write_problem_reports_a_full_disk_and_notices_recovery(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", FULL_DISK, str(tmp_path / "state.db")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.splitlines()[-1])  # after the store's log lines

    assert out["before"] is None
    assert "error" in out and out["written"] > 0, out
    assert "state.db" in out["error"]
    assert out["problem"] == out["error"]
    # out["still"] is not asserted: after a checkpoint SQLite reuses the WAL from its start, so
    # a probe may fit in pages the file already has and rightly report the store writable.
    assert out["after"] is None
    assert out["rows"] == out["written"] + 1


# --------------------------------------------------------------------------- point 9


def test_compact_audit_drops_old_rows_and_all_but_the_newest(tmp_path: Path) -> None:
    with SqliteStore(tmp_path / "state.db") as store:
        for n in range(100):
            store.audit(float(n), "anonymous", "refused", None, "401")

        assert store.compact_audit(before=30.0, keep=1000) == 30  # by age
        assert [a["t"] for a in store.audit_log()][:2] == [30.0, 31.0]
        assert store.compact_audit(before=0.0, keep=10) == 60  # by count: the newest stay
        assert [a["t"] for a in store.audit_log()] == [float(n) for n in range(90, 100)]
        assert store.compact_audit(before=0.0, keep=10) == 0
        assert store.compact_audit(before=1000.0, keep=10) == 10
        assert store.audit_log() == []
        with pytest.raises(ValueError, match="keep"):
            store.compact_audit(before=0.0, keep=-1)


def test_compact_audit_uses_an_index_on_time(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    SqliteStore(path).close()
    with sqlite3.connect(path) as conn:
        plan = conn.execute("EXPLAIN QUERY PLAN SELECT seq FROM audit WHERE t < 5").fetchall()
    assert any("audit_by_time" in str(row) for row in plan), plan


# --------------------------------------------------------------------------- point 14


def test_a_foreign_sqlite_database_is_refused_without_being_modified(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE notes (body TEXT)")
        conn.execute("INSERT INTO notes VALUES ('mine')")
    conn.close()
    before = path.read_bytes()

    with pytest.raises(CorruptState, match="not a canaryd state database"):
        SqliteStore(path)

    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.db", "notes.db.lock"]


def test_a_file_that_is_not_a_database_is_refused_without_being_modified(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.db"
    path.write_bytes(b"this is not SQLite, just text that is long enough " * 40)
    before = path.read_bytes()
    with pytest.raises(CorruptState, match="not a database"):
        SqliteStore(path)
    assert path.read_bytes() == before


def damage_pages(path: Path, seed: int = 7) -> None:
    """Random bytes over every page but the first (the header and the schema stay)."""
    data = bytearray(path.read_bytes())
    page = 4096
    rng = random.Random(seed)
    for start in range(page, len(data), page):
        for _ in range(64):
            data[start + rng.randrange(page)] = rng.randrange(256)
    path.write_bytes(bytes(data))


def filled_state(path: Path) -> None:
    with SqliteStore(path) as store:
        store.commit(started(), (Action(ActionKind.START, "go", 0),), 1.0)
        for n in range(200):
            store.audit(float(n), "alice", "status", "matriz", "ok", {"n": n})


def test_damaged_pages_are_refused_at_open(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    filled_state(path)
    damage_pages(path)
    with pytest.raises(CorruptState) as refused:
        SqliteStore(path)
    assert str(path) in str(refused.value) and "\n" not in str(refused.value)


def test_a_bad_active_record_is_refused_at_open(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    filled_state(path)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE rollouts SET record = '{not json' WHERE id = 'r1'")
    conn.close()
    with pytest.raises(CorruptState, match="rollout r1: unreadable record"):
        SqliteStore(path)
