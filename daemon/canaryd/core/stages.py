"""The stage engine: ``decide(state, observed, findings, now) -> (new state, actions)``.

Deciding and doing are split in two pure functions:

* ``decide`` is edge-triggered. It consumes what happened (an evaluation's measurements,
  alerts, operator commands) and moves the rollout along SPEC §3's lifecycle, returning the
  new record and the decisions it took, each with its reason and evidence. Those decisions are
  the rollout's history.
* ``reconcile`` is level-triggered. From the record alone it says what the world must look
  like (canary weight, canary present, stable image) and lists the idempotent effects still
  needed to get there. A runtime persists ``decide``'s result *before* applying
  ``reconcile``'s effects, so a crash anywhere is repaired by the next pass: nothing decided is
  lost and nothing is decided twice (evaluations are consumed through ``next_eval_at``,
  alerts through ``handled_alerts``).

Stage timing is credit-based: each passing evaluation credits the time since the previous one
(at most one interval), so missing data, pauses and downtime hold the stage timer instead of
letting it run. ``progress_deadline`` bounds how far a stage can be stretched.
"""

from __future__ import annotations

import math
from dataclasses import replace

from canaryd.core import analysis
from canaryd.core.model import (
    Action,
    ActionKind,
    Alert,
    AlertAction,
    AlertRule,
    Command,
    CommandKind,
    Effect,
    EffectKind,
    Findings,
    Gate,
    Observed,
    OnInconclusive,
    Phase,
    Policy,
    Rollout,
    Stage,
    Verdict,
)
from canaryd.core.rules import rule_for

_EPS = 1e-6
_ALERT_PAUSE = "alert"
HANDLED_ALERTS_KEPT = 1024  # de-duplication keys a record keeps (see ``_remember``)
_NAMED_IN_SUMMARY = 5  # alerts named in a summarising "ignore" decision
_RESTORE = "restore-stable"


# --------------------------------------------------------------------------- starting


def plan_stages(policy: Policy, traffic: int | None) -> Policy:
    """The policy with its first stage at ``traffic`` percent, dropping stages it overtakes."""
    if traffic is None:
        return policy
    if not 0 < traffic <= 100:
        raise ValueError(f"initial traffic must be within 1..100, got {traffic}")
    first = replace(policy.stages[0], weight=traffic)
    rest = tuple(stage for stage in policy.stages[1:] if stage.weight > traffic)
    return replace(policy, stages=(first, *rest))


def start(
    rollout_id: str,
    target: str,
    image: str,
    policy: Policy,
    now: float,
    traffic: int | None = None,
) -> tuple[Rollout, Action]:
    planned = plan_stages(policy, traffic)
    rollout = Rollout(
        id=rollout_id,
        target=target,
        image=image,
        policy=planned,
        started_at=now,
        weight_set_at=now,
    )
    weights = "→".join(str(stage.weight) for stage in planned.stages)
    return rollout, Action(ActionKind.START, f"rollout of {image} started ({weights})", weight=0)


# --------------------------------------------------------------------------- commands


def check_command(state: Rollout, command: Command) -> str | None:
    """Why ``command`` cannot apply to ``state`` (an HTTP 409), or None if it can."""
    phase, kind = state.phase, command.kind
    if kind is CommandKind.CLEANUP:
        if phase is Phase.PROMOTING and state.promote_step != "update-stable":
            return "promotion is completing; nothing to clean up"
        if phase.terminal and state.cleanup_at is None:
            return f"rollout {state.id} already ended ({phase}) and left nothing behind"
        return _restore_refusal(state)  # cleaning up an unfinished promotion rolls it back
    if phase.terminal:
        return f"rollout {state.id} already ended ({phase})"
    if kind is CommandKind.ROLLBACK:
        if phase is Phase.ROLLING_BACK or (phase is Phase.FAILED and state.rollback_reason):
            return "a rollback is already under way"
        if phase is Phase.PROMOTING and state.promote_step != "update-stable":
            return "stable already runs the new image; nothing to roll back to"
        return _restore_refusal(state)
    if phase not in (Phase.PENDING, Phase.PROGRESSING, Phase.PAUSED):
        return f"cannot {kind} a rollout that is {phase}"
    if kind is CommandKind.PAUSE and phase is Phase.PAUSED:
        return "already paused"
    if kind is CommandKind.RESUME:
        if phase is not Phase.PAUSED:
            return "not paused"
        if state.stage_passed:
            return "waiting at a manual gate: use promote"
    if kind is CommandKind.SET_WEIGHT and (
        command.weight is None or not 0 <= command.weight <= 100
    ):
        return "weight must be within 0..100"
    return None


