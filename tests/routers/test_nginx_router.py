"""The nginx router against a real nginx: the split it writes is the split nginx serves.

Each test runs a private nginx (``support.procs.start_nginx``: foreground, one worker, all
files under tmp_path, 127.0.0.1 only) in front of small in-process aiohttp backends that name
themselves in ``X-Deployment`` / ``X-Server``. nginx needs the router's include file before it
starts, so a seed router (whose test and reload commands are ``true``) writes weight 0 first;
the router under test then validates with ``nginx -t`` and reloads the running instance.
``nginx -s reload`` returns before the master has switched workers, so ``apply`` waits until
every worker taking requests is a new one; reloads are counted from nginx's own log.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from canaryd.adapters.routers.nginx import NginxFileRouter, render, upstream_name
from canaryd.app import build_router, load_config
from canaryd.core.errors import CanarydError, RouterUnavailable
from support import procs

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "config" / "nginx-router.example.yaml"
TARGET = "web"
POOL = f"{upstream_name(TARGET)}_pool"


# --------------------------------------------------------------------------- the rig


async def _start_backend(role: str) -> tuple[web.AppRunner, str]:
    async def answer(request: web.Request) -> web.Response:
        return web.Response(text=role, headers={"X-Deployment": role, "X-Server": address})

    app = web.Application()
    app.router.add_get("/{tail:.*}", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    address = f"{host}:{port}"
    return runner, address


@dataclass
class Rig:
    tmp: Path
    include: Path
    stable: list[str]
    canary: list[str]
    nginx: procs.Proc | None = None
    runners: list[web.AppRunner] = field(default_factory=list)

    def router(self, **overrides: Any) -> NginxFileRouter:
        assert self.nginx is not None
        options: dict[str, Any] = {
            "stable_servers": self.stable,
            "canary_servers": self.canary,
            "test_command": procs.nginx_argv(self.nginx, "-t"),
            "reload_command": procs.nginx_argv(self.nginx, "-s", "reload"),
        }
        options.update(overrides)
        return NginxFileRouter(TARGET, self.include, **options)

    @property
    def reloads(self) -> int:
        assert self.nginx is not None
        return procs.nginx_reloads(self.nginx)

    async def apply(self, router: NginxFileRouter, weight: int) -> None:
        """``set_weight`` and wait until nginx serves it (it must reload)."""
        assert self.nginx is not None
        before = procs.nginx_workers(self.nginx)
        await router.set_weight(weight)
        await asyncio.to_thread(procs.wait_nginx_reloaded, self.nginx, before)

    async def send(self, n: int, headers: dict[str, str] | None = None) -> Counter[str]:
        """``n`` requests through nginx, one after another; who answered, by role and server."""
        assert self.nginx is not None
        seen: Counter[str] = Counter()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            for i in range(n):
                async with session.get(f"{self.nginx.url}/r/{i}", headers=headers) as response:
                    assert response.status == 200, await response.text()
                    seen[response.headers["X-Deployment"]] += 1
                    seen[response.headers["X-Server"]] += 1
        return seen


async def _rig(tmp_path: Path, n_stable: int, n_canary: int) -> AsyncIterator[Rig]:
    include = tmp_path / "canaryd" / f"{TARGET}.conf"
    include.parent.mkdir()
    rig = Rig(tmp_path, include, [], [])
    try:
        for role, n, into in (("stable", n_stable, rig.stable), ("canary", n_canary, rig.canary)):
            for _ in range(n):
                runner, address = await _start_backend(role)
                rig.runners.append(runner)
                into.append(address)
        seed = NginxFileRouter(
            TARGET,
            include,
            stable_servers=rig.stable,
            canary_servers=rig.canary,
            test_command=["true"],
            reload_command=["true"],
        )
        await seed.set_weight(0)
        rig.nginx = await asyncio.to_thread(procs.start_nginx, tmp_path, include, POOL)
        yield rig
    finally:
        if rig.nginx is not None:
            rig.nginx.stop()
        for runner in rig.runners:
            await runner.cleanup()


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    """One stable and one canary backend behind nginx, at weight 0."""
    async for r in _rig(tmp_path, 1, 1):
        yield r


@pytest.fixture
async def rig_2_stable(tmp_path: Path) -> AsyncIterator[Rig]:
    """Two stable backends and one canary behind nginx, at weight 0."""
    async for r in _rig(tmp_path, 2, 1):
        yield r


# --------------------------------------------------------------------------- the split


async def test_at_weight_25_a_quarter_of_400_requests_reach_the_canary(rig_2_stable: Rig) -> None:
    rig = rig_2_stable
    router = rig.router()
    await rig.apply(router, 25)
    seen = await rig.send(400)
    assert abs(seen["canary"] - 100) <= 4, seen
    assert seen["stable"] + seen["canary"] == 400
    # the stable share is spread evenly over both stable servers
    first, second = (seen[s] for s in rig.stable)
    assert abs(first - second) <= 4, seen


async def test_weights_0_and_100_send_everything_to_one_side(rig: Rig) -> None:
    router = rig.router()
    await rig.apply(router, 100)
    assert (await rig.send(50))["canary"] == 50
    await rig.apply(router, 0)
    assert (await rig.send(50))["stable"] == 50


@pytest.mark.parametrize("weight", [0, 25, 100])
async def test_the_canary_header_reaches_the_canary_at_every_weight(rig: Rig, weight: int) -> None:
    await rig.apply(rig.router(), weight)
    assert (await rig.send(20, {"X-Canary-Deploy": "canary"}))["canary"] == 20
    assert (await rig.send(5, {"X-Canary-Deploy": "Canary"}))["canary"] == 5  # map ignores case
    assert (await rig.send(20, {"X-Canary-Deploy": "stable"}))["stable"] == 20


def test_every_weight_renders_nginx_weights_of_at_least_1_with_the_exact_share() -> None:
    stable, canary = ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"], ["10.0.0.9:80", "[::1]:81"]
    for weight in range(101):
        text = render("web", "web", stable, canary, weight)
        weighted = text.split("upstream web {\n", 1)[1].split("}", 1)[0]
        servers = {
            line.split()[1]: int(line.split("weight=")[1].rstrip(";"))
            for line in weighted.splitlines()
        }
        assert all(w >= 1 for w in servers.values()), (weight, servers)
        on_canary = sum(w for s, w in servers.items() if s in canary)
        assert on_canary * 100 == weight * sum(servers.values()), (weight, servers)
        assert text.startswith(f"# canaryd: target=web weight={weight}\n")
        assert "    canary web_canary;" in text and "    default web;" in text


# --------------------------------------------------------------------------- reading back


async def test_get_weight_reads_back_what_was_set(rig: Rig) -> None:
    router = rig.router()
    await rig.apply(router, 25)
    assert await router.get_weight() == 25
    await rig.apply(router, 60)
    assert await router.get_weight() == 60


async def test_a_missing_or_hand_edited_file_reads_as_cannot_tell(rig: Rig) -> None:
    router = rig.router()
    await rig.apply(router, 25)
    good = rig.include.read_text()
    edits = {
        "a server weight": good.replace("weight=3;", "weight=4;", 1),
        "the header weight": good.replace("weight=25", "weight=30", 1),
        "the map": good.replace("canary web_canary;", "canary web;"),
        "another target": good.replace("target=web ", "target=api "),
    }
    for what, edited in edits.items():
        assert edited != good, what
        rig.include.write_text(edited)
        assert await router.get_weight() is None, what
    rig.include.unlink()
    assert await router.get_weight() is None


async def test_a_new_router_cannot_tell_until_it_has_reloaded_nginx_itself(rig: Rig) -> None:
    await rig.apply(rig.router(), 25)
    restarted = rig.router()  # canaryd restarted: the file may never have been reloaded
    assert await restarted.get_weight() is None
    await rig.apply(restarted, 25)  # same content, but this process has not applied it yet
    assert await restarted.get_weight() == 25


# --------------------------------------------------------------------------- failures


async def test_a_failing_test_command_restores_the_previous_file_byte_for_byte(rig: Rig) -> None:
    await rig.apply(rig.router(), 25)
    before, reloads = rig.include.read_bytes(), rig.reloads
    with pytest.raises(RouterUnavailable, match=r"false rejected weight 50 for web .*restored"):
        await rig.router(test_command=["false"]).set_weight(50)
    assert rig.include.read_bytes() == before
    assert rig.reloads == reloads


async def test_a_broken_upstream_is_refused_by_nginx_and_never_reaches_it(rig: Rig) -> None:
    router = rig.router()
    await rig.apply(router, 25)
    before, reloads = rig.include.read_bytes(), rig.reloads
    broken = rig.router(canary_servers=["127.0.0.1:0"])
    with pytest.raises(CanarydError) as caught:
        await broken.set_weight(50)
    assert isinstance(caught.value, RouterUnavailable)
    message = str(caught.value)
    assert 'invalid port in upstream "127.0.0.1:0"' in message, message
    assert "test failed" in message and "restored" in message
    assert rig.include.read_bytes() == before
    assert rig.reloads == reloads
    assert await router.get_weight() == 25
    assert abs((await rig.send(40))["canary"] - 10) <= 2  # nginx still splits 75/25


async def test_a_refused_first_file_is_removed_again(tmp_path: Path) -> None:
    include = tmp_path / "web.conf"
    router = NginxFileRouter(
        TARGET,
        include,
        stable_servers=["127.0.0.1:1"],
        canary_servers=["127.0.0.1:2"],
        test_command=["false"],
        reload_command=["true"],
    )
    with pytest.raises(RouterUnavailable, match="removed again"):
        await router.set_weight(10)
    assert not include.exists()
    assert list(tmp_path.iterdir()) == []  # no temp file left behind either


async def test_a_failed_reload_keeps_the_tested_file_and_cannot_tell_until_retried(
    rig: Rig,
) -> None:
    await rig.apply(rig.router(), 25)
    failing = rig.router(reload_command=["false"])
    with pytest.raises(RouterUnavailable, match="false failed"):
        await failing.set_weight(40)
    assert rig.include.read_text().startswith("# canaryd: target=web weight=40\n")
    assert await failing.get_weight() is None  # written and valid, but not applied
    retry = rig.router()
    await rig.apply(retry, 40)
    assert await retry.get_weight() == 40
    assert abs((await rig.send(50))["canary"] - 20) <= 2


async def test_a_command_that_hangs_is_stopped_and_reported(tmp_path: Path) -> None:
    router = NginxFileRouter(
        TARGET,
        tmp_path / "web.conf",
        stable_servers=["127.0.0.1:1"],
        canary_servers=["127.0.0.1:2"],
        test_command=["true"],
        reload_command=["sleep", "30"],
        timeout=0.3,
    )
    with pytest.raises(RouterUnavailable, match=r"sleep 30 failed .*no answer within 0.3s"):
        await router.set_weight(10)


# --------------------------------------------------------------------------- idempotence


async def test_writing_the_same_weight_twice_reloads_once(rig: Rig) -> None:
    router = rig.router()
    reloads = rig.reloads
    await rig.apply(router, 25)
    assert rig.reloads == reloads + 1
    written = rig.include.stat().st_mtime_ns
    await router.set_weight(25)
    await asyncio.sleep(0.2)  # a reload would show in the log by now
    assert rig.reloads == reloads + 1
    assert rig.include.stat().st_mtime_ns == written


async def test_finalize_leaves_weight_0_and_all_traffic_on_stable(rig: Rig) -> None:
    router = rig.router()
    await rig.apply(router, 60)
    assert rig.nginx is not None
    before = procs.nginx_workers(rig.nginx)
    await router.finalize()
    await asyncio.to_thread(procs.wait_nginx_reloaded, rig.nginx, before)
    assert await router.get_weight() == 0
    assert rig.include.exists()
    assert (await rig.send(30))["stable"] == 30


# --------------------------------------------------------------------------- wiring


def test_the_example_config_builds_an_nginx_router() -> None:
    settings = load_config(EXAMPLE)
    [target] = [t for t in settings.targets if t.router.kind == "nginx"]
    router = build_router(target)
    assert isinstance(router, NginxFileRouter)
    assert router.kind == "nginx"
    assert router.path == target.router.path  # type: ignore[union-attr]
    text = router.render(25)
    assert "upstream " in text and "$http_x_canary_deploy" in text
