"""The docker platform against a real Docker engine: what it creates is what the engine runs.

The engine is the private one ``.ci/run`` starts (``dockerd`` on ``/tmp/canaryd-docker.sock``);
without it these tests fail and say so, they never skip. No registry is reachable, so the images
are built here from Debian's static busybox (``busybox-static``): ``canaryd-test-web:v1`` and
``:v2`` serve their version at ``/`` with ``busybox httpd`` on port 8080, and ``:v1-hc`` /
``:v2-hc`` add a ``HEALTHCHECK`` that fetches that page every second. They are built once and
reused by tag. Every container a test creates (the canary and the recreated stables copy the
label) carries ``canaryd-test.owner=<test id>`` and is removed by that label afterwards.

``busybox httpd`` as PID 1 ignores SIGTERM, so the platform is given ``stop_timeout=1``: the
engine kills it after a second instead of ten.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import tarfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiodocker
import aiohttp
import pytest

from canaryd.adapters.platforms.docker import DockerEnginePlatform
from canaryd.app import build_platform, load_config
from canaryd.core.errors import CanarydError, PlatformUnavailable
from support.dockerkit import IMAGE, NO_ENGINE, OWNER, PROJECT, SERVE, URL, docker_cli

HEALTHCHECK = (
    "HEALTHCHECK --interval=1s --timeout=1s --retries=3 "
    'CMD ["/bin/busybox","wget","-q","-O","/dev/null","http://127.0.0.1:8080/"]'
)

# --------------------------------------------------------------------------- images


def _build(tag: str, rootfs: Path, version: str) -> None:
    if docker_cli("image", "inspect", f"{IMAGE}:{tag}").returncode == 0:
        return  # built by an earlier run
    if tag.endswith("-hc"):
        base = tag.removesuffix("-hc")
        _build(base, rootfs, version)
        dockerfile = f"FROM {IMAGE}:{base}\n{HEALTHCHECK}\n".encode()
        done = docker_cli("build", "-q", "-t", f"{IMAGE}:{tag}", "-", stdin=dockerfile)
    else:
        (rootfs / "www" / "index.html").write_text(f"{version}\n", encoding="utf-8")
        tar = rootfs.with_suffix(".tar")
        with tarfile.open(tar, "w") as archive:
            archive.add(rootfs, arcname=".")
        done = docker_cli(
            "import", "--change", f"CMD {SERVE}", "-", f"{IMAGE}:{tag}", stdin=tar.read_bytes()
        )
    assert done.returncode == 0, f"building {IMAGE}:{tag}: {done.stderr.decode()}"


@pytest.fixture(scope="session")
def images(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The engine answers and the four test images exist (built once, then kept by tag)."""
    if docker_cli("version").returncode != 0:
        pytest.fail(NO_ENGINE)
    busybox = Path("/bin/busybox")
    static = subprocess.run(["ldd", str(busybox)], capture_output=True, text=True, check=False)
    if not busybox.exists() or "not a dynamic executable" not in static.stdout + static.stderr:
        pytest.fail(f"/bin/busybox must be Debian's busybox-static; {NO_ENGINE}")
    rootfs = tmp_path_factory.mktemp("busybox") / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    (rootfs / "www").mkdir()
    shutil.copy2(busybox, rootfs / "bin" / "busybox")
    for applet in ("sh", "httpd", "wget"):
        (rootfs / "bin" / applet).symlink_to("busybox")
    for tag in ("v1", "v2", "v1-hc", "v2-hc"):
        _build(tag, rootfs, tag.removesuffix("-hc"))


# --------------------------------------------------------------------------- the rig


