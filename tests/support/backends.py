"""In-process HTTP backends for router tests: each names itself, so a test counts who answered.

``start_backend("canary")`` serves every GET path on 127.0.0.1 (a free port) with the role in
the body and in ``X-Deployment``; ``count(url, n)`` sends ``n`` requests one after another and
tallies that header, which is all a traffic-split test needs to read. Both sides of a proxy are
in the test's own event loop, so there is no process to leak: ``runner.cleanup()`` stops one.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

import aiohttp
from aiohttp import web

ROLE_HEADER = "X-Deployment"


async def start_backend(role: str) -> tuple[web.AppRunner, str]:
    """A backend answering ``role``; its runner (to clean up) and its ``host:port``."""

    async def answer(request: web.Request) -> web.Response:
        return web.Response(text=role, headers={ROLE_HEADER: role})

    app = web.Application()
    app.router.add_get("/{tail:.*}", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    return runner, f"{host}:{port}"


async def count(url: str, n: int, headers: Mapping[str, str] | None = None) -> Counter[str]:
    """``n`` GETs of ``url``/r/<i>, one after another; how many each role answered."""
    seen: Counter[str] = Counter()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        for i in range(n):
            async with session.get(f"{url}/r/{i}", headers=headers) as response:
                assert response.status == 200, await response.text()
                seen[response.headers[ROLE_HEADER]] += 1
    return seen
