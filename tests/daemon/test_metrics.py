"""``/metrics`` of a real ``canaryd serve`` as an SRE scrapes it (SPEC §5.4, docs/metrics.md).

One stack for the module: ``canaryd serve`` with one target on the ``noop`` router, and a real
Prometheus scraping that daemon's own ``/metrics`` every second as job ``canaryd``. The target
is named ``canaryd`` too, so its ``{{job}}`` is that job and its policy's three checks are
queries over canaryd's own series (``up``, ``process_cpu_seconds_total``,
``canaryd_build_info``): real PromQL through the real batched evaluator, answered by real
Prometheus, with nothing else to run. The one stage lasts a few seconds at a 1 s interval, so
the rollout is evaluated several times and succeeds; every evaluation's measurements are in
the SQLite state, which is what the counter is held to.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from canaryd.adapters.telemetry import Telemetry
from canaryd.config.policies import load_policy
from canaryd.core import stages
from canaryd.core.model import (
    Action,
    ActionKind,
    Cause,
    Effect,
    EffectKind,
    Measurement,
    Observed,
    Phase,
    Policy,
    SplitState,
)
from support import procs
from support.procs import free_port
from support.servekit import Serve, TargetSpec, wait_until, write_config

ROOT = Path(__file__).resolve().parents[2]
TARGET = "canaryd"  # also the Prometheus job scraping the daemon: the target's {{job}}
CHECKS = {
    "scraped": ('sum by ({{group}}) (up{job=~"{{job}}"})', ">=", 1),
    "cpu": ('sum by ({{group}}) (process_cpu_seconds_total{job=~"{{job}}"})', ">", 0),
    "built": ('sum by ({{group}}) (canaryd_build_info{job=~"{{job}}"})', ">=", 1),
}
STAGE_SECONDS = 5


def policy_text() -> str:
    lines = [
        "name: self-scrape",
        "interval: 1s",
        "window: 10s",
        "scale_down_delay: 1s",
        "limits: {progress_deadline: 30s, inconclusive_limit: 10}",
        "checks:",
    ]
    for name, (query, op, threshold) in CHECKS.items():
        lines += [
            f"  {name}:",
            f"    query: '{query}'",
            f'    op: "{op}"',
            f"    threshold: {threshold}",
        ]
    checks = ", ".join(CHECKS)
    lines += ["stages:", f"  - {{weight: 50, duration: {STAGE_SECONDS}s, checks: [{checks}]}}"]
    return "\n".join(lines) + "\n"


@dataclass
class Stack:
    serve: Serve
    prometheus: procs.Proc
    rollout: dict[str, Any]  # the finished rollout, as the API shows it
    exposition: str  # /metrics once it finished


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("metrics")
    port = free_port()
    prometheus = procs.start_prometheus(tmp, {TARGET: [f"127.0.0.1:{port}"]})
    serve: Serve | None = None
    try:
        (tmp / "self-scrape.yaml").write_text(policy_text())
        config = write_config(
            tmp, [TargetSpec(TARGET, "self-scrape.yaml")], port=port, prometheus_url=prometheus.url
        )
        serve = Serve(config)
        serve.start()
        procs.wait_for_up(prometheus, TARGET, 1)
        started = serve.start_rollout(TARGET, "app:v2")
        rollout = wait_until(
            lambda: serve.rollout(TARGET) or {},  # type: ignore[union-attr]
            lambda r: r.get("id") == started["id"] and r.get("phase") == "Succeeded",
            STAGE_SECONDS + 25,
            "the self-scrape rollout to succeed",
        )
        yield Stack(serve, prometheus, rollout, serve.metrics())
    finally:
        if serve is not None:
            serve.stop()
        prometheus.stop()


def stored_measurements(db: Path, rollout_id: str) -> list[tuple[float, str]]:
    """(time, check) of every stored measurement of one rollout."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as conn:
        rows = conn.execute(
            "SELECT t, check_name FROM measurements WHERE rollout_id = ? ORDER BY seq",
            (rollout_id,),
        ).fetchall()
    return [(float(t), str(name)) for t, name in rows]


