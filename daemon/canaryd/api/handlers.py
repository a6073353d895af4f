"""The handlers of the HTTP API: JSON in, one typed call on the controller, JSON out.

Each handler answers one row of ``api.routes.ROUTES`` and is found by its name there. By the
time a handler runs, ``api.server`` has done what the row says: the caller is identified and
has the row's role, the ``{target}`` exists, the store can write (for a write) and the body
has passed the row's schema (``call.body``, already checked: handlers only read it). What is
left here is the call on the controller and the mapping of its errors to answers (``_call``).

The controller is the runtime's ``Controller``, imported directly: the API is the layer above
the runtime, and a Protocol with one implementation would only be a second place to edit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from canaryd import __version__
from canaryd.adapters.telemetry import Telemetry
from canaryd.api import openapi, pages
from canaryd.api.audit import Auditor, write_problem
from canaryd.api.auditquery import read_query
from canaryd.api.auth import ANONYMOUS, Authenticator, Identity
from canaryd.api.edge import (
    AUDIT_OUTCOMES,
    OUTCOMES,
    ApiError,
    decode_json,
    invalid,
    read_body,
    unavailable,
)
from canaryd.api.views import (
    TargetInfo,
    alert_view,
    check_view,
    rollout_view,
    stamped,
    target_summary,
)
from canaryd.api.webhook import PayloadError, WebhookCredential, parse_notification
from canaryd.core import stages
from canaryd.core.errors import (
    CommandRejected,
    ConfigError,
    PermanentError,
    RolloutRefused,
    StillRunning,
    TemporaryError,
)
from canaryd.core.model import Command, CommandKind, Rollout
from canaryd.ports import Clock, CorruptState, DecisionRecord, RolloutConflict, StateStore
from canaryd.runtime.controller import Controller
from canaryd.runtime.leadership import Leadership

RECENT_DECISIONS = 20  # shown with a target; the full list is under /history
MAX_ROLLOUT_ID = 200  # characters of a ``?rollout=`` (ids are ``<target>-<time>-<hex>``)

log = structlog.get_logger("canaryd.http")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Api:
    """What the handlers reach: the controller, the store and the edge's settings."""

    controller: Controller
    store: StateStore
    telemetry: Telemetry
    auth: Authenticator
    webhook: WebhookCredential | None
    clock: Clock
    max_body: int
    body_timeout: float
    auditor: Auditor
    leadership: Leadership | None = None  # several replicas: who acts (None: this one)


API = web.AppKey("canaryd_api", Api)


@dataclass(slots=True)
class Call:
    """One request as its handler sees it, after the row's checks.

    ``detail`` is what the request's audit row adds (a write's handler fills it in)."""

    who: Identity
    body: dict[str, Any] = field(default_factory=dict)
    detail: dict[str, object] = field(default_factory=dict)


async def audit(
    api: Api,
    who: str,
    what: str,
    target: str | None,
    status: int,
    request: web.Request,
    message: str | None = None,
    more: Mapping[str, object] | None = None,
) -> None:
    """Write the audit row of a request (refusals are folded by the auditor)."""
    outcome = OUTCOMES.get(status, "error" if status >= 500 else "ok")
    detail: dict[str, object] = {"status": status, "remote": request.remote or ""}
    detail.update(more or {})
    if message is not None:
        detail["message"] = message
    await api.auditor.request(who, what, target, outcome, status, detail)


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
    except RolloutRefused as exc:  # frozen, or a rollout is active: named for the caller
        if exc.rollout is None:
            raise ApiError(409, "conflict", str(exc)) from exc
        raise ApiError(409, "conflict", str(exc), rollout=exc.rollout) from exc
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


async def _currents(controller: Controller) -> list[tuple[TargetInfo, Rollout | None]]:
    def read() -> list[tuple[TargetInfo, Rollout | None]]:
        return [(t, controller.current(name)) for name, t in sorted(controller.targets.items())]

    return await asyncio.to_thread(read)  # a target without a worker is read from the store


# --------------------------------------------------------------------------- open endpoints


async def status_page(request: web.Request, call: Call) -> web.Response:
    api = request.app[API]
    return await pages.index(api.controller, api.store, api.telemetry, api.clock.time())


async def target_page(request: web.Request, call: Call) -> web.Response:
    api, name = request.app[API], request.match_info["target"]
    if name not in api.controller.targets:
        raise ApiError(404, "not_found", f"no target named {name!r}")
    return await pages.target(api.controller, api.store, api.telemetry, name, api.clock.time())


