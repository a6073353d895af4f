"""deployment/canary/deploy-canary.sh: the runbook's commands mapped onto canaryctl (SPEC §5.1).

Two halves. A recording ``canaryctl`` (a shell script that logs its argv and answers
``status -o json`` with a listing the test chooses) pins each command's exact canaryctl call,
how the target is chosen from ``CANARY_TARGET``/``--platform``/the daemon's targets, and the
exit codes. Then the script drives a real ``canaryd serve`` running the shipped
``config/observe-only.yaml`` (the config the README runs), through the real canaryctl, so the
README's ``deploy-canary.sh start --image=v2.1.0 --traffic=10`` is shown to work against it and
the listing's real JSON layout is the one the script parses.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from support.procs import free_port
from support.servekit import TOKENS, Serve, wait_until

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deployment" / "canary" / "deploy-canary.sh"
RUNBOOK_TARGET = "lukhas-matriz-orchestrator"


def run(*argv: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, **kwargs)


def listing(*targets: tuple[str, str]) -> str:
    """``canaryctl status -o json`` for (name, platform.kind) pairs, laid out as canaryctl does."""
    rows = [
        {"name": name, "policy": "p", "router": "noop", "platform": kind, "rollout_id": None}
        for name, kind in targets
    ]
    return json.dumps({"targets": rows}, indent=2)


# The runbook's target on Kubernetes beside a Compose stack's target on docker.
TWO_PLATFORMS = listing((RUNBOOK_TARGET, "kubernetes"), ("matriz-compose", "docker"))


@pytest.fixture
def fake_canaryctl(tmp_path: Path) -> Path:
    """A canaryctl that records its argv (one call per line); ``status -o json`` prints
    $FAKE_LISTING and exits $FAKE_LIST_EXIT, every other call exits $FAKE_EXIT."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "canaryctl"
    fake.write_text(
        "#!/usr/bin/env bash\n"
        'printf "%s\\n" "$*" >> "$CTL_LOG"\n'
        'if [[ "$*" == "status -o json" ]]; then\n'
        '    printf "%s\\n" "$FAKE_LISTING"; exit "${FAKE_LIST_EXIT:-0}"\n'
        "fi\n"
        'exit "${FAKE_EXIT:-0}"\n'
    )
    fake.chmod(0o755)
    return tmp_path


def deploy(home: Path, *args: str, **env: str) -> tuple[int, list[str], str]:
    """Run the script with the fake canaryctl first on PATH: (exit code, calls, stdout+stderr)."""
    log = home / "calls.log"
    log.unlink(missing_ok=True)
    environ = {
        k: v for k, v in os.environ.items() if not k.startswith("CANARY") and k != "KUBECTL_CONTEXT"
    }
    environ.update(PATH=f"{home / 'bin'}:{os.environ['PATH']}", CTL_LOG=str(log))
    environ.setdefault("FAKE_LISTING", TWO_PLATFORMS)
    environ.update(env)
    done = run("bash", str(SCRIPT), *args, env=environ)
    calls = log.read_text().splitlines() if log.exists() else []
    return done.returncode, calls, done.stdout + done.stderr


# --------------------------------------------------------------------------- the script itself


def test_the_script_is_valid_bash_in_strict_mode_and_executable() -> None:
    assert run("bash", "-n", str(SCRIPT)).returncode == 0
    text = SCRIPT.read_text()
    assert text.startswith("#!/usr/bin/env bash\n") and "set -euo pipefail" in text
    assert os.access(SCRIPT, os.X_OK)


def test_help_says_what_each_command_does_and_how_the_target_and_platform_are_chosen() -> None:
    done = run("bash", str(SCRIPT), "--help")
    assert done.returncode == 0 and done.stderr == ""
    text = " ".join(done.stdout.split())
    for command in ("start", "status", "rollback", "cleanup", "watch", "--monitoring"):
        assert command in text
    assert "canaryctl promote TARGET --full: promote the canary to stable" in text
    assert "promote --step canaryctl promote TARGET: skip the current stage's wait" in text
    assert "--platform=kubernetes|docker|none" in text and "platform.kind" in text
    assert "CANARY_TARGET" in text and RUNBOOK_TARGET in text
    assert "KUBECTL_CONTEXT the region's cluster: the command acts only on a target whose" in text
    assert "kubernetes.context" in text and "CANARYD_KUBE_CONTEXT" in text
    assert "2 for a command line this script does not understand" in text


