"""How canaryd is shipped: the container image, the Prometheus and Alertmanager examples (the
systemd unit and its install: ``test_systemd_unit.py``; deploy-canary.sh:
``test_deploy_script.py``).

Each file is checked by the tool that will read it in production when that tool is installed
(``promtool``, ``amtool``); the parse and content checks run either way, so a machine without
the tools still tests what canaryd relies on; the checks that need ``amtool``/``promtool`` to
mean anything (alert routing, the rule's unit test) use ``support.procs.find_binary`` and fail
without them, as every test of a real component does.
The Dockerfile cannot be built here (no registry for the base image), so its content is
checked and its HEALTHCHECK command is run.
"""

from __future__ import annotations

import ast
import http.server
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from canaryd.config.settings import Listen, parse_listen
from support.procs import find_binary, free_port

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
CONFIG = ROOT / "config"


def run(*argv: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, **kwargs)


# --------------------------------------------------------------------------- container


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_the_image_runs_canaryd_serve_as_a_non_root_user() -> None:
    steps = dockerfile()
    assert steps[0] == ("FROM", "python:3.11-slim")
    runs = " ".join(arg for word, arg in steps if word == "RUN")
    assert re.search(r"pip install (--\S+ )*\.(\s|$)", runs), runs
    users = [arg for word, arg in steps if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    entry = [json.loads(arg) for word, arg in steps if word == "ENTRYPOINT"]
    assert entry == [["canaryd", "serve", "-c", "/etc/canaryd/canaryd.yaml"]]
    volumes = [json.loads(arg) for word, arg in steps if word == "VOLUME"]
    assert volumes == [["/etc/canaryd", "/var/lib/canaryd"]]
    assert ("EXPOSE", "9870") in steps


def image_env() -> dict[str, str]:
    """The image's ENV, every ``KEY=value`` of every ENV instruction."""
    env: dict[str, str] = {}
    for word, arg in dockerfile():
        if word == "ENV":
            env.update(item.split("=", 1) for item in shlex.split(arg))
    return env


def test_the_image_listens_on_every_interface_and_probes_the_same_port() -> None:
    """A container's loopback is unreachable through a published port: the image overrides
    the mounted config's ``listen`` with ``CANARYD_LISTEN`` (``serve`` reads it), and its
    health probe asks the port it listens on and publishes."""
    env = image_env()
    listen = parse_listen(env["CANARYD_LISTEN"])
    assert listen == Listen("0.0.0.0", 9870)
    assert env["CANARYD_HEALTHZ_URL"] == f"http://127.0.0.1:{listen.port}/healthz"
    assert ("EXPOSE", str(listen.port)) in dockerfile()


def healthcheck_argv() -> list[str]:
    (check,) = [arg for word, arg in dockerfile() if word == "HEALTHCHECK"]
    assert " CMD " in f" {check} ", check
    argv: list[str] = json.loads(check.split("CMD", 1)[1].strip())
    return argv


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()
        self.wfile.write(b'{"status": "ok"}')

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[http.server.ThreadingHTTPServer]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_the_healthcheck_probes_healthz_with_pythons_urllib_and_fails_when_down(
    health_server: http.server.ThreadingHTTPServer,
) -> None:
    argv = healthcheck_argv()
    assert argv[:2] == ["python", "-c"] and "urllib" in argv[2]
    env_default = re.search(r"CANARYD_HEALTHZ_URL=(\S+)", DOCKERFILE.read_text())
    assert env_default and env_default.group(1) == "http://127.0.0.1:9870/healthz"
    command = [sys.executable, *argv[1:]]
    port = health_server.server_address[1]
    up = {**os.environ, "CANARYD_HEALTHZ_URL": f"http://127.0.0.1:{port}/healthz"}
    assert run(*command, env=up).returncode == 0
    down = {**os.environ, "CANARYD_HEALTHZ_URL": f"http://127.0.0.1:{free_port()}/healthz"}
    assert run(*command, env=down).returncode != 0


def test_the_build_context_leaves_out_state_secrets_and_the_repository() -> None:
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", "tests", "*.db", "**/tokens.yaml"} <= ignored
    copied = [arg.split()[0] for word, arg in dockerfile() if word == "COPY"]
    assert not any(src.rstrip("/") in ignored for src in copied), copied


# --------------------------------------------------------------------------- Alertmanager


def canaryd_route(config: dict[str, Any]) -> dict[str, Any]:
    receivers = {r["name"]: r for r in config["receivers"]}
    routes = [r for r in config["route"].get("routes", []) if r.get("receiver") == "canaryd"]
    assert len(routes) == 1 and "canaryd" in receivers
    return {**routes[0], "webhook": receivers["canaryd"]["webhook_configs"][0]}


def seconds(text: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text))


