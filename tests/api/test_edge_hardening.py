"""The HTTP edge against hostile and unlucky clients (issue 7, the edge's points).

Each test reproduces one way the edge let the world in or wedged the daemon, against the real
thing: a ``canaryd serve`` subprocess (``servekit``) where the daemon as a whole matters (its
store, its workers, its runner), or the real app, controller and SQLite store on loopback
(``apikit``) where the edge alone is under test. Raw sockets play the slow clients.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sqlite3
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestClient, TestServer

from canaryd.api import openapi
from canaryd.api.refusals import OVERFLOW, RefusalFolder
from canaryd.api.server import KEEPALIVE_TIMEOUT, make_runner
from canaryd.api.webhook import MAX_LABELS, make_safe, parse_notification
from canaryd.core.errors import StillRunning
from support.apikit import (
    NAMES,
    TARGET,
    Stack,
    auth,
    rfc3339,
    running_stack,
    wait_for,
    webhook_auth,
)
from support.servekit import (
    TOKENS,
    WEBHOOK_TOKEN,
    Serve,
    TargetSpec,
    call,
    wait_until,
    write_config,
)

Client = TestClient[Any, Any]
MakeClient = Callable[[web.Application], Awaitable[Client]]
SHOP = "shop"
HOSTILE = ["oops \udc80", "nul\x00byte", "esc \x1b[2J", "c1 \x85 line", "del\x7f"]

SLOW_POLICY = """\
name: slow
interval: 100ms
error_backoff: 100ms
scale_down_delay: 200ms
limits: {progress_deadline: 30s}
checks:
  unused: {query: vector(1), threshold: 0}
stages:
  - {weight: 10, duration: 60s}
  - {weight: 100, duration: 0s}
alerts:
  - {name: critical-rollback, match: {severity: critical}, action: rollback}
