"""Alertmanager's webhook: the parser against the reference payloads, and the endpoint end to end.

The reference payloads (``tests/upstream/alertmanager/``) reproduce Alertmanager's exact
output, real fingerprints included; see ``webhook-semantics.md`` there for the semantics.
"""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from canaryd.api.webhook import (
    PayloadError,
    WebhookCredential,
    basic_matches,
    bearer_matches,
    fingerprint,
    parse_notification,
    parse_time,
)
from support.apikit import (
    FIRING_PAYLOADS,
    IDLE,
    TARGET,
    WEBHOOK_TOKEN,
    Stack,
    auth,
    get_json,
    payload,
    phase_is,
    reference,
    running_stack,
    wait_for,
    webhook_auth,
)

Client = TestClient[Any, Any]
MakeClient = Callable[[web.Application], Awaitable[Client]]
ALERTS = "/api/v1/alerts"
AUGUST_20 = datetime(2026, 8, 20, 10, 15, 30, tzinfo=UTC).timestamp()


# --------------------------------------------------------------------------- the parser


@pytest.mark.parametrize("name", [*FIRING_PAYLOADS, "webhook-resolved.json"])
def test_every_reference_payload_parses_with_its_fingerprints_and_times(name: str) -> None:
    doc = reference(name)
    alerts = parse_notification(doc).alerts
    assert [a.fingerprint for a in alerts] == [a["fingerprint"] for a in doc["alerts"]]
    assert [a.status for a in alerts] == [a["status"] for a in doc["alerts"]]
    first = alerts[0]
    assert first.labels["alertname"] == "CanaryHighErrorRate"
    assert first.starts_at == pytest.approx(AUGUST_20 + 0.123, abs=1e-6)
    if first.status == "firing":
        assert first.ends_at is None  # Go's zero time: not "ended in year 1"
    else:
        assert first.ends_at == pytest.approx(AUGUST_20 + 540.123, abs=1e-6)


def test_the_truncated_and_the_pre_0_32_shapes_are_both_read() -> None:
    truncated = parse_notification(reference("webhook-firing-truncated.json"))
    assert truncated.truncated == 1 and len(truncated.alerts) == 1
    assert truncated.reason == "first notification"
    old = parse_notification(reference("webhook-firing-v0.31.json"))
    assert old.reason == "" and len(old.alerts) == 2
    assert old.receiver == "canary-daemon" and old.group_key.startswith("{}/{severity=")


def test_the_fingerprint_is_alertmanagers_and_computed_when_missing() -> None:
    doc = reference("webhook-firing.json")
    for alert in doc["alerts"]:
        assert fingerprint(alert["labels"]) == alert["fingerprint"]
        del alert["fingerprint"]
    assert [a.fingerprint for a in parse_notification(doc).alerts] == [
        "b87959d7465dfdc4",
        "a900968083248f3e",
    ]


def test_fields_canaryd_does_not_act_on_are_ignored() -> None:
    doc = reference("webhook-firing.json")
    doc["somethingNew"] = {"x": [1, 2]}
    doc["alerts"][0]["silencedBy"] = ["abc"]
    doc["alerts"][0]["annotations"] = None
    doc.update(truncatedAlerts=-1, groupKey=None, receiver=7, commonLabels="?")
    note = parse_notification(doc)
    assert len(note.alerts) == 2
    assert (note.truncated, note.group_key, note.receiver) == (0, "", "")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1970-01-01T00:00:00Z", 0.0),
        ("1970-01-01T00:00:01.5Z", 1.5),
        ("1970-01-01T00:00:00.000000001Z", 1e-9),
        ("1970-01-01T01:00:00+01:00", 0.0),
        ("1969-12-31T23:30:00-00:30", 0.0),
        ("1970-01-01t00:00:02z", 2.0),
        ("2026-08-20T10:15:30.123Z", AUGUST_20 + 0.123),
        ("2026-08-20T10:15:30.123456789Z", AUGUST_20 + 0.123456789),
    ],
)
def test_rfc3339_times_are_read_to_the_nanosecond(text: str, seconds: float) -> None:
    assert parse_time(text, "t") == pytest.approx(seconds, abs=1e-7)


