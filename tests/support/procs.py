"""Start real Prometheus, Alertmanager and demo-service processes on loopback for tests.

Each ``start_*`` picks a free port (retrying if another process grabbed it first), writes its
config into the given tmp dir, waits until the process answers on HTTP, and returns a
``Proc`` handle with ``.url`` and ``.stop()``. ``stop()`` sends SIGTERM to that one pid, waits,
then SIGKILLs it; it is idempotent, so fixtures can call it in ``finally`` unconditionally.
Output goes to ``<name>.log`` in the tmp dir and is quoted in the error if a start fails.

A missing binary fails the test, on a developer machine as in CI: ``.ci/run`` installs the
Debian packages (SPEC §9), and a skip would let a run go green without the real component.

Timing facts (Prometheus 2.42 / Alertmanager 0.25 from Debian 12), verified here:
- Prometheus answers ``/-/ready`` within ~0.1 s, but its first scrape happens ~5 s after start:
  service discovery hands targets to the scrape manager on a 5 s tick. Use ``wait_for_up``.
- Alertmanagers reach the notifier through the same 5 s tick; an alert that fires earlier is
  dropped (``prometheus_notifications_dropped_total``) and re-sent only after
  ``--rules.alert.resend-delay`` (default 1m), so we pass 1s. Side effect: Prometheus then
  stamps ``endsAt`` = last send + 4 s, so Alertmanager resolves an alert ~4 s after Prometheus
  stops sending it.
- A ``rate(x[w])`` needs two samples inside ``w``: with ``scrape_interval: 1s`` give it ≥ 2 s of
  scrapes after the first one.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

STOP_TIMEOUT = 5.0
START_TIMEOUT = 20.0
_START_ATTEMPTS = 3

# A scrape target: "host:port", or ("host:port", {extra labels}).
ScrapeTarget = str | tuple[str, Mapping[str, str]]


class StartError(RuntimeError):
    """A process did not come up; the message quotes the tail of its log."""


@dataclass
class Proc:
    """A process we started: where it answers, and how to stop it."""

    name: str
    url: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    workdir: Path | None = None
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """Terminate this pid, kill it if it lingers; return its exit code."""
        return stop_process(self.process, timeout)

    def log(self, tail: int = 4000) -> str:
        return read_tail(self.log_path, tail)


def stop_process(process: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT) -> int | None:
    """SIGTERM one pid we started, SIGKILL it if it lingers; its exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)
    return process.returncode


