"""The composition root: settings in, a running daemon out (``canaryd serve``).

The only module that knows every concrete adapter. It builds them from the settings, hands
the runtime nothing but ports, and owns the order of start-up and shutdown:

    start:  lock and open the store (refused at once, before anything listens, if another
            canaryd holds it or it is damaged or not ours) →
            under one AsyncExitStack: the Kubernetes client (made on first use), each
            target's router and platform, the Prometheus session → listen (/readyz 503) →
            resume stored rollouts (one reconcile pass each; /readyz 200) → READY=1
            (systemd) → watchdog, state watch (named, guarded tasks)
    stop:   STOPPING=1 → stop listening → cancel workers (their decisions are already
            durable) → close the stack in reverse: the HTTP session, every adapter, the one
            Kubernetes client → close the store

The kinds this build knows are ``KINDS``, the registry tables of ``adapters.routers`` and
``adapters.platforms``; ``load_config`` reads a config against them, for ``check`` and ``serve``
alike, so both accept exactly the same kinds.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import aiohttp
import structlog
from aiohttp import web

from canaryd.adapters import systemd
from canaryd.adapters.kube import KubeClient, KubeClients
from canaryd.adapters.lease import LeaseElector, LeaseTiming, identity
from canaryd.adapters.notify import Announcing, Notifier
from canaryd.adapters.platforms import PLATFORMS, OwnedPlatform, PlatformFactory
from canaryd.adapters.prometheus import PrometheusClient
from canaryd.adapters.routers import ROUTERS, OwnedRouter, RouterFactory
from canaryd.adapters.store.kubernetes import KubeStore
from canaryd.adapters.store.sqlite import SqliteStore
from canaryd.adapters.telemetry import Telemetry
from canaryd.adapters.tracing import TracedEvents, Tracer, trace_fields
from canaryd.adapters.verify import CommandVerifier
from canaryd.api.tls import CertificateReloader
from canaryd.api.webhook import WebhookCredential
from canaryd.config import settings as config_settings
from canaryd.config.kinds import Kind, Kinds, not_built
from canaryd.config.settings import (
    KubernetesState,
    Settings,
    SqliteState,
    Token,
    secret_for_serve,
    tokens_for_serve,
)
from canaryd.config.settings import Target as TargetSettings
from canaryd.core import templates
from canaryd.core.errors import ConfigError, Problem
from canaryd.core.model import Measurement, Policy, Rollout
from canaryd.ports import Platform, RuntimeEvents, StateStore
from canaryd.runtime.controller import Controller, MeasureTarget, Target, TraceFields
from canaryd.runtime.evaluator import Evaluator, template_variables
from canaryd.runtime.leadership import FencedStore, Leadership, Spawn
from canaryd.runtime.supervisor import RESTART, STOP, Supervisor
from canaryd.runtime.worker import Timing

log = structlog.get_logger("canaryd")
ADVERTISE_ENV = "CANARYD_ADVERTISE_URL"  # the API URL a leader writes on its Lease
FOLLOWER_REFRESH = 2.0  # seconds between a follower's reads of the shared state
STATE_WATCH_INTERVAL = 2.0  # seconds between checks that the state is still ours and writable


class WallClock:
    def time(self) -> float:
        return time.time()


STATE_BACKENDS = {"sqlite": "", "kubernetes": ""}
"""Every ``state.backend`` the SPEC names: ``""`` when this build runs it, else what to use
meanwhile (the loader refuses it with that, in ``check`` and ``serve`` alike). ``open_store``
builds each one."""

KINDS = Kinds(platforms=PLATFORMS, routers=ROUTERS, state_backends=STATE_BACKENDS)
"""Every platform and router kind and state backend of this build: what ``check`` and
``serve`` accept."""


def load_config(path: str | Path) -> Settings:
    """The config at ``path``, read against this build's kinds (``ConfigError`` lists problems)."""
    return config_settings.load_config(path, KINDS)


def open_store(settings: Settings) -> SqliteStore | KubeStore:
    """The state store ``settings.state`` names, opened: the SQLite file (locked), or the
    ConfigMaps of ``state.namespace`` on the daemon's cluster (``kubernetes:``), read back.
    Raises ``StateLocked``, ``CorruptState`` or ``StoreUnavailable`` (serve exits on them)."""
    state = settings.state
    if isinstance(state, KubernetesState):
        return KubeStore(state.namespace, settings.kubernetes)
    return SqliteStore(state.path)


