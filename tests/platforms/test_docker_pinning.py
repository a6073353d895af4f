"""Digest pinning on the real Docker engine (issue 13 point 1): a tag is resolved once, at
start, and promotion deploys exactly the bytes that were verified and judged, even when the tag
is moved to another image mid-rollout (``docker tag`` of a different image to the same name).

The controller, its worker, the SQLite store, the docker platform and the verify commands are
all real; the router is ``noop`` (traffic is not what is under test here).
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from canaryd.adapters.platforms.docker import DockerEnginePlatform
from canaryd.adapters.platforms.pinning import pinned_reference, repository
from canaryd.adapters.routers.noop import NoopRouter
from canaryd.adapters.store.sqlite import SqliteStore
from canaryd.adapters.telemetry import Telemetry
from canaryd.adapters.verify import CommandVerifier
from canaryd.core.model import Phase, Policy, Stage
from canaryd.runtime.controller import Controller, Target
from support.apikit import FAST, WallClock, no_checks
from support.dockerkit import IMAGE, PROJECT, URL, docker_cli, ensure_images, owned_target

POLICY = Policy(
    name="pin-quick",
    stages=(Stage(50, 1.0), Stage(100, 0.5)),
    checks={},
    interval=0.25,
    scale_down_delay=0.0,
)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> None:
    ensure_images(tmp_path_factory.mktemp("images"))


def image_id(reference: str) -> str:
    done = docker_cli("image", "inspect", "--format", "{{.Id}}", reference)
    assert done.returncode == 0, done.stderr
    return done.stdout.decode().strip()


@pytest.fixture
def moving_tag(images: None) -> Iterator[str]:
    """A tag of this test's own, on v2 for now; removed afterwards (v1/v2 stay as they are)."""
    tag = f"{IMAGE}:moving-{uuid.uuid4().hex[:8]}"
    assert docker_cli("tag", f"{IMAGE}:v2", tag).returncode == 0
    yield tag
    docker_cli("rmi", tag)


def test_a_local_image_pins_to_its_id_and_a_registry_one_to_its_digest() -> None:
    digest = "sha256:" + "12" * 32
    local = {"Id": "sha256:" + "ef" * 32, "RepoDigests": []}
    assert pinned_reference("app:v2", local) == local["Id"]
    pulled = {"Id": local["Id"], "RepoDigests": [f"other/app@{digest}", f"reg:5000/app@{digest}"]}
    assert pinned_reference("reg:5000/app:v2", pulled) == f"reg:5000/app@{digest}"
    assert pinned_reference("app:v2", pulled) == local["Id"]  # no digest of *its* repository
    assert repository("reg:5000/team/app:v2") == "reg:5000/team/app"
    assert repository("reg:5000/team/app") == "reg:5000/team/app"


async def test_promotion_deploys_the_judged_image_when_the_tag_moves_mid_rollout(
    tmp_path: Path, moving_tag: str
) -> None:
    judged, other = image_id(f"{IMAGE}:v2"), image_id(f"{IMAGE}:v1")
    seen = tmp_path / "verified"
    verify = tmp_path / "verify.py"
    verify.write_text(f"import sys\nopen({str(seen)!r}, 'a').write(sys.argv[1] + '\\n')\n")
    async with owned_target() as web:
        await web.run_stable(1, "v1")
        platform = DockerEnginePlatform(
            web.name, service=web.name, project=PROJECT, host=URL, stop_timeout=1
        )
        store = SqliteStore(tmp_path / "state.db")
        target = Target(
            web.name,
            POLICY,
            NoopRouter(),
            platform,
            verify=CommandVerifier([[sys.executable, str(verify), "{image}"]], timeout=30),
        )
        controller = Controller(
            [target],
            store=store,
            measure=no_checks,
            clock=WallClock(),
            events=Telemetry(),
            load_policy=lambda name: POLICY,
            timing=FAST,
        )
        tasks: set[asyncio.Task[None]] = set()

        def spawn(coro: Any) -> asyncio.Task[None]:
            task = asyncio.get_running_loop().create_task(coro)
            tasks.add(task)
            return task

        try:
            await controller.load(spawn)
            rollout = await controller.start(web.name, moving_tag)
            assert rollout.pinned == judged and rollout.image == moving_tag
            worker = controller.workers()[web.name]
            async with asyncio.timeout(60):
                await worker.wait_until(lambda s: s.phase is Phase.PROGRESSING)
            (canary,) = await web.owned(**{"canaryd.role": "canary"})
            assert canary["Image"] == judged
            # someone moves the tag to another image while the canary is being judged
            assert docker_cli("tag", f"{IMAGE}:v1", moving_tag).returncode == 0
            assert image_id(moving_tag) == other
            async with asyncio.timeout(90):
                await worker.wait_until(lambda s: s.phase is Phase.SUCCEEDED)
            stables = [
                c
                for c in await web.owned()
                if c["State"]["Running"] and c["Config"]["Labels"].get("canaryd.role") != "canary"
            ]
            assert [c["Image"] for c in stables] == [judged]  # the bytes judged, not the tag's
            assert seen.read_text().splitlines() == [judged]  # verify saw the pinned reference
            stored = store.get(rollout.id)
            assert stored is not None and stored.pinned == judged
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            store.close()
