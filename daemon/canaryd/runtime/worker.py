"""One worker per rollout: observe → decide → persist → act, then sleep until there is work.

The loop is the daemon's only writer of a rollout. Alerts and operator commands reach it
through ``deliver``/``command`` and wake it at once (an ``asyncio.Event``), so an alert is
acted on within one pass, not at the next tick. Every pass:

1. observes the world through the target's ports (router weight, canary status, stable image,
   and what a ready canary runs while its rollout waits to pin it: ``Rollout.pin_on_ready``),
   and, while the verify gate is closed, starts the target's verify commands (a task the
   worker owns: the loop keeps taking alerts and commands meanwhile) or takes their answer,
2. if an evaluation is due, asks the evaluator for this stage's measurements (batched with
   every other target's),
3. runs the pure ``decide`` and commits the new record, its decisions and measurements in one
   durable transaction *before* anything is acted on (a command's caller is answered then),
4. applies what ``reconcile`` says is still missing. Effects are idempotent; a failed one is
   logged and retried on the next pass, which comes soon while the world has not converged.

A pass whose commit fails never wedges the rollout. A store that cannot write just now
(``TemporaryError``: disk full, locked) answers the waiting commands at once with that error
(HTTP 503) and they are not applied later; its alerts are retried. Any other failure is an
input the store cannot take (a lone surrogate in a label, say): the pass is redone one input
at a time, each bad one retried with its text made safe and else dropped and logged, so a
rollback is never blocked behind it. A refused command is answered with the engine's reason.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace

from canaryd.core import stages
from canaryd.core.errors import CanarydError, CommandRejected, PermanentError, TemporaryError
from canaryd.core.model import (
    Action,
    Alert,
    AlertAction,
    AlertRule,
    AlertStatus,
    Cause,
    Command,
    CommandKind,
    Effect,
    EffectKind,
    Findings,
    Measurement,
    Observed,
    Phase,
    Rollout,
    Verification,
)
from canaryd.core.rules import rule_for
from canaryd.ports import (
    Clock,
    PinsRunningCanary,
    Platform,
    ReportsAbort,
    ReportsCanaryExit,
    Router,
    RuntimeEvents,
    StateStore,
    Verifier,
)

ALERT_CHUNK = 256  # alerts decided per pass: a flood is spread over passes, the loop stays free

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
        verify: Verifier | None = None,
        fence: Callable[[str], None] | None = None,
    ) -> None:
        self.state = state
        self._fence = fence  # runtime.leadership: raises NotLeader once this replica may not act
        self._verify = verify
        self._verifying: asyncio.Task[Verification] | None = None
        self._verified: Verification | None = None
        self._router, self._platform, self._store = router, platform, store
        self._measure, self._clock, self._events = measure, clock, events
        self._timing = timing or Timing()
        self._wake = asyncio.Event()
        self._alerts: list[Alert] = []
        self._commands: list[tuple[Command, asyncio.Future[Rollout]]] = []
        self._outstanding = False
        self._successor: str | None = None
        self.finished = asyncio.Event()
        self._changed = asyncio.Event()  # set (and replaced) whenever ``state`` moves on

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

    async def wait_until(self, holds: Callable[[Rollout], bool]) -> None:
        """Return once ``holds(state)`` or the worker has finished (callers bound the wait)."""
        while not holds(self.state) and not self.finished.is_set():
            await self._changed.wait()

    def _moved(self, new: Rollout) -> None:
        self.state = new
        self._changed.set()
        self._changed = asyncio.Event()

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
            await self._stop_verifying()
            for _, future in self._commands:
                if not future.done():
                    future.set_exception(CommandRejected("the worker stopped"))
            self.finished.set()
            self._changed.set()  # wakes wait_until

    @property
    def done(self) -> bool:
        s = self.state
        return s.ended and s.cleanup_at is None and not self._outstanding

    async def step(self) -> None:
        state = self.state
        observed = await self.observe()
        measurements: tuple[Measurement, ...] = ()
        requests: float | None = None
        now = self._clock.time()
        if stages.evaluation_due(state, now):
            measurements, requests = await self._measure(state)
            now = max(now, self._clock.time())
        verification = await self._verification(state)
        alerts = self._take_alerts()
        commands, self._commands = self._commands, []
        findings = Findings(
            measurements, tuple(alerts), tuple(c for c, _ in commands), requests, verification
        )
        try:
            new, actions = await asyncio.to_thread(self._decide_and_commit, findings, observed, now)
        except TemporaryError as exc:  # the store cannot write now: tell the callers at once
            self._alerts[:0] = alerts  # durable in the journal; retried on the next pass
            self._verified = verification  # kept for the next pass, not run again
            _fail(commands, exc)
            raise
        except Exception as exc:  # this input cannot be committed: find it, keep the rest
            self._events.failed_pass(state, exc)
            new, actions = await self._isolate(findings, commands, observed, now)
            commands = []  # each one answered by _isolate
        except BaseException:  # cancelled (shutdown): nothing decided, keep the inputs
            self._alerts[:0] = alerts
            self._verified = verification
            self._commands[:0] = commands  # answered by run()'s "the worker stopped"
            raise
        self._settle(new, actions, commands, now, measurements)
        await self.act(stages.reconcile(new, observed), now)

    async def _verification(self, state: Rollout) -> Verification | None:
        """The verify commands' answer once they have finished (None: not due, or running).

        Started in a task of the worker's own the first pass the gate is closed, so a
        command that runs for minutes holds no alert and no command; its end wakes the loop.
        Not due any more (an operator rolled back meanwhile): the commands are stopped.
        """
        if self._verified is not None:  # an answer a failed commit could not record yet
            done, self._verified = self._verified, None
            return done
        if not stages.verifying(state):
            await self._stop_verifying()
            return None
        if self._verify is None:  # the verify commands left the config since the start
            return Verification(True, "no verify commands are configured any more")
        task = self._verifying
        if task is None:
            task = self._verifying = asyncio.create_task(self._verify(state.ref))
            task.add_done_callback(lambda _: self._wake.set())
            return None
        if not task.done():
            return None
        self._verifying = None
        error = None if task.cancelled() else task.exception()
        if task.cancelled() or error is not None:
            return Verification(False, f"the verify commands could not run: {error!r}")
        return task.result()

    async def _stop_verifying(self) -> None:
        task, self._verifying = self._verifying, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _take_alerts(self) -> list[Alert]:
        """At most ``ALERT_CHUNK`` queued alerts, those a rule rolls back on first: a flood of
        alerts is decided over several passes (the loop stays free between them), and a
        critical alert never waits behind it."""
        queued = self._alerts
        if len(queued) <= ALERT_CHUNK:
            self._alerts = []
            return queued
        rules = self.state.policy.alert_rules
        urgent = [a for a in queued if _rolls_back(rules, a)]
        rest = [a for a in queued if not _rolls_back(rules, a)]
        ordered = urgent + rest
        self._alerts = ordered[ALERT_CHUNK:]
        self._wake.set()  # the rest in the next pass, without waiting for a tick
        return ordered[:ALERT_CHUNK]

    def _decide_and_commit(
        self, findings: Findings, observed: Observed, now: float
    ) -> tuple[Rollout, tuple[Action, ...]]:
        """One decision, durable before it returns (in a thread: ``decide`` over many alerts
        and the commit must not hold the event loop)."""
        state = self.state
        new, actions = stages.decide(state, observed, findings, now)
        if self._successor is not None:
            new, more = stages.hand_over(new, self._successor)
            actions += more
        if new != state or actions or findings.measurements:
            self._store.commit(new, actions, now, findings.measurements)
        return new, actions

    async def _isolate(
        self,
        findings: Findings,
        commands: list[tuple[Command, asyncio.Future[Rollout]]],
        observed: Observed,
        now: float,
    ) -> tuple[Rollout, tuple[Action, ...]]:
        """Commit what can be committed of a pass that could not be, one input at a time.

        First the measurements alone, then each command, then each alert, each in its own
        pass from the state the previous one left. An input whose pass fails is tried once
        more with its text made safe (the decision keeps its meaning: a rollback still rolls
        back); if that fails too it is dropped and logged, and a command's caller gets the
        error. So one bad input never blocks the others, least of all a rollback.
        """
        actions: list[Action] = []
        waiting = list(commands)
        try:
            base = replace(findings, alerts=(), commands=())
            outcome = await self._try_pass(base, observed, now)
            if not isinstance(outcome, tuple):  # not even the measurements: retry next pass
                self._alerts[:0] = list(findings.alerts)
                raise _unstorable("the pass's measurements", outcome)
            actions += outcome
            quiet = replace(base, measurements=(), verification=None)
            while waiting:
                command, future = waiting.pop(0)
                one = replace(quiet, commands=(command,))
                result = await self._try_variants(one, observed, now)
                if isinstance(result, CanarydError):
                    _fail([(command, future)], result)
                    continue
                actions += result
                self._answer(result, [(command, future)])
            for i, alert in enumerate(findings.alerts):
                result = await self._try_variants(replace(quiet, alerts=(alert,)), observed, now)
                if isinstance(result, tuple):
                    actions += result
                elif isinstance(result, TemporaryError):  # the store, not the alert: later
                    self._alerts[:0] = list(findings.alerts[i:])
                    break
        except Exception as exc:
            _fail(waiting, exc)
            raise
        except BaseException:
            self._commands[:0] = waiting  # cancelled: answered by run()'s "worker stopped"
            raise
        return self.state, tuple(actions)

    async def _try_variants(
        self, one: Findings, observed: Observed, now: float
    ) -> tuple[Action, ...] | CanarydError:
        """Try ``one``, then its made-safe twin: the actions of the first that is durable, else
        the error (a temporary one as it is, so its caller is answered 503)."""
        cause: Exception | None = None
        safe = replace(
            one,
            commands=tuple(_safe_command(c) for c in one.commands),
            alerts=tuple(_safe_alert(a) for a in one.alerts),
        )
        for findings in (one, safe):
            try:
                outcome = await self._try_pass(findings, observed, now)
            except TemporaryError as exc:
                return exc
            if isinstance(outcome, tuple):
                return outcome
            cause = outcome
        what = f"command {one.commands[0].kind}" if one.commands else f"alert {one.alerts[0].key}"
        error = _unstorable(what, cause)
        self._events.failed_pass(self.state, error)
        return error

    async def _try_pass(
        self, findings: Findings, observed: Observed, now: float
    ) -> tuple[Action, ...] | Exception:
        """One isolated pass: its actions once durable (``self.state`` moves on), else why it
        could not be committed (``TemporaryError`` is raised: the store is unavailable)."""
        try:
            new, actions = await asyncio.to_thread(self._decide_and_commit, findings, observed, now)
        except TemporaryError:
            raise
        except Exception as exc:
            return exc
        self._moved(new)
        return actions

    def _settle(
        self,
        new: Rollout,
        actions: tuple[Action, ...],
        commands: list[tuple[Command, asyncio.Future[Rollout]]],
        now: float,
        measurements: tuple[Measurement, ...],
    ) -> None:
        """The decision is durable: adopt it, answer its commands, report it."""
        self._moved(new)
        self._answer(actions, commands)
        self._events.decided(new, actions, measurements, now)

    def _answer(
        self, actions: tuple[Action, ...], commands: list[tuple[Command, asyncio.Future[Rollout]]]
    ) -> None:
        """Answer each command with what the engine did: the rollout once applied, or
        ``CommandRejected`` with the engine's reason when it refused (HTTP 409)."""
        refused = _refusals(actions)
        for i, (_, future) in enumerate(commands):
            if future.done():
                continue
            if i in refused:
                future.set_exception(CommandRejected(refused[i]))
            else:
                future.set_result(self.state)

    async def observe(self) -> Observed:
        weight = await self._router.get_weight()
        present, ready = await self._platform.canary_status()
        stable = await self._platform.stable_image()
        pin, problem = await self._canary_pin(ready)
        await self._external_abort()
        self._canary_exit()
        observed = Observed(
            weight=weight,
            canary_ready=ready,
            canary_present=present,
            stable_image=stable,
            canary_pin=pin,
            pin_problem=problem,
        )
        self._events.observed(self.state, observed)
        return observed

    async def _external_abort(self) -> None:
        """A router whose own controller aborted the canary (``ports.ReportsAbort``: Argo's
        analysis failed) makes this pass decide a rollback in that controller's words, so the
        abort is a decision in the history, not a weight that silently went to 0."""
        router = self._router
        by = f"{router.kind}'s controller"
        if not isinstance(router, ReportsAbort) or any(c.by == by for c, _ in self._commands):
            return
        rollback = Command(CommandKind.ROLLBACK, by, cause=Cause.ROUTER_NOT_APPLIED)
        if stages.check_command(self.state, rollback) is not None:
            return
        why = await router.external_abort(self.state.ref)
        if why is None:
            return
        future: asyncio.Future[Rollout] = asyncio.get_running_loop().create_future()
        future.add_done_callback(lambda f: f.cancelled() or f.exception())  # nobody awaits it
        self._commands.append((replace(rollback, reason=why), future))

    def _canary_exit(self) -> None:
        """A canary that died while it serves (``ports.ReportsCanaryExit``: its container
        exited or was killed) makes this pass decide a rollback: the requests it dropped may
        never show in a check (the first samples of a new 5xx series count for nothing in
        ``rate()``), and re-creating it would hide the crash."""
        platform = self._platform
        by = f"{platform.kind} platform"
        if self.state.phase not in (Phase.PROGRESSING, Phase.PAUSED):
            return
        if not isinstance(platform, ReportsCanaryExit):
            return
        if any(c.by == by for c, _ in self._commands):
            return
        why = platform.canary_exit()
        rollback = Command(CommandKind.ROLLBACK, by, cause=Cause.CANARY_NOT_READY)
        if why is None or stages.check_command(self.state, rollback) is not None:
            return
        future: asyncio.Future[Rollout] = asyncio.get_running_loop().create_future()
        future.add_done_callback(lambda f: f.cancelled() or f.exception())  # nobody awaits it
        self._commands.append((replace(rollback, reason=why), future))

    async def _canary_pin(self, ready: bool) -> tuple[str | None, str | None]:
        """What the ready canary runs, pinned, while the rollout waits for it (kubernetes);
        (None, why) when the platform cannot tell yet: the engine holds the first stage
        until its Pending deadline, so a failure here never fails the pass."""
        state, platform = self.state, self._platform
        if not (ready and stages.pinning(state) and isinstance(platform, PinsRunningCanary)):
            return None, None
        try:
            return await platform.canary_pin(state.image), None
        except CanarydError as exc:
            return None, str(exc)

    async def act(self, effects: tuple[Effect, ...], now: float) -> None:
        self._outstanding = bool(effects)
        for effect in effects:
            started = self._clock.time()
            try:
                if self._fence is not None:
                    self._fence(f"apply {effect.kind}")
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


