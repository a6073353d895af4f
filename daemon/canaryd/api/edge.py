"""What crosses the HTTP edge on its way in: error answers and reading request bodies.

Split off ``server`` (the routes) because these are the rules a hostile or unlucky client
meets first, and they read best on a page of their own (what a body's fields may hold is in
``schemas``, checked by ``bodies``):

* **Errors** are always ``{"error": {"code", "message"}}``. Every 503 carries ``Retry-After``
  (``error_response`` adds it), so clients and Alertmanager back off instead of hammering a
  daemon that is loading or whose store cannot write.
* **Bodies** are read with a size limit (413) *and* a time limit (408, and the connection is
  closed): a body that trickles in a byte at a time would otherwise hold a handler, a
  connection and its buffer for as long as the sender likes.
* **Text fields** (``image``, ``policy``, ``reason``) are refused with a 422 naming the field
  when they hold a control character or a lone UTF-16 surrogate (JSON ``"\\udc80"``); the
  request schemas say so (``schemas.text``). Unlike the webhook (``webhook`` makes such text
  safe, since a 4xx drops a whole alert group), an API caller is a person or a script that
  can fix its request, and a refusal tells them what is wrong instead of storing something
  else than what they sent.
* **A policy is named, never a path**: ``policy`` must look like a policy name (letters,
  digits, ``.``, ``_``, ``-``; no ``/`` and no ``..``), so the API can only pick among the
  policies the configuration allows, and no answer ever echoes the content of some file.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

from aiohttp import web

BODY_TIMEOUT = 10.0  # seconds for a whole request body: a 1 MiB one needs far less

CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    409: "conflict",
    413: "payload_too_large",
    422: "invalid",
    503: "unavailable",
}
OUTCOMES = {  # what an audit row says about a request answered with the status
    202: "accepted",
    400: "invalid",
    401: "unauthenticated",
    403: "forbidden",
    404: "not-found",
    408: "timeout",
    409: "rejected",
    413: "too-large",
    422: "invalid",
    499: "abandoned",  # the client went away before its answer (nginx's number for it)
    503: "unavailable",
}
# Every outcome an audit row can have: the statuses' above, "ok" below 500, "error" from 500.
AUDIT_OUTCOMES = frozenset({"ok", "error", *OUTCOMES.values()})
RETRY_AFTER = "1"  # seconds; every 503 says it


class ApiError(Exception):
    """An error answer: HTTP status, a stable machine code and a message for people.

    A status below 400 is an answer that is not an error but still ends the handler early:
    202 for a request that is still running (``extra`` then carries ``target`` and
    ``location``)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: Mapping[str, str] | None = None,
        **extra: object,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = dict(headers or {})
        self.extra = extra  # more fields of the error object, e.g. a 403's required_role

    def response(self) -> web.Response:
        if self.status < 400:
            body = {"status": self.code, "message": self.message, **self.extra}
            return web.json_response(body, status=self.status, headers=self.headers)
        return error_response(self.status, self.code, self.message, self.headers, **self.extra)


def error_response(
    status: int,
    code: str,
    message: str,
    headers: Mapping[str, str] | None = None,
    **extra: object,
) -> web.Response:
    body = {"error": {"code": code, "message": message, **extra}}
    headers = dict(headers or {})
    if status == 503:
        headers.setdefault("Retry-After", RETRY_AFTER)
    response = web.json_response(body, status=status, headers=headers)
    if status == 408:
        response.force_close()  # the rest of a trickling body is not worth waiting for
    return response


def unavailable(message: str, code: str = "unavailable") -> ApiError:
    return ApiError(503, code, message, {"Retry-After": RETRY_AFTER})


def invalid(field: str, message: str) -> ApiError:
    return ApiError(422, "invalid", f"{field}: {message}")


# --------------------------------------------------------------------------- bodies


async def read_body(request: web.Request, limit: int, timeout: float = BODY_TIMEOUT) -> bytes:
    """The whole body: 413 past ``limit`` bytes (the app's ``client_max_size``, which aiohttp
    also enforces while reading a chunked body), 408 if it has not all arrived in ``timeout``."""
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(limit)
    try:
        async with asyncio.timeout(timeout):
            body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise _too_large(limit) from None
    except TimeoutError:
        message = f"body: not received within {timeout:g}s"
        raise ApiError(408, "request_timeout", message, {"Connection": "close"}) from None
    if len(body) > limit:
        raise _too_large(limit)
    return body


def _too_large(limit: int) -> ApiError:
    return ApiError(413, "payload_too_large", f"the body exceeds {limit} bytes")


def decode_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:  # RecursionError: absurdly deep nesting
        raise ApiError(400, "invalid_json", f"body: not valid JSON ({exc})") from None
