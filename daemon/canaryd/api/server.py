"""The HTTP API (SPEC §5.2), the Alertmanager webhook and the status page, on aiohttp.

Handlers translate and decide nothing: JSON in, one typed call on the controller, JSON out.
The controller is reached through ``ControllerPort``, the few members used here, so this
adapter never imports the runtime (the layer contract); ``runtime.controller.Controller``
satisfies it structurally.

How it behaves, and why:

* **Errors** are always ``{"error": {"code", "message"}}``, also for aiohttp's own 404/405 and
  for an unexpected exception (500, logged with its traceback, no details in the body).
* **The webhook never answers 5xx for a bad request.** Alertmanager retries 5xx until the group
  interval runs out and drops anything 4xx, so malformed JSON, a bad shape or a bad field is a
  400 naming the field, a body over the size limit a 413 and a wrong credential a 401. A 503
  means canaryd could not take well-formed alerts in just now, which is exactly when a retry
  helps. The 200 is sent only once ``controller.receive_alerts`` has returned.
* **Roles** (SPEC §5.3): each route names the role it needs (``reads``: ``viewer``;
  ``writes(what, role)``). Who the caller is comes from ``api_auth``: no or an unknown token is
  a 401 with ``WWW-Authenticate: Bearer``; a role too low for the request is a 403.
* **Audit**: every state-changing request is written with ``store.audit`` whatever its outcome
  (201/200 and also 401, 403, 404, 408, 409, 413, 422, 503), ``who`` being the token's name or
  ``anonymous``; a request the engine refused is a 409 whose row says ``rejected`` with the
  engine's reason. The webhook's refused deliveries (401) are audited too; accepted deliveries
  are not (Alertmanager repeats them every group interval) — their effect is in the history.
  Refusals (401, 403) are folded by ``refusals.RefusalFolder`` so that a flood of them writes
  a bounded number of rows that still count every request (``detail.count``).
* **A store that cannot write** (``store.write_problem()``, asked off the loop) makes
  ``/readyz`` answer 503 with the reason, and every state-changing request a 503 at once,
  before the controller is asked, so nothing is queued to be applied later.
* **Bounded waits**: a body must arrive within ``body_timeout`` (408); ``make_runner`` closes
  idle keep-alive connections and connections whose headers never complete after
  ``KEEPALIVE_TIMEOUT`` (aiohttp has no separate header timeout: its keep-alive timer runs
  from the connection's start and while it waits for the next request's headers), and
  cancels a handler whose client went away (audited as ``abandoned``). A request the
  controller accepted but could not finish within its bounded wait (``StillRunning``) is a
  202 with ``Location`` to poll. Every 503 carries ``Retry-After``.
* **Open endpoints**: ``/healthz``, ``/readyz``, ``/metrics`` and the status page ``/``
  (rendered by ``status_page``; it shows no token, credential or alert labels).
* **Body size**: checked against ``Content-Length`` first, then enforced while reading (a
  chunked body has none); ``client_max_size`` is set to the same limit as a second guard.

What is here: the routes, their handlers, the role and audit wrappers and the mapping of
controller errors to answers. Around it: ``http_edge`` (error answers, bodies and fields),
``refusals`` (folding refused requests' audit rows), ``api_auth`` (tokens to identities, the
role order), ``api_views`` (the JSON shapes) and ``status_page`` (the HTML).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from canaryd import __version__
from canaryd.adapters.telemetry import Telemetry
from canaryd.api import openapi
from canaryd.api.audit import Auditor, write_problem
from canaryd.api.auth import (
    ANONYMOUS,
    CHALLENGE,
    ApiToken,
    Authenticator,
    Identity,
    Unauthenticated,
)
from canaryd.api.edge import (
    BODY_TIMEOUT,
    CODES,
    OUTCOMES,
    ApiError,
    check_fields,
    decode_json,
    error_response,
    int_field,
    invalid,
    policy_field,
    read_body,
    text_field,
    unavailable,
)
from canaryd.api.pages import render_status_page
from canaryd.api.refusals import RefusalFolder
from canaryd.api.views import TargetInfo, alert_view, rollout_view, target_summary
from canaryd.api.webhook import (
    PayloadError,
    WebhookCredential,
    parse_notification,
)
from canaryd.core.errors import (
    CommandRejected,
    ConfigError,
    PermanentError,
    StillRunning,
    TemporaryError,
)
from canaryd.core.model import Alert, Command, CommandKind, Rollout
from canaryd.ports import Clock, CorruptState, DecisionRecord, RolloutConflict, StateStore

MAX_BODY = 1 << 20  # 1 MiB: an Alertmanager message with hundreds of alerts fits easily
KEEPALIVE_TIMEOUT = 15.0  # seconds an idle connection, or one whose headers trickle, stays open
RECENT_DECISIONS = 20  # shown with a target; the full list is under /history

log = structlog.get_logger("canaryd.http")
T = TypeVar("T")

# --------------------------------------------------------------------------- what we need


class FiringAlerts(Protocol):
    def firing_for(self, target: str, now: float) -> list[Alert]: ...


class ControllerPort(Protocol):
    """What the API needs of ``runtime.controller.Controller``."""

    @property
    def ready(self) -> bool: ...
    @property
    def targets(self) -> Mapping[str, TargetInfo]: ...
    @property
    def inbox(self) -> FiringAlerts: ...

    def current(self, name: str) -> Rollout | None: ...

    async def start(
        self,
        name: str,
        image: str,
        *,
        traffic: int | None = None,
        policy: str | None = None,
        by: str = "operator",
    ) -> Rollout: ...

    async def command(self, name: str, command: Command) -> Rollout: ...

    async def cleanup(self, name: str, by: str) -> Rollout | None: ...

    async def receive_alerts(self, alerts: list[Alert]) -> int: ...


# --------------------------------------------------------------------------- errors


@web.middleware
async def _until_ready(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """The listener opens before stored rollouts are loaded, so probes can tell "starting" from
    "dead"; until then the API answers 503 (Alertmanager retries a 503, so no alert is lost)."""
    path = request.path
    loading = not request.app[API].controller.ready
    if loading and path.startswith("/api/v1/") and path != "/api/v1/openapi.json":
        raise unavailable("canaryd is loading its state; retry shortly", "not_ready")
    return await handler(request)


@web.middleware
async def _errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return exc.response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        keep = {k: v for k, v in exc.headers.items() if k in ("Allow", "WWW-Authenticate")}
        return error_response(exc.status, CODES.get(exc.status, "error"), exc.reason, keep)
    except Exception:
        log.exception("http_handler_failed", method=request.method, path=request.path)
        return error_response(500, "internal", "internal error; the daemon's log has details")


# --------------------------------------------------------------------------- the app


@dataclass(frozen=True, slots=True)
class Api:
    controller: ControllerPort
    store: StateStore
    telemetry: Telemetry
    auth: Authenticator
    webhook: WebhookCredential | None
    clock: Clock
    max_body: int
    body_timeout: float
    auditor: Auditor


API = web.AppKey("canaryd_api", Api)
_DETAIL = web.RequestKey("canaryd_audit_detail", dict)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
AuthedHandler = Callable[[web.Request, Identity], Awaitable[web.StreamResponse]]


def build_app(
    controller: ControllerPort,
    store: StateStore,
    telemetry: Telemetry,
    tokens: Sequence[ApiToken],
    webhook: WebhookCredential | None,
    clock: Clock,
    max_body: int = MAX_BODY,
    *,
    anonymous_role: str | None = None,
    body_timeout: float = BODY_TIMEOUT,
    refusals: RefusalFolder | None = None,
) -> web.Application:
    """The daemon's aiohttp application. ``webhook`` None leaves the webhook unauthenticated."""
    app = web.Application(middlewares=[_errors, _until_ready], client_max_size=max_body)
    app[API] = Api(
        controller,
        store,
        telemetry,
        Authenticator(tokens, anonymous_role),
        webhook,
        clock,
        max_body,
        body_timeout,
        Auditor(store, clock, controller.targets, refusals),
    )
    app.cleanup_ctx.append(_flush_refusals)
    if webhook is None:
        log.warning("webhook_unauthenticated", hint="configure auth.webhook")
    if anonymous_role is not None:
        log.warning("api_anonymous_access", role=anonymous_role)
    t = "/api/v1/targets/{target}"
    app.router.add_routes(
        [
            web.get("/", status_page),
            web.get("/healthz", healthz),
            web.get("/readyz", readyz),
            web.get("/metrics", metrics),
            web.get("/api/v1/openapi.json", openapi_document),
            web.post("/api/v1/alerts", receive_alerts),
            web.get("/api/v1/targets", list_targets),
            web.get(t, show_target),
            web.get(f"{t}/history", show_history),
            web.post(f"{t}/rollouts", start_rollout),
            web.post(f"{t}/promote", promote),
            web.post(f"{t}/rollback", rollback),
            web.post(f"{t}/pause", pause),
            web.post(f"{t}/resume", resume),
            web.post(f"{t}/weight", set_weight),
            web.delete(f"{t}/rollout", cleanup),
        ]
    )
    return app