def _stable_update_begun(s: Rollout) -> bool:
    """Promotion has asked the platform to put the new image on the stable (not yet done)."""
    return s.rollback_reason is None and s.promote_step == "update-stable"


def _restore_refusal(s: Rollout) -> str | None:
    """Why a rollback cannot undo a promotion that began updating the stable, or None.

    Once the stable update began, (part of) the stable may run the new image, so rolling back
    means two things: canary weight 0 *and* the stable back on the image it ran before. canaryd
    restores rather than refuses whenever it can, because a rollback is needed most exactly
    then: the new image is reaching every stable replica, and a critical alert must still stop
    it (a refusal would let it finish spreading). The image to restore is ``previous_image``,
    the stable's image as first observed, before promotion touched it. A platform that reports
    no stable image (``none``: something else deploys) leaves nothing to restore; a rollback
    would then report RolledBack with the new image left on stable, so it is refused and the
    refusal says why.
    """
    if _stable_update_begun(s) and s.previous_image is None:
        return (
            f"the stable update to {s.image} has begun and the previous stable image is unknown "
            "(the platform reports none), so a rollback could not restore it"
        )
    return None


def _remember_stable(s: Rollout, obs: Observed) -> Rollout:
    """Record the stable's image the first time the platform reports one, before promotion."""
    if (
        s.previous_image is None
        and obs.stable_image is not None
        and s.promote_step is None
        and s.rollback_reason is None
    ):
        return replace(s, previous_image=obs.stable_image)
    return s


def _apply_command(s: Rollout, c: Command, index: int, now: float, acts: list[Action]) -> Rollout:
    refusal = check_command(s, c)
    who = f" by {c.by}" if c.by else ""
    if refusal is not None:
        # the runtime answers the command at ``command_index`` 409 with ``refused``
        evidence = {"command": str(c.kind), "refused": refusal, "command_index": index}
        acts.append(
            Action(ActionKind.IGNORE, f"{c.kind}{who} refused: {refusal}", s.weight, evidence)
        )
        return s
    if c.kind is CommandKind.CLEANUP:
        if s.phase is Phase.ROLLED_BACK:
            acts.append(Action(ActionKind.REMOVE_CANARY, f"cleanup{who}: canary removed now", 0))
            return replace(s, cleanup_at=None, cleanup_now=True)
        if s.rollback_reason is None:
            s = _rollback(s, f"cleanup{who}", now, acts, {"by": c.by})
        return replace(s, cleanup_now=True)
    if c.kind is CommandKind.ROLLBACK:
        return _rollback(
            s,
            f"manual rollback{who}" + (f": {c.reason}" if c.reason else ""),
            now,
            acts,
            {"by": c.by},
        )
    if c.kind is CommandKind.PAUSE:
        return _pause(s, f"paused{who}", now, acts)
    if c.kind is CommandKind.RESUME:
        return _resume(s, f"resumed{who}", now, acts)
    if c.kind is CommandKind.PROMOTE:
        return _next_stage(s, f"promoted{who}: stage {s.stage + 1} wait skipped", now, acts)
    if c.kind is CommandKind.PROMOTE_FULL:
        s = _unpause(s, now)
        return _promote(replace(s, weight=100), f"promoted to 100%{who}", now, acts)
    weight = c.weight if c.weight is not None else s.weight
    s = _pause(s, f"weight set to {weight}%{who}; resume returns to stage {s.stage + 1}", now, acts)
    s = replace(s, weight=weight, weight_set_at=now, stage_started_at=None, credited=0.0)
    acts.append(Action(ActionKind.SET_WEIGHT, f"canary weight set to {weight}%{who}", weight))
    return s


# --------------------------------------------------------------------------- alerts


