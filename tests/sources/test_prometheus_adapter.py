"""The Prometheus adapter: its parser against upstream's documented responses, its failure
mapping against misbehaving servers, and its queries against a real Prometheus scraping real
demo services under load."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from canaryd.adapters.prometheus import (
    PrometheusClient,
    QueryResult,
    ResultKind,
    parse_query,
    parse_range,
)
from canaryd.core.errors import SourceUnavailable
from canaryd.core.model import Measurement
from canaryd.runtime.evaluator import Evaluator
from support import procs
from support.enginekit import started

REFERENCE = Path(__file__).resolve().parents[1] / "upstream" / "prometheus"
JOB = "lukhas-matriz-canary"
WINDOW = "15s"


def _reference(name: str) -> object:
    return json.loads((REFERENCE / name).read_text())


def _by(result: QueryResult, *names: str) -> dict[tuple[str, ...], float]:
    """Each returned series' value by the values of its ``names`` labels."""
    return {tuple(s.labels.get(n, "") for n in names): s.value for s in result.series}


_COUNT_QUERY = "canaryd_test_request_count"


@dataclass
class _Answering:
    """A source that answers the check's query with ``answer``: what Prometheus would have said.
    It refuses the joined check+count query (so the evaluator asks each on its own, as it does
    with a real Prometheus that cannot label a result) and knows no request count."""

    answer: QueryResult

    async def query(self, promql: str) -> QueryResult:
        if "canaryd_part" in promql:
            return parse_query({"status": "error", "errorType": "bad_data", "error": "no join"})
        if promql == _COUNT_QUERY:
            return parse_query(_vector())
        return self.answer


async def _measure(result: QueryResult, **labels: str) -> Measurement:
    """What the daemon's evaluator makes of ``result`` for one target with ``labels``: the
    ``Measurement`` of its one check (``sr``), which the engine then judges."""
    evaluator = Evaluator(_Answering(result), gather=0.0, requests_query=_COUNT_QUERY)
    running = asyncio.create_task(evaluator.run())
    try:
        found, _requests = await asyncio.wait_for(evaluator.measure(labels, started()), 10)
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
    (measurement,) = found
    return measurement


def _measured(result: QueryResult, **labels: str) -> Measurement:
    """``_measure`` for the synchronous checks."""
    return asyncio.run(_measure(result, **labels))


# --------------------------------------------------------------------------- parsing


def _check_vector(result: QueryResult) -> None:
    assert result.kind is ResultKind.AMBIGUOUS
    assert result.value is None
    assert result.timestamp == 1435781451.781
    assert _by(result, "job", "instance") == {
        ("prometheus", "localhost:9090"): 1.0,
        ("node", "localhost:9100"): 0.0,
    }
    assert _measured(result, job="prometheus") == Measurement("sr", value=1.0)
    assert _measured(result, job="node") == Measurement("sr", value=0.0)
    assert _measured(result, job="absent") == Measurement("sr")  # no series: no value


def _check_vector_openapi(result: QueryResult) -> None:
    assert result.kind is ResultKind.AMBIGUOUS
    assert len(result.series) == 2
    (alertmanager,) = [s for s in result.series if s.labels["job"] == "alertmanager"]
    assert (alertmanager.labels["env"], alertmanager.value) == ("demo", 1.0)
    assert _measured(result, job="alertmanager") == Measurement("sr", value=1.0)


def _check_empty(result: QueryResult) -> None:
    assert result.kind is ResultKind.NO_DATA
    assert result.series == ()
    assert result.value is None
    assert _measured(result) == Measurement("sr")


def _check_nan(result: QueryResult) -> None:
    assert result.kind is ResultKind.NAN
    assert result.value is not None and math.isnan(result.value)
    assert result.series[0].labels == {}
    assert _measured(result) == Measurement("sr")  # NaN: no value


def _check_scalar(result: QueryResult) -> None:
    assert result.kind is ResultKind.VALUE
    assert result.result_type == "scalar"
    assert result.value == 42.0
    assert result.timestamp == 1767436620
    assert _measured(result) == Measurement("sr", value=42.0)


def _check_tsdb_not_ready(result: QueryResult) -> None:
    assert result.kind is ResultKind.ERROR
    assert (result.error_type, result.error) == ("internal", "TSDB not ready")
    assert _measured(result) == Measurement("sr", error="TSDB not ready")


