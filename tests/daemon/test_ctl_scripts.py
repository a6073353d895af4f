"""canaryctl as scripts use it, against a real ``canaryd serve`` (issue 12, point 4).

Every command runs as a separate process, as a script runs it; the daemon is
``support.servekit``'s, with the observe-only ``noop`` router and ``none`` platform and
policies whose stages have no checks (no Prometheus needed):

- ``-o json`` everywhere: errors are ``{"error": ...}`` on stdout with the exit code of text
  mode (API refusals, an unreachable daemon, bad arguments); ``watch`` is JSON lines;
- ``pause``/``resume`` are idempotent (exit 0, "already paused" / "not paused");
- ``history --rollout ID --limit N`` filter in the API;
- times are RFC 3339 with their zone, in the API and in tables;
- ``start`` on a target with an active rollout is a 409 naming it, unless ``--supersede``;
- an unknown target's 404 suggests the close names;
- the observe-only router's and platform's decisions say what canaryd did not do.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from canaryd.core.timefmt import parse_rfc3339
from support.procs import free_port
from support.servekit import TOKENS, Serve, TargetSpec, wait_until, write_config

SLOW = """\
name: slow
interval: 250ms
checks:
  unused:
    query: vector(1)
    threshold: 0
stages:
  - {weight: 10, duration: 10m}
  - {weight: 100, duration: 1s}
"""
QUICK = """\
name: quick
interval: 100ms
scale_down_delay: 0s
checks:
  unused:
    query: vector(1)
    threshold: 0
stages:
  - {weight: 20, duration: 300ms}
  - {weight: 100, duration: 300ms}
"""
TIMEOUT = 30.0
ZONED = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:Z|[+-]\d\d:\d\d)")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    directory = tmp_path_factory.mktemp("scripts")
    (directory / "slow.yaml").write_text(SLOW)
    (directory / "quick.yaml").write_text(QUICK)
    targets = [
        TargetSpec("checkout", "slow.yaml"),
        TargetSpec("payments", "slow.yaml"),
        TargetSpec("search", "quick.yaml"),
    ]
    serve = Serve(write_config(directory, targets))
    serve.start()
    try:
        yield serve
    finally:
        assert serve.stop() == 0, serve.tail()


def ctl(
    daemon: Serve | str, *args: str, token: str = TOKENS["admin"]
) -> subprocess.CompletedProcess[str]:
    url = daemon if isinstance(daemon, str) else daemon.url
    env = {k: v for k, v in os.environ.items() if not k.startswith("CANARYD_")}
    env.update(CANARYD_URL=url, CANARYD_TOKEN=token)
    return subprocess.run(
        [sys.executable, "-m", "canaryd.ctl", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=TIMEOUT,
    )


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def error_doc(done: subprocess.CompletedProcess[str], code: int) -> dict[str, Any]:
    """The ``{"error": ...}`` a failed ``-o json`` command printed: alone on stdout, nothing
    on stderr, and the exit code it would have had in text mode."""
    assert done.returncode == code, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    assert done.stderr == "", done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1, done.stdout
    error: dict[str, Any] = json.loads(lines[0])["error"]
    assert error["exit_code"] == code
    return error


def settled(daemon: Serve, target: str) -> dict[str, Any]:
    """The target's rollout once it has ended."""
    return wait_until(
        lambda: daemon.rollout(target),
        lambda r: r is not None and r["phase"] in ("Succeeded", "RolledBack"),
        TIMEOUT,
        f"{target}'s rollout to end",
    )


# --------------------------------------------------------------------------- -o json errors


def test_an_unknown_target_suggests_the_close_names_in_text_and_in_json(daemon: Serve) -> None:
    text = ctl(daemon, "status", "chekout")
    assert text.returncode == 6 and text.stdout == ""
    assert text.stderr.strip() == (
        "canaryctl: not found: no target named 'chekout'; did you mean 'checkout'?"
    )
    error = error_doc(ctl(daemon, "-o", "json", "history", "chekout"), 6)
    assert (error["status"], error["code"], error["suggestions"]) == (
        404,
        "not_found",
        ["checkout"],
    )
    far = error_doc(ctl(daemon, "status", "zzz", "-o", "json"), 6)
    assert far["suggestions"] == [] and "did you mean" not in far["message"]