def _apply_alerts(s: Rollout, alerts: tuple[Alert, ...], now: float, acts: list[Action]) -> Rollout:
    """Apply each alert not applied before, once, in work linear in the number of alerts.

    A webhook body can carry tens of thousands of distinct alerts about one target. The keys
    of this pass are gathered in one set (never a per-alert copy of the record's set), and the
    alerts nothing is done about (no rule matches, started before the rollout, rollback
    refused) become one summarising decision per reason, naming the count and a few of them,
    not one decision each. Only alerts that matched a rule are remembered (``_remember``).
    """
    if not alerts:
        return s
    seen = set(s.handled_alerts)
    matched: list[str] = []
    skipped: dict[str, list[Alert]] = {}
    for alert in alerts:
        if alert.key in seen:
            continue
        seen.add(alert.key)
        rule = rule_for(s.policy.alert_rules, alert.labels)
        if rule is None:
            skipped.setdefault(": no rule matches", []).append(alert)
            continue
        matched.append(alert.key)
        early = alert.status == "firing" and alert.starts_at < s.started_at - _EPS
        if early and not rule.include_preexisting:
            skipped.setdefault(" started before the rollout", []).append(alert)
            continue
        if alert.status == "firing" and rule.action is AlertAction.ROLLBACK:
            if s.rollback_reason is not None:
                continue  # what it asks for is under way: nothing to add to the history
            refusal = check_command(s, Command(CommandKind.ROLLBACK))
            if refusal is not None:  # said, so that an alert that rolls nothing back is seen
                skipped.setdefault(f" firing; no rollback: {refusal}", []).append(alert)
                continue
        s = _tagged(_apply_rule(s, alert, rule, now, acts), acts)
    for why, group in skipped.items():
        acts.append(_summary(group, why, s.weight))
    s = _tagged(s, acts)
    if matched:
        s = replace(s, handled_alerts=_remember(s.handled_alerts, matched))
    return s


def _remember(handled: frozenset[str], new: list[str]) -> frozenset[str]:
    """The de-duplication keys a record keeps: at most ``HANDLED_ALERTS_KEPT``, newest first.

    Keys (``fingerprint:status:startsAt``) are kept only for alerts that matched a rule: the
    policy is fixed for the rollout, so an unmatched alert never matches later, and forgetting
    it costs at most one more "no rule matches" summary when Alertmanager re-sends it. Beyond
    the bound, the keys with the oldest ``startsAt`` are dropped. A dropped key's alert, if
    delivered again, is applied again as if new: a rollback rule is then refused (the rollout
    is already rolling back or over) and recorded as such, an observe or freeze rule is
    recorded twice, and a pause rule pauses again only if the rollout is running and the alert
    is (re-sent as) firing, which is what a firing pause alert asks for anyway. It takes more
    than ``HANDLED_ALERTS_KEPT`` newer distinct matching alerts on one rollout to get there.
    """
    keys = handled.union(new)
    if len(keys) <= HANDLED_ALERTS_KEPT:
        return keys
    newest = sorted(keys, key=lambda key: (_key_time(key), key))[-HANDLED_ALERTS_KEPT:]
    return frozenset(newest)


def _key_time(key: str) -> float:
    """The ``startsAt`` in an alert's key; unreadable or non-finite ones sort as oldest."""
    try:
        value = float(key.rpartition(":")[2])
    except ValueError:
        return -math.inf
    return value if math.isfinite(value) else -math.inf


def _alert_evidence(alert: Alert) -> dict[str, object]:
    return {
        "alert": alert.name,
        "labels": dict(alert.labels),
        "status": alert.status,
        "fingerprint": alert.fingerprint,
    }


def _summary(group: list[Alert], why: str, weight: int) -> Action:
    """One "ignore" decision for every alert of this pass skipped for the same reason."""
    if len(group) == 1:
        alone = {**_alert_evidence(group[0]), "count": 1}
        return Action(ActionKind.IGNORE, f"alert {group[0].name}{why}", weight, alone)
    named = group[:_NAMED_IN_SUMMARY]
    names = ", ".join(a.name for a in named)
    more = f" and {len(group) - len(named)} more" if len(group) > len(named) else ""
    evidence: dict[str, object] = {
        "count": len(group),
        "alerts": [a.name for a in named],
        "fingerprints": [a.fingerprint for a in named],
    }
    return Action(ActionKind.IGNORE, f"{len(group)} alerts ({names}{more}){why}", weight, evidence)


