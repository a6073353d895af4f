"""Shared setup for the HTTP tests: the real app in front of a real controller.

Everything is the daemon's own: ``Controller`` with its workers, ``SqliteStore`` in the test's
temporary directory, ``Telemetry`` with a private registry, and the observe-only ``noop``
router and ``none`` platform. The policies have stages without checks (the worker's
``measure`` returns nothing to measure), so no Prometheus is needed and a stage passes on
time alone: fractions of a second here.

``running_stack`` serves async tests (``aiohttp_client`` puts the app on a real loopback
server); ``ServerThread`` runs the same stack on a ``TCPSite`` in a thread of its own, for
synchronous tests such as hypothesis's.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import http.client
import json
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from canaryd.adapters.platforms.none import NonePlatform
from canaryd.adapters.routers.noop import NoopRouter
from canaryd.adapters.store.sqlite import SqliteStore
from canaryd.adapters.telemetry import Telemetry
from canaryd.api.server import build_app
from canaryd.api.webhook import WebhookCredential, fingerprint
from canaryd.config.settings import Token
from canaryd.core.errors import ConfigError, Problem
from canaryd.core.model import (
    AlertAction,
    AlertRule,
    Gate,
    Limits,
    Matcher,
    Measurement,
    Policy,
    Rollout,
    Stage,
)
from canaryd.runtime.controller import Controller, Target
from canaryd.runtime.worker import Timing

REFERENCE = Path(__file__).resolve().parents[1] / "upstream" / "alertmanager"
FIRING_PAYLOADS = (
    "webhook-firing.json",
    "webhook-firing-v0.31.json",
    "webhook-firing-truncated.json",
)

TARGET = "checkout"  # the target the tests roll out
IDLE = "billing"  # a second target that never gets a rollout

SECRETS = {
    "viewer": "viewer-token-4f1d2c3b5a6e7d8c",
    "operator": "operator-token-9a8b7c6d5e4f3a2b",
    "admin": "admin-token-0123456789abcdef0123",
}
NAMES = {"viewer": "vera-viewer", "operator": "otto-operator", "admin": "ada-admin"}
WEBHOOK_TOKEN = "alertmanager-webhook-7e6d5c4b3a29"

FAST = Timing(observe_every=0.05, converge_every=0.01, retry_after=0.05)


def _policy(name: str, stages: tuple[Stage, ...]) -> Policy:
    return Policy(
        name=name,
        stages=stages,
        checks={},
        alert_rules=(
            AlertRule(
                (Matcher("severity", "=", "critical"),),
                AlertAction.ROLLBACK,
                name="critical-rollback",
            ),
            AlertRule((Matcher("alertname", "=~", ".*Freeze"),), AlertAction.FREEZE),
        ),
        limits=Limits(progress_deadline=30.0),
        interval=0.1,
        error_backoff=0.1,
        scale_down_delay=0.2,
    )


def gated_policy() -> Policy:
    """10% for 0.3 s, then a manual gate; 50% for 0.3 s; 100% to finish."""
    return _policy(
        "gated",
        (Stage(10, 0.3, gate=Gate.MANUAL), Stage(50, 0.3), Stage(100, 0.0)),
    )


def slow_policy() -> Policy:
    """Stages of a minute: the rollout stays Progressing for as long as a test needs."""
    return _policy("slow", (Stage(10, 60.0), Stage(50, 60.0), Stage(100, 0.0)))


POLICIES: dict[str, Callable[[], Policy]] = {"gated": gated_policy, "slow": slow_policy}


def load_policy(ref: str) -> Policy:
    if ref not in POLICIES:
        raise ConfigError([Problem(ref, "policy", "no such policy")])
    return POLICIES[ref]()


def tokens() -> tuple[Token, ...]:
    """The tokens file: the admin's token is stored as its SHA-256 only."""
    admin = hashlib.sha256(SECRETS["admin"].encode()).hexdigest()
    return (
        Token(NAMES["viewer"], "viewer", token=SECRETS["viewer"]),
        Token(NAMES["operator"], "operator", token=SECRETS["operator"]),
        Token(NAMES["admin"], "admin", sha256=admin),
    )


