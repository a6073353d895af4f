"""API requests joined to their caller's trace (``tracing:`` on, a ``traceparent`` sent).

A request to ``/api/v1/...`` that carries a valid W3C ``traceparent`` gets a server span, a
child of the caller's span, named by its route (``POST /api/v1/targets/{target}/rollouts``). A
rollout that request starts is parented under it (``adapters.tracing.INCOMING``, read by the
controller's start), so a CI pipeline's trace shows the deploy it asked for; every other request
about a target links to the trace of the target's rollout under way. Without a ``traceparent``
nothing is made: a request nobody traces would be a trace nobody looks at.

The header is hostile input: anything but a well-formed version-00 value is ignored
(``parse_traceparent``). The middleware is installed only when tracing is on.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from canaryd.adapters.tracing import INCOMING, Tracer, parse_traceparent
from canaryd.api.handlers import API
from canaryd.core.model import Rollout

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def request_tracing(tracer: Tracer) -> Middleware:
    """The middleware (outermost: it sees the status the error middleware answered)."""

    @web.middleware
    async def traced(request: web.Request, handler: Handler) -> web.StreamResponse:
        caller = parse_traceparent(request.headers.get("traceparent"))
        if caller is None or not request.path.startswith("/api/"):
            return await handler(request)
        span = tracer.request(request.method, _route(request), caller)
        token = INCOMING.set(span.ids)
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            INCOMING.reset(token)
            span.finish(status, _rollout(request))

    return traced


def _route(request: web.Request) -> str:
    """The route's template (never the path: names in it are the caller's, unbounded)."""
    info = request.match_info
    resource = info.route.resource if info.route is not None else None
    return resource.canonical if resource is not None else "(no route)"


def _rollout(request: web.Request) -> Rollout | None:
    """The target's rollout under way, if any (its worker's state: no store read here)."""
    name = request.match_info.get("target")
    if name is None:
        return None
    worker = request.app[API].controller.workers().get(name)
    return None if worker is None else worker.state
