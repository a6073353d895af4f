"""``canaryd check``: how fast each policy acts on a bad canary (core.timing, config.pipeline).

The figures for the shipped config are asserted twice: as the numbers the model in
``core/timing.py`` gives (worked out by hand below) and as what a real ``canaryd check``
subprocess prints. ``tests/daemon/test_check_breach_time.py`` holds the model against a real
breach.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from canaryd.config.pipeline import GROUP_WAIT_DEFAULT, read_pipeline
from canaryd.config.policies import RULES_DIR, load_policy
from canaryd.core import timing

REPO = Path(__file__).resolve().parents[2]
FAST = load_policy(RULES_DIR / "matriz-fast-track.yaml")


def canaryd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "canaryd.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def compare_line(name: str, what: str, d: timing.Detection) -> str:
    assert d.median_requests is not None and d.median_seconds is not None
    minutes = int(d.median_seconds // 60)
    seconds = int(d.median_seconds % 60)
    took = f"{minutes}m{seconds}s" if seconds else f"{minutes}m"
    return (
        f"  {name}: canary at {what}, 20 req/s: caught in {d.detected / d.runs:.0%} of fastest "
        f"rollouts, after a median {d.median_requests:,.0f} canary requests, {took} after the "
        "rollout's first evaluation (which only takes the baseline: evidence starts one interval "
        "later)"
    )


def test_the_shipped_config_prints_the_fast_tracks_worst_cases_as_the_model_gives() -> None:
    done = canaryd("check", "-c", "config/canaryd.yaml")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    # config/prometheus.yml scrapes the job every 5s; Traefik's file provider applies in 2s.
    # success-rate >= 0.995: 0.5% of 2m = 0.6s → one 5s scrape, + the 5s scrape carrying it
    # = 10s lag; + 1 × 30s (failure_limit 0) + 2s router = 42s. latency-p95 (quantile 0.95):
    # 5% of 2m = 6s → two scrapes = 10s, + 5s = 15s lag → 47s, the policy's worst.
    assert (
        "  target lukhas-matriz-orchestrator: job lukhas-matriz-canary scraped every 5s "
        "(config/prometheus.yml); router traefik-file +2s (Traefik's file provider, "
        "throttled 2s)"
    ) in lines
    assert (
        "    full breach → rollback by PromQL ≤ 47s (window lag + 1 × 30s interval + router): "
        "success-rate 42s (lag 10s: 0.5% of 2m), latency-p95 47s (lag 15s: 5% of 2m), "
        "error-rate 42s (lag 10s: 0.1% of 2m), health-score 42s (lag 10s: 2% of 2m)"
    ) in lines
    # MatrizCanaryErrorBurst: 5% of a 1m window = 3s → 5s + 5s scrape = 10s lag, evaluated
    # every 15s, for: 30s, the canaryd route's group_wait 5s, router 2s → 1m2s
    assert (
        "    full breach → rollback by alert MatrizCanaryErrorBurst ≤ 1m2s (lag 10s: 5% of 1m + "
        "evaluation 15s + for 30s + group_wait 5s (config/alertmanager.yml) + router)"
    ) in lines
    errors = timing.detection(FAST, FAST.checks["errors-vs-stable"])
    latency = timing.detection(FAST, FAST.checks["latency-vs-stable"], error_rate=0.05, bounds=10)
    assert compare_line("errors-vs-stable", "2 × stable's 0.50% errors", errors) in lines
    slower = "2 × stable's 5% of requests slower than one of 10 bucket bounds, the others unmoved"
    assert compare_line("latency-vs-stable", slower, latency) in lines
    # the figures rules/README.md quotes
    assert (errors.detected, errors.median_requests, errors.median_seconds) == (368, 2340, 480)
    assert (latency.detected, latency.median_requests, latency.median_seconds) == (400, 1140, 300)


def test_without_a_prometheus_config_the_upstream_defaults_are_assumed_and_said(
    tmp_path: Path,
) -> None:
    config = tmp_path / "canaryd.yaml"
    config.write_text(
        textwrap.dedent(
            """\
            listen: 127.0.0.1:9870
            state: {backend: sqlite, path: state.db}
            prometheus: {url: http://127.0.0.1:9090}
            targets:
              - {name: web, policy: matriz-standard, platform: {kind: none}, router: {kind: noop}}
            """
        )
    )
    done = canaryd("check", "-c", str(config), "--rps", "30")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert (
        "  target web: job web scraped every 1m (Prometheus default); router noop +0s "
        "(nothing to apply)"
    ) in lines
    # 0.5% of 2m → one 1m scrape + 1m = 2m lag, + 30s; every check's lag is two scrapes
    assert any(line.startswith("    full breach → rollback by PromQL ≤ 2m30s ") for line in lines)
    assert (
        "    by alert: no alert in (none known) concerns it and matches a rollback rule of "
        "matriz-standard (by the labels the alert rule sets)"
    ) in lines
    errors = "errors-vs-stable: canary at 2 × stable's 0.50% errors, 30 req/s"
    assert any(errors in line for line in lines)


def test_a_missing_explicit_pipeline_file_is_a_note_not_a_failure(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yml"
    done = canaryd("check", "-c", "config/canaryd.yaml", "--alertmanager-config", str(missing))
    assert done.returncode == 0, done.stderr
    assert f"  note: {missing}: no such file; defaults assumed" in done.stdout.splitlines()
    assert "group_wait 30s (default)" in done.stdout


def test_bad_traffic_options_exit_2() -> None:
    for args in (["--rps", "0"], ["--error-rate", "0.9"]):
        done = canaryd("check", "-c", "config/canaryd.yaml", *args)
        assert done.returncode == 2, (args, done.stdout)
        assert "--rps must be > 0" in done.stderr


def test_the_window_share_a_full_breach_fills_follows_the_bound() -> None:
    assert timing.breach_fraction("sum(rate(x[2m]))", ">=", 0.995) == pytest.approx(0.005)
    assert timing.breach_fraction("sum(rate(x[2m]))", "<=", 0.001) == 0.001
    quantile = "histogram_quantile(0.99, sum(rate(b[2m])))"
    assert timing.breach_fraction(quantile, "<=", 0.25) == pytest.approx(0.01)
    assert timing.breach_fraction("avg(latency_seconds)", "<=", 3.0) == 1.0  # not a share
    # whole scrape intervals of bad samples, plus the scrape that carries them
    assert timing.window_lag(0.05, 120, 5) == 15
    assert timing.window_lag(0.05, 120, 6) == 12
    assert timing.window_lag(0.001, 120, 15) == 30
    assert timing.window_lag(0.5, 10, 0) == 5


def test_routers_without_a_known_apply_time_say_so() -> None:
    assert timing.router_apply("traefik-file")[0] == 2.0
    assert timing.router_apply("gateway-api")[0] is None
    assert timing.router_apply("made-up") == (None, "router made-up: not known")


def test_alertmanager_routing_picks_the_first_matching_child_and_inherits_group_wait(
    tmp_path: Path,
) -> None:
    (tmp_path / "alertmanager.yml").write_text(
        textwrap.dedent(
            """\
            route:
              receiver: default
              group_wait: 20s
              routes:
                - match: {team: db}
                  group_wait: 1m
                - match_re: {service: "web|api"}
                  routes:
                    - matchers: ['severity="critical"']
                      group_wait: 2s
                - matchers: ['target=~".+"']
                  group_wait: 5s
            """
        )
    )
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 10s}\nrule_files: [rules/*.yml]\n"
        "scrape_configs: [{job_name: web, scrape_interval: 2s}, {job_name: other}]\n"
    )
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "a.yml").write_text(
        "groups: [{name: g, rules: [{alert: Hot, expr: 'x > 1', for: 1m, labels: {a: b}},"
        " {record: r, expr: y}]}]\n"
    )
    pipe = read_pipeline(tmp_path / "canaryd.yaml")
    assert pipe.group_wait({"team": "db"}) == 60
    assert pipe.group_wait({"service": "api", "severity": "critical"}) == 2
    assert pipe.group_wait({"service": "web"}) == 20  # inherited from the root
    assert pipe.group_wait({"target": "x"}) == 5
    assert pipe.group_wait({}) == 20
    scrapes = [pipe.scrape_for(job) for job in ("web", "other", "none")]
    assert scrapes == [2, 10, 10]
    assert pipe.evaluation == 60  # Prometheus's default
    assert [(a.name, a.hold, a.labels["alertname"]) for a in pipe.alerts] == [("Hot", 60, "Hot")]
    assert pipe.notes == ()


def test_an_unreadable_pipeline_file_is_a_note(tmp_path: Path) -> None:
    (tmp_path / "prometheus.yml").write_text("global: {scrape_interval: soon}\n")
    (tmp_path / "alertmanager.yml").write_text("route: [unclosed\n")
    pipe = read_pipeline(tmp_path / "canaryd.yaml")
    assert pipe.default_scrape == 60 and pipe.group_wait({}) == GROUP_WAIT_DEFAULT
    assert len(pipe.notes) == 2, pipe.notes
    assert "prometheus.yml: not understood" in pipe.notes[0]
    assert "alertmanager.yml: unreadable (" in pipe.notes[1]


def test_the_detection_estimate_is_reproducible_and_tolerance_slows_it() -> None:
    check = FAST.checks["errors-vs-stable"]
    first = timing.detection(FAST, check, runs=100)
    assert first == timing.detection(FAST, check, runs=100)
    lenient = timing.detection(FAST, check.__class__(**{**_fields(check), "tolerance": 0.8}))
    strict = timing.detection(FAST, check)
    assert lenient.detected < strict.detected
    # more traffic, sooner
    busy = timing.detection(FAST, check, rps=60)
    assert busy.detected >= strict.detected
    assert busy.median_seconds is not None and strict.median_seconds is not None
    assert busy.median_seconds < strict.median_seconds


def _fields(check: object) -> dict[str, object]:
    return {name: getattr(check, name) for name in check.__slots__}  # type: ignore[attr-defined]


def test_rule_files_may_be_absolute_paths_or_globs(tmp_path: Path) -> None:
    rules = tmp_path / "elsewhere"
    rules.mkdir()
    for name in ("a", "b"):
        (rules / f"{name}.yml").write_text(
            f"groups: [{{name: g, rules: [{{alert: {name.upper()}, expr: up == 0}}]}}]\n"
        )
    (tmp_path / "prometheus.yml").write_text(f"rule_files: ['{rules}/*.yml', '{rules}/a.yml']\n")
    pipe = read_pipeline(tmp_path / "canaryd.yaml")
    assert [a.name for a in pipe.alerts] == ["A", "B", "A"]
    assert pipe.notes == ()
