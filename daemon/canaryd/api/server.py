"""The HTTP API (SPEC §5.2), the Alertmanager webhook and the status page, on aiohttp.

The routes come from one table, ``api.routes.ROUTES``: for each row this module adds the
aiohttp route and wraps the row's handler (``api.handlers``) in the checks the row asks for:
the caller's role, the ``{target}``, a writable store, the body against the row's schema
(``api.bodies``) and the audit row. The OpenAPI document is built from the same table.

How it behaves, and why:

* **Errors** are always ``{"error": {"code", "message"}}``, also for aiohttp's own 404/405 and
  for an unexpected exception (500, logged with its traceback, no details in the body).
* **The webhook never answers 5xx for a bad request.** Alertmanager retries 5xx until the group
  interval runs out and drops anything 4xx, so malformed JSON, a bad shape or a bad field is a
  400 naming the field, a body over the size limit a 413 and a wrong credential a 401. A 503
  means canaryd could not take well-formed alerts in just now, which is exactly when a retry
  helps. The 200 is sent only once ``controller.receive_alerts`` has returned.
* **Roles** (SPEC §5.3): each row of the table names the role it needs. Who the caller is
  comes from ``auth``: no or an unknown token is a 401 with
  ``WWW-Authenticate: Bearer``; a role too low for the request is a 403 naming the role.
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
  (rendered by ``pages``; it shows no token, credential or alert labels).
* **Body size**: checked against ``Content-Length`` first, then enforced while reading (a
  chunked body has none); ``client_max_size`` is set to the same limit as a second guard.

What is here: the app, its middlewares and the wrappers the table's rows ask for. Around it:
``routes`` (the table), ``handlers`` (one per row), ``bodies`` and ``schemas`` (request bodies),
``edge`` (error answers, reading bodies), ``refusals`` (folding refused requests' audit rows),
``auth`` (tokens to identities, the role order), ``views`` (the JSON shapes) and ``pages``
(the HTML).
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import structlog
from aiohttp import web

from canaryd.adapters.telemetry import Telemetry
from canaryd.api import forward, handlers
from canaryd.api.audit import Auditor, write_problem
from canaryd.api.auth import (
    ANONYMOUS,
    CHALLENGE,
    Authenticator,
    Identity,
    Unauthenticated,
)
from canaryd.api.bodies import check_body
from canaryd.api.edge import (
    BODY_TIMEOUT,
    CODES,
    ApiError,
    decode_json,
    error_response,
    read_body,
    unavailable,
)
from canaryd.api.handlers import API, Api, Call, audit
from canaryd.api.refusals import RefusalFolder
from canaryd.api.routes import ROUTES, Route
from canaryd.api.webhook import WebhookCredential
from canaryd.config.secrets import Token
from canaryd.ports import Clock, StateStore
from canaryd.runtime.controller import Controller
from canaryd.runtime.leadership import Leadership

MAX_BODY = 1 << 20  # 1 MiB: an Alertmanager message with hundreds of alerts fits easily
KEEPALIVE_TIMEOUT = 15.0  # seconds an idle connection, or one whose headers trickle, stay open
MAX_ASKED = 100  # characters of an unknown target name compared and echoed (difflib is O(n·m))

log = structlog.get_logger("canaryd.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
RowHandler = Callable[[web.Request, Call], Awaitable[web.StreamResponse]]
OPEN = Identity(ANONYMOUS, "viewer")  # who an open route's handler is told it serves

# --------------------------------------------------------------------------- middlewares


@web.middleware
async def _until_ready(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The listener opens before stored rollouts are loaded, so probes can tell "starting" from
    "dead"; until then the API answers 503 (Alertmanager retries a 503, so no alert is lost)."""
    path = request.path
    api = request.app[API]
    # a follower serves reads from the shared store (its writes were forwarded already)
    loading = not api.controller.ready and (api.leadership is None or api.leadership.leading())
    if loading and path.startswith("/api/v1/") and path != "/api/v1/openapi.json":
        raise unavailable("canaryd is loading its state; retry shortly", "not_ready")
    return await handler(request)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
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


def build_app(
    controller: Controller,
    store: StateStore,
    telemetry: Telemetry,
    tokens: Sequence[Token],
    webhook: WebhookCredential | None,
    clock: Clock,
    max_body: int = MAX_BODY,
    *,
    anonymous_role: str | None = None,
    body_timeout: float = BODY_TIMEOUT,
    refusals: RefusalFolder | None = None,
    leadership: Leadership | None = None,
) -> web.Application:
    """The daemon's aiohttp application. ``webhook`` None leaves the webhook unauthenticated.
    ``leadership`` (several replicas): a follower forwards writes to the leader
    (``api.forward``) and answers reads."""
    middlewares = [_errors, _until_ready]
    if leadership is not None:
        middlewares.insert(1, forward.forward_writes)
    app = web.Application(middlewares=middlewares, client_max_size=max_body)
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
        leadership,
    )
    app.cleanup_ctx.append(_flush_refusals)
    if leadership is not None:
        app.cleanup_ctx.append(forward.session)
    if webhook is None:
        log.warning("webhook_unauthenticated", hint="configure auth.webhook")
    if anonymous_role is not None:
        log.warning("api_anonymous_access", role=anonymous_role)
    app.router.add_routes(
        [web.route(row.method.upper(), row.path, _wrap(row, handler_of(row))) for row in ROUTES]
    )
    return app


