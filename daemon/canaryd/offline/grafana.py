"""``canaryctl render grafana``: one Grafana dashboard for the targets of a config.

What an SRE expects of a canary dashboard (Flagger's, Argo's), built from what canaryd really
asks Prometheus, not from a guess at the job's name:

- variables ``datasource`` (any Prometheus) and ``target`` (the config's targets);
- request rate (req/s), success rate (percent) and latency P50/P95/P99 (seconds), each with the
  canary beside the stable, from the policy's own queries filled with the target's labels
  (``offline.queries``, the daemon's templating); the success rate is the policy's success
  check when it has one, the latencies are its ``histogram_quantile`` check at three quantiles;
- one panel per check (canary and stable, the threshold as a line, the check's unit from
  ``core.units``), the weight canaryd asked beside the weight the router reports and the share
  the canary was measured to serve (``canaryd_rollout_weight``, ``canaryd_router_weight``,
  ``canaryd_observed_weight``), stage, verdicts and rollbacks;
- decisions as annotations, from canaryd's own metrics: a phase entered
  (``canaryd_rollout_phase``), a decision taken (``canaryd_decisions_total``), a rollback in red.

Why each query is wrapped in ``label_replace(..., "canaryd_target", ...)``: targets differ by
their labels (``job``, ``namespace``...), not by a label the ``target`` variable could select,
so each target's query is tagged with its name, the tagged queries are joined with ``or``, and
``and on (canaryd_target)`` a one-sample vector tagged ``$target`` keeps the chosen one. Grafana
fills ``$target`` before Prometheus parses the query; the target names are config names.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from canaryd.core import templates, units
from canaryd.core.durations import format_duration
from canaryd.core.model import Check, Policy
from canaryd.offline.queries import STABLE, Target, query, thresholds
from canaryd.runtime.evaluator import CANARY, DEFAULT_REQUESTS_QUERY, template_variables

SCHEMA_VERSION = 39
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
TARGET_LABEL = "canaryd_target"
QUANTILES = (0.5, 0.95, 0.99)
_BOTH = (CANARY, STABLE)
# The daemon's request count (for min_requests) less its "* interval" factor: requests per second.
REQUEST_RATE = DEFAULT_REQUESTS_QUERY.removesuffix(" * {{interval_seconds}}")
SUCCESS_RATE = (
    'sum by ({{group}}) (rate(http_requests_total{job=~"{{job}}",deployment=~"{{deployment}}",'
    'status!~"5.."}[{{window}}])) / sum by ({{group}}) (rate(http_requests_total{job=~"{{job}}",'
    'deployment=~"{{deployment}}"}[{{window}}]))'
)
_QUANTILE = re.compile(r"histogram_quantile\(\s*[0-9.]+\s*,")
_WIDTH, _HEIGHT = 12, 8


@dataclass(frozen=True, slots=True)
class Source:
    """One target drawn on the dashboard: its labels and name, and its policy."""

    target: Target
    policy: Policy


@dataclass(frozen=True, slots=True)
class _Panel:
    title: str
    targets: tuple[tuple[str, str], ...]  # (PromQL, legend)
    unit: str = "none"
    threshold: Check | None = None
    bounds: tuple[float, float] | None = None
    description: str = ""


def dashboard(sources: Sequence[Source], uid: str, title: str) -> dict[str, Any]:
    """The dashboard (Grafana JSON model, schema 39) for ``sources`` (at least one)."""
    first = sources[0].policy
    panels = [
        *_golden_panels(sources),
        *_check_panels(sources),
        *_own_panels(first),
    ]
    laid = [_layout(p, i) for i, p in enumerate(panels)]
    for number, panel in enumerate(laid, start=1):
        panel["id"] = number
    names = [s.target.name for s in sources]
    return {
        "uid": uid,
        "title": title,
        "description": "canaryd rollouts: canary beside stable, checks, weights and decisions",
        "tags": ["canaryd"],
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "editable": True,
        "graphTooltip": 1,
        "time": {"from": "now-1h", "to": "now"},
        "refresh": format_duration(first.interval),
        "templating": {"list": [_datasource_variable(), _target_variable(names)]},
        "annotations": {"list": _annotations()},
        "panels": laid,
    }


def dashboard_uid(name: str) -> str:
    """``canaryd-<name>``, within Grafana's 40 characters of ``[A-Za-z0-9_-]``."""
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-") or "policy"
    uid = f"canaryd-{slug}"
    if len(uid) <= 40:
        return uid
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{uid[:31]}-{digest}"


# --------------------------------------------------------------------------- the panels


