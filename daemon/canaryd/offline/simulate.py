"""``canaryctl simulate``: the real decision engine on a virtual clock, fed by a sample timeline.

The timeline is JSON lines (SPEC §5.1)::

    {"t": 0, "check": "success-rate", "value": 0.999}    # value from t on; null = no data
    {"t": 0, "check": "latency-p95", "error": "timeout"}  # (extension) the source errs from t on
    {"t": 0, "requests": 20}                             # canary requests per second from t on
    {"t": 100, "alert": {"status": "firing", "labels": {"severity": "critical"}}}
    {"t": 900, "command": "promote"}                     # (extension) an operator command
    {"t": 60, "check": "errors-vs-stable",               # a compare check's counters, per side,
     "canary": {"requests": 600, "errors": 3},           # cumulative since the rollout started
     "stable": {"requests": 5400, "errors": 27}}
    {"t": 60, "check": "latency-vs-stable",              # or a histogram's cumulative buckets
     "canary": {"buckets": {"0.1": 560, "0.25": 596, "+Inf": 600}}, "stable": {"buckets": {...}}}
    {"t": 0, "check": "errors-vs-stable", "per_second": true, ...}  # (extension) the same
                                                         # counts as rates from t on, integrated
    {"t": 0, "check": "errors-vs-stable", "per_second": true, "by_weight": true,
     "canary": {"requests": 250, "errors": 0.5}, ...}    # (extension) each side's rates at all
                                                         # the traffic, sent by the weight set

``by_weight`` lines are what a router that does its job produces: the canary serves the weight
the simulated router has at each moment (its share of its rates), stable the rest, so the
requests follow the weights asked and a verified split (``split:``) holds nothing. Without it
the counts are the timeline's whatever the weight, as a recorded history is.

The world is perfect and instant: the router applies each weight at once and reports it back,
the canary is ready as soon as it is asked for, the stable update completes immediately. So the
output shows the policy's own timing, nothing else. Time 0 is the rollout's start; an alert's
``startsAt`` is read on the same clock, with t = 0 at ``--epoch`` (default the Unix epoch).
"""

from __future__ import annotations

import bisect
import itertools
import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from canaryd.core import stages
from canaryd.core.compare import bound_label
from canaryd.core.model import (
    Action,
    Alert,
    Command,
    CommandKind,
    Counts,
    Effect,
    EffectKind,
    Findings,
    Histograms,
    Measurement,
    Observed,
    Phase,
    Policy,
    Rollout,
)
from canaryd.core.timefmt import parse_rfc3339

ENOUGH_REQUESTS_PER_SECOND = 1e6
_SETTLE_LIMIT = 16


class SamplesError(ValueError):
    """A line of the samples file that cannot be used; the message names the line."""


def _iso_seconds(text: str, epoch: float) -> float:
    try:
        return parse_rfc3339(text) - epoch
    except ValueError as exc:
        raise ValueError(f"startsAt: not an RFC 3339 time: {exc}") from None


@dataclass
class _Series:
    times: list[float] = field(default_factory=list)
    values: list[Any] = field(default_factory=list)

    def add(self, t: float, value: Any) -> None:
        index = bisect.bisect_right(self.times, t)
        self.times.insert(index, t)
        self.values.insert(index, value)

    def at(self, t: float) -> Any:
        index = bisect.bisect_right(self.times, t + 1e-9) - 1
        return self.values[index] if index >= 0 else None


