"""The OpenAPI 3.1 description of canaryd's HTTP API, served at ``/api/v1/openapi.json``.

Written by hand, as data, rather than generated from the handlers: the document is the
contract ``canaryctl`` and other clients are written against (SPEC §5.2), so a change to it
should be a deliberate edit that shows up in review. A test keeps the two honest: every route
of the app is described here and every path here is a route of the app, and the answers the
tests receive validate against the schemas below (JSON Schema 2020-12, as OpenAPI 3.1 uses).

Times are seconds since the Unix epoch (floats), as the store keeps them; stage numbers are
1-based, as people count them; weights are the canary's share in percent.
"""

from __future__ import annotations

from typing import Any

PHASES = [
    "Pending",
    "Progressing",
    "Paused",
    "Promoting",
    "Succeeded",
    "RollingBack",
    "RolledBack",
    "Failed",
]

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


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(kind: str | dict[str, Any]) -> dict[str, Any]:
    if isinstance(kind, str):
        return {"type": [kind, "null"]}
    return {"oneOf": [kind, {"type": "null"}]}


def _object(required: str, closed: bool = False, **properties: Any) -> dict[str, Any]:
    """An object schema; ``required`` names the required properties, space-separated."""
    schema: dict[str, Any] = {
        "type": "object",
        "required": required.split(),
        "properties": properties,
    }
    if closed:
        schema["additionalProperties"] = False
    return schema


def _json(schema: dict[str, Any], description: str, **extra: Any) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": schema}},
        **extra,
    }


def _errors(*codes: int) -> dict[str, Any]:
    return {str(c): {"$ref": f"#/components/responses/{ERRORS[c][0]}"} for c in codes}


_TARGET = {"$ref": "#/components/parameters/target"}
_API_TOKEN: list[dict[str, list[str]]] = [{"apiToken": []}]
_WRITE_ERRORS = (400, 401, 403, 404, 408, 409, 413, 422, 503)
_RUNNING = _json(
    _ref("Running"),
    "Accepted and still running after the request's bounded wait: poll `Location`",
    headers={"Location": {"schema": {"type": "string"}, "description": "The target to poll"}},
)


def _read(
    summary: str,
    schema: str,
    *,
    params: list[Any] | None = None,
    errors: tuple[int, ...] = (401, 404),
) -> dict[str, Any]:
    return {
        "get": {
            "summary": summary,
            "security": _API_TOKEN,
            "x-canaryd-role": "viewer",
            "parameters": params or [],
            "responses": {"200": _json(_ref(schema), summary), **_errors(*errors)},
        }
    }


def _write(
    method: str, summary: str, role: str, body: str | None, answer: str, status: int = 200
) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "summary": summary,
        "description": f"Needs the `{role}` role. Audited, whatever the outcome.",
        "security": _API_TOKEN,
        "x-canaryd-role": role,
        "parameters": [_TARGET],
        "responses": {
            str(status): _json(_ref(answer), summary),
            "202": _RUNNING,
            **_errors(*_WRITE_ERRORS),
        },
    }
    if body is not None:
        operation["requestBody"] = {
            "required": False,
            "description": "An empty body is the same as `{}`.",
            "content": {"application/json": {"schema": _ref(body)}},
        }
    return {method: operation}


