"""The runbook's Docker Compose + Traefik path end to end: ``config/compose/`` on a real Docker
engine with a real Traefik, judged by a real Prometheus, alerted by a real Alertmanager, driven
by a real ``canaryd serve``.

What runs (``support.composekit`` says how and why): Traefik v3 and the ``matriz`` service's two
replicas as containers created from the shipped ``compose.yaml`` (Traefik with the shipped
``traefik.yml`` and ``dynamic/`` directory; the replicas with the file's ``traefik.*`` labels,
so Traefik's Docker provider builds ``matriz-stable@docker`` from them); Prometheus with the
shipped ``prometheus.yml`` (its relabelling of Traefik's per-service metrics), Alertmanager, and
canaryd with the shipped ``canaryd.yaml`` on the host. Only addresses, paths and durations
change: the shipped policy's checks with stages of seconds. Requests go through Traefik's
published entry point with ``Host: matriz.localhost``, from a load thread that records which
version answered each one.

The tests share one stack and run in file order: a good version promoted, a bad one rolled
back, a canary killed mid-stage rolled back.
"""

from __future__ import annotations

import asyncio
import collections
import http.client
import json
import shutil
import threading
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiodocker
import pytest
import yaml

from support import composekit as ck
from support import procs
from support.dockerkit import URL, docker_cli
from support.servekit import TOKENS, WEBHOOK_TOKEN, Serve, stored_decisions, wait_until

TARGET = "lukhas-matriz-orchestrator"
HOST = "matriz.localhost"
STABLE, GOOD, BAD, NEXT = "v2.0.0", "v2.1.0", "v2.2.0", "v2.3.0"
CANARY = "lukhas-matriz-canary"  # canary_name "lukhas-{service}-canary" of service matriz
RPS = 40.0

T = TypeVar("T")


# --------------------------------------------------------------------------- traffic