def _apply_rule(
    s: Rollout, alert: Alert, rule: AlertRule, now: float, acts: list[Action]
) -> Rollout:
    """What ``rule`` does about ``alert`` (a new alert that is not skipped)."""
    evidence = _alert_evidence(alert)
    if alert.status == "firing":
        if rule.action is AlertAction.ROLLBACK:
            return _rollback(s, f"alert {alert.name} firing", now, acts, evidence)
        if rule.action is AlertAction.PAUSE and s.phase in (
            Phase.PENDING,
            Phase.PROGRESSING,
            Phase.PAUSED,
        ):
            s = replace(s, alert_pauses=s.alert_pauses | {alert.fingerprint}, resume_at=None)
            if s.phase is Phase.PAUSED:
                acts.append(
                    Action(
                        ActionKind.OBSERVE,
                        f"alert {alert.name} firing; stays paused",
                        s.weight,
                        evidence,
                    )
                )
                return s
            return _pause(s, f"{_ALERT_PAUSE} {alert.name} firing", now, acts, evidence)
        what = "freeze: new rollouts refused" if rule.action is AlertAction.FREEZE else "recorded"
        acts.append(
            Action(ActionKind.OBSERVE, f"alert {alert.name} firing ({what})", s.weight, evidence)
        )
        return s
    # resolved
    if rule.action is AlertAction.PAUSE and alert.fingerprint in s.alert_pauses:
        remaining = s.alert_pauses - {alert.fingerprint}
        s = replace(s, alert_pauses=remaining)
        if not remaining and s.phase is Phase.PAUSED and _alert_paused(s):
            s = replace(s, resume_at=now + rule.cooldown)
            acts.append(
                Action(
                    ActionKind.OBSERVE,
                    f"alert {alert.name} resolved; resuming after {rule.cooldown:g}s cooldown",
                    s.weight,
                    evidence,
                )
            )
            return s
    acts.append(Action(ActionKind.OBSERVE, f"alert {alert.name} resolved", s.weight, evidence))
    return s


def _alert_paused(s: Rollout) -> bool:
    return (s.pause_reason or "").startswith(_ALERT_PAUSE)


# --------------------------------------------------------------------------- evaluation


def next_tick(now: float, interval: float) -> float:
    """The first multiple of ``interval`` (on the caller's clock) strictly after ``now``.

    Evaluations run on a shared grid, as Prometheus's rule evaluations do, rather than
    ``interval`` after each rollout's own stage start: every rollout with the same interval is
    then due at the same instants, so the evaluator batches all of them into one query per
    check per cycle (SPEC §7). A stage's first evaluation may come sooner than a full interval;
    it is credited only the time it actually observed.
    """
    return (math.floor(now / interval + 1e-9) + 1) * interval


def evaluation_due(s: Rollout, now: float) -> bool:
    """Whether a call at ``now`` is an evaluation (the caller must then supply measurements)."""
    return (
        s.phase in (Phase.PROGRESSING, Phase.PAUSED)
        and s.stage_started_at is not None
        and s.next_eval_at is not None
        and now + _EPS >= s.next_eval_at
    )


