"""The JSON Schemas of canaryd's HTTP API: what it answers and what it takes in.

They are the ``components/schemas`` of the OpenAPI document (``openapi``) *and* what request
bodies are checked against (``bodies``), so the document cannot promise one thing while the
handler does another. Enumerations come from the code's own enums (``Phase``, the alert
statuses, the roles), never copied by hand.

Request bodies carry, per field, the message a refusal gives (``x-message``, an extension
keyword JSON Schema ignores): a 422 names the field and says what was expected, in words a
person can act on, rather than a validator's ``'x' is not of type 'integer'``.

Times are RFC 3339 in UTC (``2026-12-01T06:30:00.25Z``), each with its ``<name>_unix`` twin in
Unix seconds for programs that compute with it (``_time``); stage numbers are 1-based, as people
count them; weights are the canary's share in percent.
"""

from __future__ import annotations

from typing import Any

from canaryd.api.auth import ROLES
from canaryd.api.webhook import STATUSES
from canaryd.core.model import Cause, Phase

PHASES = [phase.value for phase in Phase]
MAX_TEXT = 1024  # characters of a text field
# What text fields refuse: a C0/C1 control character, DEL or a lone UTF-16 surrogate (the
# same class as ``webhook.UNSAFE``; written as escapes, which ECMA-262 and Python both read).
UNSAFE_PATTERN = "[\\x00-\\x1f\\x7f-\\x9f\\ud800-\\udfff]"
POLICY_PATTERN = "^(?!.*\\.\\.)[A-Za-z0-9_][A-Za-z0-9._-]{0,63}$"
IMAGE_FORMAT = "canaryd-image"  # no spaces, nothing unprintable (``bodies.FORMATS`` checks it)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(kind: str | dict[str, Any]) -> dict[str, Any]:
    if isinstance(kind, str):
        return {"type": [kind, "null"]}
    return {"oneOf": [kind, {"type": "null"}]}


def _time(name: str, description: str, nullable: bool = False) -> dict[str, Any]:
    """A time field ``name`` and its ``<name>_unix`` twin, as ``views.timed`` writes them."""
    stamp: dict[str, Any] = {"type": ["string", "null"] if nullable else "string"}
    seconds: dict[str, Any] = {"type": ["number", "null"] if nullable else "number"}
    return {
        name: {**stamp, "format": "date-time", "description": f"{description} (RFC 3339, UTC)"},
        f"{name}_unix": {**seconds, "description": f"{description} (Unix seconds)"},
    }


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


# --------------------------------------------------------------------------- request bodies


def text(*more: dict[str, Any], nullable: bool = True, **extra: Any) -> dict[str, Any]:
    """A non-empty string of at most ``MAX_TEXT`` characters with no control character or lone
    surrogate; ``more`` are further checks, each with its own ``x-message``. ``null`` is the
    same as leaving the field out, unless the field is required (``nullable=False``)."""
    checks = [
        {
            "not": {"type": "string", "pattern": UNSAFE_PATTERN},
            "x-message": "contains a control character or a lone UTF-16 surrogate",
        },
        *more,
    ]
    return {
        "type": ["string", "null"] if nullable else "string",
        "minLength": 1,
        "maxLength": MAX_TEXT,
        "pattern": "\\S",
        "x-message": f"expected a non-empty string of at most {MAX_TEXT} characters",
        "allOf": checks,
        **extra,
    }


def integer(low: int, high: int, *, nullable: bool = True, **extra: Any) -> dict[str, Any]:
    return {
        "type": ["integer", "null"] if nullable else "integer",
        "minimum": low,
        "maximum": high,
        "x-message": f"expected an integer within {low}..{high}",
        **extra,
    }


