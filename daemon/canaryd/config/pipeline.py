"""What ``canaryd check`` knows of the Prometheus → Alertmanager pipeline around canaryd.

canaryd ships ``config/prometheus.yml`` (which names ``prometheus-rules.yml``) and
``config/alertmanager.yml`` beside ``config/canaryd.yaml``. ``check`` reads those beside the
config it checks (or the files given with ``--prometheus-config``/``--alertmanager-config``) to
learn the scrape interval of each target's job, the rule evaluation interval, the alert rules
(``for:``, labels, expression) and each alert's ``group_wait``. Where a file is absent the
upstream defaults apply (Prometheus: scrape and evaluation every 1m; Alertmanager:
``group_wait`` 30s) and ``check`` says so. These files are advice for a printout: a file that
cannot be read becomes a note in the output, never a failed check.
"""

from __future__ import annotations

import glob
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from canaryd.core.durations import parse_duration
from canaryd.core.rules import matches, parse_matcher

PROMETHEUS_DEFAULT_INTERVAL = 60.0  # scrape_interval and evaluation_interval, upstream default
GROUP_WAIT_DEFAULT = 30.0  # Alertmanager's route default


@dataclass(frozen=True, slots=True)
class AlertSpec:
    """One Prometheus alerting rule, as far as timing goes."""

    name: str
    expr: str
    hold: float  # its `for:`
    labels: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Pipeline:
    """The pipeline's timing facts, with where each came from (``sources``) and ``notes``."""

    scrape: Mapping[str, float] = field(default_factory=dict)  # by job
    default_scrape: float = PROMETHEUS_DEFAULT_INTERVAL
    evaluation: float = PROMETHEUS_DEFAULT_INTERVAL
    alerts: tuple[AlertSpec, ...] = ()
    route: Mapping[str, Any] | None = None  # Alertmanager's root route
    prometheus_file: str = ""
    alertmanager_file: str = ""
    notes: tuple[str, ...] = ()

    def scrape_for(self, job: str) -> float:
        return self.scrape.get(job, self.default_scrape)

    def group_wait(self, labels: Mapping[str, str]) -> float:
        """The ``group_wait`` of the deepest route that takes ``labels`` (first match wins)."""
        if self.route is None:
            return GROUP_WAIT_DEFAULT
        return _route_wait(self.route, labels, GROUP_WAIT_DEFAULT)


def read_pipeline(
    config_file: Path, prometheus: Path | None = None, alertmanager: Path | None = None
) -> Pipeline:
    """The pipeline described by the files beside ``config_file`` or the given ones."""
    notes: list[str] = []
    prom_path = prometheus or config_file.parent / "prometheus.yml"
    am_path = alertmanager or config_file.parent / "alertmanager.yml"
    prom = _load(prom_path, notes, explicit=prometheus is not None)
    facts: dict[str, Any] = {}
    if isinstance(prom, Mapping):
        try:
            facts = _prometheus_facts(prom, prom_path, notes)
            facts["prometheus_file"] = str(prom_path)
        except (ValueError, TypeError, AttributeError, KeyError) as exc:
            notes.append(f"{prom_path}: not understood ({exc}); Prometheus defaults assumed")
            facts = {}
    am = _load(am_path, notes, explicit=alertmanager is not None)
    route = am.get("route") if isinstance(am, Mapping) else None
    if isinstance(route, Mapping):
        facts["route"] = route
        facts["alertmanager_file"] = str(am_path)
    return Pipeline(**facts, notes=tuple(notes))


def _load(path: Path, notes: list[str], explicit: bool) -> Any:
    if not path.is_file():
        if explicit:
            notes.append(f"{path}: no such file; defaults assumed")
        return None
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        notes.append(f"{path}: unreadable ({type(exc).__name__}); defaults assumed")
        return None


def _prometheus_facts(doc: Mapping[str, Any], path: Path, notes: list[str]) -> dict[str, Any]:
    top = doc.get("global") or {}
    scrape = parse_duration(top.get("scrape_interval", "1m"))
    evaluation = parse_duration(top.get("evaluation_interval", "1m"))
    jobs = {
        str(job["job_name"]): parse_duration(job.get("scrape_interval", scrape))
        for job in doc.get("scrape_configs") or ()
        if isinstance(job, Mapping) and "job_name" in job
    }
    alerts: list[AlertSpec] = []
    for ref in doc.get("rule_files") or ():
        pattern = str(path.parent / str(ref))  # an absolute ref stays absolute
        for rule_path in sorted(glob.glob(pattern)) or [pattern]:
            alerts += _alert_rules(Path(rule_path), notes)
    return {
        "scrape": jobs,
        "default_scrape": scrape,
        "evaluation": evaluation,
        "alerts": tuple(alerts),
    }


def _alert_rules(path: Path, notes: list[str]) -> list[AlertSpec]:
    doc = _load(path, notes, explicit=True)
    out = []
    groups = doc.get("groups") if isinstance(doc, Mapping) else None
    for group in groups or ():
        for rule in (group or {}).get("rules") or ():
            if isinstance(rule, Mapping) and "alert" in rule:
                labels = {str(k): str(v) for k, v in (rule.get("labels") or {}).items()}
                labels["alertname"] = str(rule["alert"])
                hold = parse_duration(rule.get("for", 0))
                out.append(AlertSpec(str(rule["alert"]), str(rule.get("expr", "")), hold, labels))
    return out


def _route_wait(route: Mapping[str, Any], labels: Mapping[str, str], inherited: float) -> float:
    """Alertmanager's routing: a route's ``group_wait`` (or its parent's); the first child that
    matches ``labels`` decides, recursively."""
    wait = parse_duration(route.get("group_wait", inherited))
    for child in route.get("routes") or ():
        if isinstance(child, Mapping) and _route_matches(child, labels):
            return _route_wait(child, labels, wait)
    return wait


def _route_matches(route: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    matchers: Sequence[Any] = route.get("matchers") or ()
    exact: Mapping[str, Any] = route.get("match") or {}
    regex: Mapping[str, Any] = route.get("match_re") or {}
    if not all(labels.get(str(k), "") == str(v) for k, v in exact.items()):
        return False
    if not all(re.fullmatch(str(v), labels.get(str(k), "")) for k, v in regex.items()):
        return False
    return all(matches(parse_matcher(str(m)), labels) for m in matchers)
