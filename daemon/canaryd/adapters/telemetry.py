"""Metrics (SPEC §5.4) and logs: how the runtime's events reach Prometheus and people.

One private ``CollectorRegistry`` per daemon, passed in, never the global one, so tests and
several daemons in one process never share counters. ``Telemetry`` implements the runtime's
``RuntimeEvents`` port: the worker reports what it decided and did, and this module turns that
into gauges, counters, histograms and one canonical structlog line per decision.

Decision reasons are free text for people and are never read here: the ``reason`` label of
``canaryd_decisions_total`` and ``canaryd_rollbacks_total`` comes from the decision's typed
``cause`` through ``REASON_LABELS``. The label values are a stable interface (dashboards
group rollbacks by them):

======================  ============================================================
label                   decisions
======================  ============================================================
``check-failed``        a check failed (hold within ``failure_limit``, or rollback)
``source-errors``       the metrics source could not answer (hold, or rollback)
``no-data``             a check had no data; the stage timer holds
``inconclusive``        ``inconclusive_limit`` reached (pause or rollback)
``too-few-requests``    the stage saw fewer than ``min_requests`` requests
``stage-passed``        a stage passed (next stage, manual gate, promote)
``alert``               a firing alert matched a rule (rollback, pause, observe)
``progress-deadline``   a stage did not pass within its deadline (rollback)
``canary-not-ready``    the canary was not ready within the deadline (rollback)
``router-not-applied``  the router did not apply a stage's weight (rollback)
``split-off``           the canary's measured share of requests is outside tolerance
                        (hold; rollback at the progress deadline)
``manual``              an operator's rollback
``manual-promote``      an operator's promote (one stage, or to 100%)
``cleanup``             an operator's cleanup
``superseded``          a start with another image rolled the rollout back
(the action kind)       every other cause: ``start``, ``pause``, ``resume``, ``observe``,
                        ``ignore``, ``set-weight``, ``stage-started``, ``promote``, ...
======================  ============================================================

These are the codes the regular expressions over the reason text gave before causes were
typed, with two differences that were the text matching's mistakes: a supersede was counted
as ``manual`` (its text began "manual rollback") and a hold on one source error as ``hold``.

Every metric canaryd exports, with its type, labels and meaning, is in ``docs/metrics.md``
(a test scrapes a real daemon and holds the table and the registry to each other).
"""

from __future__ import annotations

import contextlib
import copy
import sys
from collections.abc import Iterable, Sequence
from typing import Any, TextIO

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.gc_collector import GCCollector
from prometheus_client.metrics_core import Metric
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from canaryd import __version__
from canaryd.core import compare, split
from canaryd.core.model import (
    Action,
    ActionKind,
    Cause,
    Effect,
    Measurement,
    Observed,
    Phase,
    Rollout,
)

REASON_LABELS: dict[Cause, str] = {
    Cause.CHECK_FAILED: "check-failed",
    Cause.SOURCE_ERRORS: "source-errors",
    Cause.NO_DATA: "no-data",
    Cause.INCONCLUSIVE: "inconclusive",
    Cause.TOO_FEW_REQUESTS: "too-few-requests",
    Cause.STAGE_PASSED: "stage-passed",
    Cause.ALERT: "alert",
    Cause.PROGRESS_DEADLINE: "progress-deadline",
    Cause.CANARY_NOT_READY: "canary-not-ready",
    Cause.ROUTER_NOT_APPLIED: "router-not-applied",
    Cause.MANUAL: "manual",
    Cause.MANUAL_PROMOTE: "manual-promote",
    Cause.CLEANUP: "cleanup",
    Cause.SUPERSEDED: "superseded",
    Cause.VERIFY_FAILED: "verify-failed",
    Cause.PINNED: "pinned",
    Cause.SPLIT_OFF: "split-off",
}
NOTIFICATION_RESULTS = ("sent", "retried", "failed", "dropped")  # adapters.notify.sender
LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


def reason_label(action: Action) -> str:
    """The ``reason`` label of a decision: its cause's code, else its kind (see the table)."""
    if action.cause is not None and action.cause in REASON_LABELS:
        return REASON_LABELS[action.cause]
    return str(action.kind)