async def dashboard_css(request: web.Request, call: Call) -> web.Response:
    return pages.asset("dashboard.css", request.headers.get("If-None-Match"))


async def dashboard_js(request: web.Request, call: Call) -> web.Response:
    return pages.asset("dashboard.js", request.headers.get("If-None-Match"))


async def healthz(request: web.Request, call: Call) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request, call: Call) -> web.Response:
    """Ready: the state loaded and one reconcile pass done; with several replicas a follower
    is ready too while a leader is known (it answers reads and forwards writes), else not
    (``not_ready``, ``store_unwritable``, ``not_leader``)."""
    api = request.app[API]
    lead = api.leadership
    if lead is not None and not lead.leading():
        leader = lead.leader()
        if leader is None or leader.identity == lead.identity:
            raise unavailable("no replica leads just now; the lease is being taken", "not_leader")
        return web.json_response(
            {
                "status": "ready",
                "leader": False,
                "identity": lead.identity,
                "leader_identity": leader.identity,
                "leader_url": leader.url,
            }
        )
    if not api.controller.ready:
        raise unavailable("state not loaded yet, or the first reconcile pending", "not_ready")
    problem = await asyncio.to_thread(write_problem, api.store)
    if problem is not None:
        raise unavailable(f"the state store cannot write: {problem}", "store_unwritable")
    if lead is not None:
        return web.json_response({"status": "ready", "leader": True, "identity": lead.identity})
    return web.json_response({"status": "ready"})