def _evaluate(s: Rollout, f: Findings, now: float, acts: list[Action]) -> Rollout:
    policy, stage, limits = s.policy, s.current_stage, s.policy.limits
    by_name = {m.check: m for m in f.measurements}
    results = [analysis.assess(policy.checks[name], by_name.get(name)) for name in stage.checks]
    overall = analysis.summarize(results)
    evidence: dict[str, object] = {
        a.check: {"verdict": str(a.verdict), "value": a.value, "detail": a.detail} for a in results
    }
    last = s.last_eval_at if s.last_eval_at is not None else s.stage_started_at or now
    s = replace(
        s,
        last_eval_at=now,
        next_eval_at=next_tick(now, policy.interval),
        stage_requests=s.stage_requests + _usable_requests(f.requests),
    )

    if overall is Verdict.FAILED:
        failures = dict(s.failures)
        for a in results:
            if a.verdict is Verdict.FAILED:
                failures[a.check] = failures.get(a.check, 0) + 1
        s = replace(s, failures=failures, consecutive_inconclusive=0, consecutive_errors=0)
        worst = max(
            (a for a in results if a.verdict is Verdict.FAILED), key=lambda a: failures[a.check]
        )
        if failures[worst.check] > limits.failure_limit:
            return _rollback(s, f"check {worst.check} failed: {worst.detail}", now, acts, evidence)
        acts.append(
            Action(
                ActionKind.HOLD,
                f"check {worst.check} failed ({failures[worst.check]} of "
                f"{limits.failure_limit} allowed): {worst.detail}",
                s.weight,
                evidence,
            )
        )
        return s

    if overall is Verdict.ERROR:
        errors = s.consecutive_errors + 1
        s = replace(s, consecutive_errors=errors, next_eval_at=now + policy.error_backoff)
        if errors >= limits.consecutive_error_limit:
            detail = next(a.detail for a in results if a.verdict is Verdict.ERROR)
            cause = detail.removeprefix("source error: ")
            return _rollback(
                s, f"{errors} consecutive source errors (last: {cause})", now, acts, evidence
            )
        acts.append(
            Action(
                ActionKind.HOLD,
                f"{next(a.detail for a in results if a.verdict is Verdict.ERROR)} "
                f"({errors} of {limits.consecutive_error_limit}); "
                f"retrying in {policy.error_backoff:g}s",
                s.weight,
                evidence,
            )
        )
        return s

    if overall is Verdict.INCONCLUSIVE:
        count = s.consecutive_inconclusive + 1
        s = replace(s, consecutive_inconclusive=count, consecutive_errors=0)
        missing = ", ".join(a.check for a in results if a.verdict is Verdict.INCONCLUSIVE)
        if count >= limits.inconclusive_limit and s.phase is Phase.PROGRESSING:
            reason = f"{count} inconclusive evaluations in a row (no data: {missing})"
            if limits.on_inconclusive is OnInconclusive.ROLLBACK:
                return _rollback(s, reason, now, acts, evidence)
            return _pause(s, reason, now, acts, evidence)
        if s.phase is Phase.PROGRESSING:
            acts.append(
                Action(
                    ActionKind.HOLD, f"no data for {missing}; stage timer holds", s.weight, evidence
                )
            )
        return s

    s = replace(s, consecutive_inconclusive=0, consecutive_errors=0)
    if s.phase is not Phase.PROGRESSING:
        return s
    credited = s.credited + max(0.0, min(now - last, policy.interval))
    s = replace(s, credited=credited)
    if credited + _EPS < stage.duration:
        return s
    seen = s.stage_requests
    if stage.min_requests and seen < stage.min_requests:
        seen_text = f"{seen:.0f}"
        acts.append(
            Action(
                ActionKind.HOLD,
                f"only {seen_text} of {stage.min_requests} canary requests; stage held",
                s.weight,
                {"canary_requests": seen, **evidence},
            )
        )
        return s
    return _stage_passed(s, now, acts, evidence)


def _usable_requests(requests: float | None) -> float:
    """Canary requests an evaluation may credit: unknown, negative or non-finite counts add
    nothing (NaN or +Inf would otherwise satisfy ``min_requests`` on their own)."""
    if requests is None or not math.isfinite(requests) or requests < 0:
        return 0.0
    return requests


def _stage_passed(
    s: Rollout, now: float, acts: list[Action], evidence: dict[str, object]
) -> Rollout:
    number = s.stage + 1
    if s.current_stage.gate is Gate.MANUAL:
        s = replace(s, stage_passed=True)
        return _pause(
            s, f"stage {number} passed; waiting for a manual promote", now, acts, evidence
        )
    return _next_stage(s, f"stage {number} passed", now, acts, evidence)


# --------------------------------------------------------------------------- transitions


def _fresh_stage(s: Rollout, index: int, weight: int, now: float) -> Rollout:
    return replace(
        s,
        stage=index,
        weight=weight,
        weight_set_at=now,
        stage_started_at=None,
        credited=0.0,
        paused_total=0.0,
        last_eval_at=None,
        next_eval_at=None,
        failures={},
        stage_requests=0.0,
        consecutive_inconclusive=0,
        consecutive_errors=0,
        stage_passed=False,
    )


def _next_stage(
    s: Rollout,
    reason: str,
    now: float,
    acts: list[Action],
    evidence: dict[str, object] | None = None,
) -> Rollout:
    s = _unpause(s, now)
    stages = s.policy.stages
    if s.stage + 1 >= len(stages):
        return _promote(s, f"{reason}; all stages passed", now, acts, evidence)
    index = s.stage + 1
    s = _fresh_stage(replace(s, phase=Phase.PROGRESSING), index, stages[index].weight, now)
    acts.append(
        Action(
            ActionKind.SET_WEIGHT,
            f"{reason}; stage {index + 1} of {len(stages)}: canary {s.weight}%",
            s.weight,
            evidence or {},
        )
    )
    return s


def _promote(
    s: Rollout,
    reason: str,
    now: float,
    acts: list[Action],
    evidence: dict[str, object] | None = None,
) -> Rollout:
    s = replace(
        s,
        phase=Phase.PROMOTING,
        promote_step="update-stable",
        weight_set_at=now,
        stage_passed=False,
    )
    acts.append(
        Action(
            ActionKind.PROMOTE, f"{reason}; updating stable to {s.image}", s.weight, evidence or {}
        )
    )
    return s