def handler_of(row: Route) -> RowHandler:
    """The function of ``api.handlers`` that answers ``row``; a row naming none is a bug."""
    found = getattr(handlers, row.handler, None)
    if not callable(found):
        raise LookupError(f"route {row.method} {row.path}: api.handlers has no {row.handler!r}")
    handler: RowHandler = found
    return handler


def make_runner(
    app: web.Application, *, keepalive_timeout: float = KEEPALIVE_TIMEOUT
) -> web.AppRunner:
    """The runner ``canaryd serve`` puts ``app`` on: a handler is cancelled when its client
    goes away (the controller shields what must finish once begun), and a connection is closed
    when idle, or still sending headers, for ``keepalive_timeout`` seconds."""
    return web.AppRunner(
        app, access_log=None, handler_cancellation=True, keepalive_timeout=keepalive_timeout
    )


async def _flush_refusals(app: web.Application) -> AsyncIterator[None]:
    """The app's background flush of folded refusals, and a last one when it stops."""
    task = asyncio.get_running_loop().create_task(
        app[API].auditor.run_flushes(), name="http-refusal-flush"
    )
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


# --------------------------------------------------------------------------- what rows ask for


def _wrap(row: Route, handler: RowHandler) -> Handler:
    """``handler`` behind the checks ``row`` asks for: open, a read, or an audited write."""
    if row.what is not None:
        return _write(row, handler)
    if row.role is not None:
        return _read(row, handler)

    async def answer(request: web.Request) -> web.StreamResponse:
        return await handler(request, Call(OPEN))

    return answer


def _read(row: Route, handler: RowHandler) -> Handler:
    """A read: the caller has the row's role and the ``{target}`` exists."""

    async def read(request: web.Request) -> web.StreamResponse:
        who = _identify(request)
        _check_role(who, row)
        _check_target(request)
        return await handler(request, Call(who))

    return read


def _write(row: Route, handler: RowHandler) -> Handler:
    """A state-changing request: the row's role, the target, a writable store and a body that
    passes the row's schema; audited as ``row.what`` whatever its outcome."""
    what = row.what
    assert what is not None

    async def audited(request: web.Request) -> web.StreamResponse:
        api = request.app[API]
        target = request.match_info.get("target")
        call = Call(Identity(ANONYMOUS, "viewer"))
        who = ANONYMOUS
        try:
            call.who = _identify(request)
            who = call.who.name
            _check_role(call.who, row)
            _check_target(request)
            await _check_writable(api)
            call.body = await _body(request, api, row)
            response = await handler(request, call)
        except ApiError as exc:
            if exc.status >= 400:
                log.info("api_refused", who=who, what=what, target=target, status=exc.status)
            await audit(api, who, what, target, exc.status, request, exc.message, call.detail)
            raise
        except asyncio.CancelledError:  # the client went away (handler cancellation)
            with contextlib.suppress(Exception):
                message = "the client went away before the answer; it may have been applied"
                await audit(api, who, what, target, 499, request, message, call.detail)
            raise
        except Exception as exc:
            await audit(api, who, what, target, 500, request, type(exc).__name__, call.detail)
            raise
        await audit(api, who, what, target, response.status, request, more=call.detail)
        return response

    return audited


def _identify(request: web.Request) -> Identity:
    """The caller (``auth``), or a 401 with the bearer challenge."""
    try:
        return request.app[API].auth.identify(request.headers.get("Authorization"))
    except Unauthenticated as exc:
        raise ApiError(401, "unauthorized", str(exc), {"WWW-Authenticate": CHALLENGE}) from None


def _check_role(identity: Identity, row: Route) -> None:
    """403 naming the role when the caller's is lower than the row's."""
    role = row.role or "viewer"
    if not identity.may(role):
        needs = f"{row.what or row.handler} needs the {role} role"
        message = f"{needs}; {identity.name} is {identity.role}"
        raise ApiError(403, "forbidden", message, required_role=role)


def _check_target(request: web.Request) -> None:
    """404 for a ``{target}`` that is not configured; checked after authentication, so that
    an anonymous caller cannot probe for target names. The answer names the configured
    targets closest to the one asked (``suggestions``), as a typo is the usual cause."""
    name = request.match_info.get("target")
    targets = request.app[API].controller.targets
    if name is not None and name not in targets:
        close = difflib.get_close_matches(name[:MAX_ASKED], sorted(targets), n=3, cutoff=0.6)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        shown = name if len(name) <= MAX_ASKED else name[:MAX_ASKED] + "…"
        message = f"no target named {shown!r}{hint}"
        raise ApiError(404, "not_found", message, suggestions=close)


async def _check_writable(api: Api) -> None:
    """503 at once when the store cannot write: a command must not wait on, or be applied
    after, a write that is failing (disk full, the file gone, the lock lost)."""
    problem = await asyncio.to_thread(write_problem, api.store)
    if problem is not None:
        raise unavailable(f"the state store cannot write just now: {problem}")


async def _body(request: web.Request, api: Api, row: Route) -> dict[str, Any]:
    """The request's JSON object checked against the row's schema (an empty body is ``{}``)."""
    raw = await read_body(request, api.max_body, api.body_timeout)
    doc = decode_json(raw) if raw.strip() else {}
    return check_body(row.body, doc) if row.body is not None and row.checks_body else doc
