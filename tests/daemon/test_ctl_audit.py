"""``canaryctl audit`` against a real ``canaryd serve`` (issue 12, point 3).

The state file is seeded, before the daemon opens it, with 1500 old audit rows written by the
real store (two days ago: more than one page of the API, which answers at most 1000 rows), then
the daemon audits real requests. canaryctl runs as a separate process, as an operator runs it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from canaryd.adapters.store.sqlite import SqliteStore
from support.servekit import TOKENS, Serve, TargetSpec, write_config

CHECKLESS = (
    "checks:\n  unused: {query: vector(1), threshold: 0}\n"
    "stages:\n  - {weight: 50, duration: 1h}\n  - {weight: 100, duration: 0s}\n"
)
SEEDED = 1500
RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:Z|[+-]\d\d:\d\d)")
# The requests the fixture makes, newest first: (who, what, target, outcome).
MADE = [
    ("operator-user", "rollback", "shop", "ok"),
    ("operator-user", "pause", "shop", "ok"),
    ("viewer-user", "pause", "shop", "forbidden"),
    ("operator-user", "start", "shop", "ok"),
]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    directory = tmp_path_factory.mktemp("ctl-audit")
    (directory / "policy.yaml").write_text(CHECKLESS)
    serve = Serve(write_config(directory, [TargetSpec("shop", "policy.yaml")]))
    seeded = SqliteStore(serve.state)
    old = time.time() - 2 * 86400
    for n in range(SEEDED):
        seeded.audit(old + n, "ci-bot", "start", "legacy", "ok", {"status": 201, "n": n})
    seeded.close()
    try:
        serve.start()
        operator = TOKENS["operator"]
        for path, token, want in (
            ("rollouts", operator, 201),
            ("pause", TOKENS["viewer"], 403),
            ("pause", operator, 200),
            ("rollback", operator, 200),
        ):
            body = {"image": "shop:2"} if path == "rollouts" else {}
            status, doc = serve.call("POST", f"/api/v1/targets/shop/{path}", body, token=token)
            assert status == want, (path, doc, serve.tail())
        yield serve
    finally:
        serve.stop()


def ctl(daemon: Serve, *args: str, role: str = "admin") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CANARYD_")}
    env |= {"CANARYD_URL": daemon.url, "CANARYD_TOKEN": TOKENS[role]}
    return subprocess.run(
        [sys.executable, "-m", "canaryd.ctl", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def json_of(daemon: Serve, *args: str) -> dict[str, object]:
    doc = json.loads(ok(ctl(daemon, "audit", "-o", "json", *args)))
    assert isinstance(doc, dict) and set(doc) == {"entries", "next"}, doc
    return doc


def rows_of(doc: dict[str, object]) -> list[tuple[str, str, str, str]]:
    entries = doc["entries"]
    assert isinstance(entries, list)
    return [(e["who"], e["what"], e["target"], e["outcome"]) for e in entries]


def test_the_table_shows_the_newest_rows_with_zoned_times(daemon: Serve) -> None:
    out = ok(ctl(daemon, "audit", "shop"))
    lines = out.splitlines()
    assert lines[0].split() == ["TIME", "SEQ", "WHO", "WHAT", "TARGET", "OUTCOME", "DETAIL"]
    assert [tuple(line.split()[2:6]) for line in lines[1:]] == MADE
    assert all(RFC3339.match(line) for line in lines[1:]), out
    forbidden = lines[3]
    assert "403 pause needs the operator role; viewer-user is viewer" in forbidden


def test_filters_reach_the_api(daemon: Serve) -> None:
    assert rows_of(json_of(daemon, "--who", "viewer-user")) == [MADE[2]]
    assert rows_of(json_of(daemon, "shop", "--outcome", "forbidden")) == [MADE[2]]
    assert rows_of(json_of(daemon, "--since", "1h")) == MADE  # an age: the seeded rows are older
    older = json_of(daemon, "--until", "1d", "--limit", "3")
    assert rows_of(older) == [("ci-bot", "start", "legacy", "ok")] * 3
    assert [e["detail"]["n"] for e in older["entries"]] == [1499, 1498, 1497]  # type: ignore[attr-defined,index]


def test_a_limit_past_one_page_follows_the_apis_next_links(daemon: Serve) -> None:
    everything = json_of(daemon, "--limit", "5000")
    assert len(rows_of(everything)) == SEEDED + len(MADE) and everything["next"] is None
    seqs = [e["seq"] for e in everything["entries"]]  # type: ignore[attr-defined]
    assert seqs == sorted(seqs, reverse=True) and len(set(seqs)) == len(seqs)

    part = json_of(daemon, "legacy", "--limit", "1200")  # two pages: 1000, then 200
    assert [e["detail"]["n"] for e in part["entries"]] == list(range(1499, 299, -1))  # type: ignore[attr-defined,index]
    assert isinstance(part["next"], str) and "before=" in part["next"]

    done = ctl(daemon, "audit", "--limit", "2")
    assert len(ok(done).splitlines()) == 3
    assert "more rows: raise --limit past 2" in done.stderr


def test_only_an_admin_may_and_bad_values_are_named(daemon: Serve) -> None:
    for role in ("viewer", "operator"):
        refused = ctl(daemon, "audit", role=role)
        assert refused.returncode == 5, refused
        assert "permission denied" in refused.stderr and "admin" in refused.stderr
    bad = ctl(daemon, "audit", "--since", "yesterday")
    assert bad.returncode == 8 and "invalid request: since: expected RFC 3339" in bad.stderr
    bad = ctl(daemon, "audit", "--outcome", "okay")
    assert bad.returncode == 8 and "outcome: expected one of" in bad.stderr
    assert ctl(daemon, "audit", "--limit", "0").returncode == 2
    nothing = ctl(daemon, "audit", "nowhere")
    assert ok(nothing).strip() == "no audit rows match"