def _rollback(
    s: Rollout,
    reason: str,
    now: float,
    acts: list[Action],
    evidence: dict[str, object] | None = None,
) -> Rollout:
    restore = _stable_update_begun(s)  # check_command made sure previous_image is known
    s = replace(
        s,
        phase=Phase.ROLLING_BACK,
        weight=0,
        rollback_reason=reason,
        rollback_at=now,
        paused_at=None,
        resume_at=None,
        alert_pauses=frozenset(),
        stage_passed=False,
        promote_step=_RESTORE if restore else s.promote_step,
    )
    said = f"{reason}; restoring stable to {s.previous_image}" if restore else reason
    acts.append(Action(ActionKind.ROLLBACK, said, 0, evidence or {}))
    return s


def _pause(
    s: Rollout,
    reason: str,
    now: float,
    acts: list[Action],
    evidence: dict[str, object] | None = None,
) -> Rollout:
    s = replace(s, phase=Phase.PAUSED, paused_at=now, pause_reason=reason, resume_at=None)
    acts.append(Action(ActionKind.PAUSE, reason, s.weight, evidence or {}))
    return s


def _unpause(s: Rollout, now: float) -> Rollout:
    if s.phase is not Phase.PAUSED:
        return s
    paused = now - s.paused_at if s.paused_at is not None else 0.0
    return replace(
        s,
        phase=Phase.PROGRESSING,
        paused_at=None,
        pause_reason=None,
        resume_at=None,
        alert_pauses=frozenset(),
        paused_total=s.paused_total + paused,
        consecutive_inconclusive=0,
    )


def _resume(s: Rollout, reason: str, now: float, acts: list[Action]) -> Rollout:
    stage_weight = s.current_stage.weight
    s = _unpause(s, now)
    if s.weight != stage_weight:  # returning from a manual set-weight: the stage starts over
        s = _fresh_stage(s, s.stage, stage_weight, now)
        acts.append(
            Action(
                ActionKind.SET_WEIGHT,
                f"{reason}; stage {s.stage + 1} restarts at canary {stage_weight}%",
                stage_weight,
            )
        )
        return s
    acts.append(Action(ActionKind.RESUME, reason, s.weight))
    return s


# --------------------------------------------------------------------------- progress


def _stage_deadline(s: Rollout) -> float | None:
    """When the current stage (or its weight change) has run out of time, if it can."""
    limit = s.policy.limits.progress_deadline
    if s.phase is Phase.PENDING:
        return s.started_at + limit
    if s.phase is not Phase.PROGRESSING:
        return None
    if s.stage_started_at is None:
        return (s.weight_set_at or s.started_at) + limit
    return s.stage_started_at + s.paused_total + s.current_stage.duration + limit


def _progress(s: Rollout, obs: Observed, now: float, acts: list[Action]) -> Rollout:
    limit = s.policy.limits.progress_deadline
    deadline = _stage_deadline(s)
    if s.phase is Phase.PENDING:
        if obs.canary_ready:
            stages = s.policy.stages
            s = _fresh_stage(replace(s, phase=Phase.PROGRESSING), 0, stages[0].weight, now)
            acts.append(
                Action(
                    ActionKind.SET_WEIGHT,
                    f"canary ready; stage 1 of {len(stages)}: canary {s.weight}%",
                    s.weight,
                )
            )
        elif deadline is not None and now + _EPS >= deadline:
            return _rollback(s, f"canary not ready within {limit:g}s", now, acts)
        return s

    if s.phase is Phase.PROGRESSING:
        if s.stage_started_at is None:
            if obs.weight == s.weight and obs.canary_ready:
                s = replace(
                    s,
                    stage_started_at=now,
                    last_eval_at=now,
                    next_eval_at=next_tick(now, s.policy.interval),
                )
                acts.append(
                    Action(
                        ActionKind.STAGE_STARTED,
                        f"router applied canary {s.weight}%; stage {s.stage + 1} timer started",
                        s.weight,
                        {"observed_weight": obs.weight},
                    )
                )
                return s
            if deadline is not None and now + _EPS >= deadline:
                why = (
                    "canary not ready"
                    if obs.weight == s.weight
                    else (f"router did not apply canary {s.weight}% (reports {obs.weight})")
                )
                return _rollback(s, f"{why} within {limit:g}s", now, acts)
            return s
        if deadline is not None and now + _EPS >= deadline:
            return _rollback(
                s,
                f"progress deadline: stage {s.stage + 1} not passed within "
                f"{s.current_stage.duration + limit:g}s",
                now,
                acts,
            )
        return s

    if s.phase is Phase.PAUSED:
        if s.resume_at is not None and now + _EPS >= s.resume_at and not s.alert_pauses:
            return _resume(s, "alert cooldown over", now, acts)
        return s

    if s.phase is Phase.PROMOTING or (s.phase is Phase.FAILED and s.rollback_reason is None):
        return _promotion(s, obs, now, acts)

    if s.phase is Phase.ROLLING_BACK or (s.phase is Phase.FAILED and s.rollback_reason):
        return _rolling_back(s, obs, now, acts)
    return s