def _schemas() -> dict[str, Any]:
    decision = _object(
        "seq rollout_id target t phase stage weight action reason",
        seq={"type": "integer"},
        rollout_id={"type": "string"},
        target={"type": "string"},
        t={"type": "number", "description": "When it was decided (Unix seconds)"},
        phase={"enum": PHASES},
        stage={"type": "integer", "minimum": 1},
        weight={"type": "integer", "minimum": 0, "maximum": 100},
        action={"type": "string"},
        cause=_nullable("string"),
        reason={"type": "string"},
        evidence={"type": "object"},
    )
    rollout = _object(
        "id target image policy phase stage stages weight stable_weight started_at plan",
        id={"type": "string"},
        target={"type": "string"},
        image={"type": "string"},
        policy={"type": "string", "description": "The policy the rollout started with"},
        phase={"enum": PHASES},
        stage={"type": "integer", "minimum": 1},
        stages={"type": "integer", "minimum": 1},
        weight={"type": "integer", "minimum": 0, "maximum": 100},
        stable_weight={"type": "integer", "minimum": 0, "maximum": 100},
        started_at={"type": "number"},
        stage_started_at=_nullable("number"),
        credited={"type": "number", "description": "Seconds of passing analysis this stage"},
        finished_at=_nullable("number"),
        waiting_for_promote={"type": "boolean"},
        pause_reason=_nullable("string"),
        rollback_reason=_nullable("string"),
        message=_nullable("string"),
        successor=_nullable("string"),
        plan={
            "type": "array",
            "items": _object(
                "weight duration checks gate",
                weight={"type": "integer"},
                duration={"type": "number"},
                checks={"type": "array", "items": {"type": "string"}},
                gate={"enum": ["auto", "manual"]},
            ),
        },
    )
    summary = _object(
        "name policy router platform rollout_id image phase stage stages weight stable_weight",
        name={"type": "string"},
        policy={"type": "string", "description": "The target's configured policy"},
        router={"type": "string"},
        platform={"type": "string"},
        rollout_id=_nullable("string"),
        image=_nullable("string"),
        phase=_nullable({"enum": PHASES}),
        stage=_nullable("integer"),
        stages=_nullable("integer"),
        weight={"type": "integer", "minimum": 0, "maximum": 100},
        stable_weight={"type": "integer", "minimum": 0, "maximum": 100},
    )
    labels = {"type": "object", "additionalProperties": {"type": "string"}}
    alert = _object(
        "fingerprint name status labels starts_at ends_at",
        fingerprint={"type": "string"},
        name={"type": "string"},
        status={"enum": ["firing", "resolved"]},
        labels=labels,
        starts_at={"type": "number"},
        ends_at=_nullable("number"),
    )
    detail = {
        "allOf": [
            _ref("TargetSummary"),
            _object(
                "rollout decisions alerts checks",
                rollout=_nullable(_ref("Rollout")),
                checks={
                    "type": "object",
                    "description": "The latest measurement of each check, by check name",
                    "additionalProperties": _object(
                        "value error t",
                        value=_nullable("number"),
                        error=_nullable("string"),
                        t={"type": "number"},
                    ),
                },
                decisions={
                    "type": "array",
                    "items": _ref("Decision"),
                    "description": "The current rollout's latest decisions, oldest first",
                },
                alerts={
                    "type": "array",
                    "items": _ref("Alert"),
                    "description": "Firing alerts that concern the target",
                },
            ),
        ]
    }
    time = {"type": "string", "description": "RFC 3339, up to nanoseconds"}
    webhook_alert = _object(
        "status labels startsAt",
        status={"enum": ["firing", "resolved"]},
        labels=labels,
        annotations=labels,
        startsAt=time,
        endsAt={**time, "description": "0001-01-01T00:00:00Z (Go's zero time) while firing"},
        generatorURL={"type": "string"},
        fingerprint={"type": "string", "description": "Computed from the labels if absent"},
    )
    webhook = _object(
        "alerts",
        version={"const": "4"},
        receiver={"type": "string"},
        status={"enum": ["firing", "resolved"]},
        alerts={"type": "array", "items": _ref("WebhookAlert")},
        notification_reason={"type": "string", "description": "Alertmanager ≥ 0.32"},
        groupLabels=labels,
        commonLabels=labels,
        commonAnnotations=labels,
        routeLabels={**labels, "description": "Alertmanager ≥ 0.34"},
        externalURL={"type": "string"},
        groupKey={"type": "string"},
        truncatedAlerts={"type": "integer", "minimum": 0},
    )
    return {
        "Error": _object(
            "error",
            error=_object(
                "code message",
                code={"type": "string", "description": "Stable, machine-readable"},
                message={"type": "string"},
                required_role={"enum": ["viewer", "operator", "admin"], "description": "403"},
            ),
        ),
        "Health": _object("status", status={"type": "string"}),
        "Rollout": rollout,
        "Decision": decision,
        "Alert": alert,
        "TargetSummary": summary,
        "TargetList": _object("targets", targets={"type": "array", "items": _ref("TargetSummary")}),
        "TargetDetail": detail,
        "History": _object(
            "target decisions",
            target={"type": "string"},
            decisions={"type": "array", "items": _ref("Decision")},
        ),
        "CleanupResult": _object(
            "target rollout", target={"type": "string"}, rollout=_nullable(_ref("Rollout"))
        ),
        "Running": _object(
            "status message target location",
            status={"const": "running"},
            message={"type": "string"},
            target={"type": "string"},
            location={"type": "string"},
        ),
        "StartRequest": _object(
            "image",
            closed=True,
            image={"type": "string", "minLength": 1, "maxLength": 1024},
            traffic={
                "type": "integer",
                "minimum": 1,
                "maximum": 100,
                "description": "The first stage's canary weight (default: the policy's)",
            },
            policy={
                "type": "string",
                "pattern": "^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}$",
                "description": "The name of a policy the config allows (never a path)",
            },
        ),
        "PromoteRequest": _object(
            "", closed=True, full={"type": "boolean", "description": "Straight to 100%"}
        ),
        "RollbackRequest": _object("", closed=True, reason={"type": "string", "maxLength": 1024}),
        "WeightRequest": _object(
            "weight", closed=True, weight={"type": "integer", "minimum": 0, "maximum": 100}
        ),
        "EmptyRequest": _object("", closed=True),
        "WebhookAlert": webhook_alert,
        "WebhookMessage": webhook,
        "WebhookAccepted": _object(
            "received new",
            received={"type": "integer", "description": "Alerts in the message"},
            new={"type": "integer", "description": "Alerts not seen before (de-duplicated)"},
        ),
    }