def _check_bad_data(result: QueryResult) -> None:
    assert result.kind is ResultKind.ERROR
    assert result.error_type == "bad_data"
    assert result.error == 'invalid parameter "timeout": cannot parse "abc" to a valid duration'


def _check_matrix_from_instant_query(result: QueryResult) -> None:
    assert result.kind is ResultKind.ERROR
    assert result.error_type == "unexpected_result"
    assert "matrix" in result.error


EXPECTED_INSTANT = {
    "query-vector.json": _check_vector,
    "query-vector.openapi-example.json": _check_vector_openapi,
    "query-vector-empty.derived.json": _check_empty,
    "query-vector-nan.derived.json": _check_nan,
    "query-scalar.json": _check_scalar,
    "query-error.json": _check_tsdb_not_ready,
    "query-error-bad-data.derived.json": _check_bad_data,
    "query-matrix.json": _check_matrix_from_instant_query,
    "query-matrix.openapi-example.json": _check_matrix_from_instant_query,
}


def test_every_reference_response_is_covered():
    assert {p.name for p in REFERENCE.glob("*.json")} == set(EXPECTED_INSTANT)


@pytest.mark.parametrize("name", sorted(EXPECTED_INSTANT))
def test_reference_responses_are_classified(name):
    EXPECTED_INSTANT[name](parse_query(_reference(name)))


def test_reference_matrix_parses_as_a_range_result_with_every_point():
    result = parse_range(_reference("query-matrix.json"))
    assert result.kind is ResultKind.AMBIGUOUS
    node = next(s for s in result.series if s.labels["job"] == "node")
    assert node.points == ((1435781430.781, 0.0), (1435781445.781, 0.0), (1435781460.781, 1.0))

    single = parse_range(_reference("query-matrix.openapi-example.json"))
    assert single.kind is ResultKind.VALUE
    assert single.series[0].points == ((1767436320.0, 1.0), (1767436620.0, 1.0))


@pytest.mark.parametrize(
    "name", ["query-error.json", "query-error-bad-data.derived.json", "query-scalar.json"]
)
def test_range_parser_reports_errors_and_non_matrix_results_as_errors(name):
    result = parse_range(_reference(name))
    assert result.kind is ResultKind.ERROR
    assert result.error


def _vector(*samples: tuple[dict[str, str], str]) -> dict[str, Any]:
    result = [{"metric": m, "value": [1767436620.5, v]} for m, v in samples]
    return {"status": "success", "data": {"resultType": "vector", "result": result}}


@pytest.mark.parametrize(("text", "expected"), [("+Inf", math.inf), ("-Inf", -math.inf)])
def test_infinities_are_values_not_missing_data(text, expected):
    result = parse_query(_vector(({}, text)))
    assert result.kind is ResultKind.VALUE
    assert result.value == expected


def test_a_batched_query_splits_into_one_classified_result_per_label_set():
    payload = _vector(
        ({"target": "a", "deployment": "canary"}, "0.8"),
        ({"target": "a", "deployment": "stable"}, "1"),
        ({"target": "b", "deployment": "canary"}, "NaN"),
    )
    payload["warnings"] = ["careful"]
    result = parse_query(payload)
    assert result.kind is ResultKind.AMBIGUOUS
    assert result.warnings == ("careful",)
    parts = _by(result, "target", "deployment")
    assert parts.keys() == {("a", "canary"), ("a", "stable"), ("b", "canary")}
    assert (parts[("a", "canary")], parts[("a", "stable")]) == (0.8, 1.0)
    assert math.isnan(parts[("b", "canary")])
    # the evaluator reads each target's canary series only; NaN and absence are "no value"
    assert _measured(result, target="a") == Measurement("sr", value=0.8)
    assert _measured(result, target="b") == Measurement("sr")
    assert _measured(result, target="c") == Measurement("sr")


@pytest.mark.parametrize(
    "payload",
    [
        None,
        [],
        {"status": "weird"},
        {"status": "success"},
        {"status": "success", "data": {"resultType": "vector", "result": {}}},
        {"status": "success", "data": {"resultType": "scalar", "result": [1, 2]}},
        {"status": "success", "data": {"resultType": "scalar", "result": [1, "x"]}},
        _vector(({}, "1")) | {"warnings": "w"},
        {"status": "success", "data": {"resultType": "vector", "result": [{"value": [1, "1"]}]}},
    ],
)
def test_malformed_responses_mean_the_source_is_unusable(payload):
    with pytest.raises(SourceUnavailable, match="malformed"):
        parse_query(payload)


