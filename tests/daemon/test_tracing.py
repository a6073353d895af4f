"""OpenTelemetry traces (``tracing: {otlp_endpoint}``) from a real ``canaryd serve``, received
by a real OTLP/HTTP receiver (``support.otlpkit``: aiohttp, decoded with ``opentelemetry-proto``).

Two targets against a real Prometheus with no scrape targets: their checks are constant PromQL
(``label_replace(vector(0.99), "job", ...)``) so one passes every evaluation and is promoted,
the other fails its first and is rolled back. The tests assert the span tree of both (parent and
child, names, the runbook's attributes, each check's query, value and verdict), that a start
request with a ``traceparent`` puts the rollout into the caller's trace, that the decisions in
the history carry the trace id, and that a daemon killed mid-rollout goes on with the same
trace. Without ``tracing:`` the daemon never imports OpenTelemetry.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from support import procs
from support.otlpkit import Receiver, Span, children, tree
from support.servekit import TOKENS, Serve, TargetSpec, call, wait_until, write_config

GOOD, BAD = "checkout", "payments"
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
RUNBOOK = {"deployment.strategy": "canary", "deployment.environment": "staging"}


def policy(name: str, job: str, value: float, stage: str = "2s") -> str:
    return f"""\
name: {name}
interval: 1s
error_backoff: 1s
window: 10s
scale_down_delay: 1s
limits: {{failure_limit: 0, progress_deadline: 30s}}
checks:
  success-rate:
    query: 'label_replace(vector({value}), "job", "{job}", "", "")'
    op: ">="
    threshold: 0.9
stages:
  - {{weight: 20, duration: {stage}, checks: [success-rate]}}
  - {{weight: 60, duration: {stage}, checks: [success-rate]}}
