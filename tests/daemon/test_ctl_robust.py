"""canaryctl and canaryd end quietly when the pipe or the terminal ends them (``ctl.quiet``).

Every command runs as a real process, against a real ``canaryd serve`` (``support.servekit``)
where it needs one:

- a closed pipe (``… | head -1``): exit 0 and nothing on stderr. The reader is made to go away
  deterministically by closing our end of the pipe before the command writes, which is what
  ``head`` does once it has its line, without depending on how much fits a pipe buffer;
- Ctrl-C: SIGINT sent to a ``canaryctl watch`` that is showing a live rollout, and to a command
  blocked on a daemon that accepted the connection but never answers: exit 130, no traceback;
- ``CANARYD_URL=127.0.0.1:PORT`` (no scheme) reaches the daemon as ``http://127.0.0.1:PORT``.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from support.servekit import TOKENS, Serve, TargetSpec, write_config

# One long stage and no checks: a rollout stays Progressing for the whole module, no Prometheus.
POLICY = """\
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
TIMEOUT = 30.0


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    directory = tmp_path_factory.mktemp("robust")
    (directory / "policy.yaml").write_text(POLICY)
    serve = Serve(write_config(directory, [TargetSpec("web", "policy.yaml")]))
    serve.start()
    try:
        serve.start_rollout("web", "registry.local/web:v2")
        yield serve
    finally:
        assert serve.stop() == 0, serve.tail()


def _env(url: str | None, token: str | None = TOKENS["admin"]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CANARYD_")}
    if url is not None:
        env["CANARYD_URL"] = url
    if token is not None:
        env["CANARYD_TOKEN"] = token
    return env


def _closed_pipe(module: str, *args: str, url: str | None = None) -> tuple[int, str]:
    """Run ``python -m module args`` with its stdout a pipe whose reader is already gone."""
    process = subprocess.Popen(
        [sys.executable, "-m", module, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(url),
    )
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # `head -1` has read its line and left
    try:
        err = process.stderr.read().decode()
        return process.wait(TIMEOUT), err
    finally:
        process.kill()
        process.wait(TIMEOUT)


# --------------------------------------------------------------------------- a closed pipe


@pytest.mark.parametrize(
    "args",
    [
        ("--help",),
        ("status", "web"),
        ("-o", "json", "status", "web"),
        ("history", "web"),
        ("watch", "web", "--once", "--plain"),
    ],
    ids=lambda a: " ".join(a),
)
def test_canaryctl_on_a_closed_pipe_exits_0_without_a_traceback(
    daemon: Serve, args: tuple[str, ...]
) -> None:
    code, err = _closed_pipe("canaryd.ctl", *args, url=daemon.url)
    assert (code, err) == (0, ""), f"exit {code}, stderr:\n{err}"


@pytest.mark.parametrize("args", [("--help",), ("check", "-c", "CONFIG")], ids=" ".join)
def test_canaryd_on_a_closed_pipe_exits_0_without_a_traceback(
    daemon: Serve, args: tuple[str, ...]
) -> None:
    argv = [str(daemon.config) if a == "CONFIG" else a for a in args]
    code, err = _closed_pipe("canaryd.cli", *argv)
    assert (code, err) == (0, ""), f"exit {code}, stderr:\n{err}"


# --------------------------------------------------------------------------- Ctrl-C


def _interrupt(process: subprocess.Popen[str]) -> tuple[int, str]:
    process.send_signal(signal.SIGINT)
    try:
        _, err = process.communicate(timeout=TIMEOUT)
        return process.returncode, err
    finally:
        process.kill()
        process.wait(TIMEOUT)


def test_ctrl_c_in_watch_exits_130_without_a_traceback(daemon: Serve) -> None:
    watch = subprocess.Popen(
        [sys.executable, "-m", "canaryd.ctl", "watch", "web", "--plain", "--interval", "0.2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(daemon.url, TOKENS["viewer"]),
    )
    assert watch.stdout is not None
    first = watch.stdout.readline()  # the first frame: the watch is live
    assert first.startswith("--- "), first
    code, err = _interrupt(watch)
    assert code == 130 and "Traceback" not in err and err.strip() == "", f"exit {code}:\n{err}"


def test_ctrl_c_while_a_request_hangs_exits_130_without_a_traceback() -> None:
    """A daemon that accepted the connection and never answers: the command waits in the
    request (not in watch's sleep), where Ctrl-C used to end in a traceback."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        port = silent.getsockname()[1]
        status = subprocess.Popen(
            [sys.executable, "-m", "canaryd.ctl", "status", "web"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(f"http://127.0.0.1:{port}"),
        )
        readable, _, _ = select.select([silent], [], [], TIMEOUT)  # it has connected
        assert readable, "canaryctl never connected"
        code, err = _interrupt(status)
    assert code == 130 and "Traceback" not in err, f"exit {code}:\n{err}"


# --------------------------------------------------------------------------- a URL without a scheme


def test_a_url_without_a_scheme_is_taken_as_http(daemon: Serve) -> None:
    bare = daemon.url.removeprefix("http://")
    done = subprocess.run(
        [sys.executable, "-m", "canaryd.ctl", "-o", "json", "status", "web"],
        capture_output=True,
        text=True,
        env=_env(bare, TOKENS["viewer"]),
        timeout=TIMEOUT,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["rollout"]["image"] == "registry.local/web:v2"

    flag = subprocess.run(
        [sys.executable, "-m", "canaryd.ctl", "status", "web", "--url", bare],
        capture_output=True,
        text=True,
        env=_env(None, TOKENS["viewer"]),
        timeout=TIMEOUT,
    )
    assert flag.returncode == 0 and "registry.local/web:v2" in flag.stdout, flag.stderr
    assert "unknown url type" not in done.stderr + flag.stderr
