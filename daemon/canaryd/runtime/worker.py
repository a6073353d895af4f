"""One worker per rollout: observe → decide → persist → act, then sleep until there is work.

The loop is the daemon's only writer of a rollout. Alerts and operator commands reach it
through ``deliver``/``command`` and wake it at once (an ``asyncio.Event``), so an alert is
acted on within one pass, not at the next tick. Every pass:

1. observes the world through the target's ports (router weight, canary status, stable image),
2. if an evaluation is due, asks the evaluator for this stage's measurements (batched with
   every other target's),
3. runs the pure ``decide`` and commits the new record, its decisions and measurements in one
   durable transaction *before* anything is acted on (a command's caller is answered then),
4. applies what ``reconcile`` says is still missing. Effects are idempotent; a failed one is
   logged and retried on the next pass, which comes soon while the world has not converged.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from canaryd.core import stages
from canaryd.core.errors import CanarydError, CommandRejected
from canaryd.core.model import (
    Alert,
    Command,
    Effect,
    EffectKind,
    Findings,
    Measurement,
    Observed,
    Rollout,
)
from canaryd.ports import Clock, Platform, Router, RuntimeEvents, StateStore

Measure = Callable[[Rollout], Awaitable[tuple[tuple[Measurement, ...], float | None]]]


@dataclass(frozen=True, slots=True)
class Timing:
    observe_every: float = 5.0  # re-read router and platform at least this often
    converge_every: float = 0.2  # while effects are outstanding
    retry_after: float = 1.0  # after a failed pass


class Worker:
    def __init__(
        self,
        state: Rollout,
        *,
        router: Router,
        platform: Platform,
        store: StateStore,
        measure: Measure,
        clock: Clock,
        events: RuntimeEvents,
        timing: Timing | None = None,
    ) -> None:
        self.state = state
        self._router, self._platform, self._store = router, platform, store
        self._measure, self._clock, self._events = measure, clock, events
        self._timing = timing or Timing()
        self._wake = asyncio.Event()
        self._alerts: list[Alert] = []
        self._commands: list[tuple[Command, asyncio.Future[Rollout]]] = []
        self._outstanding = False
        self._successor: str | None = None
        self.finished = asyncio.Event()

    # ---------------------------------------------------------------- inputs

    def deliver(self, alerts: list[Alert]) -> None:
        self._alerts.extend(alerts)
        self._wake.set()

    async def command(self, command: Command) -> Rollout:
        """Queue ``command``; return the rollout once the decision it led to is durable."""
        refusal = stages.check_command(self.state, command)
        if refusal is not None:
            raise CommandRejected(refusal)
        future: asyncio.Future[Rollout] = asyncio.get_running_loop().create_future()
        self._commands.append((command, future))
        self._wake.set()
        return await future

    def poke(self) -> None:
        self._wake.set()

    def hand_over(self, successor: str) -> None:
        """Once rolled back, leave the canary to ``successor`` instead of scaling it down."""
        self._successor = successor
        self._wake.set()

    # ---------------------------------------------------------------- the loop

    async def run(self) -> None:
        try:
            while not self.done:
                delay = self._timing.retry_after
                try:
                    await self.step()
                    delay = self._delay()
                except Exception as exc:  # a pass that fails is retried, never fatal
                    self._events.failed_pass(self.state, exc)
                if self.done:
                    break
                await self._sleep(delay)
        finally:
            for _, future in self._commands:
                if not future.done():
                    future.set_exception(CommandRejected("the worker stopped"))
            self.finished.set()

    @property
    def done(self) -> bool:
        s = self.state
        return s.phase.terminal and s.cleanup_at is None and not self._outstanding

    async def step(self) -> None:
        state = self.state
        observed = await self.observe()
        measurements: tuple[Measurement, ...] = ()
        requests: float | None = None
        now = self._clock.time()
        if stages.evaluation_due(state, now):
            measurements, requests = await self._measure(state)
            now = max(now, self._clock.time())
        alerts, self._alerts = self._alerts, []
        commands, self._commands = self._commands, []
        findings = Findings(measurements, tuple(alerts), tuple(c for c, _ in commands), requests)
        try:
            new, actions = stages.decide(state, observed, findings, now)
            if self._successor is not None:
                new, more = stages.hand_over(new, self._successor)
                actions += more
            if new != state or actions or measurements:
                await asyncio.to_thread(self._store.commit, new, actions, now, measurements)
        except BaseException:
            self._alerts[:0] = alerts  # nothing was decided: keep the inputs for the next pass
            self._commands[:0] = commands
            raise
        self.state = new
        for _, future in commands:
            if not future.done():
                future.set_result(new)
        self._events.decided(new, actions, measurements, now)
        await self.act(stages.reconcile(new, observed), now)

    async def observe(self) -> Observed:
        weight = await self._router.get_weight()
        present, ready = await self._platform.canary_status()
        stable = await self._platform.stable_image()
        observed = Observed(
            weight=weight, canary_ready=ready, canary_present=present, stable_image=stable
        )
        self._events.observed(self.state, observed)
        return observed

    async def act(self, effects: tuple[Effect, ...], now: float) -> None:
        self._outstanding = bool(effects)
        for effect in effects:
            started = self._clock.time()
            try:
                if effect.kind is EffectKind.SET_WEIGHT and effect.weight is not None:
                    await self._router.set_weight(effect.weight)
                elif effect.kind is EffectKind.ENSURE_CANARY and effect.image:
                    await self._platform.ensure_canary(effect.image)
                elif effect.kind is EffectKind.UPDATE_STABLE and effect.image:
                    await self._platform.update_stable(effect.image)
                elif effect.kind is EffectKind.REMOVE_CANARY:
                    await self._platform.remove_canary()
            except CanarydError as exc:
                self._events.effect_failed(self.state, effect, exc)
                continue
            self._events.applied(
                self.state, effect, self._clock.time() - started, self._router.kind
            )

    def _delay(self) -> float:
        now = self._clock.time()
        if self._outstanding:
            return self._timing.converge_every
        wake = stages.next_wakeup(self.state)
        delay = (
            self._timing.observe_every
            if wake is None
            else min(self._timing.observe_every, wake - now)
        )
        return max(0.0, delay)

    async def _sleep(self, delay: float) -> None:
        if self._wake.is_set():
            self._wake.clear()
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._wake.wait()
        self._wake.clear()
