"""The ``docker`` platform: the canary is a clone of a stable container with the new image.

**Which containers.** The stable containers of a target are found by label: a Compose service
(``com.docker.compose.service=<service>``, plus ``com.docker.compose.project=<project>`` when
set) or every container carrying all of the configured ``labels``. Containers labelled
``canaryd.role=canary`` are never stable (the canary copies the user's labels, so a label
filter alone would find it too).

**The canary** is one container named by ``canary_name`` (default ``<target>-canary``) and
labelled ``canaryd.target=<target>``, ``canaryd.role=canary`` and ``canaryd.version=<image>``,
created from the first running stable
container's configuration with the new image: environment, command, entrypoint, labels, exposed
ports, health check, working directory, user, host configuration and networks. Only what the
stable container set *itself* is copied: a value equal to its old image's default (the engine
merges image defaults into a container's configuration at creation) is left out, so the new
image's ``CMD``, ``ENV`` or ``HEALTHCHECK`` apply instead of the old image's. Routing and
Compose labels are not copied (``docker_config.ALWAYS_STRIPPED`` plus ``strip_labels``): Compose
counts a service's containers by its ``com.docker.compose.*`` labels, and Traefik's Docker
provider would make a canary carrying the stable's ``traefik.*`` labels one more server of the
stable's service, taking traffic canaryd never gave it.

**Which image.** A bare tag (``v2.1.0``, the runbook's ``--image=v2.1.0``) means the stable's
repository at that tag (``images.resolve_image``); a full reference or digest is used as given.
Recreated stables are labelled ``canaryd.version=<the image as asked>``, and ``stable_image``
reports the image in the form last asked for in this process, else that label while the
container still runs what it resolves to, so a rollout of ``v2.1.0`` sees its own ``v2.1.0``
once promoted (the engine compares the two), across restarts too.

**How traffic reaches it.** The router needs an address that does not change from one canary
to the next; there are two, and both are always set up:

- on every user-defined network the stable container is on, the canary joins with the network
  alias of the canary's name (never the stable's aliases, so the service's own name keeps
  resolving to stable only): a router in a container on that network proxies to
  ``<canary name>:<port>``;
- ``canary_ports`` (Compose-style ``[IP:]HOST_PORT:CONTAINER_PORT[/PROTO]``, ``IP`` defaulting to
  127.0.0.1) publishes the canary's ports on fixed host addresses for a router on the host (the
  stable's own port bindings are not copied: they would collide with the stable's).

**Readiness.** A canary is present while its container exists (running, exited or killed:
it must still be removed); it is ready when it runs and the engine reports
its health check ``healthy``, or, for an image without one, when an HTTP ``GET probe_path``
answers 2xx on ``probe_port`` (default: its only exposed TCP port), reached through the port
published on the host if there is one, else at the container's own address. With neither a
health check nor ``probe_path``, running is ready.

**Promotion** (``update_stable``) recreates the running stable containers one at a time, in name
order, each with its own configuration and name and the new image, and waits for each to be
ready before touching the next, so at most one replica is ever missing. A replacement goes the
way ``docker compose`` does it: stop the old container, rename it ``<name>.canaryd-old``, create
and start the new one under the old name, remove the old one. If the new one cannot be created
or started, the old one gets its name back and is started again. A leftover ``.canaryd-old``
container (canaryd stopped halfway) is removed if its replacement exists, and otherwise renamed
back and started, on the next call. Stopped stable containers are left as they are: someone
stopped them.

**Pinning.** ``pin`` resolves a tag once, at a rollout's start, to its registry digest or,
for an image built on the host (no digest until pushed), its image ID (``platforms.pinning``);
the rollout then runs and promotes that reference, so a tag moved meanwhile changes nothing.

**The engine.** Every Docker API call has a timeout and every failure becomes a
``PlatformUnavailable`` that says what was being done (the worker logs it and retries the
effect on its next pass). Images are never pulled: canaryd runs where no registry may be
reachable, and a pull of a mistyped tag would be a slow, confusing way to fail, so a missing
image is an error that says to build or load it on the host. Each operation opens its own
client (one HTTP session on the engine's socket) and closes it: the composition root builds
platforms before the event loop runs and owns no shutdown hook for them, and a Unix-socket
session costs well under a millisecond next to the calls it carries.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Mapping
from typing import Any, TypeVar

import aiodocker
import aiohttp
from aiodocker.containers import DockerContainer

from canaryd.adapters.kube import KubeClient
from canaryd.adapters.platforms.docker_clone import (
    Info,
    endpoints_of,
    own_settings,
    without_prefixes,
)
from canaryd.adapters.platforms.docker_config import (
    ALWAYS_STRIPPED,
    CANARY_NAME,
    DockerConfig,
    canary_name,
    read_config,
)
from canaryd.adapters.platforms.images import (
    ImageCanaryPlatform,
    is_bare_tag,
    repository,
    resolve_image,
)
from canaryd.adapters.platforms.pinning import pinned_reference
from canaryd.config.kinds import Kind
from canaryd.core.errors import PlatformUnavailable

T = TypeVar("T")

CALL_TIMEOUT = 30.0  # seconds for one Docker API call
STOP_TIMEOUT = 10  # seconds a container gets to exit after SIGTERM before the engine kills it
READY_TIMEOUT = 120.0  # seconds a recreated stable container has to get ready
PROBE_TIMEOUT = 2.0
POLL = 0.25

TARGET, ROLE, VERSION = "canaryd.target", "canaryd.role", "canaryd.version"
COMPOSE_SERVICE, COMPOSE_PROJECT = "com.docker.compose.service", "com.docker.compose.project"
_OLD = ".canaryd-old"


class DockerEnginePlatform(ImageCanaryPlatform):
    """``Platform`` on a Docker engine: stable containers by label, a cloned canary."""

    kind = "docker"

    def __init__(
        self,
        target: str,
        *,
        service: str | None = None,
        labels: Mapping[str, str] | None = None,
        project: str | None = None,
        host: str | None = None,
        probe_path: str | None = None,
        probe_port: int | None = None,
        canary_ports: Mapping[str, tuple[str, int]] | None = None,
        strip_labels: tuple[str, ...] = (),
        canary_name_pattern: str = CANARY_NAME,
        call_timeout: float = CALL_TIMEOUT,
        stop_timeout: int = STOP_TIMEOUT,
        ready_timeout: float = READY_TIMEOUT,
    ) -> None:
        super().__init__()
        if (service is None) == (not labels):
            raise ValueError("needs exactly one of service (a Compose service) or labels")
        selector = dict(labels or {})
        if service is not None:
            selector[COMPOSE_SERVICE] = service
            if project is not None:
                selector[COMPOSE_PROJECT] = project
        self.target, self.selector = target, selector
        self.canary_name = canary_name(
            canary_name_pattern, target=target, service=service, project=project
        )
        self.strip_labels = ALWAYS_STRIPPED + tuple(strip_labels)
        self._asked: dict[str, str] = {}  # image run -> as a rollout asked for it (a bare tag)
        self._exit: str | None = None  # why the wanted canary stopped (canary_status)
        self.host = host
        self.probe_path, self.probe_port = probe_path, probe_port
        self.canary_ports = dict(canary_ports or {})  # "8080/tcp" -> (host ip, host port)
        self._call_timeout, self._stop_timeout = call_timeout, stop_timeout
        self._ready_timeout = ready_timeout

    # ---------------------------------------------------------------- Platform

    async def ensure_canary(self, image: str) -> None:
        async with self._lock, self._client() as docker:
            stables = await self._stables(docker)
            asked, image = image, await self._resolve(docker, image, stables)
            self._wanted = image
            keep: Info | None = None
            for info in await self._canaries(docker):
                if keep is None and info["Config"]["Image"] == image and _running(info):
                    keep = info
                else:
                    await self._remove(docker, info)
            if keep is not None:
                return
            await self._require_image(docker, image)
            if not stables:
                raise PlatformUnavailable(
                    f"no running stable container of {self.target} ({self._describe()}) "
                    "to clone the canary from"
                )
            config, networks = await self._clone(docker, stables[0], image, asked, canary=True)
            await self._create_and_start(docker, self.canary_name, config, networks)

    async def canary_status(self) -> tuple[bool, bool]:
        async with self._client() as docker:
            canaries = await self._canaries(docker)
            running = [i for i in canaries if _running(i)]
            self._exit = None
            if not running:
                # A canary that exited or was killed is still there (not ready) until removed:
                # reported absent, a rollback would never remove it.
                dead = [i for i in canaries if self._runs_wanted(i["Config"]["Image"])]
                self._exit = _exited(dead[0]) if dead else None
                return bool(canaries), False
            info = running[0]
            if not self._runs_wanted(info["Config"]["Image"]):
                return True, False  # someone else's canary: ensure_canary replaces it
            return True, await self._ready(info)

    def canary_exit(self) -> str | None:
        """Why the wanted canary's container stopped, as the last ``canary_status`` saw it
        (``ports.ReportsCanaryExit``), else None."""
        return self._exit

    async def stable_image(self) -> str | None:
        async with self._client() as docker:
            images = {self._reported(info) for info in await self._stables(docker)}
        return images.pop() if len(images) == 1 else None

    async def update_stable(self, image: str) -> None:
        async with self._lock, self._client() as docker:
            await self._recover_leftovers(docker)
            stables = await self._stables(docker)
            if not stables:
                raise PlatformUnavailable(
                    f"no running stable container of {self.target} ({self._describe()}) to update"
                )
            asked, image = image, await self._resolve(docker, image, stables)
            await self._require_image(docker, image)
            for info in stables:
                if info["Config"]["Image"] != image:
                    info = await self._recreate(docker, info, image, asked)
                await self._wait_ready(docker, info)

    async def pin(self, image: str) -> str:
        """The digest reference (or image ID) ``image`` names now (``platforms.pinning``)."""
        async with self._client() as docker:
            if is_bare_tag(image):  # the runbook's --image=v2.1.0: the stable's repository
                image = await self._resolve(docker, image, await self._stables(docker))
            await self._require_image(docker, image)
            inspected = await self._inspect_image(docker, image)
        try:
            return pinned_reference(image, inspected)
        except ValueError as exc:
            raise PlatformUnavailable(f"docker platform of {self.target}: {exc}") from exc

    async def aclose(self) -> None:
        """Nothing to close: each operation opens its own Docker client and closes it."""

    async def remove_canary(self) -> None:
        async with self._lock, self._client() as docker:
            for info in await self._canaries(docker):
                await self._remove(docker, info)

    # ---------------------------------------------------------------- finding containers

    async def _canaries(self, docker: aiodocker.Docker) -> list[Info]:
        return await self._find(docker, {TARGET: self.target, ROLE: "canary"})

    async def _stables(self, docker: aiodocker.Docker) -> list[Info]:
        """The running stable containers, in name order."""
        found = await self._find(docker, self.selector)
        return [
            i
            for i in found
            if _running(i)
            and (i["Config"].get("Labels") or {}).get(ROLE) != "canary"
            and not _name(i).endswith(_OLD)
        ]

    async def _find(self, docker: aiodocker.Docker, labels: Mapping[str, str]) -> list[Info]:
        """Every container (running or not) carrying all of ``labels``, inspected, by name."""
        filters = json.dumps({"label": [f"{k}={v}" for k, v in labels.items()]})
        what = f"list containers labelled {_show_labels(labels)}"
        listed = await self._call(what, docker.containers.list(all=True, filters=filters))
        infos: list[Info] = []
        for container in listed:
            try:
                infos.append(await self._inspect(docker, container.id))
            except PlatformUnavailable:
                continue  # removed between the listing and the inspection
        return sorted(infos, key=_name)

    async def _inspect(self, docker: aiodocker.Docker, id_: str) -> Info:
        container = docker.containers.container(id_)
        return await self._call(f"inspect container {id_[:12]}", container.show())

    # ---------------------------------------------------------------- changing containers

    async def _resolve(self, docker: aiodocker.Docker, image: str, stables: list[Info]) -> str:
        """``image`` as the engine knows it: a bare tag in the stable's repository. Remembers
        the pair, so ``stable_image`` reports what the rollout asked for."""
        if not stables and is_bare_tag(image):
            raise PlatformUnavailable(
                f"no running stable container of {self.target} ({self._describe()}) whose "
                f"repository the tag {image!r} could name"
            )
        if not stables:
            return image  # a full reference needs no stable to be found
        try:
            resolved = resolve_image(image, await self._named(docker, stables[0]))
        except ValueError as exc:
            raise PlatformUnavailable(f"docker platform of {self.target}: {exc}") from exc
        self._asked[resolved] = image
        return resolved

    async def _named(self, docker: aiodocker.Docker, info: Info) -> str:
        """The reference a stable runs, by name where it can be told: a stable promoted to a
        pinned image ID (``sha256:…``, SPEC §8) is named by that image's first repository
        tag, so the next rollout's bare tag still finds the repository."""
        image = str(info["Config"]["Image"])
        if repository(image) is not None:
            return image
        try:
            tags = (await self._inspect_image(docker, image)).get("RepoTags") or []
        except PlatformUnavailable:
            return image
        return str(tags[0]) if tags else image

    def _reported(self, info: Info) -> str:
        """The stable's image in the form it was asked for: as last asked in this process,
        else its ``canaryd.version`` label if that resolves to what it runs, else as run."""
        image = str(info["Config"]["Image"])
        if image in self._asked:
            return self._asked[image]
        label = (info["Config"].get("Labels") or {}).get(VERSION)
        try:
            if label and resolve_image(label, image) == image:
                return str(label)
        except ValueError:
            pass
        return image

    async def _clone(
        self, docker: aiodocker.Docker, info: Info, image: str, asked: str, *, canary: bool
    ) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        """``info``'s configuration with ``image`` (``asked`` as the version label): the create
        body and the networks to join after creation (the create call accepts one)."""
        try:
            defaults = (await self._inspect_image(docker, info["Image"]))["Config"] or {}
        except PlatformUnavailable:
            defaults = {}  # the old image is gone: copy everything rather than guess
        version = {TARGET: self.target, ROLE: "canary" if canary else "stable", VERSION: asked}
        config = own_settings(info, defaults, image)
        labels = config.get("Labels", {})
        if canary:
            labels = without_prefixes(labels, self.strip_labels)
        config["Labels"] = {**labels, **version}
        host_config = dict(info["HostConfig"])
        if canary:
            host_config["PortBindings"] = {
                port: [{"HostIp": ip, "HostPort": str(host_port)}]
                for port, (ip, host_port) in self.canary_ports.items()
            }
            config["ExposedPorts"] = {
                **config.get("ExposedPorts", {}),
                **{port: {} for port in self.canary_ports},
            }
        config["HostConfig"] = host_config
        endpoints = endpoints_of(info, [self.canary_name] if canary else None)
        mode = str(host_config.get("NetworkMode") or "default")
        first = "bridge" if mode == "default" else mode
        if first in endpoints:
            config["NetworkingConfig"] = {"EndpointsConfig": {first: endpoints.pop(first)}}
        return config, endpoints

    async def _create_and_start(
        self,
        docker: aiodocker.Docker,
        name: str,
        config: dict[str, Any],
        networks: Mapping[str, dict[str, Any]],
    ) -> str:
        container = await self._call(
            f"create container {name} ({config['Image']})",
            docker.containers.create(config, name=name),
        )
        try:
            for network, endpoint in networks.items():
                net = await self._call(f"find network {network}", docker.networks.get(network))
                await self._call(
                    f"connect {name} to network {network}",
                    net.connect({"Container": container.id, "EndpointConfig": endpoint}),
                )
            await self._call(f"start container {name}", container.start())
        except PlatformUnavailable:
            with contextlib.suppress(PlatformUnavailable):
                await self._call(f"remove container {name}", container.delete(force=True))
            raise
        return container.id

    async def _recreate(self, docker: aiodocker.Docker, info: Info, image: str, asked: str) -> Info:
        """Replace one stable container by one with ``image``; the new one, inspected."""
        name = _name(info)
        config, networks = await self._clone(docker, info, image, asked, canary=False)
        old = docker.containers.container(info["Id"])
        await self._stop(name, old)
        await self._call(f"rename {name} to {name}{_OLD}", old.rename(name + _OLD))
        try:
            new_id = await self._create_and_start(docker, name, config, networks)
        except PlatformUnavailable:
            with contextlib.suppress(PlatformUnavailable):  # give the replica back
                await self._call(f"rename {name}{_OLD} back", old.rename(name))
                await self._call(f"start {name} again", old.start())
            raise
        await self._call(f"remove the previous {name}", old.delete(force=True))
        return await self._inspect(docker, new_id)

    async def _recover_leftovers(self, docker: aiodocker.Docker) -> None:
        """Finish a replacement that stopped halfway (see the module docstring)."""
        found = await self._find(docker, self.selector)
        names = {_name(i) for i in found}
        for info in found:
            name = _name(info)
            if not name.endswith(_OLD):
                continue
            old, base = docker.containers.container(info["Id"]), name[: -len(_OLD)]
            if base in names:
                await self._call(f"remove the previous {base}", old.delete(force=True))
            else:
                await self._call(f"rename {name} back to {base}", old.rename(base))
                await self._call(f"start {base} again", old.start())

    async def _remove(self, docker: aiodocker.Docker, info: Info) -> None:
        name, container = _name(info), docker.containers.container(info["Id"])
        if _running(info):
            await self._stop(name, container)
        await self._call(f"remove container {name}", container.delete(force=True))

    async def _stop(self, name: str, container: DockerContainer) -> None:
        await self._call(
            f"stop container {name}",
            container.stop(t=self._stop_timeout),
            timeout=self._stop_timeout + self._call_timeout,
        )

    # ---------------------------------------------------------------- images and readiness

    async def _require_image(self, docker: aiodocker.Docker, image: str) -> None:
        try:
            await asyncio.wait_for(docker.images.inspect(image), self._call_timeout)
        except aiodocker.DockerError as exc:
            if exc.status != 404:
                raise self._error(f"inspect image {image}", exc) from exc
            raise PlatformUnavailable(
                f"image {image!r} is not on the Docker host ({self._where()}); canaryd never "
                "pulls images: build or load it there first (docker build, docker load)"
            ) from exc
        except TimeoutError as exc:
            raise self._error(f"inspect image {image}", exc) from exc

    async def _inspect_image(self, docker: aiodocker.Docker, image: str) -> Info:
        return await self._call(f"inspect image {image}", docker.images.inspect(image))

    async def _ready(self, info: Info) -> bool:
        if not _running(info):
            return False
        health = info["State"].get("Health")
        if health is not None:
            return bool(health.get("Status") == "healthy")
        if self.probe_path is None:
            return True
        address = probe_address(info, self.probe_port)
        return address is not None and await _probe(f"http://{address}{self.probe_path}")

    async def _wait_ready(self, docker: aiodocker.Docker, info: Info) -> None:
        name, loop = _name(info), asyncio.get_running_loop()
        deadline = loop.time() + self._ready_timeout
        while not await self._ready(info):
            state = info["State"]
            if not state.get("Running"):
                raise PlatformUnavailable(
                    f"{name} ({info['Config']['Image']}) exited with code "
                    f"{state.get('ExitCode')} instead of getting ready"
                )
            if loop.time() >= deadline:
                health = (state.get("Health") or {}).get("Status", "no health check")
                raise PlatformUnavailable(
                    f"{name} ({info['Config']['Image']}) was not ready within "
                    f"{self._ready_timeout:g}s (health: {health})"
                )
            await asyncio.sleep(POLL)
            info = await self._inspect(docker, info["Id"])

    # ---------------------------------------------------------------- the engine

    @contextlib.asynccontextmanager
    async def _client(self) -> AsyncIterator[aiodocker.Docker]:
        try:
            docker = aiodocker.Docker(url=self.host)
        except (ValueError, AssertionError) as exc:  # aiodocker asserts when it finds none
            raise PlatformUnavailable(
                f"no Docker engine to talk to for {self.target}: set platform.host or "
                f"DOCKER_HOST ({exc or 'no socket found'})"
            ) from exc
        try:
            yield docker
        finally:
            await docker.close()

    async def _call(self, what: str, call: Awaitable[T], timeout: float | None = None) -> T:
        try:
            async with asyncio.timeout(timeout or self._call_timeout):
                return await call
        except (aiodocker.DockerError, aiohttp.ClientError, TimeoutError) as exc:
            raise self._error(what, exc) from exc

    def _error(self, what: str, exc: BaseException) -> PlatformUnavailable:
        if isinstance(exc, TimeoutError):
            cause = "no answer in time"
        elif isinstance(exc, aiodocker.DockerError):
            cause = exc.message if exc.status == 900 else f"{exc.status} {exc.message}"
        else:
            cause = str(exc) or type(exc).__name__
        return PlatformUnavailable(
            f"docker platform of {self.target}: cannot {what} ({self._where()}): {cause}"
        )

    def _where(self) -> str:
        return self.host or "the default Docker endpoint"

    def _describe(self) -> str:
        return f"running containers labelled {_show_labels(self.selector)}"