def _golden_panels(sources: Sequence[Source]) -> list[_Panel]:
    """Request rate, success rate and latency quantiles, canary beside stable."""
    rate = _per_target(sources, lambda s: _fill(s, REQUEST_RATE))
    success_check = _success_check(sources[0].policy)
    success = _per_target(sources, _success_query)
    panels = [
        _Panel("Request rate", ((rate, "{{deployment}}"),), "reqps"),
        _Panel(
            "Success rate",
            ((success, "{{deployment}}"),),
            units.GRAFANA_UNITS[units.RATIO],
            success_check,
            description="Share of requests answered without a 5xx, over the policy's window.",
        ),
    ]
    latency_check = _latency_check(sources[0].policy)
    if latency_check is not None:
        drawn = [s for s in sources if _latency_check(s.policy) is not None]
        quantiles = tuple(
            (_per_target(drawn, partial(_quantile, q=q)), f"P{q * 100:g} {{{{deployment}}}}")
            for q in QUANTILES
        )
        panels.append(
            _Panel(
                "Latency P50 / P95 / P99",
                quantiles,
                units.GRAFANA_UNITS[units.SECONDS],
                latency_check,
            )
        )
    return panels


def _check_panels(sources: Sequence[Source]) -> list[_Panel]:
    """One panel per check of the first source's policy (targets sharing it fill in theirs)."""
    panels = []
    for check in thresholds(sources[0].policy):
        expr = _per_target(
            [s for s in sources if check.name in s.policy.checks],
            partial(_check_query, name=check.name),
        )
        title = f"check {check.name} ({check.op} {_number(check.threshold)})"
        unit = units.GRAFANA_UNITS[units.unit_of(check)]
        panels.append(_Panel(title, ((expr, "{{deployment}}"),), unit, check))
    return panels


def _own_panels(policy: Policy) -> list[_Panel]:
    """canaryd's own metrics for the chosen target (``docs/metrics.md``)."""
    t, w = '{target=~"$target"}', policy.window
    return [
        _Panel(
            "Canary weight: asked vs measured",
            (
                (f"canaryd_rollout_weight{t}", "asked by canaryd"),
                (f"canaryd_router_weight{t}", "the router's read-back"),
                (f"canaryd_observed_weight{t}", "measured share of requests"),
            ),
            "percent",
            bounds=(0, 100),
        ),
        _Panel(
            "Stage and phase",
            (
                (f"canaryd_rollout_stage{t}", "stage"),
                (f"canaryd_rollout_phase{t} == 1", "{{phase}}"),
            ),
        ),
        _Panel(
            "Check verdicts",
            (
                (
                    f"sum by (check, result) (increase(canaryd_check_results_total{t}[{w}]))",
                    "{{check}} {{result}}",
                ),
            ),
        ),
        _Panel(
            "Rollbacks",
            ((f"sum by (reason) (increase(canaryd_rollbacks_total{t}[{w}]))", "{{reason}}"),),
        ),
    ]


