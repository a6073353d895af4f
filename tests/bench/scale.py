"""Benchmark: one daemon, 1,000 targets with active rollouts, a real Prometheus.

    python tests/bench/scale.py [--targets 1000] [--interval 10] [--seconds 40] [--baseline N]
                                [--start-spread SECONDS] [--keep] [--tracing]

What runs, all on loopback, all stopped by pid when the run ends:

* a synthetic exporter (an aiohttp process started here) serving, for every target ``svc-<i>``,
  the demo service's series (``http_requests_total``, ``lukhas_matriz_pipeline_duration_seconds``,
  ``guardian_decision_duration_seconds``) for ``deployment="canary"`` and ``"stable"`` with
  ``job="svc-<i>"`` in the exposition. Counters grow at a constant rate (20 req/s, no errors,
  40 ms pipeline, 8 ms guardian), so every check of every target has real, passing data;
* a real Prometheus (``support.procs``) scraping it every 5 s with ``honor_labels: true`` (one
  scrape job gives N jobs' worth of series, ~54 series per target) and writing a query log;
* ``canaryd serve -c CONFIG`` as a subprocess: N targets (``labels: {job: svc-<i>}``, router
  ``noop``, platform ``none``), an admin token, policies derived from ``matriz-fast-track``: its
  checks, ``interval`` = ``--interval``, a 1 m window, every stage 1 h long (nothing finishes
  during the run). Target ``i`` uses variant ``i % 4``, which begins at fast-track's stage
  ``i % 4 + 1``, so the targets sit in all four stages and one cycle needs all four checks
  (success-rate; + latency-p95; + error-rate; health-score).

Three windows of ``--seconds`` are measured in the same run, one after the other, so the
figures are comparable on a noisy machine: ``idle`` (N targets configured, no rollout),
``baseline`` (``--baseline`` rollouts, default N/10) and ``full`` (N rollouts), each started
through ``POST /api/v1/targets/{t}/rollouts`` (32 at a time). Per window:

* from Prometheus's query log, over whole cycles (a cycle is one evaluation of every active
  rollout; it lasts a little longer than the interval, and its length is measured): queries per
  cycle, split into the policy's checks and the request-count part (one per evaluation batch,
  joined to a check's query), so batches per cycle, queries per batch and rollouts evaluated
  per cycle;
* as cross-checks, queries per cycle from the daemon's ``canaryd_promql_duration_seconds_count``
  and from Prometheus's ``prometheus_http_requests_total{handler="/api/v1/query"}``;
* the daemon's CPU (utime + stime from ``/proc/<pid>/stat``, as % of one core), its RSS
  (``VmRSS``, and the peak ``VmHWM``), and Prometheus's CPU for scale.

Targets (issue: 1,000 targets): queries per cycle = the checks in use (4 here; the request
count of each batch rides along inside one of them), daemon CPU < 20 % of one core at a 10 s
interval, RSS < 200 MB. Rollouts started more than the evaluator's ``gather`` apart are
evaluated in separate batches, so ``--start-spread 10`` (the full window's rollouts started over
10 s, as they would be in life) is the case to look at for the query count. ``--keep`` leaves
the work directory (configs, logs, query log). ``--tracing`` traces every rollout
(``tracing: {otlp_endpoint}`` to ``support.otlpkit``'s receiver, started here): the daemon's
CPU of a run with it, against one without, is the cost of tracing. Exit 0 when every target
is met, else 1.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import multiprocessing
import os
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from support import procs  # noqa: E402

SCRAPE_INTERVAL = 5.0
WINDOW = "1m"
RPS = 20.0  # canary and stable requests per second, per target
PIPELINE_SECONDS = 0.04
GUARDIAN_SECONDS = 0.008
STAGE_DURATION = "1h"
CONCURRENCY = 32  # rollout starts in flight
CPU_TARGET, RSS_TARGET_MB = 20.0, 200.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- the exporter


def exporter_lines(jobs: list[str]) -> list[tuple[str, float]]:
    """``(series, per-second increase)`` for every series of every job, grouped by family."""
    from canaryd.demo.service import GUARDIAN_BUCKETS, PIPELINE_BUCKETS

    deployments = (("canary", "v2"), ("stable", "v1"))
    rows: list[tuple[str, float]] = [("# TYPE http_requests_total counter", math.nan)]
    for job in jobs:
        for deployment, version in deployments:
            base = f'job="{job}",deployment="{deployment}",version="{version}"'
            rows.append((f'http_requests_total{{status="200",{base}}}', RPS))
            rows.append((f'http_requests_total{{status="500",{base}}}', 0.0))
    histograms = (
        ("lukhas_matriz_pipeline_duration_seconds", PIPELINE_BUCKETS, PIPELINE_SECONDS),
        ("guardian_decision_duration_seconds", GUARDIAN_BUCKETS, GUARDIAN_SECONDS),
    )
    for name, buckets, observed in histograms:
        rows.append((f"# TYPE {name} histogram", math.nan))
        for job in jobs:
            for deployment, version in deployments:
                base = f'job="{job}",deployment="{deployment}",version="{version}"'
                for le in buckets:
                    rows.append((f'{name}_bucket{{{base},le="{le!r}"}}', RPS * (observed <= le)))
                rows.append((f'{name}_bucket{{{base},le="+Inf"}}', RPS))
                rows.append((f"{name}_count{{{base}}}", RPS))
                rows.append((f"{name}_sum{{{base}}}", RPS * observed))
    return rows


def serve_exporter(port: int, targets: int, ready: Any) -> None:
    """The exporter process: counters are ``rate × seconds since start`` at every scrape."""
    from aiohttp import web

    from canaryd.demo.service import CONTENT_TYPE

    rows = exporter_lines([f"svc-{i}" for i in range(targets)])
    started = time.time() - 600.0  # counters well above zero from the first scrape

    async def metrics(request: web.Request) -> web.Response:
        elapsed = time.time() - started
        body = "\n".join(
            series if rate != rate else f"{series} {rate * elapsed:.3f}" for series, rate in rows
        )
        return web.Response(body=(body + "\n").encode(), headers={"Content-Type": CONTENT_TYPE})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    ready.set()
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


# --------------------------------------------------------------------------- set-up


def policy_variants(interval: float) -> list[dict[str, Any]]:
    """Fast-track's checks and limits; variant k starts at its stage k+1; every stage 1 h."""
    import yaml

    base = yaml.safe_load((ROOT / "rules/matriz-fast-track.yaml").read_text())
    base["interval"] = f"{interval:g}s"
    base["window"] = WINDOW
    base["limits"]["progress_deadline"] = "2h"
    variants = []
    for k in range(len(base["stages"])):
        stages = [dict(s, duration=STAGE_DURATION) for s in base["stages"][k:]]
        variants.append(dict(base, name=f"bench-stage-{k + 1}", stages=stages))
    return variants