# ------------------------------------------------------------------------ pure helpers


def probe_address(info: Info, port: int | None) -> str | None:
    """``host:port`` to probe a container on: its published port on this host if it has one,
    else its own address; ``port`` defaults to the only exposed TCP port."""
    if port is None:
        tcp = [p for p in info["Config"].get("ExposedPorts") or {} if p.endswith("/tcp")]
        if len(tcp) != 1:
            return None
        port = int(tcp[0].split("/")[0])
    network = info["NetworkSettings"]
    for binding in (network.get("Ports") or {}).get(f"{port}/tcp") or ():
        if binding.get("HostIp") in ("", "0.0.0.0", "127.0.0.1"):
            return f"127.0.0.1:{binding['HostPort']}"
    addresses = [network.get("IPAddress")] + [
        n.get("IPAddress") for n in (network.get("Networks") or {}).values()
    ]
    ip = next((a for a in addresses if a), None)
    return f"{ip}:{port}" if ip else None


async def _probe(url: str) -> bool:
    timeout = aiohttp.ClientTimeout(total=PROBE_TIMEOUT)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(url, allow_redirects=False) as response,
        ):
            return 200 <= response.status < 300
    except (aiohttp.ClientError, TimeoutError):
        return False


def _running(info: Info) -> bool:
    return bool(info["State"].get("Running"))


