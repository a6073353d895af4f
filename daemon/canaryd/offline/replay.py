"""``canaryctl replay``: ``simulate`` fed by a Prometheus's history instead of a samples file.

``canaryctl replay --policy FILE --prometheus URL --from T --to T --label job=NAME`` asks
Prometheus, with one range query per check (``/api/v1/query_range``, every ``--step``, by
default the policy's interval), what each check would have measured over [from, to], turns the
answer into a ``simulate`` timeline whose t = 0 is ``--from``, and runs the simulation there:
the rollout starts at ``--from`` and the output is ``simulate``'s, table or JSON.

The queries are filled as the daemon fills them for one target (``runtime.evaluator``'s
``template_variables``, imported rather than copied): ``{{job}}`` and the other ``--label``
values anchored regex literals, ``{{deployment}}`` ``canary``, ``{{group}}`` the label names plus
``deployment``, ``{{window}}``/``{{interval}}``/``{{interval_seconds}}`` and params from the
policy. Of the answer, only the canary series with the target's labels counts, as in the
evaluator; more than one such series at a step is an error measurement. Canary requests come
from the evaluator's ``DEFAULT_REQUESTS_QUERY`` divided back to a rate (it multiplies by the
interval). A step without a point is no data (as is NaN); a step without requests is none.
A ``compare`` check's parts are asked for both sides (``{{deployment}}`` ``canary|stable``, as the
evaluator asks) and become compare lines holding both sides' raw counters at every step, which
the simulation reads as the daemon does (increments from the first evaluation on).

Rollout-scoped evidence (``core.scope``), as in the daemon: the replayed canary is ready at
``--from``, so at a step younger than a query's windows the query is asked at that step alone
with its windows clipped to the age (``young_steps``), and before ``min(min_window, window)`` the
step has no data ("no data yet", which the engine does not count as inconclusive).

Alerts: ``ALERTS{alertstate="firing"}`` over the range, kept when they concern the target as
the daemon decides without ``alert_matchers`` (``target="<--target>"`` or ``job="<job>"``),
become alert lines: firing at the first step a series is present, resolved at the first step it
is gone. Alertmanager's grouping, inhibitions and silences are not replayed.

Times (``--from``/``--to``): RFC 3339 with an offset (``2024-05-01T12:00:00Z``), Unix seconds,
``now``, or ``now`` minus a duration (``-30m``, ``now-1h30m``; argparse reads a bare ``-30m`` as
an option, so write ``--from=-30m``). ``--to`` past now is cut at now. Queries time out after
``--timeout`` seconds (canaryctl's option, default 30).

Errors are one line on stderr naming what failed: bad arguments, a bad policy or a query
Prometheus refuses because of its text (``bad_data``) exit 2; Prometheus unreachable (or
answering without its API's JSON) exits 3, as ``canaryctl`` does for an unreachable daemon;
any other refusal (an execution error, a server-side timeout) exits 1.

What is not replayed: the traffic split. The history holds whatever share the canary really had;
the weights in the output are the policy's. So a policy's verified split (``split:``) is not
tested (``unverified_split``: its share of ``alpha`` stays reserved, so the compare checks
decide with the daemon's bounds). ``--save-samples FILE`` keeps the fetched timeline,
to edit and feed to ``canaryctl simulate --samples FILE --epoch <from as RFC 3339>``.

The module has a layer of its own above ``simulate``'s (import-linter): it composes simulate
with the Prometheus adapter. aiohttp and the adapter are imported only when the command runs:
``canaryctl``'s other commands do not pay for them (see ``ctl.client``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import re
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from canaryd.core import compare, scope, templates
from canaryd.core.durations import parse_duration
from canaryd.core.errors import SourceUnavailable
from canaryd.core.model import Policy
from canaryd.core.timefmt import parse_rfc3339
from canaryd.offline import simulate
from canaryd.offline.args import add_policy_and_target, parse_labels, policy_or_problems
from canaryd.runtime.evaluator import BOTH, CANARY, DEFAULT_REQUESTS_QUERY, template_variables

if TYPE_CHECKING:
    from canaryd.adapters.prometheus import PrometheusClient, RangeResult

EXIT_BAD_ARGUMENTS = 2
EXIT_UNREACHABLE = 3
EXIT_REFUSED = 1
MAX_POINTS = 11_000  # Prometheus refuses a range query with more points per series
REQUESTS = "canary requests"  # how the request-rate query is named in messages
ALERTS = 'ALERTS{alertstate="firing"}'
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_RESERVED = {"deployment", "group", "window", "interval", "interval_seconds", "target", "version"}
_RELATIVE = re.compile(r"(?:now\s*)?-\s*(\S+)")


class ReplayError(Exception):
    """What went wrong, in one line, with the exit code it deserves."""

    def __init__(self, message: str, exit_code: int = EXIT_BAD_ARGUMENTS) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def parse_time(text: str, now: float, option: str = "time") -> float:
    """Unix seconds for RFC 3339, Unix seconds, ``now`` or ``-30m``/``now-30m``."""
    value = text.strip()
    try:
        if value == "now":
            return now
        if relative := _RELATIVE.fullmatch(value):
            return now - parse_duration(relative.group(1))
        if re.fullmatch(r"\d+(?:\.\d+)?", value):
            return float(value)
        return parse_rfc3339(value)
    except ValueError:
        raise ReplayError(
            f"{option}: expected RFC 3339 (2024-05-01T12:00:00Z), Unix seconds, now or a "
            f"relative time like -30m, got {text!r}"
        ) from None


@dataclass(frozen=True, slots=True)
class Window:
    """The replayed range: Prometheus evaluates at ``start + k * step`` up to ``end``."""

    start: float
    end: float
    step: float

    def stamps(self) -> list[float]:
        count = math.floor((self.end - self.start) / self.step + 1e-9) + 1
        return [self.start + k * self.step for k in range(count)]

    def t(self, stamp: float) -> float:
        """``stamp`` on the simulation's clock (t = 0 at ``start``), to the millisecond."""
        return round(stamp - self.start, 3)