def make_runner(
    app: web.Application, *, keepalive_timeout: float = KEEPALIVE_TIMEOUT
) -> web.AppRunner:
    """The runner ``canaryd serve`` puts ``app`` on: a handler is cancelled when its client
    goes away (the controller shields what must finish once begun), and a connection is closed
    when idle, or still sending headers, for ``keepalive_timeout`` seconds."""
    return web.AppRunner(
        app, access_log=None, handler_cancellation=True, keepalive_timeout=keepalive_timeout
    )


def _identify(request: web.Request) -> Identity:
    """The caller (``api_auth``), or ``ApiError(401)`` with the bearer challenge."""
    try:
        return request.app[API].auth.identify(request.headers.get("Authorization"))
    except Unauthenticated as exc:
        raise ApiError(401, "unauthorized", str(exc), {"WWW-Authenticate": CHALLENGE}) from None


def reads(handler: AuthedHandler) -> Handler:
    """A read: at least ``viewer``."""

    @functools.wraps(handler)
    async def checked(request: web.Request) -> web.StreamResponse:
        who = _identify(request)
        _check_target(request)
        return await handler(request, who)

    return checked


def writes(what: str, role: str) -> Callable[[AuthedHandler], Handler]:
    """A state-changing request: needs ``role``; audited whatever its outcome."""

    def wrap(handler: AuthedHandler) -> Handler:
        @functools.wraps(handler)
        async def audited(request: web.Request) -> web.StreamResponse:
            api = request.app[API]
            target = request.match_info.get("target")
            request[_DETAIL] = {}
            who = ANONYMOUS
            try:
                identity = _identify(request)
                who = identity.name
                if not identity.may(role):
                    raise ApiError(
                        403,
                        "forbidden",
                        f"{what} needs the {role} role; {who} is {identity.role}",
                        required_role=role,
                    )
                _check_target(request)
                await _check_writable(api)
                response = await handler(request, identity)
            except ApiError as exc:
                if exc.status >= 400:
                    log.info("api_refused", who=who, what=what, target=target, status=exc.status)
                await audit(api, who, what, target, exc.status, request, message=exc.message)
                raise
            except asyncio.CancelledError:  # the client went away (handler cancellation)
                with contextlib.suppress(Exception):
                    message = "the client went away before the answer; it may have been applied"
                    await audit(api, who, what, target, 499, request, message=message)
                raise
            except Exception as exc:
                await audit(api, who, what, target, 500, request, message=type(exc).__name__)
                raise
            await audit(api, who, what, target, response.status, request)
            return response

        return audited

    return wrap


