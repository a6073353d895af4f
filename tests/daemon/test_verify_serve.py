"""``require_digest`` and ``verify:`` through a real ``canaryd serve`` (issue 13, points 1+2):
an unpinned start is answered 409 and stores nothing; a daemon killed with SIGKILL while a
verify command runs verifies again after the restart instead of skipping the gate; a failing
command ends the rollout before any traffic moved, its output in the decision's evidence."""

from __future__ import annotations

import html
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

from support.servekit import TOKENS, Serve, TargetSpec, stored_decisions, wait_until, write_config

TARGET = "matriz"
PINNED = "registry.local/matriz@sha256:" + "5e" * 32
POLICY = """\
name: gate-quick
interval: 250ms
scale_down_delay: 500ms
checks:
  unused: {query: vector(1), threshold: 0}
stages:
  - {weight: 50, duration: 1s}
  - {weight: 100, duration: 1s}
"""


def configure(tmp_path: Path, verify: str, *, require_digest: bool = True) -> Serve:
    """One target (``none`` platform, ``noop`` router) with ``verify`` as its one command."""
    (tmp_path / "policy.yaml").write_text(POLICY)
    config = write_config(tmp_path, [TargetSpec(TARGET, "policy.yaml")])
    extra = [f"    require_digest: {'true' if require_digest else 'false'}"]
    extra += ["    verify:", f"      - [{sys.executable}, {verify}, '{{image}}']"]
    config.write_text(config.read_text() + "\n".join(extra) + "\n")
    return Serve(config)


def verify_script(tmp_path: Path, body: str) -> str:
    path = tmp_path / "verify.py"
    path.write_text(body)
    return str(path)


def rows(serve: Serve, rollout_id: str) -> list[dict[str, Any]]:
    return stored_decisions(serve.state, rollout_id) if serve.state.exists() else []


def test_an_unpinned_image_is_refused_409_and_nothing_is_stored(tmp_path: Path) -> None:
    serve = configure(tmp_path, verify_script(tmp_path, "pass\n"))
    serve.start()
    try:
        status, doc = serve.call(
            "POST",
            f"/api/v1/targets/{TARGET}/rollouts",
            {"image": "registry.local/matriz:2.0"},
            token=TOKENS["operator"],
        )
        assert status == 409, doc
        message = doc["error"]["message"]
        assert "require_digest" in message and "registry.local/matriz:2.0" in message
        assert serve.rollout(TARGET) is None
    finally:
        serve.stop()


def test_a_kill_while_verifying_verifies_again_after_the_restart(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    body = (
        "import sys, time\n"
        f"runs = open({str(runs)!r}, 'a+')\n"
        "runs.write(sys.argv[1] + '\\n'); runs.flush()\n"
        "runs.seek(0)\n"
        "if len(runs.read().splitlines()) == 1:\n"
        "    time.sleep(600)  # the first run hangs: the daemon is killed meanwhile\n"
        "print('Verified OK')\n"
    )
    serve = configure(tmp_path, verify_script(tmp_path, body))
    serve.start()
    try:
        rollout_id = serve.start_rollout(TARGET, PINNED)["id"]
        wait_until(lambda: runs.exists() and runs.read_text(), bool, 20, "the first verify run")
        assert serve.rollout(TARGET)["phase"] == "Pending"  # type: ignore[index]
        serve.kill()
        serve.start()
        done = wait_until(
            lambda: serve.rollout(TARGET),
            lambda r: r is not None and r["phase"] == "Succeeded",
            60,
            "the rollout to succeed after the restart",
        )
        assert done["id"] == rollout_id
        assert runs.read_text().splitlines() == [PINNED, PINNED]  # verified twice, not skipped
        actions = [(d["action"], d["reason"]) for d in rows(serve, rollout_id)]
        verified = [i for i, (_, why) in enumerate(actions) if "verified" in why]
        weights = [i for i, (kind, _) in enumerate(actions) if kind == "set-weight"]
        assert len(verified) == 1 and weights and verified[0] < weights[0], actions
    finally:
        serve.stop()


def test_a_failing_command_ends_the_rollout_failed_before_traffic_with_its_output(
    tmp_path: Path,
) -> None:
    """Failed for good (SPEC §3), not RolledBack: the reason in ``message`` through the API,
    the dashboard, canaryctl and the metrics; the target takes a new start afterwards."""
    body = "import sys\nprint('Error: no matching signatures', file=sys.stderr)\nsys.exit(1)\n"
    serve = configure(tmp_path, verify_script(tmp_path, body))
    serve.start()
    try:
        rollout_id = serve.start_rollout(TARGET, PINNED)["id"]
        ended = wait_until(
            lambda: serve.rollout(TARGET),
            lambda r: r is not None and r["phase"] == "Failed",
            30,
            "the rollout to end",
        )
        assert ended["message"].startswith(f"verification of {PINNED} failed: ")
        assert "exited with code 1" in ended["message"]
        assert ended["rollback_reason"] is None and ended["finished_at"] is not None
        assert ended["weight"] == 0
        status, history = serve.call(
            "GET", f"/api/v1/targets/{TARGET}/history", token=TOKENS["viewer"]
        )
        assert status == 200, history
        decisions = [d for d in history["decisions"] if d["rollout_id"] == rollout_id]
        failed = [d for d in decisions if d.get("cause") == "verify-failed"]
        assert len(failed) == 1, json.dumps(decisions, indent=1)
        assert failed[0]["action"] == "failed" and failed[0]["phase"] == "Failed"
        (command,) = failed[0]["evidence"]["commands"]
        assert command["stderr"] == "Error: no matching signatures\n"
        assert all(d["weight"] == 0 for d in decisions), decisions  # no traffic ever moved
        exposition = serve.metrics()
        assert f'canaryd_rollout_phase{{phase="Failed",target="{TARGET}"}} 1.0' in exposition
        assert 'action="failed",reason="verify-failed"' in exposition
        assert "canaryd_rollbacks_total{" not in exposition  # nothing was rolled back
        page = page_text(serve, f"/targets/{TARGET}")
        assert "Failed: verification of" in page and "exited with code 1" in page
        shown = canaryctl(serve, "status", TARGET)
        assert shown.returncode == 0, shown.stderr
        assert "Failed" in shown.stdout and "exited with code 1" in shown.stdout
        watched = canaryctl(serve, "watch", TARGET, "--plain")  # ends: nothing is retried
        assert watched.returncode == 10, (watched.stdout, watched.stderr)
        assert f"rollout {rollout_id} ended Failed" in watched.stdout
        again = serve.start_rollout(TARGET, PINNED)  # the target is free: not a 409
        assert again["id"] != rollout_id
    finally:
        serve.stop()


def page_text(serve: Serve, path: str) -> str:
    with urllib.request.urlopen(f"{serve.url}{path}", timeout=10) as response:
        return html.unescape(response.read().decode())


def canaryctl(serve: Serve, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CANARYD_")}
    env.update(CANARYD_URL=serve.url, CANARYD_TOKEN=TOKENS["viewer"])
    argv = [sys.executable, "-m", "canaryd.ctl", *args]
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=30)