class NoCreatedRegistry(CollectorRegistry):
    """A registry whose scrape has no ``<counter>_created`` / ``<histogram>_created`` series.

    prometheus_client adds a ``_created`` sample (the child's creation time, a Unix timestamp)
    to every counter and histogram child. Prometheus ingests it as one more series per child
    that nobody graphs, and SREs expect a counter to be just ``_total``. The library's switch
    (``disable_created_metrics()`` or ``PROMETHEUS_DISABLE_CREATED_SERIES``) is process-wide:
    it would also change every other registry in the process (the demo service's, a test's,
    an embedding program's). Filtering at collection keeps the change to canaryd's registry.
    """

    def collect(self) -> Iterable[Metric]:
        for family in super().collect():
            if family.type not in ("counter", "histogram", "summary", "gaugehistogram"):
                yield family
                continue
            created = (family.name + "_created", family.name + "_gcreated")
            kept = [s for s in family.samples if s.name not in created]
            if len(kept) == len(family.samples):
                yield family
                continue
            trimmed = copy.copy(family)  # the collector may hand out the same object again
            trimmed.samples = kept
            yield trimmed


def _runtime_collectors(registry: CollectorRegistry) -> None:
    """The standard ``process_*`` and ``python_*`` families, as every Python exporter has them
    (CPU, memory, open files, start time; interpreter version; garbage collections), in
    canaryd's own registry: the library's default instances live in the global registry,
    which canaryd never serves."""
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)


