"""``canaryctl render``: a policy's checks as documents other tools run (SPEC §5.1).

Three kinds, each a pure function of (policy, target) returning a plain dict:

- ``prometheus-rules``: one rule group, per check an alert ``Canary<Check>Breached`` whose
  expression is the check's query compared with its threshold the opposite way (``op: ">="``,
  ``threshold: 0.995`` alerts on ``< 0.995``), pending for one policy ``interval``.
- ``grafana``: a dashboard with one timeseries per check (canary and stable side by side, the
  threshold drawn as a line) and panels for canaryd's own metrics (``adapters.telemetry``).
- ``argo-analysis``: an Argo Rollouts ``AnalysisTemplate`` with one Prometheus metric per check.

The queries are filled exactly as the daemon fills them for one target
(``runtime.evaluator.template_variables``, imported rather than copied so they cannot drift):
``{{job}}`` and the other ``--label`` values become anchored regex literals, ``{{group}}`` the
label names plus ``deployment``, ``{{deployment}}`` ``canary`` (the dashboard asks for
``canary|stable`` so both show), ``{{window}}``/``{{interval}}`` and params from the policy.
Without ``--label job=...`` the job is the policy's name.

Only ``threshold`` checks are rendered: a ``compare`` check's verdict is a sequential test's over
the whole rollout (``core.compare``), which no alert expression or Argo condition can state.

Why the Argo conditions are written ``all(result, {# >= t})`` rather than ``result[0] >= t``:
Argo's Prometheus provider returns a list, and recent Argo versions turn ``result[...]`` on an
empty list into an Error measurement. The ``all``/``any`` pair keeps canaryd's meaning: no data
(or NaN) satisfies neither condition, so the measurement is Inconclusive, as with
``no_data: inconclusive``; ``no_data: fail`` adds it to the failure condition instead. Argo
acts when a count *exceeds* its limit, so ``failureLimit`` is ``failure_limit`` as is, while
canaryd's "after N in a row" limits (``inconclusive_limit``, ``consecutive_error_limit``)
become N - 1. Argo counts inconclusive measurements in total, not in a row, and always pauses
on them (``on_inconclusive: rollback`` has no Argo equivalent).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any

import yaml

from canaryd.adapters.routers.files import write_atomically
from canaryd.core import templates
from canaryd.core.durations import format_duration
from canaryd.core.model import Check, NoData, Policy
from canaryd.offline.args import add_policy_and_target, parse_labels, policy_or_problems
from canaryd.runtime.evaluator import CANARY, template_variables

KINDS = ("prometheus-rules", "grafana", "argo-analysis")
DEFAULT_PROMETHEUS = "http://prometheus:9090"
STABLE = "stable"
OPPOSITE = {">=": "<", ">": "<=", "<=": ">", "<": ">="}
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
# Label names that would shadow a built-in variable of the queries.
_RESERVED = templates.BUILTIN_VARIABLES - {"job"}


@dataclass(frozen=True, slots=True)
class Target:
    """What the documents are rendered for: the target's labels (always with ``job``), its
    name (``{{target}}``) and, if a query needs it, the canary's image (``{{version}}``)."""

    labels: Mapping[str, str]
    name: str
    image: str | None = None


def target_for(
    policy: Policy, labels: Mapping[str, str], name: str | None = None, image: str | None = None
) -> Target:
    """The target of ``--label``/``--target``/``--image``; ``ValueError`` says what is wrong."""
    for label in labels:
        if not _LABEL.fullmatch(label) or label.startswith("__"):
            raise ValueError(f"{label!r} is not a valid Prometheus label name")
        if label in _RESERVED or label in policy.params:
            raise ValueError(f"label {label!r} would hide the template variable {{{{{label}}}}}")
    full = {"job": policy.name, **labels}
    target = Target(full, name or full["job"], image)
    for check in thresholds(policy):
        if "version" in templates.variables(check.query) and image is None:
            raise ValueError(f"check {check.name!r} uses {{{{version}}}}: give --image IMAGE")
    return target


def query(
    policy: Policy, check: Check, target: Target, deployments: tuple[str, ...] = (CANARY,)
) -> str:
    """The check's PromQL for ``target``, as the daemon's evaluator renders it."""
    variables = template_variables(policy, {k: [v] for k, v in target.labels.items()}, deployments)
    variables.setdefault("target", target.name)
    variables.setdefault("version", target.image or "")
    return templates.render(check.query, variables)


def thresholds(policy: Policy) -> list[Check]:
    """The checks a document can express: the ``threshold`` ones (see the module docstring)."""
    return [c for c in policy.checks.values() if c.kind == "threshold"]


# --------------------------------------------------------------------------- the documents


