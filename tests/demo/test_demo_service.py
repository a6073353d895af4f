"""The demo service exposes the runbook's metrics and obeys its fault knob; the load generator
is bounded and loopback-only. Real HTTP on loopback throughout."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from canaryd.demo import load
from canaryd.demo.service import DemoService, Fault, create_app
from support.procs import free_port


async def _client(aiohttp_client: Callable[..., Awaitable[Any]], *, error_rate: float = 0.0) -> Any:
    """A test client for a canary ``v2`` demo service with a tiny latency."""
    service = DemoService("v2", "canary", Fault(error_rate, 0.001), rng=random.Random(7))
    return await aiohttp_client(create_app(service))


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def _key(name: str, **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return name, tuple(sorted({"deployment": "canary", "version": "v2", **labels}.items()))


async def test_metrics_expose_the_runbook_series_with_deployment_and_version(aiohttp_client):
    client = await _client(aiohttp_client)
    for _ in range(5):
        assert (await client.get("/")).status == 200
    assert (await client.get("/api/v1/orchestrate")).status == 200

    response = await client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    samples = _samples(await response.text())

    assert samples[_key("http_requests_total", status="200")] == 6
    # exists from the start, so "no errors" is 0, not no data
    assert samples[_key("http_requests_total", status="500")] == 0
    assert samples[_key("lukhas_matriz_pipeline_duration_seconds_bucket", le="0.25")] == 6
    assert samples[_key("lukhas_matriz_pipeline_duration_seconds_count")] == 6
    assert samples[_key("guardian_decision_duration_seconds_bucket", le="0.1")] == 6
    assert samples[_key("guardian_decision_duration_seconds_count")] == 6


async def test_every_response_names_the_version_that_served_it(aiohttp_client):
    client = await _client(aiohttp_client)
    for path in ("/", "/health", "/metrics", "/admin/fault"):
        response = await client.get(path)
        assert response.headers["X-Version"] == "v2"
        assert response.headers["X-Deployment"] == "canary"


async def test_fault_injection_changes_error_rate_and_latency_at_runtime(aiohttp_client):
    client = await _client(aiohttp_client)
    assert (await client.get("/")).status == 200

    response = await client.post("/admin/fault", json={"error_rate": 1.0, "latency": 0.3})
    assert response.status == 200
    assert await response.json() == {"error_rate": 1.0, "latency": 0.3}
    loop = asyncio.get_running_loop()
    started = loop.time()
    answer = await client.get("/")
    assert answer.status == 500
    assert loop.time() - started >= 0.3 * 0.75  # latency with at most -25 % jitter

    samples = _samples(await (await client.get("/metrics")).text())
    # two requests, only the fast one within 250 ms
    assert samples[_key("lukhas_matriz_pipeline_duration_seconds_bucket", le="0.25")] == 1
    assert samples[_key("lukhas_matriz_pipeline_duration_seconds_count")] == 2

    assert await (await client.get("/admin/fault")).json() == {"error_rate": 1.0, "latency": 0.3}


async def test_an_error_rate_between_zero_and_one_fails_about_that_share(aiohttp_client):
    client = await _client(aiohttp_client, error_rate=0.2)
    statuses = [(await client.get("/")).status for _ in range(300)]
    assert 0.12 < statuses.count(500) / len(statuses) < 0.28


@pytest.mark.parametrize(
    "body",
    [{"error_rate": 1.5}, {"latency": -1}, {"error_rate": "high"}, {"colour": 1}, [1, 2]],
)
async def test_invalid_fault_settings_are_refused_and_change_nothing(aiohttp_client, body):
    client = await _client(aiohttp_client)
    response = await client.post("/admin/fault", json=body)
    assert response.status == 400
    assert "error" in await response.json()
    assert await (await client.get("/admin/fault")).json() == {"error_rate": 0.0, "latency": 0.001}


async def test_the_service_runs_as_a_process_with_its_flags(demo_service):
    proc = demo_service(version="v9", deployment="canary", error_rate=1.0, latency=0.0)
    async with aiohttp.ClientSession() as session:
        async with session.get(proc.url + "/") as response:
            assert response.status == 500
            assert response.headers["X-Version"] == "v9"
        async with session.post(proc.url + "/admin/fault", json={"error_rate": 0.0}) as response:
            assert response.status == 200
        async with session.get(proc.url + "/") as response:
            assert response.status == 200
        async with session.get(proc.url + "/metrics") as response:
            text = await response.text()
    assert 'http_requests_total{deployment="canary",status="500",version="v9"} 1.0' in text
    proc.stop()
    assert not proc.running


# --------------------------------------------------------------------------- load generator


async def test_load_is_bounded_by_duration_and_counts_statuses_and_versions(aiohttp_client):
    client = await _client(aiohttp_client, error_rate=0.5)
    url = str(client.make_url("/"))
    summary = await load.generate(url, rps=200, duration=0.5)
    assert 80 <= summary.sent <= 101
    assert summary.elapsed < 2.0
    assert sum(summary.statuses.values()) == summary.sent
    assert set(summary.statuses) == {200, 500}
    assert summary.versions == {"v2": summary.sent}
    assert summary.failures == {}


async def test_load_stops_after_max_requests(aiohttp_client):
    client = await _client(aiohttp_client)
    summary = await load.generate(str(client.make_url("/")), rps=500, duration=30, max_requests=7)
    assert summary.sent == 7
    assert summary.statuses == {200: 7}


async def test_load_sends_the_given_headers(aiohttp_client):
    seen: list[str | None] = []

    async def handler(request: aiohttp.web.Request) -> aiohttp.web.Response:
        seen.append(request.headers.get("X-Canary-Deploy"))
        return aiohttp.web.Response(text="ok")

    app = aiohttp.web.Application()
    app.router.add_get("/", handler)
    client = await aiohttp_client(app)
    url = str(client.make_url("/"))
    summary = await load.generate(
        url, 100, 1, headers={"X-Canary-Deploy": "canary"}, max_requests=3
    )
    assert summary.versions == {"-": 3}
    assert seen == ["canary"] * 3


async def test_load_counts_connection_failures_instead_of_crashing():
    url = f"http://127.0.0.1:{free_port()}/"
    summary = await load.generate(url, rps=100, duration=1, max_requests=3)
    assert summary.sent == 3
    assert summary.statuses == {}
    assert sum(summary.failures.values()) == 3


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com/",
        "http://10.0.0.1:8080/",
        "http://192.168.1.1/",
        "http://[2001:db8::1]/",
        "http://localhost.example.com/",
        "ftp://127.0.0.1/",
        "not a url",
    ],
)
async def test_load_refuses_anything_but_loopback(url):
    with pytest.raises(load.NotLoopback):
        await load.generate(url, rps=1, duration=1)


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:1/", "http://127.9.8.7/", "http://localhost:80/x", "http://[::1]/"]
)
def test_loopback_urls_are_accepted(url):
    assert load.require_loopback(url).host


@pytest.mark.parametrize(
    ("rps", "duration", "max_requests"),
    [(0, 1, None), (10_000, 1, None), (1, 0, None), (1, 3600, None), (1, 1, 0), (1, 1, 10**7)],
)
async def test_load_refuses_unbounded_settings(rps, duration, max_requests):
    with pytest.raises(ValueError):
        await load.generate("http://127.0.0.1:1/", rps, duration, max_requests=max_requests)


def test_load_command_refuses_a_remote_url_with_a_clear_error():
    result = subprocess.run(
        [sys.executable, "-m", "canaryd.demo.load", "--url", "http://example.com/", "--rps", "1"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "only loopback addresses" in result.stderr
    assert result.stdout == ""


def test_load_command_prints_a_summary(demo_service):
    proc = demo_service(version="v3", deployment="stable", latency=0.0)
    argv = [sys.executable, "-m", "canaryd.demo.load", "--url", proc.url + "/"]
    argv += ["--rps", "50", "--duration", "0.2", "--header", "X-Canary-Deploy:canary"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True)
    assert "sent: 10" in result.stdout
    assert "statuses: 200=10" in result.stdout
    assert "versions: v3=10" in result.stdout