def test_alertmanager_sends_canaryd_its_alerts_fast_with_resolutions_and_a_credential() -> None:
    route = canaryd_route(yaml.safe_load((CONFIG / "alertmanager.yml").read_text()))
    assert seconds(route["group_wait"]) <= 5
    assert seconds(route["group_interval"]) == 10
    hook = route["webhook"]
    assert hook["url"] == "http://127.0.0.1:9870/api/v1/alerts"
    assert hook["send_resolved"] is True
    assert hook["http_config"]["authorization"]["credentials_file"] == "/etc/canaryd/webhook-token"
    assert "credentials" not in hook["http_config"]["authorization"]  # never inline


def test_the_alertmanager_config_parses_and_amtool_accepts_it() -> None:
    assert yaml.safe_load((CONFIG / "alertmanager.yml").read_text())["receivers"]
    tool = shutil.which("amtool")
    if tool is None:  # not installed: the YAML checks are the test
        return
    done = run(tool, "check-config", str(CONFIG / "alertmanager.yml"))
    assert done.returncode == 0, done.stdout + done.stderr


def test_alertmanager_routes_a_critical_canary_alert_to_canaryd_and_its_own_to_people() -> None:
    tool = find_binary("amtool")
    path = str(CONFIG / "alertmanager.yml")
    canary = run(tool, "config", "routes", "test", f"--config.file={path}",
                 "severity=critical", "target=lukhas-matriz-orchestrator")  # fmt: skip
    assert canary.stdout.split() == ["canaryd"], canary.stdout + canary.stderr
    own = run(tool, "config", "routes", "test", f"--config.file={path}",
              "alertname=CanarydRolledBack", "target=lukhas-matriz-orchestrator")  # fmt: skip
    assert own.stdout.split() == ["default"], own.stdout + own.stderr


# --------------------------------------------------------------------------- Prometheus