def _requests() -> dict[str, Any]:
    image = {
        "format": IMAGE_FORMAT,
        "x-message": "an image reference has no spaces or control characters",
    }
    policy = {
        "pattern": POLICY_PATTERN,
        "x-message": "expected a policy name (letters, digits, '.', '_' or '-', at most 64 "
        "characters), not a path",
    }
    return {
        "StartRequest": _object(
            "image",
            closed=True,
            image=text(image, nullable=False, description="An image reference"),
            traffic=integer(
                1, 100, description="The first stage's canary weight (default: the policy's)"
            ),
            policy=text(
                policy, description="The name of a policy the config allows (never a path)"
            ),
            supersede={
                "type": "boolean",
                "x-message": "expected true or false",
                "description": "Roll back the target's active rollout and start this one; "
                "without it a start on a target with an active rollout is a 409 naming it",
            },
        ),
        "PromoteRequest": _object(
            "",
            closed=True,
            full={
                "type": "boolean",
                "x-message": "expected true or false",
                "description": "Straight to 100%",
            },
        ),
        "RollbackRequest": _object("", closed=True, reason=text(description="Why, for people")),
        "WeightRequest": _object("weight", closed=True, weight=integer(0, 100, nullable=False)),
        "EmptyRequest": _object("", closed=True),
    }


# --------------------------------------------------------------------------- all of them


def schemas() -> dict[str, Any]:
    """Every schema of ``components/schemas``: answers, request bodies, the webhook's message."""
    decision = _object(
        "seq rollout_id target t phase stage weight action reason",
        seq={"type": "integer"},
        rollout_id={"type": "string"},
        target={"type": "string"},
        **_time("t", "When it was decided"),
        phase={"enum": PHASES},
        stage={"type": "integer", "minimum": 1},
        weight={"type": "integer", "minimum": 0, "maximum": 100},
        action={"type": "string"},
        reason={"type": "string"},
        cause=_nullable({"enum": [str(c) for c in Cause]}),  # None: decided before v4
        evidence={"type": "object"},
        trace_id=_nullable("string"),  # the rollout's trace (tracing:); None: untraced
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
        **_time("started_at", "When the rollout started"),
        **_time("stage_started_at", "When the router applied the stage's weight", True),
        credited={"type": "number", "description": "Seconds of passing analysis this stage"},
        **_time("finished_at", "When it ended", True),
        waiting_for_promote={"type": "boolean"},
        pause_reason=_nullable("string"),
        rollback_reason=_nullable("string"),
        message=_nullable("string"),
        successor=_nullable("string"),
        noop={
            "type": "boolean",
            "description": "pause/resume only: true when the rollout already was as asked "
            "(nothing changed; `noop_reason` says how, e.g. `already paused`)",
        },
        noop_reason={"type": "string"},
        trace_id=_nullable("string"),
        compare={
            "type": "object",
            "description": "Each compare check's evidence so far: its e-value against the "
            "bound 1/alpha that rolls back, the counts judged since its baseline",
            "additionalProperties": _object(
                "e_value bound concluded counted",
                e_value={"type": "number"},
                bound={"type": "number"},
                concluded={"type": "boolean"},
                counted={"type": "object", "additionalProperties": {"type": "number"}},
            ),
        },
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
        kube_context={
            **_nullable("string"),
            "description": "The kubeconfig context of the target's cluster (null: the default)",
        },
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
        status={"enum": list(STATUSES)},
        labels=labels,
        **_time("starts_at", "When it began firing"),
        **_time("ends_at", "When Alertmanager said it ends", True),
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
                        **_time("t", "When it was measured"),
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
        status={"enum": list(STATUSES)},
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
        status={"enum": list(STATUSES)},
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
                required_role={"enum": list(ROLES), "description": "403"},
                suggestions={
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "404 for a target: configured names close to the one asked",
                },
                rollout={
                    "type": "string",
                    "description": "409 for a start: the target's active rollout",
                },
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
        "AuditEntry": _object(
            "seq t who what target outcome detail",
            seq={"type": "integer", "description": "The row's number; only grows (the cursor)"},
            **_time("t", "When it was written"),
            who={"type": "string", "description": "The token's name, or anonymous"},
            what={"type": "string", "description": "The request: start, promote, alerts, ..."},
            target=_nullable("string"),
            outcome={"type": "string"},
            detail={"type": "object", "description": "status, remote, message, the body's fields"},
        ),
        "AuditLog": _object(
            "entries next",
            entries={"type": "array", "items": _ref("AuditEntry"), "description": "Newest first"},
            next={
                **_nullable("string"),
                "description": "The next page's path and query; null when there is no more",
            },
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
        **_requests(),
        "WebhookAlert": webhook_alert,
        "WebhookMessage": webhook,
        "WebhookAccepted": _object(
            "received new",
            received={"type": "integer", "description": "Alerts in the message"},
            new={"type": "integer", "description": "Alerts not seen before (de-duplicated)"},
        ),
    }
