"""Deliver notifications without ever holding up a decision.

The runtime reports each committed decision (``RuntimeEvents.decided``, on the event loop,
after the decision is durable). ``Notifier.decided`` only turns the news into ``Notice`` values
and appends them to each channel's outbox: no I/O, no ``await``, so a receiver that is slow,
down or hanging cannot delay a rollback by a microsecond. Each channel has one sender task of
its own (``run``: a task group, owned by the daemon's supervisor), so a hanging receiver holds
up only its own channel, and one channel's notifications arrive in the order they happened.

Bounds, so a dead receiver costs nothing but its own notifications:

- the outbox holds ``queue_size`` notices; when full the oldest is dropped and counted
  (``result="dropped"``): the newest news is the one worth sending;
- each attempt is bounded by ``timeout`` (connect, send and read together);
- a failed attempt (connection error, timeout, HTTP 5xx or 429) is retried after
  ``backoff`` seconds, doubled each time up to ``backoff_cap``, at most ``attempts`` tries in
  all (each retry counted ``retried``); then it is ``failed``. Another 4xx is ``failed`` at
  once: sending the same request again would be refused again.

What is still in an outbox when the daemon stops is logged (``notifications_unsent``) and
lost: the decisions themselves are in the history.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import aiohttp
import structlog

from canaryd import __version__
from canaryd.adapters.notify.messages import Notice, body, notices
from canaryd.config.notify import Channel
from canaryd.core.model import Action, Rollout

QUEUE_SIZE = 100  # notices waiting per channel
TIMEOUT = 10.0  # seconds per attempt
ATTEMPTS = 5  # tries per notice: 1 + 4 retries
BACKOFF = 1.0  # seconds before the first retry, doubled each time
BACKOFF_CAP = 30.0
RESULTS = ("sent", "retried", "failed", "dropped")

log = structlog.get_logger("canaryd")

Count = Callable[[str], None]  # one of RESULTS happened (the metrics counter)


@dataclass(frozen=True, slots=True)
class Limits:
    queue_size: int = QUEUE_SIZE
    timeout: float = TIMEOUT
    attempts: int = ATTEMPTS
    backoff: float = BACKOFF
    backoff_cap: float = BACKOFF_CAP

    def delay(self, retry: int) -> float:
        """Seconds before retry number ``retry`` (0-based): exponential, capped."""
        return float(min(self.backoff_cap, self.backoff * 2**retry))


@dataclass(eq=False)
class Outbox:
    """One channel: its notices waiting, and what wakes its sender."""

    channel: Channel
    token: str | None
    index: int = 0  # its place in ``notify:``
    waiting: collections.deque[Notice] = field(default_factory=collections.deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def name(self) -> str:
        """How logs name the channel: its key and host, never the URL's path (a secret)."""
        return f"notify[{self.index}] {self.channel.shown}"

    @property
    def post_url(self) -> str:
        """Where to POST: Alertmanager's alerts API under a base URL, else the URL as given."""
        url = self.channel.url
        if self.channel.format == "alertmanager" and not url.rstrip("/").endswith("/api/v2/alerts"):
            return url.rstrip("/") + "/api/v2/alerts"
        return url