def build_router(target: TargetSettings, kube: KubeClient | None = None) -> OwnedRouter:
    """The target's router, from its kind's factory; ``kube``: the daemon's shared client
    (``None``: the router makes and closes its own)."""
    build = cast(RouterFactory | None, _row(target, "router", KINDS.routers).build)
    assert build is not None  # the loader refused a kind without a factory
    return build(target.name, target.router, kube)


def build_platform(target: TargetSettings, kube: KubeClient | None = None) -> OwnedPlatform:
    """The target's platform, from its kind's factory; ``kube``: the daemon's shared client
    (``None``: the platform makes and closes its own)."""
    build = cast(PlatformFactory | None, _row(target, "platform", KINDS.platforms).build)
    assert build is not None  # the loader refused a kind without a factory
    return build(target.name, target.platform, kube)


def _row(target: TargetSettings, role: str, table: Mapping[str, Kind[Any, Any]]) -> Kind[Any, Any]:
    value = target.router if role == "router" else target.platform
    row = table.get(value.kind)
    if row is None:  # settings built by hand, not by the loader
        raise ConfigError(
            [Problem(str(target.name), f"{role}.kind", f"unknown {role} kind {value.kind!r}")]
        )
    return row


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
        fallback = KINDS.state_backends.get(settings.state.backend)
        # settings built by hand, not by the loader (which refuses a backend not built yet)
        if fallback != "" or not isinstance(settings.state, SqliteState | KubernetesState):
            message = not_built("state backend", settings.state.backend, fallback or "")
            raise ConfigError([Problem(str(settings.file), "state.backend", message)])
        self.settings = settings
        self.tls = _tls(settings)  # before anything: a certificate that cannot load exits 2
        self.clock = WallClock()
        self.telemetry = Telemetry()
        self.notifier = _notifier(settings, self.telemetry)
        self.supervisor = Supervisor(on_crash=self._crashed)
        # Before anything else touches the outside world: one state, one actor (the store
        # locks it), and damage or a foreign file is refused before anything listens.
        self.store: StateStore = open_store(settings)
        self._given_platforms = dict(platforms or {})
        self.kube = KubeClient(access=settings.kubernetes)  # the daemon's; made on first use
        self.kubes = KubeClients(self.kube)  # and one per other cluster a target names
        self.identity = identity()  # this process's name in the Lease and canaryd_leader
        # With the kubernetes state: one actor among the replicas, elected on a Lease, and a
        # store that refuses every write once this replica may not act (fencing).
        self.elector: LeaseElector | None = None
        self.leadership: Leadership | None = None
        if isinstance(settings.state, KubernetesState):
            self.elector, self.leadership = self._elect(settings.state)
            # KubeStore reads from what it cached: a new leader, and now and then a
            # follower, reads the cluster afresh (FencedStore.refresh)
            self.store = FencedStore(
                self.store, self.leadership.check, reopen=lambda: open_store(settings)
            )
        self.targets: list[Target] = []  # built in start, under the exit stack
        self._stack = contextlib.AsyncExitStack()
        self.session: aiohttp.ClientSession | None = None
        self.evaluator: Evaluator | None = None
        self._gather = gather
        self._timing = timing
        self.controller: Controller | None = None
        self.runner: web.AppRunner | None = None
        self.port: int | None = None
        self.tracer: Tracer | None = None  # with ``tracing:`` (made in start)

    def _elect(self, state: KubernetesState) -> tuple[LeaseElector, Leadership]:
        timing = LeaseTiming(state.lease_duration, state.renew_deadline, state.retry_period)
        elector = LeaseElector(
            self.kube, state.namespace, state.lease, identity=self.identity, timing=timing
        )
        leadership = Leadership(
            elector,
            spawn=self.supervisor.spawn,
            elected=self._elected,
            deposed=self._deposed,
            changed=lambda leading: self.telemetry.leading(self.identity, leading),
        )
        return elector, leadership

    async def _elected(self, spawn: Spawn) -> None:
        """A term begins: read the state afresh (the last leader wrote since this replica
        last read it), load it and resume every rollout, as after a restart. The term's end
        cancels this wherever it is."""
        assert self.controller is not None and isinstance(self.store, FencedStore)
        while True:
            try:
                await asyncio.to_thread(self.store.refresh, leading=True)
                break
            except Exception as exc:  # the API server away: the lease decides how long
                log.warning("state_reload_failed", identity=self.identity, error=str(exc))
                await asyncio.sleep(1.0)
        await self.controller.load(spawn)
        log.info("leader_ready", identity=self.identity, active=len(self.controller.workers()))

    async def _follow(self) -> None:
        """A follower's reads come from its own copy of the state: read it afresh every few
        seconds (the leader writes meanwhile). Nothing to do while this replica leads."""
        assert self.leadership is not None and isinstance(self.store, FencedStore)
        every = max(FOLLOWER_REFRESH, self.leadership.elector.retry_period)
        while True:
            await asyncio.sleep(every)
            if not self.leadership.leading():
                try:
                    await asyncio.to_thread(self.store.refresh, leading=False)
                except Exception as exc:  # stale reads meanwhile; the next round retries
                    log.warning("follower_refresh_failed", error=str(exc))

    def _deposed(self) -> None:
        """A term ended (its tasks are cancelled): forget what it held in memory."""
        if self.controller is not None:
            self.controller.reset()

    def _crashed(self, name: str, error: BaseException | None) -> None:
        if error is None:
            log.error("service_ended", service=name, hint="a long-lived task returned")
        else:
            log.error("service_crashed", service=name, error=repr(error))

    def _load_policy(self, name: str) -> Policy:
        """A policy a start request names: one the config allows (``LookupError`` otherwise).

        Never a file read: a request must not make the daemon open a path of its choosing.
        """
        return self.settings.api_policy(name)

    async def _build_targets(self) -> None:
        """Each target's router and platform, each closed at stop (reverse order), after which
        the shared Kubernetes client closes: it was pushed first, so it goes last. A platform
        passed in by the caller (tests, the tour) is the caller's to close."""
        stack = self._stack
        stack.push_async_callback(self.kubes.aclose)
        for t in self.settings.targets:
            kube = self.kubes.for_access(t.kube)  # the target's cluster (config.kubeaccess)
            router = build_router(t, kube)
            stack.push_async_callback(router.aclose)
            platform = self._given_platforms.get(t.name)
            deploys = platform is not None or not _row(t, "platform", KINDS.platforms).observe_only
            if platform is None and _row(t, "router", KINDS.routers).deploys:
                platform, deploys = cast(Platform, router), True  # argo-rollouts: Argo deploys
            if platform is None:
                platform = build_platform(t, kube)
                stack.push_async_callback(platform.aclose)
            self.targets.append(
                Target(
                    name=t.name,
                    policy=t.policy,
                    router=router,
                    platform=platform,
                    labels=dict(t.labels),
                    concerns=t.concerns,
                    require_digest=t.supply.require_digest,
                    verify=_verifier(t),
                    routes=not _row(t, "router", KINDS.routers).observe_only,
                    deploys=deploys,
                    kube_context=t.kube.context,
                )
            )

    async def start(self) -> None:
        settings = self.settings
        await self._build_targets()
        self.session = await self._stack.enter_async_context(aiohttp.ClientSession())
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
        self.evaluator = Evaluator(client, gather=self._gather, clock=self.clock.time)
        events, measure, trace = self._tracing(self.evaluator.measure)
        self.controller = Controller(
            self.targets,
            store=self.store,
            measure=measure,
            clock=self.clock,
            events=Announcing(events, self.notifier),
            load_policy=self._load_policy,
            timing=self._timing,
            alert_expiry=settings.alerts.expire_after,
            trace=trace,
            fence=None if self.leadership is None else self.leadership.check,
        )
        # Guards, per task (runtime.supervisor): the evaluator and the state watch hold nothing
        # a restart loses, so they restart with backoff (and stop the daemon if they keep
        # ending); the watchdog pinger stops it at once, because systemd would otherwise kill
        # a daemon that stopped pinging mid-pass instead of letting it stop in order.
        self.supervisor.keep("evaluator", self.evaluator.run, RESTART)
        # Listen first: /healthz answers while the state loads and /readyz says 503 until
        # every stored rollout had its reconcile pass (the API answers 503 meanwhile).
        from canaryd.api.server import make_runner

        self.runner = make_runner(self._http_app())
        await self.runner.setup()
        tls_context = None if self.tls is None else self.tls.context
        site = web.TCPSite(
            self.runner, settings.listen.host, settings.listen.port, ssl_context=tls_context
        )
        await site.start()
        self.port = _bound_port(self.runner)
        if settings.public_url is None:  # links to the pages: where we listen, bound port
            scheme = "http" if self.tls is None else "https"
            self.notifier.base_url = f"{scheme}://{_link_host(settings.listen.host)}:{self.port}"
        if self.notifier.active:  # before any decision: the outboxes drain as they fill
            self.supervisor.keep("notifier", self.notifier.run, RESTART)
        self._watch_certificate()
        if self.leadership is None:  # one actor by the state's lock
            self.telemetry.leading(self.identity, True)
            await self.controller.load(self.supervisor.spawn)
        else:  # one actor among replicas: whoever holds the Lease loads and acts
            assert self.elector is not None
            self.elector.api_url = advertise_url(settings, self.port, self.tls is not None)
            self.telemetry.leading(self.identity, False)
            self.supervisor.keep("leadership", self.leadership.run, RESTART)
            self.supervisor.keep("follower-view", self._follow, RESTART)
        systemd.notify("READY=1")
        interval = systemd.watchdog_interval()
        if interval:
            self.supervisor.keep("watchdog", lambda: _watchdog(interval), STOP)
        self.supervisor.keep("state-watch", lambda: _watch_state(self.store), RESTART)
        log.info(
            "serving",
            listen=f"{settings.listen.host}:{self.port}",
            tls=self.tls is not None,
            targets=len(self.targets),
            active=len(self.controller.workers()),
        )

    def _tracing(
        self, measure: MeasureTarget
    ) -> tuple[RuntimeEvents, MeasureTarget, TraceFields | None]:
        """With ``tracing:``, the events, evaluations and starts that make spans (the
        OpenTelemetry SDK is imported here, and only here); without, the plain ones."""
        tracing = self.settings.tracing
        if tracing is None:
            return self.telemetry, measure, None
        environments = {t.name: tracing.environment for t in self.settings.targets}
        try:
            tracer = Tracer(tracing.traces_url, self.clock, environments, _query_of)
        except ImportError as exc:  # a dependency removed from the environment
            why = (
                f"needs OpenTelemetry ({exc.name}): pip install opentelemetry-sdk "
                "opentelemetry-exporter-otlp-proto-http"
            )
            raise ConfigError([Problem(str(self.settings.file), "tracing", why)]) from exc
        self.tracer = tracer
        clock = self.clock

        async def traced(
            labels: Mapping[str, str], state: Rollout
        ) -> tuple[tuple[Measurement, ...], float | None]:
            started = clock.time()
            result = await measure(labels, state)
            with contextlib.suppress(Exception):  # a span lost, never an evaluation
                tracer.evaluated(state, labels, result[0], started, clock.time())
            return result

        return TracedEvents(self.telemetry, tracer, clock), traced, trace_fields

    def _http_app(self) -> web.Application:
        app = self._api_app()
        if self.tracer is not None:
            from canaryd.api.tracing import request_tracing

            app.middlewares.insert(0, request_tracing(self.tracer))
        return app

    def _api_app(self) -> web.Application:
        from canaryd.api.server import build_app

        assert self.controller is not None
        return build_app(
            self.controller,
            self.store,
            self.telemetry,
            tokens=_tokens(self.settings),
            webhook=_webhook(self.settings),
            clock=self.clock,
            leadership=self.leadership,
        )

    def _watch_certificate(self) -> None:
        """With ``listen_tls``: reload the certificate on SIGHUP and when its files change."""
        tls = self.tls
        if tls is None:
            return
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, tls.reload, "signal")
        self.supervisor.keep("tls-watch", tls.watch, RESTART)

    async def before_stop(self) -> None:
        if self.tls is not None:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        systemd.notify("STOPPING=1")
        log.info("stopping")
        if self.runner is not None:
            await self.runner.cleanup()

    async def after_stop(self) -> None:
        try:
            if self.elector is not None:  # every task has stopped: hand the Lease over now
                await self.elector.release()
            await self._stack.aclose()
        finally:
            await asyncio.to_thread(self.store.close)
            if self.tracer is not None:  # the last spans (the exporter's timeout bounds it)
                await asyncio.to_thread(self.tracer.shutdown)

    async def run(self) -> None:
        await self.supervisor.run(self.start, self.before_stop, self.after_stop)


