"""Notifications (``notify:`` in the config): rollbacks, promotions, pauses and manual gates,
posted as JSON, to Slack or to Alertmanager.

``messages`` says what a decision means to people (pure); ``sender`` delivers it without ever
delaying a decision. ``Announcing`` is how the runtime's events reach both the metrics and the
notifier: the runtime keeps reporting to one ``RuntimeEvents``.
"""

from __future__ import annotations

from collections.abc import Sequence

from canaryd.adapters.notify.sender import RESULTS, Limits, Notifier
from canaryd.core.model import Action, Effect, Measurement, Observed, Rollout
from canaryd.ports import RuntimeEvents

__all__ = ["RESULTS", "Announcing", "Limits", "Notifier"]


class Announcing:
    """``RuntimeEvents`` that reports to ``inner`` (the telemetry) and hands every committed
    decision to ``notifier`` as well."""

    def __init__(self, inner: RuntimeEvents, notifier: Notifier) -> None:
        self.inner, self.notifier = inner, notifier

    def decided(
        self,
        state: Rollout,
        actions: Sequence[Action],
        measurements: Sequence[Measurement],
        now: float,
    ) -> None:
        self.inner.decided(state, actions, measurements, now)
        self.notifier.decided(state, actions, now)

    def observed(self, state: Rollout, observed: Observed) -> None:
        self.inner.observed(state, observed)

    def applied(self, state: Rollout, effect: Effect, seconds: float, router: str) -> None:
        self.inner.applied(state, effect, seconds, router)

    def effect_failed(self, state: Rollout, effect: Effect, error: Exception) -> None:
        self.inner.effect_failed(state, effect, error)

    def failed_pass(self, state: Rollout, error: Exception) -> None:
        self.inner.failed_pass(state, error)

    def orphan(self, state: Rollout) -> None:
        self.inner.orphan(state)

    def finished(self, state: Rollout) -> None:
        self.inner.finished(state)

    def housekeeping_failed(self, what: str, error: Exception) -> None:
        self.inner.housekeeping_failed(what, error)
