"""Several replicas (``state: {backend: kubernetes}``): the API of a leader and of a follower.

Two real stacks (``support.apikit``: the real app, controller and store) on real loopback
servers, each with a ``runtime.leadership.Leadership`` driven by a scripted elector (the Lease
itself is tested in ``tests/runtime/test_lease.py``): the leader holds the lease, the
follower sees the leader's identity and API URL as a Lease would tell it. Checked: ``/readyz``
on the leader, on a follower and with no leader; a follower's reads; every write that reaches
a follower answered by the leader (start, command, cleanup, the Alertmanager webhook, a
refusal) with method, path and query, body and ``Authorization``; the loop guard; 503 with
``Retry-After`` when no leader is known or none answers; ``canaryd_leader``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from canaryd.api.forward import FORWARDED
from canaryd.ports import Leader
from canaryd.runtime.leadership import Leadership
from support.apikit import IDLE, TARGET, Stack, auth, payload, running_stack, webhook_auth
from support.procs import free_port

MakeClient = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]
Client = TestClient[Any, Any]


class ScriptedElector:
    """An elector whose answers the test sets: ``holds`` the lease, or sees ``seen`` lead."""

    def __init__(self, identity: str, *, holds: bool, seen: Leader | None = None) -> None:
        self.identity = identity
        self.valid_until = float("-inf")
        self.holds = holds
        self.seen = seen
        self.url: str | None = None

    @property
    def retry_period(self) -> float:
        return 0.02

    async def attempt(self) -> bool:
        if self.holds:
            self.valid_until = time.monotonic() + 60
        return self.holds

    def leader(self) -> Leader | None:
        return Leader(self.identity, self.url) if self.holds else self.seen

    async def release(self) -> None:
        self.valid_until = float("-inf")


@dataclass
class Replica:
    stack: Stack
    elector: ScriptedElector
    leadership: Leadership
    seen: list[tuple[str, str, dict[str, str], bytes]] = field(default_factory=list)


@web.middleware
async def _record(request: web.Request, handler: Any) -> web.StreamResponse:
    body = await request.read()
    request.app[SEEN].append((request.method, request.path_qs, dict(request.headers), body))
    return await handler(request)


SEEN = web.AppKey("seen", list)


@asynccontextmanager
async def replica(
    tmp_path: Path, identity: str, *, holds: bool, seen: Leader | None = None
) -> AsyncIterator[Replica]:
    """A stack whose controller loads only once its ``Leadership`` begins a term."""
    elector = ScriptedElector(identity, holds=holds, seen=seen)
    built: list[Stack] = []

    async def elected(spawn: Any) -> None:
        await built[0].controller.load(spawn)

    lead = Leadership(
        elector,
        spawn=lambda coro, name=None: built[0].spawn(coro),
        elected=elected,
        deposed=lambda: built[0].controller.reset(),
        changed=lambda leading: built[0].telemetry.leading(identity, leading),
    )
    directory = tmp_path / identity
    directory.mkdir()
    async with running_stack(directory, load=False, leadership=lead) as stack:
        built.append(stack)
        stack.telemetry.leading(identity, False)  # as the daemon starts: a follower
        records: list[tuple[str, str, dict[str, str], bytes]] = []
        stack.app.middlewares.insert(0, _record)
        stack.app[SEEN] = records
        stack.spawn(lead.run())
        yield Replica(stack, elector, lead, records)


Pair = tuple[Client, Client, Replica, Replica]


@asynccontextmanager
async def pair(
    tmp_path: Path, aiohttp_client: MakeClient
) -> AsyncIterator[tuple[Client, Client, Replica, Replica]]:
    async with replica(tmp_path, "leader-1", holds=True) as a:
        leader = await aiohttp_client(a.stack.app)
        a.elector.url = str(leader.make_url("")).rstrip("/")
        await _until(lambda: a.stack.controller.ready, "the leader loaded its state")
        async with replica(
            tmp_path, "follower-2", holds=False, seen=Leader("leader-1", a.elector.url)
        ) as b:
            follower = await aiohttp_client(b.stack.app)
            yield leader, follower, a, b


async def _until(holds: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not holds():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g}s")
        await asyncio.sleep(0.01)


@pytest.fixture
async def replicas(
    tmp_path: Path, aiohttp_client: MakeClient
) -> AsyncIterator[tuple[Client, Client, Replica, Replica]]:
    async with pair(tmp_path, aiohttp_client) as both:
        yield both


# --------------------------------------------------------------------------- readiness


async def test_readyz_on_the_leader_and_on_a_follower(replicas: Pair) -> None:
    leader, follower, a, _ = replicas
    response = await leader.get("/readyz")
    assert response.status == 200
    assert await response.json() == {"status": "ready", "leader": True, "identity": "leader-1"}
    response = await follower.get("/readyz")
    assert response.status == 200, "a follower is ready: a Deployment's rollout must not stall"
    assert await response.json() == {
        "status": "ready",
        "leader": False,
        "identity": "follower-2",
        "leader_identity": "leader-1",
        "leader_url": a.elector.url,
    }


async def test_readyz_without_a_known_leader_is_503(replicas: Pair) -> None:
    _, follower, _, b = replicas
    b.elector.seen = None
    response = await follower.get("/readyz")
    assert response.status == 503
    assert response.headers["Retry-After"]
    assert (await response.json())["error"]["code"] == "not_leader"


async def test_the_leader_metric(replicas: Pair) -> None:
    leader, follower, _, _ = replicas
    lines = (await (await leader.get("/metrics")).text()).splitlines()
    assert 'canaryd_leader{instance="leader-1"} 1.0' in lines
    lines = (await (await follower.get("/metrics")).text()).splitlines()
    assert 'canaryd_leader{instance="follower-2"} 0.0' in lines


# --------------------------------------------------------------------------- reads and writes


async def test_a_follower_answers_reads_itself(replicas: Pair) -> None:
    _, follower, a, _ = replicas
    response = await follower.get("/api/v1/targets", headers=auth("viewer"))
    assert response.status == 200
    names = [t["name"] for t in (await response.json())["targets"]]
    assert sorted(names) == sorted([TARGET, IDLE])
    assert not [s for s in a.seen if s[1].startswith("/api/v1/targets")], "not forwarded"


async def test_writes_to_a_follower_are_answered_by_the_leader(replicas: Pair) -> None:
    _, follower, a, b = replicas
    response = await follower.post(
        f"/api/v1/targets/{TARGET}/rollouts?trace=1",
        json={"image": "shop:2.0"},
        headers=auth("operator"),
    )
    assert response.status == 201, await response.text()
    started = await response.json()
    assert started["image"] == "shop:2.0"
    method, path, headers, body = a.seen[-1]
    assert (method, path) == ("POST", f"/api/v1/targets/{TARGET}/rollouts?trace=1")
    assert headers[FORWARDED] == "follower-2"
    assert headers["Authorization"] == auth("operator")["Authorization"]
    assert headers["Content-Type"].startswith("application/json")
    assert b'"shop:2.0"' in body
    stored = a.stack.store.latest_for_target(TARGET)
    assert stored is not None and stored.id == started["id"], "the leader's store has it"
    assert b.stack.store.latest_for_target(TARGET) is None, "the follower wrote nothing"
    audit = a.stack.store.audit_log(TARGET)
    assert [r["what"] for r in audit] == ["start"] and audit[0]["who"] == "otto-operator"

    response = await follower.post(f"/api/v1/targets/{TARGET}/pause", headers=auth("operator"))
    assert response.status == 200, await response.text()
    response = await follower.delete(f"/api/v1/targets/{TARGET}/rollout", headers=auth("admin"))
    assert response.status in (200, 202), await response.text()
    assert [s[0] for s in a.seen if FORWARDED in s[2]] == ["POST", "POST", "DELETE"]


async def test_a_refusal_comes_back_as_the_leader_gave_it(replicas: Pair) -> None:
    follower = replicas[1]
    response = await follower.post(
        f"/api/v1/targets/{TARGET}/rollouts", json={"image": "shop:2.0"}, headers=auth("viewer")
    )
    assert response.status == 403
    assert (await response.json())["error"]["required_role"] == "operator"
    response = await follower.post(f"/api/v1/targets/{TARGET}/pause")
    assert response.status == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


async def test_a_webhook_sent_to_a_follower_is_recorded_by_the_leader(replicas: Pair) -> None:
    _, follower, a, b = replicas
    doc = payload("webhook-firing.json")
    response = await follower.post("/api/v1/alerts", json=doc, headers=webhook_auth())
    assert response.status == 200, await response.text()
    assert (await response.json())["received"] == len(doc["alerts"])
    fingerprints = {alert["fingerprint"] for alert in doc["alerts"]}
    recorded = {alert.fingerprint for alert in a.stack.store.firing_alerts(time.time())}
    assert fingerprints <= recorded, "on the leader's disk when the 200 came back"
    assert b.stack.store.firing_alerts(time.time()) == []
    response = await follower.post("/api/v1/alerts", json=doc)  # no credential
    assert response.status == 401


async def test_the_loop_guard_never_forwards_twice(replicas: Pair) -> None:
    _, follower, a, _ = replicas
    before = len(a.seen)
    response = await follower.post(
        f"/api/v1/targets/{TARGET}/pause",
        headers={**auth("operator"), FORWARDED: "someone-else"},
    )
    assert response.status == 503
    assert response.headers["Retry-After"]
    assert (await response.json())["error"]["code"] == "not_leader"
    assert len(a.seen) == before, "not forwarded again"


async def test_no_leader_known_is_503_with_retry_after(replicas: Pair) -> None:
    _, follower, _, b = replicas
    b.elector.seen = None
    response = await follower.post("/api/v1/alerts", json=payload("webhook-firing.json"))
    assert response.status == 503 and response.headers["Retry-After"]
    assert (await response.json())["error"]["code"] == "not_leader"


async def test_an_unreachable_leader_is_503_with_retry_after(replicas: Pair) -> None:
    _, follower, _, b = replicas
    b.elector.seen = Leader("leader-9", f"http://127.0.0.1:{free_port()}")
    doc = payload("webhook-firing.json")
    response = await follower.post("/api/v1/alerts", json=doc, headers=webhook_auth())
    assert response.status == 503 and response.headers["Retry-After"]
    error = (await response.json())["error"]
    assert error["code"] == "not_leader" and "leader-9" in error["message"]
