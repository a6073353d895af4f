"""The composition root: settings in, a running daemon out (``canaryd serve``).

The only module that knows every concrete adapter. It builds them from the settings, hands
the runtime nothing but ports, and owns the order of start-up and shutdown:

    start:  lock and open the store (refused at once, before anything listens, if another
            canaryd holds it or it is damaged or not ours) →
            Prometheus session → listen (/readyz 503) → resume stored rollouts (one reconcile
            pass each; /readyz 200) → READY=1 (systemd) → watchdog, state watch
    stop:   STOPPING=1 → stop listening → cancel workers (their decisions are already
            durable) → close the HTTP session → close the store
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from pathlib import Path

import aiohttp
import structlog
from aiohttp import web

from canaryd.adapters import systemd
from canaryd.adapters.platforms.docker import DockerEnginePlatform
from canaryd.adapters.platforms.kubernetes import KubernetesDeploymentPlatform
from canaryd.adapters.platforms.none import NonePlatform
from canaryd.adapters.prometheus import PrometheusClient
from canaryd.adapters.routers.gateway_api import GatewayApiHTTPRouteRouter
from canaryd.adapters.routers.nginx import NginxFileRouter
from canaryd.adapters.routers.noop import NoopRouter
from canaryd.adapters.routers.traefik_file import TraefikFileProviderRouter
from canaryd.adapters.store.sqlite import SqliteStore
from canaryd.adapters.telemetry import Telemetry
from canaryd.api.webhook import WebhookCredential
from canaryd.config.settings import Settings, Token, secret_for_serve, tokens_for_serve
from canaryd.config.settings import Target as TargetSettings
from canaryd.core.errors import ConfigError, Problem
from canaryd.core.model import Policy
from canaryd.ports import Platform, Router
from canaryd.runtime.controller import Controller, Target
from canaryd.runtime.evaluator import Evaluator
from canaryd.runtime.supervisor import Supervisor
from canaryd.runtime.worker import Timing

log = structlog.get_logger("canaryd")
STATE_WATCH_INTERVAL = 2.0  # seconds between checks that the state is still ours and writable


class WallClock:
    def time(self) -> float:
        return time.time()


def build_router(target: TargetSettings) -> Router:
    if target.router.kind == "noop":
        return NoopRouter()
    if target.router.kind == "nginx":
        r = target.router
        return NginxFileRouter(
            target.name,
            r.path,
            stable_servers=r.stable_servers,
            canary_servers=r.canary_servers,
            test_command=r.test_command,
            reload_command=r.reload_command,
            upstream=r.upstream,
        )
    if target.router.kind == "traefik-file":
        t = target.router
        return TraefikFileProviderRouter(
            target.name,
            t.path,
            service=t.service,
            stable_service=t.stable_service,
            canary_service=t.canary_service,
            rule=t.rule,
            entry_points=t.entry_points,
        )
    if target.router.kind == "gateway-api":
        g = target.router
        return GatewayApiHTTPRouteRouter(
            g.name, g.stable_service, g.canary_service, namespace=g.namespace, port=g.port
        )
    raise ConfigError(
        [
            Problem(
                str(target.name),
                "router.kind",
                f"router {target.router.kind!r} is not available in this build "
                "yet; use noop (observe-only) for now",
            )
        ]
    )


def build_platform(target: TargetSettings) -> Platform:
    if target.platform.kind == "none":
        return NonePlatform()
    if target.platform.kind == "docker":
        p = target.platform
        return DockerEnginePlatform(
            target.name,
            service=p.service,
            labels=p.labels,
            project=p.project,
            host=p.host,
            probe_path=p.probe_path,
            probe_port=p.probe_port,
            canary_ports=p.canary_ports,
        )
    if target.platform.kind == "kubernetes":
        k = target.platform
        return KubernetesDeploymentPlatform(
            k.deployment, namespace=k.namespace, container=k.container
        )
    raise ConfigError(
        [
            Problem(
                str(target.name),
                "platform.kind",
                f"platform {target.platform.kind!r} is not available in this "
                "build yet; use kubernetes, docker or none",
            )
        ]
    )


class Daemon:
    """Everything ``canaryd serve`` runs, built from settings; tests drive it directly."""

    def __init__(
        self,
        settings: Settings,
        *,
        timing: Timing | None = None,
        gather: float = 0.25,
        platforms: Mapping[str, Platform] | None = None,  # by target: instead of the config's
    ) -> None:
        if settings.state.backend != "sqlite":
            raise ConfigError(
                [
                    Problem(
                        str(settings.file),
                        "state.backend",
                        "only the sqlite backend is available in this build",
                    )
                ]
            )
        self.settings = settings
        self.clock = WallClock()
        self.telemetry = Telemetry()
        self.supervisor = Supervisor(on_crash=self._crashed)
        # Before anything else touches the outside world: one state, one actor (the store
        # locks it), and damage or a foreign file is refused before anything listens.
        self.store = SqliteStore(settings.state.path)
        self.targets = [
            Target(
                name=t.name,
                policy=t.policy,
                router=build_router(t),
                platform=(platforms or {}).get(t.name) or build_platform(t),
                labels=dict(t.labels),
                concerns=t.concerns,
            )
            for t in settings.targets
        ]
        self.session: aiohttp.ClientSession | None = None
        self.evaluator: Evaluator | None = None
        self._gather = gather
        self._timing = timing
        self.controller: Controller | None = None
        self.runner: web.AppRunner | None = None
        self.port: int | None = None

    def _crashed(self, name: str, error: BaseException) -> None:
        log.error("service_crashed", service=name, error=repr(error))

    def _load_policy(self, name: str) -> Policy:
        """A policy a start request names: one the config allows (``LookupError`` otherwise).

        Never a file read: a request must not make the daemon open a path of its choosing.
        """
        return self.settings.api_policy(name)

    async def start(self) -> None:
        settings = self.settings
        self.session = aiohttp.ClientSession()
        client = PrometheusClient(
            self.session,
            settings.prometheus.url,
            settings.prometheus.timeout,
            # A batched query answers one series per target, which the client classifies as
            # "ambiguous": that is a normal answer here, not a failed query.
            on_query=lambda s, outcome: self.telemetry.query(
                s, outcome not in ("error", "unavailable")
            ),
        )
        self.evaluator = Evaluator(client, gather=self._gather)
        self.controller = Controller(
            self.targets,
            store=self.store,
            measure=self.evaluator.measure,
            clock=self.clock,
            events=self.telemetry,
            load_policy=self._load_policy,
            timing=self._timing,
            alert_expiry=settings.alerts.expire_after,
        )
        self.supervisor.keep("evaluator", self.evaluator.run)
        # Listen first: /healthz answers while the state loads and /readyz says 503 until
        # every stored rollout had its reconcile pass (the API answers 503 meanwhile).
        from canaryd.api.server import make_runner

        self.runner = make_runner(self._http_app())
        await self.runner.setup()
        site = web.TCPSite(self.runner, settings.listen.host, settings.listen.port)
        await site.start()
        self.port = _bound_port(self.runner)
        await self.controller.load(self.supervisor.spawn)
        systemd.notify("READY=1")
        interval = systemd.watchdog_interval()
        if interval:
            self.supervisor.keep("watchdog", lambda: _watchdog(interval))
        self.supervisor.keep("state-watch", lambda: _watch_state(self.store))
        log.info(
            "serving",
            listen=f"{settings.listen.host}:{self.port}",
            targets=len(self.targets),
            active=len(self.controller.workers()),
        )

    def _http_app(self) -> web.Application:
        from canaryd.api.server import build_app

        assert self.controller is not None
        return build_app(
            self.controller,
            self.store,
            self.telemetry,
            tokens=_tokens(self.settings),
            webhook=_webhook(self.settings),
            clock=self.clock,
        )

    async def before_stop(self) -> None:
        systemd.notify("STOPPING=1")
        log.info("stopping")
        if self.runner is not None:
            await self.runner.cleanup()

    async def after_stop(self) -> None:
        if self.session is not None:
            await self.session.close()
        await asyncio.to_thread(self.store.close)

    async def run(self) -> None:
        await self.supervisor.run(self.start, self.before_stop, self.after_stop)


async def _watchdog(interval: float) -> None:
    while True:
        systemd.notify("WATCHDOG=1")
        await asyncio.sleep(interval)


async def _watch_state(store: SqliteStore, every: float = STATE_WATCH_INTERVAL) -> None:
    """Ask the store whether it can still write, even when nothing writes: a state file
    deleted or replaced under the daemon is then logged at once (the store logs the change),
    and a failed disk is probed until it recovers. Two ``stat`` calls: fine on the loop."""
    while True:
        store.write_problem()
        await asyncio.sleep(every)


def _bound_port(runner: web.AppRunner) -> int | None:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    return None


def _tokens(settings: Settings) -> tuple[Token, ...]:
    path = settings.auth.tokens_file
    if path is None:
        log.warning("no_api_tokens", hint="auth.tokens_file is not set: every API call is refused")
        return ()
    return tokens_for_serve(settings.file, "auth.tokens_file", path)


def _secret_file(settings: Settings, key: str, path: Path) -> str:
    """The secret in ``path`` under the rules ``canaryd check`` applied (never empty)."""
    return secret_for_serve(settings.file, key, path)


def _webhook(settings: Settings) -> WebhookCredential | None:
    hook = settings.auth.webhook
    if hook is None:
        log.warning("webhook_unauthenticated", hint="set auth.webhook to require a credential")
        return None
    if hook.bearer_token_file is not None:
        token = _secret_file(settings, "auth.webhook.bearer_token_file", hook.bearer_token_file)
        return WebhookCredential(token=token)
    if hook.basic is not None:
        password = _secret_file(
            settings, "auth.webhook.basic.password_file", hook.basic.password_file
        )
        return WebhookCredential(username=hook.basic.username, password=password)
    return None


async def serve(settings: Settings) -> int:
    daemon = Daemon(settings)
    await daemon.run()
    return 0