@dataclass
class Rig:
    docker: aiodocker.Docker
    owner: str  # this test's label value: everything it made carries it
    target: str

    def platform(self, **kwargs: Any) -> DockerEnginePlatform:
        kwargs.setdefault("service", self.target)
        kwargs.setdefault("project", PROJECT)
        kwargs.setdefault("host", URL)
        kwargs.setdefault("stop_timeout", 1)
        kwargs.setdefault("ready_timeout", 20.0)
        return DockerEnginePlatform(self.target, **kwargs)

    async def run_stable(
        self,
        number: int,
        tag: str,
        *,
        env: tuple[str, ...] = (),
        network: str | None = None,
        labels: dict[str, str] | None = None,
        image: str = IMAGE,
    ) -> dict[str, Any]:
        """``<target>-<number>`` as Compose would label it, published on a free loopback port."""
        config: dict[str, Any] = {
            "Image": f"{image}:{tag}",
            "Env": list(env),
            "ExposedPorts": {"8080/tcp": {}},
            "Labels": {
                "com.docker.compose.project": PROJECT,
                "com.docker.compose.service": self.target,
                "com.docker.compose.container-number": str(number),
                "team": "web",
                OWNER: self.owner,
                **(labels or {}),
            },
            "HostConfig": {
                "PortBindings": {"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": ""}]},
                "NetworkMode": network or "default",
            },
        }
        if network:
            config["NetworkingConfig"] = {"EndpointsConfig": {network: {"Aliases": [self.target]}}}
        container = await self.docker.containers.create(config, name=f"{self.target}-{number}")
        await container.start()
        return await container.show()

    async def owned(self, **labels: str) -> list[dict[str, Any]]:
        wanted = [f"{OWNER}={self.owner}", *(f"{k}={v}" for k, v in labels.items())]
        listed = await self.docker.containers.list(all=True, filters=json.dumps({"label": wanted}))
        return sorted([await c.show() for c in listed], key=lambda i: str(i["Name"]))

    async def canaries(self) -> list[dict[str, Any]]:
        return await self.owned(**{"canaryd.role": "canary"})


@pytest.fixture
async def rig(images: None) -> AsyncIterator[Rig]:
    docker = aiodocker.Docker(url=URL)
    owner = uuid.uuid4().hex[:10]
    try:
        yield Rig(docker, owner, f"web{owner[:6]}")
    finally:
        filters = json.dumps({"label": [f"{OWNER}={owner}"]})
        for container in await docker.containers.list(all=True, filters=filters):
            await container.delete(force=True)
        for network in await docker.networks.list(filters={"label": [f"{OWNER}={owner}"]}):
            await (await docker.networks.get(network["Id"])).delete()
        await docker.close()


async def eventually(
    check: Callable[[], Awaitable[bool]], what: str, timeout: float = 15.0
) -> float:
    """Seconds until ``check`` held; fails the test after ``timeout``."""
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > timeout:
            pytest.fail(f"not within {timeout:g}s: {what}")
        await asyncio.sleep(0.1)
    return time.monotonic() - started


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, (await response.text()).strip()


def published(info: dict[str, Any]) -> str:
    binding = info["NetworkSettings"]["Ports"]["8080/tcp"][0]
    return f"http://127.0.0.1:{binding['HostPort']}/"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- the canary