def _verifier(target: TargetSettings) -> CommandVerifier | None:
    """The target's ``verify:`` commands (SPEC §8), or None: no gate before the first stage."""
    supply = target.supply
    return CommandVerifier(supply.verify, supply.verify_timeout) if supply.verify else None


async def _watchdog(interval: float) -> None:
    while True:
        systemd.notify("WATCHDOG=1")
        await asyncio.sleep(interval)


async def _watch_state(store: StateStore, every: float = STATE_WATCH_INTERVAL) -> None:
    """Ask the store whether it can still write, even when nothing writes: a state file
    deleted or replaced under the daemon is then logged at once (the store logs the change),
    and a failed disk is probed until it recovers. Two ``stat`` calls: fine on the loop."""
    while True:
        store.write_problem()
        await asyncio.sleep(every)


def advertise_url(settings: Settings, port: int | None, tls: bool) -> str:
    """The API URL a leader writes on its Lease for followers to forward writes to:
    ``$CANARYD_ADVERTISE_URL``, else ``state.advertise_url``, else this pod's address
    (``$POD_IP``, set from the downward API) or the listen host, and the bound port."""
    given = os.environ.get(ADVERTISE_ENV) or None
    if given is None and isinstance(settings.state, KubernetesState):
        given = settings.state.advertise_url
    if given is not None:
        return given.rstrip("/")
    host = os.environ.get("POD_IP") or settings.listen.host
    host = _link_host(host)
    return f"{'https' if tls else 'http'}://{host}:{port or settings.listen.port}"


