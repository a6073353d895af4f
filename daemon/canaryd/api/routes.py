"""The route table of the HTTP API: every fact about a route written once.

One row per route: method, path, the handler (by name, in ``api.handlers``), the role it needs,
what the audit log calls it, its request body's schema (``api.schemas``) and its answers. From
these rows come the aiohttp routes and their role, audit and body checks (``api.server``), the
OpenAPI document (``api.openapi``) and the role ``canaryctl`` names when a 403 does not
(``role_of``), so none of them can drift from another.

The table is plain data, free of aiohttp: ``canaryctl`` reads it and must start fast (see
``ctl.client``). That is why a row names its handler rather than holding the function;
``api.server`` resolves every name when it builds the app and refuses a table whose names and
handlers do not match one to one.
"""

from __future__ import annotations

from dataclasses import dataclass

from canaryd.api import auditquery
from canaryd.api.auth import ROLES

TARGET = "/api/v1/targets/{target}"
WRITE_ERRORS = (400, 401, 403, 404, 408, 409, 413, 422, 503)
LIMIT = {  # the history's query parameters (checked by its handler, described here)
    "name": "limit",
    "in": "query",
    "required": False,
    "description": "Only the newest N decisions",
    "schema": {"type": "integer", "minimum": 1, "maximum": 100000},
}
ROLLOUT = {
    "name": "rollout",
    "in": "query",
    "required": False,
    "description": "Only this rollout's decisions (404 when the target has no such rollout)",
    "schema": {"type": "string", "minLength": 1, "maxLength": 200},
}


@dataclass(frozen=True, slots=True)
class Route:
    """One route of the API.

    ``role`` None is an open route (or, with ``webhook``, one that checks the webhook's own
    credential). ``what`` marks a state-changing request: it is audited under that name, whatever
    its outcome. ``body`` names the request body's schema; the server checks the body against it
    before the handler runs, unless ``checks_body`` is False (the webhook: Alertmanager's
    message is read leniently by ``webhook.parse_notification``, which answers 400, not 422).
    ``answer`` names the schema of the ``status`` answer; ``media`` is its content type.
    """

    method: str
    path: str
    handler: str
    summary: str
    role: str | None = None
    what: str | None = None
    body: str | None = None
    answer: str = "Health"
    status: int = 200
    errors: tuple[int, ...] = ()
    media: str = "application/json"
    query: tuple[dict[str, object], ...] = ()
    webhook: bool = False
    checks_body: bool = True

    def __post_init__(self) -> None:
        if self.role is not None and self.role not in ROLES:
            raise ValueError(f"route {self.method} {self.path}: unknown role {self.role!r}")
        if self.what is not None and self.role is None:
            raise ValueError(f"route {self.method} {self.path}: a write needs a role")

    @property
    def running(self) -> bool:
        """Whether the route may answer 202 (a write the controller is still applying)."""
        return self.what is not None


def _write(
    method: str, suffix: str, handler: str, summary: str, role: str, what: str, body: str
) -> Route:
    answer = "CleanupResult" if what == "cleanup" else "Rollout"
    status = 201 if what == "start" else 200
    return Route(
        method,
        f"{TARGET}{suffix}",
        handler,
        summary,
        role,
        what,
        body,
        answer,
        status,
        WRITE_ERRORS,
    )


ROUTES: tuple[Route, ...] = (
    Route(
        "get",
        "/",
        "status_page",
        "Dashboard (HTML): every target's health, phase, stage, weights, last decision. Open.",
        media="text/html",
    ),
    Route(
        "get",
        "/targets/{target}",
        "target_page",
        "A target's page (HTML): plan, checks against thresholds, decisions, actions. Open.",
        errors=(404,),
        media="text/html",
    ),
    Route(
        "get",
        "/ui/dashboard.css",
        "dashboard_css",
        "The dashboard's stylesheet. Open.",
        media="text/css",
    ),
    Route(
        "get",
        "/ui/dashboard.js",
        "dashboard_js",
        "The dashboard's script. Open.",
        media="text/javascript",
    ),
    Route("get", "/healthz", "healthz", "Liveness: 200 while the event loop runs. Open."),
    Route(
        "get",
        "/readyz",
        "readyz",
        "Readiness: state loaded and one reconcile pass done. Open.",
        errors=(503,),
    ),
    Route(
        "get",
        "/metrics",
        "metrics",
        "Prometheus metrics (text exposition format). Open.",
        media="text/plain",
    ),
    Route(
        "get", "/api/v1/openapi.json", "openapi_document", "This document. Open.", answer="Object"
    ),
    Route(
        "post",
        "/api/v1/alerts",
        "receive_alerts",
        "Alertmanager webhook (version 4, with or without routeLabels)",
        body="WebhookMessage",
        answer="WebhookAccepted",
        errors=(400, 401, 408, 413, 503),
        webhook=True,
        checks_body=False,
    ),
    Route(
        "get",
        "/api/v1/targets",
        "list_targets",
        "Every target and its current rollout",
        "viewer",
        answer="TargetList",
        errors=(401,),
    ),
    Route(
        "get",
        TARGET,
        "show_target",
        "One target: its rollout, latest decisions, firing alerts",
        "viewer",
        answer="TargetDetail",
        errors=(401, 404),
    ),
    Route(
        "get",
        f"{TARGET}/history",
        "show_history",
        "Every decision for the target, oldest first; one rollout's with ?rollout",
        "viewer",
        answer="History",
        errors=(401, 404, 422),
        query=(ROLLOUT, LIMIT),
    ),
    Route(
        "get",
        auditquery.PATH,
        "audit_log",
        "The audit log, newest first: filtered by target, caller, outcome and time; paged",
        "admin",
        answer="AuditLog",
        errors=(401, 403, 422),
        query=auditquery.PARAMETERS,
    ),
    _write(
        "post", "/rollouts", "start_rollout", "Start a rollout", "operator", "start", "StartRequest"
    ),
    _write(
        "post",
        "/promote",
        "promote",
        "Skip the current stage's wait (full: to 100%)",
        "admin",
        "promote",
        "PromoteRequest",
    ),
    _write(
        "post",
        "/rollback",
        "rollback",
        "Roll the canary back",
        "operator",
        "rollback",
        "RollbackRequest",
    ),
    _write("post", "/pause", "pause", "Pause the rollout", "operator", "pause", "EmptyRequest"),
    _write(
        "post", "/resume", "resume", "Resume a paused rollout", "operator", "resume", "EmptyRequest"
    ),
    _write(
        "post",
        "/weight",
        "set_weight",
        "Set the canary weight (pauses)",
        "operator",
        "set-weight",
        "WeightRequest",
    ),
    _write(
        "delete",
        "/rollout",
        "cleanup",
        "Clean up: roll back, remove the canary, release the router",
        "admin",
        "cleanup",
        "EmptyRequest",
    ),
)


def route_named(handler: str) -> Route:
    """The row whose handler is ``handler``; ``KeyError`` naming it if there is none."""
    for route in ROUTES:
        if route.handler == handler:
            return route
    raise KeyError(f"no route is answered by {handler!r}")


def role_of(handler: str) -> str | None:
    """The role the route answered by ``handler`` needs (None: open)."""
    return route_named(handler).role