async def test_the_canary_is_a_clone_of_a_stable_container_with_the_new_image(rig: Rig) -> None:
    stable = await rig.run_stable(1, "v1", env=("GREETING=hello",))
    port = free_port()
    platform = rig.platform(probe_path="/", canary_ports={"8080/tcp": ("127.0.0.1", port)})
    assert await platform.canary_status() == (False, False)

    await platform.ensure_canary(f"{IMAGE}:v2")

    [canary] = await rig.canaries()
    assert canary["Name"] == f"/{rig.target}-canary"
    assert canary["Config"]["Image"] == f"{IMAGE}:v2"
    labels = canary["Config"]["Labels"]
    assert labels["canaryd.target"] == rig.target
    assert labels["canaryd.role"] == "canary"
    assert labels["canaryd.version"] == f"{IMAGE}:v2"
    assert labels["team"] == "web"  # the stable's own labels come along ...
    assert not [k for k in labels if k.startswith("com.docker.compose.")]  # ... Compose's not
    assert "GREETING=hello" in canary["Config"]["Env"]
    assert canary["Config"]["Cmd"] == stable["Config"]["Cmd"]
    assert "8080/tcp" in canary["Config"]["ExposedPorts"]
    assert canary["HostConfig"]["PortBindings"] == {
        "8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(port)}]
    }
    # Readiness by HTTP probe (the image has no health check), then it serves its version on
    # the configured loopback port while the stable still serves v1.
    await eventually(lambda: _status_is(platform, (True, True)), "the canary gets ready")
    assert await get(f"http://127.0.0.1:{port}/") == (200, "v2")
    assert await get(published(stable)) == (200, "v1")
    assert await platform.stable_image() == f"{IMAGE}:v1"

    # Idempotent: asked again (as the worker does until it is ready), nothing is created.
    await platform.ensure_canary(f"{IMAGE}:v2")
    assert [c["Id"] for c in await rig.canaries()] == [canary["Id"]]

    # Another image replaces it: one canary at a time, under the same name and port.
    await platform.ensure_canary(f"{IMAGE}:v1")
    [again] = await rig.canaries()
    assert again["Id"] != canary["Id"] and again["Config"]["Image"] == f"{IMAGE}:v1"
    await eventually(lambda: _status_is(platform, (True, True)), "the new canary gets ready")
    assert await get(f"http://127.0.0.1:{port}/") == (200, "v1")


async def test_a_probe_that_does_not_answer_2xx_keeps_a_running_canary_not_ready(rig: Rig) -> None:
    await rig.run_stable(1, "v1")
    platform = rig.platform(probe_path="/no-such-page", probe_port=8080)
    await platform.ensure_canary(f"{IMAGE}:v2")
    [canary] = await rig.canaries()
    await eventually(lambda: _status_is(platform, (True, False)), "the canary runs")
    address = f"{canary['NetworkSettings']['IPAddress']}:8080"  # no published port: its own IP
    assert (await get(f"http://{address}/no-such-page"))[0] == 404
    assert await get(f"http://{address}/") == (200, "v2")
    await asyncio.sleep(1.0)
    assert await platform.canary_status() == (True, False)


async def test_readiness_follows_the_health_check_of_the_new_image(rig: Rig) -> None:
    await rig.run_stable(1, "v1-hc")
    platform = rig.platform(probe_path="/no-such-page")  # a health check wins over the probe
    await platform.ensure_canary(f"{IMAGE}:v2-hc")
    [canary] = await rig.canaries()
    assert canary["Config"]["Healthcheck"]["Test"][-1] == "http://127.0.0.1:8080/"
    assert canary["State"]["Health"]["Status"] == "starting"
    assert await platform.canary_status() == (True, False)
    took = await eventually(lambda: _status_is(platform, (True, True)), "the canary is healthy")
    assert took < 10
    [canary] = await rig.canaries()
    assert canary["State"]["Health"]["Status"] == "healthy"


async def test_the_canary_joins_the_stables_network_under_its_own_alias(rig: Rig) -> None:
    network = f"{rig.target}-net"
    await rig.docker.networks.create({"Name": network, "Labels": {OWNER: rig.owner}})
    stable = await rig.run_stable(1, "v1", network=network)
    platform = rig.platform()
    await platform.ensure_canary(f"{IMAGE}:v2")
    [canary] = await rig.canaries()
    endpoint = canary["NetworkSettings"]["Networks"][network]
    assert f"{rig.target}-canary" in endpoint["Aliases"]
    assert rig.target not in endpoint["Aliases"]  # the service's name stays stable-only
    await eventually(lambda: _status_is(platform, (True, True)), "the canary runs")
    # A router on that network reaches the canary by its alias and stable by the service name.
    for host, version in ((f"{rig.target}-canary", "v2"), (rig.target, "v1")):
        done = docker_cli(
            "exec", stable["Id"], "/bin/busybox", "wget", "-q", "-O-", f"http://{host}:8080/"
        )
        assert done.stdout.decode().strip() == version, done.stderr.decode()