@dataclass
class Timeline:
    checks: dict[str, _Series] = field(default_factory=dict)
    requests: _Series = field(default_factory=_Series)
    alerts: list[tuple[float, Alert]] = field(default_factory=list)
    commands: list[tuple[float, Command]] = field(default_factory=list)

    @classmethod
    def parse(cls, lines: Iterable[str], source: str = "samples", epoch: float = 0.0) -> Timeline:
        timeline = cls()
        for number, raw in enumerate(lines, start=1):
            if not raw.strip() or raw.lstrip().startswith("#"):
                continue
            try:
                timeline._add(json.loads(raw), epoch)
            except (ValueError, KeyError, TypeError) as exc:
                raise SamplesError(f"{source}:{number}: {exc}") from exc
        timeline.alerts.sort(key=lambda item: item[0])
        timeline.commands.sort(key=lambda item: item[0])
        return timeline

    def _add(self, line: dict[str, Any], epoch: float) -> None:
        if not isinstance(line, dict) or not isinstance(line.get("t"), int | float):
            raise ValueError('every line is an object with a numeric "t"')
        t = float(line["t"])
        if "check" in line:
            if "canary" in line or "stable" in line:
                value: Any = _compared(line)
                by_weight = line.get("by_weight", False)
                if not isinstance(by_weight, bool) or (
                    by_weight and line.get("per_second") is not True
                ):
                    raise ValueError('"by_weight": true goes with "per_second": true')
                if line.get("per_second") is True:
                    value = _PerSecond(value, by_weight)
            elif "error" in line:
                value = ("error", str(line["error"]))
            else:
                value = line.get("value")
                if value is not None and not isinstance(value, int | float):
                    raise ValueError(f'"value" must be a number or null, got {value!r}')
            self.checks.setdefault(str(line["check"]), _Series()).add(t, value)
        elif "requests" in line:
            rate = line["requests"]
            if not isinstance(rate, int | float) or rate < 0:
                raise ValueError(f'"requests" must be a non-negative number, got {rate!r}')
            self.requests.add(t, float(rate))
        elif "alert" in line:
            self.alerts.append((t, _alert(line["alert"], t, epoch)))
        elif "command" in line:
            kind = CommandKind(line["command"])
            weight = line.get("weight")
            self.commands.append((t, Command(kind, by="simulation", weight=weight)))
        else:
            raise ValueError('a line needs one of "check", "requests", "alert" or "command"')

    def measurements(
        self, checks: Iterable[str], t: float, weights: Sequence[tuple[float, int]] = ()
    ) -> tuple[Measurement, ...]:
        """The checks' measurements at ``t``; ``weights`` is the router's (time, weight) history
        (``World.weights``), which ``by_weight`` lines split their rates by."""
        out = []
        for name in checks:
            series = self.checks.get(name)
            value = series.at(t) if series else None
            if isinstance(value, _PerSecond) and series is not None:
                value = _integrated(series, t, weights)
            if isinstance(value, tuple):
                out.append(Measurement(name, error=value[1]))
            elif isinstance(value, Counts):
                out.append(Measurement(name, counts=value))
            elif isinstance(value, Histograms):
                out.append(Measurement(name, histograms=value))
            elif value is None or (isinstance(value, float) and math.isnan(value)):
                out.append(Measurement(name, value=None))
            else:
                out.append(Measurement(name, value=float(value)))
        return tuple(out)

    def requests_between(self, start: float, end: float) -> float:
        """Canary requests in [start, end], integrating the piecewise-constant rate."""
        if not self.requests.times:
            return ENOUGH_REQUESTS_PER_SECOND * max(end - start, 1.0)
        edges = [start, *[t for t in self.requests.times if start < t < end], end]
        total = 0.0
        for a, b in itertools.pairwise(edges):
            rate = self.requests.at(a)
            total += (ENOUGH_REQUESTS_PER_SECOND if rate is None else rate) * (b - a)
        return total

    def findings_at(self, t: float) -> Findings:
        return Findings(
            alerts=tuple(a for when, a in self.alerts if abs(when - t) < 1e-9),
            commands=tuple(c for when, c in self.commands if abs(when - t) < 1e-9),
        )

    def event_times(self) -> list[float]:
        return sorted({when for when, _ in self.alerts} | {when for when, _ in self.commands})


@dataclass(frozen=True, slots=True)
class _PerSecond:
    """A compare line's counts given as rates from its ``t`` on (``"per_second": true``)."""

    rates: Counts | Histograms
    by_weight: bool = False  # each side's rates at all the traffic, sent by the router's weight


def _integrated(
    series: _Series, t: float, weights: Sequence[tuple[float, int]] = ()
) -> Counts | Histograms | None:
    """The cumulative counts at ``t`` of a check given as rates: each rate line holds from its
    ``t`` to the next line's, and counts start at 0 at the first line. A ``by_weight`` line's
    canary rates are scaled by the weight the router had (``weights``, 0 before its first
    entry), its stable rates by the rest."""
    total: dict[str, float] = {}
    kind: type[Counts] | type[Histograms] | None = None
    for i, (start, value) in enumerate(zip(series.times, series.values, strict=True)):
        if start > t + 1e-9 or not isinstance(value, _PerSecond):
            break
        end = min(series.times[i + 1] if i + 1 < len(series.times) else t, t)
        kind = type(value.rates)
        for a, b, canary_share in _pieces(start, end, weights if value.by_weight else None):
            for key, rate in _flat(value.rates).items():
                share = (
                    1.0
                    if canary_share is None
                    else (canary_share if key[0] == "c" else 1.0 - canary_share)
                )
                total[key] = total.get(key, 0.0) + rate * share * (b - a)
    if kind is Counts:
        return Counts(*(total[k] for k in ("c.requests", "c.errors", "s.requests", "s.errors")))
    if kind is Histograms:
        sides = [{k[2:]: v for k, v in total.items() if k[0] == side} for side in "cs"]
        return Histograms(sides[0], sides[1])
    return None


