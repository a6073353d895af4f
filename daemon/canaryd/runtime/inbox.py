"""The alert inbox: Alertmanager's alerts, de-duplicated, matched to targets, expiring at endsAt.

Alertmanager re-sends a group on every ``group_interval`` change and every ``repeat_interval``,
and retries a failed POST; the same alert therefore arrives many times. An alert is new only if
its (fingerprint, status, startsAt) was not seen before. The active set is keyed by fingerprint
and an entry leaves it when a ``resolved`` notification arrives or its ``endsAt`` passes (a
firing alert carries Go's zero time as endsAt, i.e. "not yet known"; Alertmanager then keeps
re-sending it before its ``resolve_timeout``).

Which targets an alert concerns is the config's business (``target="<name>"``, the target's
job, or its own matchers); the inbox is handed one predicate per target.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from canaryd.core.model import Alert

Concerns = Callable[[Mapping[str, str]], bool]


@dataclass
class Inbox:
    targets: Mapping[str, Concerns]
    seen: set[str] = field(default_factory=set)
    active: dict[str, Alert] = field(default_factory=dict)
    max_seen: int = 100_000

    def receive(self, alerts: Iterable[Alert]) -> list[Alert]:
        """Record ``alerts``; return the ones not seen before, in arrival order."""
        fresh = []
        for alert in alerts:
            if alert.key in self.seen:
                continue
            if len(self.seen) >= self.max_seen:
                self.seen.clear()  # bounded: a forgotten key costs one idempotent re-delivery
            self.seen.add(alert.key)
            fresh.append(alert)
            if alert.status == "firing":
                self.active[alert.fingerprint] = alert
            else:
                self.active.pop(alert.fingerprint, None)
        return fresh

    def expire(self, now: float) -> None:
        gone = [fp for fp, a in self.active.items() if a.ends_at is not None and a.ends_at <= now]
        for fp in gone:
            del self.active[fp]

    def targets_of(self, alert: Alert) -> list[str]:
        return [name for name, concerns in self.targets.items() if concerns(alert.labels)]

    def firing_for(self, target: str, now: float) -> list[Alert]:
        self.expire(now)
        concerns = self.targets.get(target)
        if concerns is None:
            return []
        return [a for a in self.active.values() if concerns(a.labels)]
