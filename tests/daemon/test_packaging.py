"""How canaryd is shipped: the container image, the Prometheus and Alertmanager examples, and
the runbook's deploy-canary.sh (the systemd unit and its install: test_systemd_unit.py).

Each file is checked by the tool that will read it in production when that tool is installed
(``promtool``, ``amtool``); the parse and content checks run either way, so a machine without
the tools still tests what canaryd relies on; the checks that need ``amtool``/``promtool`` to
mean anything (alert routing, the rule's unit test) use ``support.procs.find_binary`` and fail
without them, as every test of a real component does.
The Dockerfile cannot be built here (no registry for the base image), so its content is
checked and its HEALTHCHECK command is run.
"""

from __future__ import annotations

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

from support.procs import find_binary, free_port

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
SCRIPT = ROOT / "deployment" / "canary" / "deploy-canary.sh"
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


# --------------------------------------------------------------------------- deploy-canary.sh


@pytest.fixture
def fake_canaryctl(tmp_path: Path) -> Path:
    """A canaryctl that records its argv (one call per line) and exits $FAKE_EXIT."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "canaryctl"
    fake.write_text(
        '#!/usr/bin/env bash\nprintf "%s\\n" "$*" >> "$CTL_LOG"\nexit "${FAKE_EXIT:-0}"\n'
    )
    fake.chmod(0o755)
    return tmp_path


def deploy(home: Path, *args: str, **env: str) -> tuple[int, list[str], str]:
    log = home / "calls.log"
    log.unlink(missing_ok=True)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CANARY")}
    environ.update(PATH=f"{home / 'bin'}:{os.environ['PATH']}", CTL_LOG=str(log), **env)
    done = run("bash", str(SCRIPT), *args, env=environ)
    calls = log.read_text().splitlines() if log.exists() else []
    return done.returncode, calls, done.stdout + done.stderr


def test_the_script_is_valid_bash_in_strict_mode_and_executable() -> None:
    assert run("bash", "-n", str(SCRIPT)).returncode == 0
    text = SCRIPT.read_text()
    assert text.startswith("#!/usr/bin/env bash\n") and "set -euo pipefail" in text
    assert os.access(SCRIPT, os.X_OK)


def test_help_names_the_commands_and_says_the_config_decides_the_platform() -> None:
    done = run("bash", str(SCRIPT), "--help")
    assert done.returncode == 0
    for word in ("start", "status", "promote", "rollback", "cleanup", "--monitoring"):
        assert word in done.stdout
    assert "--platform" in done.stdout and "platform.kind" in done.stdout


RUNBOOK = [
    (
        "start --image=v2.1.0 --traffic=10",
        ["start lukhas-matriz-orchestrator --image v2.1.0 --traffic 10"],
    ),
    ("status", ["status lukhas-matriz-orchestrator"]),
    ("promote", ["promote lukhas-matriz-orchestrator"]),
    ("rollback", ["rollback lukhas-matriz-orchestrator"]),
    (
        "start --platform=docker --image=v2.1.0",
        ["start lukhas-matriz-orchestrator --image v2.1.0"],
    ),
    ("status --platform=docker", ["status lukhas-matriz-orchestrator"]),
    ("promote --platform=docker", ["promote lukhas-matriz-orchestrator"]),
    ("cleanup", ["cleanup lukhas-matriz-orchestrator"]),
    ("start --image=stable-version", ["start lukhas-matriz-orchestrator --image stable-version"]),
    (
        "start --image=3f2a9c1 --traffic=5 --monitoring",
        [
            "start lukhas-matriz-orchestrator --image 3f2a9c1 --traffic 5",
            "watch lukhas-matriz-orchestrator",
        ],
    ),
    ("promote --full", ["promote lukhas-matriz-orchestrator --full"]),
    ("rollback --reason=latency", ["rollback lukhas-matriz-orchestrator --reason latency"]),
    ("start --platform kubernetes --image v3", ["start lukhas-matriz-orchestrator --image v3"]),
]


@pytest.mark.parametrize(("command", "calls"), RUNBOOK, ids=[c for c, _ in RUNBOOK])
def test_each_runbook_command_becomes_one_canaryctl_call(
    fake_canaryctl: Path, command: str, calls: list[str]
) -> None:
    code, seen, output = deploy(fake_canaryctl, *shlex.split(command))
    assert code == 0, output
    assert seen == calls


def test_the_target_comes_from_canary_target(fake_canaryctl: Path) -> None:
    code, seen, _ = deploy(fake_canaryctl, "status", CANARY_TARGET="payments")
    assert (code, seen) == (0, ["status payments"])


@pytest.mark.parametrize(
    "command",
    [
        "start --image=v2 --bogus",
        "start --image=v2 --platform=swarm",
        "start --traffic=10",
        "start --image=v2 --traffic=ten",
        "status --image=v2",
        "deploy --image=v2",
        "",
    ],
)
def test_what_the_script_does_not_understand_is_usage_and_exit_2(
    fake_canaryctl: Path, command: str
) -> None:
    code, seen, output = deploy(fake_canaryctl, *shlex.split(command))
    assert code == 2, output
    assert seen == [] and "Usage:" in output


def test_a_failed_start_is_not_followed_by_watch_and_keeps_canaryctls_exit_code(
    fake_canaryctl: Path,
) -> None:
    code, seen, _ = deploy(fake_canaryctl, "start", "--image=v2", "--monitoring", FAKE_EXIT="7")
    assert code == 7
    assert seen == ["start lukhas-matriz-orchestrator --image v2"]
