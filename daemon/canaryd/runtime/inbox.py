"""The alert inbox: Alertmanager's alerts about configured targets, ordered and expiring.

Alertmanager re-sends a group on every ``group_interval`` change and every ``repeat_interval``,
and retries a failed POST; the same alert therefore arrives many times, sometimes late. Which
notification wins is ``core.alertbook``'s rule (Alertmanager's ``startsAt``, not arrival; a
resolved instance stays resolved; a firing alert no longer re-sent expires), the same rule the
store's journal replay uses, so a restart rebuilds exactly this state.

Which targets an alert concerns is the config's business (``target="<name>"``, the target's
job, or its own matchers); the inbox is handed one predicate per target. The controller
keeps no alert that concerns no configured target (``concerned``): nothing could act on it,
and keeping it would let anyone who can post alerts grow the daemon's memory without bound;
what it keeps is bounded too (``max_entries``, ``alertbook.prune``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from canaryd.core.alertbook import Entry, Taken, prune, take, take_in
from canaryd.core.model import Alert

Concerns = Callable[[Mapping[str, str]], bool]

DEFAULT_EXPIRY = 12 * 3600.0  # settings.alerts.expire_after's default: three repeat_intervals
MAX_ENTRIES = 100_000  # fingerprints kept (active and recently ended); the oldest go first


@dataclass
class Inbox:
    targets: Mapping[str, Concerns]
    expire_after: float = DEFAULT_EXPIRY
    max_entries: int = MAX_ENTRIES
    book: dict[str, Entry] = field(default_factory=dict)

    def concerned(self, alert: Alert) -> bool:
        """Whether any configured target cares: the controller keeps only those."""
        return any(concerns(alert.labels) for concerns in self.targets.values())

    def to_record(self, alerts: Iterable[Alert], now: float) -> list[Alert]:
        """The alerts of a batch the journal must get (news and due refreshes), without taking
        them in: the caller records them durably first, then calls ``receive``."""
        overlay: dict[str, Entry | None] = {}
        out = []
        for alert in alerts:
            fp = alert.fingerprint
            before = overlay[fp] if fp in overlay else self.book.get(fp)
            overlay[fp], taken = take(before, alert, now, self.expire_after)
            if taken in (Taken.NEW, Taken.REFRESH):
                out.append(alert)
        return out

    def receive(self, alerts: Iterable[Alert], now: float = 0.0) -> list[Alert]:
        """Take ``alerts`` in as received at ``now``; return the news (new instances,
        resolutions) in arrival order. (``now`` defaults to the epoch for replays that only
        care about order.)"""
        fresh = take_in(self.book, ((now, alert) for alert in alerts), self.expire_after)
        if len(self.book) > self.max_entries:
            self.book = prune(self.book, now, self.expire_after, self.max_entries)
        return fresh

    def restore(self, book: Iterable[tuple[float, Alert]]) -> None:
        """Rebuild from the store's replay (``StateStore.alert_book``): each fingerprint's
        newest notification with when it was last received, so expiry goes on counting from
        there and a resolved instance stays resolved across a restart."""
        for received, alert in book:
            if self.concerned(alert):
                self.book[alert.fingerprint] = Entry(alert, received, received)

    @property
    def active(self) -> dict[str, Alert]:
        """Fingerprint → alert of every instance still firing now as of the newest
        notification (a view for tests; ``firing_for`` is what the runtime asks)."""
        now = max((e.seen for e in self.book.values()), default=0.0)
        return {fp: e.alert for fp, e in self.book.items() if e.active(now, self.expire_after)}

    def targets_of(self, alert: Alert) -> list[str]:
        return [name for name, concerns in self.targets.items() if concerns(alert.labels)]

    def firing_for(self, target: str, now: float) -> list[Alert]:
        concerns = self.targets.get(target)
        if concerns is None:
            return []
        return [
            e.alert
            for e in self.book.values()
            if e.active(now, self.expire_after) and concerns(e.alert.labels)
        ]