"""


# --------------------------------------------------------------------------- kits


@pytest.fixture
def serve(tmp_path: Path) -> Any:
    (tmp_path / "slow.yaml").write_text(SLOW_POLICY)
    daemon = Serve(write_config(tmp_path, [TargetSpec(SHOP, "slow.yaml")]))
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.stop()


def alert_body(labels: dict[str, str], status: str = "firing", **fields: Any) -> dict[str, Any]:
    alert = {"status": status, "labels": labels, "startsAt": rfc3339(time.time()), **fields}
    if status == "firing":
        alert["endsAt"] = "0001-01-01T00:00:00Z"
    return {"version": "4", "status": status, "alerts": [alert]}


def post_alerts(daemon: Serve, body: dict[str, Any]) -> tuple[int, Any]:
    """Post to the webhook as Alertmanager does; ``json.dumps`` writes a lone surrogate as
    the escape ``\\udc80``, exactly as a hostile sender would."""
    return call(daemon.url, "POST", "/api/v1/alerts", body, token=WEBHOOK_TOKEN, timeout=5)


def phase_of(daemon: Serve) -> str | None:
    rollout = daemon.rollout(SHOP)
    return None if rollout is None else str(rollout["phase"])


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async with running_stack(tmp_path, body_timeout=0.5) as s:
        yield s


@pytest.fixture
async def client(stack: Stack, aiohttp_client: MakeClient) -> Client:
    return await aiohttp_client(stack.app)


async def start_slow(client: Client) -> dict[str, Any]:
    response = await client.post(
        f"/api/v1/targets/{TARGET}/rollouts",
        json={"image": "shop/checkout:2.0", "policy": "slow"},
        headers=auth("operator"),
    )
    assert response.status == 201, await response.text()
    rollout: dict[str, Any] = await response.json()
    return rollout


def audit_rows(stack: Stack, what: str) -> list[dict[str, Any]]:
    return [dict(e) for e in stack.store.audit_log() if e["what"] == what]


# --------------------------------------------------------------------------- 1: hostile text


def test_hostile_label_text_is_made_safe_and_a_critical_alert_still_rolls_back(
    serve: Serve,
) -> None:
    """Point 1: a lone surrogate or control characters in a firing alert's labels used to get
    into the store as they came and fail every worker pass from then on."""
    serve.start_rollout(SHOP, "shop/web:2.0")
    for i, text in enumerate(HOSTILE):
        labels = {"alertname": f"Odd{i}", "target": SHOP, "severity": "warning", "note": text}
        labels[f"x{text}"] = "name too"
        status, doc = post_alerts(serve, alert_body(labels, fingerprint=f"{i:016x}"))
        assert status == 200, (status, doc, serve.tail())
    status, doc = call(
        serve.url,
        "POST",
        f"/api/v1/targets/{SHOP}/rollback",
        {"reason": "oops \udc80"},
        token=TOKENS["operator"],
        timeout=5,
    )
    assert status == 422 and "reason" in doc["error"]["message"], (status, doc)
    assert phase_of(serve) == "Progressing"

    critical = {"alertname": "Down", "target": SHOP, "severity": "critical"}
    assert post_alerts(serve, alert_body(critical))[0] == 200
    wait_until(lambda: phase_of(serve), lambda p: p == "RolledBack", 2.0, "rolled back")
    assert serve.stop() == 0, serve.tail()
    serve.start()  # and the state it left is loaded again
    assert phase_of(serve) == "RolledBack"


def test_webhook_text_is_made_safe_rather_than_refused() -> None:
    """Point 1: a 4xx makes Alertmanager drop the whole group, so the webhook keeps the alert
    with U+FFFD where the unsafe characters were; only absurd sizes are refused."""
    body = alert_body({"severity": "critical", "bad\udc80": "a\x00b"}, fingerprint="f\udc80")
    [alert] = parse_notification(body).alerts
    assert alert.labels == {"severity": "critical", "bad\ufffd": "a\ufffdb"}
    assert alert.fingerprint == "f\ufffd"
    assert make_safe("café ✓") == "café ✓"
    too_many = {f"l{i}": "v" for i in range(MAX_LABELS + 1)}
    with pytest.raises(ValueError, match=r"alerts\[0\]\.labels: 257 labels"):
        parse_notification(alert_body(too_many))


@pytest.mark.parametrize("text", HOSTILE)
@pytest.mark.parametrize(
    ("action", "field", "body"),
    [
        ("rollback", "reason", {}),
        ("rollouts", "image", {}),
        ("rollouts", "policy", {"image": "shop/checkout:2.0"}),
    ],
)
async def test_api_text_with_control_characters_or_lone_surrogates_is_422_naming_the_field(
    client: Client, stack: Stack, action: str, field: str, body: dict[str, Any], text: str
) -> None:
    """Point 1 (API): refused, naming the field; nothing of it reaches the store."""
    if action == "rollback":
        await start_slow(client)
    response = await client.post(
        f"/api/v1/targets/{TARGET}/{action}",
        data=json.dumps({**body, field: text}),
        headers={**auth("admin"), "Content-Type": "application/json"},
    )
    assert response.status == 422, await response.text()
    assert (await response.json())["error"]["message"].startswith(f"{field}:")
    assert all(e["outcome"] == "invalid" for e in stack.store.audit_log() if e["what"] == action)


# --------------------------------------------------------------------------- 7: policy names


def test_policy_is_a_name_never_a_path_and_no_file_content_is_echoed(
    serve: Serve, tmp_path: Path
) -> None:
    """Point 7: ``policy`` used to be read as a path on the daemon's host, synchronously: the
    422 echoed a file's keys and a FIFO blocked the whole daemon."""
    secret = tmp_path / "secret.yaml"
    secret.write_text("db_password: hunter2\n")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for policy in (str(secret), str(fifo), "../slow.yaml", "sub/slow", "/dev/zero", "..", "a b"):
        status, doc = call(
            serve.url,
            "POST",
            f"/api/v1/targets/{SHOP}/rollouts",
            {"image": "shop/web:2.0", "policy": policy},
            token=TOKENS["operator"],
            timeout=5,
        )
        assert status == 422, (policy, status, doc)
        message = doc["error"]["message"]
        assert message.startswith("policy:") and "db_password" not in message, message
    with urllib.request.urlopen(f"{serve.url}/healthz", timeout=2) as response:
        assert response.status == 200