async def test_a_killed_canary_is_present_not_ready_until_removed_or_replaced(rig: Rig) -> None:
    await rig.run_stable(1, "v1")
    platform = rig.platform()
    await platform.ensure_canary(f"{IMAGE}:v2")
    [canary] = await rig.canaries()
    assert docker_cli("kill", canary["Id"]).returncode == 0
    # Not running, still there: a rollback must still see something to remove.
    assert await platform.canary_status() == (True, False)
    # ... and it died (not merely unready): a rollout it serves is rolled back with this
    why = platform.canary_exit() or ""
    assert why.startswith(f"canary container {canary['Name'].lstrip('/')} stopped"), why
    assert "exit code 137" in why, why
    await platform.ensure_canary(f"{IMAGE}:v2")  # a Pending rollout's worker replaces it
    assert await platform.canary_status() == (True, True) and platform.canary_exit() is None
    [again] = await rig.canaries()
    assert again["Id"] != canary["Id"] and again["State"]["Running"]
    assert docker_cli("kill", again["Id"]).returncode == 0
    await platform.remove_canary()  # after a rollback, the worker removes it
    assert await rig.canaries() == []
    assert await platform.canary_status() == (False, False)


async def test_remove_canary_stops_and_removes_it_and_leaves_stable_alone(rig: Rig) -> None:
    stable = await rig.run_stable(1, "v1")
    platform = rig.platform()
    await platform.ensure_canary(f"{IMAGE}:v2")
    assert (await platform.canary_status())[0]
    await platform.remove_canary()
    assert await rig.canaries() == []
    assert await platform.canary_status() == (False, False)
    assert [i["Id"] for i in await rig.owned()] == [stable["Id"]]
    await platform.remove_canary()  # nothing left to remove: still fine


async def test_a_canary_of_a_traefik_routed_stable_carries_no_routing_label_and_its_own_name(
    rig: Rig,
) -> None:
    routing = {
        "traefik.enable": "true",
        f"traefik.http.services.{rig.target}-stable.loadbalancer.server.port": "8080",
        "caddy": "web.example.com",
    }
    await rig.run_stable(1, "v1", labels=routing)
    platform = rig.platform(strip_labels=("caddy",), canary_name_pattern="lukhas-{service}-canary")
    await platform.ensure_canary(f"{IMAGE}:v2")
    [canary] = await rig.canaries()
    assert canary["Name"] == f"/lukhas-{rig.target}-canary"
    labels = canary["Config"]["Labels"]
    assert not [k for k in labels if k.startswith(("traefik.", "caddy", "com.docker.compose."))]
    assert labels["team"] == "web" and labels[OWNER] == rig.owner  # the rest comes along
    [stable] = [i for i in await rig.owned() if i["Id"] != canary["Id"]]
    assert "traefik.enable" in stable["Config"]["Labels"]  # the stable keeps its own


async def test_a_bare_tag_runs_the_stables_repository_at_that_tag_through_promotion(
    rig: Rig,
) -> None:
    # A repository behind a registry port (never pulled: tagged here from the local images)
    repo = f"127.0.0.1:5000/canaryd-test/{rig.target}"
    for tag in ("v1", "v2"):
        done = docker_cli("tag", f"{IMAGE}:{tag}", f"{repo}:{tag}")
        assert done.returncode == 0, done.stderr.decode()
    try:
        await rig.run_stable(1, "v1", image=repo)
        platform = rig.platform(probe_path="/")
        assert await platform.stable_image() == f"{repo}:v1"

        await platform.ensure_canary("v2")  # the runbook's --image=v2.1.0 form

        [canary] = await rig.canaries()
        assert canary["Config"]["Image"] == f"{repo}:v2"
        assert canary["Config"]["Labels"]["canaryd.version"] == "v2"
        await eventually(lambda: _status_is(platform, (True, True)), "the canary gets ready")

        await platform.update_stable("v2")
        [stable] = [i for i in await rig.owned() if i["Id"] != canary["Id"]]
        assert stable["Config"]["Image"] == f"{repo}:v2"
        assert await get(published(stable)) == (200, "v2")
        # The rollout asked for "v2" and must see "v2" to finish, in this process and after a
        # restart (a new platform reads the version label).
        assert await platform.stable_image() == "v2"
        assert await rig.platform().stable_image() == "v2"
        with pytest.raises(PlatformUnavailable, match="no running stable container"):
            await rig.platform(service="nothing-here").ensure_canary("v2")
    finally:
        for tag in ("v1", "v2"):
            docker_cli("rmi", f"{repo}:{tag}")