@pytest.mark.parametrize(
    "text",
    ["yesterday", "2026-08-20", "2026-08-20T10:15:30", "2026-13-01T00:00:00Z", "2026-08-20 1Z"],
)
def test_anything_else_is_not_an_rfc3339_time(text: str) -> None:
    with pytest.raises(PayloadError, match=r"^alerts\[0\]\.startsAt: not an RFC 3339 time"):
        parse_time(text, "alerts[0].startsAt")


def _mutated(change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    doc = copy.deepcopy(reference("webhook-firing.json"))
    change(doc)
    return doc


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.pop("alerts"), "alerts: is missing"),
        (lambda d: d.update(alerts="many"), "alerts: expected a list, got a string"),
        (lambda d: d.update(version="5"), "version: canaryd reads webhook version '4'"),
        (lambda d: d["alerts"].__setitem__(0, 3), "alerts[0]: expected an object, got a number"),
        (lambda d: d["alerts"][1].update(status="pending"), "alerts[1].status: expected 'firing'"),
        (lambda d: d["alerts"][0].pop("labels"), "alerts[0].labels: is missing"),
        (
            lambda d: d["alerts"][0]["labels"].update(severity=2),
            "alerts[0].labels.'severity': expected a string, got a number",
        ),
        (lambda d: d["alerts"][1].pop("startsAt"), "alerts[1].startsAt: is missing"),
        (
            lambda d: d["alerts"][1].update(startsAt="soon"),
            "alerts[1].startsAt: not an RFC 3339 time",
        ),
        (lambda d: d["alerts"][0].update(endsAt=5), "alerts[0].endsAt: expected an RFC 3339"),
        (lambda d: d["alerts"][0].update(fingerprint=""), "alerts[0].fingerprint: expected"),
    ],
)
def test_a_bad_payload_is_refused_naming_the_field(
    change: Callable[[dict[str, Any]], None], message: str
) -> None:
    with pytest.raises(PayloadError) as caught:
        parse_notification(_mutated(change))
    assert str(caught.value).startswith(message)


def test_a_body_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(PayloadError, match=r"^body: expected a JSON object, got a list"):
        parse_notification([])


# --------------------------------------------------------------------------- credentials


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.parametrize(
    ("header", "ok"),
    [
        ("Bearer s3cret-token", True),
        ("bearer s3cret-token", True),
        ("Bearer  s3cret-token ", True),
        ("Bearer s3cret-tokem", False),
        ("Bearer s3cret-token-and-more", False),
        ("Bearer ", False),
        ("Token s3cret-token", False),
        ("s3cret-token", False),
        ("Bearer s3cret-tökén", False),
        ("", False),
        (None, False),
    ],
)
def test_bearer_credentials_must_match_exactly(header: str | None, ok: bool) -> None:
    assert bearer_matches(header, "s3cret-token") is ok


@pytest.mark.parametrize(
    ("header", "ok"),
    [
        (_basic("alertmanager", "pa:ss"), True),
        (_basic("alertmanager", "pa:sS"), False),
        (_basic("alertmanagers", "pa:ss"), False),
        ("Basic " + base64.b64encode(b"alertmanager").decode(), False),
        ("Basic not/base64!", False),
        ("Basic " + base64.b64encode(b"\xff\xfe:x").decode(), False),
        ("Bearer pa:ss", False),
        (None, False),
    ],
)
def test_basic_credentials_must_match_user_and_password(header: str | None, ok: bool) -> None:
    assert basic_matches(header, "alertmanager", "pa:ss") is ok


