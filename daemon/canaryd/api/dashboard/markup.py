"""The dashboard's markup helpers: escaping, times, durations and the page shell.

Every piece of outside text (a target's, image's or check's name, a decision's reason, an
alert's name) reaches the page through ``text`` or ``attr``, which escape it; the renderers
build everything else from constants and numbers. As a second guard, the pages are served with
``CSP``: scripts and styles only from canaryd itself, so even a missed escape cannot run a
script. That is also why there is no ``style=`` attribute anywhere (the policy blocks inline
styles): widths are SVG attributes, colours are classes of ``static/dashboard.css``.

Without JavaScript a ``<noscript>`` refresh reloads the page every few seconds; with it, the
script replaces the element ``#live`` in place and the refresh never fires.
"""

from __future__ import annotations

import html
import math
from datetime import UTC, datetime
from urllib.parse import quote

from canaryd import __version__

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
NO_SCRIPT_REFRESH = 5  # seconds between reloads of a page read without JavaScript
DASH = "&ndash;"


def text(value: object) -> str:
    """``value`` as escaped text for an element's content."""
    return html.escape(str(value), quote=False)


def attr(value: object) -> str:
    """``value`` escaped for a double-quoted attribute."""
    return html.escape(str(value), quote=True)


def target_href(name: str) -> str:
    """The link to a target's page (names are validated by the config, quoted all the same)."""
    return "/targets/" + quote(name, safe="")


def when(t: float | None) -> str:
    """An epoch time as RFC 3339 in UTC to the second, inside a ``<time>`` element."""
    if t is None or not math.isfinite(t):
        return DASH
    stamp = datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f'<time datetime="{stamp}">{stamp}</time>'


def span(seconds: float | None) -> str:
    """A duration as people say it: ``45s``, ``2m 05s``, ``1h 02m``."""
    if seconds is None or not math.isfinite(seconds):
        return DASH
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s % 3600 // 60:02d}m"


def number(value: float | None) -> str:
    """A check's value: six significant digits, ``no data`` for None."""
    if value is None:
        return "no data"
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return f"{value:.6g}"


def page(title: str, body: str, *, ready: bool, target: str | None = None) -> str:
    """A whole page: the head (stylesheet, script, the no-script refresh) around ``body``.

    ``data-target`` tells the script which target the actions address (empty on ``/``)."""
    state = "ready" if ready else "loading state"
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{text(title)}</title>"
        f'<noscript><meta http-equiv="refresh" content="{NO_SCRIPT_REFRESH}"></noscript>'
        '<link rel="icon" href="data:,"><link rel="stylesheet" href="/ui/dashboard.css">'
        '<script src="/ui/dashboard.js" defer></script></head>\n'
        f'<body data-target="{attr(target or "")}">'
        '<header><a class="home" href="/">canaryd</a>'
        f"<small>version {text(__version__)} &middot; {state} &middot; "
        '<a href="/api/v1/openapi.json">API</a> &middot; <a href="/metrics">metrics</a>'
        ' &middot; <span id="updated">server-rendered</span></small></header>\n'
        f"{body}\n</body></html>\n"
    )
