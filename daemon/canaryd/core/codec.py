"""Rollouts and policies as plain JSON-able dicts, for the state store and the HTTP API.

The record embeds the policy the rollout started with, so a policy file edited mid-rollout
never changes the plan of a rollout already under way (Argo Rollouts keeps a hash of the plan
for the same reason). ``SCHEMA`` is bumped whenever the shape changes incompatibly; a field
added with a default (``previous_image``) keeps the schema, and a record written before it
existed loads with the default.

Records written before ``pause_cause`` existed are read once into the typed field: a paused
record whose ``pause_reason`` begins with "alert" was paused by an alert (the only place the
old engine read its own words back, now confined to loading such a record).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, is_dataclass
from typing import Any

from canaryd.core.model import (
    MIN_WINDOW,
    Action,
    AlertAction,
    AlertRule,
    Cause,
    Check,
    CompareState,
    Gate,
    Limits,
    Matcher,
    NoData,
    OnInconclusive,
    Phase,
    Policy,
    PromoteStep,
    Rollout,
    Scope,
    SplitState,
    Stage,
)

SCHEMA = 1


def _plain(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return _plain(asdict(value))
    if isinstance(value, frozenset):
        return sorted(value)
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def policy_to_dict(policy: Policy) -> dict[str, Any]:
    out: dict[str, Any] = _plain(asdict(policy))
    return out


def policy_from_dict(d: Mapping[str, Any]) -> Policy:
    return Policy(
        name=d["name"],
        stages=tuple(
            Stage(
                weight=int(s["weight"]),
                duration=float(s["duration"]),
                checks=tuple(s["checks"]),
                gate=Gate(s["gate"]),
                min_requests=int(s["min_requests"]),
            )
            for s in d["stages"]
        ),
        checks={
            name: Check(
                name=c["name"],
                query=c["query"],
                op=c["op"],
                threshold=float(c["threshold"]),
                kind=c["kind"],
                no_data=NoData(c["no_data"]),
                params={k: float(v) for k, v in c["params"].items()},
                compare=c.get("compare", ""),
                queries=dict(c.get("queries", {})),
                tolerance=float(c.get("tolerance", 0.0)),
                alpha_weight=float(c.get("alpha_weight", 1.0)),
            )
            for name, c in d["checks"].items()
        },
        alert_rules=tuple(
            AlertRule(
                matchers=tuple(Matcher(**m) for m in r["matchers"]),
                action=AlertAction(r["action"]),
                cooldown=float(r["cooldown"]),
                include_preexisting=bool(r["include_preexisting"]),
                name=r["name"],
            )
            for r in d["alert_rules"]
        ),
        limits=Limits(
            failure_limit=int(d["limits"]["failure_limit"]),
            inconclusive_limit=int(d["limits"]["inconclusive_limit"]),
            consecutive_error_limit=int(d["limits"]["consecutive_error_limit"]),
            progress_deadline=float(d["limits"]["progress_deadline"]),
            on_inconclusive=OnInconclusive(d["limits"]["on_inconclusive"]),
        ),
        interval=float(d["interval"]),
        error_backoff=float(d["error_backoff"]),
        scale_down_delay=float(d["scale_down_delay"]),
        window=d["window"],
        params=dict(d["params"]),
        alpha=float(d.get("alpha", 0.05)),
        scope=Scope(d.get("scope", Scope.AGE)),
        min_window=float(d.get("min_window", MIN_WINDOW)),
        split_tolerance=_optional_float(d.get("split_tolerance")),
    )


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def rollout_to_dict(r: Rollout) -> dict[str, Any]:
    out: dict[str, Any] = {"schema": SCHEMA}
    for name in Rollout.__slots__:
        value = getattr(r, name)
        out[name] = policy_to_dict(value) if name == "policy" else _plain(value)
    return out


def rollout_from_dict(d: Mapping[str, Any]) -> Rollout:
    if d.get("schema") != SCHEMA:
        raise ValueError(f"rollout record schema {d.get('schema')!r}, expected {SCHEMA}")
    fields = {k: v for k, v in d.items() if k != "schema"}
    fields["policy"] = policy_from_dict(d["policy"])
    fields["phase"] = Phase(d["phase"])
    fields["failures"] = dict(d["failures"])
    fields["alert_pauses"] = frozenset(d["alert_pauses"])
    fields["handled_alerts"] = frozenset(d["handled_alerts"])
    step = d.get("promote_step")
    fields["promote_step"] = None if step is None else PromoteStep(step)
    fields["pause_cause"] = _pause_cause(d)
    fields["compare"] = {
        name: CompareState(
            last=dict(c["last"]),
            counted=dict(c["counted"]),
            logs={event: tuple(logs) for event, logs in c["logs"].items()},
            concluded=bool(c["concluded"]),
        )
        for name, c in d.get("compare", {}).items()
    }
    fields["split"] = _split_state(d.get("split"))
    return Rollout(**fields)


def _split_state(d: Mapping[str, Any] | None) -> SplitState | None:
    """The stage's verified split (a record stored before it existed has none)."""
    if d is None:
        return None
    return SplitState(
        weight=int(d["weight"]),
        last=dict(d["last"]),
        counted=dict(d["counted"]),
        logs={side: tuple(logs) for side, logs in d["logs"].items()},
        concluded=bool(d["concluded"]),
    )


def _pause_cause(d: Mapping[str, Any]) -> Cause | None:
    """The record's pause cause; for a record stored before it was typed, derived once."""
    if "pause_cause" in d:
        return None if d["pause_cause"] is None else Cause(d["pause_cause"])
    reason = d.get("pause_reason")
    if reason is None:
        return None
    return Cause.ALERT if str(reason).startswith("alert") else Cause.MANUAL_PAUSE


def action_to_dict(a: Action) -> dict[str, Any]:
    return {
        "kind": str(a.kind),
        "cause": None if a.cause is None else str(a.cause),
        "reason": a.reason,
        "weight": a.weight,
        "evidence": _plain(a.evidence),
    }