def window(start: float, end: float, step: float) -> Window:
    if not end > start:
        raise ReplayError("--to must be later than --from")
    if not step > 0:
        raise ReplayError("--step must be positive")
    if (end - start) / step + 1 > MAX_POINTS:
        raise ReplayError(
            f"{math.floor((end - start) / step) + 1} points per series is more than "
            f"Prometheus's {MAX_POINTS}: shorten the range or give a larger --step"
        )
    return Window(round(start, 3), end, step)


def queries(
    policy: Policy, labels: Mapping[str, str], target: str, image: str | None = None
) -> dict[str, str]:
    """The PromQL of every check for the target, as the daemon renders it, then the request
    rate (under ``REQUESTS``)."""
    if "job" not in labels:
        raise ReplayError("give the target's job with --label job=NAME")
    for name in labels:
        if not _LABEL.fullmatch(name) or name.startswith("__"):
            raise ReplayError(f"{name!r} is not a valid Prometheus label name")
        if name in _RESERVED or name in policy.params:
            raise ReplayError(f"label {name!r} would hide the template variable {{{{{name}}}}}")
    variables = template_variables(policy, {k: [v] for k, v in labels.items()})
    variables.setdefault("target", target)
    both = {**variables, **template_variables(policy, {k: [v] for k, v in labels.items()}, BOTH)}
    out = {}
    for check in policy.checks.values():
        texts = [check.query, *check.queries.values()]
        if any("version" in templates.variables(text) for text in texts):
            if image is None:
                raise ReplayError(f"check {check.name!r} uses {{{{version}}}}: give --image IMAGE")
            variables.setdefault("version", image)
            both.setdefault("version", image)
        if check.kind == "compare":  # both sides' counters, one query per part
            for part, text in check.queries.items():
                out[part_name(check.name, part)] = templates.render(text, both)
        else:
            out[check.name] = templates.render(check.query, variables)
    rate = f"({templates.render(DEFAULT_REQUESTS_QUERY, variables)}) / {policy.interval:g}"
    return {**out, REQUESTS: rate}