# --------------------------------------------------------------------------- 9: refusal floods


async def test_a_flood_of_bad_tokens_writes_a_bounded_number_of_rows_that_count_them_all(
    tmp_path: Path,
) -> None:
    """Point 9: 2,000 refused requests (API and webhook) used to be 2,000 fsynced rows."""
    async with running_stack(tmp_path) as stack:
        server = TestServer(stack.app)
        async with TestClient(server) as client:
            bad = {"Authorization": "Bearer guessed"}
            paths = [f"/api/v1/targets/{TARGET}/pause", "/api/v1/alerts"]
            sent = asyncio.Semaphore(16)

            async def one(i: int) -> int:
                async with sent:
                    response = await client.post(paths[i % 2], headers=bad)
                    await response.read()
                    return response.status

            statuses = await asyncio.gather(*(one(i) for i in range(2000)))
            assert set(statuses) == {401}
        # the server has stopped: what was folded in memory is flushed
        rows = [e for e in stack.store.audit_log() if e["outcome"] == "unauthenticated"]
        assert len(rows) <= 30, len(rows)
        for what in ("pause", "alerts"):
            counts = [e["detail"]["count"] for e in rows if e["what"] == what]
            assert sum(counts) == 1000, (what, counts)


async def test_occasional_refusals_each_keep_their_own_row(client: Client, stack: Stack) -> None:
    """Point 9: folding only starts past a burst; a person mistyping a token sees every try."""
    for _ in range(3):
        response = await client.post(f"/api/v1/targets/{TARGET}/pause")
        assert response.status == 401
    rows = audit_rows(stack, "pause")
    assert [(e["outcome"], e["detail"]["count"]) for e in rows] == [("unauthenticated", 1)] * 3


def test_the_refusal_folder_is_bounded_and_accounts_for_every_request() -> None:
    folder = RefusalFolder(burst=2, every=10.0, max_groups=3)
    admitted = [
        folder.admit((f"10.0.0.{i % 5}", "anonymous", "pause", "x"), 0.0) for i in range(50)
    ]
    assert len(folder) <= 4  # three groups and the overflow one
    written = sum(a[1] for a in admitted if a is not None)
    flushed = folder.flush(1.0, everything=True)
    assert written + sum(count for _, count in flushed) == 50
    assert any(group[0] == OVERFLOW for group, _ in flushed)
    assert folder.pending == 0


# --------------------------------------------------------------------------- 10: unwritable store


async def test_readyz_and_writes_answer_503_at_once_while_the_store_cannot_write(
    client: Client, stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Point 10: ``/readyz`` said 200 while every write failed, and a pause hung and was
    applied later. ``write_problem`` is the store's probe (its own tests are the store's);
    here it says what a full disk makes it say."""
    await start_slow(client)
    problem: list[str] = ["database or disk is full"]
    monkeypatch.setattr(stack.store, "write_problem", lambda: problem[0] or None, raising=False)

    ready = await client.get("/readyz")
    assert ready.status == 503 and ready.headers["Retry-After"] == "1"
    assert "disk is full" in (await ready.json())["error"]["message"]
    paused = await client.post(f"/api/v1/targets/{TARGET}/pause", headers=auth("operator"))
    assert paused.status == 503 and paused.headers["Retry-After"] == "1"
    assert "disk is full" in (await paused.json())["error"]["message"]

    problem[0] = ""  # the disk has room again: the pause was not applied meanwhile
    assert (await client.get("/readyz")).status == 200
    view = await wait_for(client, lambda v: v["phase"] == "Progressing")
    assert view["rollout"]["pause_reason"] in (None, "")
    assert [e["outcome"] for e in audit_rows(stack, "pause")] == ["unavailable"]


# --------------------------------------------------------------------------- 13: bounded waits


async def test_a_request_still_running_after_its_bounded_wait_is_202_with_a_location(
    client: Client, stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Point 13: the controller's bounded waits (the runtime's) end in ``StillRunning``; the
    edge answers 202 with where to poll. The controller's cleanup is made to say so here."""

    async def still_running(name: str, by: str) -> None:
        raise StillRunning("the router has not reached 0% yet; still cleaning up", name)

    monkeypatch.setattr(stack.controller, "cleanup", still_running)
    response = await client.delete(f"/api/v1/targets/{TARGET}/rollout", headers=auth("admin"))
    assert response.status == 202, await response.text()
    assert response.headers["Location"] == f"/api/v1/targets/{TARGET}"
    doc = await response.json()
    assert doc["status"] == "running" and "still cleaning up" in doc["message"]
    schema = openapi.document("test")["components"]["schemas"]["Running"]
    jsonschema.validate(doc, schema)
    assert [(e["who"], e["outcome"]) for e in audit_rows(stack, "cleanup")] == [
        (NAMES["admin"], "accepted")
    ]