async def _check_writable(api: Api) -> None:
    """503 at once when the store cannot write: a command must not wait on, or be applied
    after, a write that is failing (disk full, the file gone, the lock lost)."""
    problem = await asyncio.to_thread(write_problem, api.store)
    if problem is not None:
        raise unavailable(f"the state store cannot write just now: {problem}")


async def audit(
    api: Api,
    who: str,
    what: str,
    target: str | None,
    status: int,
    request: web.Request,
    message: str | None = None,
) -> None:
    """Write the audit row of a request (``http_audit``; refusals are folded)."""
    outcome = OUTCOMES.get(status, "error" if status >= 500 else "ok")
    detail: dict[str, object] = {"status": status, "remote": request.remote or ""}
    detail.update(request.get(_DETAIL) or {})
    if message is not None:
        detail["message"] = message
    await api.auditor.request(who, what, target, outcome, status, detail)


async def _flush_refusals(app: web.Application) -> AsyncIterator[None]:
    """The app's background flush of folded refusals, and a last one when it stops."""
    task = asyncio.get_running_loop().create_task(app[API].auditor.run_flushes())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


# --------------------------------------------------------------------------- bodies


async def json_body(request: web.Request, fields: set[str]) -> dict[str, Any]:
    """A request's JSON object (an empty body is ``{}``); unknown fields are refused."""
    api = request.app[API]
    raw = await read_body(request, api.max_body, api.body_timeout)
    if not raw.strip():
        return {}
    return check_fields(decode_json(raw), fields)


def _check_target(request: web.Request) -> None:
    """404 for a ``{target}`` that is not configured; checked after authentication, so that
    an anonymous caller cannot probe for target names."""
    name = request.match_info.get("target")
    if name is not None and name not in request.app[API].controller.targets:
        raise ApiError(404, "not_found", f"no target named {name!r}")


