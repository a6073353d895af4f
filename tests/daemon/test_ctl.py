"""canaryctl against a real ``canaryd serve`` on loopback (SPEC §5.1-§5.3).

One daemon per module runs targets that use the ``noop`` router and the ``none`` platform, and
a policy whose stages have no checks, so no Prometheus is needed (its URL points at a port
nothing listens on). Each test drives its own target, so they do not depend on each other's
order. canaryctl always runs as a separate process, exactly as an operator runs it.
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from canaryd.config.policies import load_policy, resolve
from canaryd.core import codec, stages
from canaryd.ctl.client import Client, RolloutView, rollout_of
from support.procs import free_port, wait_http_ok

ROOT = Path(__file__).resolve().parents[2]
TOKENS = {
    "viewer": "viewer-token-0123456789abcdef",
    "operator": "operator-token-0123456789abcdef",
    "admin": "admin-token-0123456789abcdef",
}
TARGETS = ("web", "api", "batch", "deploy", "weights")

# Stage 1 is long enough for pause to land in it; stage 2 waits for an operator's promote.
POLICY = """\
name: quick
interval: 250ms
error_backoff: 250ms
scale_down_delay: 0s
checks:
  unused:
    query: vector(1)
    threshold: 0
stages:
  - {weight: 10, duration: 2s}
  - {weight: 50, duration: 500ms, gate: manual}
  - {weight: 100, duration: 500ms}