# --------------------------------------------------------------------------- command -> canaryctl

LIST = "status -o json"
RUNBOOK = [
    ("start --image=v2.1.0 --traffic=10", [f"start {RUNBOOK_TARGET} --image v2.1.0 --traffic 10"]),
    ("status", [f"status {RUNBOOK_TARGET}"]),
    ("promote", [f"promote {RUNBOOK_TARGET} --full"]),
    ("promote --full", [f"promote {RUNBOOK_TARGET} --full"]),
    ("promote --step", [f"promote {RUNBOOK_TARGET}"]),
    ("rollback", [f"rollback {RUNBOOK_TARGET}"]),
    ("abort", [f"rollback {RUNBOOK_TARGET}"]),
    ("rollback --reason=latency", [f"rollback {RUNBOOK_TARGET} --reason latency"]),
    ("cleanup", [f"cleanup {RUNBOOK_TARGET}"]),
    ("watch", [f"watch {RUNBOOK_TARGET}"]),
    ("start --image=stable-version", [f"start {RUNBOOK_TARGET} --image stable-version"]),
    (
        "start --image=3f2a9c1 --traffic=5 --monitoring",
        [f"start {RUNBOOK_TARGET} --image 3f2a9c1 --traffic 5", f"watch {RUNBOOK_TARGET}"],
    ),
    (
        "start --image v3 --policy matriz-standard",
        [f"start {RUNBOOK_TARGET} --image v3 --policy matriz-standard"],
    ),
    # --platform picks the target whose platform.kind it is
    ("start --platform=docker --image=v2.1.0", ["start matriz-compose --image v2.1.0"]),
    ("status --platform=docker", ["status matriz-compose"]),
    ("promote --platform=docker", ["promote matriz-compose --full"]),
    ("start --platform kubernetes --image v3", [f"start {RUNBOOK_TARGET} --image v3"]),
]


@pytest.mark.parametrize(("command", "calls"), RUNBOOK, ids=[c for c, _ in RUNBOOK])
def test_each_runbook_command_becomes_its_canaryctl_call_on_the_chosen_target(
    fake_canaryctl: Path, command: str, calls: list[str]
) -> None:
    code, seen, output = deploy(fake_canaryctl, *shlex.split(command))
    assert code == 0, output
    assert seen == [LIST, *calls]


def test_canary_target_is_used_as_is_without_asking_the_daemon(fake_canaryctl: Path) -> None:
    code, seen, _ = deploy(fake_canaryctl, "promote", "--step", CANARY_TARGET="payments")
    assert (code, seen) == (0, ["promote payments"])


def test_a_config_with_one_target_makes_it_the_default(fake_canaryctl: Path) -> None:
    """observe-only.yaml's shape: one target, not named as the runbook's."""
    code, seen, output = deploy(
        fake_canaryctl,
        "start",
        "--image=v2.1.0",
        "--traffic=10",
        FAKE_LISTING=listing(("matriz", "none")),
    )
    assert code == 0, output
    assert seen == [LIST, "start matriz --image v2.1.0 --traffic 10"]


def test_canary_target_with_its_own_platform_is_accepted(fake_canaryctl: Path) -> None:
    code, seen, output = deploy(
        fake_canaryctl, "status", "--platform=docker", CANARY_TARGET="matriz-compose"
    )
    assert code == 0, output
    assert seen == [LIST, "status matriz-compose"]


# --------------------------------------------------------------------------- refusals

