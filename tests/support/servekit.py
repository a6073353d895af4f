"""``canaryd serve`` as a real subprocess, for the end-to-end and kill -9 tests.

The daemon runs exactly as an operator runs it: ``python -m canaryd.cli serve -c CONFIG`` with a
config, a policy, an API tokens file and a webhook token written into the test's temporary
directory. Tests talk to it the way its clients do, over HTTP with the standard library's
``urllib`` (not canaryd's own client, so a bug there cannot hide one in the API), and look at
what it stored by opening the SQLite state read-only with ``sqlite3`` (not ``SqliteStore``,
which would migrate or write).

``Serve`` owns one config and one state file and can be spawned any number of times on them:
``kill()`` sends SIGKILL to that one pid, ``stop()`` SIGTERM then SIGKILL; both are
idempotent, so a ``finally`` can always call ``stop()``. Every incarnation appends to the
same ``canaryd.log``, which assertion messages quote.

``test_ctl.py`` has the same ideas inlined for a single module-scoped daemon; this module adds
what restarts and real Prometheus/Alertmanager need: a port and webhook token known before
the daemon starts (Alertmanager must be told where to post), the readiness probe's answers
before it turned ready, and read-only views of the stored record and decisions.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from support.procs import free_port, read_tail, stop_process

TOKENS = {
    "viewer": "viewer-token-0123456789abcdef",
    "operator": "operator-token-0123456789abcdef",
    "admin": "admin-token-0123456789abcdef",
}
WEBHOOK_TOKEN = "alertmanager-webhook-token-0123456789"
READY_TIMEOUT = 20.0

T = TypeVar("T")


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class TargetSpec:
    """One ``targets:`` entry: always the observe-only ``noop`` router and ``none`` platform."""

    name: str
    policy: str  # a path relative to the config's directory
    labels: Mapping[str, str] = field(default_factory=dict)


def write_config(
    directory: Path,
    targets: Sequence[TargetSpec],
    *,
    port: int | None = None,
    prometheus_url: str | None = None,
) -> Path:
    """Write ``canaryd.yaml``, ``tokens.yaml`` and ``webhook-token`` into ``directory``.

    Without ``prometheus_url`` the daemon is pointed at a port nothing listens on: fine for
    policies whose stages have no checks. The state is ``state.db`` beside the config.
    """
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tokens.yaml").write_text(
        "".join(
            f"- {{name: {role}-user, role: {role}, token: {t}}}\n" for role, t in TOKENS.items()
        )
    )
    (directory / "webhook-token").write_text(WEBHOOK_TOKEN + "\n")
    for secret in ("tokens.yaml", "webhook-token"):  # as an operator keeps them: no warning
        (directory / secret).chmod(0o600)
    prometheus = prometheus_url or f"http://127.0.0.1:{free_port()}"
    lines = [
        f"listen: 127.0.0.1:{port or free_port()}",
        "state: {backend: sqlite, path: state.db}",
        f"prometheus: {{url: '{prometheus}', timeout: 2s}}",
        "auth: {tokens_file: tokens.yaml, webhook: {bearer_token_file: webhook-token}}",
        "targets:",
    ]
    for target in targets:
        lines += [
            f"  - name: {target.name}",
            f"    policy: {target.policy}",
            "    platform: {kind: none}",
            "    router: {kind: noop}",
        ]
        if target.labels:
            labels = ", ".join(f"{k}: {v}" for k, v in target.labels.items())
            lines.append(f"    labels: {{{labels}}}")
    config = directory / "canaryd.yaml"
    config.write_text("\n".join(lines) + "\n")
    return config


def listen_port(config: Path) -> int:
    return int(config.read_text().split("listen: 127.0.0.1:")[1].split()[0])


# --------------------------------------------------------------------------- the process


class Serve:
    """``canaryd serve -c config``, startable again and again on the same state."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.directory = config.parent
        self.url = f"http://127.0.0.1:{listen_port(config)}"
        self.state = self.directory / "state.db"
        self.log_path = self.directory / "canaryd.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.spawned_at = 0.0

    @property
    def pid(self) -> int:
        assert self.process is not None, "spawn() first"
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def spawn(self) -> None:
        """Start a new incarnation; returns at once (see ``wait_ready``)."""
        assert not self.running, f"canaryd pid {self.pid} is still running"
        with self.log_path.open("ab") as log:
            log.write(f"--- spawn at {time.time():.3f}\n".encode())
            log.flush()
            argv = [sys.executable, "-m", "canaryd.cli", "serve", "-c", str(self.config)]
            self.process = subprocess.Popen(
                [*argv, "--json-logs"],
                cwd=self.directory,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self.spawned_at = time.monotonic()

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> list[str]:
        """Poll ``/readyz`` until it answers 200; return what it answered before that.

        Each earlier answer is ``"refused"`` (not listening yet) or the HTTP status; a 200
        never appears in the list. Fails with the log's tail if the process exits or the
        timeout passes.
        """
        assert self.process is not None, "spawn() first"
        before: list[str] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"canaryd exited with {self.process.returncode} before ready:\n{self.tail()}"
                )
            status = probe(f"{self.url}/readyz")
            if status == "200":
                return before
            if not before or before[-1] != status:
                before.append(status)
            time.sleep(0.01)
        raise AssertionError(f"canaryd not ready after {timeout:g}s ({before}):\n{self.tail()}")

    def start(self) -> None:
        self.spawn()
        self.wait_ready()

    def kill(self) -> None:
        """SIGKILL this incarnation's pid and reap it."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        if self.process is not None:
            self.process.wait(10)

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL if it lingers; the exit code (None if never spawned)."""
        if self.process is None:
            return None
        return stop_process(self.process, timeout)

    def tail(self, chars: int = 4000) -> str:
        return read_tail(self.log_path, chars)

    # ------------------------------------------------------------------ the API

    def call(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        *,
        token: str | None = TOKENS["admin"],
    ) -> tuple[int, Any]:
        return call(self.url, method, path, body, token=token)

    def rollout(self, target: str) -> dict[str, Any] | None:
        """The API's view of ``target``'s current rollout."""
        status, doc = self.call("GET", f"/api/v1/targets/{target}", token=TOKENS["viewer"])
        assert status == 200, (status, doc)
        rollout: dict[str, Any] | None = doc["rollout"]
        return rollout

    def start_rollout(self, target: str, image: str) -> dict[str, Any]:
        status, doc = self.call(
            "POST", f"/api/v1/targets/{target}/rollouts", {"image": image}, token=TOKENS["operator"]
        )
        assert status == 201, (status, doc, self.tail())
        return dict(doc)

    def metrics(self) -> str:
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=5) as response:
            return str(response.read().decode())