def write_config(work: Path, targets: int, interval: float, prometheus: str, port: int) -> str:
    """Config, policies and tokens under ``work``; returns the admin token."""
    token = secrets.token_hex(16)
    (work / "tokens.yaml").write_text(
        json.dumps([{"name": "bench", "role": "admin", "token": token}])
    )
    variants = policy_variants(interval)
    for k, variant in enumerate(variants):
        (work / f"policy-{k + 1}.yaml").write_text(json.dumps(variant, indent=1))  # JSON is YAML
    config = {
        "listen": f"127.0.0.1:{port}",
        "state": {"backend": "sqlite", "path": str(work / "state.db")},
        "prometheus": {"url": prometheus, "timeout": "5s"},
        "auth": {"tokens_file": str(work / "tokens.yaml")},
        "targets": [
            {
                "name": f"svc-{i}",
                "policy": f"policy-{i % len(variants) + 1}.yaml",
                "platform": {"kind": "none"},
                "router": {"kind": "noop"},
                "labels": {"job": f"svc-{i}"},
            }
            for i in range(targets)
        ],
    }
    (work / "canaryd.yaml").write_text(json.dumps(config, indent=1))
    return token


def configure_prometheus(prometheus: procs.Proc, exporter: str, query_log: Path) -> None:
    """Replace the helper's config: one honor_labels job, a query log; then reload."""
    config = {
        "global": {
            "scrape_interval": f"{SCRAPE_INTERVAL:g}s",
            "evaluation_interval": f"{SCRAPE_INTERVAL:g}s",
            "query_log_file": str(query_log),
        },
        "scrape_configs": [
            {
                "job_name": "bench-exporter",
                "honor_labels": True,  # keep the exposition's job="svc-<i>"
                "static_configs": [{"targets": [exporter]}],
            }
        ],
    }
    path = Path(str(prometheus.extra["config"]))
    path.write_text(json.dumps(config, indent=2))
    request = urllib.request.Request(f"{prometheus.url}/-/reload", method="POST")
    with urllib.request.urlopen(request, timeout=10):
        pass