REFUSALS = [
    (
        "status --platform=docker",
        {"CANARY_TARGET": RUNBOOK_TARGET},
        6,
        f"--platform=docker: target '{RUNBOOK_TARGET}' runs on platform 'kubernetes'"
        " (platform.kind in canaryd's config)",
    ),
    (
        "rollback --platform=none",
        {},
        6,
        "no target on platform 'none' in canaryd's config (canaryd's targets:"
        f" {RUNBOOK_TARGET} on kubernetes, matriz-compose on docker)",
    ),
    (
        "start --image=v2 --platform=docker",
        {"CANARY_TARGET": "payments"},
        6,
        "no target 'payments' in canaryd's config (canaryd's targets:",
    ),
    (
        "status",
        {"FAKE_LISTING": listing(("web", "docker"), ("api", "docker"))},
        2,
        f"several targets (web, api) and none is '{RUNBOOK_TARGET}': set CANARY_TARGET",
    ),
    (
        "promote",
        {"FAKE_LISTING": listing()},
        6,
        "no target in canaryd's config (canaryd's targets: none)",
    ),
]


@pytest.mark.parametrize(
    ("command", "env", "code", "message"), REFUSALS, ids=[c for c, *_ in REFUSALS]
)
def test_a_target_the_config_does_not_have_is_refused_with_a_message_and_nothing_done(
    fake_canaryctl: Path, command: str, env: dict[str, str], code: int, message: str
) -> None:
    got, seen, output = deploy(fake_canaryctl, *shlex.split(command), **env)
    assert got == code, output
    assert seen == [LIST]  # asked, changed nothing
    assert message in " ".join(output.split())
    assert "Usage:" not in output  # the command line was fine; the config says no


