"""Reading what a dashboard page shows: the runtime's rollouts, the store's records, telemetry.

Store reads (a target without a worker is read from the store too) run in a thread, all of one
page's in one ``to_thread`` call, so a page never blocks the event loop and costs one hop. The
inbox and the telemetry gauges are read on the loop, where they are written: they are memory.

The router's weight is what the router last reported, as ``canaryd_router_weight`` exports it
(read from the gauge, so the page and ``/metrics`` cannot disagree). ``/`` reads, per target,
the current rollout and its decisions; the measurements (every evaluation of every check) are
read only for a target's own page.
"""

from __future__ import annotations

import asyncio

from canaryd.adapters.telemetry import Telemetry
from canaryd.api.dashboard.facts import Card, CheckHistory, Detail, check_histories
from canaryd.api.routes import ROUTES
from canaryd.core.model import Rollout
from canaryd.ports import DecisionRecord, StateStore
from canaryd.runtime.controller import Controller

PAST_ROLLOUTS = 10  # earlier rollouts listed on a target's page, newest first
ROLES = {row.what: row.role for row in ROUTES if row.what is not None and row.role is not None}


def measured_weights(telemetry: Telemetry) -> dict[str, int]:
    """Every target's last router read-back, from the ``canaryd_router_weight`` gauge."""
    found: dict[str, int] = {}
    for family in telemetry.router_weight.collect():
        for sample in family.samples:
            target = sample.labels.get("target")
            if target is not None:
                found[target] = round(sample.value)
    return found


def _firing(controller: Controller, name: str, now: float) -> tuple[str, ...]:
    return tuple(sorted({a.name for a in controller.inbox.firing_for(name, now)}))


async def cards(
    controller: Controller, store: StateStore, telemetry: Telemetry, now: float
) -> list[Card]:
    """One card per configured target, in name order."""

    def read() -> list[tuple[str, Rollout | None, DecisionRecord | None]]:
        rows: list[tuple[str, Rollout | None, DecisionRecord | None]] = []
        for name in sorted(controller.targets):
            rollout = controller.current(name)
            decisions = store.history(rollout_id=rollout.id) if rollout else []
            rows.append((name, rollout, decisions[-1] if decisions else None))
        return rows

    rows = await asyncio.to_thread(read)
    weights = measured_weights(telemetry)
    return [
        Card(controller.targets[n], r, weights.get(n), last, _firing(controller, n, now))
        for n, r, last in rows
    ]


async def detail(
    controller: Controller, store: StateStore, telemetry: Telemetry, name: str, now: float
) -> Detail:
    """Everything ``name``'s page shows (the target must exist)."""

    def read() -> tuple[Rollout | None, list[DecisionRecord], list[CheckHistory], list[Rollout]]:
        rollout = controller.current(name)
        every = store.history(target=name)
        own = [d for d in every if rollout is not None and d["rollout_id"] == rollout.id]
        ids = list(dict.fromkeys(d["rollout_id"] for d in every))
        earlier = [i for i in reversed(ids) if rollout is None or i != rollout.id]
        past = [r for r in map(store.get, earlier[:PAST_ROLLOUTS]) if r is not None]
        checks = check_histories(rollout, store.measurements(rollout.id)) if rollout else []
        return rollout, own, checks, past

    rollout, own, checks, past = await asyncio.to_thread(read)
    card = Card(
        controller.targets[name],
        rollout,
        measured_weights(telemetry).get(name),
        own[-1] if own else None,
        _firing(controller, name, now),
    )
    return Detail(card, own, checks, past, now, ROLES)
