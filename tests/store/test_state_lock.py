"""``canaryd serve`` on a state it must not act on (issue 7, points 2, 14 and 16).

Real daemons as operators run them (``tests/support/servekit.py``): a second daemon on the state of
a running one refuses to start with one line naming the file and the holder's pid (exit 2) while
the first goes on working; damaged state, or a database that is not canaryd's, makes ``serve``
exit with one line naming the file before it ever listens, and leaves a foreign file as it was.
"""

from __future__ import annotations

import random
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from canaryd.adapters.store.sqlite import SqliteStore
from canaryd.config.policies import load_policy, resolve
from canaryd.core import stages
from canaryd.core.model import Action, ActionKind
from support.servekit import TOKENS, Serve, TargetSpec, listen_port, probe, wait_until, write_config

TARGET = "matriz"
POLICY = """\
name: lock-quick
interval: 250ms
checks:
  unused: {query: vector(1), threshold: 0}
stages:
  - {weight: 10, duration: 1h}
"""
RUN_TIMEOUT = 30.0


def configure(directory: Path, state: Path | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "policy.yaml").write_text(POLICY)
    config = write_config(directory, [TargetSpec(TARGET, "policy.yaml")])
    if state is not None:
        text = config.read_text().replace("path: state.db", f"path: '{state}'")
        config.write_text(text)
    return config


def serve_once(config: Path) -> subprocess.CompletedProcess[str]:
    """``canaryd serve`` that is expected to refuse to start: its exit code and output."""
    argv = [sys.executable, "-m", "canaryd.cli", "serve", "-c", str(config), "--json-logs"]
    return subprocess.run(
        argv,
        cwd=config.parent,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        stdin=subprocess.DEVNULL,
    )


def assert_one_line_naming(done: subprocess.CompletedProcess[str], state: Path) -> str:
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert str(state) in lines[0], lines
    assert "Traceback" not in done.stderr + done.stdout
    assert "serving" not in done.stdout  # it never called itself ready
    return lines[0]


# --------------------------------------------------------------------------- point 2


def test_a_second_daemon_on_the_same_state_refuses_to_start(tmp_path: Path) -> None:
    first = Serve(configure(tmp_path / "first"))
    first.start()
    try:
        state = first.state.resolve()
        second_config = configure(tmp_path / "second", state=state)

        done = serve_once(second_config)

        assert done.returncode == 2, done.stderr
        line = assert_one_line_naming(done, state)
        assert f"pid {first.pid}" in line and "another canaryd" in line
        assert probe(f"{first.url}/readyz") == "200"  # the first one goes on working
        rollout = first.start_rollout(TARGET, "registry.local/matriz:2.0")
        status, _ = first.call(
            "POST", f"/api/v1/targets/{TARGET}/rollback", {"reason": "test"}, token=TOKENS["admin"]
        )
        assert status == 200
        wait_until(
            lambda: first.rollout(TARGET) or {},
            lambda r: r.get("id") == rollout["id"] and r.get("phase") == "RolledBack",
            10,
            "the first daemon to roll back",
        )
    finally:
        assert first.stop() == 0, first.tail()
    second = Serve(second_config)  # once the first is gone, the state may be taken over
    second.state = state
    second.start()
    assert second.stop() == 0, second.tail()


def test_a_state_file_deleted_under_the_daemon_is_logged_loudly(tmp_path: Path) -> None:
    serve = Serve(configure(tmp_path))
    serve.start()
    try:
        serve.state.unlink()
        wait_until(
            serve.tail,
            lambda log: "state_store_cannot_write" in log and "deleted or replaced" in log,
            10,
            "the daemon to notice its state file is gone",
        )
    finally:
        serve.stop()


# --------------------------------------------------------------------------- point 14


def filled_state(path: Path) -> None:
    policy = load_policy(resolve("matriz-fast-track"))
    rollout, _ = stages.start("r1", TARGET, "matriz:2", policy, 1.0)
    with SqliteStore(path) as store:
        store.commit(rollout, (Action(ActionKind.START, "go", 0),), 1.0)
        for n in range(200):
            store.audit(float(n), "alice", "status", TARGET, "ok", {"n": n})


def bad_record(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE rollouts SET record = '{not json' WHERE id = 'r1'")
    conn.close()


def bad_journal(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO alert_journal (received_at, alerts) VALUES (1, '{bad')")
    conn.close()


def random_pages(path: Path) -> None:
    data = bytearray(path.read_bytes())
    rng = random.Random(14)
    for start in range(4096, len(data), 4096):  # every page but the header's
        for _ in range(64):
            data[start + rng.randrange(4096)] = rng.randrange(256)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage",
    [bad_record, bad_journal, random_pages],
    ids=["bad-record", "bad-alert-journal", "random-pages"],
)
def test_damaged_state_exits_with_one_line_before_listening(tmp_path: Path, damage: object) -> None:
    config = configure(tmp_path)
    state = tmp_path / "state.db"
    filled_state(state)
    damage(state)  # type: ignore[operator]

    with socket.socket() as occupied:  # a daemon that listened before loading would fail here
        occupied.bind(("127.0.0.1", listen_port(config)))
        occupied.listen()
        done = serve_once(config)

    assert done.returncode == 1, done.stderr
    line = assert_one_line_naming(done, state)
    said = line.split(str(state), 1)[1]  # the message after the file's name
    assert "damaged" in said or "unreadable" in said, line


def test_a_foreign_database_is_refused_and_left_unmodified(tmp_path: Path) -> None:
    state = tmp_path / "theirs.db"
    with sqlite3.connect(state) as conn:
        conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
        conn.execute("INSERT INTO invoices (total) VALUES (12.5)")
    conn.close()
    before = state.read_bytes()
    config = configure(tmp_path, state=state)

    done = serve_once(config)

    assert done.returncode == 1, done.stderr
    line = assert_one_line_naming(done, state)
    assert "not a canaryd state database" in line.split(str(state), 1)[1]
    assert state.read_bytes() == before
    assert not Path(f"{state}-wal").exists()
