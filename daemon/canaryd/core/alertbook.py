"""Which of Alertmanager's alerts are active: one ordering rule for the inbox and the journal.

Alertmanager re-sends every alert of a group on each ``group_interval`` change and each
``repeat_interval`` and retries a failed POST, so the same notification arrives many times,
and a retry may arrive *after* a later one. Arrival order therefore cannot decide; the times
Alertmanager stamps do. Per fingerprint the book keeps the newest instance (``startsAt``):

* an older ``startsAt`` than the one kept is stale and changes nothing;
* a newer ``startsAt`` is a new instance (Prometheus gives an alert that fires again a new
  one), whatever was kept before;
* for the same ``startsAt``, ``resolved`` is final: a late duplicate ``firing`` never
  re-opens it (the bug this module exists for: a resolved freeze alert that came back with
  no end and refused every start, across restarts);
* a ``firing`` alert that Alertmanager stops re-sending expires ``expire_after`` seconds
  after it was last received (Alertmanager re-sends firing alerts every ``repeat_interval``).

The runtime's inbox (``runtime.inbox``) and the store's journal replay (``firing_alerts``)
both go through ``take``, so what is active after a restart is what was active before it.
Pure: times are passed in, nothing is read or written.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from enum import StrEnum

from canaryd.core.model import Alert

_EPS = 0.0005  # startsAt is compared at the key's millisecond precision


class Taken(StrEnum):
    """What one notification meant to the book."""

    NEW = "new"  # a new instance or a resolution: record it, deliver it
    REFRESH = "refresh"  # a repeat of a firing alert last recorded long ago: record, no delivery
    REPEAT = "repeat"  # a repeat recorded recently enough: nothing to do
    STALE = "stale"  # older than what the book holds (or re-fires a resolved one): ignored


@dataclass(frozen=True, slots=True)
class Entry:
    """The newest instance known of one fingerprint.

    ``seen`` is when Alertmanager last sent it (its expiry runs from there), ``recorded``
    when it was last written to the journal (a replay knows only that time, so the inbox
    re-records a repeat once ``recorded`` is older than the refresh interval).
    """

    alert: Alert
    seen: float
    recorded: float

    def active(self, now: float, expire_after: float) -> bool:
        alert = self.alert
        if alert.status != "firing":
            return False
        if alert.ends_at is not None and alert.ends_at <= now:
            return False
        return now - self.seen < expire_after


def refresh_every(expire_after: float) -> float:
    """How often a still-firing alert is re-recorded: often enough that a replay never
    expires an alert Alertmanager kept sending, rarely enough that repeats stay cheap."""
    return expire_after / 4


def take(
    entry: Entry | None, alert: Alert, received: float, expire_after: float
) -> tuple[Entry | None, Taken]:
    """The book's entry for ``alert.fingerprint`` once ``alert`` is received at ``received``."""
    if entry is None:
        return Entry(alert, received, received), Taken.NEW
    kept = entry.alert
    if alert.starts_at < kept.starts_at - _EPS:
        return entry, Taken.STALE
    if alert.starts_at > kept.starts_at + _EPS:
        return Entry(alert, received, received), Taken.NEW
    if kept.status != "firing":
        return entry, Taken.STALE  # resolved is final for this startsAt
    if alert.status != "firing":
        return Entry(alert, received, received), Taken.NEW
    if received - entry.recorded >= refresh_every(expire_after):
        return replace(entry, seen=received, recorded=received), Taken.REFRESH
    return replace(entry, seen=max(entry.seen, received)), Taken.REPEAT


def take_in(
    book: dict[str, Entry], journal: Iterable[tuple[float, Alert]], expire_after: float
) -> list[Alert]:
    """Take ``journal`` (received time, alert) into ``book`` in order; return the news (new
    instances, resolutions) in arrival order. The one replay step: the inbox takes in each
    webhook with it, ``rebuild`` the whole journal, so both reach the same book."""
    news = []
    for received, alert in journal:
        entry, taken = take(book.get(alert.fingerprint), alert, received, expire_after)
        if taken is Taken.NEW:
            book.pop(alert.fingerprint, None)  # re-inserted last: ordered by latest news
            news.append(alert)
        if entry is not None:
            book[alert.fingerprint] = entry
    return news


def rebuild(
    journal: Iterable[tuple[float, Alert]], now: float, expire_after: float
) -> dict[str, Entry]:
    """The book after taking in ``journal`` (received time, alert) in order, without what can
    no longer matter at ``now`` (see ``prune``); latest news last."""
    book: dict[str, Entry] = {}
    take_in(book, journal, expire_after)
    return {
        fp: e
        for fp, e in book.items()
        if e.active(now, expire_after) or now - e.seen < expire_after
    }


def replay(journal: Iterable[tuple[float, Alert]], now: float, expire_after: float) -> list[Alert]:
    """The alerts active at ``now`` after taking in ``journal`` in order, oldest news first."""
    return [
        e.alert for e in rebuild(journal, now, expire_after).values() if e.active(now, expire_after)
    ]


def prune(
    book: Mapping[str, Entry], now: float, expire_after: float, keep: int
) -> dict[str, Entry]:
    """``book`` without the entries that can no longer matter, and at most ``keep`` entries.

    An inactive entry (resolved, ended or expired) is kept for ``expire_after`` after it was
    last seen, to refuse a late duplicate; once forgotten, such a duplicate is active again
    for at most ``expire_after``. Over ``keep``, the least recently seen go first.
    """
    kept = {
        fp: e
        for fp, e in book.items()
        if e.active(now, expire_after) or now - e.seen < expire_after
    }
    if len(kept) <= keep:
        return kept
    newest = sorted(kept.items(), key=lambda item: item[1].seen)[len(kept) - keep :]
    return dict(newest)