def wait_for_data(prometheus: procs.Proc, targets: int, timeout: float = 60.0) -> None:
    """Until every job has a canary request rate (two scrapes inside the window)."""
    query = (
        'count(sum by (job) (rate(http_requests_total{job=~"svc-.*",deployment="canary"}'
        f"[{WINDOW}])))"
    )
    deadline = time.monotonic() + timeout
    seen = 0.0
    while time.monotonic() < deadline:
        result = procs.prometheus_query(prometheus, query)
        seen = float(result[0]["value"][1]) if result else 0.0  # type: ignore[index]
        if seen >= targets:
            return
        time.sleep(1.0)
    raise procs.StartError(f"only {seen:g} of {targets} jobs have data after {timeout:g}s")


def start_daemon(work: Path, port: int) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "canaryd.cli", "serve", "-c", str(work / "canaryd.yaml")]
    with (work / "canaryd.log").open("ab") as log:
        daemon = subprocess.Popen(
            [*argv, "--json-logs"], cwd=work, stdout=log, stderr=subprocess.STDOUT
        )
    procs.wait_http_ok(f"http://127.0.0.1:{port}/readyz", timeout=120.0, proc=daemon)
    return daemon


async def start_rollouts(
    url: str, token: str, names: list[str], spread: float = 0.0
) -> tuple[float, list[float]]:
    """Start a rollout on each of ``names``, CONCURRENCY at a time, the k-th not before
    ``k × spread / len(names)`` seconds; returns (seconds taken, latencies)."""
    import aiohttp

    headers = {"Authorization": f"Bearer {token}"}
    gate = asyncio.Semaphore(CONCURRENCY)
    latencies: list[float] = []
    failures: list[str] = []

    async def one(session: aiohttp.ClientSession, k: int, name: str) -> None:
        await asyncio.sleep(k * spread / len(names))
        async with gate:
            began = time.perf_counter()
            async with session.post(
                f"{url}/api/v1/targets/{name}/rollouts", json={"image": "v2"}, headers=headers
            ) as response:
                body = await response.text()
                if response.status != 201:
                    failures.append(f"{name}: HTTP {response.status} {body[:200]}")
            latencies.append(time.perf_counter() - began)

    timeout = aiohttp.ClientTimeout(total=120)
    began = time.perf_counter()
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(*(one(session, k, name) for k, name in enumerate(names)))
    if failures:
        raise SystemExit(f"{len(failures)} rollout starts failed, e.g. {failures[:3]}")
    return time.perf_counter() - began, sorted(latencies)


