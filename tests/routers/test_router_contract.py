"""The router contract: every router kind passes the same cases, so the worker can trust any.

The worker sets a weight, reads it back to verify it (``None``: "cannot tell", and it re-asserts
the weight), re-applies the same weight on every pass, and calls ``finalize`` when canaryd lets
go of the target (``canaryd.ports.Router``). Each case below states one of those promises and
runs it against every kind in ``ROUTERS``, each with its real component where it has one (nginx,
Traefik, kmock's Kubernetes emulator; see ``support.routercases``). Adding a router kind to the
suite is adding its ``RouterKind`` to ``ROUTERS``; ``test_every_router_kind_is_in_the_suite``
fails until it is.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import canaryd.adapters.routers
from support import backends, routercases
from support.routercases import HAND_EDIT_AT, RouterCase, RouterKind

ROUTERS: list[RouterKind] = [
    routercases.NOOP,
    routercases.NGINX,
    routercases.TRAEFIK_FILE,
    routercases.GATEWAY_API,
    routercases.TRAEFIK_SERVICE,
    routercases.NGINX_INGRESS,
]

# Router kinds whose contract is another one, with the tests that hold them to it instead.
OWN_CONTRACT = {
    # Argo's controller moves the weight, only forward, only through the Rollout's steps: a
    # weight is not set and read back at will (every weight 0..100, a hand edit re-asserted)
    # but reached by promoting through a pause. tests/routers/test_argo_rollouts_router.py and
    # tests/daemon/test_serve_argo.py hold it to that, with the fake Argo controller.
    "argo-rollouts": "tests/routers/test_argo_rollouts_router.py",
}

WITH_A_PROXY = [k for k in ROUTERS if k.data_plane]
HAND_EDITABLE = [k for k in ROUTERS if k.cannot_hand_edit is None]
NOT_HAND_EDITABLE = [k for k in ROUTERS if k.cannot_hand_edit is not None]


async def _open(kind: RouterKind, tmp_path: Path) -> AsyncIterator[RouterCase]:
    async with kind.open(tmp_path) as case:
        assert case.router.kind == kind.kind
        yield case


@pytest.fixture(params=ROUTERS, ids=str)
async def case(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[RouterCase]:
    async for opened in _open(request.param, tmp_path):
        yield opened


@pytest.fixture(params=WITH_A_PROXY, ids=str)
async def proxied(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[RouterCase]:
    async for opened in _open(request.param, tmp_path):
        yield opened


@pytest.fixture(params=HAND_EDITABLE, ids=str)
async def editable(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[RouterCase]:
    async for opened in _open(request.param, tmp_path):
        yield opened


# --------------------------------------------------------------------------- the list


def test_every_router_kind_is_in_the_suite() -> None:
    """Every router adapter in ``canaryd.adapters.routers`` has an entry in ``ROUTERS``."""
    package = canaryd.adapters.routers
    kinds = set()
    for module in pkgutil.iter_modules(package.__path__, f"{package.__name__}."):
        for _, cls in inspect.getmembers(importlib.import_module(module.name), inspect.isclass):
            if cls.__module__ != module.name or inspect.isabstract(cls):
                continue  # imported, or a base such as files.FileRouter
            if hasattr(cls, "set_weight"):
                kinds.add(cls.kind)
    assert kinds == {k.kind for k in ROUTERS} | set(OWN_CONTRACT)
    root = Path(__file__).resolve().parents[2]
    assert all((root / test).is_file() for test in OWN_CONTRACT.values())


# --------------------------------------------------------------------------- set and read back


async def test_every_weight_0_to_100_reads_back_exactly(case: RouterCase) -> None:
    order = list(range(101))
    random.Random(7).shuffle(order)  # up and down, in big and small steps
    for weight in [*range(101), *order[:30]]:
        await case.router.set_weight(weight)
        assert await case.router.get_weight() == weight, weight


async def test_the_same_weight_again_changes_nothing(case: RouterCase) -> None:
    for weight in (0, 37, 100):
        before = await case.writes()
        await case.router.set_weight(weight)
        written = await case.writes()
        assert (written != before) == case.writes_outside, f"weight {weight} left no trace"
        await case.router.set_weight(weight)
        assert await case.writes() == written, f"weight {weight} applied twice wrote again"
        assert await case.router.get_weight() == weight


async def test_a_weight_outside_0_to_100_is_refused_and_changes_nothing(case: RouterCase) -> None:
    await case.router.set_weight(30)
    written = await case.writes()
    for weight in (-1, 101):
        with pytest.raises(ValueError, match=str(weight)):
            await case.router.set_weight(weight)
    assert await case.writes() == written
    assert await case.router.get_weight() == 30


async def test_after_a_restart_the_weight_reads_back_or_cannot_tell(case: RouterCase) -> None:
    await case.router.set_weight(30)
    restarted = case.restarted()
    assert await restarted.get_weight() in (30, None)  # never another weight
    await restarted.set_weight(30)  # what the worker does on "cannot tell"
    assert await restarted.get_weight() == 30


# --------------------------------------------------------------------------- hand edits


async def test_a_hand_edit_reads_as_cannot_tell_until_the_weight_is_set_again(
    editable: RouterCase,
) -> None:
    assert editable.hand_edit is not None
    await editable.router.set_weight(HAND_EDIT_AT)
    await editable.hand_edit()
    assert await editable.router.get_weight() is None
    await editable.router.set_weight(HAND_EDIT_AT)
    assert await editable.router.get_weight() == HAND_EDIT_AT


@pytest.mark.parametrize("kind", NOT_HAND_EDITABLE, ids=str)
async def test_a_router_with_nothing_to_edit_says_why_and_cannot_tell_after_a_restart(
    kind: RouterKind, tmp_path: Path
) -> None:
    assert kind.cannot_hand_edit and len(kind.cannot_hand_edit) > 40
    async with kind.open(tmp_path) as opened:
        await opened.router.set_weight(HAND_EDIT_AT)
        assert await opened.restarted().get_weight() is None


# --------------------------------------------------------------------------- finalize


async def test_finalize_gives_back_what_the_router_took_and_can_be_repeated(
    case: RouterCase,
) -> None:
    await case.router.set_weight(60)
    await case.router.finalize()
    await case.released()
    written = await case.writes()
    await case.router.finalize()
    assert await case.writes() == written, "a second finalize wrote again"
    await case.released()


async def test_finalize_before_any_weight_is_harmless(case: RouterCase) -> None:
    await case.router.finalize()
    await case.released()


# --------------------------------------------------------------------------- real traffic


async def test_the_proxy_serves_the_weight_and_all_to_stable_after_finalize(
    proxied: RouterCase,
) -> None:
    assert proxied.through is not None
    router = proxied.router
    for weight in (0, 25, 100):
        await proxied.through(lambda w=weight: router.set_weight(w), weight)
        seen = await backends.count(proxied.url, 100)
        assert abs(seen["canary"] - weight) <= 2 and sum(seen.values()) == 100, (weight, seen)
    await proxied.through(router.finalize, 0)
    assert await backends.count(proxied.url, 30) == {"stable": 30}


async def test_the_canary_header_pins_requests_to_the_canary_at_weight_0(
    proxied: RouterCase,
) -> None:
    assert proxied.through is not None
    router = proxied.router
    await proxied.through(lambda: router.set_weight(0), 0)
    pinned = await backends.count(proxied.url, 20, {"X-Canary-Deploy": "canary"})
    assert pinned == {"canary": 20}
    assert await backends.count(proxied.url, 20) == {"stable": 20}
