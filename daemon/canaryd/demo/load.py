"""A bounded load generator for the demo, loopback only.

``python -m canaryd.demo.load --url http://127.0.0.1:8080/ --rps 50 --duration 30
[--header X-Canary-Deploy:canary] [--max-requests N] [--json]`` sends GET requests at a steady
rate through one ``ClientSession`` and prints what came back: requests sent, counts per HTTP
status and per ``X-Version`` response header (which deployment served them).

It is bounded three ways so that it can never turn into a stray flood: it stops after
``duration`` seconds or ``max_requests`` requests (default ``rps * duration``), whichever comes
first; at most ``max_in_flight`` requests are outstanding; and rate, duration and request count
have hard ceilings. It only talks to loopback addresses (``127.0.0.0/8``, ``::1``,
``localhost``) and does not follow redirects, so it cannot be pointed at someone else's service.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import math
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import aiohttp
from yarl import URL

MAX_RPS = 2000.0
MAX_DURATION = 600.0
MAX_REQUESTS = 100_000


class NotLoopback(ValueError):
    """The URL does not point at this machine's loopback interface."""


@dataclass(frozen=True, slots=True)
class Summary:
    """What a run did. ``failures`` counts requests that got no HTTP response, by error type."""

    sent: int
    elapsed: float
    statuses: Mapping[int, int] = field(default_factory=dict)
    versions: Mapping[str, int] = field(default_factory=dict)
    failures: Mapping[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return {
            "sent": self.sent,
            "elapsed": round(self.elapsed, 3),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "versions": dict(sorted(self.versions.items())),
            "failures": dict(sorted(self.failures.items())),
        }

    def render(self) -> str:
        def counts(items: Mapping[int, int] | Mapping[str, int]) -> str:
            return " ".join(f"{k}={v}" for k, v in sorted(items.items())) or "-"

        return "\n".join(
            (
                f"sent: {self.sent} in {self.elapsed:.1f}s",
                f"statuses: {counts(self.statuses)}",
                f"versions: {counts(self.versions)}",
                f"failures: {counts(self.failures)}",
            )
        )


def require_loopback(url: str) -> URL:
    """Return the parsed URL if it is http(s) to a loopback host; raise NotLoopback if not."""
    parsed = URL(url)
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise NotLoopback(f"not an http(s) URL: {url!r}")
    host = parsed.host.strip("[]")
    if host.lower() != "localhost":
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise NotLoopback(
                f"refusing to send load to {host!r}: only loopback addresses "
                "(127.0.0.0/8, ::1, localhost) are allowed"
            )
    return parsed


async def generate(
    url: str,
    rps: float,
    duration: float,
    *,
    headers: Mapping[str, str] | None = None,
    max_requests: int | None = None,
    max_in_flight: int = 64,
    request_timeout: float = 5.0,
) -> Summary:
    """Send GETs to ``url`` at ``rps`` for ``duration`` seconds (or ``max_requests``)."""
    target = require_loopback(url)
    if not 0 < rps <= MAX_RPS:
        raise ValueError(f"rps must be in (0, {MAX_RPS:g}]")
    if not 0 < duration <= MAX_DURATION:
        raise ValueError(f"duration must be in (0, {MAX_DURATION:g}] seconds")
    limit = math.ceil(rps * duration) if max_requests is None else max_requests
    if not 0 < limit <= MAX_REQUESTS:
        raise ValueError(f"the request count must be in (0, {MAX_REQUESTS}]")

    statuses: Counter[int] = Counter()
    versions: Counter[str] = Counter()
    failures: Counter[str] = Counter()
    gate = asyncio.Semaphore(max_in_flight)
    loop = asyncio.get_running_loop()
    timeout = aiohttp.ClientTimeout(total=request_timeout)

    async def one(session: aiohttp.ClientSession) -> None:
        try:
            async with session.get(target, allow_redirects=False) as response:
                await response.read()
                statuses[response.status] += 1
                versions[response.headers.get("X-Version", "-")] += 1
        except (aiohttp.ClientError, TimeoutError) as exc:
            failures[type(exc).__name__] += 1
        finally:
            gate.release()

    started = loop.time()
    deadline = started + duration
    sent = 0
    async with (
        aiohttp.ClientSession(headers=dict(headers or {}), timeout=timeout) as session,
        asyncio.TaskGroup() as group,
    ):
        while sent < limit:
            delay = started + sent / rps - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            await gate.acquire()
            if loop.time() >= deadline:
                gate.release()
                break
            group.create_task(one(session))
            sent += 1
    return Summary(
        sent=sent,
        elapsed=loop.time() - started,
        statuses=dict(statuses),
        versions=dict(versions),
        failures=dict(failures),
    )


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME:VALUE, got {text!r}")
    return name.strip(), value.strip()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m canaryd.demo.load", description=__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--url", required=True, help="loopback URL to GET")
    parser.add_argument("--rps", type=float, default=50.0, help="requests per second")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds to run")
    parser.add_argument("--max-requests", type=int, default=None, help="stop after N requests")
    parser.add_argument(
        "--header", type=_header, action="append", default=[], help="NAME:VALUE, repeatable"
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args(argv)
    try:
        summary = asyncio.run(
            generate(
                args.url,
                args.rps,
                args.duration,
                headers=dict(args.header),
                max_requests=args.max_requests,
            )
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary.as_dict()) if args.json else summary.render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