def test_a_string_result_is_an_error_not_a_number():
    payload = {"status": "success", "data": {"resultType": "string", "result": [1, "a"]}}
    assert parse_query(payload).kind is ResultKind.ERROR


# --------------------------------------------------------------------------- failure mapping


class _Hook(list[tuple[float, str]]):
    def append_pair(self, seconds: float, outcome: str) -> None:
        self.append((seconds, outcome))


@pytest.fixture
def hook() -> _Hook:
    return _Hook()


async def _fake_prometheus(aiohttp_server: Any, handler: Any) -> Any:
    app = web.Application()
    app.router.add_post("/api/v1/query", handler)
    app.router.add_post("/api/v1/query_range", handler)
    return await aiohttp_server(app)


async def test_the_query_is_a_posted_form_with_time_and_a_server_side_timeout(aiohttp_server, hook):
    seen: dict[str, str] = {}

    async def handler(request: web.Request) -> web.Response:
        seen.update(await request.post())  # type: ignore[arg-type]
        return web.json_response(_vector(({}, "1")))

    server = await _fake_prometheus(aiohttp_server, handler)
    async with aiohttp.ClientSession() as session:
        client = PrometheusClient(session, str(server.make_url("/")), 2.5, hook.append_pair)
        result = await client.query("up", at=1700000000.25)
    assert result.value == 1.0
    assert seen == {"query": "up", "time": "1700000000.250", "timeout": "2.5"}
    assert [outcome for _, outcome in hook] == ["value"]


async def test_a_hanging_prometheus_times_out_as_source_unavailable(aiohttp_server, hook):
    async def handler(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.json_response({})

    server = await _fake_prometheus(aiohttp_server, handler)
    async with aiohttp.ClientSession() as session:
        client = PrometheusClient(session, str(server.make_url("/")), 0.2, hook.append_pair)
        with pytest.raises(SourceUnavailable, match=r"did not answer within 0\.2s") as caught:
            await client.query("up")
    assert isinstance(caught.value.__cause__, TimeoutError)
    assert [outcome for _, outcome in hook] == ["unavailable"]
    assert 0.15 < hook[0][0] < 2.0


@pytest.mark.parametrize(
    ("status", "body", "match"),
    [
        (502, "Bad Gateway", "without JSON"),
        (200, "<html>login</html>", "without JSON"),
        (200, "[" * 100_000, "without JSON"),  # nested past the recursion limit
        (503, '{"message": "upstream down"}', "HTTP 503"),
        (404, '{"status": "success", "data": {}}', "HTTP 404"),
        (200, '{"status": "success"}', "malformed"),
    ],
)
async def test_answers_that_are_not_prometheus_answers_raise_source_unavailable(
    aiohttp_server, status, body, match
):
    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=status, text=body)

    server = await _fake_prometheus(aiohttp_server, handler)
    async with aiohttp.ClientSession() as session:
        client = PrometheusClient(session, str(server.make_url("/")), 2)
        with pytest.raises(SourceUnavailable, match=match):
            await client.query("up")


async def test_a_prometheus_error_envelope_on_a_5xx_is_an_error_result(aiohttp_server):
    async def handler(request: web.Request) -> web.Response:
        body = {"status": "error", "errorType": "timeout", "error": "query timed out"}
        return web.json_response(body, status=503)

    server = await _fake_prometheus(aiohttp_server, handler)
    async with aiohttp.ClientSession() as session:
        result = await PrometheusClient(session, str(server.make_url("/")), 2).query("up")
    assert (result.kind, result.error_type, result.error) == (
        ResultKind.ERROR,
        "timeout",
        "query timed out",
    )


async def test_nobody_listening_is_source_unavailable():
    async with aiohttp.ClientSession() as session:
        client = PrometheusClient(session, f"http://127.0.0.1:{procs.free_port()}", 2)
        with pytest.raises(SourceUnavailable, match="cannot reach") as caught:
            await client.query("up")
    assert isinstance(caught.value.__cause__, aiohttp.ClientError)


# --------------------------------------------------------------------------- real Prometheus


@dataclass(frozen=True)
class Stack:
    prometheus: procs.Proc
    loads: dict[str, dict[str, Any]]
    at: float  # every query is evaluated at this instant, so tests agree on the data


