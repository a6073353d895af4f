"""Policy files (``rules/*.yaml``) into ``core.model.Policy``, with every problem named.

The format is documented in ``rules/README.md``. A policy is checked as a whole: stage weights
must increase and stay within 1..100, every stage's checks must exist, every PromQL template
may only use known ``{{variables}}`` (the built-ins plus the policy's ``params``), and alert
matchers must parse.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from canaryd.config.reader import (
    Reader,
    duration,
    join,
    one_of,
    to_bool,
    to_float,
    to_int,
    to_str,
)
from canaryd.core import templates
from canaryd.core.model import (
    MIN_WINDOW,
    AlertAction,
    AlertRule,
    Check,
    Gate,
    Limits,
    Matcher,
    NoData,
    OnInconclusive,
    Policy,
    Scope,
    Stage,
)
from canaryd.core.rules import parse_matcher


def _rules_dir() -> Path:
    """``rules/`` of a source checkout, else the copy ``pip install .`` puts under share/."""
    import sys

    checkout = Path(__file__).resolve().parents[3] / "rules"
    installed = Path(sys.prefix) / "share" / "canaryd" / "rules"
    return checkout if checkout.is_dir() or not installed.is_dir() else installed


RULES_DIR = _rules_dir()
_TOP = {
    "name",
    "description",
    "interval",
    "window",
    "scale_down_delay",
    "error_backoff",
    "params",
    "limits",
    "checks",
    "stages",
    "alerts",
    "alpha",
    "scope",
    "min_window",
    "split",
}
_LIMITS = {
    "failure_limit",
    "inconclusive_limit",
    "consecutive_error_limit",
    "progress_deadline",
    "on_inconclusive",
}
_CHECK = {"query", "op", "threshold", "kind", "no_data", "params", "description"}
# a compare check (``compare: errors|latency``): its parts' PromQL and its tolerance
_COMPARE_PARTS = {"errors": ("requests", "errors"), "latency": ("buckets",)}
_COMPARE = {
    "compare",
    "kind",
    "no_data",
    "tolerance",
    "alpha_weight",
    "description",
    "requests",
    "errors",
    "buckets",
}
_STAGE = {"weight", "duration", "checks", "gate", "min_requests"}
_ALERT = {"name", "match", "action", "cooldown", "include_preexisting"}


def resolve(ref: str, base: Path | None = None, rules_dir: Path | None = None) -> Path:
    """A policy reference (``matriz-fast-track``, ``rules/x.yaml``, ``/abs/x.yaml``) to a path."""
    path = Path(ref)
    if path.suffix in (".yaml", ".yml") or "/" in ref:
        return path if path.is_absolute() or base is None else (base / path)
    directory = rules_dir or RULES_DIR
    for suffix in (".yaml", ".yml"):
        candidate = directory / f"{ref}{suffix}"
        if candidate.exists():
            return candidate
    return directory / f"{ref}.yaml"


def load_policy(path: str | Path) -> Policy:
    """Read and validate a policy file; ``ConfigError`` lists every problem found."""
    reader = Reader(path)
    doc = reader.load()
    policy = read_policy(reader, doc, default_name=Path(path).stem) if doc is not None else None
    reader.done()
    assert policy is not None
    return policy


def read_policy(r: Reader, doc: Any, default_name: str) -> Policy:
    top = r.mapping(doc, "", _TOP)
    params_raw = r.mapping(top.get("params", {}), "params")
    params = {str(k): str(v) for k, v in params_raw.items()}
    limits_raw = r.mapping(top.get("limits", {}), "limits", _LIMITS)
    base = Limits()
    limits = Limits(
        failure_limit=r.field(
            limits_raw, "failure_limit", "limits", _non_negative, base.failure_limit
        ),
        inconclusive_limit=r.field(
            limits_raw, "inconclusive_limit", "limits", _positive, base.inconclusive_limit
        ),
        consecutive_error_limit=r.field(
            limits_raw, "consecutive_error_limit", "limits", _positive, base.consecutive_error_limit
        ),
        progress_deadline=r.field(
            limits_raw, "progress_deadline", "limits", duration, base.progress_deadline
        ),
        on_inconclusive=OnInconclusive(
            r.field(limits_raw, "on_inconclusive", "limits", one_of("pause", "rollback"), "pause")
        ),
    )
    interval = r.field(top, "interval", "", duration, 30.0)
    if interval <= 0:
        r.problem("interval", "must be greater than zero")
    checks = _read_checks(r, top.get("checks"), params)
    stages = _read_stages(r, top.get("stages"), checks)
    alerts = _read_alerts(r, top.get("alerts", []))
    window = r.field(top, "window", "", to_str, "2m")
    try:
        duration(window)
    except ValueError as exc:
        r.problem("window", str(exc))
    min_window = r.field(top, "min_window", "", duration, MIN_WINDOW)
    if min_window < 1:
        r.problem("min_window", "must be at least 1s (a window of whole seconds)")
    return Policy(
        name=r.field(top, "name", "", to_str, default_name),
        stages=stages,
        checks=checks,
        alert_rules=alerts,
        limits=limits,
        interval=interval or 30.0,
        error_backoff=r.field(top, "error_backoff", "", duration, 5.0),
        scale_down_delay=r.field(top, "scale_down_delay", "", duration, 30.0),
        window=window,
        params=params,
        alpha=r.field(top, "alpha", "", _alpha, 0.05),
        scope=Scope(r.field(top, "scope", "", one_of("age", "version"), "age")),
        min_window=max(min_window, 1.0),
        split_tolerance=_read_split(r, top.get("split"), checks),
    )


def _read_checks(r: Reader, raw: Any, params: dict[str, str]) -> dict[str, Check]:
    checks: dict[str, Check] = {}
    for name, spec in r.mapping(raw, "checks").items():
        path = join("checks", name)
        if isinstance(spec, dict) and ("compare" in spec or spec.get("kind") == "compare"):
            checks[name] = _read_compare(r, name, spec, path, params)
            continue
        c = r.mapping(spec, path, _CHECK)
        query = r.field(c, "query", path, to_str, "")
        unknown = templates.unknown_variables(query, params)
        for var in unknown:
            r.problem(
                join(path, "query"),
                f"unknown template variable {{{{{var}}}}} (known: "
                f"{', '.join(sorted(templates.BUILTIN_VARIABLES | set(params)))})",
            )
        kind = r.field(c, "kind", path, one_of("threshold"), "threshold")
        cparams = r.mapping(c.get("params", {}), join(path, "params"))
        checks[name] = Check(
            name=name,
            query=query,
            op=r.field(c, "op", path, one_of(">=", ">", "<=", "<"), ">="),
            threshold=r.field(c, "threshold", path, to_float),
            kind=kind,
            no_data=NoData(
                r.field(c, "no_data", path, one_of("inconclusive", "fail"), "inconclusive")
            ),
            params={k: r.field(cparams, k, join(path, "params"), to_float) for k in cparams},
        )
    if not checks and isinstance(raw, dict):
        r.problem("checks", "a policy needs at least one check")
    return checks


def _read_compare(
    r: Reader, name: str, spec: dict[str, Any], path: str, params: dict[str, str]
) -> Check:
    """A ``compare`` check: canary against stable on counters (rules/README.md)."""
    c = r.mapping(spec, path, _COMPARE)
    r.field(c, "kind", path, one_of("compare"), "compare")
    what = r.field(c, "compare", path, one_of(*_COMPARE_PARTS), "errors")
    queries = {}
    for part in _COMPARE_PARTS.get(what, ()):
        queries[part] = r.field(c, part, path, to_str)
        for var in templates.unknown_variables(queries[part], params):
            r.problem(join(path, part), f"unknown template variable {{{{{var}}}}}")
    for other in set(c) & {p for parts in _COMPARE_PARTS.values() for p in parts} - set(queries):
        r.problem(join(path, other), f"not a part of a compare: {what} check")
    return Check(
        name=name,
        query="",
        kind="compare",
        no_data=NoData(r.field(c, "no_data", path, one_of("inconclusive", "fail"), "inconclusive")),
        compare=what,
        queries=queries,
        tolerance=r.field(c, "tolerance", path, _tolerance, 0.0),
        alpha_weight=r.field(c, "alpha_weight", path, _alpha_weight, 1.0),
    )


def _read_split(r: Reader, raw: Any, checks: dict[str, Check]) -> float | None:
    """``split: {tolerance: 0.05}``: the verified split's tolerance (``core.split``). It reads
    the per-side request counts of a ``compare: errors`` check, so the policy needs one."""
    if raw is None:
        return None
    spec = r.mapping(raw, "split", {"tolerance"})
    tolerance: float = r.field(spec, "tolerance", "split", _split_tolerance, 0.05)
    if checks and not any(c.kind == "compare" and c.compare == "errors" for c in checks.values()):
        r.problem(
            "split",
            "a verified split reads the per-side requests of a `compare: errors` check; "
            "the policy has none",
        )
    return tolerance


def _split_tolerance(value: Any) -> float:
    t = to_float(value)
    if not 0.0 < t <= 0.5:
        raise ValueError(f"must be a share within (0, 0.5] (0.05: ±5 points), got {t:g}")
    return t


def _alpha(value: Any) -> float:
    a = to_float(value)
    if not 0.0 < a <= 0.5:
        raise ValueError(f"must be within (0, 0.5], got {a:g}")
    return a


def _alpha_weight(value: Any) -> float:
    w = to_float(value)
    if not 0.0 < w <= 100.0:
        raise ValueError(f"must be a relative weight within (0, 100], got {w:g}")
    return w


def _tolerance(value: Any) -> float:
    t = to_float(value)
    if not 0.0 <= t <= 10.0:
        raise ValueError(f"must be a relative increase within 0..10, got {t:g}")
    return t


def _read_stages(r: Reader, raw: Any, checks: dict[str, Check]) -> tuple[Stage, ...]:
    stages: list[Stage] = []
    items = r.seq(raw, "stages")
    if raw is not None and isinstance(raw, list) and not items:
        r.problem("stages", "a policy needs at least one stage")
    previous = 0
    for i, spec in enumerate(items):
        path = join("stages", i)
        s = r.mapping(spec, path, _STAGE)
        weight = r.field(s, "weight", path, to_int, 0)
        if weight and not 1 <= weight <= 100:
            r.problem(join(path, "weight"), f"must be within 1..100, got {weight}")
        elif weight and weight <= previous:
            r.problem(
                join(path, "weight"),
                f"weights must increase from stage to stage: {weight} after {previous}",
            )
        previous = max(previous, weight)
        names = [
            _check_name(r, c, join(join(path, "checks"), j))
            for j, c in enumerate(r.seq(s.get("checks", []), join(path, "checks")))
        ]
        for j, check in enumerate(names):
            if check and check not in checks:
                r.problem(
                    join(path, f"checks[{j}]"),
                    f"no check named {check!r} (defined: {', '.join(sorted(checks))})",
                )
        stages.append(
            Stage(
                weight=weight,
                duration=r.field(s, "duration", path, duration),
                checks=tuple(n for n in names if n),
                gate=Gate(r.field(s, "gate", path, one_of("auto", "manual"), "auto")),
                min_requests=r.field(s, "min_requests", path, _non_negative, 0),
            )
        )
    return tuple(stages)


def _read_alerts(r: Reader, raw: Any) -> tuple[AlertRule, ...]:
    rules: list[AlertRule] = []
    for i, spec in enumerate(r.seq(raw, "alerts")):
        path = join("alerts", i)
        a = r.mapping(spec, path, _ALERT)
        matchers: list[Matcher] = []
        match = a.get("match")
        if isinstance(match, dict) and match:
            matchers = [Matcher(str(k), "=", str(v)) for k, v in match.items()]
        elif isinstance(match, list) and match:
            for j, text in enumerate(match):
                try:
                    matchers.append(parse_matcher(str(text)))
                except ValueError as exc:
                    r.problem(join(join(path, "match"), j), str(exc))
        else:
            r.problem(
                join(path, "match"),
                "expected label matchers: a mapping {label: value} or a list of "
                "'label=value' / 'label=~regex' strings",
            )
        rules.append(
            AlertRule(
                matchers=tuple(matchers),
                action=AlertAction(
                    r.field(
                        a,
                        "action",
                        path,
                        one_of("rollback", "pause", "observe", "freeze"),
                        "rollback",
                    )
                ),
                cooldown=r.field(a, "cooldown", path, duration, 60.0),
                include_preexisting=r.field(a, "include_preexisting", path, to_bool, False),
                name=r.field(a, "name", path, to_str, f"rule-{i + 1}"),
            )
        )
    return tuple(rules)


def _check_name(r: Reader, value: Any, path: str) -> str:
    """One entry of a stage's ``checks`` list; a problem at ``stages[i].checks[j]`` if bad."""
    try:
        return to_str(value)
    except ValueError as exc:
        r.problem(path, str(exc))
        return ""


def _non_negative(value: Any) -> int:
    n = to_int(value)
    if n < 0:
        raise ValueError(f"must not be negative, got {n}")
    return n


def _positive(value: Any) -> int:
    n = to_int(value)
    if n < 1:
        raise ValueError(f"must be at least 1, got {n}")
    return n