def _rolling_back(s: Rollout, obs: Observed, now: float, acts: list[Action]) -> Rollout:
    """A rollback is done once the router reports canary 0% and, if it interrupted the
    stable update, the stable runs ``previous_image`` again. Past ``progress_deadline`` it is
    Failed and keeps retrying, as a promotion that cannot update the stable does."""
    limit = s.policy.limits.progress_deadline
    restoring = s.promote_step == _RESTORE
    restored = not restoring or obs.stable_image == s.previous_image
    if obs.weight == 0 and restored:
        took = now - (s.rollback_at or now)
        s = replace(
            s,
            phase=Phase.ROLLED_BACK,
            rolled_back_at=now,
            finished_at=now,
            cleanup_at=now + (0.0 if s.cleanup_now else s.policy.scale_down_delay),
            message=None,
        )
        also = f" and stable runs {s.previous_image} again" if restoring else ""
        acts.append(
            Action(
                ActionKind.ROLLED_BACK,
                f"router applied canary 0%{also} {took:.3f}s after the trigger",
                0,
                {"time_to_rollback": took, "reason": s.rollback_reason},
            )
        )
        return s
    why = (
        f"router has not applied canary 0% after {limit:g}s; retrying"
        if obs.weight != 0
        else f"stable not restored to {s.previous_image} after {limit:g}s; retrying"
    )
    if s.phase is Phase.ROLLING_BACK and now + _EPS >= (s.rollback_at or now) + limit:
        s = replace(s, phase=Phase.FAILED, message=why)
        acts.append(Action(ActionKind.FAILED, why, 0))
    elif s.phase is Phase.FAILED and s.message != why:
        s = replace(s, message=why)  # what it still waits for changed: say so, no new decision
    return s


def _promotion(s: Rollout, obs: Observed, now: float, acts: list[Action]) -> Rollout:
    limit = s.policy.limits.progress_deadline
    if s.promote_step == "update-stable":
        if obs.stable_image == s.image:
            s = replace(
                s,
                phase=Phase.PROMOTING,
                promote_step="shift",
                weight=0,
                weight_set_at=now,
                message=None,
            )
            acts.append(
                Action(
                    ActionKind.SET_WEIGHT, f"stable runs {s.image}; all traffic back to stable", 0
                )
            )
        elif s.phase is Phase.PROMOTING and now + _EPS >= (s.weight_set_at or now) + limit:
            s = replace(
                s,
                phase=Phase.FAILED,
                message=f"stable not updated to {s.image} after {limit:g}s; retrying",
            )
            acts.append(Action(ActionKind.FAILED, s.message or "", s.weight))
        return s
    if s.promote_step == "shift" and obs.weight == 0:
        s = replace(s, phase=Phase.PROMOTING, promote_step="remove", message=None)
        acts.append(Action(ActionKind.REMOVE_CANARY, "canary no longer serves traffic", 0))
        return s
    if s.promote_step == "remove" and not obs.canary_present:
        s = replace(s, phase=Phase.SUCCEEDED, finished_at=now, promote_step=None, message=None)
        acts.append(Action(ActionKind.SUCCEEDED, f"{s.image} promoted", 0))
    return s


def _cleanup(s: Rollout, now: float, acts: list[Action]) -> Rollout:
    if s.phase is Phase.ROLLED_BACK and s.cleanup_at is not None and now + _EPS >= s.cleanup_at:
        s = replace(s, cleanup_at=None)
        acts.append(
            Action(
                ActionKind.REMOVE_CANARY,
                f"scale-down delay of {s.policy.scale_down_delay:g}s over",
                0,
            )
        )
    return s


# --------------------------------------------------------------------------- entry points