class Notifier:
    """The ``notify:`` channels of a daemon. ``tokens``: channel index → bearer token (read
    from its ``bearer_token_file`` under the secret-file rules); ``count``: the metric."""

    def __init__(
        self,
        channels: Sequence[Channel],
        *,
        count: Count,
        base_url: str,
        tokens: Mapping[int, str] | None = None,
        limits: Limits | None = None,
    ) -> None:
        given = tokens or {}
        self.outboxes = [Outbox(c, given.get(i), i) for i, c in enumerate(channels)]
        self.base_url = base_url  # where people open canaryd: the links' base
        self.limits = limits or Limits()
        self._count = count

    @property
    def active(self) -> bool:
        return bool(self.outboxes)

    # ---------------------------------------------------------------- the runtime's side

    def decided(self, state: Rollout, actions: Sequence[Action], now: float) -> None:
        """Queue the news of a committed decision; never blocks, never raises to the caller."""
        if not self.outboxes:
            return
        try:
            news = notices(state, tuple(actions), now, self.base_url)
        except Exception as exc:  # a notification must never cost a decision
            log.error("notification_not_built", target=state.target, error=repr(exc))
            return
        for notice in news:
            for outbox in self.outboxes:
                if notice.event in outbox.channel.events:
                    self._put(outbox, notice)

    def _put(self, outbox: Outbox, notice: Notice) -> None:
        if len(outbox.waiting) >= self.limits.queue_size:
            lost = outbox.waiting.popleft()
            self._count("dropped")
            log.warning(
                "notification_dropped",
                channel=outbox.name,
                target=lost.target,
                notice=lost.event,
                rollout=lost.rollout_id,
                hint=f"{self.limits.queue_size} notifications already wait for this receiver",
            )
        outbox.waiting.append(notice)
        outbox.wake.set()

    # ---------------------------------------------------------------- the senders

    async def run(self) -> None:
        """Eternal: one sender per channel, over one HTTP session."""
        timeout = aiohttp.ClientTimeout(total=self.limits.timeout)
        headers = {"User-Agent": f"canaryd/{__version__}"}
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout, headers=headers) as session,
                asyncio.TaskGroup() as group,
            ):
                for outbox in self.outboxes:
                    group.create_task(self._drain(outbox, session))
        finally:
            unsent = sum(len(o.waiting) for o in self.outboxes)
            if unsent:
                log.warning("notifications_unsent", count=unsent, hint="the daemon stopped")

    async def _drain(self, outbox: Outbox, session: aiohttp.ClientSession) -> None:
        while True:
            while not outbox.waiting:
                outbox.wake.clear()
                await outbox.wake.wait()
            notice = outbox.waiting.popleft()
            await self._deliver(outbox, notice, session)

    async def _deliver(
        self, outbox: Outbox, notice: Notice, session: aiohttp.ClientSession
    ) -> None:
        limits = self.limits
        for attempt in range(limits.attempts):
            problem, retry = await self._attempt(outbox, notice, session)
            if problem is None:
                self._count("sent")
                log.info(
                    "notification_sent",
                    channel=outbox.name,
                    target=notice.target,
                    notice=notice.event,
                    rollout=notice.rollout_id,
                    attempts=attempt + 1,
                )
                return
            if not retry or attempt + 1 >= limits.attempts:
                break
            self._count("retried")
            await asyncio.sleep(limits.delay(attempt))
        self._count("failed")
        log.warning(
            "notification_failed",
            channel=outbox.name,
            target=notice.target,
            notice=notice.event,
            rollout=notice.rollout_id,
            error=problem,
        )

    async def _attempt(
        self, outbox: Outbox, notice: Notice, session: aiohttp.ClientSession
    ) -> tuple[str | None, bool]:
        """One POST: (None, _) once delivered, else (what went wrong, worth retrying)."""
        headers = {"Content-Type": "application/json"}
        if outbox.token is not None:
            headers["Authorization"] = f"Bearer {outbox.token}"
        payload = body(outbox.channel.format, notice)
        try:
            async with (
                asyncio.timeout(self.limits.timeout),
                session.post(outbox.post_url, json=payload, headers=headers) as response,
            ):
                await response.content.read(4096)  # a bounded look, then the connection goes
                status = response.status
        except TimeoutError:
            return f"no answer within {self.limits.timeout:g}s", True
        except (aiohttp.ClientError, OSError) as exc:
            said = f"{type(exc).__name__}: {exc}"  # never the URL's path: it may be a secret
            return said.replace(outbox.channel.url, outbox.channel.shown), True
        if 200 <= status < 300:
            return None, False
        return f"HTTP {status}", status == 429 or status >= 500
