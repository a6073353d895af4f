"""Alertmanager alerts applied to a rollout: each new alert once, by the first rule it matches.

A webhook body can carry tens of thousands of distinct alerts about one target, and
Alertmanager re-sends firing alerts, so this is written to be linear in the alerts of a pass
and to keep a bounded memory of what it applied (``HANDLED_ALERTS_KEPT``).
"""

from __future__ import annotations

import math
from dataclasses import replace

from canaryd.core.model import (
    Action,
    ActionKind,
    Alert,
    AlertAction,
    AlertRule,
    AlertStatus,
    Cause,
    Command,
    CommandKind,
    Phase,
    Rollout,
)
from canaryd.core.rules import rule_for
from canaryd.core.stages.transitions import (
    EPS,
    Step,
    check_command,
    decision,
    pause,
    rollback,
    stamped,
)

HANDLED_ALERTS_KEPT = 1024  # de-duplication keys a record keeps (see ``_remember``)
_NAMED_IN_SUMMARY = 5  # alerts named in a summarising "ignore" decision


def apply_alerts(s: Rollout, alerts: tuple[Alert, ...], now: float) -> Step:
    """Apply each alert not applied before, once, in work linear in the number of alerts.

    A webhook body can carry tens of thousands of distinct alerts about one target. The keys
    of this pass are gathered in one set (never a per-alert copy of the record's set), and the
    alerts nothing is done about (no rule matches, started before the rollout, rollback
    refused) become one summarising decision per reason, naming the count and a few of them,
    not one decision each. Only alerts that matched a rule are remembered (``_remember``).
    Each rule's decisions are stamped with the phase it left; the summaries with the last.
    """
    if not alerts:
        return s, ()
    seen = set(s.handled_alerts)
    matched: list[str] = []
    skipped: dict[str, list[Alert]] = {}
    acts: list[Action] = []
    for alert in alerts:
        if alert.key in seen:
            continue
        seen.add(alert.key)
        rule = rule_for(s.policy.alert_rules, alert.labels)
        if rule is None:
            skipped.setdefault(": no rule matches", []).append(alert)
            continue
        matched.append(alert.key)
        firing = alert.status is AlertStatus.FIRING
        early = firing and alert.starts_at < s.started_at - EPS
        if early and not rule.include_preexisting:
            skipped.setdefault(" started before the rollout", []).append(alert)
            continue
        if firing and rule.action is AlertAction.ROLLBACK:
            if s.rollback_reason is not None:
                continue  # what it asks for is under way: nothing to add to the history
            refusal = check_command(s, Command(CommandKind.ROLLBACK))
            if refusal is not None:  # said, so that an alert that rolls nothing back is seen
                skipped.setdefault(f" firing; no rollback: {refusal}", []).append(alert)
                continue
        s, done = stamped(_apply_rule(s, alert, rule, now))
        acts.extend(done)
    summaries = tuple(_summary(group, why, s.weight) for why, group in skipped.items())
    s, summaries = stamped((s, summaries))
    if matched:
        s = replace(s, handled_alerts=_remember(s.handled_alerts, matched))
    return s, (*acts, *summaries)


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
        "status": str(alert.status),
        "fingerprint": alert.fingerprint,
    }


def _summary(group: list[Alert], why: str, weight: int) -> Action:
    """One "ignore" decision for every alert of this pass skipped for the same reason."""
    if len(group) == 1:
        alone = {**_alert_evidence(group[0]), "count": 1}
        text = f"alert {group[0].name}{why}"
        return decision(ActionKind.IGNORE, Cause.ALERT_IGNORED, text, weight, alone)
    named = group[:_NAMED_IN_SUMMARY]
    names = ", ".join(a.name for a in named)
    more = f" and {len(group) - len(named)} more" if len(group) > len(named) else ""
    evidence: dict[str, object] = {
        "count": len(group),
        "alerts": [a.name for a in named],
        "fingerprints": [a.fingerprint for a in named],
    }
    text = f"{len(group)} alerts ({names}{more}){why}"
    return decision(ActionKind.IGNORE, Cause.ALERT_IGNORED, text, weight, evidence)


def _apply_rule(s: Rollout, alert: Alert, rule: AlertRule, now: float) -> Step:
    """What ``rule`` does about ``alert`` (a new alert that is not skipped)."""
    if alert.status is AlertStatus.FIRING:
        return _firing(s, alert, rule, now)
    return _resolved(s, alert, rule, now)


def _firing(s: Rollout, alert: Alert, rule: AlertRule, now: float) -> Step:
    evidence = _alert_evidence(alert)
    if rule.action is AlertAction.ROLLBACK:
        return rollback(s, Cause.ALERT, f"alert {alert.name} firing", now, evidence)
    if rule.action is AlertAction.PAUSE and s.phase in (
        Phase.PENDING,
        Phase.PROGRESSING,
        Phase.PAUSED,
    ):
        s = replace(s, alert_pauses=s.alert_pauses | {alert.fingerprint}, resume_at=None)
        if s.phase is Phase.PAUSED:
            text = f"alert {alert.name} firing; stays paused"
            return s, (decision(ActionKind.OBSERVE, Cause.ALERT, text, s.weight, evidence),)
        return pause(s, Cause.ALERT, f"alert {alert.name} firing", now, evidence)
    what = "freeze: new rollouts refused" if rule.action is AlertAction.FREEZE else "recorded"
    text = f"alert {alert.name} firing ({what})"
    return s, (decision(ActionKind.OBSERVE, Cause.ALERT, text, s.weight, evidence),)


def _resolved(s: Rollout, alert: Alert, rule: AlertRule, now: float) -> Step:
    evidence = _alert_evidence(alert)
    if rule.action is AlertAction.PAUSE and alert.fingerprint in s.alert_pauses:
        remaining = s.alert_pauses - {alert.fingerprint}
        s = replace(s, alert_pauses=remaining)
        if not remaining and s.phase is Phase.PAUSED and s.pause_cause is Cause.ALERT:
            s = replace(s, resume_at=now + rule.cooldown)
            text = f"alert {alert.name} resolved; resuming after {rule.cooldown:g}s cooldown"
            return s, (
                decision(ActionKind.OBSERVE, Cause.ALERT_RESOLVED, text, s.weight, evidence),
            )
    text = f"alert {alert.name} resolved"
    return s, (decision(ActionKind.OBSERVE, Cause.ALERT_RESOLVED, text, s.weight, evidence),)
