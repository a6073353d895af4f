"""Alert rules: which policy rule an Alertmanager alert triggers, and whether a start is allowed.

Matchers follow Alertmanager's own semantics: ``=``/``!=`` compare strings, ``=~``/``!~`` are
fully anchored regular expressions, and a missing label is the empty string. Rules are tried in
order and the first match wins, so a policy can put a narrow ``observe`` rule before a broad
``rollback`` one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache

from canaryd.core.model import AlertAction, AlertRule, Matcher, Policy, Rollout

MATCH_OPS = ("=~", "!~", "!=", "=")


@lru_cache(maxsize=1024)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(f"(?:{pattern})\\Z")


def parse_matcher(text: str) -> Matcher:
    """``severity="critical"`` / ``service=~"matriz.*"`` -> Matcher; ValueError if malformed."""
    for op in MATCH_OPS:
        label, sep, value = text.partition(op)
        if sep:
            label, value = label.strip(), value.strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
                value = value[1:-1]
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", label):
                raise ValueError(f"bad label name {label!r} in matcher {text!r}")
            matcher = Matcher(label, op, value)
            if op in ("=~", "!~"):
                try:
                    _compiled(value)
                except re.error as exc:
                    raise ValueError(f"bad regular expression in matcher {text!r}: {exc}") from exc
            return matcher
    raise ValueError(f"matcher {text!r} has none of the operators =, !=, =~, !~")


def matches(matcher: Matcher, labels: Mapping[str, str]) -> bool:
    value = labels.get(matcher.label, "")
    if matcher.op == "=":
        return value == matcher.value
    if matcher.op == "!=":
        return value != matcher.value
    found = _compiled(matcher.value).match(value) is not None
    return found if matcher.op == "=~" else not found


def rule_for(rules: Iterable[AlertRule], labels: Mapping[str, str]) -> AlertRule | None:
    """The first rule whose matchers all hold for ``labels``."""
    for rule in rules:
        if all(matches(m, labels) for m in rule.matchers):
            return rule
    return None


class AdmissionVerdict(StrEnum):
    START = "start"  # no active rollout: start
    SUPERSEDE = "supersede"  # asked to replace the active rollout: roll it back, then start
    REFUSE = "refuse"  # frozen, or a rollout is active and replacing it was not asked


@dataclass(frozen=True, slots=True)
class Admission:
    """Whether a new rollout may start, and why (``reason`` is words for the 409)."""

    verdict: AdmissionVerdict
    reason: str
    active: str | None = None  # the active rollout a refusal is about (the 409 names it)


def admit(
    active: Rollout | None,
    image: str,
    policy: Policy,
    firing: Iterable[Mapping[str, str]],
    supersede: bool = False,
) -> Admission:
    """Decide on a start request, given the target's active rollout and its firing alerts.

    A firing alert matching a ``freeze`` rule refuses every start. The same image as the active
    rollout is a conflict. Another image is a conflict too unless the caller asked to
    ``supersede`` (SPEC §3): then the old canary is rolled back and the new rollout starts
    fresh, never continuing the old analysis. Replacing a rollout is never implicit, because a
    second pipeline or a mistyped target would otherwise silently end someone else's rollout.
    """
    for labels in firing:
        rule = rule_for(policy.alert_rules, labels)
        if rule is not None and rule.action is AlertAction.FREEZE:
            name = labels.get("alertname", "alert")
            return Admission(AdmissionVerdict.REFUSE, f"frozen: alert {name} is firing")
    if active is None or active.ended:
        return Admission(AdmissionVerdict.START, "no active rollout")
    if active.image == image:
        return Admission(
            AdmissionVerdict.REFUSE, f"rollout {active.id} of {image} is already active", active.id
        )
    if not supersede:
        return Admission(
            AdmissionVerdict.REFUSE,
            f"rollout {active.id} of {active.image} is active ({active.phase}, canary "
            f"{active.weight}%); ask to supersede it (canaryctl start --supersede, "
            '"supersede": true) to roll it back and start this one',
            active.id,
        )
    return Admission(AdmissionVerdict.SUPERSEDE, f"superseded by {image}", active.id)