def document(version: str) -> dict[str, Any]:
    """The OpenAPI document of canaryd ``version``."""
    t = "/api/v1/targets/{target}"
    text = {"description": "", "content": {"text/plain": {"schema": {"type": "string"}}}}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "canaryd",
            "version": version,
            "description": "Progressive delivery: staged canary rollouts judged by Prometheus "
            "SLOs and rolled back on Alertmanager alerts. Errors are always "
            '`{"error": {"code", "message"}}`.',
        },
        "paths": {
            "/": {
                "get": {
                    "summary": "Status page (HTML): targets, phase, stage, weight. Open.",
                    "responses": {
                        "200": {
                            "description": "The page",
                            "content": {"text/html": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
            "/healthz": {
                "get": {
                    "summary": "Liveness: 200 while the event loop runs. Open.",
                    "responses": {"200": _json(_ref("Health"), "alive")},
                }
            },
            "/readyz": {
                "get": {
                    "summary": "Readiness: state loaded and one reconcile pass done. Open.",
                    "responses": {"200": _json(_ref("Health"), "ready"), **_errors(503)},
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics (text exposition format). Open.",
                    "responses": {"200": {**text, "description": "canaryd_* metrics"}},
                }
            },
            "/api/v1/openapi.json": {
                "get": {
                    "summary": "This document. Open.",
                    "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1")},
                }
            },
            "/api/v1/alerts": {
                "post": {
                    "summary": "Alertmanager webhook (version 4, with or without routeLabels)",
                    "description": "Authenticated with the webhook's own credential (bearer or "
                    "basic, as Alertmanager's http_config sends it). Never answers 5xx for a "
                    "bad request, so Alertmanager does not retry one; 503 asks for a retry.",
                    "security": [{"webhookBearer": []}, {"webhookBasic": []}],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("WebhookMessage")}},
                    },
                    "responses": {
                        "200": _json(_ref("WebhookAccepted"), "alerts taken in"),
                        **_errors(400, 401, 408, 413, 503),
                    },
                }
            },
            "/api/v1/targets": _read(
                "Every target and its current rollout", "TargetList", errors=(401,)
            ),
            t: _read("One target: its rollout, latest decisions, firing alerts", "TargetDetail")
            | {"parameters": [_TARGET]},
            f"{t}/history": _read(
                "Every decision for the target, oldest first",
                "History",
                params=[
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "description": "Only the newest N decisions",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 100000},
                    }
                ],
            )
            | {"parameters": [_TARGET]},
            f"{t}/rollouts": _write(
                "post", "Start a rollout", "operator", "StartRequest", "Rollout", 201
            ),
            f"{t}/promote": _write(
                "post",
                "Skip the current stage's wait (full: to 100%)",
                "admin",
                "PromoteRequest",
                "Rollout",
            ),
            f"{t}/rollback": _write(
                "post", "Roll the canary back", "operator", "RollbackRequest", "Rollout"
            ),
            f"{t}/pause": _write(
                "post", "Pause the rollout", "operator", "EmptyRequest", "Rollout"
            ),
            f"{t}/resume": _write(
                "post", "Resume a paused rollout", "operator", "EmptyRequest", "Rollout"
            ),
            f"{t}/weight": _write(
                "post", "Set the canary weight (pauses)", "operator", "WeightRequest", "Rollout"
            ),
            f"{t}/rollout": _write(
                "delete",
                "Clean up: roll back, remove the canary, release the router",
                "admin",
                None,
                "CleanupResult",
            ),
        },
        "components": {
            "schemas": _schemas(),
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
                name: _json(_ref("Error"), description) for name, description in ERRORS.values()
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