"""


@dataclass
class Daemon:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def stop(self, timeout: float = 5.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
                raise
        return self.process.returncode


def write_config(directory: Path, targets: tuple[str, ...] = TARGETS) -> Path:
    port = free_port()
    (directory / "policy.yaml").write_text(POLICY)
    (directory / "tokens.yaml").write_text(
        "".join(
            f"- {{name: {role}-user, role: {role}, token: {t}}}\n" for role, t in TOKENS.items()
        )
    )
    lines = [
        f"listen: 127.0.0.1:{port}",
        "state: {backend: sqlite, path: state.db}",
        f"prometheus: {{url: 'http://127.0.0.1:{free_port()}', timeout: 1s}}",
        "auth: {tokens_file: tokens.yaml}",
        "targets:",
    ]
    for name in targets:
        lines += [
            f"  - name: {name}",
            "    policy: policy.yaml",
            "    platform: {kind: none}",
            "    router: {kind: noop}",
        ]
    config = directory / "canaryd.yaml"
    config.write_text("\n".join(lines) + "\n")
    return config


def start_daemon(directory: Path) -> Daemon:
    config = write_config(directory)
    port = int(config.read_text().split("listen: 127.0.0.1:")[1].split()[0])
    log = directory / "canaryd.log"
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "canaryd.cli", "serve", "-c", str(config), "--json-logs"],
            cwd=directory,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    daemon = Daemon(f"http://127.0.0.1:{port}", process, log)
    try:
        wait_http_ok(f"{daemon.url}/readyz", 20.0, process)
    except Exception:
        daemon.stop()
        raise AssertionError(f"canaryd did not become ready:\n{log.read_text()[-3000:]}") from None
    return daemon


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    running = start_daemon(tmp_path_factory.mktemp("canaryd"))
    try:
        yield running
    finally:
        code = running.stop()
        assert code == 0, f"canaryd exited {code}:\n{running.log.read_text()[-3000:]}"


def ctl(
    *args: str, url: str | None = None, token: str | None = TOKENS["admin"], timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CANARYD_")}
    if url is not None:
        env["CANARYD_URL"] = url
    if token is not None:
        env["CANARYD_TOKEN"] = token
    return subprocess.run(
        [sys.executable, "-m", "canaryd.ctl", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def wait_for(
    daemon: Daemon, target: str, holds: Callable[[RolloutView], bool], timeout: float = 15
) -> RolloutView:
    client = Client(daemon.url, TOKENS["viewer"])
    deadline = time.monotonic() + timeout
    seen: RolloutView | None = None
    while time.monotonic() < deadline:
        seen = rollout_of(client.target(target))
        if seen is not None and holds(seen):
            return seen
        time.sleep(0.1)
    raise AssertionError(f"{target}: condition not reached; last seen {seen}")


# --------------------------------------------------------------------------- the life of a rollout


def test_a_rollout_is_started_watched_paused_resumed_promoted_and_its_history_kept(
    daemon: Daemon,
) -> None:
    url = daemon.url
    out = ok(ctl("start", "web", "--image", "registry.local/web:v2", "--traffic", "5", url=url))
    assert "web: started" in out and "stages 5→50→100" in out

    status = ok(ctl("status", "web", url=url, token=TOKENS["viewer"]))
    assert "registry.local/web:v2" in status and "policy   quick" in status

    frame = ok(ctl("watch", "web", "--once", url=url, token=TOKENS["viewer"]))
    assert "web · rollout web-" in frame and "canary" in frame and "stable" in frame
    assert "decisions" in frame and "start" in frame

    assert "Paused" in ok(ctl("pause", "web", url=url, token=TOKENS["operator"]))
    shown = json.loads(ok(ctl("status", "web", "-o", "json", url=url)))
    assert shown["rollout"]["phase"] == "Paused"
    assert "Progressing" in ok(ctl("resume", "web", url=url, token=TOKENS["operator"]))

    gate = wait_for(daemon, "web", lambda r: r.waiting_for_promote)
    assert gate.stage == 2 and gate.weight == 50
    assert "waiting for `canaryctl promote web`" in ok(ctl("status", "web", url=url))

    assert "promoted" in ok(ctl("promote", "web", url=url))
    watched = ctl("watch", "web", "--interval", "0.2", url=url, token=TOKENS["viewer"])
    assert "ended Succeeded" in ok(watched)

    history = json.loads(ok(ctl("history", "web", "-o", "json", url=url)))
    actions = [d["action"] for d in history["decisions"]]
    for action in ("start", "pause", "resume", "promote", "succeeded"):
        assert action in actions, actions
    table = ok(ctl("history", "web", url=url))
    assert table.splitlines()[0].split() == [
        "TIME", "ROLLOUT", "PHASE", "STAGE", "WEIGHT", "ACTION", "REASON"
    ]  # fmt: skip


def test_a_fresh_rollout_rolled_back_ends_rolled_back_and_cleanup_resets_it(
    daemon: Daemon,
) -> None:
    url = daemon.url
    ok(ctl("start", "api", "--image", "api:v7", url=url, token=TOKENS["operator"]))
    out = ok(ctl("rollback", "api", "--reason", "p95 doubled", url=url, token=TOKENS["operator"]))
    assert "rolling back" in out and "p95 doubled" in out

    watched = ctl("watch", "api", "--interval", "0.2", url=url)
    assert watched.returncode == 10, watched.stdout + watched.stderr  # rolled back
    assert "ended RolledBack" in watched.stdout

    ok(ctl("start", "api", "--image", "api:v8", url=url, token=TOKENS["operator"]))
    assert "rolling back" in ok(ctl("abort", "api", url=url, token=TOKENS["operator"]))
    assert "cleaned up" in ok(ctl("cleanup", "api", url=url))
    after = json.loads(ok(ctl("-o", "json", "status", "api", url=url)))
    assert after["rollout"]["phase"] == "RolledBack"
    assert after["rollout"]["image"] == "api:v8"


def test_every_target_is_listed_as_a_table_or_as_the_apis_json(daemon: Daemon) -> None:
    table = ok(ctl("status", url=daemon.url, token=TOKENS["viewer"])).splitlines()
    assert table[0].split()[:4] == ["TARGET", "PHASE", "STAGE", "WEIGHT"]
    assert sorted(line.split()[0] for line in table[1:]) == sorted(TARGETS)
    doc = json.loads(ok(ctl("status", "-o", "json", url=daemon.url)))
    assert sorted(t["name"] for t in doc["targets"]) == sorted(TARGETS)


def test_options_may_follow_the_command_and_override_the_environment(daemon: Daemon) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    done = ctl("status", "weights", "--url", daemon.url, "--token", TOKENS["viewer"], url=nowhere)
    assert "no rollout yet" in ok(done)


def test_the_deploy_script_drives_the_daemon_through_canaryctl(
    daemon: Daemon, tmp_path: Path
) -> None:
    shim = tmp_path / "canaryctl"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m canaryd.ctl "$@"\n')
    shim.chmod(0o755)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CANARY")},
        "CANARYCTL": str(shim),
        "CANARY_TARGET": "deploy",
        "CANARYD_URL": daemon.url,
        "CANARYD_TOKEN": TOKENS["admin"],
    }
    script = str(ROOT / "deployment" / "canary" / "deploy-canary.sh")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", script, *args], capture_output=True, text=True, env=env, timeout=30
        )

    assert "deploy: started" in ok(run("start", "--image=v2.1.0", "--traffic=10"))
    assert "v2.1.0" in ok(run("status", "--platform=none"))  # the target's platform.kind
    refused = run("status", "--platform=docker")
    assert refused.returncode == 6
    assert "target 'deploy' runs on platform 'none'" in refused.stderr
    assert "rolling back" in ok(run("rollback"))
    ok(run("cleanup"))


# --------------------------------------------------------------------------- refusals


def test_without_a_token_canaryctl_says_how_to_give_one(daemon: Daemon) -> None:
    done = ctl("status", "web", url=daemon.url, token=None)
    assert done.returncode == 4
    assert done.stderr.strip() == (
        "canaryctl: token missing or not accepted: set --token or CANARYD_TOKEN"
    )
    assert ctl("status", url=daemon.url, token="wrong-token-0123456789").returncode == 4


def test_a_viewer_starting_a_rollout_is_told_which_role_it_needs(daemon: Daemon) -> None:
    done = ctl("start", "batch", "--image", "b:1", url=daemon.url, token=TOKENS["viewer"])
    assert done.returncode == 5
    assert "permission denied" in done.stderr and "operator" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_starting_the_same_image_twice_is_a_conflict_with_the_apis_message(
    daemon: Daemon,
) -> None:
    ok(ctl("start", "batch", "--image", "batch:v3", url=daemon.url))
    done = ctl("start", "batch", "--image", "batch:v3", url=daemon.url)
    assert done.returncode == 7
    assert done.stderr.startswith("canaryctl: conflict: ") and "already active" in done.stderr
    ok(ctl("cleanup", "batch", url=daemon.url))


def test_an_unknown_target_is_not_found(daemon: Daemon) -> None:
    done = ctl("status", "no-such-target", url=daemon.url)
    assert done.returncode == 6
    assert "not found" in done.stderr and "no-such-target" in done.stderr


def test_a_weight_out_of_range_is_invalid(daemon: Daemon) -> None:
    done = ctl("set-weight", "weights", "150", url=daemon.url)
    assert done.returncode == 8
    assert done.stderr.startswith("canaryctl: invalid request: weight")


def test_nothing_listening_is_cannot_reach_with_a_hint() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    done = ctl("status", url=url)
    assert done.returncode == 3
    assert done.stderr.strip() == (
        f"canaryctl: cannot reach canaryd at {url}: connection refused — "
        "is `canaryd serve` running?"
    )


# --------------------------------------------------------------------------- the daemon's process


def test_sigterm_stops_a_daemon_with_an_active_rollout_with_exit_0(tmp_path: Path) -> None:
    running = start_daemon(tmp_path)
    try:
        ok(ctl("start", "web", "--image", "web:v1", url=running.url))
        wait_for(running, "web", lambda r: r.phase == "Progressing")
    finally:
        started = time.monotonic()
        code = running.stop(timeout=5.0)
    assert code == 0, running.log.read_text()[-3000:]
    assert time.monotonic() - started < 5.0
    assert '"event": "stopping"' in running.log.read_text()


def test_serve_with_a_bad_config_exits_2_naming_the_problem(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    config.write_text(config.read_text().replace("listen:", "listne:"))
    done = subprocess.run(
        [sys.executable, "-m", "canaryd.cli", "serve", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert done.stderr.startswith(f"{config}: listne: ")


def test_serve_that_cannot_open_its_state_says_so_in_one_line_and_exits_1(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    config.write_text(config.read_text().replace("path: state.db", "path: missing/dir/state.db"))
    done = subprocess.run(
        [sys.executable, "-m", "canaryd.cli", "serve", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("canaryd: ")
    assert "state.db: cannot open" in done.stderr


# --------------------------------------------------------------------------- the client alone


def test_the_stored_record_shape_reads_like_the_apis_view() -> None:
    policy = load_policy(resolve("matriz-fast-track"))
    rollout, _ = stages.start("r1", "web", "web:v2", policy, 1000.0, traffic=5)
    view = RolloutView.of(codec.rollout_to_dict(rollout))
    assert (view.id, view.target, view.image, view.policy) == ("r1", "web", "web:v2", policy.name)
    assert (view.stage, view.stage_count, view.stage_text) == (1, 4, "1/4")
    assert view.current is not None and view.current.weight == 5
    assert rollout_of({"rollout": codec.rollout_to_dict(rollout)}) == view
    assert rollout_of({"rollout": None}) is None


class _NotCanaryd(http.server.BaseHTTPRequestHandler):
    """A proxy in front of nothing: HTML error pages, no JSON."""

    def do_GET(self) -> None:
        self.send_response(502)
        self.send_header("Content-Type", "text/html")
        self.end_headers()
        self.wfile.write(b"Bad Gateway\n<html>upstream down</html>")

    def log_message(self, *args: Any) -> None:
        pass


def test_an_answer_that_is_not_canaryds_is_one_line_and_exit_1() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotCanaryd)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        done = ctl("status", url=f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
        server.server_close()
    assert done.returncode == 1
    assert done.stderr.strip() == "canaryctl: HTTP 502 Bad Gateway: Bad Gateway"


# --------------------------------------------------------------------------- roles from the table


def test_canaryctl_names_the_role_of_the_api_route_table_when_a_403_does_not() -> None:
    """canaryctl keeps no copy of the roles: it names the route each command calls, and the
    role comes from ``api.routes`` (the table the server enforces and the document shows)."""
    from canaryd.api.routes import route_named
    from canaryd.ctl import failures
    from canaryd.ctl.client import ErrorAnswer

    for command, handler in failures.ROUTE_OF.items():
        role = route_named(handler).role
        assert role is not None, command
        said = failures.explain(ErrorAnswer(403, "forbidden", "refused", {}), command)
        assert said == f"permission denied: refused (`{command}` needs role {role} or higher)"
    assert route_named(failures.ROUTE_OF["promote"]).role == "admin"
    named = ErrorAnswer(403, "forbidden", "promote needs the admin role; x is viewer", {})
    assert failures.explain(named, "promote") == f"permission denied: {named.message}"