# --------------------------------------------------------------------------- promotion


async def test_update_stable_recreates_each_stable_in_turn_once_the_previous_is_ready(
    rig: Rig,
) -> None:
    first = await rig.run_stable(1, "v1-hc", env=("GREETING=hello",))
    second = await rig.run_stable(2, "v1-hc")
    platform = rig.platform()
    await eventually(lambda: _all_healthy(rig), "the stable containers are healthy", timeout=10)
    assert await platform.stable_image() == f"{IMAGE}:v1-hc"
    since = time.time()

    await platform.update_stable(f"{IMAGE}:v2-hc")

    until = time.time() + 1
    one, two = await rig.owned()
    assert [one["Name"], two["Name"]] == [first["Name"], second["Name"]]  # same names
    assert {one["Id"], two["Id"]}.isdisjoint({first["Id"], second["Id"]})  # new containers
    assert [one["Config"]["Image"], two["Config"]["Image"]] == [f"{IMAGE}:v2-hc"] * 2
    assert [one["State"]["Health"]["Status"], two["State"]["Health"]["Status"]] == ["healthy"] * 2
    assert "GREETING=hello" in one["Config"]["Env"]
    assert one["Config"]["Labels"]["com.docker.compose.service"] == rig.target
    assert one["HostConfig"]["PortBindings"] == first["HostConfig"]["PortBindings"]
    assert await get(published(one)) == (200, "v2")
    assert await platform.stable_image() == f"{IMAGE}:v2-hc"

    # The engine's own record: the second is not touched before the first is back and healthy.
    events = _events(rig, since, until)
    n1, n2 = first["Name"].lstrip("/"), second["Name"].lstrip("/")
    order = [
        ("kill", first["Id"]),
        ("start", n1),
        ("health_status: healthy", n1),
        ("kill", second["Id"]),
        ("start", n2),
        ("health_status: healthy", n2),
    ]
    positions = [_index(events, action, who) for action, who in order]
    assert positions == sorted(positions), events

    # Done already: a second call (the worker retrying) recreates nothing.
    await platform.update_stable(f"{IMAGE}:v2-hc")
    assert [i["Id"] for i in await rig.owned()] == [one["Id"], two["Id"]]


async def test_stable_image_is_none_when_the_stable_containers_disagree(rig: Rig) -> None:
    platform = rig.platform()
    assert await platform.stable_image() is None  # none at all
    await rig.run_stable(1, "v1")
    await rig.run_stable(2, "v2")
    assert await platform.stable_image() is None
    await platform.ensure_canary(f"{IMAGE}:v1")  # a canary is never a stable container
    await (await rig.docker.containers.get(f"{rig.target}-2")).delete(force=True)
    assert await platform.stable_image() == f"{IMAGE}:v1"


# --------------------------------------------------------------------------- failures


async def test_a_missing_image_is_a_clear_error_and_nothing_is_pulled(rig: Rig) -> None:
    await rig.run_stable(1, "v1")
    platform = rig.platform()
    missing = f"{IMAGE}:not-built"
    for effect in (platform.ensure_canary, platform.update_stable):
        with pytest.raises(PlatformUnavailable) as caught:
            await effect(missing)
        message = str(caught.value)
        assert f"image {missing!r} is not on the Docker host ({URL})" in message
        assert "never pulls" in message
    assert await rig.canaries() == []
    assert [i["Config"]["Image"] for i in await rig.owned()] == [f"{IMAGE}:v1"]