class Telemetry:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = NoCreatedRegistry(auto_describe=True) if registry is None else registry
        r = self.registry
        _runtime_collectors(r)
        self.weight = Gauge(
            "canaryd_rollout_weight", "Canary weight in percent", ["target"], registry=r
        )
        self.stage = Gauge(
            "canaryd_rollout_stage", "Current stage (1-based)", ["target"], registry=r
        )
        self.phase = Gauge(
            "canaryd_rollout_phase",
            "1 for the rollout's current phase",
            ["target", "phase"],
            registry=r,
        )
        self.check_value = Gauge(
            "canaryd_check_value", "Last value of a check", ["target", "check"], registry=r
        )
        self.check_results = Counter(
            "canaryd_check_results",
            "Check verdicts, one per check per evaluation",
            ["target", "check", "result"],
            registry=r,
        )
        self.decisions = Counter(
            "canaryd_decisions", "Decisions taken", ["target", "action", "reason"], registry=r
        )
        self.rollbacks = Counter("canaryd_rollbacks", "Rollbacks", ["target", "reason"], registry=r)
        self.time_to_rollback = Histogram(
            "canaryd_time_to_rollback_seconds",
            "Rollback trigger to router applied",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.alerts_received = Counter(
            "canaryd_alerts_received", "Alerts received", ["status"], registry=r
        )
        self.webhook_requests = Counter(
            "canaryd_webhook_requests", "Webhook requests", ["code"], registry=r
        )
        self.promql_duration = Histogram(
            "canaryd_promql_duration_seconds",
            "PromQL query latency",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.promql_errors = Counter("canaryd_promql_errors", "Failed PromQL queries", registry=r)
        self.router_apply = Histogram(
            "canaryd_router_apply_seconds",
            "Router write latency",
            ["router"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.observed_weight = Gauge(
            "canaryd_observed_weight",
            "Canary share of the stage's requests, in percent, measured from per-side counts",
            ["target"],
            registry=r,
        )
        self.router_weight = Gauge(
            "canaryd_router_weight", "Canary weight the router reports", ["target"], registry=r
        )
        self.leader = Gauge(
            "canaryd_leader",
            "1 while this replica leads (acts on the state), 0 while it follows",
            ["instance"],
            registry=r,
        )
        self.build_info = Gauge("canaryd_build_info", "canaryd version", ["version"], registry=r)
        self.build_info.labels(__version__).set(1)
        self.notifications = Counter(
            "canaryd_notifications",
            "Notifications (notify:) by what became of them",
            ["result"],
            registry=r,
        )
        for result in NOTIFICATION_RESULTS:  # every result at 0 from the start: rate() works
            self.notifications.labels(result)
        # The webhook's hot path: label children resolved once (labels() takes a lock).
        self._webhook_ok = self.webhook_requests.labels("200")
        self._firing = self.alerts_received.labels("firing")
        self._resolved = self.alerts_received.labels("resolved")
        self.log = structlog.get_logger("canaryd")

    def leading(self, instance: str, leading: bool) -> None:
        """This replica (its Lease identity) began (True) or ended (False) leading."""
        self.leader.labels(instance).set(1 if leading else 0)

    def webhook_request(self, status: int) -> None:
        child = self._webhook_ok if status == 200 else self.webhook_requests.labels(str(status))
        child.inc()

    def notified(self, result: str) -> None:
        """A notification was sent, retried, failed or dropped (``adapters.notify``)."""
        self.notifications.labels(result).inc()

    def alerts_arrived(self, firing: int, resolved: int) -> None:
        if firing:
            self._firing.inc(firing)
        if resolved:
            self._resolved.inc(resolved)

    # ---------------------------------------------------------------- RuntimeEvents

    def decided(
        self,
        state: Rollout,
        actions: Sequence[Action],
        measurements: Sequence[Measurement],
        now: float,
    ) -> None:
        target = state.target
        self.weight.labels(target).set(state.weight)
        self.stage.labels(target).set(state.stage + 1)
        for phase in Phase:
            self.phase.labels(target, str(phase)).set(1 if phase is state.phase else 0)
        self._judged(state, measurements)
        self._measured_share(state)
        for action in actions:
            code = reason_label(action)
            self.decisions.labels(target, str(action.kind), code).inc()
            if action.kind is ActionKind.ROLLBACK:
                self.rollbacks.labels(target, code).inc()
            if action.kind is ActionKind.ROLLED_BACK:
                took = action.evidence.get("time_to_rollback")
                if isinstance(took, int | float):
                    self.time_to_rollback.observe(took)
            self.log.info(
                "decision",
                target=target,
                rollout=state.id,
                stage=state.stage + 1,
                phase=str(state.phase),
                weight=state.weight,
                action=str(action.kind),
                cause=None if action.cause is None else str(action.cause),
                reason=action.reason,
            )

    def _judged(self, state: Rollout, measurements: Sequence[Measurement]) -> None:
        """One verdict per measurement: every evaluation of every check counts, whether the
        pass led to a decision or not (a stage of passing evaluations decides nothing until
        its last one). The verdict is the engine's own (``compare.judged``), so it is the one the
        evaluation acted on; a check the policy no longer names is not counted."""
        checks = state.policy.checks
        for m in measurements:
            if m.value is not None:
                self.check_value.labels(state.target, m.check).set(m.value)
            check = checks.get(m.check)
            if check is not None:
                verdict = compare.judged(state, check, m).verdict
                self.check_results.labels(state.target, m.check, str(verdict)).inc()

    def observed(self, state: Rollout, observed: Observed) -> None:
        if observed.weight is not None:
            self.router_weight.labels(state.target).set(observed.weight)

    def _measured_share(self, state: Rollout) -> None:
        """``canaryd_observed_weight``: the share the canary served in the current stage
        (``core.split``), while a stage runs and requests were counted; absent otherwise."""
        seen = split.share(state.split)
        if seen is not None and state.phase in (Phase.PROGRESSING, Phase.PAUSED):
            self.observed_weight.labels(state.target).set(seen)
        else:
            with contextlib.suppress(KeyError):  # not exported: nothing to remove
                self.observed_weight.remove(state.target)

    def applied(self, state: Rollout, effect: Effect, seconds: float, router: str) -> None:
        if effect.weight is not None:
            self.router_apply.labels(router).observe(seconds)
        self.log.debug(
            "effect_applied",
            target=state.target,
            rollout=state.id,
            effect=str(effect.kind),
            weight=effect.weight,
            seconds=round(seconds, 4),
        )

    def effect_failed(self, state: Rollout, effect: Effect, error: Exception) -> None:
        self.log.warning(
            "effect_failed",
            target=state.target,
            rollout=state.id,
            effect=str(effect.kind),
            error=str(error),
        )

    def failed_pass(self, state: Rollout, error: Exception) -> None:
        self.log.warning("pass_failed", target=state.target, rollout=state.id, error=str(error))

    def housekeeping_failed(self, what: str, error: Exception) -> None:
        self.log.warning("housekeeping_failed", what=what, error=str(error), retry="next hour")

    def orphan(self, state: Rollout) -> None:
        self.log.warning(
            "orphan_rollout",
            target=state.target,
            rollout=state.id,
            hint="the target is no longer in the config; the rollout is left as is",
        )

    def finished(self, state: Rollout) -> None:
        self.log.debug("rollout_finished", target=state.target, rollout=state.id)

    def query(self, seconds: float, ok: bool) -> None:
        self.promql_duration.observe(seconds)
        if not ok:
            self.promql_errors.inc()


def configure_logging(
    level: str = "info", json_logs: bool | None = None, stream: TextIO | None = None
) -> None:
    """structlog once per process: JSON off a terminal, the console renderer on one; to
    ``stream`` (default: standard error)."""
    import logging

    out = sys.stderr if stream is None else stream
    as_json = not out.isatty() if json_logs is None else json_logs
    renderer: Any = (
        structlog.processors.JSONRenderer() if as_json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            getattr(logging, level.upper(), logging.INFO)
        ),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=True,
    )
