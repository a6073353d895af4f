"""Audit rows for refused requests (401, 403), folded so that a flood cannot grow the state.

Every refused request used to be a durable audit row with an fsync: 16 clients without a
token wrote ~1,850 rows a second, forever. Refusals are still all accounted for, but not each
with a row of its own:

* Requests are grouped by ``(remote, who, what, outcome)``. Each group has a token bucket:
  ``burst`` rows at once, then one more every ``every`` seconds. So a person who mistypes a
  token sees every refusal in the audit log, and a flood from one address writes a handful of
  rows, not thousands.
* A request that finds the bucket empty is *folded*: counted in memory. The next row of its
  group carries the count (``detail.count`` = that request plus the folded ones), and a
  periodic ``flush`` writes a row for groups whose folded requests are still waiting, so the
  count reaches the store even when the flood stops. The sum of ``count`` over a group's rows
  is the number of requests refused.
* Memory is bounded: at most ``max_groups`` groups; past that, new addresses share one
  overflow group (remote ``*``). Groups idle long enough to have a full bucket and nothing
  folded are forgotten at each flush.

Plain Python, no I/O and no clock of its own: ``audit`` passes ``now`` and writes the rows.
"""

from __future__ import annotations

from dataclasses import dataclass

Group = tuple[str, str, str, str]  # (remote, who, what, outcome)
OVERFLOW = "*"


@dataclass(slots=True)
class _Bucket:
    tokens: float
    stamp: float
    folded: int = 0


class RefusalFolder:
    """Decides, per refused request, whether it gets a row now or is folded into a later one."""

    def __init__(self, *, burst: int = 5, every: float = 5.0, max_groups: int = 1024) -> None:
        if burst < 1 or every <= 0 or max_groups < 1:
            raise ValueError("burst and max_groups must be at least 1, every positive")
        self.burst, self.every, self.max_groups = burst, every, max_groups
        self._groups: dict[Group, _Bucket] = {}

    def admit(self, group: Group, now: float) -> tuple[Group, int] | None:
        """None: the request is folded (counted). Else the group its row belongs to (the
        overflow group once the table is full) and how many requests the row stands for."""
        bucket = self._groups.get(group)
        if bucket is None:
            if len(self._groups) >= self.max_groups:
                group = (OVERFLOW, *group[1:])
                bucket = self._groups.get(group)
            if bucket is None:
                bucket = self._groups[group] = _Bucket(float(self.burst), now)
        self._refill(bucket, now)
        if bucket.tokens < 1.0:
            bucket.folded += 1
            return None
        bucket.tokens -= 1.0
        count, bucket.folded = 1 + bucket.folded, 0
        return group, count

    def flush(self, now: float, *, everything: bool = False) -> list[tuple[Group, int]]:
        """The groups whose folded requests need a row of their own, with their counts; and
        forget idle groups. ``everything``: at shutdown, whatever is pending."""
        rows: list[tuple[Group, int]] = []
        for group, bucket in list(self._groups.items()):
            self._refill(bucket, now)
            if bucket.folded:
                rows.append((group, bucket.folded))
                bucket.folded = 0
            elif everything or bucket.tokens >= self.burst:
                del self._groups[group]
        return rows

    @property
    def pending(self) -> int:
        """Requests folded and not yet written (for tests and the log)."""
        return sum(b.folded for b in self._groups.values())

    def __len__(self) -> int:
        return len(self._groups)

    def _refill(self, bucket: _Bucket, now: float) -> None:
        if now > bucket.stamp:
            refilled = bucket.tokens + (now - bucket.stamp) / self.every
            bucket.tokens = min(float(self.burst), refilled)
            bucket.stamp = now
