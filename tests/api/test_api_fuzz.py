"""Whatever arrives, the server answers, and never with a 5xx for a bad request.

A 5xx from the webhook makes Alertmanager retry the same bad message until its group interval
runs out, and a 5xx from the API means a handler fell over; both would be bugs. Hypothesis
sends random JSON, random bytes, the reference payloads with random parts replaced or removed,
and random bodies to every write endpoint, to a real server on loopback (in a thread of its
own, since hypothesis drives synchronous tests); the server must still answer ``/healthz``.
"""

from __future__ import annotations

import contextlib
import copy
import json
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from canaryd.api.webhook import PayloadError, parse_notification
from support.apikit import (
    FIRING_PAYLOADS,
    IDLE,
    TARGET,
    ServerThread,
    auth,
    reference,
    webhook_auth,
)

FUZZ = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
PAYLOADS = [*FIRING_PAYLOADS, "webhook-resolved.json"]

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5)
    ),
    max_leaves=25,
)
rfc3339ish = st.from_regex(
    r"\A[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}"
    r"(\.[0-9]{0,12})?([Zz]|[+-][0-9]{2}:[0-9]{2})?\Z"
)
field_values = (
    json_values
    | rfc3339ish
    | st.sampled_from(["firing", "resolved", "4", "", "0001-01-01T00:00:00Z"])
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    with ServerThread(tmp_path_factory.mktemp("fuzz")) as running:
        yield running


def post_alerts(server: ServerThread, body: bytes) -> int:
    headers = {"Content-Type": "application/json", **webhook_auth()}
    status, answer = server.request("POST", "/api/v1/alerts", body, headers)
    assert status < 500, answer
    assert status in (200, 400), (status, answer)
    error = json.loads(answer).get("error")
    assert status == 200 or set(error) >= {"code", "message"}
    return status


@st.composite
def mutated_payloads(draw: st.DrawFn) -> Any:
    doc = copy.deepcopy(reference(draw(st.sampled_from(PAYLOADS))))
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        alerts = doc.get("alerts") if isinstance(doc, dict) else None
        where: Any = doc
        if isinstance(alerts, list) and alerts and draw(st.booleans()):
            where = alerts[draw(st.integers(min_value=0, max_value=len(alerts) - 1))]
            if isinstance(where, dict) and "labels" in where and draw(st.booleans()):
                where = where["labels"]
        if not isinstance(where, dict) or not where:
            break
        key = draw(st.sampled_from(sorted(where)))
        if draw(st.integers(min_value=0, max_value=3)) == 0:
            del where[key]
        else:
            where[key] = draw(field_values)
    return doc


# --------------------------------------------------------------------------- the parser alone


@FUZZ
@given(doc=json_values | mutated_payloads())
def test_the_parser_fails_only_with_payload_errors(doc: Any) -> None:
    with contextlib.suppress(PayloadError):
        parse_notification(doc)


# --------------------------------------------------------------------------- the webhook


@FUZZ
@given(doc=json_values)
def test_random_json_to_the_webhook_is_never_a_5xx(server: ServerThread, doc: Any) -> None:
    post_alerts(server, json.dumps(doc).encode())


@FUZZ
@given(body=st.binary(max_size=300))
def test_random_bytes_to_the_webhook_are_never_a_5xx(server: ServerThread, body: bytes) -> None:
    post_alerts(server, body)


@FUZZ
@given(doc=mutated_payloads())
def test_mangled_alertmanager_payloads_are_never_a_5xx(server: ServerThread, doc: Any) -> None:
    post_alerts(server, json.dumps(doc).encode())


# --------------------------------------------------------------------------- the API

WRITES = [
    ("POST", "rollouts"),
    ("POST", "promote"),
    ("POST", "rollback"),
    ("POST", "pause"),
    ("POST", "resume"),
    ("POST", "weight"),
    ("DELETE", "rollout"),
]
FIELDS: dict[str, dict[str, st.SearchStrategy[Any]]] = {
    "rollouts": {
        "image": st.sampled_from(["shop/checkout:2.0", "shop/checkout:2.1"]),
        "traffic": st.integers(min_value=1, max_value=100) | st.integers(-5, 105),
        "policy": st.sampled_from(["slow", "slow", "gated", "no-such-policy"]),
    },
    "promote": {"full": st.booleans()},
    "rollback": {"reason": st.text(max_size=30)},
    "weight": {"weight": st.integers(min_value=-5, max_value=105)},
}


@st.composite
def api_requests(draw: st.DrawFn) -> tuple[str, str, Any, str]:
    """Mostly well-formed requests by an admin (so that they reach the controller and move
    the rollout through its phases), with wrong values, wrong types and junk mixed in."""
    method, action = draw(st.sampled_from(WRITES))
    body: Any = {}
    for key, good in FIELDS.get(action, {}).items():
        if draw(st.integers(min_value=0, max_value=3)) > 0:
            body[key] = draw(good if draw(st.integers(min_value=0, max_value=4)) else field_values)
    if draw(st.integers(min_value=0, max_value=5)) == 0:
        body = draw(json_values)
    pick = draw(st.integers(min_value=0, max_value=9))
    target = draw(st.text(max_size=20)) if pick == 0 else IDLE if pick == 1 else TARGET
    role = draw(st.sampled_from(["admin", "admin", "admin", "operator", "viewer"]))
    path = f"/api/v1/targets/{urllib.parse.quote(target, safe='')}/{action}"
    return method, path, body, role


@FUZZ
@given(request=api_requests())
def test_random_api_requests_are_never_a_5xx(
    server: ServerThread, request: tuple[str, str, Any, str]
) -> None:
    method, path, body, role = request
    status, answer = server.request(method, path, json.dumps(body).encode(), auth(role))
    assert status < 500, answer
    assert status in (200, 201, 400, 403, 404, 405, 409, 422), (status, answer)


@FUZZ
@given(
    target=st.sampled_from([TARGET, IDLE]) | st.text(max_size=20),
    suffix=st.sampled_from(["", "/history"]),
    limit=st.none() | st.text(max_size=8),
)
def test_random_reads_are_never_a_5xx(
    server: ServerThread, target: str, suffix: str, limit: str | None
) -> None:
    path = f"/api/v1/targets/{urllib.parse.quote(target, safe='')}{suffix}"
    if limit is not None:
        path += "?" + urllib.parse.urlencode({"limit": limit})
    status, answer = server.request("GET", path, headers=auth("viewer"))
    assert status in (200, 404, 422), (status, answer)


def test_the_server_still_answers_afterwards(server: ServerThread) -> None:
    assert server.request("GET", "/healthz")[0] == 200
    assert server.request("GET", "/readyz")[0] == 200
    status, body = server.request("GET", "/api/v1/targets", headers=auth("viewer"))
    assert status == 200 and len(json.loads(body)["targets"]) == 2