"""


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[procs.Proc]:
    proc = procs.start_prometheus(tmp_path_factory.mktemp("prom"), {})
    try:
        yield proc
    finally:
        proc.stop()


def traced_config(directory: Path, prometheus: procs.Proc, receiver: Receiver) -> Path:
    (directory / "good.yaml").write_text(policy("good", GOOD, 0.99))
    (directory / "bad.yaml").write_text(policy("bad", BAD, 0.5))
    (directory / "long.yaml").write_text(policy("long", GOOD, 0.99, stage="1h"))
    targets = [TargetSpec(GOOD, "good.yaml"), TargetSpec(BAD, "bad.yaml")]
    config = write_config(directory, targets, prometheus_url=prometheus.url)
    tracing = f"tracing: {{otlp_endpoint: '{receiver.endpoint}', environment: staging}}\n"
    config.write_text(config.read_text() + "policies: [long.yaml]\n" + tracing)
    return config


def start(serve: Serve, target: str, image: str, traceparent: str | None = None, **more: object):
    headers = {"traceparent": traceparent} if traceparent else {}
    status, doc = call_with(
        serve, "POST", f"/api/v1/targets/{target}/rollouts", {"image": image, **more}, headers
    )
    assert status == 201, (status, doc, serve.tail())
    return doc.get("rollout", doc)


def call_with(serve: Serve, method: str, path: str, body: object, headers: dict[str, str]):
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        serve.url + path,
        json.dumps(body).encode(),
        {
            "Content-Type": "application/json",
            "Authorization": f"Bearer {TOKENS['admin']}",
            **headers,
        },
        method=method,
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def phase(serve: Serve, target: str) -> str:
    rollout = serve.rollout(target)
    return "" if rollout is None else str(rollout["phase"])


def root_of(spans: list[Span], rollout_id: str) -> Span | None:
    found = [
        s
        for s in spans
        if s.name == "rollout" and s.attributes.get("canaryd.rollout.id") == rollout_id
    ]
    return found[0] if found else None


def named(spans: list[Span], parent: Span) -> list[str]:
    return [s.name for s in children(spans, parent)]


def assert_runbook_attributes(span: Span, rollout_id: str, image: str) -> None:
    for key, value in {
        **RUNBOOK,
        "service.version": image,
        "canaryd.rollout.id": rollout_id,
    }.items():
        assert span.attributes.get(key) == value, (span.name, key, span.attributes)


def test_a_promoted_and_a_rolled_back_rollout_each_make_one_trace(
    tmp_path: Path, prometheus: procs.Proc
) -> None:
    with Receiver() as receiver:
        serve = Serve(traced_config(tmp_path, prometheus, receiver))
        try:
            serve.start()
            caller = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
            good = start(serve, GOOD, "registry.example/checkout:2.0", traceparent=caller)
            bad = start(serve, BAD, "registry.example/payments:7.1")
            wait_until(lambda: phase(serve, GOOD), lambda p: p == "Succeeded", 40, "promoted")
            wait_until(lambda: phase(serve, BAD), lambda p: p == "RolledBack", 40, "rolled back")
            receiver.wait_for(
                lambda spans: all(root_of(spans, r["id"]) for r in (good, bad)),
                20,
                "both rollouts' root spans",
            )
            history = call(
                serve.url, "GET", f"/api/v1/targets/{BAD}/history", token=TOKENS["viewer"]
            )[1]["decisions"]
            with urllib.request.urlopen(f"{serve.url}/targets/{BAD}", timeout=5) as answer:
                page = answer.read().decode()
        finally:
            serve.stop()
        spans = list(receiver.spans)

    # --- the promoted one: in the caller's trace, under the start request's span
    good_root = root_of(spans, good["id"])
    assert good_root is not None and good_root.trace_id == CALLER_TRACE
    (request,) = [s for s in spans if s.span_id == good_root.parent]
    assert request.name == "POST /api/v1/targets/{target}/rollouts"
    assert request.parent == CALLER_SPAN and request.trace_id == CALLER_TRACE
    assert request.attributes["http.response.status_code"] == 201
    assert good_root.status != 2
    assert good_root.attributes["canaryd.phase"] == "Succeeded"
    trace = [s for s in spans if s.trace_id == CALLER_TRACE]
    # (the ``none`` platform reports its canary present: no ensure-canary action to show)
    assert named(trace, good_root) == ["stage 1", "stage 2", "promotion"], "\n".join(
        tree(trace, good_root)
    )
    stage1, stage2, promotion = children(trace, good_root)
    for stage in (stage1, stage2):
        kids = named(trace, stage)
        assert kids[0] == "router set-weight" and "evaluation" in kids, kids
        assert stage.attributes["canaryd.ended_by"] == "stage-passed"
    evaluation = next(s for s in children(trace, stage1) if s.name == "evaluation")
    assert evaluation.attributes["canaryd.check.success-rate.value"] == 0.99
    assert evaluation.attributes["canaryd.check.success-rate.verdict"] == "successful"
    query = evaluation.attributes["canaryd.check.success-rate.query"]
    assert query == f'label_replace(vector(0.99), "job", "{GOOD}", "", "")'
    assert set(named(trace, promotion)) >= {"platform update-stable", "platform remove-canary"}
    for span in [good_root, stage1, stage2, promotion, evaluation, *children(trace, promotion)]:
        assert_runbook_attributes(span, good["id"], "registry.example/checkout:2.0")
        assert good_root.start <= span.start <= span.end <= good_root.end + 10**9, span.name
    assert good_root.resource["service.name"] == "canaryd"

    # --- the rolled-back one: its own trace, the failed evaluation, the rollback's actions
    bad_root = root_of(spans, bad["id"])
    assert bad_root is not None and bad_root.parent == ""
    trace = [s for s in spans if s.trace_id == bad_root.trace_id]
    print("\nthe rolled-back rollout's trace, as the receiver got it:")
    keys = ("canaryd.ended_by", "canaryd.weight", "canaryd.phase", "canaryd.rollback_reason")
    print("\n".join(tree(trace, bad_root, keys)))
    assert bad_root.status == 2 and "success-rate" in bad_root.status_message
    assert bad_root.attributes["canaryd.phase"] == "RolledBack"
    assert named(trace, bad_root) == ["stage 1", "rollback"]
    stage1, rollback = children(trace, bad_root)
    assert stage1.attributes["canaryd.ended_by"] == "check-failed"
    (failed,) = [s for s in children(trace, stage1) if s.name == "evaluation"]
    assert failed.status == 2
    assert failed.attributes["canaryd.check.success-rate.verdict"] == "failed"
    assert failed.attributes["canaryd.check.success-rate.value"] == 0.5
    assert rollback.attributes["canaryd.ended_by"] == "scaled-down"
    rollback_actions = children(trace, rollback)
    assert [s.name for s in rollback_actions] == ["router set-weight", "platform remove-canary"]
    assert rollback_actions[0].attributes["canaryd.weight"] == 0
    for span in [bad_root, stage1, failed, rollback, *rollback_actions]:
        assert_runbook_attributes(span, bad["id"], "registry.example/payments:7.1")
    # --- every decision in the history names the trace
    assert history and {d["trace_id"] for d in history} == {bad_root.trace_id}
    # --- and the target's dashboard page shows it, to look the rollout up in the trace store
    assert f'<code id="trace-id">{bad_root.trace_id}</code>' in page


def test_a_daemon_killed_mid_rollout_goes_on_with_the_same_trace(
    tmp_path: Path, prometheus: procs.Proc
) -> None:
    with Receiver() as receiver:
        serve = Serve(traced_config(tmp_path, prometheus, receiver))
        try:
            serve.start()
            rollout = start(serve, GOOD, "registry.example/checkout:3.0", policy="long")
            wait_until(lambda: serve.rollout(GOOD)["weight"], lambda w: w == 20, 20, "stage 1")
            receiver.wait_for(
                lambda spans: any(s.name == "evaluation" for s in spans), 20, "an evaluation"
            )
            serve.kill()
            serve.start()
            status, _ = call(
                serve.url,
                "POST",
                f"/api/v1/targets/{GOOD}/promote",
                {"full": True},
                token=TOKENS["admin"],
            )
            assert status == 200, serve.tail()
            wait_until(lambda: phase(serve, GOOD), lambda p: p == "Succeeded", 30, "promoted")
            receiver.wait_for(lambda spans: root_of(spans, rollout["id"]) is not None, 20, "root")
        finally:
            serve.stop()
    root = root_of(receiver.spans, rollout["id"])
    assert root is not None
    trace = receiver.trace(root.trace_id)
    assert rollout["trace_id"] == root.trace_id
    (stage1,) = [s for s in trace if s.name == "stage 1"]
    assert stage1.parent == root.span_id
    before = [s for s in children(trace, stage1) if s.name == "evaluation"]
    assert before and before[0].start < root.end
    assert stage1.attributes["canaryd.ended_by"] == "manual-promote"
    # the stage span began before the kill (from the record) and ended after the restart
    assert stage1.start <= before[0].start


def test_without_tracing_opentelemetry_is_never_imported(tmp_path: Path) -> None:
    (tmp_path / "good.yaml").write_text(policy("good", GOOD, 0.99))
    config = write_config(tmp_path, [TargetSpec(GOOD, "good.yaml")])
    probe = (
        "import sys, asyncio\n"
        "from canaryd.app import Daemon, load_config\n"
        f"d = Daemon(load_config({str(config)!r}))\n"
        "async def start():\n"
        "    await d.start()\n"
        "    assert d.controller.ready\n"
        "    asyncio.get_running_loop().call_later(0.2, d.supervisor.stop)\n"
        "asyncio.run(d.supervisor.run(start, d.before_stop, d.after_stop))\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
