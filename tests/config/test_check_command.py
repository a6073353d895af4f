"""``canaryd check``: exit 0 with what each policy means in time, or exit 2 naming every problem."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from canaryd import __version__
from canaryd.cli import describe_policy, fastest_rollout, main
from canaryd.config.policies import RULES_DIR, load_policy

REPO = Path(__file__).resolve().parents[2]

FAST_TRACK_LINE = (
    "matriz-fast-track (rules/matriz-fast-track.yaml): 4 stages 10→25→50→100, total 17m, "
    "breach→rollback ≤ 30s by PromQL (1 × 30s interval; plus the time a breach takes to show "
    "in a 2m window), at once by alert (rules: critical-rollback)"
)


def canaryd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "canaryd.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_the_shipped_config_checks_out_with_17_minutes_for_the_fast_track() -> None:
    done = canaryd("check", "-c", "config/canaryd.yaml")
    assert done.returncode == 0, done.stderr
    assert FAST_TRACK_LINE in done.stdout.splitlines()
    assert "17m" in done.stdout
    assert "no data → pause ≤ 1m30s" in done.stdout
    assert "Prometheus down → rollback ≤ 45s" in done.stdout


def test_main_checks_the_same_config_in_process(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO)
    assert main(["check", "-c", "config/canaryd.yaml"]) == 0
    out = capsys.readouterr().out
    assert FAST_TRACK_LINE in out.splitlines()
    assert "target lukhas-matriz-orchestrator: policy matriz-fast-track" in out


def test_a_config_with_three_mistakes_exits_2_naming_all_three(tmp_path: Path) -> None:
    path = tmp_path / "canaryd.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            listen: 127.0.0.1:9870
            prometheus: {url: http://127.0.0.1:9090, timeout: 5 sec}
            targets:
              - name: web
                policy: matriz-fast-track
                platform: {kind: docker, service: web, image: x}
                router: {kind: haproxy, path: /etc/haproxy/web.cfg}
            """
        ),
        encoding="utf-8",
    )
    done = canaryd("check", "-c", str(path))
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 3, lines
    assert lines[0].startswith(f"{path}: prometheus.timeout: expected a duration")
    assert lines[1].startswith(f"{path}: targets[0].platform.image: unknown key")
    assert lines[2].startswith(f"{path}: targets[0].router.kind: unknown router kind 'haproxy'")
    assert "traefik-file" in lines[2]


def test_policy_mistakes_are_named_by_policy_file_and_key_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = tmp_path / "policyfile.yaml"
    policy.write_text(
        textwrap.dedent(
            """\
            interval: 30s
            checks:
              x: {query: 'sum(rate(http_requests_total{job="{{jbo}}"}[1m]))', threshold: 1}
            stages:
              - {weight: 25, duration: 1m, checks: [x]}
              - {weight: 10, duration: 1m, checks: [x]}
            """
        ),
        encoding="utf-8",
    )
    path = tmp_path / "canaryd.yaml"
    path.write_text(
        "prometheus: {url: http://127.0.0.1:9090}\n"
        "targets: [{name: web, policy: policyfile.yaml, "
        "platform: {kind: none}, router: {kind: noop}}]\n",
        encoding="utf-8",
    )
    assert main(["check", "-c", str(path)]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert any(
        line.startswith(f"{policy}: stages[1].weight: weights must increase") for line in lines
    )
    assert any(
        line.startswith(f"{policy}: checks.x.query: unknown template variable") for line in lines
    )
    assert any("{{jbo}}" in line for line in lines)


@pytest.mark.parametrize("policy", sorted(RULES_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_policy_can_be_checked_through_a_config(
    policy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "canaryd.yaml"
    path.write_text(
        "prometheus: {url: http://127.0.0.1:9090}\n"
        f"targets: [{{name: web, policy: {policy.stem}, "
        "platform: {kind: none}, router: {kind: noop}}]\n",
        encoding="utf-8",
    )
    assert main(["check", "-c", str(path)]) == 0
    assert f"{policy.stem} (" in capsys.readouterr().out


def test_the_worst_cases_follow_the_policy_limits() -> None:
    conservative = load_policy(RULES_DIR / "matriz-conservative.yaml")
    summary, outage, no_data, deadline, alerts = describe_policy(conservative, "c.yaml")
    assert "total 1h plus 3 manual approvals" in summary
    assert "breach→rollback ≤ 1m by PromQL (1 × 1m interval;" in summary
    assert "rollback ≤ 1m15s" in outage  # one interval, then 3 retries 5 s apart
    assert "pause ≤ 2m (2 × 1m interval" in no_data
    assert "≤ 15m (progress_deadline)" in deadline
    assert "warning-pause" in alerts and "resume 5m after it resolves" in alerts


def test_a_zero_length_final_stage_still_needs_one_passing_evaluation() -> None:
    fast = load_policy(RULES_DIR / "matriz-fast-track.yaml")
    assert fastest_rollout(fast) == 17 * 60 + 30


def test_version_and_help_name_the_program() -> None:
    done = canaryd("--version")
    assert done.returncode == 0
    assert done.stdout.strip() == f"canaryd {__version__}"
    assert "check" in canaryd("--help").stdout


def test_no_subcommand_is_a_usage_error() -> None:
    assert canaryd().returncode == 2