def _exited(info: Info) -> str:
    state = info["State"]
    how = "OOM-killed" if state.get("OOMKilled") else f"exit code {state.get('ExitCode')}"
    return f"canary container {_name(info)} stopped ({state.get('Status') or 'exited'}, {how})"


def _name(info: Info) -> str:
    return str(info["Name"]).lstrip("/")


def _show_labels(labels: Mapping[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in labels.items())


# --------------------------------------------------------------------------- the kind
# (its config dataclass and reader are in ``docker_config``, to keep this module readable)


def build(target: str, c: DockerConfig, kube: KubeClient | None) -> DockerEnginePlatform:
    return DockerEnginePlatform(
        target,
        service=c.service,
        labels=c.labels,
        project=c.project,
        host=c.host,
        probe_path=c.probe_path,
        probe_port=c.probe_port,
        canary_ports=c.canary_ports,
        strip_labels=c.strip_labels,
        canary_name_pattern=c.canary_name,
    )


def _describe(c: DockerConfig) -> str:
    if c.service:
        return f"docker (service {c.service})"
    return f"docker (labels {','.join(f'{k}={v}' for k, v in c.labels.items())})"


KIND: Kind[DockerConfig, Any] = Kind(
    name="docker",
    keys=frozenset(
        {
            "service",
            "labels",
            "project",
            "host",
            "probe_path",
            "probe_port",
            "canary_ports",
            "strip_labels",
            "canary_name",
        }
    ),
    read=read_config,
    build=build,
    describe=_describe,
)