def test_a_credential_never_shows_its_secret(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("file-token-0123456789\n")
    bearer = WebhookCredential.from_files(bearer_token_file=token_file)
    assert bearer.accepts("Bearer file-token-0123456789")
    assert "file-token" not in repr(bearer)
    password_file = tmp_path / "password"
    password_file.write_text("pw-0123456789\n")
    basic = WebhookCredential.from_files(username="am", password_file=password_file)
    assert basic.accepts(_basic("am", "pw-0123456789")) and "pw-0123" not in repr(basic)
    assert basic.challenge.startswith("Basic ")
    assert WebhookCredential(username="am", password="pw").challenge.startswith("Basic ")
    with pytest.raises(ValueError):
        WebhookCredential(token="x", username="u", password="p")


# --------------------------------------------------------------------------- the endpoint


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async with running_stack(tmp_path) as s:
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
    await wait_for(client, phase_is("Progressing"))
    rollout: dict[str, Any] = await response.json()
    return rollout


async def deliver(client: Client, doc: Any, **headers: str) -> Any:
    return await client.post(ALERTS, json=doc, headers=headers or webhook_auth())


def rollbacks(stack: Stack) -> list[str]:
    return [d["reason"] for d in stack.store.history(target=TARGET) if d["action"] == "rollback"]


@pytest.mark.parametrize("name", FIRING_PAYLOADS)
async def test_a_critical_alert_rolls_back_the_active_rollout(
    client: Client, stack: Stack, name: str
) -> None:
    await start_slow(client)
    doc = payload(name)
    response = await deliver(client, doc)
    assert response.status == 200, await response.text()
    count = len(doc["alerts"])
    assert await response.json() == {"received": count, "new": count}

    done = await wait_for(client, phase_is("RolledBack"))
    assert done["rollout"]["rollback_reason"] == "alert CanaryHighErrorRate firing"
    assert done["weight"] == 0
    assert rollbacks(stack) == ["alert CanaryHighErrorRate firing"]
    decision = next(d for d in stack.store.history(target=TARGET) if d["action"] == "rollback")
    assert decision["evidence"]["fingerprint"] == doc["alerts"][0]["fingerprint"]


async def test_a_duplicate_delivery_is_taken_in_once(client: Client, stack: Stack) -> None:
    await start_slow(client)
    doc = payload("webhook-firing.json")
    first = await (await deliver(client, doc)).json()
    again = await deliver(client, doc)  # Alertmanager's repeat_interval or a retry
    assert again.status == 200
    assert (first["new"], (await again.json())["new"]) == (2, 0)
    await wait_for(client, phase_is("RolledBack"))
    assert len(rollbacks(stack)) == 1
    keys = [d for d in stack.store.history(target=TARGET) if "CanaryHighErrorRate" in d["reason"]]
    assert len(keys) == 1


async def test_a_resolved_payload_is_accepted_and_clears_the_firing_alerts(client: Client) -> None:
    firing = await deliver(client, payload("webhook-firing.json", target=IDLE))
    assert firing.status == 200
    view = await get_json(client, f"/api/v1/targets/{IDLE}")
    assert {a["fingerprint"] for a in view["alerts"]} == {
        a["fingerprint"] for a in payload("webhook-firing.json", target=IDLE)["alerts"]
    }
    assert all(a["status"] == "firing" and a["ends_at"] is None for a in view["alerts"])

    resolved = await deliver(client, payload("webhook-resolved.json", target=IDLE))
    assert resolved.status == 200
    assert (await resolved.json())["new"] == 2
    assert (await get_json(client, f"/api/v1/targets/{IDLE}"))["alerts"] == []


async def test_an_alert_that_started_before_the_rollout_is_ignored(
    client: Client, stack: Stack
) -> None:
    rollout = await start_slow(client)
    doc = payload("webhook-firing-truncated.json", starts_at=rollout["started_at_unix"] - 3600)
    assert (await deliver(client, doc)).status == 200
    await wait_for(
        client,
        lambda v: any("started before the rollout" in d["reason"] for d in v["decisions"]),
    )
    assert (await get_json(client, f"/api/v1/targets/{TARGET}"))["phase"] == "Progressing"
    assert rollbacks(stack) == []


async def test_alerts_about_other_targets_leave_the_rollout_alone(
    client: Client, stack: Stack
) -> None:
    await start_slow(client)
    assert (await deliver(client, payload("webhook-firing.json", target=IDLE))).status == 200
    assert (await get_json(client, f"/api/v1/targets/{TARGET}"))["alerts"] == []
    assert rollbacks(stack) == []


@pytest.mark.parametrize(
    ("body", "code", "message"),
    [
        (b'{"alerts": [', "invalid_json", "body: not valid JSON"),
        (b"\xff\xfe\xfd", "invalid_json", "body: not valid JSON"),
        (b"[" * 100_000, "invalid_json", "body: not valid JSON"),
        (b"", "invalid_json", "body: not valid JSON"),
        (b'"firing"', "invalid_payload", "body: expected a JSON object"),
        (b'{"alerts": {}}', "invalid_payload", "alerts: expected a list"),
        (b'{"version": "3", "alerts": []}', "invalid_payload", "version:"),
    ],
)
async def test_a_malformed_body_is_a_400_never_a_5xx(
    client: Client, body: bytes, code: str, message: str
) -> None:
    response = await client.post(ALERTS, data=body, headers=webhook_auth())
    assert response.status == 400
    error = (await response.json())["error"]
    assert error["code"] == code and error["message"].startswith(message)


async def test_a_bad_field_is_a_400_naming_it(client: Client) -> None:
    doc = payload("webhook-firing.json")
    doc["alerts"][1]["startsAt"] = "2026-08-20T10:15"
    response = await deliver(client, doc)
    assert response.status == 400
    assert (await response.json())["error"]["message"].startswith(
        "alerts[1].startsAt: not an RFC 3339 time"
    )


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong-token", f"Basic {WEBHOOK_TOKEN}", WEBHOOK_TOKEN, "Bearer " + "x" * 5000],
)
async def test_no_or_a_wrong_credential_is_401_and_audited(
    client: Client, stack: Stack, authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    response = await client.post(ALERTS, json=payload("webhook-firing.json"), headers=headers)
    assert response.status == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert (await response.json())["error"]["code"] == "unauthorized"
    entries = [e for e in stack.store.audit_log() if e["what"] == "alerts"]
    assert [(e["who"], e["outcome"]) for e in entries] == [("anonymous", "unauthenticated")]
    assert stack.controller.inbox.active == {}


async def test_basic_auth_works_as_alertmanagers_http_config_sends_it(
    tmp_path: Path, aiohttp_client: MakeClient
) -> None:
    credential = WebhookCredential.basic("alertmanager", "hunter2-but-longer")
    async with running_stack(tmp_path, webhook=credential) as stack:
        client = await aiohttp_client(stack.app)
        doc = payload("webhook-firing.json")
        good = await deliver(
            client, doc, Authorization=_basic("alertmanager", "hunter2-but-longer")
        )
        assert good.status == 200
        bad = await deliver(client, doc, Authorization=_basic("alertmanager", "hunter2"))
        assert bad.status == 401 and bad.headers["WWW-Authenticate"].startswith("Basic")


async def test_without_a_configured_credential_the_webhook_is_open(
    tmp_path: Path, aiohttp_client: MakeClient
) -> None:
    async with running_stack(tmp_path, webhook=None) as stack:
        client = await aiohttp_client(stack.app)
        assert (await client.post(ALERTS, json=payload("webhook-firing.json"))).status == 200


async def test_an_oversized_body_is_413_by_its_length_or_while_it_streams(
    client: Client, stack: Stack
) -> None:
    doc = payload("webhook-firing.json")
    doc["padding"] = "x" * (1 << 20)
    body = json.dumps(doc).encode()
    response = await client.post(ALERTS, data=body, headers=webhook_auth())
    assert response.status == 413
    assert (await response.json())["error"]["code"] == "payload_too_large"

    async def chunks() -> AsyncIterator[bytes]:  # chunked: no Content-Length to check
        for start in range(0, len(body), 65536):
            yield body[start : start + 65536]

    response = await client.post(ALERTS, data=chunks(), headers=webhook_auth())
    assert response.status == 413
    assert stack.controller.inbox.active == {}


async def test_a_small_body_limit_is_honoured(tmp_path: Path, aiohttp_client: MakeClient) -> None:
    async with running_stack(tmp_path, max_body=512) as stack:
        client = await aiohttp_client(stack.app)
        response = await deliver(client, payload("webhook-firing.json"))
        assert response.status == 413


async def test_webhook_answers_are_counted_by_code_and_alerts_by_status(
    client: Client, stack: Stack
) -> None:
    await deliver(client, payload("webhook-firing.json", target=IDLE))
    await deliver(client, payload("webhook-resolved.json", target=IDLE))
    await client.post(ALERTS, data=b"nope", headers=webhook_auth())
    await client.post(ALERTS, json={"alerts": []})
    registry = stack.telemetry.registry

    def sample(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert sample("canaryd_webhook_requests_total", code="200") == 2
    assert sample("canaryd_webhook_requests_total", code="400") == 1
    assert sample("canaryd_webhook_requests_total", code="401") == 1
    assert sample("canaryd_alerts_received_total", status="firing") == 2
    assert sample("canaryd_alerts_received_total", status="resolved") == 2
