"""The private Docker engine for tests: busybox test images and labelled, cleaned-up containers.

The engine is the one ``.ci/run`` starts (``dockerd`` on ``/tmp/canaryd-docker.sock``); without
it a test fails and says so, it never skips. No registry is reachable, so the images are built
here from Debian's static busybox (``busybox-static``): ``canaryd-test-web:v1`` and ``:v2`` serve
their version at ``/`` with ``busybox httpd`` on port 8080 (built once, then reused by tag; the
same images and tags as ``tests/platforms/test_docker_platform.py`` builds). Every container a
test creates carries ``canaryd-test.owner=<id>`` (a canary and recreated stables copy the label)
and ``owned_target`` removes them all by that label afterwards.

``busybox httpd`` as PID 1 ignores SIGTERM: give the platform ``stop_timeout=1`` so the engine
kills it after a second instead of ten.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiodocker

from support.procs import StartError

SOCKET = "/tmp/canaryd-docker.sock"
URL = f"unix://{SOCKET}"
IMAGE = "canaryd-test-web"
OWNER = "canaryd-test.owner"
PROJECT = "canaryd-test"
SERVE = '["/bin/busybox","httpd","-f","-p","8080","-h","/www"]'
NO_ENGINE = (
    f"no Docker engine answers on {SOCKET}: run `bash .ci/run` (it installs docker.io and "
    "busybox-static and starts a private dockerd there), or start one as .ci/run does"
)


def docker_cli(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """The ``docker`` command aimed at the private engine."""
    cli = shutil.which("docker")
    if cli is None:
        raise StartError(f"the docker command is missing; {NO_ENGINE}")
    env = {"DOCKER_HOST": URL, "DOCKER_BUILDKIT": "0", "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [cli, *args], input=stdin, capture_output=True, env=env, timeout=120, check=False
    )


def ensure_images(tmp: Path, tags: tuple[str, ...] = ("v1", "v2")) -> None:
    """The engine answers and ``canaryd-test-web:<tag>`` exists for each tag (built if not)."""
    if docker_cli("version").returncode != 0:
        raise StartError(NO_ENGINE)
    missing = [t for t in tags if docker_cli("image", "inspect", f"{IMAGE}:{t}").returncode]
    if not missing:
        return
    busybox = Path("/bin/busybox")
    static = subprocess.run(["ldd", str(busybox)], capture_output=True, text=True, check=False)
    if not busybox.exists() or "not a dynamic executable" not in static.stdout + static.stderr:
        raise StartError(f"/bin/busybox must be Debian's busybox-static; {NO_ENGINE}")
    for tag in missing:
        rootfs = tmp / f"rootfs-{tag}"
        (rootfs / "bin").mkdir(parents=True)
        (rootfs / "www").mkdir()
        shutil.copy2(busybox, rootfs / "bin" / "busybox")
        for applet in ("sh", "httpd", "wget"):
            (rootfs / "bin" / applet).symlink_to("busybox")
        (rootfs / "www" / "index.html").write_text(f"{tag}\n", encoding="utf-8")
        tar = rootfs.with_suffix(".tar")
        with tarfile.open(tar, "w") as archive:
            archive.add(rootfs, arcname=".")
        done = docker_cli(
            "import", "--change", f"CMD {SERVE}", "-", f"{IMAGE}:{tag}", stdin=tar.read_bytes()
        )
        if done.returncode != 0:
            raise StartError(f"building {IMAGE}:{tag}: {done.stderr.decode()}")


@dataclass
class Target:
    """One test's Compose-like service on the engine: ``<target>-<n>`` stable containers."""

    docker: aiodocker.Docker
    owner: str  # this test's label value: everything it made carries it
    name: str

    async def run_stable(self, number: int, tag: str) -> dict[str, Any]:
        """``<name>-<number>`` as Compose would label it, published on a free loopback port."""
        config: dict[str, Any] = {
            "Image": f"{IMAGE}:{tag}",
            "ExposedPorts": {"8080/tcp": {}},
            "Labels": {
                "com.docker.compose.project": PROJECT,
                "com.docker.compose.service": self.name,
                "com.docker.compose.container-number": str(number),
                OWNER: self.owner,
            },
            "HostConfig": {"PortBindings": {"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": ""}]}},
        }
        container = await self.docker.containers.create(config, name=f"{self.name}-{number}")
        await container.start()
        info: dict[str, Any] = await container.show()
        return info

    async def owned(self, **labels: str) -> list[dict[str, Any]]:
        """Every container of this test (with ``labels`` too), by name."""
        wanted = [f"{OWNER}={self.owner}", *(f"{k}={v}" for k, v in labels.items())]
        listed = await self.docker.containers.list(all=True, filters=json.dumps({"label": wanted}))
        return sorted([await c.show() for c in listed], key=lambda i: str(i["Name"]))


@asynccontextmanager
async def owned_target() -> AsyncIterator[Target]:
    """A fresh target name and a client; every container of it removed on exit."""
    docker = aiodocker.Docker(url=URL)
    owner = uuid.uuid4().hex[:10]
    try:
        yield Target(docker, owner, f"web{owner[:6]}")
    finally:
        filters = json.dumps({"label": [f"{OWNER}={owner}"]})
        for container in await docker.containers.list(all=True, filters=filters):
            await container.delete(force=True)
        await docker.close()