def probe(url: str) -> str:
    """``"200"``, another status as text, or ``"refused"`` when nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return str(response.status)
    except urllib.error.HTTPError as exc:
        return str(exc.code)
    except OSError:
        return "refused"


def call(
    url: str,
    method: str,
    path: str,
    body: Mapping[str, Any] | None = None,
    *,
    token: str | None = TOKENS["admin"],
    timeout: float = 30,
) -> tuple[int, Any]:
    """One API request; the status and the decoded JSON body, error statuses included."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"Accept": "application/json"}
    if data is not None:
        headers["Content-Type"] = "application/json"
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url + path, data, headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, json.loads(raw or b"null")
        except ValueError:
            return exc.code, raw.decode(errors="replace")


def metric_sum(exposition: str, name: str) -> float:
    """The sum of every sample of ``name`` (any labels) in a Prometheus text exposition."""
    total = 0.0
    for line in exposition.splitlines():
        if line.startswith("#"):
            continue
        metric, _, value = line.rpartition(" ")
        if metric.split("{", 1)[0] == name:
            total += float(value)
    return total


# --------------------------------------------------------------------------- the stored state


def _read_only(db: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)


def stored_rollout(db: Path, target: str) -> dict[str, Any] | None:
    """The latest stored record of ``target`` (``rollouts.record``, the codec's JSON)."""
    with contextlib.closing(_read_only(db)) as conn:
        row = conn.execute(
            "SELECT record FROM rollouts WHERE target = ? ORDER BY started_at DESC LIMIT 1",
            (target,),
        ).fetchone()
    return None if row is None else dict(json.loads(row[0]))


def stored_decisions(db: Path, rollout_id: str) -> list[dict[str, Any]]:
    """Every decision of one rollout, in the order they were committed."""
    with contextlib.closing(_read_only(db)) as conn:
        conn.row_factory = sqlite3.Row
        rows = conn.execute(
            "SELECT seq, t, phase, stage, weight, action, reason FROM decisions "
            "WHERE rollout_id = ? ORDER BY seq",
            (rollout_id,),
        ).fetchall()
    return [dict(row) for row in rows]


# --------------------------------------------------------------------------- waiting


def wait_until(read: Callable[[], T], holds: Callable[[T], bool], timeout: float, what: str) -> T:
    """Call ``read`` until ``holds`` its value; fail naming ``what`` and the last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = read()
        if holds(value):
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not reached in {timeout:g}s; last seen {value!r}")
        time.sleep(0.1)


# --------------------------------------------------------------------------- load


def start_load(url: str, rps: float, duration: float, log: Path) -> subprocess.Popen[bytes]:
    """``python -m canaryd.demo.load`` against a loopback ``url``: bounded by ``duration``."""
    argv = [sys.executable, "-m", "canaryd.demo.load", "--url", url, "--rps", f"{rps:g}"]
    with log.open("ab") as out:
        return subprocess.Popen(
            [*argv, "--duration", f"{duration:g}"],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