@dataclass
class Load:
    """Requests through Traefik, one every 1/RPS s, each answer recorded as (t, version)."""

    port: int
    answers: list[tuple[float, str]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.is_set():
            self.answers.append((time.monotonic(), get(self.port)))
            self.stop.wait(1 / RPS)

    def since(self, t: float) -> collections.Counter[str]:
        return collections.Counter(v for at, v in list(self.answers) if at >= t)


def get(port: int, headers: dict[str, str] | None = None) -> str:
    """One request to ``matriz.localhost`` through Traefik: the version that answered, or
    the status when it was not a 200."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/", headers={"Host": HOST, **(headers or {})})
        response = conn.getresponse()
        body = response.read().decode().strip()
        return body if response.status == 200 else str(response.status)
    except OSError as exc:
        return type(exc).__name__
    finally:
        conn.close()


def split(port: int, n: int, headers: dict[str, str] | None = None) -> collections.Counter[str]:
    return collections.Counter(get(port, headers) for _ in range(n))


# --------------------------------------------------------------------------- the stack


@dataclass
class Stack:
    serve: Serve
    web: int  # Traefik's `web` entry point on 127.0.0.1
    api: str  # Traefik's API
    load: Load
    project: str
    prometheus: procs.Proc

    def wait_clean_window(self) -> None:
        """No canary 5xx left in the policy's 5 s window: the series of ``matriz-canary@file``
        is the same from one canary to the next, so a rolled-back canary's errors would count
        against the next one (as they would for one window, 2 m, with the shipped policy)."""
        errors = (
            'sum(rate(http_requests_total{job="lukhas-matriz-canary",deployment="canary",'
            'status=~"5.."}[5s])) > 0'
        )
        wait_until(
            lambda: procs.prometheus_query(self.prometheus, errors),
            lambda found: not found,
            20.0,
            "no canary 5xx in the window",
        )
        # ... and no alert of a previous canary still firing for canaryd (a canary rolled back
        # by a check before the alert fired sees it fire, and resolve, after its rollback)
        wait_until(
            lambda: self.serve.call("GET", f"/api/v1/targets/{TARGET}")[1].get("alerts"),
            lambda firing: not firing,
            30.0,
            "no alert firing for the target",
        )

    def traefik(self, path: str) -> Any:
        try:
            with urllib.request.urlopen(f"{self.api}{path}", timeout=2) as response:
                return json.loads(response.read())
        except OSError:
            return None

    def served(self) -> dict[str, int] | None:
        """canaryd's weighted service as Traefik runs it (not as the file says): the file
        provider applies a change once its throttle (2 s by default) has passed."""
        found = self.traefik("/api/http/services/matriz@file") or {}
        members = found.get("weighted", {}).get("services")
        return None if members is None else {m["name"]: m["weight"] for m in members}

    def wait_served(self, weight: int) -> None:
        sides = {"matriz-stable@docker": 100 - weight, "matriz-canary": weight}
        wanted = {name: w for name, w in sides.items() if w > 0}
        try:
            wait_until(self.served, lambda s: s == wanted, 10.0, f"Traefik serving {wanted}")
        except AssertionError as exc:
            logs = docker_cli("logs", "--tail", "30", f"{self.project}-traefik-1")
            raise AssertionError(
                f"{exc}\n{self.rollout()}\n--- traefik log ---\n{logs.stderr.decode()}"
                f"{logs.stdout.decode()}"
            ) from None

    def stable_servers(self) -> list[str]:
        found = self.traefik("/api/http/services/matriz-stable@docker") or {}
        return sorted(s["url"] for s in found.get("loadBalancer", {}).get("servers", []))

    def stables(self) -> list[dict[str, Any]]:
        return containers(
            **{"com.docker.compose.project": self.project, "com.docker.compose.service": "matriz"}
        )

    def canaries(self) -> list[dict[str, Any]]:
        return containers(**{"canaryd.target": TARGET, "canaryd.role": "canary"})

    def rollout(self) -> dict[str, Any]:
        return self.serve.rollout(TARGET) or {}

    def wait_phase(self, *phases: str, timeout: float = 60.0) -> dict[str, Any]:
        return wait_until(
            self.rollout,
            lambda r: r.get("phase") in phases,
            timeout,
            f"{TARGET} in {phases}\n{self.serve.tail()}",
        )

    def wait_weight(self, weight: int, timeout: float = 30.0) -> dict[str, Any]:
        """The rollout at ``weight`` with its stage timer running (the router applied it)."""
        return wait_until(
            self.rollout,
            lambda r: (
                r.get("weight") == weight
                and r.get("phase") == "Progressing"
                and r.get("stage_started_at") is not None
            ),
            timeout,
            f"{TARGET} at {weight}%",
        )


def containers(**labels: str) -> list[dict[str, Any]]:
    """Every container with all of ``labels``, inspected, by name (the docker CLI: the tests
    are synchronous, as the stack they share is module-wide)."""
    filters = [arg for k, v in labels.items() for arg in ("--filter", f"label={k}={v}")]
    listed = docker_cli("ps", "-aq", *filters)
    assert listed.returncode == 0, listed.stderr.decode()
    ids = listed.stdout.decode().split()
    if not ids:
        return []
    shown = docker_cli("inspect", *ids)
    infos: list[dict[str, Any]] = json.loads(shown.stdout) if shown.returncode == 0 else []
    return sorted(infos, key=lambda i: str(i["Name"]))


def with_engine(use: Callable[[aiodocker.Docker], Awaitable[T]]) -> T:
    """``use`` a client of the private engine in a loop of its own."""

    async def run() -> T:
        docker = aiodocker.Docker(url=URL)
        try:
            return await use(docker)
        finally:
            await docker.close()

    return asyncio.run(run())


def fast_policy(directory: Path) -> Path:
    """The shipped ``matriz-compose`` policy's checks with stages of seconds."""
    policy = yaml.safe_load((ck.REPO / "rules" / "matriz-compose.yaml").read_text())
    policy.update(name="matriz-compose-e2e", interval="1s", window="5s", scale_down_delay="3s")
    policy["limits"]["progress_deadline"] = "40s"
    # canaryd starts a stage's timer once its file says the weight; Traefik applies the file
    # after its provider throttle (2 s) and rate() needs two scrapes of the canary's series:
    # the first few 1 s evaluations of a stage may have no data (the shipped 30 s interval
    # never sees this). 8 in a row before a pause, not 3.
    policy["limits"]["inconclusive_limit"] = 8
    # The split is verified on the requests each side served since a stage's first evaluation;
    # Traefik serves the old weight for up to its 2 s throttle after that, a large part of a
    # stage of seconds (2 s of a 3 s stage at 50 % instead of 100 % shows 97.7 %, outside ±3
    # points, for longer than the progress deadline). Minutes-long stages hardly notice it.
    del policy["split"]
    compare = ["errors-vs-stable", "latency-vs-stable"]
    policy["stages"] = [
        {"weight": 20, "duration": "6s", "checks": ["success-rate", *compare], "min_requests": 5},
        {
            "weight": 50,
            "duration": "6s",
            "checks": ["success-rate", "error-rate", *compare],
            "min_requests": 5,
        },
        {"weight": 100, "duration": "3s", "checks": ["success-rate", *compare], "min_requests": 5},
    ]
    path = directory / "matriz-compose-e2e.yaml"
    path.write_text(yaml.safe_dump(policy, sort_keys=False))
    return path


def canaryd_config(directory: Path, port: int, prometheus: str, dynamic: Path) -> Path:
    """The shipped ``canaryd.yaml`` aimed at this run's engine, directory and Prometheus."""
    config = yaml.safe_load((ck.STACK / "canaryd.yaml").read_text())
    (directory / "tokens.yaml").write_text(
        "".join(f"- {{name: {r}-user, role: {r}, token: {t}}}\n" for r, t in TOKENS.items())
    )
    (directory / "webhook-token").write_text(WEBHOOK_TOKEN + "\n")
    for secret in ("tokens.yaml", "webhook-token"):
        (directory / secret).chmod(0o600)
    config.update(
        listen=f"127.0.0.1:{port}",
        state={"backend": "sqlite", "path": str(directory / "state.db")},
        prometheus={"url": prometheus, "timeout": "2s"},
    )
    [target] = config["targets"]
    target["policy"] = str(fast_policy(directory))
    target["platform"]["host"] = URL
    target["router"]["path"] = str(dynamic / "matriz.yml")
    path = directory / "canaryd.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def prometheus_config(rules: Path, traefik_metrics: str, alertmanager: str) -> dict[str, Any]:
    """The shipped ``prometheus.yml`` (its relabelling untouched) at loopback addresses, 1 s."""
    config: dict[str, Any] = yaml.safe_load((ck.STACK / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(rules)]
    config["alerting"]["alertmanagers"][0]["static_configs"] = [{"targets": [alertmanager]}]
    [scrape] = config["scrape_configs"]
    scrape["static_configs"] = [{"targets": [traefik_metrics]}]
    return config


def alert_rules(directory: Path) -> Path:
    """The shipped alert, over 5 s and at once (its 1m / 30s would outlast the test)."""
    doc = yaml.safe_load((ck.STACK / "prometheus-rules.yml").read_text())
    [rule] = doc["groups"][0]["rules"]
    rule["expr"] = rule["expr"].replace("[1m]", "[5s]")
    rule["for"] = "0s"
    doc["groups"][0]["interval"] = "1s"
    path = directory / "prometheus-rules.yml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("compose")
    doc = ck.compose()
    project, services = doc["name"], doc["services"]
    repo = ck.repository(services["matriz"]["image"])
    ck.build_service_images(tmp, repo, good=(STABLE, GOOD, NEXT), bad=(BAD,))
    traefik_image = ck.build_traefik_image(tmp)
    # The stack directory as an operator lays it out: the shipped files, a writable dynamic/
    stack_dir = tmp / "stack"
    shutil.copytree(ck.STACK, stack_dir)
    dynamic = stack_dir / "dynamic"
    network = f"{project}_web"
    static = yaml.safe_load((ck.STACK / "traefik.yml").read_text())
    assert static["providers"]["docker"]["network"] == network  # compose.yaml's name + web

    run = uuid.uuid4().hex[:10]
    traefik_service = {**services["traefik"], "image": traefik_image}

    async def up(docker: aiodocker.Docker) -> dict[str, int]:
        await ck.clean(docker, network)  # what an interrupted run left: the names are fixed
        await docker.networks.create({"Name": network, "Labels": {ck.LABEL: run}})
        [ports] = await ck.run_service(docker, project, "traefik", traefik_service, run, stack_dir)
        await ck.run_service(docker, project, "matriz", services["matriz"], run, stack_dir)
        return ports

    started: list[procs.Proc] = []
    serve: Serve | None = None
    load: Load | None = None
    try:
        ports = with_engine(up)
        web, api = ports["80"], f"http://127.0.0.1:{ports['8080']}"
        procs.wait_http_ok(f"{api}/ping", 20.0)

        port = procs.free_port()
        alertmanager = procs.start_alertmanager(
            tmp, f"http://127.0.0.1:{port}/api/v1/alerts", WEBHOOK_TOKEN
        )
        started.append(alertmanager)
        prom_config = prometheus_config(
            alert_rules(tmp), f"127.0.0.1:{ports['8080']}", f"127.0.0.1:{alertmanager.port}"
        )
        prometheus = ck.start_prometheus_from(tmp, prom_config)
        started.append(prometheus)
        config_dir = tmp / "canaryd"
        config_dir.mkdir()
        serve = Serve(canaryd_config(config_dir, port, prometheus.url, dynamic))
        serve.start()

        wait_until(lambda: get(web), lambda v: v == STABLE, 30.0, "Traefik serving matriz")
        load = Load(web)
        thread = threading.Thread(target=load.run, daemon=True)
        thread.start()
        procs.wait_for_up(prometheus, "lukhas-matriz-canary", 1)
        yield Stack(serve, web, api, load, project, prometheus)
    finally:
        if load is not None:
            load.stop.set()
        if serve is not None:
            serve.stop()
        for proc in started:
            proc.stop()
        with_engine(lambda docker: ck.clean(docker, network, run))


# --------------------------------------------------------------------------- the tests


def image_id(reference: str) -> str:
    """The ID of the image ``reference`` names on the private engine now."""
    done = docker_cli("image", "inspect", "--format", "{{.Id}}", reference)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode().strip()


def test_a_good_version_is_promoted_and_the_header_reaches_the_canary_at_every_weight(
    stack: Stack,
) -> None:
    before = [i["Id"] for i in stack.stables()]
    judged = image_id(f"{ck.repository(stack.stables()[0]['Config']['Image'])}:{GOOD}")
    stable_servers = stack.stable_servers()
    assert len(stable_servers) == 2, stack.traefik("/api/http/services")
    t0 = time.monotonic()
    started = stack.serve.start_rollout(TARGET, GOOD)  # the runbook's --image=v2.1.0: a bare tag
    assert started["image"] == GOOD

    shares: dict[int, collections.Counter[str]] = {}
    for weight in (20, 50, 100):
        at = stack.wait_weight(weight)
        # The canary: its own name, the stable's repository at the tag (pinned at start to the
        # image ID it named then, SPEC §8), no routing label ...
        [canary] = stack.canaries()
        assert canary["Name"] == f"/{CANARY}"
        assert canary["Config"]["Image"] == judged
        assert not [k for k in canary["Config"]["Labels"] if k.startswith("traefik.")]
        # ... so Traefik's Docker provider did not make it a server of the stable's service.
        assert stack.stable_servers() == stable_servers
        # Pinned by the header through Traefik, whatever the weight:
        stack.wait_served(weight)
        pinned = split(stack.web, 20, {"X-Canary-Deploy": "canary"})
        assert pinned == {GOOD: 20}, (weight, pinned)
        shares[weight] = split(stack.web, 100)
        assert set(shares[weight]) == ({GOOD} if weight == 100 else {STABLE, GOOD}), shares
        assert at["weight"] == weight

    final = stack.wait_phase("Succeeded", "RolledBack", "Failed")
    took = time.monotonic() - t0
    assert final["phase"] == "Succeeded", (final, stored_decisions(stack.serve.state, final["id"]))
    # The stable containers now run it (new containers, same names) and take all the traffic.
    after = stack.stables()
    assert len(after) == 2 and not {i["Id"] for i in after} & set(before)
    assert {i["Config"]["Image"] for i in after} == {judged}  # the bytes that were judged
    assert stack.canaries() == []
    wait_until(stack.stable_servers, lambda s: len(s) == 2, 10.0, "Traefik's stable servers")
    stack.wait_served(0)
    assert split(stack.web, 200) == {GOOD: 200}
    print(f"\npromoted in {took:.1f}s; share of {GOOD} by weight (100 requests each):")
    for weight, seen in shares.items():
        print(f"  canary {weight:3d}%: {seen[GOOD]:3d} on {GOOD}, {seen[STABLE]:3d} on {STABLE}")


def test_a_bad_version_is_rolled_back_and_its_canary_container_removed(stack: Stack) -> None:
    stack.wait_clean_window()
    started = stack.serve.start_rollout(TARGET, BAD)
    stack.wait_weight(20)
    t0 = time.monotonic()
    assert split(stack.web, 10, {"X-Canary-Deploy": "canary"}) == {"500": 10}
    final = stack.wait_phase("RolledBack", "Failed", "Succeeded")
    took = time.monotonic() - t0
    assert final["phase"] == "RolledBack", final
    assert final["weight"] == 0
    reason = final["rollback_reason"]
    # whichever sees the 500s first: the absolute SLO, canary against stable, or the alert
    assert any(w in reason for w in ("success-rate", "errors-vs-stable", "CanaryErrorsCritical"))
    # The canary container goes once the scale-down delay (1 s here) is over ...
    wait_until(stack.canaries, lambda c: c == [], 15.0, "the canary container removed")
    # ... and every request through Traefik lands on stable.
    stack.wait_served(0)
    assert split(stack.web, 200) == {GOOD: 200}
    assert started["id"] == final["id"]
    print(f"\nbad version rolled back {took:.1f}s after its first stage started: {reason}")


def test_a_canary_container_killed_mid_stage_is_rolled_back(stack: Stack) -> None:
    stack.wait_clean_window()
    stack.serve.start_rollout(TARGET, NEXT)
    stack.wait_weight(20)
    stack.wait_served(20)  # Traefik sends it its share: a dead canary costs requests
    [canary] = stack.canaries()
    t0 = time.monotonic()
    done = docker_cli("kill", canary["Id"])
    assert done.returncode == 0, done.stderr.decode()
    final = stack.wait_phase("RolledBack", "Failed", "Succeeded")
    took = time.monotonic() - t0
    assert final["phase"] == "RolledBack", (final, stored_decisions(stack.serve.state, final["id"]))
    wait_until(stack.canaries, lambda c: c == [], 15.0, "the canary container removed")
    stack.wait_served(0)
    assert split(stack.web, 200) == {GOOD: 200}
    print(f"\ncanary killed: rolled back {took:.1f}s later: {final['rollback_reason']}")