def samples(exposition: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Every sample called ``name``: its sorted labels -> its value."""
    found: dict[tuple[tuple[str, str], ...], float] = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == name:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def test_every_evaluation_of_every_check_is_counted(stack: Stack) -> None:
    """After N evaluations of a stage with K checks the counter reads N×K, though only the
    stage's last evaluation led to a decision (before, the counter read 1 per stage)."""
    rows = stored_measurements(stack.serve.state, stack.rollout["id"])
    evaluations = sorted({t for t, _ in rows})
    n, k = len(evaluations), len(CHECKS)
    assert n >= STAGE_SECONDS - 1, f"only {n} evaluations in a {STAGE_SECONDS}s stage"
    assert sorted(name for _, name in rows) == sorted(list(CHECKS) * n), rows

    counted = samples(stack.exposition, "canaryd_check_results_total")
    assert sum(counted.values()) == n * k, counted
    for check in CHECKS:
        key = (("check", check), ("result", "successful"), ("target", TARGET))
        assert counted.get(key) == n, (check, counted)
    values = samples(stack.exposition, "canaryd_check_value")
    assert values[(("check", "scraped"), ("target", TARGET))] == 1.0

    decisions = samples(stack.exposition, "canaryd_decisions_total")
    holds = sum(v for labels, v in decisions.items() if ("action", "hold") in labels)
    assert holds == 0, "the passing evaluations before the last decided nothing"


def test_process_and_python_collectors_are_exported(stack: Stack) -> None:
    text = stack.exposition
    assert samples(text, "process_cpu_seconds_total")[()] > 0
    assert samples(text, "process_resident_memory_bytes")[()] > 0
    assert samples(text, "process_start_time_seconds")[()] > 0
    (python,) = samples(text, "python_info")
    assert dict(python)["implementation"] == "CPython"
    assert len(samples(text, "python_gc_collections_total")) == 3  # generations 0, 1, 2
    # and real Prometheus ingested them from the daemon: the policy's "cpu" check read them
    assert procs.prometheus_query(stack.prometheus, f'process_cpu_seconds_total{{job="{TARGET}"}}')


def test_no_created_series_in_the_scrape_nor_in_prometheus(stack: Stack) -> None:
    names = {s.name for f in text_string_to_metric_families(stack.exposition) for s in f.samples}
    assert "canaryd_check_results_total" in names and "canaryd_decisions_total" in names
    assert not [n for n in names if n.endswith("_created")], sorted(names)
    assert not [line for line in stack.exposition.splitlines() if "_created" in line]
    ingested = procs.prometheus_query(
        stack.prometheus, f'{{__name__=~".+_created",job="{TARGET}"}}'
    )
    assert ingested == []


# --------------------------------------------------------------------------- docs/metrics.md

_ROW = re.compile(
    r"^\| `(?P<name>[a-z_:]+)` \| (?P<type>\w+) \|(?P<labels>[^|]*)\|(?P<meaning>[^|]+)\|$"
)


def documented() -> dict[str, tuple[str, frozenset[str]]]:
    """The table of docs/metrics.md: name -> (type, labels). Names as queried (with
    ``_total`` for counters); exactly one table, and every row must parse."""
    text = (ROOT / "docs" / "metrics.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    table: dict[str, tuple[str, frozenset[str]]] = {}
    for line in rows:
        match = _ROW.match(line)
        assert match, f"docs/metrics.md: a table row does not read name|type|labels|meaning: {line}"
        labels = frozenset(re.findall(r"`([a-z_]+)`", match["labels"]))
        assert match["name"] not in table, f"docs/metrics.md lists {match['name']} twice"
        assert match["meaning"].strip(), f"docs/metrics.md: {match['name']} has no meaning"
        table[match["name"]] = (match["type"], labels)
    return table


def exported(exposition: str) -> dict[str, tuple[str, frozenset[str] | None]]:
    """The scrape's families: name as queried -> (type, labels; None if it has no sample yet)."""
    families: dict[str, tuple[str, frozenset[str] | None]] = {}
    for family in text_string_to_metric_families(exposition):
        name = family.name + ("_total" if family.type == "counter" else "")
        labels = {k for s in family.samples for k in s.labels if k != "le"}
        families[name] = (family.type, frozenset(labels) if family.samples else None)
    return families


def test_the_metrics_table_and_the_registry_agree_both_ways(stack: Stack) -> None:
    table, scrape = documented(), exported(stack.exposition)
    assert sorted(set(scrape) - set(table)) == [], "exported but not in docs/metrics.md"
    assert sorted(set(table) - set(scrape)) == [], "in docs/metrics.md but not exported"
    for name, (kind, labels) in scrape.items():
        assert table[name][0] == kind, f"{name}: docs say {table[name][0]}, exported as {kind}"
        if labels is not None:
            assert table[name][1] == labels, (
                f"{name}: docs say {set(table[name][1])}, has {set(labels)}"
            )


def test_every_documented_label_set_is_the_registrys(tmp_path: Path) -> None:
    """The scrape above leaves some labelled families without a sample (no rollback, no
    alert): here a real ``Telemetry`` is given one event of each kind, so every family has a
    sample and every documented label set is checked."""
    policy = load_policy_text(tmp_path)
    state, first = stages.start("r1", TARGET, "app:v2", policy, 0.0)
    telemetry = Telemetry()
    telemetry.decided(state, (first,), (Measurement("scraped", 1.0),), 0.0)
    rollback = Action(ActionKind.ROLLBACK, "manual", cause=Cause.MANUAL)
    rolled = Action(ActionKind.ROLLED_BACK, "done", evidence={"time_to_rollback": 0.2})
    telemetry.decided(state, (rollback, rolled), (), 1.0)
    telemetry.observed(state, Observed(weight=10))
    # a stage that counted requests on both sides: the measured share (core.split)
    counted = SplitState(weight=10, counted={"canary": 9.0, "stable": 91.0})
    measuring = replace(state, phase=Phase.PROGRESSING, split=counted)
    telemetry.decided(measuring, (), (), 2.0)
    assert (
        f'canaryd_observed_weight{{target="{TARGET}"}} 9.0'
        in generate_latest(telemetry.registry).decode()
    )
    telemetry.applied(state, Effect(EffectKind.SET_WEIGHT, weight=10), 0.01, "noop")
    telemetry.webhook_request(400)
    telemetry.alerts_arrived(1, 1)
    telemetry.query(0.01, ok=False)
    telemetry.leading("host_1", True)

    scrape = exported(generate_latest(telemetry.registry).decode())
    table = documented()
    assert set(scrape) == set(table)
    unsampled = sorted(name for name, (_, labels) in scrape.items() if labels is None)
    assert unsampled == [], "give these a sample above"
    for name, (_, labels) in scrape.items():
        assert table[name][1] == labels, f"{name}: docs say {set(table[name][1])}, has {labels}"


def load_policy_text(directory: Path) -> Policy:
    path = directory / "self-scrape.yaml"
    path.write_text(policy_text())
    return load_policy(path)
