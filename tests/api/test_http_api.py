"""The HTTP API end to end: a real server on loopback, a real controller, workers and store."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from canaryd import __version__
from canaryd.api import openapi
from support.apikit import (
    IDLE,
    NAMES,
    SECRETS,
    TARGET,
    WEBHOOK_TOKEN,
    Stack,
    auth,
    get_json,
    payload,
    phase_is,
    running_stack,
    wait_for,
    webhook_auth,
)

Client = TestClient[Any, Any]
MakeClient = Callable[[web.Application], Awaitable[Client]]
ROLLOUTS = f"/api/v1/targets/{TARGET}/rollouts"


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async with running_stack(tmp_path) as s:
        yield s


@pytest.fixture
async def client(stack: Stack, aiohttp_client: MakeClient) -> Client:
    return await aiohttp_client(stack.app)


async def start(client: Client, image: str = "shop/checkout:2.0", **body: Any) -> dict[str, Any]:
    response = await client.post(ROLLOUTS, json={"image": image, **body}, headers=auth("operator"))
    assert response.status == 201, await response.text()
    rollout: dict[str, Any] = await response.json()
    return rollout


async def post(client: Client, action: str, role: str, body: Any = None) -> Any:
    return await client.post(f"/api/v1/targets/{TARGET}/{action}", json=body, headers=auth(role))


def audit_of(stack: Stack, what: str) -> list[tuple[str, str]]:
    return [(e["who"], e["outcome"]) for e in stack.store.audit_log() if e["what"] == what]


# --------------------------------------------------------------------------- the happy paths


async def test_a_rollout_started_through_the_api_progresses_and_is_promoted_to_success(
    client: Client, stack: Stack
) -> None:
    started = await start(client)
    assert started["target"] == TARGET and started["policy"] == "gated"
    assert started["phase"] in ("Pending", "Progressing") and started["stage"] == 1

    gate = await wait_for(client, lambda v: v["rollout"]["waiting_for_promote"])
    assert (gate["phase"], gate["stage"], gate["weight"], gate["stable_weight"]) == (
        "Paused",
        1,
        10,
        90,
    )
    assert gate["image"] == "shop/checkout:2.0"

    response = await post(client, "promote", "admin")
    assert response.status == 200, await response.text()
    promoted = await response.json()
    assert (promoted["stage"], promoted["weight"]) == (2, 50)

    done = await wait_for(client, phase_is("Succeeded"))
    assert done["weight"] == 0 and done["rollout"]["finished_at"] is not None
    history = await get_json(client, f"/api/v1/targets/{TARGET}/history")
    actions = [d["action"] for d in history["decisions"]]
    assert actions[0] == "start" and actions[-1] == "succeeded"
    assert "promote" in actions
    reasons = " ".join(d["reason"] for d in history["decisions"])
    assert f"promoted by {NAMES['admin']}" in reasons
    assert audit_of(stack, "start") == [(NAMES["operator"], "ok")]
    assert audit_of(stack, "promote") == [(NAMES["admin"], "ok")]


async def test_an_operator_rolls_a_canary_back_through_the_api(
    client: Client, stack: Stack
) -> None:
    await start(client, policy="slow")
    await wait_for(client, phase_is("Progressing"))

    response = await post(client, "rollback", "operator", {"reason": "latency looks off"})
    assert response.status == 200, await response.text()
    assert (await response.json())["phase"] == "RollingBack"

    done = await wait_for(client, phase_is("RolledBack"))
    assert done["weight"] == 0
    reason = done["rollout"]["rollback_reason"]
    assert reason == f"manual rollback by {NAMES['operator']}: latency looks off"
    assert audit_of(stack, "rollback") == [(NAMES["operator"], "ok")]


async def test_pause_resume_and_set_weight_move_the_rollout_as_asked(client: Client) -> None:
    await start(client, policy="slow")
    await wait_for(client, phase_is("Progressing"))

    paused = await (await post(client, "pause", "operator")).json()
    assert paused["phase"] == "Paused"
    again = await post(client, "pause", "operator")  # idempotent: done already, said so
    assert again.status == 200
    unchanged = await again.json()
    assert (unchanged["phase"], unchanged["noop"], unchanged["noop_reason"]) == (
        "Paused",
        True,
        "already paused",
    )

    resumed = await (await post(client, "resume", "operator", {})).json()
    assert resumed["phase"] == "Progressing" and "noop" not in resumed
    running = await (await post(client, "resume", "operator", {})).json()
    assert (running["phase"], running["noop"], running["noop_reason"]) == (
        "Progressing",
        True,
        "not paused",
    )

    weighted = await (await post(client, "weight", "operator", {"weight": 30})).json()
    assert (weighted["phase"], weighted["weight"], weighted["stable_weight"]) == ("Paused", 30, 70)
    restarted = await (await post(client, "resume", "operator")).json()
    assert (restarted["phase"], restarted["weight"]) == ("Progressing", 10)


async def test_promote_full_goes_straight_to_100_percent(client: Client) -> None:
    await start(client, policy="slow")
    await wait_for(client, phase_is("Progressing"))
    response = await post(client, "promote", "admin", {"full": True})
    assert response.status == 200, await response.text()
    assert (await response.json())["phase"] == "Promoting"
    await wait_for(client, phase_is("Succeeded"))


async def test_cleanup_rolls_back_and_removes_the_canary_now(client: Client, stack: Stack) -> None:
    await start(client, policy="slow")
    await wait_for(client, phase_is("Progressing"))
    response = await client.delete(f"/api/v1/targets/{TARGET}/rollout", headers=auth("admin"))
    assert response.status == 200, await response.text()
    body = await response.json()
    assert body["target"] == TARGET
    assert body["rollout"]["phase"] == "RolledBack"
    assert body["rollout"]["rollback_reason"] == f"cleanup by {NAMES['admin']}"
    assert audit_of(stack, "cleanup") == [(NAMES["admin"], "ok")]


async def test_cleanup_of_a_target_without_rollouts_answers_null(client: Client) -> None:
    response = await client.delete(f"/api/v1/targets/{IDLE}/rollout", headers=auth("admin"))
    assert response.status == 200
    assert await response.json() == {"target": IDLE, "rollout": None}


async def test_the_target_list_shows_every_target_and_its_rollout(client: Client) -> None:
    await start(client, policy="slow")
    await wait_for(client, phase_is("Progressing"))
    listing = await get_json(client, "/api/v1/targets")
    rows = {row["name"]: row for row in listing["targets"]}
    assert set(rows) == {TARGET, IDLE}
    assert rows[TARGET]["phase"] == "Progressing" and rows[TARGET]["policy"] == "gated"
    assert (rows[TARGET]["router"], rows[TARGET]["platform"]) == ("noop", "none")
    assert rows[IDLE]["phase"] is None and rows[IDLE]["stable_weight"] == 100


async def test_history_is_every_decision_oldest_first_and_can_be_limited(client: Client) -> None:
    await start(client, policy="slow")
    await wait_for(client, lambda v: v["rollout"]["stage_started_at"] is not None)
    full = await get_json(client, f"/api/v1/targets/{TARGET}/history")
    seqs = [d["seq"] for d in full["decisions"]]
    assert seqs == sorted(seqs) and len(seqs) >= 3
    last = await get_json(client, f"/api/v1/targets/{TARGET}/history?limit=1")
    assert last["decisions"] == full["decisions"][-1:]
    for limit in ("x", "0", "-1", "²", "9" * 5000):
        bad = await client.get(
            f"/api/v1/targets/{TARGET}/history", params={"limit": limit}, headers=auth("viewer")
        )
        assert bad.status == 422, limit


# --------------------------------------------------------------------------- refusals


async def test_a_second_start_of_the_same_image_is_a_conflict(client: Client, stack: Stack) -> None:
    first = await start(client, policy="slow")
    response = await client.post(
        ROLLOUTS, json={"image": "shop/checkout:2.0"}, headers=auth("operator")
    )
    assert response.status == 409
    error = (await response.json())["error"]
    assert error["code"] == "conflict" and first["id"] in error["message"]
    assert audit_of(stack, "start") == [(NAMES["operator"], "ok"), (NAMES["operator"], "rejected")]


async def test_a_new_image_supersedes_the_active_rollout_only_when_asked(
    client: Client, stack: Stack
) -> None:
    first = await start(client, "shop/checkout:2.0", policy="slow")
    body = {"image": "shop/checkout:2.1", "policy": "slow"}
    refused = await client.post(ROLLOUTS, json=body, headers=auth("operator"))
    assert refused.status == 409
    error = (await refused.json())["error"]
    assert error["rollout"] == first["id"] and first["id"] in error["message"]
    assert "supersede" in error["message"]
    current = stack.store.get(first["id"])
    assert current is not None and str(current.phase) != "RolledBack"  # left alone
    second = await start(client, "shop/checkout:2.1", policy="slow", supersede=True)
    assert second["id"] != first["id"]
    old = stack.store.get(first["id"])
    assert old is not None and str(old.phase) == "RolledBack" and old.successor == second["id"]


async def test_commands_the_phase_does_not_allow_are_conflicts(client: Client) -> None:
    await start(client)
    await wait_for(client, lambda v: v["rollout"]["waiting_for_promote"])
    response = await post(client, "resume", "operator")
    assert response.status == 409
    assert "manual gate" in (await response.json())["error"]["message"]


async def test_a_command_for_a_target_without_rollouts_is_a_conflict(client: Client) -> None:
    response = await client.post(f"/api/v1/targets/{IDLE}/pause", headers=auth("operator"))
    assert response.status == 409


async def test_an_unknown_target_is_404_for_reads_and_writes(client: Client, stack: Stack) -> None:
    for path in ("/api/v1/targets/nope", "/api/v1/targets/nope/history"):
        response = await client.get(path, headers=auth("viewer"))
        assert response.status == 404
        assert (await response.json())["error"]["code"] == "not_found"
    response = await client.post(
        "/api/v1/targets/nope/rollouts", json={"image": "x:1"}, headers=auth("operator")
    )
    assert response.status == 404
    assert audit_of(stack, "start") == [(NAMES["operator"], "not-found")]


@pytest.mark.parametrize(
    ("action", "body", "field"),
    [
        ("rollouts", {"image": "x:1", "traffic": 0}, "traffic"),
        ("rollouts", {"image": "x:1", "traffic": 101}, "traffic"),
        ("rollouts", {"image": "x:1", "traffic": "10"}, "traffic"),
        ("rollouts", {"image": "x:1", "traffic": True}, "traffic"),
        ("rollouts", {"traffic": 10}, "image"),
        ("rollouts", {"image": ""}, "image"),
        ("rollouts", {"image": "x 1"}, "image"),
        ("rollouts", {"image": "x:1", "trafic": 10}, "trafic"),
        ("rollouts", {"image": "x:1", "policy": "no-such-policy"}, "policy"),
        ("rollouts", ["x:1"], "body"),
        ("weight", {}, "weight"),
        ("weight", {"weight": -1}, "weight"),
        ("weight", {"weight": 2.5}, "weight"),
        ("promote", {"full": "yes"}, "full"),
        ("rollback", {"reason": 3}, "reason"),
        ("pause", {"now": True}, "now"),
    ],
)
async def test_bad_values_in_a_body_are_422_naming_the_field(
    client: Client, action: str, body: Any, field: str
) -> None:
    response = await post(client, action, "admin", body)
    assert response.status == 422, await response.text()
    error = (await response.json())["error"]
    assert error["code"] == "invalid" and field in error["message"]


async def test_a_body_that_is_not_json_is_400(client: Client) -> None:
    response = await client.post(ROLLOUTS, data=b'{"image": ', headers=auth("operator"))
    assert response.status == 400
    assert (await response.json())["error"]["code"] == "invalid_json"


async def test_an_oversized_api_body_is_413_and_audited(client: Client, stack: Stack) -> None:
    body = b'{"image": "' + b"x" * (2 << 20) + b'"}'
    response = await client.post(ROLLOUTS, data=body, headers=auth("operator"))
    assert response.status == 413
    assert (await response.json())["error"]["code"] == "payload_too_large"
    assert audit_of(stack, "start") == [(NAMES["operator"], "too-large")]


# --------------------------------------------------------------------------- roles


async def test_no_token_is_401_and_a_low_role_is_403_and_both_are_audited(
    client: Client, stack: Stack
) -> None:
    response = await client.post(f"/api/v1/targets/{TARGET}/pause")
    assert response.status == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert (await response.json())["error"]["code"] == "unauthorized"

    wrong = await client.post(
        f"/api/v1/targets/{TARGET}/pause", headers={"Authorization": "Bearer guessed-token"}
    )
    assert wrong.status == 401

    response = await post(client, "pause", "viewer")
    assert response.status == 403
    error = (await response.json())["error"]
    assert error["code"] == "forbidden" and error["required_role"] == "operator"

    response = await post(client, "promote", "operator")
    assert response.status == 403
    response = await client.delete(f"/api/v1/targets/{TARGET}/rollout", headers=auth("operator"))
    assert response.status == 403

    assert audit_of(stack, "pause") == [
        ("anonymous", "unauthenticated"),
        ("anonymous", "unauthenticated"),
        (NAMES["viewer"], "forbidden"),
    ]
    assert audit_of(stack, "promote") == [(NAMES["operator"], "forbidden")]
    assert audit_of(stack, "cleanup") == [(NAMES["operator"], "forbidden")]
    entry = stack.store.audit_log(target=TARGET)[0]
    assert entry["detail"]["status"] == 401 and entry["t"] > 0


async def test_tokens_never_reach_the_audit_log(client: Client, stack: Stack) -> None:
    await client.post(f"/api/v1/targets/{TARGET}/pause", headers={"Authorization": "Bearer x"})
    await post(client, "pause", "viewer")
    await start(client, policy="slow")
    text = repr(stack.store.audit_log())
    assert not any(secret in text for secret in (*SECRETS.values(), "Bearer"))


async def test_reads_need_a_token_but_health_metrics_and_the_status_page_do_not(
    client: Client,
) -> None:
    for path in (
        "/api/v1/targets",
        f"/api/v1/targets/{TARGET}",
        f"/api/v1/targets/{TARGET}/history",
    ):
        assert (await client.get(path)).status == 401
        assert (await client.get(path, headers=auth("viewer"))).status == 200
    for path in ("/healthz", "/readyz", "/metrics", "/", "/api/v1/openapi.json"):
        assert (await client.get(path)).status == 200, path


async def test_anonymous_role_lets_requests_without_a_token_act(
    tmp_path: Path, aiohttp_client: MakeClient
) -> None:
    async with running_stack(tmp_path, anonymous_role="viewer") as stack:
        client = await aiohttp_client(stack.app)
        assert (await client.get("/api/v1/targets")).status == 200
        assert (await client.post(f"/api/v1/targets/{TARGET}/pause")).status == 403
        bad = await client.get("/api/v1/targets", headers={"Authorization": "Bearer nope"})
        assert bad.status == 401


# --------------------------------------------------------------------------- operations


async def test_readyz_is_503_until_the_controller_has_loaded(
    tmp_path: Path, aiohttp_client: MakeClient
) -> None:
    async with running_stack(tmp_path, load=False) as stack:
        client = await aiohttp_client(stack.app)
        response = await client.get("/readyz")
        assert response.status == 503
        assert (await response.json())["error"]["code"] == "not_ready"
        assert (await client.get("/healthz")).status == 200
        webhook = await client.post(
            "/api/v1/alerts", json=payload("webhook-firing.json"), headers=webhook_auth()
        )
        assert webhook.status == 503  # Alertmanager retries: the alerts are not lost
        assert (await client.get("/api/v1/targets", headers=auth("admin"))).status == 503
        await stack.load()
        response = await client.get("/readyz")
        assert response.status == 200
        assert await response.json() == {"status": "ready"}


async def test_metrics_are_the_private_registry_in_prometheus_text_format(
    client: Client,
) -> None:
    await client.post("/api/v1/alerts", json=payload("webhook-firing.json"), headers=webhook_auth())
    await client.post("/api/v1/alerts", data=b"{", headers=webhook_auth())
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    text = await response.text()
    assert f'canaryd_build_info{{version="{__version__}"}} 1.0' in text
    assert 'canaryd_webhook_requests_total{code="200"} 1.0' in text
    assert 'canaryd_webhook_requests_total{code="400"} 1.0' in text
    assert 'canaryd_alerts_received_total{status="firing"} 2.0' in text
    assert WEBHOOK_TOKEN not in text


async def test_the_status_page_shows_targets_and_weights_but_no_secrets(client: Client) -> None:
    await start(client, "shop/checkout:<b>2.0</b>", policy="slow")
    await wait_for(client, phase_is("Progressing"))
    response = await client.get("/")
    assert response.status == 200 and response.content_type == "text/html"
    page = await response.text()
    assert TARGET in page and IDLE in page and "Progressing" in page
    assert "canary 10% / stable 90%" in page and 'class="canary" x="0" y="0" width="10"' in page
    assert "&lt;b&gt;2.0&lt;/b&gt;" in page and "<b>2.0</b>" not in page
    assert not any(secret in page for secret in (*SECRETS.values(), WEBHOOK_TOKEN))


async def test_errors_are_json_for_unknown_paths_and_methods(client: Client) -> None:
    response = await client.get("/api/v1/nothing-here")
    assert response.status == 404
    assert (await response.json())["error"]["code"] == "not_found"
    response = await client.put("/api/v1/targets", headers=auth("admin"))
    assert response.status == 405
    assert "GET" in response.headers["Allow"]
    assert (await response.json())["error"]["code"] == "method_not_allowed"


# --------------------------------------------------------------------------- the contract

DOCUMENT = openapi.document(__version__)
_REGISTRY: Registry[Any] = Registry().with_resource(
    "urn:canaryd", Resource.from_contents(DOCUMENT, default_specification=DRAFT202012)
)


def conforms(instance: Any, schema: str) -> None:
    ref = {"$ref": f"urn:canaryd#/components/schemas/{schema}"}
    jsonschema.Draft202012Validator(ref, registry=_REGISTRY).validate(instance)


def test_the_openapi_document_is_valid_openapi_3_1() -> None:
    import openapi_spec_validator as validator

    validator.validate(DOCUMENT)
    assert DOCUMENT["openapi"] == "3.1.0" and DOCUMENT["info"]["version"] == __version__


async def test_the_openapi_document_describes_exactly_the_routes_of_the_app(
    client: Client, stack: Stack
) -> None:
    served = await get_json(client, "/api/v1/openapi.json")
    assert served == DOCUMENT
    routes = {
        (route.method.lower(), route.resource.canonical)
        for route in stack.app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }
    documented = {
        (method, path)
        for path, item in DOCUMENT["paths"].items()
        for method in item
        if method in ("get", "post", "put", "patch", "delete")
    }
    assert routes == documented


async def test_answers_conform_to_the_documented_schemas(client: Client, stack: Stack) -> None:
    conforms(await start(client, policy="slow"), "Rollout")
    await wait_for(client, phase_is("Progressing"))
    await client.post(
        "/api/v1/alerts", json=payload("webhook-firing.json", target=IDLE), headers=webhook_auth()
    )
    conforms(await get_json(client, "/api/v1/targets"), "TargetList")
    conforms(await get_json(client, f"/api/v1/targets/{TARGET}"), "TargetDetail")
    idle = await get_json(client, f"/api/v1/targets/{IDLE}")
    conforms(idle, "TargetDetail")
    assert idle["rollout"] is None and len(idle["alerts"]) == 2
    conforms(await get_json(client, f"/api/v1/targets/{TARGET}/history"), "History")
    conforms(await (await post(client, "pause", "operator")).json(), "Rollout")
    conforms(await (await post(client, "pause", "operator")).json(), "Rollout")  # a noop
    conforms(await (await post(client, "promote", "operator")).json(), "Error")
    conforms(await (await post(client, "pause", "viewer")).json(), "Error")
    conforms(await (await client.get("/healthz")).json(), "Health")
    response = await client.post(
        "/api/v1/alerts", json=payload("webhook-resolved.json"), headers=webhook_auth()
    )
    conforms(await response.json(), "WebhookAccepted")
    conforms(payload("webhook-firing-v0.31.json"), "WebhookMessage")
    cleanup = await client.delete(f"/api/v1/targets/{TARGET}/rollout", headers=auth("admin"))
    conforms(await cleanup.json(), "CleanupResult")