def part_name(check: str, part: str) -> str:
    """How a compare check's part is named in ``queries`` and in messages."""
    return f"{check} ({part})"


def compare_lines(
    name: str, parts: Mapping[str, RangeResult], labels: Mapping[str, str], span: Window
) -> Iterator[dict[str, Any]]:
    """Timeline lines of a compare check: both sides' counters at every step (as the daemon
    reads them: raw counters, by ``le`` for buckets; a side without an error series has had
    no errors), or no data when a side has no requests, or an error when a target's series
    is ambiguous."""
    found: dict[str, dict[float, dict[str, dict[str, list[float]]]]] = {}
    for part, result in parts.items():
        at = found.setdefault(part, {})
        for series in result.series:
            side = series.labels.get("deployment", "")
            if side not in BOTH or any(series.labels.get(k, "") != v for k, v in labels.items()):
                continue
            le = compare.bound_label(series.labels["le"]) if "le" in series.labels else ""
            for stamp, value in series.points:
                at.setdefault(round(stamp, 3), {}).setdefault(side, {}).setdefault(le, []).append(
                    value
                )
    for stamp in span.stamps():
        key = round(stamp, 3)
        line: dict[str, Any] = {"t": span.t(stamp), "check": name}
        got = {part: found.get(part, {}).get(key, {}) for part in parts}
        if any(len(v) > 1 for g in got.values() for side in g.values() for v in side.values()):
            yield {**line, "error": "ambiguous: more than one series per side"}
            continue
        sides = _sides(got)
        yield {**line, **sides} if sides else {**line, "value": None}


def _sides(got: Mapping[str, Mapping[str, Mapping[str, list[float]]]]) -> dict[str, Any] | None:
    """The two sides of a compare line from its parts' values at one step, or None."""
    if "buckets" in got:
        out = {}
        for side in BOTH:
            buckets = {le: v[0] for le, v in got["buckets"].get(side, {}).items()}
            if compare.INF not in buckets:
                return None
            out[side] = {"buckets": buckets}
        return out
    requests, errors = got.get("requests", {}), got.get("errors", {})
    if any("" not in requests.get(side, {}) for side in BOTH):
        return None
    return {
        side: {
            "requests": requests[side][""][0],
            "errors": errors.get(side, {}).get("", [0.0])[0],
        }
        for side in BOTH
    }


Points = dict[float, list[float]]  # a query's values of the target at each step


def _points(result: RangeResult, labels: Mapping[str, str], young: Points | None = None) -> Points:
    """The canary series of the target (the evaluator's ``_split``), point by point; the steps
    in ``young`` (where the rollout was younger than the query's windows) from there."""
    out: Points = {}
    for series in result.series:
        if series.labels.get("deployment", CANARY) != CANARY:
            continue
        if any(series.labels.get(name, "") != value for name, value in labels.items()):
            continue
        for stamp, value in series.points:
            out.setdefault(round(stamp, 3), []).append(value)
    out.update(young or {})
    return out


def check_lines(
    name: str,
    result: RangeResult,
    labels: Mapping[str, str],
    span: Window,
    young: Points | None = None,
) -> Iterator[dict[str, Any]]:
    """Timeline lines of one check: a line where the measurement changes."""
    points, last = _points(result, labels, young), object()
    for stamp in span.stamps():
        values = points.get(round(stamp, 3), [])
        line: dict[str, Any] = {"t": span.t(stamp), "check": name}
        if len(values) > 1:
            line["error"] = f"ambiguous: {len(values)} series for this target"
        else:
            line["value"] = values[0] if values and not math.isnan(values[0]) else None
        shown = line.get("error", line.get("value"))
        if shown != last:
            yield line
        last = shown


def request_lines(
    result: RangeResult, labels: Mapping[str, str], span: Window, young: Points | None = None
) -> Iterator[dict[str, Any]]:
    """Canary requests per second; a step without a rate (or two) is counted as none."""
    points, last = _points(result, labels, young), None
    for stamp in span.stamps():
        values = points.get(round(stamp, 3), [])
        rate = values[0] if len(values) == 1 and math.isfinite(values[0]) else 0.0
        if rate != last:
            yield {"t": span.t(stamp), "requests": max(rate, 0.0)}
        last = rate


