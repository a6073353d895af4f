"""A follower's writes go to the leader (several replicas, ``state: {backend: kubernetes}``).

Only the replica holding the Lease acts (``runtime.leadership``), but a Service sends requests
to any ready replica, and Alertmanager's webhook must not be lost because it reached a
follower. So a follower answers reads itself (from the shared store) and **forwards every
state-changing request** (POST, PUT, PATCH, DELETE, the webhook included) to the leader's API
URL, which the leader writes on the Lease (annotation ``canaryd.io/api-url``):

- the same method, path and query, body, ``Authorization`` and ``Content-Type``; the leader
  authenticates, audits and answers as if it had been asked directly, and its status, body
  and ``Content-Type``/``Location``/``Retry-After``/``WWW-Authenticate`` come back as they are;
- ``X-Canaryd-Forwarded: <follower identity>`` marks a forwarded request; a replica that gets
  one and does not lead answers 503 instead of forwarding again (two replicas that each think
  the other leads never bounce a request between them);
- bounded: ``FORWARD_TIMEOUT`` covers the leader's own bounded waits (a command waits at most
  ``REQUEST_WAIT``, a body ``BODY_TIMEOUT``);
- no leader known, none reachable, or one that advertised no URL: 503 ``not_leader`` with
  ``Retry-After``, so Alertmanager and ``canaryctl`` retry, and nothing is half-done.

The body is read here with the same size and time limits as everywhere (413, 408).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import structlog
from aiohttp import web

from canaryd.api.edge import read_body, unavailable
from canaryd.api.handlers import API

FORWARDED = "X-Canaryd-Forwarded"
FORWARD_TIMEOUT = 30.0  # seconds: the leader's command wait (10 s) and body wait (10 s) fit
WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
SENT = ("Authorization", "Content-Type")
PASSED_BACK = ("Content-Type", "Location", "Retry-After", "WWW-Authenticate")
SESSION = web.AppKey("canaryd_forward_session", aiohttp.ClientSession)

log = structlog.get_logger("canaryd.http")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def session(app: web.Application) -> AsyncIterator[None]:
    """The app's client session for forwarding (``cleanup_ctx``): made and closed with it."""
    async with aiohttp.ClientSession() as forwarding:
        app[SESSION] = forwarding
        yield


@web.middleware
async def forward_writes(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A write that reaches a follower is the leader's to answer (see the module doc)."""
    leadership = request.app[API].leadership
    if leadership is None or request.method not in WRITES or leadership.leading():
        return await handler(request)
    if request.headers.get(FORWARDED):
        raise unavailable(
            f"this replica ({leadership.identity}) does not lead and the request was already "
            f"forwarded by {request.headers[FORWARDED]}; retry shortly",
            "not_leader",
        )
    leader = leadership.leader()
    if leader is None or leader.identity == leadership.identity:
        raise unavailable(
            "no replica leads just now (the lease is being taken over); retry shortly",
            "not_leader",
        )
    if not leader.url:
        raise unavailable(
            f"the leader {leader.identity} advertises no API URL to forward to; retry shortly",
            "not_leader",
        )
    api = request.app[API]
    body = await read_body(request, api.max_body, api.body_timeout)
    headers = {k: request.headers[k] for k in SENT if k in request.headers}
    headers[FORWARDED] = leadership.identity
    url = leader.url + request.path_qs
    try:
        async with request.app[SESSION].request(
            request.method,
            url,
            data=body,
            headers=headers,
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=FORWARD_TIMEOUT),
        ) as answer:
            payload = await answer.read()
            back = {k: answer.headers[k] for k in PASSED_BACK if k in answer.headers}
            status = answer.status
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        log.warning("forward_failed", leader=leader.identity, url=url, error=repr(exc))
        raise unavailable(
            f"the leader {leader.identity} did not answer at {leader.url} "
            f"({type(exc).__name__}); retry shortly",
            "not_leader",
        ) from None
    return web.Response(status=status, body=payload, headers=back)