def prometheus_rules(policy: Policy, target: Target, severity: str = "critical") -> dict[str, Any]:
    """A Prometheus rule file: one group, one alert per check that fires on a breach."""
    rules = []
    for check in thresholds(policy):
        bound = f"{OPPOSITE[check.op]} {_number(check.threshold)}"
        # The newline ends a trailing PromQL # comment before the closing parenthesis.
        expr = f"(\n{query(policy, check, target)}\n) {bound}"
        rules.append(
            {
                "alert": alert_name(check.name),
                "expr": expr,
                "for": format_duration(policy.interval),
                "labels": {
                    "severity": severity,
                    **target.labels,
                    "target": target.name,
                    "canaryd_policy": policy.name,
                    "canaryd_check": check.name,
                },
                "annotations": {
                    "summary": f"{target.name} canary: {check.name} breached ({bound})",
                    "description": (
                        f"Check {check.name} of canaryd policy {policy.name} is "
                        '{{ $value | printf "%.4g" }} for the canary of '
                        f"{target.name}; it must stay {check.op} {_number(check.threshold)}."
                    ),
                },
            }
        )
    return {"groups": [{"name": f"canaryd-{policy.name}", "rules": rules}]}


def alert_name(check: str) -> str:
    """``success-rate`` -> ``CanarySuccessRateBreached``."""
    words = re.split(r"[^A-Za-z0-9]+", check)
    return "Canary" + "".join(w[:1].upper() + w[1:] for w in words) + "Breached"