async def metrics(request: web.Request, call: Call) -> web.Response:
    body = generate_latest(request.app[API].telemetry.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi_document(request: web.Request, call: Call) -> web.Response:
    return web.json_response(openapi.document(__version__))


# --------------------------------------------------------------------------- the webhook


async def receive_alerts(request: web.Request, call: Call) -> web.StreamResponse:
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


async def list_targets(request: web.Request, call: Call) -> web.Response:
    rows = await _currents(request.app[API].controller)
    return web.json_response({"targets": [target_summary(t, r) for t, r in rows]})


async def show_target(request: web.Request, call: Call) -> web.Response:
    api, name = request.app[API], request.match_info["target"]
    target = api.controller.targets[name]
    rollout = await asyncio.to_thread(api.controller.current, name)
    decisions: list[DecisionRecord] = []
    checks: dict[str, dict[str, Any]] = {}
    if rollout is not None:
        decisions = await asyncio.to_thread(api.store.history, rollout_id=rollout.id)
        for m in await asyncio.to_thread(api.store.measurements, rollout.id):
            check = rollout.policy.checks.get(m["check"])
            checks[m["check"]] = stamped(check_view(check, m, rollout))
    firing = api.controller.inbox.firing_for(name, api.clock.time())
    view = target_summary(target, rollout)
    view["rollout"] = rollout_view(rollout) if rollout else None
    view["decisions"] = [stamped(d) for d in decisions[-RECENT_DECISIONS:]]
    view["alerts"] = [alert_view(a) for a in firing]
    view["checks"] = checks  # the latest measurement of every check of the rollout
    return web.json_response(view)


async def show_history(request: web.Request, call: Call) -> web.Response:
    """The target's decisions, oldest first; ``?rollout=ID`` keeps one rollout's (404 when the
    target has no such rollout), ``?limit=N`` the newest N of those."""
    api, name = request.app[API], request.match_info["target"]
    limit = _history_limit(request.query.get("limit"))
    rollout = request.query.get("rollout")
    if rollout is None:
        decisions = await asyncio.to_thread(api.store.history, target=name)
    else:
        if not 0 < len(rollout) <= MAX_ROLLOUT_ID or not rollout.isprintable():
            raise invalid("rollout", f"expected a rollout id of 1..{MAX_ROLLOUT_ID} characters")
        found = await asyncio.to_thread(api.store.history, rollout_id=rollout)
        decisions = [d for d in found if d["target"] == name]
        if not decisions:  # every rollout has its start decision: none means no such rollout
            raise ApiError(404, "not_found", f"target {name!r} has no rollout {rollout!r}")
    if limit:
        decisions = decisions[-limit:]
    return web.json_response({"target": name, "decisions": [stamped(d) for d in decisions]})


def _history_limit(raw: str | None) -> int:
    """``?limit=N`` of the history: 0 when absent, 422 when not within 1..100000."""
    limit = int(raw) if raw and raw.isascii() and raw.isdigit() and len(raw) <= 6 else 0
    if raw is not None and not 0 < limit <= 100_000:
        raise invalid("limit", "expected an integer within 1..100000")
    return limit


async def audit_log(request: web.Request, call: Call) -> web.Response:
    """A page of the audit log (``api.auditquery``); a read, so not audited itself."""
    try:
        query = read_query(request.query.items(), AUDIT_OUTCOMES)
    except ValueError as exc:  # the message names the parameter
        raise ApiError(422, "invalid", str(exc)) from None
    store = request.app[API].store
    rows = await asyncio.to_thread(lambda: store.audit_log(**query.filters()))
    entries, following = query.page(rows)
    return web.json_response({"entries": [stamped(e) for e in entries], "next": following})


# --------------------------------------------------------------------------- writes


async def start_rollout(request: web.Request, call: Call) -> web.Response:
    name, body = request.match_info["target"], call.body
    image, traffic, policy = body["image"], body.get("traffic"), body.get("policy")
    supersede = bool(body.get("supersede", False))
    call.detail.update(image=image, traffic=traffic, policy=policy)
    if supersede:
        call.detail["supersede"] = True
    controller = request.app[API].controller
    start = controller.start(
        name, image, traffic=traffic, policy=policy, by=call.who.name, supersede=supersede
    )
    rollout = await _call(start, bad_values=True)
    call.detail["rollout"] = rollout.id
    location = {"Location": f"/api/v1/targets/{name}"}
    return web.json_response(rollout_view(rollout), status=201, headers=location)


async def _command(request: web.Request, call: Call, command: Command) -> web.Response:
    name = request.match_info["target"]
    rollout = await _call(request.app[API].controller.command(name, command))
    call.detail["rollout"] = rollout.id
    return web.json_response(rollout_view(rollout))


async def promote(request: web.Request, call: Call) -> web.Response:
    full = bool(call.body.get("full", False))
    call.detail["full"] = full
    kind = CommandKind.PROMOTE_FULL if full else CommandKind.PROMOTE
    return await _command(request, call, Command(kind, by=call.who.name))


async def rollback(request: web.Request, call: Call) -> web.Response:
    reason = str(call.body.get("reason") or "")
    call.detail["reason"] = reason
    command = Command(CommandKind.ROLLBACK, by=call.who.name, reason=reason)
    return await _command(request, call, command)


async def pause(request: web.Request, call: Call) -> web.Response:
    return await _idempotent(request, call, Command(CommandKind.PAUSE, by=call.who.name))


async def resume(request: web.Request, call: Call) -> web.Response:
    return await _idempotent(request, call, Command(CommandKind.RESUME, by=call.who.name))


async def _idempotent(request: web.Request, call: Call, command: Command) -> web.Response:
    """Pause and resume as scripts need them: asking for the state the rollout is already in
    is a 200 saying so (``"noop": true``, ``noop_reason``), not a 409, so a retried or
    repeated ``canaryctl pause`` succeeds. Only the engine's refusal is looked at again, so a
    command that can apply always goes through the engine (and is recorded) as before."""
    try:
        return await _command(request, call, command)
    except ApiError as exc:
        if exc.status != 409:
            raise
        name = request.match_info["target"]
        rollout = await asyncio.to_thread(request.app[API].controller.current, name)
        same = stages.unchanged_by(rollout, command) if rollout is not None else None
        if rollout is None or same is None:
            raise
    call.detail.update(rollout=rollout.id, noop=same)
    return web.json_response({**rollout_view(rollout), "noop": True, "noop_reason": same})


async def set_weight(request: web.Request, call: Call) -> web.Response:
    weight = int(call.body["weight"])
    call.detail["weight"] = weight
    command = Command(CommandKind.SET_WEIGHT, by=call.who.name, weight=weight)
    return await _command(request, call, command)


async def cleanup(request: web.Request, call: Call) -> web.Response:
    name = request.match_info["target"]
    rollout = await _call(request.app[API].controller.cleanup(name, call.who.name))
    call.detail["rollout"] = rollout.id if rollout else None
    view = rollout_view(rollout) if rollout else None
    return web.json_response({"target": name, "rollout": view})