async def _call(awaitable: Awaitable[T], *, bad_values: bool = False) -> T:
    """A controller call, its errors as HTTP answers (anything else is a 500)."""
    try:
        return await awaitable
    except StillRunning as exc:  # accepted, under way: poll the target for the outcome
        location = f"/api/v1/targets/{exc.target}"
        raise ApiError(
            202, "running", str(exc), {"Location": location}, target=exc.target, location=location
        ) from exc
    except (CommandRejected, RolloutConflict) as exc:
        raise ApiError(409, "conflict", str(exc)) from exc
    except ConfigError as exc:
        raise ApiError(422, "invalid", str(exc)) from exc
    except TemporaryError as exc:
        raise unavailable(str(exc)) from exc
    except CorruptState:
        raise
    except PermanentError as exc:  # RolloutRefused: frozen, or the same image already active
        raise ApiError(409, "conflict", str(exc)) from exc
    except LookupError as exc:
        if bad_values:  # a policy name the configuration does not allow
            message = exc.args[0] if exc.args and isinstance(exc.args[0], str) else str(exc)
            raise invalid("policy", message) from exc
        raise
    except ValueError as exc:
        if bad_values:  # a start's traffic the controller could not use
            raise ApiError(422, "invalid", str(exc)) from exc
        raise


# --------------------------------------------------------------------------- reading targets


async def _currents(controller: ControllerPort) -> list[tuple[TargetInfo, Rollout | None]]:
    def read() -> list[tuple[TargetInfo, Rollout | None]]:
        return [(t, controller.current(name)) for name, t in sorted(controller.targets.items())]

    return await asyncio.to_thread(read)  # a target without a worker is read from the store


# --------------------------------------------------------------------------- open endpoints


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    api = request.app[API]
    if not api.controller.ready:
        raise unavailable("state not loaded yet, or the first reconcile pending", "not_ready")
    problem = await asyncio.to_thread(write_problem, api.store)
    if problem is not None:
        raise unavailable(f"the state store cannot write: {problem}", "store_unwritable")
    return web.json_response({"status": "ready"})


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[API].telemetry.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi_document(request: web.Request) -> web.Response:
    return web.json_response(openapi.document(__version__))


# --------------------------------------------------------------------------- the webhook


async def receive_alerts(request: web.Request) -> web.StreamResponse:
    api = request.app[API]
    status = 500
    try:
        response = await _webhook(request, api)
        status = response.status
        return response
    except ApiError as exc:
        status = exc.status
        raise
    finally:
        api.telemetry.webhook_request(status)


async def _webhook(request: web.Request, api: Api) -> web.Response:
    if api.webhook is not None and not api.webhook.accepts(request.headers.get("Authorization")):
        await audit(api, ANONYMOUS, "alerts", None, 401, request, "wrong or no credential")
        raise ApiError(
            401,
            "unauthorized",
            "the webhook credential is missing or wrong",
            {"WWW-Authenticate": api.webhook.challenge},
        )
    doc = decode_json(await read_body(request, api.max_body, api.body_timeout))
    try:
        note = parse_notification(doc)
    except PayloadError as exc:
        raise ApiError(400, "invalid_payload", str(exc)) from None
    except Exception as exc:  # a parser bug must not make Alertmanager retry forever
        log.exception("webhook_parse_failed")
        raise ApiError(400, "invalid_payload", "body: unreadable webhook payload") from exc
    alerts = list(note.alerts)
    try:
        fresh = await api.controller.receive_alerts(alerts)
    except TemporaryError as exc:  # could not take them in: let Alertmanager retry
        raise unavailable(str(exc)) from exc
    firing = sum(1 for alert in alerts if alert.status == "firing")
    api.telemetry.alerts_arrived(firing, len(alerts) - firing)
    if note.truncated:
        log.warning("webhook_truncated", truncated=note.truncated, group_key=note.group_key)
    log.debug(  # Alertmanager repeats deliveries: an info line each would drown the decisions
        "webhook_received",
        receiver=note.receiver,
        group_key=note.group_key,
        reason=note.reason,
        received=len(alerts),
        new=fresh,
    )
    body = b'{"received": %d, "new": %d}' % (len(alerts), fresh)  # hot path: no json.dumps
    return web.Response(body=body, content_type="application/json")


# --------------------------------------------------------------------------- reads


@reads
async def list_targets(request: web.Request, who: Identity) -> web.Response:
    rows = await _currents(request.app[API].controller)
    return web.json_response({"targets": [target_summary(t, r) for t, r in rows]})