def test_prometheus_scrapes_canaryd_and_both_versions_of_the_service() -> None:
    config = yaml.safe_load((CONFIG / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["canaryd"].get("metrics_path", "/metrics") == "/metrics"
    assert jobs["canaryd"]["static_configs"][0]["targets"] == ["127.0.0.1:9870"]
    service = jobs["lukhas-matriz-canary"]
    deployments = {sc["labels"]["deployment"] for sc in service["static_configs"]}
    assert deployments == {"stable", "canary"}
    assert config["rule_files"] == ["prometheus-rules.yml"]


def test_the_prometheus_config_and_rules_parse_and_promtool_accepts_them() -> None:
    assert yaml.safe_load((CONFIG / "prometheus.yml").read_text())["scrape_configs"]
    assert yaml.safe_load((CONFIG / "prometheus-rules.yml").read_text())["groups"]
    tool = shutil.which("promtool")
    if tool is None:  # not installed: the YAML checks are the test
        return
    done = run(tool, "check", "config", str(CONFIG / "prometheus.yml"))
    assert done.returncode == 0, done.stdout + done.stderr
    done = run(tool, "check", "rules", str(CONFIG / "prometheus-rules.yml"))
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_example_rule_fires_critical_for_the_target_when_the_canary_fails(
    tmp_path: Path,
) -> None:
    """promtool's rule unit test: 10% 5xx on the canary fires the alert with the labels
    canaryd's default alert rule (severity=critical, target=...) matches."""
    rules = yaml.safe_load((CONFIG / "prometheus-rules.yml").read_text())
    critical = [
        r
        for group in rules["groups"]
        for r in group["rules"]
        if r.get("labels", {}).get("severity") == "critical"
    ]
    assert critical and all(r["labels"].get("target") for r in critical)
    tool = find_binary("promtool")  # fails if missing: .ci/run installs prometheus
    rule = critical[0]
    series = 'http_requests_total{{job="lukhas-matriz-canary",deployment="canary",status="{}"}}'

    def case(errors_per_step: int, expected: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "interval": "15s",
            "input_series": [
                {"series": series.format("200"), "values": f"0+{150 - errors_per_step}x20"},
                {"series": series.format("500"), "values": f"0+{errors_per_step}x20"},
            ],
            "alert_rule_test": [
                {"eval_time": "3m", "alertname": rule["alert"], "exp_alerts": expected}
            ],
        }

    firing = {
        "exp_labels": {"job": "lukhas-matriz-canary", **rule["labels"]},
        "exp_annotations": {
            "summary": "MATRIZ canary: 10% of requests fail",
            "description": rule["annotations"]["description"].strip(),
        },
    }
    test = {
        "rule_files": [str(CONFIG / "prometheus-rules.yml")],
        "evaluation_interval": "15s",
        "tests": [case(15, [firing]), case(0, [])],  # 10% errors fire; none stay quiet
    }
    test_file = tmp_path / "rules_test.yml"
    test_file.write_text(yaml.safe_dump(test))
    done = run(tool, "test", "rules", str(test_file))
    assert done.returncode == 0, done.stdout + done.stderr


# --------------------------------------------------------------------------- the distribution


def test_the_distribution_is_not_pypis_canaryd_but_installs_the_canaryd_commands() -> None:
    """``canaryd`` on PyPI is an unrelated project: ``pip install canaryd`` would install it.
    The distribution is ``canaryd-rollout`` (free on PyPI when chosen); the import package and
    the commands keep canaryd's names, and the README installs it into a venv (PEP 668)."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["name"] == "canaryd-rollout"
    assert project["scripts"] == {
        "canaryd": "canaryd.cli:main",
        "canaryctl": "canaryd.ctl.main:main",
    }
    readme = (ROOT / "README.md").read_text()
    first = readme.split("```bash\n", 1)[1].splitlines()[0]
    assert "python3 -m venv .venv && .venv/bin/pip install -e ." in first
    assert "python3-venv" in first  # stock Debian's python3 has no venv module without it
    assert "pip install -e ." not in readme.replace(".venv/bin/pip install -e .", "")


# import name → distribution; ``rich`` is optional (canaryctl watch uses it when installed)
DISTRIBUTIONS = {
    "yaml": "pyyaml",
    "prometheus_client": "prometheus-client",
    "opentelemetry": "opentelemetry-sdk",  # with its OTLP/HTTP exporter (tracing:)
}
OPTIONAL = {"rich", "_typeshed"}


def imported_top_level_modules(package: Path) -> set[str]:
    found: set[str] = set()
    for source in package.rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text(), str(source))):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module.split(".")[0])
    return found


def test_every_third_party_module_the_daemon_imports_is_a_declared_dependency() -> None:
    """A plain ``pip install`` (the README's venv) must bring everything ``canaryd`` imports:
    a module only the test extras bring works in CI and fails on a fresh machine."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {
        re.split(r"[<>=!~; \[]", dep, maxsplit=1)[0].lower() for dep in project["dependencies"]
    }
    third_party = (
        imported_top_level_modules(ROOT / "daemon" / "canaryd")
        - set(sys.stdlib_module_names)
        - {"canaryd"}
        - OPTIONAL
    )
    missing = {
        m
        for m in third_party
        if DISTRIBUTIONS.get(m, m).replace("_", "-") not in {d.replace("_", "-") for d in declared}
    }
    assert missing == set(), f"imported by canaryd but not in [project] dependencies: {missing}"