# --------------------------------------------------------------------------- helpers


class Unstorable(PermanentError):
    """A decision that the store refused to commit for a reason retrying will not fix."""


def _unstorable(what: str, cause: Exception | None) -> Unstorable:
    why = f": {type(cause).__name__}: {cause}" if cause is not None else ""
    return Unstorable(f"{what} could not be committed to the state store{why}; dropped")


def _fail(commands: Iterable[tuple[Command, asyncio.Future[Rollout]]], error: Exception) -> None:
    """Answer each waiting command with ``error``: it is not applied later."""
    if not isinstance(error, CanarydError):
        error = _unstorable("the command", error)
    for _, future in commands:
        if not future.done():
            future.set_exception(error)


def _refusals(actions: Iterable[Action]) -> dict[int, str]:
    """Command index → the engine's refusal, for each command ``decide`` refused (cause
    REFUSED; its evidence carries ``{"command", "refused", "command_index"}``)."""
    out: dict[int, str] = {}
    for action in actions:
        index = action.evidence.get("command_index")
        if action.cause is Cause.REFUSED and isinstance(index, int):
            out[index] = str(action.evidence["refused"])
    return out


def _rolls_back(rules: tuple[AlertRule, ...], alert: Alert) -> bool:
    if alert.status is not AlertStatus.FIRING:
        return False
    rule = rule_for(rules, alert.labels)
    return rule is not None and rule.action is AlertAction.ROLLBACK


def _safe(text: str) -> str:
    """``text`` that any store can encode: a lone surrogate becomes its ``\\udc80`` escape."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _safe_alert(alert: Alert) -> Alert:
    labels = {_safe(k): _safe(v) for k, v in alert.labels.items()}
    return Alert(_safe(alert.fingerprint), alert.status, labels, alert.starts_at, alert.ends_at)


def _safe_command(command: Command) -> Command:
    return replace(command, by=_safe(command.by), reason=_safe(command.reason))
