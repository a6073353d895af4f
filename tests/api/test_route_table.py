"""The route table is the one place each fact about a route is written (issue 8, point 4).

The aiohttp routes, the role each needs, the OpenAPI document and the body checks all come from
``api.routes.ROUTES``. These tests hold the pieces to the table: every row is in the document
with its role, audit name, body schema and answers; the document's enumerations are the code's
enums; and, for sample bodies (a table of edge cases, then hypothesis), the document's schema
and a real server on loopback agree on which bodies are refused with a 422.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from canaryd import __version__
from canaryd.api import openapi
from canaryd.api.auth import ROLES
from canaryd.api.bodies import FORMATS
from canaryd.api.routes import ROUTES, route_named
from canaryd.api.server import handler_of
from canaryd.api.webhook import STATUSES
from canaryd.core.model import Phase
from support.apikit import TARGET, ServerThread, auth

DOCUMENT = openapi.document(__version__)
REGISTRY: Registry[Any] = Registry().with_resource(
    "urn:canaryd", Resource.from_contents(DOCUMENT, default_specification=DRAFT202012)
)
BODIES = {row.handler: row for row in ROUTES if row.body is not None and row.checks_body}
SUFFIX = {row.handler: row.path.removeprefix("/api/v1/targets/{target}") for row in BODIES.values()}


def documented_accepts(schema: str, body: Any) -> bool:
    """Whether the served document's schema takes ``body`` (canaryd's formats included)."""
    ref = {"$ref": f"urn:canaryd#/components/schemas/{schema}"}
    validator = jsonschema.Draft202012Validator(ref, registry=REGISTRY, format_checker=FORMATS)
    return validator.is_valid(body)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    with ServerThread(tmp_path_factory.mktemp("table")) as running:
        yield running


def answered(server: ServerThread, handler: str, body: Any) -> tuple[int, dict[str, Any]]:
    row = BODIES[handler]
    path = f"/api/v1/targets/{TARGET}{SUFFIX[handler]}"
    data = json.dumps(body).encode()
    status, answer = server.request(row.method.upper(), path, data, auth("admin"))
    return status, json.loads(answer) if answer else {}


# --------------------------------------------------------------------------- the document


@pytest.mark.parametrize("row", ROUTES, ids=lambda r: f"{r.method} {r.path}")
def test_every_row_is_in_the_document_with_its_role_audit_body_and_answers(row: Any) -> None:
    operation = DOCUMENT["paths"][row.path][row.method]
    assert operation["operationId"] == row.handler
    assert operation.get("x-canaryd-role") == row.role
    assert operation.get("x-canaryd-audit") == row.what
    if row.role is not None:
        assert operation["security"] == [{"apiToken": []}]
        assert f"`{row.role}`" in operation["description"]
    body = operation.get("requestBody", {}).get("content", {}).get("application/json", {})
    assert body.get("schema") == (
        {"$ref": f"#/components/schemas/{row.body}"} if row.body else None
    )
    codes = set(operation["responses"])
    assert codes == {str(row.status), *map(str, row.errors), *(["202"] if row.what else [])}
    assert callable(handler_of(row))


def test_the_table_has_one_row_per_route_and_roles_are_known() -> None:
    keys = [(row.method, row.path) for row in ROUTES]
    assert len(keys) == len(set(keys))
    assert all(row.role in (None, *ROLES) for row in ROUTES)
    assert [row.handler for row in ROUTES if row.role is None and not row.webhook] == [
        "status_page",
        "target_page",
        "dashboard_css",
        "dashboard_js",
        "healthz",
        "readyz",
        "metrics",
        "openapi_document",
    ]
    with pytest.raises(KeyError, match="no route is answered by 'nothing'"):
        route_named("nothing")


def test_the_documents_enumerations_are_the_codes_enums() -> None:
    schemas = DOCUMENT["components"]["schemas"]
    phases = [p.value for p in Phase]
    assert schemas["Rollout"]["properties"]["phase"] == {"enum": phases}
    assert schemas["Decision"]["properties"]["phase"] == {"enum": phases}
    assert schemas["Alert"]["properties"]["status"] == {"enum": list(STATUSES)}
    role = schemas["Error"]["properties"]["error"]["properties"]["required_role"]
    assert role["enum"] == list(ROLES)


def test_the_document_is_valid_openapi_with_the_request_schemas_in_it() -> None:
    import openapi_spec_validator as validator

    validator.validate(DOCUMENT)
    for row in BODIES.values():
        jsonschema.Draft202012Validator.check_schema(DOCUMENT["components"]["schemas"][row.body])


# --------------------------------------------------------------------------- agreement

SAMPLES = [
    ("start_rollout", {"image": "shop/checkout:3.0"}),
    ("start_rollout", {"image": "x:1", "traffic": 0}),
    ("start_rollout", {"image": "x:1", "traffic": 2.0}),
    ("start_rollout", {"image": "x:1", "traffic": None}),
    ("start_rollout", {"image": None}),
    ("start_rollout", {"image": " "}),
    ("start_rollout", {"image": "x\u200b:1"}),
    ("start_rollout", {"image": "x" * 1025}),
    ("start_rollout", {"image": "x:1", "policy": "a..b"}),
    ("start_rollout", {"image": "x:1", "policy": "../slow"}),
    ("start_rollout", {"image": "x:1", "policy": "slow\n"}),
    ("start_rollout", {"image": "x:1", "extra": 1}),
    ("start_rollout", []),
    ("rollback", {"reason": ""}),
    ("rollback", {"reason": "   "}),
    ("rollback", {"reason": None}),
    ("rollback", {"reason": "bad deploy"}),
    ("rollback", {"reason": "a\udc80"}),
    ("promote", {"full": 1}),
    ("promote", {"full": None}),
    ("promote", {}),
    ("set_weight", {"weight": 100}),
    ("set_weight", {"weight": 101}),
    ("set_weight", {"weight": True}),
    ("set_weight", {"weight": None}),
    ("pause", {"now": True}),
    ("pause", {}),
    ("cleanup", {"x": 1}),
]


@pytest.mark.parametrize(("handler", "body"), SAMPLES)
def test_the_document_and_the_server_agree_on_sample_bodies(
    server: ServerThread, handler: str, body: Any
) -> None:
    """Today's edge cases, including the one that drifted: ``{"reason": ""}`` (the document
    took it, the handler answered 422; now both refuse it)."""
    accepts = documented_accepts(BODIES[handler].body or "", body)
    status, answer = answered(server, handler, body)
    assert (status != 422) == accepts, (status, answer)
    if not accepts:
        assert answer["error"]["code"] == "invalid", answer
        message = answer["error"]["message"]
        assert message.split(":")[0] in (*(body if isinstance(body, dict) else ()), "body")


FIELD_VALUES = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-3, max_value=103)
    | st.floats(allow_nan=False, allow_infinity=False, min_value=-3, max_value=103)
    | st.text(max_size=12)
    | st.sampled_from(["slow", "gated", "shop/web:2.0", "a b", "..", "", "x\x00"])
)


@st.composite
def bodies(draw: st.DrawFn) -> tuple[str, Any]:
    handler = draw(st.sampled_from(sorted(BODIES)))
    schema = DOCUMENT["components"]["schemas"][BODIES[handler].body or ""]
    names = [*schema["properties"], "other"]
    keys = draw(st.lists(st.sampled_from(names), unique=True, max_size=3))
    return handler, {key: draw(FIELD_VALUES) for key in keys}


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sample=bodies())
def test_the_document_and_the_server_agree_on_random_bodies(
    server: ServerThread, sample: tuple[str, Any]
) -> None:
    handler, body = sample
    if body.get("policy") not in (None, "slow", "gated") and documented_accepts(
        "StartRequest", {"image": "x:1", "policy": body["policy"]}
    ):
        body.pop("policy")  # a well-formed name the config does not allow: 422 from the config
    status, answer = answered(server, handler, body)
    assert (status != 422) == documented_accepts(BODIES[handler].body or "", body), (
        handler,
        body,
        status,
        answer,
    )


def test_unknown_fields_and_bad_values_keep_their_messages(server: ServerThread) -> None:
    """The 422s say what they said before the table: the field, and what was expected."""
    expected = {
        ("start_rollout", json.dumps({"image": "x:1", "trafic": 1})): (
            "trafic: unknown field (allowed: image, policy, supersede, traffic)"
        ),
        ("start_rollout", json.dumps({"traffic": 1})): "image: is required",
        ("start_rollout", json.dumps({"image": "x 1"})): (
            "image: an image reference has no spaces or control characters"
        ),
        ("start_rollout", json.dumps({"image": "x:1", "traffic": 0})): (
            "traffic: expected an integer within 1..100"
        ),
        ("rollback", json.dumps({"reason": ""})): (
            "reason: expected a non-empty string of at most 1024 characters"
        ),
        ("rollback", json.dumps({"reason": "a\x1b"})): (
            "reason: contains a control character or a lone UTF-16 surrogate"
        ),
        ("promote", json.dumps({"full": "yes"})): "full: expected true or false",
        ("set_weight", json.dumps({})): "weight: is required",
        ("pause", json.dumps([])): "body: expected a JSON object",
    }
    for (handler, raw), message in expected.items():
        status, answer = answered(server, handler, json.loads(raw))
        assert (status, answer["error"]["message"]) == (422, message), raw


def test_the_api_package_keeps_no_second_copy_of_roles_or_phases() -> None:
    """The facts the table and the enums hold are not written again in the API's sources."""
    api = Path(openapi.__file__).parent
    for path in api.glob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert '"RollingBack"' not in text, path
        if path.name not in ("auth.py", "routes.py"):
            assert '"operator"' not in text, path
