"""The dashboard's pages as HTTP answers: ``/``, ``/targets/{name}`` and their two assets.

The pages are open (no token), like ``/metrics``: an operator's browser must be able to read
them without JavaScript, and a plain page load cannot send a bearer token. They show rollout
state (phases, weights, check values, decisions and their reasons, alert names), never a
token, a credential or an alert's labels. Acting needs the token, typed into the page and
sent by its script to the JSON API, which checks the role as for any other caller.

What is rendered and how is in ``api.dashboard``; this module is the seam between it and
aiohttp: it asks ``dashboard.gather`` for the facts, the renderers for the markup, and adds
the headers every page carries (``markup.HEADERS``: a Content-Security-Policy that allows
scripts and styles from canaryd only, so text that escaped escaping still could not run).
"""

from __future__ import annotations

from aiohttp import web

from canaryd.adapters.telemetry import Telemetry
from canaryd.api.dashboard import gather
from canaryd.api.dashboard.assets import ASSETS
from canaryd.api.dashboard.index import render_index
from canaryd.api.dashboard.markup import HEADERS
from canaryd.api.dashboard.target import render_target
from canaryd.ports import StateStore
from canaryd.runtime.controller import Controller


def _html(page: str) -> web.Response:
    return web.Response(text=page, content_type="text/html", headers=HEADERS)


async def index(
    controller: Controller, store: StateStore, telemetry: Telemetry, now: float
) -> web.Response:
    """``/``: every configured target."""
    cards = await gather.cards(controller, store, telemetry, now)
    return _html(render_index(cards, ready=controller.ready))


async def target(
    controller: Controller, store: StateStore, telemetry: Telemetry, name: str, now: float
) -> web.Response:
    """``/targets/{name}`` of a configured target."""
    detail = await gather.detail(controller, store, telemetry, name, now)
    return _html(render_target(detail, ready=controller.ready))


def asset(name: str, if_none_match: str | None) -> web.Response:
    """The stylesheet or the script; 304 when the browser's copy is this one."""
    found = ASSETS[name]
    headers = {"ETag": found.etag, "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
    if if_none_match == found.etag:
        return web.Response(status=304, headers=headers)
    return web.Response(body=found.body, content_type=found.content_type, headers=headers)