def _run_load(url: str, seconds: float) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "canaryd.demo.load", "--url", url, "--rps", "50"]
    argv += ["--duration", str(seconds), "--json"]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Stable (good) and canary (20 % errors) of target "matriz", plus an idle target, scraped
    every second by a real Prometheus after 5 s of load on each."""
    tmp = tmp_path_factory.mktemp("stack")
    started: list[procs.Proc] = []
    try:
        services = {
            "stable": ("v1", 0.0, "matriz"),
            "canary": ("v2", 0.2, "matriz"),
            "idle": ("v1", 0.0, "idle"),
        }
        addresses = []
        by_name = {}
        for name, (version, error_rate, target) in services.items():
            deployment = "canary" if name == "canary" else "stable"
            proc = procs.start_demo_service(
                None, version, deployment, error_rate, latency=0.02, tmp=tmp
            )
            started.append(proc)
            by_name[name] = proc
            addresses.append((f"127.0.0.1:{proc.port}", {"target": target}))
        prometheus = procs.start_prometheus(tmp, {JOB: addresses})
        started.append(prometheus)
        procs.wait_for_up(prometheus, JOB, count=3)

        runs = {
            name: _run_load(by_name[name].url + "/api/v1/orchestrate", 5)
            for name in ("stable", "canary")
        }
        loads = {}
        for name, run in runs.items():
            out, _ = run.communicate(timeout=30)
            assert run.returncode == 0
            loads[name] = json.loads(out)
        time.sleep(2.5)  # let two more scrapes see the final counts
        yield Stack(prometheus, loads, at=time.time())
    finally:
        for proc in reversed(started):
            proc.stop()


SUCCESS_RATE_BY = (
    'sum by ({by}) (rate(http_requests_total{{job="{job}",status!~"5.."}}[{w}]))'
    ' / sum by ({by}) (rate(http_requests_total{{job="{job}"}}[{w}]))'
)


async def _query(stack: Stack, promql: str) -> QueryResult:
    async with aiohttp.ClientSession() as session:
        return await PrometheusClient(session, stack.prometheus.url, 5).query(promql, stack.at)


def _served_ok(load: dict[str, Any]) -> float:
    return float(load["statuses"].get("200", 0)) / float(load["sent"])


async def test_success_rate_per_deployment_matches_what_the_services_served(stack):
    result = await _query(stack, SUCCESS_RATE_BY.format(by="deployment", job=JOB, w=WINDOW))
    assert result.kind is ResultKind.AMBIGUOUS  # two series where a check expects one
    parts = _by(result, "deployment")
    assert parts.keys() == {("stable",), ("canary",)}
    assert parts[("stable",)] == 1.0
    canary = parts[("canary",)]
    assert 0.68 < canary < 0.92
    assert canary == pytest.approx(_served_ok(stack.loads["canary"]), abs=0.02)
    assert stack.loads["canary"]["sent"] >= 200


async def test_a_batched_query_gives_each_target_and_deployment_its_own_verdict(stack):
    result = await _query(stack, SUCCESS_RATE_BY.format(by="target, deployment", job=JOB, w=WINDOW))
    parts = _by(result, "target", "deployment")
    assert not math.isnan(parts[("matriz", "stable")])
    assert not math.isnan(parts[("matriz", "canary")])
    assert math.isnan(parts[("idle", "stable")])  # no traffic: 0/0
    assert ("idle", "canary") not in parts
    # what a worker of each target is given: its own canary's value; "no value" for idle's
    assert (await _measure(result, target="matriz")).value == parts[("matriz", "canary")]
    assert await _measure(result, target="idle") == Measurement("sr")


async def test_the_runbook_success_rate_for_the_canary_alone_is_a_single_value(stack):
    canary = f'job="{JOB}",deployment="canary"'
    promql = (
        f'sum(rate(http_requests_total{{{canary},status!~"5.."}}[{WINDOW}]))'
        f" / sum(rate(http_requests_total{{{canary}}}[{WINDOW}]))"
    )
    result = await _query(stack, promql)
    assert result.kind is ResultKind.VALUE
    assert result.series[0].labels == {}
    assert result.value == pytest.approx(_served_ok(stack.loads["canary"]), abs=0.02)


async def test_p95_latency_per_deployment_is_plausible(stack):
    promql = (
        "histogram_quantile(0.95, sum by (deployment, le) "
        f'(rate(lukhas_matriz_pipeline_duration_seconds_bucket{{job="{JOB}"}}[{WINDOW}])))'
    )
    parts = _by(await _query(stack, promql), "deployment")
    for deployment in ("stable", "canary"):
        p95 = parts[(deployment,)]
        assert 0.01 < p95 <= 0.025  # 20 ms ± 25 %: the 25 ms bucket


async def test_a_query_matching_nothing_is_no_data(stack):
    result = await _query(stack, 'sum(rate(http_requests_total{job="no-such-job"}[15s]))')
    assert result.kind is ResultKind.NO_DATA


async def test_zero_over_zero_is_nan_not_a_value(stack):
    idle = f'job="{JOB}",target="idle"'
    promql = (
        f'sum(rate(http_requests_total{{{idle},status!~"5.."}}[{WINDOW}]))'
        f" / sum(rate(http_requests_total{{{idle}}}[{WINDOW}]))"
    )
    result = await _query(stack, promql)
    assert result.kind is ResultKind.NAN
    assert (await _measure(result)).value is None


async def test_scalars_and_infinities_come_back_as_values(stack):
    scalar = await _query(stack, f'scalar(sum(up{{job="{JOB}"}}))')
    assert (scalar.kind, scalar.result_type, scalar.value) == (ResultKind.VALUE, "scalar", 3.0)
    infinite = await _query(stack, f'sum(up{{job="{JOB}"}}) / 0')
    assert (infinite.kind, infinite.value) == (ResultKind.VALUE, math.inf)


async def test_bad_promql_is_an_error_with_prometheus_message(stack):
    result = await _query(stack, "sum(rate(http_requests_total[15s])")
    assert result.kind is ResultKind.ERROR
    assert result.error_type == "bad_data"
    assert "parse error" in result.error
    assert await _measure(result) == Measurement("sr", error=result.error)


async def test_a_range_query_returns_every_step_per_series(stack):
    promql = SUCCESS_RATE_BY.format(by="deployment", job=JOB, w=WINDOW)
    async with aiohttp.ClientSession() as session:
        client = PrometheusClient(session, stack.prometheus.url, 5)
        result = await client.query_range(promql, stack.at - 4, stack.at, 1)
    assert result.kind is ResultKind.AMBIGUOUS
    by_deployment = {s.labels["deployment"]: s.points for s in result.series}
    assert by_deployment.keys() == {"stable", "canary"}
    steps = [t for t, _ in by_deployment["stable"]]
    assert steps == pytest.approx([stack.at - 4 + i for i in range(5)], abs=0.002)
    assert all(v == 1.0 for _, v in by_deployment["stable"])


async def test_a_stopped_prometheus_is_source_unavailable(prometheus, hook):
    proc = prometheus({})
    async with aiohttp.ClientSession() as session:
        client = PrometheusClient(session, proc.url, 2, hook.append_pair)
        assert (await client.query("vector(1)")).value == 1.0
        proc.stop()
        with pytest.raises(SourceUnavailable) as caught:
            await client.query("vector(1)")
    assert isinstance(caught.value.__cause__, aiohttp.ClientError)
    assert [outcome for _, outcome in hook] == ["value", "unavailable"]


# --------------------------------------------------------------------------- the alert path


async def test_a_firing_rule_reaches_a_webhook_through_a_real_alertmanager(
    tmp_path, prometheus, alertmanager
):
    """The helpers wire Prometheus -> Alertmanager -> webhook with a bearer token (SPEC §9)."""
    received: asyncio.Queue[tuple[str | None, dict[str, Any]]] = asyncio.Queue()

    async def webhook(request: web.Request) -> web.Response:
        await received.put((request.headers.get("Authorization"), await request.json()))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/api/v1/alerts", webhook)
    runner = web.AppRunner(app)
    await runner.setup()
    port = procs.free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        rules = tmp_path / "rules.yml"
        rules.write_text(
            "groups:\n- name: canary\n  rules:\n  - alert: CanaryBroken\n    expr: vector(1)\n"
            "    labels: {severity: critical, target: matriz}\n"
        )
        am = alertmanager(f"http://127.0.0.1:{port}/api/v1/alerts", "s3cret")
        prometheus({}, rule_files=[rules], alertmanager_url=am.url)
        authorization, payload = await asyncio.wait_for(received.get(), timeout=30)
    finally:
        await runner.cleanup()
    assert authorization == "Bearer s3cret"
    assert (payload["version"], payload["status"]) == ("4", "firing")
    (alert,) = payload["alerts"]
    assert alert["labels"] == {
        "alertname": "CanaryBroken",
        "severity": "critical",
        "target": "matriz",
    }