def _pieces(
    start: float, end: float, weights: Sequence[tuple[float, int]] | None
) -> list[tuple[float, float, float | None]]:
    """[start, end) cut where the weight changed, each piece with the canary's share (None:
    not split by weight)."""
    if weights is None or end <= start:
        return [(start, end, None)]
    cuts = [start, *[w_t for w_t, _ in weights if start < w_t < end], end]
    out: list[tuple[float, float, float | None]] = []
    for a, b in itertools.pairwise(cuts):
        before = [w for w_t, w in weights if w_t <= a + 1e-9]
        out.append((a, b, (before[-1] if before else 0) / 100.0))
    return out


def _flat(value: Counts | Histograms) -> dict[str, float]:
    if isinstance(value, Counts):
        return {
            "c.requests": value.canary_requests,
            "c.errors": value.canary_errors,
            "s.requests": value.stable_requests,
            "s.errors": value.stable_errors,
        }
    return {
        **{f"c.{b}": v for b, v in value.canary.items()},
        **{f"s.{b}": v for b, v in value.stable.items()},
    }


def _compared(line: dict[str, Any]) -> Counts | Histograms:
    """A compare check's line: both sides' requests and errors, or both sides' buckets."""
    canary, stable = line.get("canary"), line.get("stable")
    if not isinstance(canary, dict) or not isinstance(stable, dict):
        raise ValueError('a compare line needs "canary" and "stable" objects')
    sides: list[dict[str, Any]] = [canary, stable]
    if all("buckets" in side for side in sides):
        return Histograms(*(_buckets(side["buckets"]) for side in sides))
    counts = []
    for name, side in zip(("canary", "stable"), sides, strict=True):
        for key in ("requests", "errors"):
            value = side.get(key)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ValueError(f'"{name}": "{key}" must be a non-negative number, got {value!r}')
            counts.append(float(value))
    return Counts(counts[0], counts[1], counts[2], counts[3])


def _buckets(raw: Any) -> dict[str, float]:
    if not isinstance(raw, dict) or "+Inf" not in raw:
        raise ValueError('"buckets" must be an object of cumulative counts with a "+Inf" bucket')
    out = {}
    for bound, value in raw.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ValueError(f'bucket "{bound}" must be a non-negative count, got {value!r}')
        try:
            out[bound_label(str(bound))] = float(value)
        except ValueError:
            raise ValueError(f'bucket bound "{bound}" is not a number') from None
    return out


def _alert(raw: Any, t: float, epoch: float) -> Alert:
    if not isinstance(raw, dict):
        raise ValueError('"alert" must be an object')
    status = raw.get("status", "firing")
    if status not in ("firing", "resolved"):
        raise ValueError(f'alert "status" must be firing or resolved, got {status!r}')
    labels = {str(k): str(v) for k, v in (raw.get("labels") or {}).items()}
    starts = raw.get("startsAt")
    starts_at = t if starts in (None, "") else _iso_seconds(str(starts), epoch)
    fingerprint = raw.get("fingerprint") or "sim-" + ",".join(
        f"{k}={labels[k]}" for k in sorted(labels)
    )
    return Alert(fingerprint=str(fingerprint), status=status, labels=labels, starts_at=starts_at)


@dataclass
class World:
    """A perfect router and platform: every effect is applied at once."""

    stable_image: str = "stable"
    weight: int | None = 0
    canary_present: bool = False
    # (time, weight) each time the weight changed: what ``by_weight`` timeline lines split by
    weights: list[tuple[float, int]] = field(default_factory=list)

    def note(self, now: float) -> None:
        """Record the weight from ``now`` on, if it changed."""
        weight = self.weight or 0
        if not self.weights or self.weights[-1][1] != weight:
            self.weights.append((now, weight))

    def observe(self, state: Rollout, timeline: Timeline, now: float) -> Observed:
        return Observed(
            weight=self.weight,
            canary_ready=self.canary_present,
            canary_present=self.canary_present,
            stable_image=self.stable_image,
        )

    def apply(self, effects: Iterable[Effect]) -> None:
        for effect in effects:
            if effect.kind is EffectKind.SET_WEIGHT:
                self.weight = effect.weight
            elif effect.kind is EffectKind.ENSURE_CANARY:
                self.canary_present = True
            elif effect.kind is EffectKind.REMOVE_CANARY:
                self.canary_present = False
            elif effect.kind is EffectKind.UPDATE_STABLE and effect.image:
                self.stable_image = effect.image