def test_every_kind_of_failure_is_json_on_stdout_with_its_usual_exit_code(daemon: Serve) -> None:
    refused = error_doc(ctl(daemon, "-o", "json", "start", "payments", "--image", "p:1",
                            token=TOKENS["viewer"]), 5)  # fmt: skip
    assert (refused["status"], refused["code"], refused["required_role"]) == (
        403, "forbidden", "operator"
    )  # fmt: skip
    invalid = error_doc(ctl(daemon, "-o", "json", "set-weight", "payments", "150"), 8)
    assert invalid["status"] == 422 and invalid["message"].startswith("weight")
    nowhere = f"http://127.0.0.1:{free_port()}"
    unreachable = error_doc(ctl(nowhere, "status", "-o", "json"), 3)
    assert (unreachable["code"], unreachable["status"], unreachable["url"]) == (
        "unreachable", None, nowhere
    )  # fmt: skip
    usage = error_doc(ctl(daemon, "--output=json", "set-weight", "payments", "lots"), 2)
    assert usage["code"] == "usage" and "expected a whole percentage" in usage["message"]
    plain = ctl(daemon, "set-weight", "payments", "lots")  # text mode: argparse's own
    assert plain.returncode == 2 and plain.stdout == "" and "usage:" in plain.stderr


# --------------------------------------------------------------------------- start, pause, resume


def test_a_start_over_an_active_rollout_is_refused_naming_it_unless_superseding(
    daemon: Serve,
) -> None:
    first = json.loads(ok(ctl(daemon, "-o", "json", "start", "checkout", "--image", "c:1")))
    refused = ctl(daemon, "start", "checkout", "--image", "c:2")
    assert refused.returncode == 7, refused.stderr
    assert f"rollout {first['id']} of c:1 is active" in refused.stderr
    assert "--supersede" in refused.stderr
    assert daemon.rollout("checkout")["id"] == first["id"]  # type: ignore[index]
    error = error_doc(ctl(daemon, "-o", "json", "start", "checkout", "--image", "c:2"), 7)
    assert error["rollout"] == first["id"]

    out = ok(ctl(daemon, "start", "checkout", "--image", "c:2", "--supersede"))
    assert "checkout: started" in out and "c:2" in out
    history = json.loads(ok(ctl(daemon, "-o", "json", "history", "checkout", "--rollout",
                                first["id"])))  # fmt: skip
    reasons = [d["reason"] for d in history["decisions"]]
    assert any("superseded by c:2" in r for r in reasons), reasons
    ok(ctl(daemon, "cleanup", "checkout"))


def test_pause_and_resume_are_idempotent(daemon: Serve) -> None:
    ok(ctl(daemon, "start", "payments", "--image", "p:1", "--supersede"))
    wait_until(
        lambda: daemon.rollout("payments"),
        lambda r: r is not None and r["phase"] == "Progressing",
        TIMEOUT,
        "payments progressing",
    )
    operator = TOKENS["operator"]
    assert "payments: paused" in ok(ctl(daemon, "pause", "payments", token=operator))
    again = ok(ctl(daemon, "pause", "payments", token=operator))
    assert again.startswith("payments: already paused — rollout"), again
    doc = json.loads(ok(ctl(daemon, "-o", "json", "pause", "payments", token=operator)))
    assert (doc["phase"], doc["noop"], doc["noop_reason"]) == ("Paused", True, "already paused")
    assert "payments: resumed" in ok(ctl(daemon, "resume", "payments", token=operator))
    running = ok(ctl(daemon, "resume", "payments", token=operator))
    assert running.startswith("payments: not paused — rollout") and "Progressing" in running
    ok(ctl(daemon, "cleanup", "payments"))
    ended = ctl(daemon, "pause", "payments", token=operator)  # nothing active: still a 409
    assert ended.returncode == 7 and "already ended" in ended.stderr