# --------------------------------------------------------------------------- measuring

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as response:
        return str(response.read().decode())


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` carrying all ``labels`` in an exposition."""
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    total = 0.0
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match and match.group(1) == name and all(w in (match.group(2) or "") for w in wanted):
            total += float(match.group(3))
    return total


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15)


def memory_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) in MB."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0]) / 1024
    return found["VmRSS"], found["VmHWM"]


@dataclass
class Snapshot:
    at: float
    wall: float
    daemon_cpu: float
    prometheus_cpu: float
    queries: float
    query_seconds: float
    query_errors: float
    prometheus_queries: float
    log_offset: int

    @classmethod
    def take(cls, daemon: int, prometheus: procs.Proc, url: str, query_log: Path) -> Snapshot:
        ours = scrape(f"{url}/metrics")
        theirs = scrape(f"{prometheus.url}/metrics")
        return cls(
            at=time.monotonic(),
            wall=time.time(),
            daemon_cpu=cpu_seconds(daemon),
            prometheus_cpu=cpu_seconds(prometheus.pid),
            queries=metric(ours, "canaryd_promql_duration_seconds_count"),
            query_seconds=metric(ours, "canaryd_promql_duration_seconds_sum"),
            query_errors=metric(ours, "canaryd_promql_errors_total"),
            prometheus_queries=metric(
                theirs, "prometheus_http_requests_total", handler="/api/v1/query"
            ),
            log_offset=query_log.stat().st_size if query_log.exists() else 0,
        )


@dataclass
class Window:
    name: str
    active: int
    cycles: int  # whole cycles in the query log
    period: float  # seconds per cycle
    logged: float  # queries per cycle in Prometheus's query log
    queries: float  # per cycle, from the daemon's counter
    prometheus_queries: float  # per cycle, from Prometheus
    query_ms: float  # mean latency the daemon saw
    errors: float
    batches: float  # per cycle: request-count queries in the query log
    evaluated: float  # rollouts evaluated per cycle (jobs in the request counts)
    per_check: Counter[str] = field(default_factory=Counter)  # queries per cycle by check
    cpu: float = 0.0  # % of one core
    prometheus_cpu: float = 0.0
    rss: float = 0.0
    hwm: float = 0.0


REQUEST_COUNT = "(request count)"
_JOB_MATCHER = re.compile(r'job=~"((?:[^"\\]|\\.)*)"')
_JOINED_PART = re.compile(r'label_replace\((.*?)\n, "canaryd_part", "\d+", "", ""\)', re.S)


def query_shapes(variants: list[dict[str, Any]], interval: float) -> dict[str, str]:
    """Each check's query (and the request count) as the evaluator renders it, jobs blanked."""
    from canaryd.core import templates
    from canaryd.runtime.evaluator import CANARY, DEFAULT_REQUESTS_QUERY

    base = variants[0]
    values = {
        "window": WINDOW,
        "interval": f"{interval:g}s",
        "interval_seconds": f"{interval:g}",
        "deployment": CANARY,
        "group": "job, deployment",
        "job": "X",
        **base.get("params", {}),
    }
    shapes = {templates.render(DEFAULT_REQUESTS_QUERY, values): REQUEST_COUNT}
    for name, check in base["checks"].items():
        shapes[templates.render(check["query"], values)] = name
    return shapes


@dataclass(frozen=True)
class Logged:
    """One query of Prometheus's query log: when, which check, which jobs it covered."""

    at: float
    kind: str
    jobs: tuple[str, ...]
    rider: bool = False  # a later part of a joined query: not a query of its own


def read_query_log(path: Path, offset: int, shapes: dict[str, str]) -> list[Logged]:
    """The queries logged since ``offset``, classified by the policy's query shapes."""
    found: list[Logged] = []
    with path.open("rb") as log:
        log.seek(offset)
        for line in log:
            try:
                entry = json.loads(line)
                query, at = str(entry["params"]["query"]), _timestamp(str(entry["ts"]))
            except (ValueError, KeyError):
                continue
            # A check and the request count may be one query (runtime.evaluator): its parts.
            for i, part in enumerate(_JOINED_PART.findall(query) or [query]):
                matched = _JOB_MATCHER.search(part)
                kind = shapes.get(_JOB_MATCHER.sub('job=~"X"', part), "(other)")
                jobs = tuple(matched.group(1).split("|")) if matched else ()
                found.append(Logged(at, kind, jobs, rider=i > 0))
    return found


def _timestamp(text: str) -> float:
    """Prometheus's RFC 3339 time with up to nanoseconds, to Unix seconds."""
    stamp, _, fraction = text.rstrip("Z").partition(".")
    seconds = datetime.fromisoformat(stamp).replace(tzinfo=UTC).timestamp()
    return seconds + float(f"0.{fraction or 0}")


def cycle_period(logged: list[Logged], interval: float) -> float:
    """The median time between two evaluations of the same rollout (its request counts)."""
    counted: dict[str, list[float]] = {}
    for q in logged:
        if q.kind == REQUEST_COUNT:
            for job in q.jobs:
                counted.setdefault(job, []).append(q.at)
    gaps = [b - a for times in counted.values() for a, b in itertools.pairwise(times)]
    return statistics.median(gaps) if gaps else interval


def whole_cycles(logged: list[Logged], period: float, end: float) -> tuple[int, list[Logged]]:
    """The queries of the whole cycles from the first logged batch on, and how many cycles.

    Batches repeat every ``period``, so ``m`` periods from the first batch hold every batch
    exactly ``m`` times; the cut sits just before the first batch's ``m+1``-th occurrence.
    """
    ours = [q for q in logged if q.kind != "(other)"]
    if not ours:
        return 0, []
    first = ours[0].at
    cycles = int((end - first) // period)
    cut = first + cycles * period - 0.1
    return cycles, [q for q in ours if q.at < cut]


def measure(
    name: str,
    active: int,
    seconds: float,
    interval: float,
    ctx: tuple[int, procs.Proc, str, Path, dict[str, str]],
) -> Window:
    daemon, prometheus, url, query_log, shapes = ctx
    before = Snapshot.take(daemon, prometheus, url, query_log)
    time.sleep(seconds)
    after = Snapshot.take(daemon, prometheus, url, query_log)
    wall = after.at - before.at
    logged = read_query_log(query_log, before.log_offset, shapes)
    # A cycle is one evaluation of every active rollout. It lasts a little longer than the
    # interval (the next evaluation is due an interval after the previous one *finished*), so
    # its length is measured, and the log is cut to whole cycles; the daemon's and Prometheus's
    # counters (cross-checks) are read at the window's edges and divided by wall / period.
    period = cycle_period(logged, interval)
    cycles, inside = whole_cycles(logged, period, after.wall)
    per = max(cycles, 1)
    by_time = wall / period
    count = after.queries - before.queries
    rss, hwm = memory_mb(daemon)
    return Window(
        name=name,
        active=active,
        cycles=cycles,
        period=period,
        logged=sum(not q.rider for q in inside) / per,
        queries=count / by_time,
        prometheus_queries=(after.prometheus_queries - before.prometheus_queries) / by_time,
        query_ms=1000 * (after.query_seconds - before.query_seconds) / count if count else 0.0,
        errors=after.query_errors - before.query_errors,
        batches=sum(q.kind == REQUEST_COUNT for q in inside) / per,
        evaluated=sum(len(q.jobs) for q in inside if q.kind == REQUEST_COUNT) / per,
        per_check=Counter({k: v / per for k, v in Counter(q.kind for q in inside).items()}),
        cpu=100 * (after.daemon_cpu - before.daemon_cpu) / wall,
        prometheus_cpu=100 * (after.prometheus_cpu - before.prometheus_cpu) / wall,
        rss=rss,
        hwm=hwm,
    )


def state_of(url: str, token: str) -> tuple[Counter[str], Counter[str]]:
    """Phases of the targets' rollouts, and how many targets have a value per check."""
    request = urllib.request.Request(
        f"{url}/api/v1/targets", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        rows = json.load(response)["targets"]
    phases = Counter(str(row.get("phase") or "none") for row in rows)
    valued: Counter[str] = Counter()
    for line in scrape(f"{url}/metrics").splitlines():
        if line.startswith("canaryd_check_value{"):
            found = re.search(r'check="([^"]*)"', line)
            if found:
                valued[found.group(1)] += 1
    return phases, valued


def daemon_log(path: Path) -> str:
    """Size of the daemon's log and its events at warning level and above."""
    levels: Counter[str] = Counter()
    events: Counter[str] = Counter()
    for line in path.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            levels["(not JSON)"] += 1
            continue
        level = str(entry.get("level", "?"))
        levels[level] += 1
        if level not in ("debug", "info"):
            events[f"{level} {entry.get('event')}"] += 1
    shown = ", ".join(f"{k} ×{v}" for k, v in events.most_common(5)) or "no warnings or errors"
    return f"daemon log: {path.stat().st_size / 1e6:.1f} MB, {sum(levels.values())} lines; {shown}"


# --------------------------------------------------------------------------- the run


def report(args: argparse.Namespace, windows: list[Window], notes: list[str]) -> bool:
    print(
        f"\nscale: {args.targets} targets, interval {args.interval:g}s, "
        f"{args.seconds:g}s per window, Prometheus scraping every {SCRAPE_INTERVAL:g}s, "
        f"rollouts of the full window started over {args.start_spread:g}s"
    )
    for note in notes:
        print(f"  {note}")
    print(
        "\ncycle = one evaluation of every active rollout, s/cycle its measured length; from "
        "Prometheus's query log, over whole cycles:\nlog q (queries), batches, evald (rollouts "
        "evaluated), all per cycle; cross-checks over the window: queries per cycle by the\n"
        "daemon's canaryd_promql_duration_seconds_count (canaryd q) and by Prometheus's "
        "prometheus_http_requests_total (prom q);\nq ms = mean query latency the daemon saw; "
        "CPU = % of one core over the window; RSS and its peak (HWM) at the window's end"
    )
    print(
        f"{'window':<9}{'active':>7}{'cycles':>7}{'s/cycle':>8}{'log q':>7}{'batches':>8}"
        f"{'q/batch':>8}{'evald':>6}{'canaryd q':>10}{'prom q':>7}{'q ms':>6}{'CPU %':>7}"
        f"{'RSS MB':>7}{'HWM MB':>7}{'prom CPU %':>11}"
    )
    for w in windows:
        per_batch = w.logged / w.batches if w.batches else 0.0
        print(
            f"{w.name:<9}{w.active:>7}{w.cycles:>7}{w.period:>8.2f}{w.logged:>7.2f}"
            f"{w.batches:>8.2f}{per_batch:>8.2f}{w.evaluated:>6.0f}{w.queries:>10.2f}"
            f"{w.prometheus_queries:>7.2f}{w.query_ms:>6.1f}{w.cpu:>7.1f}{w.rss:>7.1f}"
            f"{w.hwm:>7.1f}{w.prometheus_cpu:>11.1f}"
            + (f"  ({w.errors:.0f} query errors)" if w.errors else "")
        )
    print("\nqueries per cycle by kind (Prometheus query log):")
    for w in windows:
        shown = ", ".join(f"{k} {v:.2f}" for k, v in sorted(w.per_check.items())) or "none"
        print(f"  {w.name:<9}{shown}")
    full = windows[-1]
    checks = len([k for k in full.per_check if not k.startswith("(")])
    ok_queries = full.logged <= checks
    ok_cpu = full.cpu < CPU_TARGET
    ok_rss = full.rss < RSS_TARGET_MB
    mark = {True: "PASS", False: "FAIL"}
    print(f"\ntargets at {full.active} active rollouts:")
    print(
        f"  {mark[ok_queries]} queries per cycle {full.logged:.2f} vs {checks} checks in use "
        f"(the request count rides along with a check); {full.batches:.2f} batches per cycle"
    )
    print(f"  {mark[ok_cpu]} daemon CPU {full.cpu:.1f}% of one core (< {CPU_TARGET:g}%)")
    print(f"  {mark[ok_rss]} daemon RSS {full.rss:.1f} MB (< {RSS_TARGET_MB:g} MB)")
    return ok_queries and ok_cpu and ok_rss


def run(args: argparse.Namespace, work: Path) -> bool:
    if not args.tracing:
        return _run(args, work, None)
    from support.otlpkit import Receiver

    with Receiver() as receiver:
        ok = _run(args, work, receiver)
        print(f"tracing: {len(receiver.spans)} spans in {receiver.requests} OTLP requests")
    return ok


def _run(args: argparse.Namespace, work: Path, receiver: Any) -> bool:
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    exporter_port = procs.free_port()
    exporter = ctx.Process(
        target=serve_exporter, args=(exporter_port, args.targets, ready), daemon=True
    )
    prometheus: procs.Proc | None = None
    daemon: subprocess.Popen[bytes] | None = None
    notes: list[str] = []
    exporter.start()
    try:
        if not ready.wait(60):
            raise SystemExit("exporter did not start")
        prometheus = procs.start_prometheus(work, {})
        query_log = work / "query.log"
        configure_prometheus(prometheus, f"127.0.0.1:{exporter_port}", query_log)
        began = time.monotonic()
        wait_for_data(prometheus, args.targets)
        notes.append(
            f"data: all {args.targets} jobs have canary series after "
            f"{time.monotonic() - began:.0f}s (synthetic exporter, passing values)"
        )
        port = procs.free_port()
        token = write_config(work, args.targets, args.interval, prometheus.url, port)
        if receiver is not None:  # --tracing: every rollout traced, spans to a real receiver
            config = json.loads((work / "canaryd.yaml").read_text())
            config["tracing"] = {"otlp_endpoint": receiver.endpoint}
            (work / "canaryd.yaml").write_text(json.dumps(config, indent=1))
        url = f"http://127.0.0.1:{port}"
        began = time.monotonic()
        daemon = start_daemon(work, port)
        notes.append(f"daemon ready in {time.monotonic() - began:.1f}s (pid {daemon.pid})")
        variants = policy_variants(args.interval)
        shapes = query_shapes(variants, args.interval)
        context = (daemon.pid, prometheus, url, query_log, shapes)
        names = [f"svc-{i}" for i in range(args.targets)]
        baseline = min(args.baseline, args.targets)
        windows = [measure("idle", 0, args.seconds, args.interval, context)]
        started = 0
        for label, upto in (("baseline", baseline), ("full", args.targets)):
            if upto <= started:
                continue
            spread = args.start_spread if label == "full" else 0.0
            took, lat = asyncio.run(start_rollouts(url, token, names[started:upto], spread))
            notes.append(
                f"{label}: started {upto - started} rollouts in {took:.1f}s "
                f"(p50 {1000 * statistics.median(lat):.0f} ms, "
                f"p99 {1000 * lat[max(0, int(len(lat) * 0.99) - 1)]:.0f} ms per request)"
            )
            started = upto
            time.sleep(args.interval + 2.0)  # every new rollout evaluated once before we look
            windows.append(measure(label, upto, args.seconds, args.interval, context))
        phases, valued = state_of(url, token)
        notes.append(
            "rollout phases at the end: " + ", ".join(f"{k} {v}" for k, v in phases.items())
        )
        notes.append(
            "targets with a value per check: "
            + ", ".join(f"{k} {v}" for k, v in sorted(valued.items()))
        )
        notes.append(daemon_log(work / "canaryd.log"))
        if daemon.poll() is not None:
            notes.append(f"daemon exited with {daemon.returncode}")
        return report(args, windows, notes)
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.terminate()
            try:
                daemon.wait(15)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait(5)
        if prometheus is not None:
            prometheus.stop()
        exporter.terminate()
        exporter.join(10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, default=1000)
    parser.add_argument("--interval", type=float, default=10.0, help="policy interval, seconds")
    parser.add_argument("--seconds", type=float, default=40.0, help="length of each window")
    parser.add_argument("--baseline", type=int, default=None, help="default: targets / 10")
    parser.add_argument(
        "--start-spread",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="start the full window's rollouts evenly over this long (default: at once)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument(
        "--tracing",
        action="store_true",
        help="trace every rollout (tracing: to an OTLP/HTTP receiver started here); "
        "compare the daemon's CPU with a run without",
    )
    args = parser.parse_args()
    if args.baseline is None:
        args.baseline = max(1, args.targets // 10)
    work = Path(tempfile.mkdtemp(prefix="canaryd-scale-"))
    try:
        ok = run(args, work)
    finally:
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