def auth(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {SECRETS[role]}"}


def webhook_auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {WEBHOOK_TOKEN}"}


class WallClock:
    def time(self) -> float:
        return time.time()


async def no_checks(
    labels: Mapping[str, str], rollout: Rollout
) -> tuple[tuple[Measurement, ...], float | None]:
    return (), None


def _concerns(name: str) -> Callable[[Mapping[str, str]], bool]:
    return lambda labels: labels.get("target") == name


@dataclass
class Stack:
    controller: Controller
    store: SqliteStore
    telemetry: Telemetry
    app: web.Application
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def load(self) -> None:
        await self.controller.load(self.spawn)


DEFAULT_WEBHOOK = WebhookCredential.bearer(WEBHOOK_TOKEN)


@asynccontextmanager
async def running_stack(
    tmp_path: Path,
    *,
    load: bool = True,
    webhook: WebhookCredential | None = DEFAULT_WEBHOOK,
    **app_options: Any,
) -> AsyncIterator[Stack]:
    store = SqliteStore(tmp_path / "state.db")
    telemetry = Telemetry()
    clock = WallClock()
    targets = [
        Target(
            name,
            gated_policy(),
            NoopRouter(),
            NonePlatform(),
            labels={"job": name},
            concerns=_concerns(name),
        )
        for name in (TARGET, IDLE)
    ]
    controller = Controller(
        targets,
        store=store,
        measure=no_checks,
        clock=clock,
        events=telemetry,
        load_policy=load_policy,
        timing=FAST,
    )
    app = build_app(controller, store, telemetry, tokens(), webhook, clock, **app_options)
    stack = Stack(controller, store, telemetry, app)
    try:
        if load:
            await stack.load()
        yield stack
    finally:
        for task in list(stack.tasks):
            task.cancel()
        await asyncio.gather(*stack.tasks, return_exceptions=True)
        store.close()


# --------------------------------------------------------------------------- helpers


def rfc3339(t: float) -> str:
    """Like Go's time.RFC3339Nano: nanoseconds with trailing zeros trimmed."""
    whole = int(t)
    text = datetime.fromtimestamp(whole, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    nanos = f"{round((t - whole) * 1e9):09d}".rstrip("0")
    return f"{text}.{nanos}Z" if nanos else f"{text}Z"


def reference(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((REFERENCE / name).read_text(encoding="utf-8"))
    return doc


def payload(name: str, *, target: str = TARGET, starts_at: float | None = None) -> dict[str, Any]:
    """A reference payload about ``target``, as Alertmanager would send it now.

    The reference files' alerts started in August 2026; a rollout ignores alerts that started
    before it, so ``startsAt`` becomes ``starts_at`` (default: now) and a resolved alert ends a
    minute later. The ``target`` label changes the label set, so the fingerprint is recomputed.
    """
    doc = copy.deepcopy(reference(name))
    start = time.time() if starts_at is None else starts_at
    for i, alert in enumerate(doc["alerts"]):
        alert["labels"]["target"] = target
        alert["fingerprint"] = fingerprint(alert["labels"])
        alert["startsAt"] = rfc3339(start + i * 0.001)
        if alert["status"] == "resolved":
            alert["endsAt"] = rfc3339(start + 60.0)
    doc["commonLabels"]["target"] = target
    return doc


async def get_json(client: TestClient[Any, Any], path: str, role: str = "viewer") -> Any:
    response = await client.get(path, headers=auth(role))
    assert response.status == 200, await response.text()
    return await response.json()


async def wait_for(
    client: TestClient[Any, Any],
    predicate: Callable[[dict[str, Any]], bool],
    target: str = TARGET,
    timeout: float = 10.0,
) -> dict[str, Any]:
    """Poll ``GET /api/v1/targets/{target}`` until ``predicate(view)`` holds."""
    deadline = time.monotonic() + timeout
    view: dict[str, Any] = {}
    while time.monotonic() < deadline:
        view = await get_json(client, f"/api/v1/targets/{target}")
        if predicate(view):
            return view
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out; last view: {json.dumps(view, indent=1)[:3000]}")


def phase_is(*phases: str) -> Callable[[dict[str, Any]], bool]:
    return lambda view: view["phase"] in phases


async def poll(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.02)


# --------------------------------------------------------------------------- a server thread


class ServerThread:
    """The stack on a real ``TCPSite`` on 127.0.0.1, in a thread with its own event loop."""

    def __init__(self, tmp_path: Path) -> None:
        self._tmp = tmp_path
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="canaryd-http", daemon=True)
        self.port = 0

    def __enter__(self) -> ServerThread:
        self._thread.start()
        if not self._ready.wait(30) or self._error is not None:
            raise RuntimeError(f"the server did not start: {self._error!r}")
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with running_stack(self._tmp) as stack:
            runner = web.AppRunner(stack.app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self.port = int(runner.addresses[0][1])
            self._ready.set()
            try:
                await self._stop.wait()
            finally:
                await runner.cleanup()

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=dict(headers or {}))
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()