def _layout(p: _Panel, index: int) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": p.unit}
    custom: dict[str, Any] = {}
    if p.threshold is not None:
        green_above = p.threshold.op in (">=", ">")
        defaults["thresholds"] = {
            "mode": "absolute",
            "steps": [
                {"color": "red" if green_above else "green", "value": None},
                {"color": "green" if green_above else "red", "value": p.threshold.threshold},
            ],
        }
        custom["thresholdsStyle"] = {"mode": "dashed"}
    if p.bounds is not None:
        defaults["min"], defaults["max"] = p.bounds
    if custom:
        defaults["custom"] = custom
    panel: dict[str, Any] = {
        "type": "timeseries",
        "title": p.title,
        "datasource": DATASOURCE,
        "gridPos": {
            "x": (index % 2) * _WIDTH,
            "y": (index // 2) * _HEIGHT,
            "w": _WIDTH,
            "h": _HEIGHT,
        },
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {
            "legend": {
                "displayMode": "list",
                "placement": "bottom",
                "showLegend": True,
                "calcs": [],
            },
            "tooltip": {"mode": "multi", "sort": "none"},
        },
        "targets": [
            {
                "refId": chr(ord("A") + i),
                "datasource": DATASOURCE,
                "expr": expr,
                "legendFormat": legend,
            }
            for i, (expr, legend) in enumerate(p.targets)
        ],
    }
    if p.description:
        panel["description"] = p.description
    return panel


# --------------------------------------------------------------------------- queries


def _fill(s: Source, template: str) -> str:
    """``template`` with the target's labels, canary and stable both asked for."""
    labels = {k: [v] for k, v in s.target.labels.items()}
    variables = template_variables(s.policy, labels, _BOTH)
    variables.setdefault("target", s.target.name)
    variables.setdefault("version", s.target.image or "")
    return templates.render(template, variables)


def _per_target(sources: Sequence[Source], expr: Callable[[Source], str]) -> str:
    """Each source's query tagged with its name, joined, the ``$target`` one kept (module doc).
    The newlines end a trailing PromQL ``#`` comment before the closing parenthesis."""
    parts = [
        f'label_replace(\n{expr(s)}\n, "{TARGET_LABEL}", "{_string(s.target.name)}", "", "")'
        for s in sources
    ]
    joined = "\nor\n".join(parts)
    keep = f'label_replace(vector(1), "{TARGET_LABEL}", "$target", "", "")'
    return f"(\n{joined}\n)\nand on ({TARGET_LABEL}) {keep}"


def _success_check(policy: Policy) -> Check | None:
    return next(
        (
            c
            for c in thresholds(policy)
            if "success" in c.name and units.unit_of(c) == units.RATIO and c.op in (">=", ">")
        ),
        None,
    )


def _check_query(s: Source, name: str) -> str:
    return query(s.policy, s.policy.checks[name], s.target, _BOTH)


def _success_query(s: Source) -> str:
    """The policy's success check when it has one (the SLO its users wrote), else the share of
    non-5xx answers of ``http_requests_total`` (the daemon's request count's series)."""
    check = _success_check(s.policy)
    return _fill(s, check.query if check is not None else SUCCESS_RATE)


def _quantile(s: Source, q: float) -> str:
    """The source's latency check at quantile ``q`` instead of the one it judges."""
    check = _latency_check(s.policy)
    assert check is not None  # only sources with one are drawn
    return _fill(s, _QUANTILE.sub(f"histogram_quantile({q:g},", check.query, count=1))


def _latency_check(policy: Policy) -> Check | None:
    return next((c for c in thresholds(policy) if _QUANTILE.search(c.query)), None)


# --------------------------------------------------------------------------- the rest


def _datasource_variable() -> dict[str, Any]:
    return {
        "name": "datasource",
        "label": "Prometheus",
        "type": "datasource",
        "query": "prometheus",
        "hide": 0,
        "refresh": 1,
        "options": [],
    }


def _target_variable(names: Sequence[str]) -> dict[str, Any]:
    options = [{"text": n, "value": n, "selected": i == 0} for i, n in enumerate(names)]
    return {
        "name": "target",
        "label": "Target",
        "type": "custom",
        "query": ",".join(names),
        "current": {"text": names[0], "value": names[0], "selected": True},
        "options": options,
        "multi": False,
        "includeAll": False,
        "hide": 0,
    }


def _annotations() -> list[dict[str, Any]]:
    """Decisions on every panel: the phase entered, every non-routine decision, rollbacks red.
    A counter's first sample (a label set seen for the first time) has no increase, hence the
    ``unless ... offset`` half that catches a series that just appeared."""
    t = '{target=~"$target"}'
    decisions = 'canaryd_decisions_total{target=~"$target",action!~"hold|observe|ignore"}'

    def new_or_grown(series: str) -> str:
        return f"(increase({series}[1m]) > 0) or ({series} unless {series} offset 1m)"

    return [
        {
            "builtIn": 1,
            "datasource": {"type": "grafana", "uid": "-- Grafana --"},
            "enable": True,
            "hide": True,
            "iconColor": "rgba(0, 211, 255, 1)",
            "name": "Annotations & Alerts",
            "type": "dashboard",
        },
        _annotation(
            "phase",
            f"(canaryd_rollout_phase{t} == 1) and on (target, phase) "
            f"(changes(canaryd_rollout_phase{t}[1m]) > 0)",
            "{{phase}}",
            "rollout entered {{phase}}",
            "blue",
        ),
        _annotation("decisions", new_or_grown(decisions), "{{action}}", "{{reason}}", "yellow"),
        _annotation(
            "rollbacks",
            new_or_grown(f"canaryd_rollbacks_total{t}"),
            "rollback",
            "{{reason}}",
            "red",
        ),
    ]


def _annotation(name: str, expr: str, title: str, text: str, colour: str) -> dict[str, Any]:
    return {
        "name": name,
        "datasource": DATASOURCE,
        "enable": True,
        "hide": False,
        "iconColor": colour,
        "expr": expr,
        "step": "30s",
        "titleFormat": title,
        "textFormat": text,
        "tagKeys": "target",
        "useValueForTime": False,
    }


def _number(value: float) -> str:
    return str(int(value)) if value.is_integer() else repr(value)


def _string(value: str) -> str:
    """``value`` inside a PromQL double-quoted string."""
    return value.replace("\\", "\\\\").replace('"', '\\"')
