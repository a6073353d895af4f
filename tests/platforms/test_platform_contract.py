"""The platform contract: every platform kind passes the same cases, so the worker can drive any.

The worker calls ``ensure_canary`` on every pass until ``canary_status`` says present and ready,
reads ``stable_image`` before promoting, ``update_stable`` while promoting, and
``remove_canary`` after a rollback or a promotion, any of them again after a failed pass
(``canaryd.ports.Platform``). Each case below states one of those promises and runs it against
every kind in ``PLATFORMS``, each for real where it can be (the private Docker engine, kmock's
Kubernetes emulator, local processes; see ``support.platformcases``). Adding a platform kind to
the suite is adding its ``PlatformKind`` to ``PLATFORMS``; ``test_every_platform_kind_is_in_the_
suite`` fails until it is. Docker cases are the slowest (a container per case, a second to stop
busybox), so the cases are few and each covers a whole promise.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import pkgutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest

import canaryd.adapters.platforms
from canaryd.demo.platform import LocalProcesses
from support import platformcases
from support.platformcases import PlatformCase, PlatformKind

PLATFORMS: list[PlatformKind] = [
    platformcases.NONE,
    platformcases.DOCKER,
    platformcases.KUBERNETES,
    platformcases.DEMO_PROCESSES,
]

T = TypeVar("T")


@pytest.fixture(params=PLATFORMS, ids=str)
async def case(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[PlatformCase]:
    kind: PlatformKind = request.param
    async with kind.open(tmp_path) as opened:
        assert opened.platform.kind == kind.kind
        yield opened


async def until(read: Callable[[], Awaitable[T]], wanted: T, within: float, what: str) -> None:
    """Poll ``read`` until it returns ``wanted``; fail naming ``what`` after ``within`` s."""
    deadline = time.monotonic() + within
    seen = await read()
    while seen != wanted:
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: still {seen!r} after {within:g}s, wanted {wanted!r}")
        await asyncio.sleep(0.1)
        seen = await read()


# --------------------------------------------------------------------------- the list


def test_every_platform_kind_is_in_the_suite() -> None:
    """Every platform adapter in ``canaryd.adapters.platforms``, and the demo's, is listed."""
    package = canaryd.adapters.platforms
    kinds = {LocalProcesses.kind}
    for module in pkgutil.iter_modules(package.__path__, f"{package.__name__}."):
        for _, cls in inspect.getmembers(importlib.import_module(module.name), inspect.isclass):
            if cls.__module__ == module.name and hasattr(cls, "ensure_canary"):
                kinds.add(cls.kind)
    assert kinds == {k.kind for k in PLATFORMS}


# --------------------------------------------------------------------------- the canary


async def test_ensure_canary_brings_a_ready_canary_and_again_changes_nothing(
    case: PlatformCase,
) -> None:
    platform = case.platform
    before = await case.footprint()
    await platform.ensure_canary(case.new)
    await case.settle()
    await until(platform.canary_status, (True, True), case.ready_within, "the canary's status")
    made = await case.footprint()
    assert (made != before) == case.creates, "the footprint does not show the new canary"
    await platform.ensure_canary(case.new)  # as the worker does on every pass
    await case.settle()
    assert await platform.canary_status() == (True, True)
    assert await case.footprint() == made, "ensure_canary of a ready canary changed something"
    assert await platform.stable_image() == case.stable_at_start, "the stable was touched"


async def test_remove_canary_leaves_no_canary_and_can_be_repeated(case: PlatformCase) -> None:
    platform = case.platform
    await platform.ensure_canary(case.new)
    await case.settle()
    await until(platform.canary_status, (True, True), case.ready_within, "the canary's status")
    await platform.remove_canary()
    await case.settle()
    assert await platform.canary_status() == (False, False)
    gone = await case.footprint()
    await platform.remove_canary()  # after a failed pass, or a restart
    assert await platform.canary_status() == (False, False)
    assert await case.footprint() == gone, "removing an absent canary changed something"
    assert await platform.stable_image() == case.stable_at_start, "the stable was touched"


# --------------------------------------------------------------------------- the stable


async def test_update_stable_makes_stable_image_the_new_one_and_again_changes_nothing(
    case: PlatformCase,
) -> None:
    platform = case.platform
    assert await platform.stable_image() == case.stable_at_start
    before = await case.footprint()
    await platform.update_stable(case.new)
    await case.settle()
    await until(platform.stable_image, case.new, case.ready_within, "the stable image")
    updated = await case.footprint()
    assert (updated != before) == case.creates, "the footprint does not show the update"
    await platform.update_stable(case.new)  # a promotion retried after a failed pass
    await case.settle()
    assert await platform.stable_image() == case.new
    assert await case.footprint() == updated, "updating to the image it runs changed something"