def decide(
    state: Rollout, observed: Observed, findings: Findings, now: float
) -> tuple[Rollout, tuple[Action, ...]]:
    """The next state of a rollout and the decisions that led there. Pure."""
    acts: list[Action] = []
    s = state
    if s.phase.terminal:
        for index, command in enumerate(findings.commands):
            s = _tagged(_apply_command(s, command, index, now, acts), acts)
        return _tagged(_cleanup(s, now, acts), acts), tuple(acts)
    s = _remember_stable(s, observed)
    for index, command in enumerate(findings.commands):
        s = _tagged(_apply_command(s, command, index, now, acts), acts)
    s = _apply_alerts(s, findings.alerts, now, acts)
    if evaluation_due(s, now):
        s = _tagged(_evaluate(s, findings, now, acts), acts)
    if s.phase.active:
        s = _tagged(_progress(s, observed, now, acts), acts)
    return s, tuple(acts)


def _tagged(s: Rollout, acts: list[Action]) -> Rollout:
    """Stamp the actions of the step just taken with the phase that step left (a ``hold``
    decided before a rollback in the same call is recorded as Progressing, not RollingBack)."""
    for i in range(len(acts) - 1, -1, -1):
        if acts[i].phase is not None:
            break
        acts[i] = replace(acts[i], phase=s.phase)
    return s


def hand_over(state: Rollout, successor: str) -> tuple[Rollout, tuple[Action, ...]]:
    """A superseded rollout, once rolled back, leaves its canary slot to ``successor``.

    The successor's canary reuses the slot (same workload name), so the scale-down that
    ``scale_down_delay`` would schedule must not run: it would remove the new canary.
    """
    if state.phase is not Phase.ROLLED_BACK or state.cleanup_at is None:
        return state, ()
    action = Action(ActionKind.OBSERVE, f"canary slot handed over to rollout {successor}", 0)
    return replace(state, cleanup_at=None, successor=successor), (action,)


def reconcile(state: Rollout, observed: Observed) -> tuple[Effect, ...]:
    """Effects still needed for the world to match ``state``. Idempotent, level-triggered."""
    s, effects = state, []
    if s.successor is not None:
        return ()  # the canary slot belongs to the successor now
    promoting = s.phase in (Phase.PROMOTING, Phase.FAILED) and s.rollback_reason is None
    serving = s.phase in (Phase.PENDING, Phase.PROGRESSING, Phase.PAUSED) or (
        promoting and s.promote_step in ("update-stable", "shift")
    )
    draining = s.rollback_reason is not None and (
        s.phase is not Phase.ROLLED_BACK or s.cleanup_at is not None
    )
    if serving and not (observed.canary_present and observed.canary_ready):
        effects.append(Effect(EffectKind.ENSURE_CANARY, image=s.image))
    if s.phase is not Phase.PENDING and observed.weight != s.weight:
        effects.append(Effect(EffectKind.SET_WEIGHT, weight=s.weight))
    if promoting and s.promote_step == "update-stable" and observed.stable_image != s.image:
        effects.append(Effect(EffectKind.UPDATE_STABLE, image=s.image))
    restoring = s.promote_step == _RESTORE and s.phase in (Phase.ROLLING_BACK, Phase.FAILED)
    if restoring and s.previous_image is not None and observed.stable_image != s.previous_image:
        effects.append(Effect(EffectKind.UPDATE_STABLE, image=s.previous_image))
    if not (serving or draining) and observed.canary_present:
        effects.append(Effect(EffectKind.REMOVE_CANARY, image=s.image))
    return tuple(effects)


def next_wakeup(s: Rollout) -> float | None:
    """The next moment ``decide`` has something to do without new findings."""
    times = [
        s.next_eval_at if evaluation_due(s, float("inf")) else None,
        s.resume_at,
        _stage_deadline(s),
        s.cleanup_at if s.phase is Phase.ROLLED_BACK else None,
    ]
    if s.phase is Phase.ROLLING_BACK and s.rollback_at is not None:
        times.append(s.rollback_at + s.policy.limits.progress_deadline)
    if s.phase is Phase.PROMOTING and s.promote_step == "update-stable" and s.weight_set_at:
        times.append(s.weight_set_at + s.policy.limits.progress_deadline)
    present = [t for t in times if t is not None]
    return min(present) if present else None


def stage_label(s: Rollout) -> str:
    stages: tuple[Stage, ...] = s.policy.stages
    return f"{min(s.stage + 1, len(stages))}/{len(stages)}"