def read_tail(path: Path, chars: int = 4000) -> str:
    """The end of a process's log, for error messages ("" if there is none)."""
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http_ok(
    url: str, timeout: float = START_TIMEOUT, proc: subprocess.Popen[bytes] | None = None
) -> None:
    """Poll ``url`` until it answers 2xx; raise StartError on timeout or if ``proc`` exits."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise StartError(f"process exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=1.0) as response:
                if 200 <= response.status < 300:
                    return
                last = f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.05)
    raise StartError(f"{url} not OK after {timeout:g}s: {last}")


def find_binary(*names: str) -> str:
    """The first of ``names`` on PATH; a missing one fails the test (``bash .ci/run`` installs
    them), it never skips: a green run must mean the real component ran."""
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    raise StartError(
        f"none of {', '.join(names)} is installed: run `bash .ci/run` (it installs the Debian "
        "packages prometheus and prometheus-alertmanager) or apt-get install them"
    )


def _launch(
    name: str,
    argv_for_port: Sequence[str],
    workdir: Path,
    health_path: str,
    port: int | None = None,
) -> Proc:
    """Start ``argv`` (with ``{port}`` filled in) until one attempt answers on ``health_path``."""
    log_path = workdir / f"{name}.log"
    attempts = 1 if port is not None else _START_ATTEMPTS
    failure = ""
    for _ in range(attempts):
        chosen = port if port is not None else free_port()
        argv = [arg.replace("{port}", str(chosen)) for arg in argv_for_port]
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                argv, cwd=workdir, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        proc = Proc(name, f"http://127.0.0.1:{chosen}", chosen, process, log_path, workdir)
        try:
            wait_http_ok(proc.url + health_path, START_TIMEOUT, process)
            return proc
        except StartError as exc:
            proc.stop()
            failure = f"{exc}\n--- {log_path} ---\n{proc.log()}"
    raise StartError(f"{name} did not start: {failure}")


def _workdir(tmp: Path, name: str) -> Path:
    """A fresh directory per process, so two of a kind in one test never share state."""
    Path(tmp).mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{name}-", dir=tmp))


def _static_config(target: ScrapeTarget) -> dict[str, object]:
    if isinstance(target, str):
        return {"targets": [target]}
    address, labels = target
    return {"targets": [address], "labels": dict(labels)}


def start_prometheus(
    tmp: Path,
    scrape_targets: Mapping[str, Sequence[ScrapeTarget]],
    rule_files: Sequence[str | Path] | None = None,
    alertmanager_url: str | None = None,
    scrape_interval: str = "1s",
) -> Proc:
    """Prometheus scraping ``{job: [target, ...]}``; each target may carry extra labels."""
    binary = find_binary("prometheus")
    workdir = _workdir(tmp, "prometheus")
    config: dict[str, object] = {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
        "scrape_configs": [
            {"job_name": job, "static_configs": [_static_config(t) for t in targets]}
            for job, targets in scrape_targets.items()
        ],
    }
    if rule_files:
        config["rule_files"] = [str(Path(p).resolve()) for p in rule_files]
    if alertmanager_url:
        host = urllib.parse.urlsplit(alertmanager_url).netloc
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [host]}]}]}
    config_path = workdir / "prometheus.yml"
    config_path.write_text(json.dumps(config, indent=2))  # JSON is YAML
    argv = [
        binary,
        f"--config.file={config_path}",
        "--web.listen-address=127.0.0.1:{port}",
        f"--storage.tsdb.path={workdir / 'data'}",
        "--web.enable-lifecycle",
        # Firing alerts are re-sent every resend-delay (default 1m). An alert that fires before
        # discovery has handed the notifier its Alertmanager (the same 5 s tick as scraping)
        # is dropped, and would then only arrive a minute later.
        "--rules.alert.resend-delay=1s",
        "--log.level=warn",
    ]
    proc = _launch("prometheus", argv, workdir, "/-/ready")
    proc.extra["config"] = config_path
    return proc


def start_alertmanager(
    tmp: Path,
    webhook_url: str,
    bearer_token: str,
    group_by: Sequence[str] = ("alertname",),
) -> Proc:
    """Alertmanager that posts every group to ``webhook_url`` with a bearer token, fast."""
    binary = find_binary("prometheus-alertmanager", "alertmanager")
    workdir = _workdir(tmp, "alertmanager")
    config = {
        "route": {
            "receiver": "canaryd",
            "group_by": list(group_by),
            "group_wait": "0s",
            "group_interval": "1s",
            "repeat_interval": "1h",
        },
        "receivers": [
            {
                "name": "canaryd",
                "webhook_configs": [
                    {
                        "url": webhook_url,
                        "send_resolved": True,
                        "http_config": {"authorization": {"credentials": bearer_token}},
                    }
                ],
            }
        ],
    }
    config_path = workdir / "alertmanager.yml"
    config_path.write_text(json.dumps(config, indent=2))
    argv = [
        binary,
        f"--config.file={config_path}",
        f"--storage.path={workdir / 'data'}",
        "--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",
        "--log.level=warn",
    ]
    proc = _launch("alertmanager", argv, workdir, "/-/ready")
    proc.extra["config"] = config_path
    return proc


def start_demo_service(
    port: int | None = None,
    version: str = "v1",
    deployment: str = "stable",
    error_rate: float = 0.0,
    latency: float = 0.05,
    tmp: Path | None = None,
) -> Proc:
    """The demo service (``python -m canaryd.demo.service``) as a subprocess."""
    name = f"demo-{deployment}-{version}"
    workdir = _workdir(tmp if tmp is not None else Path(tempfile.gettempdir()), name)
    argv = [
        sys.executable,
        "-m",
        "canaryd.demo.service",
        "--port={port}",
        f"--version={version}",
        f"--deployment={deployment}",
        f"--error-rate={error_rate}",
        f"--latency={latency}",
    ]
    return _launch(name, argv, workdir, "/health", port)


def prometheus_query(prometheus: Proc, promql: str) -> list[dict[str, object]]:
    """Blocking instant query for test set-up (the adapter under test is not used here)."""
    data = urllib.parse.urlencode({"query": promql}).encode()
    with urllib.request.urlopen(f"{prometheus.url}/api/v1/query", data, timeout=5) as response:
        payload = json.load(response)
    result: list[dict[str, object]] = payload["data"]["result"]
    return result


def wait_for_up(prometheus: Proc, job: str, count: int, timeout: float = 20.0) -> None:
    """Block until ``count`` targets of ``job`` have been scraped successfully."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(prometheus_query(prometheus, f'up{{job="{job}"}} == 1')) >= count:
            return
        time.sleep(0.2)
    raise StartError(f"{count} targets of job {job!r} not up after {timeout:g}s")