async def test_no_stable_container_to_clone_is_a_clear_error(rig: Rig) -> None:
    platform = rig.platform()
    with pytest.raises(PlatformUnavailable, match="no running stable container of"):
        await platform.ensure_canary(f"{IMAGE}:v2")
    assert await rig.canaries() == []


async def test_an_engine_that_is_not_there_is_a_clear_error(tmp_path: Path) -> None:
    socket_path = tmp_path / "no-docker.sock"
    platform = DockerEnginePlatform("web", service="web", host=f"unix://{socket_path}")
    calls: list[Callable[[], Awaitable[object]]] = [
        platform.canary_status,
        platform.stable_image,
        platform.remove_canary,
        lambda: platform.ensure_canary(f"{IMAGE}:v2"),
        lambda: platform.update_stable(f"{IMAGE}:v2"),
    ]
    for call in calls:
        with pytest.raises(CanarydError) as caught:
            await call()
        message = str(caught.value)
        assert isinstance(caught.value, PlatformUnavailable)
        assert message.startswith("docker platform of web: cannot ")
        assert f"(unix://{socket_path})" in message
        assert "Cannot connect to Docker Engine" in message


# --------------------------------------------------------------------------- wiring


def test_serve_builds_the_docker_platform_from_the_config(tmp_path: Path) -> None:
    path = tmp_path / "canaryd.yaml"
    path.write_text(
        """\
listen: 127.0.0.1:9870
prometheus: {url: http://127.0.0.1:9090}
targets:
  - name: web
    policy: matriz-fast-track
    router: {kind: noop}
    platform:
      kind: docker
      service: web
      project: shop
      host: unix:///tmp/canaryd-docker.sock
      probe_path: /healthz
      canary_ports: ["18080:8080"]
""",
        encoding="utf-8",
    )
    [target] = load_config(path).targets
    platform = build_platform(target)
    assert isinstance(platform, DockerEnginePlatform)
    assert platform.kind == "docker"
    assert platform.selector == {
        "com.docker.compose.service": "web",
        "com.docker.compose.project": "shop",
    }
    assert platform.canary_name == "web-canary"
    assert platform.canary_ports == {"8080/tcp": ("127.0.0.1", 18080)}
    assert (platform.host, platform.probe_path) == ("unix:///tmp/canaryd-docker.sock", "/healthz")


# --------------------------------------------------------------------------- helpers


async def _status_is(platform: DockerEnginePlatform, wanted: tuple[bool, bool]) -> bool:
    return await platform.canary_status() == wanted


async def _all_healthy(rig: Rig) -> bool:
    infos = await rig.owned()
    return bool(infos) and all(i["State"]["Health"]["Status"] == "healthy" for i in infos)


def _events(rig: Rig, since: float, until: float) -> list[tuple[str, str, str]]:
    """(action, container id, name) of this test's containers, oldest first."""
    done = docker_cli(
        "events",
        "--since", f"{since:.3f}",
        "--until", f"{until:.3f}",
        "--filter", f"label={OWNER}={rig.owner}",
        "--filter", "type=container",
        "--format", "{{json .}}",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    events = [json.loads(line) for line in done.stdout.decode().splitlines() if line]
    return [(e["Action"], e["id"], e["Actor"]["Attributes"].get("name", "")) for e in events]


def _index(events: list[tuple[str, str, str]], action: str, who: str) -> int:
    """Where the first ``action`` of ``who`` (a container id or a name) happened."""
    for i, (act, id_, name) in enumerate(events):
        if act == action and who in (id_, name):
            return i
    pytest.fail(f"no {action!r} event for {who} in {events}")