@pytest.mark.parametrize(
    "command",
    [
        "start --image=v2 --bogus",
        "start --image=v2 --platform=swarm",
        "start --traffic=10",
        "start --image=v2 --traffic=ten",
        "status --image=v2",
        "status --step",
        "start --image=v2 --full",
        "promote --full --step",
        "promote --platform=",
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


# --------------------------------------------------------------------------- exit codes


@pytest.mark.parametrize(
    ("command", "exit_code"),
    [
        ("start --image=v2", 7),
        ("status", 6),
        ("promote", 7),
        ("promote --step", 9),
        ("rollback", 5),
        ("abort", 4),
        ("cleanup", 7),
        ("watch", 10),
        ("start --image=v2 --monitoring", 3),
    ],
)
def test_canaryctls_exit_code_is_the_scripts(
    fake_canaryctl: Path, command: str, exit_code: int
) -> None:
    code, seen, _ = deploy(
        fake_canaryctl, *shlex.split(command), CANARY_TARGET="web", FAKE_EXIT=str(exit_code)
    )
    assert code == exit_code
    assert len(seen) == 1  # a failed start is not followed by watch


def test_a_failed_start_is_not_followed_by_watch_and_keeps_canaryctls_exit_code(
    fake_canaryctl: Path,
) -> None:
    code, seen, _ = deploy(fake_canaryctl, "start", "--image=v2", "--monitoring", FAKE_EXIT="7")
    assert code == 7
    assert seen == [LIST, f"start {RUNBOOK_TARGET} --image v2"]


def test_when_the_daemon_cannot_be_asked_for_its_targets_its_exit_code_is_kept(
    fake_canaryctl: Path,
) -> None:
    code, seen, _ = deploy(fake_canaryctl, "rollback", FAKE_LIST_EXIT="3", FAKE_LISTING="")
    assert (code, seen) == (3, [LIST])


def regional(*targets: tuple[str, str | None]) -> str:
    """A listing of kubernetes targets with their ``kube_context`` (None: the default)."""
    rows = [
        {
            "name": name,
            "policy": "p",
            "router": "gateway-api",
            "platform": "kubernetes",
            "kube_context": context,
            "rollout_id": None,
        }
        for name, context in targets
    ]
    return json.dumps({"targets": rows}, indent=2)


# The runbook's multi-region form on one daemon: one target per region's cluster.
REGIONS = regional(("matriz-us", "us-east-1"), ("matriz-eu", "eu-west-1"))


@pytest.mark.parametrize(
    ("context", "target"), [("us-east-1", "matriz-us"), ("eu-west-1", "matriz-eu")]
)
def test_kubectl_context_picks_the_target_on_that_cluster(
    fake_canaryctl: Path, context: str, target: str
) -> None:
    """The runbook's ``KUBECTL_CONTEXT=us-east-1 ./deploy-canary.sh start --image=v2.1.0``."""
    code, seen, output = deploy(
        fake_canaryctl, "start", "--image=v2.1.0", KUBECTL_CONTEXT=context, FAKE_LISTING=REGIONS
    )
    assert code == 0, output
    assert seen == [LIST, f"start {target} --image v2.1.0"]
    assert output == ""


def test_kubectl_context_of_another_region_is_refused_naming_each_targets_context(
    fake_canaryctl: Path,
) -> None:
    """One canaryd per region: a command for ap-south-1 sent to us-east-1's canaryd changes
    nothing there. A target on the default context (null) is never taken for a named one."""
    listing_ = regional(("matriz-us", "us-east-1"), (RUNBOOK_TARGET, None))
    code, seen, output = deploy(
        fake_canaryctl, "rollback", KUBECTL_CONTEXT="ap-south-1", FAKE_LISTING=listing_
    )
    assert (code, seen) == (6, [LIST])
    assert "no target on cluster context 'ap-south-1'" in output
    assert "matriz-us on kubernetes (context us-east-1)" in output
    assert f"{RUNBOOK_TARGET} on kubernetes (context default)" in output


def test_kubectl_context_with_canary_target_must_be_that_targets_cluster(
    fake_canaryctl: Path,
) -> None:
    code, seen, output = deploy(
        fake_canaryctl,
        "status",
        CANARY_TARGET="matriz-eu",
        KUBECTL_CONTEXT="us-east-1",
        FAKE_LISTING=REGIONS,
    )
    assert (code, seen) == (6, [LIST])
    assert "target 'matriz-eu' is on cluster context eu-west-1" in output
    code, seen, output = deploy(
        fake_canaryctl,
        "status",
        CANARY_TARGET="matriz-eu",
        KUBECTL_CONTEXT="eu-west-1",
        FAKE_LISTING=REGIONS,
    )
    assert (code, seen) == (0, [LIST, "status matriz-eu"]), output


def test_without_kubectl_context_a_listing_with_contexts_reads_as_before(
    fake_canaryctl: Path,
) -> None:
    listing_ = regional(("matriz-us", "us-east-1"), (RUNBOOK_TARGET, None))
    code, seen, output = deploy(fake_canaryctl, "status", FAKE_LISTING=listing_)
    assert (code, seen) == (0, [LIST, f"status {RUNBOOK_TARGET}"]), output


# --------------------------------------------------------------------------- a real daemon


@pytest.fixture
def observe_only(tmp_path: Path) -> Iterator[Serve]:
    yield from serve_observe_only(tmp_path)


def serve_observe_only(tmp_path: Path) -> Iterator[Serve]:
    """``canaryd serve`` on the shipped observe-only.yaml; only its machine paths are moved.

    The listen port, state file and tokens file move into the test's directory, and Prometheus
    to a port nothing listens on (the test promotes or rolls back before the first check).
    Everything that decides what the script does — the targets, their platform and router —
    is the shipped file's.
    """
    shipped = yaml.safe_load((ROOT / "config" / "observe-only.yaml").read_text())
    config = dict(shipped)
    config["listen"] = f"127.0.0.1:{free_port()}"
    config["state"] = {**shipped["state"], "path": "state.db"}
    config["prometheus"] = {**shipped["prometheus"], "url": f"http://127.0.0.1:{free_port()}"}
    config["auth"] = {**shipped["auth"], "tokens_file": "tokens.yaml"}
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(
        "".join(
            f"- {{name: {role}-user, role: {role}, token: {t}}}\n" for role, t in TOKENS.items()
        )
    )
    tokens.chmod(0o600)
    path = tmp_path / "canaryd.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    serve = Serve(path)
    try:
        serve.start()
        yield serve
    finally:
        serve.stop()


def test_the_readmes_commands_work_against_the_shipped_observe_only_config(
    observe_only: Serve, tmp_path: Path
) -> None:
    shim = tmp_path / "canaryctl"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m canaryd.ctl "$@"\n')
    shim.chmod(0o755)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CANARY")},
        "CANARYCTL": str(shim),
        "CANARYD_URL": observe_only.url,
        "CANARYD_TOKEN": TOKENS["admin"],
    }

    def script(*args: str) -> subprocess.CompletedProcess[str]:
        return run("bash", str(SCRIPT), *args, env=env)

    def phase() -> str | None:
        rollout = observe_only.rollout("matriz")
        return None if rollout is None else str(rollout["phase"])

    def ok(done: subprocess.CompletedProcess[str]) -> str:
        assert done.returncode == 0, done.stdout + done.stderr + observe_only.tail()
        return done.stdout

    # The README's alternative, word for word: the config's one target is the default.
    assert "matriz: started" in ok(script("start", "--image=v2.1.0", "--traffic=10"))
    assert "canary 10%" in ok(script("status"))
    # promote = promote to stable: the rollout ends Succeeded, not one stage on.
    ok(script("promote"))
    wait_until(phase, lambda p: p == "Succeeded", 15, "promote ends the rollout")

    ok(script("start", "--image=v2.2.0", "--traffic=10", "--platform=none"))
    wait_until(phase, lambda p: p == "Progressing", 15, "the second rollout progresses")
    ok(script("promote", "--step"))
    wait_until(
        lambda: observe_only.rollout("matriz"),
        lambda r: r is not None and (r["phase"], r["stage"], r["weight"]) == ("Progressing", 2, 25),
        15,
        "promote --step moves one stage on, to 25%",
    )

    refused = script("rollback", "--platform=docker")
    assert refused.returncode == 6
    assert "no target on platform 'docker'" in refused.stderr
    assert "matriz on none" in refused.stderr
    assert phase() not in ("RollingBack", "RolledBack")  # the refusal changed nothing

    assert "rolling back" in ok(script("rollback", "--reason=drill"))
    wait_until(phase, lambda p: p == "RolledBack", 15, "rollback ends the rollout")
    ok(script("cleanup"))


@pytest.fixture
def observe_only_in_us_east(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Serve]:
    """The same daemon started as the runbook's one-canaryd-per-region runs it: its region's
    context in ``$CANARYD_KUBE_CONTEXT`` (the config names none)."""
    monkeypatch.setenv("CANARYD_KUBE_CONTEXT", "us-east-1")
    yield from serve_observe_only(tmp_path)


def test_kubectl_context_reaches_the_canaryd_of_that_region_only(
    observe_only_in_us_east: Serve, tmp_path: Path
) -> None:
    """Through the real canaryctl and the real listing: the daemon shows the context it was
    started with, the script acts when ``KUBECTL_CONTEXT`` names it, refuses when not."""
    serve = observe_only_in_us_east
    shim = tmp_path / "canaryctl"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m canaryd.ctl "$@"\n')
    shim.chmod(0o755)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CANARY")},
        "CANARYCTL": str(shim),
        "CANARYD_URL": serve.url,
        "CANARYD_TOKEN": TOKENS["admin"],
    }
    listed = run(str(shim), "status", "-o", "json", env=env)
    assert json.loads(listed.stdout)["targets"][0]["kube_context"] == "us-east-1"

    refused = run(
        "bash", str(SCRIPT), "start", "--image=v2.1.0", env={**env, "KUBECTL_CONTEXT": "eu-west-1"}
    )
    assert refused.returncode == 6, refused.stdout + refused.stderr
    assert "no target on cluster context 'eu-west-1'" in refused.stderr
    assert "matriz on none (context us-east-1)" in refused.stderr
    assert serve.rollout("matriz") is None  # the refusal changed nothing

    done = run(
        "bash", str(SCRIPT), "start", "--image=v2.1.0", env={**env, "KUBECTL_CONTEXT": "us-east-1"}
    )
    assert done.returncode == 0, done.stdout + done.stderr + serve.tail()
    assert "matriz: started" in done.stdout