# --------------------------------------------------------------------------- nginx
#
# Facts (nginx 1.22 from Debian 12's nginx-light), verified here:
# - `nginx -s reload` parses the whole configuration before it signals the master (a broken
#   include makes it exit 1 with the [emerg] line), then returns at once, before the master
#   has switched workers.
# - After SIGHUP the master starts new workers and retitles the old ones "worker process is
#   shutting down"; those no longer accept connections. `wait_nginx_reloaded` waits for that.
# - The master logs each reload as "signal 1 (SIGHUP) received" (notice level), once.
# - nginx opens its compiled-in error log (/var/log/nginx) before reading -c CONF; `-e` avoids it.


def nginx_argv(nginx: Proc, *args: str) -> list[str]:
    """``nginx`` aimed at this private instance (its config, prefix and error log), + args."""
    return [*_nginx_base(nginx.extra["binary"], nginx.extra["config"], nginx.log_path), *args]


def _nginx_base(binary: object, config: object, log_path: Path) -> list[str]:
    prefix = Path(str(config)).parent
    return [str(binary), "-c", str(config), "-p", f"{prefix}/", "-e", str(log_path)]


def start_nginx(tmp: Path, include: Path, pool: str) -> Proc:
    """nginx in the foreground on 127.0.0.1, one worker, proxying ``/`` to ``$<pool>`` (a
    variable the router's ``include`` file defines); ``/__ready`` answers nginx itself."""
    try:
        binary = find_binary("nginx")
    except StartError:
        raise StartError(
            "nginx is not installed: run `bash .ci/run` (it installs the Debian package "
            "nginx-light) or apt-get install -y nginx-light"
        ) from None
    workdir = _workdir(tmp, "nginx")
    config, log_path = workdir / "nginx.conf", workdir / "error.log"
    (workdir / "tmp").mkdir()  # nginx creates the temp dirs, not their parent
    failure = ""
    for _ in range(_START_ATTEMPTS):
        port = free_port()
        config.write_text(_nginx_config(workdir, port, include, pool))
        with (workdir / "nginx.out").open("ab") as out:
            process = subprocess.Popen(
                _nginx_base(binary, config, log_path),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        extra: dict[str, object] = {"binary": binary, "config": config}
        proc = Proc("nginx", f"http://127.0.0.1:{port}", port, process, log_path, workdir, extra)
        try:
            wait_http_ok(proc.url + "/__ready", START_TIMEOUT, process)
            return proc
        except StartError as exc:
            proc.stop()
            failure = f"{exc}\n--- {log_path} ---\n{proc.log()}"
    raise StartError(f"nginx did not start: {failure}")


def _nginx_config(prefix: Path, port: int, include: Path, pool: str) -> str:
    temp = "\n".join(
        f"    {kind}_temp_path {prefix / 'tmp' / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""\
daemon off;
master_process on;
worker_processes 1;
pid {prefix / "nginx.pid"};
error_log {prefix / "error.log"} notice;
events {{ worker_connections 256; }}
http {{
    access_log off;
{temp}
    include {include};
    server {{
        listen 127.0.0.1:{port};
        location = /__ready {{ return 200 "ready\\n"; }}
        location / {{ proxy_pass http://${pool}; }}
    }}
}}
"""


def nginx_workers(nginx: Proc) -> set[int]:
    """Pids of the master's workers that take requests (not those shutting down)."""
    workers: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").strip()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == nginx.pid and title == b"nginx: worker process":
            workers.add(int(entry.name))
    return workers


def wait_nginx_reloaded(nginx: Proc, before: set[int], timeout: float = 5.0) -> None:
    """Block until every worker taking requests is new (started after ``before`` was read)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = nginx_workers(nginx)
        if now and not now & before:
            return
        time.sleep(0.01)
    raise StartError(f"nginx did not reload within {timeout:g}s:\n{nginx.log()}")


def nginx_reloads(nginx: Proc) -> int:
    """How many reloads the master has begun, from its own log (notice level)."""
    return nginx.log(10**7).count("(SIGHUP) received")


def counted(argv: Sequence[str], counter: Path) -> list[str]:
    """``argv`` behind a shell that first appends a line to ``counter``: how many times a
    command (a router's reload) was run, known the moment it returns, with no log to wait for.
    ``calls(counter)`` reads it back."""
    return ["/bin/sh", "-c", 'echo run >> "$0" && exec "$@"', str(counter), *argv]


def calls(counter: Path) -> int:
    """How many times a ``counted`` command ran (0 before the first)."""
    try:
        return len(counter.read_text().splitlines())
    except FileNotFoundError:
        return 0


def listener_pid(port: int) -> int | None:
    """The pid of the process listening on TCP ``port`` of 127.0.0.1 (from ``/proc``), or None:
    tells from outside whether a process was replaced or left alone."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # LISTEN
                inodes.add(f"socket:[{fields[9]}]")
    if not inodes:
        return None
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if any(os.readlink(fd) in inodes for fd in (entry / "fd").iterdir()):
                return int(entry.name)
        except OSError:
            continue
    return None
