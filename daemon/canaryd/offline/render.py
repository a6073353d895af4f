"""``canaryctl render``: a policy's checks as documents other tools run (SPEC §5.1).

Three kinds, each a pure function of (policy, target) returning a plain dict:

- ``prometheus-rules``: one rule group, per check an alert ``Canary<Check>Breached`` whose
  expression is the check's query compared with its threshold the opposite way (``op: ">="``,
  ``threshold: 0.995`` alerts on ``< 0.995``), pending for one policy ``interval``.
- ``grafana``: a dashboard (``offline.grafana``): variables for datasource and target, request
  rate, success rate and latency quantiles with canary beside stable, a panel per check with its
  threshold, the weight asked vs measured, decisions as annotations.
- ``argo-analysis``: an Argo Rollouts ``AnalysisTemplate`` with one Prometheus metric per check.
- ``argo-rollout``: an Argo Rollouts ``Rollout`` whose canary steps are the policy's stages, one
  ``setWeight``/``pause: {}`` pair each, as the ``argo-rollouts`` router drives them
  (``offline.argo_rollout``); ``--name`` and ``--image`` name it and its image.

The queries are filled exactly as the daemon fills them for one target
(``runtime.evaluator.template_variables``, imported rather than copied so they cannot drift):
``{{job}}`` and the other ``--label`` values become anchored regex literals, ``{{group}}`` the
label names plus ``deployment``, ``{{deployment}}`` ``canary`` (the dashboard asks for
``canary|stable`` so both show), ``{{window}}``/``{{interval}}`` and params from the policy.
Windows stay the policy's: the daemon and ``replay`` clip them to a rollout's age
(``core.scope``), but these documents run with no rollout to measure from, so the YAML ones say
so in a first comment line (the dashboard draws history, where the full window is what is wanted).
With ``--config FILE`` the documents are rendered for the config's targets, from their own
labels and policies, as the daemon asks for them; with ``--policy`` and without
``--label job=...`` the job is the policy's name.

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
import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

from canaryd.adapters.routers.files import write_atomically
from canaryd.app import load_config
from canaryd.core.durations import format_duration
from canaryd.core.errors import ConfigError
from canaryd.core.model import NoData, Policy
from canaryd.offline import argo_rollout, grafana
from canaryd.offline.args import add_policy_and_target, parse_labels, policy_or_problems
from canaryd.offline.queries import Target, query, target_for, thresholds

KINDS = ("prometheus-rules", "grafana", "argo-analysis", "argo-rollout")
DEFAULT_PROMETHEUS = "http://prometheus:9090"
OPPOSITE = {">=": "<", ">": "<=", "<=": ">", "<": ">="}
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
    """The dashboard (``offline.grafana``) for one target given by ``--policy``/``--label``."""
    title = f"canaryd: {target.name} ({policy.name})"
    return grafana.dashboard([grafana.Source(target, policy)], dashboard_uid(policy.name), title)


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
    workload: argo_rollout.Workload | None = None,
) -> str:
    """The document of ``kind`` as text: YAML, or JSON for Grafana. ``workload``: the
    Rollout's name and image, for ``argo-rollout`` (default: the target's name and image)."""
    if kind == "grafana":
        return json.dumps(grafana_dashboard(policy, target), indent=2) + "\n"
    if kind == "prometheus-rules":
        doc = prometheus_rules(policy, target, severity)
    elif kind == "argo-analysis":
        doc = argo_analysis(policy, target, prometheus)
    elif kind == "argo-rollout":
        doc = argo_rollout.rollout(policy, workload or argo_rollout.Workload(target.name))
    else:
        raise ValueError(f"unknown kind {kind!r} (known: {', '.join(KINDS)})")
    text = yaml.dump(doc, Dumper=_Dumper, sort_keys=False, width=1_000_000, allow_unicode=True)
    return unscoped_note(policy) + text


def unscoped_note(policy: Policy) -> str:
    """What these documents do not do that the daemon does: they have no rollout, so their
    windows are the policy's as written, not clipped to a rollout's age (``core.scope``)."""
    return (
        f"# Windows are the policy's ({policy.window}), as written: canaryd clips them to the "
        "age of a rollout's canary (no sample from before it was ready), these rules have no "
        "rollout to measure from.\n"
    )


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (queries) as ``|`` blocks, which read like the policy file."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


dashboard_uid = grafana.dashboard_uid


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
    p.add_argument(
        "--config",
        metavar="FILE",
        help="a canaryd config: render for its targets, with their labels and policies",
    )
    add_policy_and_target(
        p,
        label_help="with --policy: a label of the target, repeatable (default: job=<policy name>)",
        policy_required=False,
        target_help="with --config: the target to render (grafana: default all of them); "
        "with --policy: the target's name, {{target}} (default: its job)",
    )
    p.add_argument("--severity", default="critical", help="prometheus-rules: alerts' severity")
    p.add_argument(
        "--prometheus",
        default=DEFAULT_PROMETHEUS,
        metavar="URL",
        help=f"argo-analysis: Prometheus address (default: {DEFAULT_PROMETHEUS})",
    )
    argo_rollout.add_arguments(p)
    p.add_argument("--out", metavar="FILE", help="write here, atomically (default: stdout)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.config is not None:
        text = _from_config(args)
    elif args.policy is None:
        print("canaryctl render: give --config FILE or --policy NAME", file=sys.stderr)
        return 2
    else:
        text = _from_policy(args)
    if text is None:
        return 2
    if args.out is None:
        sys.stdout.write(text)
        return 0
    try:
        write_atomically(Path(args.out), text.encode())
    except OSError as exc:
        print(f"canaryctl render: cannot write {args.out}: {exc}", file=sys.stderr)
        return 1
    return 0


def _from_policy(args: argparse.Namespace) -> str | None:
    policy = policy_or_problems(args.policy)
    if policy is None:
        return None
    try:
        labels = parse_labels(args.label)
        target = target_for(policy, labels, args.target, args.image)
    except ValueError as exc:
        print(f"canaryctl render: {exc}", file=sys.stderr)
        return None
    workload = argo_rollout.workload(args, target.name)
    return render(args.kind, policy, target, args.severity, args.prometheus, workload)


def _from_config(args: argparse.Namespace) -> str | None:
    """The document for the config's targets (``--target``: one of them), with the labels and
    policies the daemon uses for them; None once what is wrong is on stderr."""
    if args.policy is not None or args.label:
        print(
            "canaryctl render: --config takes the targets' own policies and labels; "
            "drop --policy/--label",
            file=sys.stderr,
        )
        return None
    try:
        settings = load_config(args.config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return None
    chosen = [t for t in settings.targets if args.target in (None, t.name)]
    if not chosen:
        known = ", ".join(t.name for t in settings.targets) or "none"
        print(
            f"canaryctl render: {args.config}: no target {args.target!r} (targets: {known})",
            file=sys.stderr,
        )
        return None
    sources = [grafana.Source(Target(dict(t.labels), t.name, args.image), t.policy) for t in chosen]
    if args.kind == "grafana":
        name = args.target or Path(args.config).stem
        title = f"canaryd: {', '.join(t.name for t in chosen)}"
        doc = grafana.dashboard(sources, dashboard_uid(name), title)
        return json.dumps(doc, indent=2) + "\n"
    if len(sources) > 1:
        print(
            f"canaryctl render: {args.kind} is for one target: give --target "
            f"({', '.join(t.name for t in chosen)})",
            file=sys.stderr,
        )
        return None
    only = sources[0]
    workload = argo_rollout.workload(args, only.target.name)
    return render(args.kind, only.policy, only.target, args.severity, args.prometheus, workload)
