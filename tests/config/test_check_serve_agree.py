"""``canaryd check`` and ``canaryd serve`` agree on every router kind, platform kind and state
backend: a config ``check`` calls ok is served, and one ``check`` refuses is refused by ``serve``
with the very same lines (issue 9 point 8).

Each case is the smallest valid config using one kind (the others at their observe-only
defaults), run through both commands as an operator runs them: ``python -m canaryd.cli check``
and ``serve`` as subprocesses. A served config must turn ready (``/readyz`` 200, the Kubernetes
kinds included: their client is made on first use, so no cluster is needed to start) and stop
cleanly on SIGTERM. ``SAMPLES`` must name every kind of this build's tables: a new kind fails
``test_every_kind_and_backend_has_a_sample`` until it is added here.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from canaryd.app import KINDS
from support import kube
from support.procs import free_port, stop_process
from support.servekit import probe

REPO = Path(__file__).resolve().parents[2]
DOCKER = "unix:///tmp/canaryd-docker.sock"  # the tests' private dockerd, never the system one
TIMEOUT = 60

ROUTERS: dict[str, str] = {
    "gateway-api": "{kind: gateway-api, name: web, stable_service: web, canary_service: web-c}",
    "traefik-service": "{kind: traefik-service, name: web, stable_service: web, "
    "canary_service: web-canary, port: 8080}",
    "argo-rollouts": "{kind: argo-rollouts, name: web, namespace: shop}",
    "nginx-ingress": "{kind: nginx-ingress, name: web, namespace: shop}",
    "traefik-file": "{kind: traefik-file, path: TMP/web.yml}",
    "nginx": "{kind: nginx, path: TMP/web.conf, stable_servers: [127.0.0.1:8081], "
    "canary_servers: [127.0.0.1:8082], test_command: 'true', reload_command: 'true'}",
    "noop": "{kind: noop}",
}
PLATFORMS: dict[str, str] = {
    "kubernetes": "{kind: kubernetes, deployment: web, namespace: shop}",
    "docker": f"{{kind: docker, labels: {{app: web}}, host: '{DOCKER}'}}",
    "none": "{kind: none}",
}
BACKENDS: dict[str, str] = {
    "sqlite": "{backend: sqlite, path: TMP/state.db}",
    "kubernetes": "{backend: kubernetes, namespace: canaryd}",
}
SAMPLES = [
    *(pytest.param("router", k, id=f"router-{k}") for k in ROUTERS),
    *(pytest.param("platform", k, id=f"platform-{k}") for k in PLATFORMS),
    *(pytest.param("state", k, id=f"state-{k}") for k in BACKENDS),
]


def test_every_kind_and_backend_has_a_sample() -> None:
    assert set(ROUTERS) == set(KINDS.routers)
    assert set(PLATFORMS) == set(KINDS.platforms)
    assert set(BACKENDS) == set(KINDS.state_backends)


def _config(tmp: Path, role: str, kind: str) -> tuple[Path, int]:
    port = free_port()
    router = ROUTERS[kind] if role == "router" else ROUTERS["noop"]
    platform = PLATFORMS[kind] if role == "platform" else PLATFORMS["none"]
    state = BACKENDS[kind] if role == "state" else BACKENDS["sqlite"]
    text = textwrap.dedent(
        f"""\
        listen: 127.0.0.1:{port}
        state: {state}
        prometheus: {{url: http://127.0.0.1:9}}
        targets:
          - name: web
            policy: matriz-fast-track
            platform: {platform}
            router: {router}
        """
    ).replace("TMP", str(tmp))
    path = tmp / "canaryd.yaml"
    path.write_text(text, encoding="utf-8")
    return path, port


def _serve(
    config: Path, port: int, env: dict[str, str] | None = None
) -> tuple[int | None, str, bool]:
    """Start ``serve``: (exit code, stderr, turned ready). A daemon that turns ready is stopped
    with SIGTERM, and its exit code is that of the clean stop."""
    process = subprocess.Popen(
        [sys.executable, "-m", "canaryd.cli", "serve", "-c", str(config)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    ready = False
    try:
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline and process.poll() is None:
            if probe(f"http://127.0.0.1:{port}/readyz") == "200":
                ready = True
                break
            time.sleep(0.05)
    finally:
        code = stop_process(process)
    assert process.stderr is not None
    err = process.stderr.read().decode()
    process.stderr.close()
    return code, err, ready


def _check(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "canaryd.cli", "check", "-c", str(config)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        timeout=TIMEOUT,
    )


def _problems(stderr: str, config: Path) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith(f"{config}: ")]


@pytest.mark.parametrize(("role", "kind"), SAMPLES)
def test_check_and_serve_agree(tmp_path: Path, role: str, kind: str) -> None:
    config, port = _config(tmp_path, role, kind)
    checked = _check(config)
    with contextlib.ExitStack() as stack:
        env = None
        if (role, kind) == ("state", "kubernetes"):  # serve opens the store: a cluster to read
            cluster = stack.enter_context(kube.threaded())
            env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig(tmp_path / "kubeconfig"))}
        code, err, ready = _serve(config, port, env)
    if checked.returncode == 0:
        assert ready, f"check said ok, serve did not turn ready (exit {code}):\n{err}"
        assert code == 0, f"serve did not stop cleanly:\n{err}"
        return
    assert checked.returncode == 2, checked.stderr
    refused = _problems(checked.stderr, config)
    assert refused, checked.stderr
    assert (code, ready) == (2, False), err
    assert _problems(err, config) == refused, "serve refuses with check's very lines"
    assert not (tmp_path / "state.db").exists(), "refused before anything was opened"


def _refused_line(config: Path, role: str, kind: str) -> str | None:
    """The line both commands print for a kind this build names but does not run, else None."""
    table: dict[str, Any] = {
        "router": {k: r.fallback for k, r in KINDS.routers.items() if r.build is None},
        "platform": {k: p.fallback for k, p in KINDS.platforms.items() if p.build is None},
        "state": {k: f for k, f in KINDS.state_backends.items() if f},
    }
    fallback = table[role].get(kind)
    if fallback is None:
        return None
    key = {"router": "targets[0].router.kind", "platform": "targets[0].platform.kind"}.get(
        role, "state.backend"
    )
    what = {"state": "state backend"}.get(role, role)
    return f"{config}: {key}: {what} {kind!r} is not available in this build yet; {fallback}"


def test_every_state_backend_is_built() -> None:
    """Each ``state.backend`` the SPEC names runs in this build (``kubernetes`` too): none is
    refused as "not available" (the line ``_refused_line`` would print), by either command."""
    assert [k for k in KINDS.state_backends if _refused_line(Path("c"), "state", k)] == []


def test_kubernetes_state_without_a_cluster_is_refused_by_serve_in_one_line(
    tmp_path: Path,
) -> None:
    """``check`` reads the config and never the state (as for a SQLite file); ``serve`` opens
    it before anything listens, and a cluster it cannot reach is one line naming it, exit 1."""
    config, port = _config(tmp_path, "state", "kubernetes")
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: gone\n"
        "clusters: [{name: gone, cluster: {server: 'http://127.0.0.1:9'}}]\n"
        "users: [{name: u, user: {}}]\n"
        "contexts: [{name: gone, context: {cluster: gone, user: u}}]\n"
    )
    assert _check(config).returncode == 0
    code, err, ready = _serve(config, port, {**os.environ, "KUBECONFIG": str(kubeconfig)})
    assert (code, ready) == (1, False), err
    assert "canaryd: kubernetes API: kubernetes namespace canaryd: open:" in err


def test_a_router_that_deploys_needs_platform_none_in_both(tmp_path: Path) -> None:
    """``argo-rollouts`` deploys the canary itself (Argo owns the ReplicaSets): a target that
    also names a platform is refused by ``check`` and ``serve`` with the same line."""
    config, port = _config(tmp_path, "router", "argo-rollouts")
    text = config.read_text().replace(PLATFORMS["none"], PLATFORMS["kubernetes"])
    config.write_text(text)
    checked = _check(config)
    code, err, _ = _serve(config, port)
    line = (
        f"{config}: targets[0].platform: router argo-rollouts deploys the canary itself; "
        "the platform must be {kind: none}, not kubernetes"
    )
    assert (checked.returncode, code) == (2, 2)
    assert _problems(checked.stderr, config) == [line]
    assert _problems(err, config) == [line]