# --------------------------------------------------------------------------- watch, history, times


def test_watch_in_json_is_one_document_per_line_until_the_rollout_ends(daemon: Serve) -> None:
    ok(ctl(daemon, "start", "search", "--image", "s:1", "--supersede"))
    watched = ok(ctl(daemon, "-o", "json", "watch", "search", "--interval", "0.1"))
    docs = [json.loads(line) for line in watched.splitlines()]
    assert len(docs) >= 2 and all(d["name"] == "search" for d in docs)
    assert docs[-1]["rollout"]["phase"] == "Succeeded"
    assert len({json.dumps(d) for d in docs}) == len(docs)  # a line only when it changed
    once = ok(ctl(daemon, "watch", "search", "--once", "-o", "json"))
    assert len(once.splitlines()) == 1 and json.loads(once)["rollout"]["image"] == "s:1"


def test_history_filters_by_rollout_and_limit_in_the_api(daemon: Serve) -> None:
    ok(ctl(daemon, "start", "search", "--image", "s:2", "--supersede"))
    second = settled(daemon, "search")
    ok(ctl(daemon, "start", "search", "--image", "s:3", "--supersede"))
    third = settled(daemon, "search")
    every = json.loads(ok(ctl(daemon, "-o", "json", "history", "search")))["decisions"]
    assert {second["id"], third["id"]} <= {d["rollout_id"] for d in every}

    one = json.loads(ok(ctl(daemon, "-o", "json", "history", "search", "--rollout",
                            second["id"])))["decisions"]  # fmt: skip
    assert one == [d for d in every if d["rollout_id"] == second["id"]]
    newest = json.loads(ok(ctl(daemon, "-o", "json", "history", "search", "--limit", "2")))
    assert newest["decisions"] == every[-2:]
    both = ok(ctl(daemon, "history", "search", "--rollout", third["id"], "--limit", "3"))
    rows = both.splitlines()[1:]
    assert len(rows) == 3 and all(third["id"] in row for row in rows)

    missing = ctl(daemon, "history", "search", "--rollout", "search-0-nope")
    assert missing.returncode == 6 and "has no rollout 'search-0-nope'" in missing.stderr
    assert ctl(daemon, "history", "search", "--limit", "0").returncode == 2


def test_times_are_rfc3339_with_their_zone_in_the_api_and_in_tables(daemon: Serve) -> None:
    ok(ctl(daemon, "start", "search", "--image", "s:4", "--supersede"))
    rollout = settled(daemon, "search")
    for key in ("started_at", "finished_at"):
        assert rollout[key].endswith("Z"), rollout[key]
        assert abs(parse_rfc3339(rollout[key]) - rollout[f"{key}_unix"]) < 1e-3
    detail = json.loads(ok(ctl(daemon, "-o", "json", "status", "search")))
    for decision in detail["decisions"]:
        assert abs(parse_rfc3339(decision["t"]) - decision["t_unix"]) < 1e-3
    table = ok(ctl(daemon, "history", "search", "--limit", "3")).splitlines()
    assert all(ZONED.match(row) for row in table[1:]), table
    status = ok(ctl(daemon, "status", "search"))
    started = next(line for line in status.splitlines() if line.startswith("started"))
    assert ZONED.search(started), status


def test_the_observe_only_router_and_platform_say_what_canaryd_did_not_do(daemon: Serve) -> None:
    ok(ctl(daemon, "start", "search", "--image", "s:5", "--supersede"))
    rollout = settled(daemon, "search")
    history = json.loads(ok(ctl(daemon, "-o", "json", "history", "search", "--rollout",
                                rollout["id"])))  # fmt: skip
    reasons = [d["reason"] for d in history["decisions"]]
    said = "\n".join(reasons)
    assert "observe-only: traffic not changed" in said, said
    assert "observe-only: stable not changed; it reports s:5" in said, said
    assert "router applied" not in said and "stable runs" not in said, said
    assert "updating stable" not in said, said