def test_a_client_that_goes_away_cancels_its_handler_and_is_audited_as_abandoned(
    serve: Serve,
) -> None:
    """Points 13 and 16: the daemon's runner cancels a handler whose client left (aiohttp does
    not by default): here a body that never completes, then a closed socket."""
    port = int(serve.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        head = (
            f"POST /api/v1/targets/{SHOP}/pause HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {TOKENS['operator']}\r\nContent-Type: application/json\r\n"
            "Content-Length: 100\r\n\r\n{"
        )
        sock.sendall(head.encode())
        time.sleep(0.3)  # the handler is reading the body
    with urllib.request.urlopen(f"{serve.url}/healthz", timeout=2) as response:
        assert response.status == 200
    wait_until(
        lambda: audit_outcomes(serve.state, "pause"),
        lambda outcomes: outcomes == ["abandoned"],
        5.0,
        "the pause audited as abandoned",
    )


def audit_outcomes(db: Path, what: str) -> list[str]:
    """The outcomes of ``what``'s audit rows, read-only (the daemon owns the file)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        rows = conn.execute("SELECT outcome FROM audit WHERE what = ? ORDER BY seq", (what,))
        return [str(r[0]) for r in rows.fetchall()]
    finally:
        conn.close()


# --------------------------------------------------------------------------- 16: slow clients


async def test_every_503_carries_retry_after(tmp_path: Path, aiohttp_client: MakeClient) -> None:
    """Point 16: the loading 503s (API and /readyz) had no ``Retry-After``."""
    async with running_stack(tmp_path, load=False) as stack:
        client = await aiohttp_client(stack.app)
        for method, path in (("GET", "/readyz"), ("POST", f"/api/v1/targets/{TARGET}/pause")):
            response = await client.request(method, path, headers=auth("operator"))
            assert response.status == 503 and response.headers["Retry-After"] == "1"
        response = await client.post("/api/v1/alerts", json={}, headers=webhook_auth())
        assert response.status == 503 and response.headers["Retry-After"] == "1"


async def test_a_body_that_trickles_in_is_cut_off_with_408(client: Client, stack: Stack) -> None:
    """Point 16: a body sent a byte at a time held a handler for as long as the sender liked."""
    assert client.server.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
    head = (
        f"POST /api/v1/targets/{TARGET}/rollouts HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {auth('operator')['Authorization'][7:]}\r\n"
        "Content-Type: application/json\r\nContent-Length: 40\r\n\r\n"
    )
    writer.write(head.encode())
    began = time.monotonic()

    async def trickle() -> None:
        for byte in b'{"image": "shop/checkout:2.0"          }':
            writer.write(bytes([byte]))
            await asyncio.sleep(0.1)

    sender = asyncio.create_task(trickle())
    try:
        answer = await asyncio.wait_for(reader.read(4096), 3.0)
    finally:
        sender.cancel()
        writer.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert time.monotonic() - began < 3.0
    assert [e["outcome"] for e in audit_rows(stack, "start")] == ["timeout"]


async def closed_within(
    port: int, send: Callable[[asyncio.StreamWriter], Awaitable[None]]
) -> float:
    """Seconds until the server closes a connection on which ``send`` is playing."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    began = time.monotonic()
    sender = asyncio.create_task(send(writer))
    try:
        while await asyncio.wait_for(reader.read(4096), 5.0):
            pass  # an answer to a complete request; then the idle wait
        return time.monotonic() - began
    finally:
        sender.cancel()
        writer.close()


async def test_slow_headers_and_idle_keep_alive_connections_are_closed(tmp_path: Path) -> None:
    """Point 16: aiohttp's default keep-alive timeout is an hour and it has no header timeout;
    ``make_runner`` closes both kinds of connection after ``keepalive_timeout`` (shortened
    here; the daemon's is ``KEEPALIVE_TIMEOUT``)."""
    assert KEEPALIVE_TIMEOUT <= 30
    async with running_stack(tmp_path) as stack:
        runner = make_runner(stack.app, keepalive_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = int(runner.addresses[0][1])
        try:

            async def slow_headers(writer: asyncio.StreamWriter) -> None:
                for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100:
                    writer.write(bytes([byte]))
                    await asyncio.sleep(0.05)

            assert await closed_within(port, slow_headers) < 2.0

            async def one_request_then_idle(writer: asyncio.StreamWriter) -> None:
                writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")

            assert await closed_within(port, one_request_then_idle) < 2.0
            url = f"http://127.0.0.1:{port}/healthz"  # and ordinary requests are unaffected
            async with ClientSession() as session, session.get(url) as response:
                assert response.status == 200
        finally:
            await runner.cleanup()


# --------------------------------------------------------------------------- 4: refusals say so


async def test_a_command_the_engine_refuses_is_409_and_audited_as_rejected_with_its_reason(
    client: Client, stack: Stack
) -> None:
    """Point 4: concurrent rollbacks and full promotions were all answered 200 and audited ok
    although the engine refused all but one ("ignore ... refused" in the history)."""
    started = await start_slow(client)
    calls = [("rollback", {"reason": f"r{i}"}) for i in range(3)]
    calls += [("promote", {"full": True}) for _ in range(3)]
    responses = await asyncio.gather(
        *(
            client.post(f"/api/v1/targets/{TARGET}/{what}", json=body, headers=auth("admin"))
            for what, body in calls
        )
    )
    statuses = [r.status for r in responses]
    assert set(statuses) <= {200, 409}, statuses
    await wait_for(client, lambda v: v["phase"] in ("RolledBack", "Succeeded"), timeout=10)
    history = await client.get(f"/api/v1/targets/{TARGET}/history", headers=auth("viewer"))
    decisions = (await history.json())["decisions"]
    mine = [d["reason"] for d in decisions if d["rollout_id"] == started["id"]]
    applied = [r for r in mine if r.startswith(("manual rollback by", "promoted to 100% by"))]
    assert statuses.count(200) == len(applied), (statuses, mine)
    for response in responses:
        if response.status == 409:
            assert (await response.json())["error"]["code"] == "conflict"
    rows = [e for e in stack.store.audit_log() if e["what"] in ("rollback", "promote")]
    assert sorted(e["outcome"] for e in rows) == sorted(
        "rejected" if s == 409 else "ok" for s in statuses
    )
    assert all(e["detail"].get("message") for e in rows if e["outcome"] == "rejected")


async def test_a_command_on_a_target_without_a_rollout_is_409_with_the_reason_audited(
    client: Client, stack: Stack
) -> None:
    response = await client.post(f"/api/v1/targets/{TARGET}/pause", headers=auth("operator"))
    assert response.status == 409
    message = (await response.json())["error"]["message"]
    assert "no rollout" in message
    [row] = audit_rows(stack, "pause")
    assert row["outcome"] == "rejected" and row["detail"]["message"] == message
