"""The OpenAPI 3.1 description of canaryd's HTTP API, served at ``/api/v1/openapi.json``.

Built from the route table (``api.routes.ROUTES``: paths, methods, roles, request bodies and
answers) and the schemas (``api.schemas``, JSON Schema 2020-12 as OpenAPI 3.1 uses, which are
also what request bodies are checked against), so the document describes what the server
does and cannot drift from it. What is only written here is prose: the error answers'
descriptions and the security schemes. A test checks that every route of the app is described
and that the answers the tests receive validate against the schemas.
"""

from __future__ import annotations

from typing import Any

from canaryd.api.routes import ROUTES, Route
from canaryd.api.schemas import PHASES, schemas

__all__ = ["ERRORS", "PHASES", "document"]

ERRORS = {
    400: ("BadRequest", "The body is not JSON, or (webhook) not an Alertmanager message."),
    401: ("Unauthorized", "No credential, or an unknown one (`WWW-Authenticate` says which)."),
    403: ("Forbidden", "The token's role is too low for this request."),
    404: ("NotFound", "No target of that name is configured."),
    408: ("Timeout", "The body did not arrive in time (10 s); the connection is closed."),
    409: ("Conflict", "Refused in the rollout's current state (or a rollout is active)."),
    413: ("TooLarge", "The body exceeds the size limit (1 MiB by default)."),
    422: ("Invalid", "A field has a wrong type or value; the message names it."),
    503: (
        "Unavailable",
        "Not ready yet, or the state store cannot write just now: retry after `Retry-After`.",
    ),
}
WEBHOOK = (
    "Authenticated with the webhook's own credential (bearer or basic, as Alertmanager's "
    "http_config sends it). Never answers 5xx for a bad request, so Alertmanager does not retry "
    "one; 503 asks for a retry."
)
_TARGET = {"$ref": "#/components/parameters/target"}
_RUNNING = {
    "description": "Accepted and still running after the request's bounded wait: poll `Location`",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Running"}}},
    "headers": {"Location": {"schema": {"type": "string"}, "description": "The target to poll"}},
}


def _schema_of(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _answer(row: Route) -> dict[str, Any]:
    """The row's success answer: its schema under its media type."""
    if row.media == "application/json":
        schema = {"type": "object"} if row.answer == "Object" else _schema_of(row.answer)
    else:
        schema = {"type": "string"}
    return {"description": row.summary, "content": {row.media: {"schema": schema}}}


def _operation(row: Route) -> dict[str, Any]:
    """The OpenAPI operation of one row of the route table."""
    responses: dict[str, Any] = {str(row.status): _answer(row)}
    if row.running:
        responses["202"] = _RUNNING
    for code in row.errors:
        responses[str(code)] = {"$ref": f"#/components/responses/{ERRORS[code][0]}"}
    operation: dict[str, Any] = {"operationId": row.handler, "summary": row.summary}
    if row.role is not None:
        audited = " Audited, whatever the outcome." if row.what else ""
        operation["description"] = f"Needs the `{row.role}` role.{audited}"
        operation["security"] = [{"apiToken": []}]
        operation["x-canaryd-role"] = row.role
    elif row.webhook:
        operation["description"] = WEBHOOK
        operation["security"] = [{"webhookBearer": []}, {"webhookBasic": []}]
    if row.what is not None:
        operation["x-canaryd-audit"] = row.what
    parameters = [*([_TARGET] if "{target}" in row.path else []), *row.query]
    if parameters:
        operation["parameters"] = parameters
    if row.body is not None:
        operation["requestBody"] = {
            "required": row.webhook,
            "description": "The Alertmanager message"
            if row.webhook
            else "An empty body is the same as `{}`.",
            "content": {"application/json": {"schema": _schema_of(row.body)}},
        }
    operation["responses"] = responses
    return operation


def _paths() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for row in ROUTES:
        paths.setdefault(row.path, {})[row.method] = _operation(row)
    return paths


def document(version: str) -> dict[str, Any]:
    """The OpenAPI document of canaryd ``version``."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "canaryd",
            "version": version,
            "description": "Progressive delivery: staged canary rollouts judged by Prometheus "
            "SLOs and rolled back on Alertmanager alerts. Errors are always "
            '`{"error": {"code", "message"}}`.',
        },
        "paths": _paths(),
        "components": {
            "schemas": schemas(),
            "parameters": {
                "target": {
                    "name": "target",
                    "in": "path",
                    "required": True,
                    "description": "A target's name from the config",
                    "schema": {"type": "string"},
                }
            },
            "responses": {
                name: {
                    "description": description,
                    "content": {"application/json": {"schema": _schema_of("Error")}},
                }
                for name, description in ERRORS.values()
            },
            "securitySchemes": {
                "apiToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A token from the tokens file; roles viewer < operator < admin",
                },
                "webhookBearer": {"type": "http", "scheme": "bearer"},
                "webhookBasic": {"type": "http", "scheme": "basic"},
            },
        },
    }
