"""``canaryd check``'s lines on how fast a bad canary is rolled back, per target and policy.

The figures come from ``core.timing``'s model (stated there and in ``rules/README.md``, *Worst
cases*) and the pipeline ``config.pipeline`` read; this module only words them. Offline, like
``simulate``: nothing here talks to Prometheus.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from canaryd.config.pipeline import Pipeline
from canaryd.config.settings import Target
from canaryd.core import timing
from canaryd.core.durations import format_duration, parse_duration
from canaryd.core.model import AlertAction, Check, Policy
from canaryd.core.rules import rule_for


def describe_speed(
    policy: Policy, targets: Sequence[Target], pipe: Pipeline, traffic: tuple[float, float]
) -> list[str]:
    """Per target using ``policy``: breach→rollback by PromQL and by alert, worst case, from
    ``core.timing``'s model; then each compare check's sample size at ``traffic`` (requests
    per second, stable's error share)."""
    lines = []
    for target in targets:
        apply_s, why = timing.router_apply(target.router.kind)
        scrape = pipe.scrape_for(target.job)
        where = f" ({pipe.prometheus_file})" if pipe.prometheus_file else " (Prometheus default)"
        lines.append(
            f"  target {target.name}: job {target.job} scraped every "
            f"{format_duration(scrape)}{where}; router {target.router.kind} "
            f"{_plus(apply_s)} ({why})"
        )
        lines.append("    " + _promql_speed(policy, scrape, apply_s))
        lines += ["    " + line for line in _alert_speed(policy, target, pipe, apply_s)]
    rps, error_rate = traffic
    for check in timing.staged_checks(policy, "compare"):
        lines.append("  " + _compare_speed(policy, check, rps, error_rate))
    return lines


def _plus(seconds: float | None) -> str:
    return f"+{format_duration(seconds)}" if seconds is not None else "+? (not bounded here)"


def _promql_speed(policy: Policy, scrape: float, apply_s: float | None) -> str:
    window = parse_duration(policy.window)
    breaches = [
        timing.threshold_breach(policy, c, window, scrape)
        for c in timing.staged_checks(policy, "threshold")
    ]
    if not breaches:
        return "full breach → rollback by PromQL: no threshold check in any stage"
    router = apply_s or 0.0
    worst = max(breaches, key=lambda b: b.total)
    failing = policy.limits.failure_limit + 1
    parts = ", ".join(
        f"{b.check} {format_duration(b.total + router)} "
        f"(lag {format_duration(b.lag)}: {_share(b.fraction)} of {policy.window})"
        for b in breaches
    )
    sparse = (
        f"; a {policy.window} window holds fewer than two {format_duration(scrape)} scrapes: "
        "rate() over it returns no data"
        if window < 2 * scrape
        else ""
    )
    return (
        f"full breach → rollback by PromQL ≤ {format_duration(worst.total + router)} "
        f"{'' if apply_s is not None else '+ the router '}"
        f"(window lag + {failing} × {format_duration(policy.interval)} interval + router): {parts}"
        f"{sparse}"
    )


def _alert_speed(
    policy: Policy, target: Target, pipe: Pipeline, apply_s: float | None
) -> list[str]:
    """The Prometheus alerts that concern ``target`` and that ``policy`` rolls back on."""
    out = []
    for alert in pipe.alerts:
        rule = rule_for(policy.alert_rules, alert.labels)
        if rule is None or rule.action is not AlertAction.ROLLBACK:
            continue
        if not target.concerns(alert.labels):
            continue
        window, fraction = _expr_breach(alert.expr)
        lag = timing.window_lag(fraction, window, pipe.scrape_for(target.job))
        wait = pipe.group_wait(alert.labels)
        total = lag + pipe.evaluation + alert.hold + wait + (apply_s or 0.0)
        am = f" ({pipe.alertmanager_file})" if pipe.alertmanager_file else " (default)"
        out.append(
            f"full breach → rollback by alert {alert.name} ≤ {format_duration(total)} "
            f"(lag {format_duration(lag)}: {_share(fraction)} of {format_duration(window)} + "
            f"evaluation {format_duration(pipe.evaluation)} + for {format_duration(alert.hold)}"
            f" + group_wait {format_duration(wait)}{am} + router)"
        )
    if not out:
        known = f"{pipe.prometheus_file}'s rule files" if pipe.prometheus_file else "(none known)"
        out.append(
            f"by alert: no alert in {known} concerns it and matches a rollback rule of "
            f"{policy.name} (by the labels the alert rule sets)"
        )
    return out


def _expr_breach(expr: str) -> tuple[float, float]:
    """An alert expression's longest range and the share of it a full breach must fill:
    ``... > 0.05`` fires once 5% of the window is bad (``< t``: once 1 − t is)."""
    ranges = [parse_duration(r) for r in re.findall(r"\[(\d+[smhd])\]", expr)]
    window = max(ranges, default=0.0)
    bound = re.search(r"([<>])=?\s*([0-9.]+(?:e-?\d+)?)\s*$", expr.strip())
    if bound is None:
        return window, 1.0
    op = "<=" if bound.group(1) == ">" else ">="  # the healthy side, as a check states it
    return window, timing.breach_fraction(expr, op, float(bound.group(2)))


def _compare_speed(policy: Policy, check: Check, rps: float, error_rate: float) -> str:
    if check.compare == "errors":
        d = timing.detection(policy, check, rps, error_rate)
        what = f"2 × stable's {error_rate:.2%} errors"
    else:
        bounds = timing.DEFAULT_BOUNDS
        d = timing.detection(policy, check, rps, timing.SLOW_SHARE, bounds=bounds)
        what = (
            f"2 × stable's {timing.SLOW_SHARE:.0%} of requests slower than one of "
            f"{bounds} bucket bounds, the others unmoved"
        )
    head = (
        f"{check.name}: canary at {what}, {rps:g} req/s: caught in "
        f"{d.detected / d.runs:.0%} of fastest rollouts"
    )
    if d.median_requests is None or d.median_seconds is None:
        return head
    return (
        f"{head}, after a median {d.median_requests:,.0f} canary requests, "
        f"{format_duration(d.median_seconds)} after the rollout's first evaluation (which "
        f"only takes the baseline: evidence starts one interval later)"
    )


def _share(fraction: float) -> str:
    return f"{fraction * 100:.3g}%"