def alert_lines(
    result: RangeResult, labels: Mapping[str, str], target: str, span: Window
) -> Iterator[dict[str, Any]]:
    """Firing and resolved alert lines of the ``ALERTS`` series about the target."""
    for series in result.series:
        alert = {k: v for k, v in series.labels.items() if k not in ("__name__", "alertstate")}
        if alert.get("target") != target and alert.get("job") != labels["job"]:
            continue
        fingerprint = "replay-" + ",".join(f"{k}={alert[k]}" for k in sorted(alert))
        present = {round(stamp, 3) for stamp, _ in series.points}
        firing = False
        for stamp in span.stamps():
            if (round(stamp, 3) in present) == firing:
                continue
            firing = not firing
            body = {"status": "firing" if firing else "resolved", "labels": alert}
            body["fingerprint"] = fingerprint
            if firing:
                body["startsAt"] = datetime.fromtimestamp(stamp, UTC).isoformat()
            yield {"t": span.t(stamp), "alert": body}


async def fetch(
    client: PrometheusClient, promql: Mapping[str, str], span: Window
) -> dict[str, RangeResult]:
    """Every query over ``span`` at once; the first failure, in ``promql``'s order, raised as a
    ``ReplayError`` naming its check."""

    async def one(query: str) -> RangeResult | SourceUnavailable:
        try:
            return await client.query_range(query, span.start, span.end, span.step)
        except SourceUnavailable as exc:
            return exc

    async with asyncio.TaskGroup() as tg:
        tasks = {name: tg.create_task(one(query)) for name, query in promql.items()}
    results = {}
    for name, task in tasks.items():
        what = "the firing alerts" if name == ALERTS else f"check {name!r}"
        result = task.result()
        if isinstance(result, SourceUnavailable):
            raise ReplayError(f"{what}: {result}", EXIT_UNREACHABLE)
        if result.kind == "error":
            code = EXIT_BAD_ARGUMENTS if result.error_type == "bad_data" else EXIT_REFUSED
            raise ReplayError(
                f"Prometheus refused the query of {what}: {result.error_type}: {result.error}",
                code,
            )
        results[name] = result
    return results


async def history(
    policy: Policy,
    base_url: str,
    labels: Mapping[str, str],
    span: Window,
    *,
    target: str,
    image: str | None = None,
    alerts: bool = True,
    timeout: float = 30.0,
) -> list[dict[str, Any]]:
    """The timeline lines of the target's checks, requests and (optionally) alerts."""
    import aiohttp

    from canaryd.adapters.prometheus import PrometheusClient

    promql = queries(policy, labels, target, image)
    if alerts:
        promql[ALERTS] = ALERTS
    async with aiohttp.ClientSession() as session:
        client = PrometheusClient(session, base_url, timeout)
        found = await fetch(client, promql, span)
        young = await young_steps(client, policy, promql, labels, span)
    lines: list[dict[str, Any]] = []
    for name, check in policy.checks.items():
        if check.kind == "compare":
            parts = {part: found[part_name(name, part)] for part in check.queries}
            lines += compare_lines(name, parts, labels, span)
        else:
            lines += check_lines(name, found[name], labels, span, young.get(name))
    lines += request_lines(found[REQUESTS], labels, span, young.get(REQUESTS))
    if alerts:
        lines += alert_lines(found[ALERTS], labels, target, span)
    return sorted(lines, key=lambda line: line["t"])