Persist = Callable[[Rollout, tuple[Action, ...], float, tuple[Measurement, ...]], None]


def settle(
    state: Rollout,
    world: World,
    timeline: Timeline,
    now: float,
    persist: Persist,
    findings: Findings | None = None,
) -> Rollout:
    """Run decide → persist → reconcile → apply at one instant until nothing changes.

    ``persist`` is called with each new state and its decisions *before* the effects run, as
    the daemon does, so a crash between the two is repaired by the next call.
    """
    pending = findings or Findings()
    for _ in range(_SETTLE_LIMIT):
        world.note(now)
        observed = world.observe(state, timeline, now)
        if stages.evaluation_due(state, now):
            since = state.last_eval_at if state.last_eval_at is not None else now
            pending = Findings(
                timeline.measurements(state.current_stage.checks, now, world.weights),
                pending.alerts,
                pending.commands,
                requests=timeline.requests_between(since, now),
            )
        new, actions = stages.decide(state, observed, pending, now)
        measured, pending = pending.measurements, Findings()
        changed = new != state
        if changed or actions:
            persist(new, actions, now, measured)
        state = new
        effects = stages.reconcile(state, world.observe(state, timeline, now))
        if not (effects or changed or stages.evaluation_due(state, now)):
            return state
        world.apply(effects)
        world.note(now)
    return state


@dataclass(frozen=True, slots=True)
class Record:
    t: float
    phase: str
    stage: int
    weight: int
    action: str
    reason: str

    def as_json(self) -> dict[str, Any]:
        t: float | int = int(self.t) if float(self.t).is_integer() else round(self.t, 3)
        return {
            "t": t,
            "phase": self.phase,
            "stage": self.stage,
            "weight": self.weight,
            "action": self.action,
            "reason": self.reason,
        }


def default_until(policy: Policy) -> float:
    return policy.total_duration + policy.limits.progress_deadline


def waits_for_human(state: Rollout) -> bool:
    return state.phase is Phase.PAUSED and state.resume_at is None and not state.alert_pauses


def run(
    policy: Policy,
    timeline: Timeline,
    until: float | None = None,
    image: str = "canary",
    traffic: int | None = None,
) -> tuple[Rollout, list[Record]]:
    """Simulate one rollout from t = 0 to a terminal phase, a human wait, or ``until``."""
    end = default_until(policy) if until is None else until
    records: list[Record] = []

    def persist(s: Rollout, actions: tuple[Action, ...], now: float, _m: Any) -> None:
        for a in actions:
            weight = s.weight if a.weight is None else a.weight
            phase = a.phase or s.phase
            records.append(Record(now, str(phase), s.stage + 1, weight, str(a.kind), a.reason))

    state, first = stages.start("sim", "simulated", image, policy, 0.0, traffic)
    persist(state, (first,), 0.0, ())
    world = World()
    events = timeline.event_times()
    now = 0.0
    state = settle(state, world, timeline, now, persist, timeline.findings_at(now))
    while not state.ended:
        wake = stages.next_wakeup(state)
        upcoming = [t for t in events if t > now + 1e-9]
        candidates = [t for t in (wake, upcoming[0] if upcoming else None) if t is not None]
        if waits_for_human(state) and not upcoming:
            break
        if not candidates:
            break
        now = max(min(candidates), now)
        if now > end + 1e-9:
            break
        state = settle(state, world, timeline, now, persist, timeline.findings_at(now))
    return state, records


def format_table(records: list[Record], final: Rollout) -> str:
    lines = [f"{'t':>7}  {'phase':<12} {'stage':>5} {'weight':>6}  {'action':<14} reason"]
    for r in records:
        lines.append(
            f"{r.t:>7g}  {r.phase:<12} {r.stage:>5} {r.weight:>5}%  {r.action:<14} {r.reason}"
        )
    lines.append(
        f"final: {final.phase} at canary {final.weight}%"
        + (f" ({final.rollback_reason})" if final.rollback_reason else "")
        + (f" ({final.pause_reason})" if final.phase is Phase.PAUSED else "")
    )
    return "\n".join(lines)


def print_run(records: list[Record], final: Rollout, output: str, out: TextIO) -> None:
    """A run as ``canaryctl simulate`` and ``replay`` print it: one JSON list with ``-o json``,
    else the table."""
    if output == "json":
        json.dump([r.as_json() for r in records], out, indent=None)
        out.write("\n")
    else:
        print(format_table(records, final), file=out)