@reads
async def show_target(request: web.Request, who: Identity) -> web.Response:
    api, name = request.app[API], request.match_info["target"]
    target = api.controller.targets[name]
    rollout = await asyncio.to_thread(api.controller.current, name)
    decisions: list[DecisionRecord] = []
    checks: dict[str, dict[str, Any]] = {}
    if rollout is not None:
        decisions = await asyncio.to_thread(api.store.history, rollout_id=rollout.id)
        for m in await asyncio.to_thread(api.store.measurements, rollout.id):
            checks[m["check"]] = {"value": m["value"], "error": m["error"], "t": m["t"]}
    firing = api.controller.inbox.firing_for(name, api.clock.time())
    view = target_summary(target, rollout)
    view["rollout"] = rollout_view(rollout) if rollout else None
    view["decisions"] = decisions[-RECENT_DECISIONS:]
    view["alerts"] = [alert_view(a) for a in firing]
    view["checks"] = checks  # the latest measurement of every check of the rollout
    return web.json_response(view)


@reads
async def show_history(request: web.Request, who: Identity) -> web.Response:
    api, name = request.app[API], request.match_info["target"]
    raw = request.query.get("limit")
    limit = int(raw) if raw and raw.isascii() and raw.isdigit() and len(raw) <= 6 else 0
    if raw is not None and not 0 < limit <= 100_000:
        raise invalid("limit", "expected an integer within 1..100000")
    decisions = await asyncio.to_thread(api.store.history, target=name)
    if limit:
        decisions = decisions[-limit:]
    return web.json_response({"target": name, "decisions": decisions})


# --------------------------------------------------------------------------- writes


@writes("start", "operator")
async def start_rollout(request: web.Request, who: Identity) -> web.Response:
    name = request.match_info["target"]
    body = await json_body(request, {"image", "traffic", "policy"})
    image = text_field(body, "image", required=True)
    assert image is not None
    if any(c.isspace() or not c.isprintable() for c in image):
        raise invalid("image", "an image reference has no spaces or control characters")
    traffic = int_field(body, "traffic", 1, 100)
    policy = policy_field(body)
    request[_DETAIL].update(image=image, traffic=traffic, policy=policy)
    controller = request.app[API].controller
    start = controller.start(name, image, traffic=traffic, policy=policy, by=who.name)
    rollout = await _call(start, bad_values=True)
    request[_DETAIL]["rollout"] = rollout.id
    location = {"Location": f"/api/v1/targets/{name}"}
    return web.json_response(rollout_view(rollout), status=201, headers=location)


async def _command(request: web.Request, command: Command) -> web.Response:
    name = request.match_info["target"]
    rollout = await _call(request.app[API].controller.command(name, command))
    request[_DETAIL]["rollout"] = rollout.id
    return web.json_response(rollout_view(rollout))


@writes("promote", "admin")
async def promote(request: web.Request, who: Identity) -> web.Response:
    body = await json_body(request, {"full"})
    full = body.get("full", False)
    if not isinstance(full, bool):
        raise invalid("full", "expected true or false")
    request[_DETAIL]["full"] = full
    kind = CommandKind.PROMOTE_FULL if full else CommandKind.PROMOTE
    return await _command(request, Command(kind, by=who.name))


@writes("rollback", "operator")
async def rollback(request: web.Request, who: Identity) -> web.Response:
    body = await json_body(request, {"reason"})
    reason = text_field(body, "reason") or ""
    request[_DETAIL]["reason"] = reason
    return await _command(request, Command(CommandKind.ROLLBACK, by=who.name, reason=reason))


@writes("pause", "operator")
async def pause(request: web.Request, who: Identity) -> web.Response:
    await json_body(request, set())
    return await _command(request, Command(CommandKind.PAUSE, by=who.name))


@writes("resume", "operator")
async def resume(request: web.Request, who: Identity) -> web.Response:
    await json_body(request, set())
    return await _command(request, Command(CommandKind.RESUME, by=who.name))


@writes("set-weight", "operator")
async def set_weight(request: web.Request, who: Identity) -> web.Response:
    body = await json_body(request, {"weight"})
    weight = int_field(body, "weight", 0, 100, required=True)
    request[_DETAIL]["weight"] = weight
    return await _command(request, Command(CommandKind.SET_WEIGHT, by=who.name, weight=weight))


@writes("cleanup", "admin")
async def cleanup(request: web.Request, who: Identity) -> web.Response:
    name = request.match_info["target"]
    await json_body(request, set())
    rollout = await _call(request.app[API].controller.cleanup(name, who.name))
    request[_DETAIL]["rollout"] = rollout.id if rollout else None
    return web.json_response(
        {"target": name, "rollout": rollout_view(rollout) if rollout else None}
    )


# --------------------------------------------------------------------------- status page


async def status_page(request: web.Request) -> web.Response:
    api = request.app[API]
    rows = await _currents(api.controller)
    page = render_status_page(rows, ready=api.controller.ready)
    return web.Response(text=page, content_type="text/html")
