"""The demo's supporting cast: Prometheus, Alertmanager and nginx as private local processes.

Each runs from the Debian binaries on 127.0.0.1 with a config written into the demo's work
directory, on a port chosen here, in the foreground as our child (so we own its pid and stop
it by that pid). ``Binaries.find`` names every missing binary and the package that brings it,
before anything starts.

Timing facts (Prometheus 2.42 / Alertmanager 0.25 from Debian 12): Prometheus's first scrape
and its first contact with Alertmanager happen ~5 s after start (service discovery runs on a
5 s tick); ``--rules.alert.resend-delay=1s`` makes a firing alert reach Alertmanager within a
second after that instead of a minute.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

START_TIMEOUT = 20.0
STOP_TIMEOUT = 5.0

PACKAGES = {  # binary -> the Debian package that installs it
    "prometheus": "prometheus",
    "prometheus-alertmanager": "prometheus-alertmanager",
    "nginx": "nginx-light",
}


class StackError(RuntimeError):
    """A supporting process is missing or did not start; the message says what to do."""


@dataclass(frozen=True)
class Binaries:
    prometheus: str
    alertmanager: str
    nginx: str

    @classmethod
    def find(cls) -> Binaries:
        found = {name: shutil.which(name) for name in PACKAGES}
        if found["prometheus-alertmanager"] is None:
            found["prometheus-alertmanager"] = shutil.which("alertmanager")
        missing = [name for name, path in found.items() if path is None]
        if missing:
            packages = " ".join(PACKAGES[name] for name in missing)
            raise StackError(
                f"canaryd demo needs {', '.join(missing)}: "
                f"apt-get install -y {packages}   (or run `bash .ci/run`, which installs them)"
            )
        return cls(
            str(found["prometheus"]), str(found["prometheus-alertmanager"]), str(found["nginx"])
        )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Process:
    """A process we started: where it answers and how to stop it."""

    name: str
    port: int
    process: asyncio.subprocess.Process
    log: Path
    extra: dict[str, Path] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        return self.process.returncode is None

    async def stop(self) -> None:
        if self.process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.process.terminate()
        try:
            await asyncio.wait_for(self.process.wait(), STOP_TIMEOUT)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            await self.process.wait()

    def tail(self, chars: int = 2000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


async def launch(
    name: str, argv: Sequence[str], workdir: Path, port: int, health: str | None
) -> Process:
    """Start ``argv`` and wait until ``health`` (a path) answers 2xx, or the port accepts."""
    log = workdir / f"{name}.log"
    with log.open("ab") as out:
        process = await asyncio.create_subprocess_exec(
            *argv, cwd=workdir, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out
        )
    proc = Process(name, port, process, log)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + START_TIMEOUT
    timeout = aiohttp.ClientTimeout(total=1.0)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        while loop.time() < deadline and process.returncode is None:
            try:
                if health is None:
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                    writer.close()
                    return proc
                async with session.get(proc.url + health) as response:
                    if 200 <= response.status < 300:
                        return proc
            except (OSError, aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.1)
    await proc.stop()
    raise StackError(f"{name} did not start on port {port}; its log ends:\n{proc.tail()}")


async def start_prometheus(
    binary: str,
    workdir: Path,
    jobs: dict[str, list[tuple[str, dict[str, str]]]],
    rules: str,
    alertmanager_port: int,
    scrape_interval: str,
) -> Process:
    """Prometheus scraping ``{job: [(address, labels)]}``, with ``rules`` and an Alertmanager."""
    home = workdir / "prometheus"
    home.mkdir(parents=True, exist_ok=True)
    (home / "rules.yml").write_text(rules)
    config = {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
        "rule_files": [str(home / "rules.yml")],
        "alerting": {
            "alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{alertmanager_port}"]}]}]
        },
        "scrape_configs": [
            {
                "job_name": job,
                "static_configs": [{"targets": [a], "labels": labels} for a, labels in targets],
            }
            for job, targets in jobs.items()
        ],
    }
    (home / "prometheus.yml").write_text(json.dumps(config, indent=2))  # JSON is YAML
    port = free_port()
    argv = [
        binary,
        f"--config.file={home / 'prometheus.yml'}",
        f"--web.listen-address=127.0.0.1:{port}",
        f"--storage.tsdb.path={home / 'data'}",
        "--rules.alert.resend-delay=1s",
        "--log.level=warn",
    ]
    return await launch("prometheus", argv, home, port, "/-/ready")


async def start_alertmanager(
    binary: str, workdir: Path, webhook_url: str, token_file: Path
) -> Process:
    """Alertmanager posting every alert group to canaryd's webhook with a bearer token."""
    home = workdir / "alertmanager"
    home.mkdir(parents=True, exist_ok=True)
    config = {
        "route": {
            "receiver": "canaryd",
            "group_by": ["alertname", "target"],
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
                        "http_config": {"authorization": {"credentials_file": str(token_file)}},
                    }
                ],
            }
        ],
    }
    (home / "alertmanager.yml").write_text(json.dumps(config, indent=2))
    port = free_port()
    argv = [
        binary,
        f"--config.file={home / 'alertmanager.yml'}",
        f"--storage.path={home / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",
        "--log.level=warn",
    ]
    return await launch("alertmanager", argv, home, port, "/-/ready")


def nginx_config(prefix: Path, port: int, include: Path, pool: str) -> str:
    """A private nginx: in the foreground, everything under ``prefix``, one proxying server."""
    return f"""# canaryd demo: nginx as the weighted router (written by canaryd demo)
daemon off;
pid {prefix / "nginx.pid"};
error_log {prefix / "error.log"} warn;
worker_processes 1;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {prefix / "tmp"};
    proxy_temp_path {prefix / "tmp"};
    include {include};
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://${pool};
            proxy_next_upstream error timeout http_502;
        }}
    }}
}}
"""


def nginx_commands(binary: str, conf: Path, prefix: Path) -> tuple[list[str], list[str]]:
    """(test_command, reload_command) for the router, aimed at this private nginx."""
    base = [binary, "-c", str(conf), "-p", str(prefix)]
    return [*base, "-t", "-q"], [*base, "-s", "reload"]


async def start_nginx(binary: str, conf: Path, prefix: Path, port: int) -> Process:
    (prefix / "tmp").mkdir(parents=True, exist_ok=True)
    argv = [binary, "-c", str(conf), "-p", str(prefix)]
    return await launch("nginx", argv, prefix, port, None)