def _bound_port(runner: web.AppRunner) -> int | None:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    return None


def _notifier(settings: Settings, telemetry: Telemetry) -> Notifier:
    """The ``notify:`` channels with their bearer tokens, read as ``check`` checked them."""
    tokens: dict[int, str] = {}
    for i, channel in enumerate(settings.notify):
        if channel.bearer_token_file is not None:
            key = f"notify[{i}].bearer_token_file"
            tokens[i] = _secret_file(settings, key, channel.bearer_token_file)
    return Notifier(
        settings.notify,
        count=telemetry.notified,
        base_url=settings.public_url or f"http://{settings.listen}",
        tokens=tokens,
    )


def _link_host(host: str) -> str:
    """A host a link can name: an address listening on every interface names none."""
    if host in ("0.0.0.0", "::", ""):
        return socket.gethostname()  # set public_url for the name people really use
    return f"[{host}]" if ":" in host else host


def _query_of(state: Rollout, labels: Mapping[str, str], template: str) -> str:
    """A check's query as the evaluator renders it for this one target (for its span)."""
    variables = template_variables(state.policy, {k: [v] for k, v in labels.items()})
    variables.setdefault("target", state.target)
    variables.setdefault("version", state.image)
    return templates.render(template, variables)


def _tls(settings: Settings) -> CertificateReloader | None:
    """The listener's TLS context (``listen_tls``), or None for plain HTTP."""
    if settings.listen_tls is None:
        return None
    return CertificateReloader(settings.file, settings.listen_tls)


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


def steps_problems(settings: Settings) -> list[tuple[str, str]]:
    """(``targets[i].router``, why) for each target whose router checks its steps against the
    stages (argo-rollouts) and finds they differ: ``canaryd check --kubeconfig``."""

    async def ask() -> list[tuple[str, str]]:
        kube = KubeClient()
        found = []
        try:
            for i, t in enumerate(settings.targets):
                router = build_router(t, kube)
                check = getattr(router, "steps_problem", None)
                why = await check([s.weight for s in t.policy.stages]) if check else None
                if why:
                    found.append((f"targets[{i}].router", str(why)))
        finally:
            await kube.aclose()
        return found

    return asyncio.run(ask())