def grafana_dashboard(policy: Policy, target: Target) -> dict[str, Any]:
    """A Grafana dashboard (schema 39) on a ``DS_PROMETHEUS`` datasource variable."""
    panels: list[dict[str, Any]] = []
    for i, check in enumerate(thresholds(policy)):
        promql = query(policy, check, target, (CANARY, STABLE))
        green_above = check.op in (">=", ">")
        steps = [
            {"color": "red" if green_above else "green", "value": None},
            {"color": "green" if green_above else "red", "value": check.threshold},
        ]
        panel = _panel(
            f"{check.name} ({check.op} {_number(check.threshold)})",
            [(promql, "{{deployment}}")],
            (i % 2) * 12,
            (i // 2) * 8,
        )
        panel["fieldConfig"]["defaults"]["thresholds"] = {"mode": "absolute", "steps": steps}
        panel["fieldConfig"]["defaults"]["custom"] = {"thresholdsStyle": {"mode": "line"}}
        panels.append(panel)
    y = (len(thresholds(policy)) + 1) // 2 * 8
    own = [
        (
            title,
            [
                (Template(expr).substitute(t=_string(target.name), w=policy.window), legend)
                for expr, legend in targets
            ],
        )
        for title, targets in _OWN_PANELS
    ]
    for i, (title, targets) in enumerate(own):
        panels.append(_panel(f"canaryd: {title}", targets, (i % 2) * 12, y + (i // 2) * 8))
    for number, panel in enumerate(panels, start=1):
        panel["id"] = number
    return {
        "uid": dashboard_uid(policy.name),
        "title": f"canaryd: {policy.name} ({target.name})",
        "description": f"Checks of canaryd policy {policy.name} for target {target.name}",
        "tags": ["canaryd"],
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "time": {"from": "now-1h", "to": "now"},
        "refresh": format_duration(policy.interval),
        "templating": {
            "list": [
                {
                    "name": "DS_PROMETHEUS",
                    "label": "Prometheus",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                    "refresh": 1,
                    "options": [],
                }
            ]
        },
        "annotations": {"list": []},
        "panels": panels,
    }


# canaryd's own metrics (``adapters.telemetry``): title, [(PromQL, legend)]; $t is the target's
# name, $w the policy's window.
_OWN_PANELS: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    (
        "canary weight (%)",
        (
            ('canaryd_rollout_weight{target="$t"}', "set"),
            ('canaryd_observed_weight{target="$t"}', "observed"),
        ),
    ),
    (
        "stage and phase",
        (
            ('canaryd_rollout_stage{target="$t"}', "stage"),
            ('canaryd_rollout_phase{target="$t"} == 1', "{{phase}}"),
        ),
    ),
    ("check values", (('canaryd_check_value{target="$t"}', "{{check}}"),)),
    (
        "check verdicts",
        (
            (
                'sum by (check, result) (increase(canaryd_check_results_total{target="$t"}[$w]))',
                "{{check}} {{result}}",
            ),
        ),
    ),
    (
        "rollbacks",
        (('sum by (reason) (increase(canaryd_rollbacks_total{target="$t"}[$w]))', "{{reason}}"),),
    ),
    (
        "PromQL latency p95 (s)",
        (
            (
                "histogram_quantile(0.95, sum by (le) "
                "(rate(canaryd_promql_duration_seconds_bucket[$w])))",
                "p95",
            ),
        ),
    ),
)


def dashboard_uid(policy_name: str) -> str:
    """``canaryd-<name>``, within Grafana's 40 characters of ``[A-Za-z0-9_-]``."""
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", policy_name).strip("-") or "policy"
    uid = f"canaryd-{slug}"
    if len(uid) <= 40:
        return uid
    digest = hashlib.sha256(policy_name.encode()).hexdigest()[:8]
    return f"{uid[:31]}-{digest}"


def _panel(title: str, targets: list[tuple[str, str]], x: int, y: int) -> dict[str, Any]:
    datasource = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
    return {
        "type": "timeseries",
        "title": title,
        "datasource": datasource,
        "gridPos": {"x": x, "y": y, "w": 12, "h": 8},
        "fieldConfig": {"defaults": {}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True}},
        "targets": [
            {
                "refId": chr(ord("A") + i),
                "datasource": datasource,
                "expr": expr,
                "legendFormat": legend,
            }
            for i, (expr, legend) in enumerate(targets)
        ],
    }


def argo_analysis(
    policy: Policy, target: Target, prometheus: str = DEFAULT_PROMETHEUS
) -> dict[str, Any]:
    """An Argo Rollouts ``AnalysisTemplate`` with one Prometheus metric per check."""
    limits = policy.limits
    metrics = []
    for check in thresholds(policy):
        bound = _number(check.threshold)
        success = f"len(result) > 0 && all(result, {{# {check.op} {bound}}})"
        failure = f"len(result) > 0 && any(result, {{# {OPPOSITE[check.op]} {bound}}})"
        if check.no_data is NoData.FAIL:
            failure = (
                f"len(result) == 0 || any(result, {{isNaN(#) || # {OPPOSITE[check.op]} {bound}}})"
            )
        metrics.append(
            {
                "name": check.name,
                "interval": format_duration(policy.interval),
                "successCondition": success,
                "failureCondition": failure,
                "failureLimit": limits.failure_limit,
                "inconclusiveLimit": limits.inconclusive_limit - 1,
                "consecutiveErrorLimit": limits.consecutive_error_limit - 1,
                "provider": {
                    "prometheus": {"address": prometheus, "query": query(policy, check, target)}
                },
            }
        )
    name = re.sub(r"[^a-z0-9-]+", "-", f"canaryd-{policy.name}".lower()).strip("-")[:253]
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "AnalysisTemplate",
        "metadata": {
            "name": name,
            "labels": {"app.kubernetes.io/managed-by": "canaryctl"},
            "annotations": {"canaryd/policy": policy.name, "canaryd/target": target.name},
        },
        "spec": {"metrics": metrics},
    }


def render(
    kind: str,
    policy: Policy,
    target: Target,
    severity: str = "critical",
    prometheus: str = DEFAULT_PROMETHEUS,
) -> str:
    """The document of ``kind`` as text: YAML, or JSON for Grafana."""
    if kind == "grafana":
        return json.dumps(grafana_dashboard(policy, target), indent=2) + "\n"
    if kind == "prometheus-rules":
        doc = prometheus_rules(policy, target, severity)
    elif kind == "argo-analysis":
        doc = argo_analysis(policy, target, prometheus)
    else:
        raise ValueError(f"unknown kind {kind!r} (known: {', '.join(KINDS)})")
    return yaml.dump(doc, Dumper=_Dumper, sort_keys=False, width=1_000_000, allow_unicode=True)


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (queries) as ``|`` blocks, which read like the policy file."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def _number(value: float) -> str:
    """A threshold as PromQL and Argo's expr read it: ``0.995``, ``1``, ``1e-05``."""
    return str(int(value)) if value.is_integer() else repr(value)


def _string(value: str) -> str:
    """``value`` inside a PromQL double-quoted string."""
    return value.replace("\\", "\\\\").replace('"', '\\"')


# --------------------------------------------------------------------------- the command


def register(commands: Any) -> None:
    """Add ``render`` to ``canaryctl``'s subcommands."""
    p = commands.add_parser(
        "render",
        help="a policy as Prometheus alerts, a Grafana dashboard or an Argo AnalysisTemplate",
    )
    p.add_argument("kind", choices=KINDS, metavar="KIND", help=" | ".join(KINDS))
    add_policy_and_target(
        p, label_help="a label of the target, repeatable (default: job=<the policy's name>)"
    )
    p.add_argument("--severity", default="critical", help="prometheus-rules: alerts' severity")
    p.add_argument(
        "--prometheus",
        default=DEFAULT_PROMETHEUS,
        metavar="URL",
        help=f"argo-analysis: Prometheus address (default: {DEFAULT_PROMETHEUS})",
    )
    p.add_argument("--out", metavar="FILE", help="write here, atomically (default: stdout)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    policy = policy_or_problems(args.policy)
    if policy is None:
        return 2
    try:
        labels = parse_labels(args.label)
        target = target_for(policy, labels, args.target, args.image)
    except ValueError as exc:
        print(f"canaryctl render: {exc}", file=sys.stderr)
        return 2
    text = render(args.kind, policy, target, args.severity, args.prometheus)
    if args.out is None:
        sys.stdout.write(text)
        return 0
    try:
        write_atomically(Path(args.out), text.encode())
    except OSError as exc:
        print(f"canaryctl render: cannot write {args.out}: {exc}", file=sys.stderr)
        return 1
    return 0
