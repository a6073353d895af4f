"""The audit log's read (``SqliteStore.audit_log``) against a real SQLite file: its filters,
its order and its ``seq`` cursors, which ``GET /api/v1/audit`` pages with."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from canaryd.adapters.store.sqlite import SqliteStore

# (t, who, what, target, outcome): seq 1..8, in this order.
ROWS = [
    (10.0, "alice", "start", "shop", "ok"),
    (20.0, "bob", "pause", "shop", "forbidden"),
    (30.0, "alice", "promote", "blog", "ok"),
    (40.0, "anonymous", "alerts", None, "unauthenticated"),
    (50.0, "alice", "rollback", "shop", "rejected"),
    (60.0, "bob", "start", "blog", "ok"),
    (70.0, "alice", "resume", "shop", "ok"),
    (80.0, "carol", "cleanup", "shop", "ok"),
]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    opened = SqliteStore(tmp_path / "state.db")
    for t, who, what, target, outcome in ROWS:
        opened.audit(t, who, what, target, outcome, {"status": 200})
    yield opened
    opened.close()


def seqs(store: SqliteStore, *args: object, **filters: object) -> list[int]:
    return [row["seq"] for row in store.audit_log(*args, **filters)]  # type: ignore[arg-type]


def test_without_arguments_every_row_oldest_first_as_before(store: SqliteStore) -> None:
    log = store.audit_log()
    assert [row["seq"] for row in log] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert [row["what"] for row in log] == [what for _, _, what, _, _ in ROWS]
    assert log[0]["detail"] == {"status": 200}
    assert seqs(store, "shop") == [1, 2, 5, 7, 8]  # the positional target, as callers use it


def test_each_filter_and_their_combination(store: SqliteStore) -> None:
    assert seqs(store, target="blog") == [3, 6]
    assert seqs(store, who="alice") == [1, 3, 5, 7]
    assert seqs(store, outcome="ok") == [1, 3, 6, 7, 8]
    assert seqs(store, since=30.0) == [3, 4, 5, 6, 7, 8]  # inclusive
    assert seqs(store, until=30.0) == [1, 2, 3]  # inclusive
    assert seqs(store, since=25.0, until=65.0) == [3, 4, 5, 6]
    assert seqs(store, target="shop", who="alice", outcome="ok") == [1, 7]
    assert seqs(store, target="nowhere") == []
    assert seqs(store, who="alice' OR '1'='1") == []  # a value is a parameter, never SQL


def test_newest_first_and_the_limit_keeps_the_newest(store: SqliteStore) -> None:
    assert seqs(store, newest_first=True) == [8, 7, 6, 5, 4, 3, 2, 1]
    assert seqs(store, limit=3, newest_first=True) == [8, 7, 6]
    assert seqs(store, limit=3) == [6, 7, 8]  # still the newest three, oldest first
    assert seqs(store, target="shop", limit=2, newest_first=True) == [8, 7]


def test_paging_back_with_before_and_forward_with_after_skips_nothing(
    store: SqliteStore,
) -> None:
    pages, cursor = [], None
    while True:
        page = seqs(store, before=cursor, limit=3, newest_first=True)
        if not page:
            break
        pages.append(page)
        cursor = page[-1]
    assert pages == [[8, 7, 6], [5, 4, 3], [2, 1]]

    # Forward from a seq: the rows just past it (not the newest), still newest first.
    assert seqs(store, after=2, limit=3, newest_first=True) == [5, 4, 3]
    assert seqs(store, after=5, limit=3, newest_first=True) == [8, 7, 6]
    assert seqs(store, after=2, limit=3) == [3, 4, 5]
    assert seqs(store, after=8, limit=3, newest_first=True) == []
    assert seqs(store, after=2, before=6) == [3, 4, 5]
    assert seqs(store, who="alice", before=7, newest_first=True) == [5, 3, 1]


def test_rows_written_after_a_cursor_are_found_by_after(store: SqliteStore) -> None:
    newest = seqs(store, limit=1)[0]
    store.audit(90.0, "dave", "pause", "shop", "ok")
    [row] = store.audit_log(after=newest, newest_first=True)
    assert (row["seq"], row["who"], row["what"]) == (9, "dave", "pause")