async def young_steps(
    client: PrometheusClient,
    policy: Policy,
    promql: Mapping[str, str],
    labels: Mapping[str, str],
    span: Window,
) -> dict[str, Points]:
    """The steps at which the replayed rollout (ready at ``--from``) is younger than a query's
    windows, measured as the daemon measures them (``core.scope``): no data while too young,
    else the query with its windows clipped to the age, asked at that step alone."""
    out: dict[str, Points] = {}
    for stamp in span.stamps():
        age = stamp - span.start
        asked: dict[str, str] = {}
        for name, query in promql.items():
            check = policy.checks.get(name)
            if name == ALERTS or (check is not None and not scope.clipped(policy, check)):
                continue
            if age >= scope.lookback(query):
                continue
            clipped = scope.scoped(query, age, policy.min_window)
            if clipped is None:
                out.setdefault(name, {})[round(stamp, 3)] = []
            else:
                asked[name] = clipped
        if asked:
            found = await fetch(client, asked, Window(stamp, stamp, span.step))
            for name, result in found.items():
                points = _points(result, labels).get(round(stamp, 3), [])
                out.setdefault(name, {})[round(stamp, 3)] = points
    return out


# --------------------------------------------------------------------------- the command


def register(commands: Any) -> None:
    """Add ``replay`` to ``canaryctl``'s subcommands."""
    p = commands.add_parser("replay", help="simulate a policy on a Prometheus's history")
    add_policy_and_target(p, label_help="a label of the target, repeatable; job=NAME is required")
    p.add_argument("--prometheus", required=True, metavar="URL", help="Prometheus's address")
    times = "RFC 3339, Unix seconds, now, or --{}=-30m / now-30m"
    p.add_argument("--from", dest="start", required=True, metavar="T", help=times.format("from"))
    p.add_argument("--to", dest="end", required=True, metavar="T", help=times.format("to"))
    p.add_argument("--step", metavar="SECONDS", help="resolution (default: the policy interval)")
    p.add_argument("--no-alerts", action="store_true", help="ignore the ALERTS series")
    p.add_argument("--save-samples", metavar="FILE", help="also write the timeline (JSON lines)")
    p.add_argument("-o", "--output", choices=("table", "json"), default=argparse.SUPPRESS)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    policy = policy_or_problems(args.policy)
    if policy is None:
        return EXIT_BAD_ARGUMENTS
    try:
        span = _window(args, policy, time.time())
        labels = _labels(args.label)
        target = args.target or labels.get("job", "")
        lines = asyncio.run(
            history(
                policy,
                args.prometheus,
                labels,
                span,
                target=target,
                image=args.image,
                alerts=not args.no_alerts,
                timeout=args.timeout,
            )
        )
    except ReplayError as exc:
        print(f"canaryctl replay: {exc}", file=sys.stderr)
        return exc.exit_code
    if args.save_samples:
        try:
            with open(args.save_samples, "w", encoding="utf-8") as out:
                out.writelines(json.dumps(line) + "\n" for line in lines)
        except OSError as exc:
            print(f"canaryctl replay: cannot write {args.save_samples}: {exc}", file=sys.stderr)
            return 1
    timeline = simulate.Timeline.parse((json.dumps(line) for line in lines), "replay", span.start)
    final, records = simulate.run(unverified_split(policy), timeline, until=span.end - span.start)
    simulate.print_run(records, final, args.output, sys.stdout)
    return 0


def unverified_split(policy: Policy) -> Policy:
    """``policy`` without its split test but with its share of ``alpha``: a history's requests
    went by the weights really set, not the policy's, so the share would be tested against the
    wrong weight. A tolerance of a whole share leaves no edge inside (0, 1) (``split.bounds``):
    nothing is tested, while ``compare.alpha_share`` still counts the split."""
    if policy.split_tolerance is None:
        return policy
    return replace(policy, split_tolerance=1.0)


def _window(args: argparse.Namespace, policy: Policy, now: float) -> Window:
    start = parse_time(args.start, now, "--from")
    end = min(parse_time(args.end, now, "--to"), now)
    try:
        step = parse_duration(args.step) if args.step is not None else policy.interval
    except ValueError as exc:
        raise ReplayError(f"--step: {exc}") from None
    return window(start, end, step)


def _labels(texts: list[str]) -> dict[str, str]:
    try:
        return parse_labels(texts)
    except ValueError as exc:
        raise ReplayError(str(exc)) from None
