"""``canaryctl render``: every document is checked by the tool that will read it.

Prometheus rules by the real ``promtool`` and a real Prometheus that fires them against the demo
service; the dashboard's and the AnalysisTemplate's queries by a real Prometheus's parser (a
query that does not parse is answered 400 ``bad_data``); the AnalysisTemplate by the upstream
CRD's schema (Argo Rollouts v1.9.1, tests/upstream), closed like Kubernetes' pruning
would close it, so a misspelt key is an error rather than a silently dropped field.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from canaryd.config.policies import RULES_DIR, load_policy
from canaryd.ctl import main as ctl
from canaryd.offline import render
from support.procs import Proc, start_demo_service, start_prometheus, wait_for_up

REFERENCE = Path(__file__).resolve().parents[1] / "upstream" / "argo-rollouts"
POLICIES = sorted(RULES_DIR.glob("*.yaml"))
STANDARD = load_policy(RULES_DIR / "matriz-standard.yaml")


def _rendered(kind: str, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert ctl.main(["render", kind, *args]) == 0
    return capsys.readouterr().out


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is not installed: run `bash .ci/run` (Debian package prometheus)")
    return path


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    proc = start_prometheus(tmp_path_factory.mktemp("prom"), {})
    try:
        yield proc
    finally:
        proc.stop()


def _parse_error(prometheus: Proc, promql: str) -> str | None:
    """None if Prometheus accepts ``promql``; else its error (400 bad_data on a parse error)."""
    data = urllib.parse.urlencode({"query": promql}).encode()
    try:
        with urllib.request.urlopen(f"{prometheus.url}/api/v1/query", data, timeout=5) as answer:
            assert json.load(answer)["status"] == "success"
            return None
    except urllib.error.HTTPError as exc:
        body = json.load(exc)
        return f"{exc.code} {body.get('errorType')}: {body.get('error')}"


# --------------------------------------------------------------------------- prometheus-rules


def test_each_check_alerts_on_the_other_side_of_its_threshold() -> None:
    target = render.target_for(STANDARD, {"job": "web"})
    rules = render.prometheus_rules(STANDARD, target)["groups"][0]["rules"]
    bounds = {r["labels"]["canaryd_check"]: r["expr"].rsplit(")", 1)[1].strip() for r in rules}
    assert bounds == {
        "success-rate": "< 0.995",
        "latency-p95": "> 0.25",
        "error-rate": "> 0.001",
        "health-score": "< 0.98",
    }
    first = rules[0]
    assert first["alert"] == "CanarySuccessRateBreached"
    assert first["for"] == "30s"
    assert first["labels"]["severity"] == "critical"
    assert first["labels"]["job"] == "web" and first["labels"]["target"] == "web"
    assert 'job=~"web"' in first["expr"] and 'deployment=~"canary"' in first["expr"]
    assert "sum by (job, deployment)" in first["expr"] and "[2m]" in first["expr"]


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: p.stem)
def test_rules_of_every_shipped_policy_pass_promtool(
    policy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "rules.yaml"
    args = ["--policy", str(policy), "--label", "job=web", "--out", str(out)]
    assert ctl.main(["render", "prometheus-rules", *args]) == 0
    assert capsys.readouterr().out == ""
    check = subprocess.run(
        [_promtool(), "check", "rules", str(out)], capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS" in check.stdout


def test_a_failing_canary_fires_the_rendered_alert_in_prometheus(tmp_path: Path) -> None:
    # The shipped policy, sped up so the test sees a verdict in seconds.
    fast = dataclasses.replace(STANDARD, interval=1.0, window="10s")
    target = render.target_for(fast, {"job": "web"})
    rules = tmp_path / "canary.rules.yaml"
    rules.write_text(render.render("prometheus-rules", fast, target))
    canary = start_demo_service(deployment="canary", version="v2", error_rate=0.5, tmp=tmp_path)
    prometheus: Proc | None = None
    try:
        prometheus = start_prometheus(tmp_path, {"web": [f"127.0.0.1:{canary.port}"]}, [rules])
        wait_for_up(prometheus, "web", 1)
        deadline = time.monotonic() + 40
        states: dict[str, str] = {}
        while time.monotonic() < deadline and states.get("CanarySuccessRateBreached") != "firing":
            for _ in range(20):  # traffic, half of it failing
                with contextlib.suppress(urllib.error.HTTPError):  # the 500s
                    urllib.request.urlopen(canary.url + "/", timeout=2).close()
            with urllib.request.urlopen(f"{prometheus.url}/api/v1/alerts", timeout=5) as answer:
                alerts = json.load(answer)["data"]["alerts"]
            states = {a["labels"]["alertname"]: a["state"] for a in alerts}
            time.sleep(0.3)
        assert states.get("CanarySuccessRateBreached") == "firing", (states, prometheus.log())
        assert states.get("CanaryErrorRateBreached") in ("pending", "firing")
        fired = next(a for a in alerts if a["labels"]["alertname"] == "CanarySuccessRateBreached")
        assert fired["labels"]["deployment"] == "canary"
        assert fired["labels"]["target"] == "web" and fired["labels"]["severity"] == "critical"
        assert float(fired["value"]) < 0.995
    finally:
        if prometheus is not None:
            prometheus.stop()
        canary.stop()


# --------------------------------------------------------------------------- grafana


def _overlap(a: dict[str, int], b: dict[str, int]) -> bool:
    return (
        a["x"] < b["x"] + b["w"]
        and b["x"] < a["x"] + a["w"]
        and a["y"] < b["y"] + b["h"]
        and b["y"] < a["y"] + a["h"]
    )


def test_the_dashboard_has_a_panel_per_check_with_its_threshold(
    capsys: pytest.CaptureFixture[str],
) -> None:
    text = _rendered("grafana", capsys, "--policy", "matriz-standard", "--label", "job=web")
    dashboard = json.loads(text)
    assert dashboard["uid"] == "canaryd-matriz-standard"
    assert 30 <= dashboard["schemaVersion"] <= 41
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["datasource", "target"]
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    for i, a in enumerate(panels):
        assert a["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert a["targets"] and all(t["expr"] and t["refId"] for t in a["targets"])
        assert a["gridPos"]["x"] >= 0 and a["gridPos"]["x"] + a["gridPos"]["w"] <= 24
        for b in panels[i + 1 :]:
            assert not _overlap(a["gridPos"], b["gridPos"]), (a["title"], b["title"])
    by_title = {p["title"]: p for p in panels}
    success = by_title["check success-rate (>= 0.995)"]
    assert success["targets"][0]["legendFormat"] == "{{deployment}}"
    assert 'deployment=~"canary|stable"' in success["targets"][0]["expr"]
    assert success["fieldConfig"]["defaults"]["unit"] == "percentunit"
    steps = success["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert steps == [{"color": "red", "value": None}, {"color": "green", "value": 0.995}]
    latency = by_title["check latency-p95 (<= 0.25)"]["fieldConfig"]["defaults"]
    assert latency["thresholds"]["steps"][1] == {"color": "red", "value": 0.25}
    assert latency["unit"] == "s"
    exprs = [t["expr"] for p in panels for t in p["targets"]]
    assert any("canaryd_rollout_weight" in e for e in exprs)


# A config with two targets told apart by labels other than the policy's name.
CONFIG = """\
listen: 127.0.0.1:9870
state: {backend: sqlite, path: state.db}
prometheus: {url: 'http://127.0.0.1:9090'}
auth: {tokens_file: tokens.yaml, webhook: {bearer_token_file: webhook-token}}
targets:
  - name: checkout
    policy: matriz-standard
    platform: {kind: none}
    router: {kind: noop}
    labels: {job: shop, namespace: prod}
  - name: search
    policy: matriz-fast-track
    platform: {kind: none}
    router: {kind: noop}
    labels: {job: search-api}
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    (tmp_path / "tokens.yaml").write_text(
        "- {name: a, role: admin, token: admin-token-0123456789}\n"
    )
    (tmp_path / "webhook-token").write_text("webhook-token-0123456789\n")
    for secret in ("tokens.yaml", "webhook-token"):
        (tmp_path / secret).chmod(0o600)
    path = tmp_path / "canaryd.yaml"
    path.write_text(CONFIG)
    return path


def _dashboard(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(_rendered("grafana", capsys, *args))
    return doc


def _exprs(dashboard: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    return exprs + [a["expr"] for a in dashboard["annotations"]["list"] if "expr" in a]


def test_the_config_dashboard_uses_each_targets_own_labels(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dashboard = _dashboard(capsys, "--config", str(config))
    exprs = "\n".join(_exprs(dashboard))
    # as the daemon asks: the job matched, every label of the target grouped by
    assert 'job=~"shop"' in exprs and "sum by (job, namespace, deployment)" in exprs
    assert 'job=~"search\\-api"' in exprs or 'job=~"search-api"' in exprs
    assert "matriz-standard" not in exprs and "matriz-fast-track" not in exprs
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["target"]["type"] == "custom"
    assert [o["value"] for o in variables["target"]["options"]] == ["checkout", "search"]
    one = _dashboard(capsys, "--config", str(config), "--target", "search")
    assert [o["value"] for o in one["templating"]["list"][1]["options"]] == ["search"]
    assert 'job=~"shop"' not in "\n".join(_exprs(one))


def test_canary_beside_stable_with_units_weights_and_decisions(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dashboard = _dashboard(capsys, "--config", str(config))
    by_title = {p["title"]: p for p in dashboard["panels"]}
    units = {title: p["fieldConfig"]["defaults"]["unit"] for title, p in by_title.items()}
    assert units["Request rate"] == "reqps"
    assert units["Success rate"] == "percentunit"
    assert units["Latency P50 / P95 / P99"] == "s"
    assert units["Canary weight: asked vs measured"] == "percent"
    for title in ("Request rate", "Success rate", "Latency P50 / P95 / P99"):
        for target in by_title[title]["targets"]:
            assert 'deployment=~"canary|stable"' in target["expr"], title
            assert "{{deployment}}" in target["legendFormat"], title
    quantiles = by_title["Latency P50 / P95 / P99"]["targets"]
    assert [t["legendFormat"].split()[0] for t in quantiles] == ["P50", "P95", "P99"]
    assert all(
        f"histogram_quantile({q}," in t["expr"]
        for t, q in zip(quantiles, ("0.5", "0.95", "0.99"), strict=True)
    )
    weights = [t["expr"] for t in by_title["Canary weight: asked vs measured"]["targets"]]
    assert weights == [
        'canaryd_rollout_weight{target=~"$target"}',
        'canaryd_router_weight{target=~"$target"}',
        'canaryd_observed_weight{target=~"$target"}',
    ]
    annotations = {a["name"]: a for a in dashboard["annotations"]["list"]}
    assert "canaryd_rollout_phase" in annotations["phase"]["expr"]
    assert "canaryd_decisions_total" in annotations["decisions"]["expr"]
    assert annotations["rollbacks"]["iconColor"] == "red"


GRAFANA = Path(__file__).resolve().parents[1] / "upstream" / "grafana"


def _grafana_schema(name: str, definition: str | None = None) -> jsonschema.Draft7Validator:
    schema = json.loads((GRAFANA / f"{name}.jsonschema.json").read_text())
    if definition is not None:
        schema = {**schema, "$ref": f"#/definitions/{definition}"}
    return jsonschema.Draft7Validator(schema)


def test_the_dashboard_matches_grafanas_dashboard_schema(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No Grafana server can be installed here (Debian, PyPI and npm have none), so the JSON is
    held to Grafana's own schemas (grafana-foundation-sdk, tests/upstream/grafana): the
    dashboard, each timeseries panel's options and field config, each Prometheus query, and
    each unit against Grafana's unit ids. Every object there is closed, so a misspelt key fails."""
    dashboard = _dashboard(capsys, "--config", str(config))
    assert _errors(_grafana_schema("dashboard"), dashboard) == []
    options = _grafana_schema("timeseries", "Options")
    field = _grafana_schema("timeseries", "FieldConfig")
    query = _grafana_schema("prometheus")
    unit_ids = {
        d["const"]
        for d in json.loads((GRAFANA / "units.jsonschema.json").read_text())["definitions"].values()
        if "const" in d
    }
    for panel in dashboard["panels"]:
        assert panel["type"] == "timeseries"
        assert _errors(options, panel["options"]) == [], panel["title"]
        assert _errors(field, panel["fieldConfig"]["defaults"].get("custom", {})) == []
        assert panel["fieldConfig"]["defaults"]["unit"] in unit_ids, panel["title"]
        for target in panel["targets"]:
            assert _errors(query, target) == [], (panel["title"], target["refId"])
    broken = copy.deepcopy(dashboard)
    broken["panels"][0]["fieldConfig"]["defaults"]["unitt"] = "s"
    assert _errors(_grafana_schema("dashboard"), broken)  # the schema does catch a typo


def test_every_query_of_the_config_dashboard_parses_in_prometheus(
    config: Path, capsys: pytest.CaptureFixture[str], prometheus: Proc
) -> None:
    dashboard = _dashboard(capsys, "--config", str(config))
    for expr in _exprs(dashboard):
        chosen = expr.replace("$target", "checkout")  # as Grafana fills the variable
        assert _parse_error(prometheus, chosen) is None, expr


def test_the_target_variable_keeps_only_the_chosen_targets_series(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], prometheus: Proc
) -> None:
    """Two targets whose check yields one series per job: with ``$target`` filled as Grafana
    fills it, the panel's query answers for that target only, tagged with its name."""
    (tmp_path / "own.yaml").write_text(
        "name: own\nchecks:\n  up-rate:\n    query: 'sum by ({{group}}) "
        '(label_replace(vector(1), "job", "{{job}}", "", ""))\'\n'
        "    threshold: 1\nstages:\n  - {weight: 100, duration: 0s, checks: [up-rate]}\n"
    )
    for secret, text in (
        ("tokens.yaml", "- {name: a, role: admin, token: admin-token-0123456789}\n"),
        ("webhook-token", "webhook-token-0123456789\n"),
    ):
        (tmp_path / secret).write_text(text)
        (tmp_path / secret).chmod(0o600)
    cfg = tmp_path / "canaryd.yaml"
    cfg.write_text(
        CONFIG.split("targets:")[0]
        + "targets:\n"
        + "".join(
            f"  - {{name: {n}, policy: own.yaml, platform: {{kind: none}}, router: {{kind: noop}},"
            f" labels: {{job: {j}}}}}\n"
            for n, j in (("a", "shop"), ("b", "search"))
        )
    )
    dashboard = _dashboard(capsys, "--config", str(cfg))
    panel = next(p for p in dashboard["panels"] if p["title"].startswith("check up-rate"))
    expr = panel["targets"][0]["expr"]
    for name, job in (("a", "shop"), ("b", "search")):
        answer = _query(prometheus, expr.replace("$target", name))
        assert [(r["metric"]["canaryd_target"], r["metric"]["job"]) for r in answer] == [
            (name, job)
        ]


def _query(prometheus: Proc, promql: str) -> list[dict[str, Any]]:
    data = urllib.parse.urlencode({"query": promql}).encode()
    with urllib.request.urlopen(f"{prometheus.url}/api/v1/query", data, timeout=5) as answer:
        result: list[dict[str, Any]] = json.load(answer)["data"]["result"]
    return result


def test_every_dashboard_and_analysis_query_parses_in_prometheus(prometheus: Proc) -> None:
    assert _parse_error(prometheus, "sum by (job (up)") is not None  # the check can fail
    for path in POLICIES:
        policy = load_policy(path)
        target = render.target_for(policy, {"job": "web"})
        dashboard = render.grafana_dashboard(policy, target)
        exprs = [e.replace("$target", "web") for e in _exprs(dashboard)]
        analysis = render.argo_analysis(policy, target)
        exprs += [m["provider"]["prometheus"]["query"] for m in analysis["spec"]["metrics"]]
        for expr in exprs:
            assert _parse_error(prometheus, expr) is None, (path.name, expr)


def test_dashboard_uids_stay_within_grafanas_limit() -> None:
    assert render.dashboard_uid("web") == "canaryd-web"
    long = render.dashboard_uid("a very long policy name " * 4)
    assert len(long) <= 40 and long.startswith("canaryd-a-very-long")
    assert long != render.dashboard_uid("a very long policy name " * 5)


# --------------------------------------------------------------------------- argo-analysis


def _closed(schema: Any) -> Any:
    """The schema with every object that lists its properties closed to others, as Kubernetes'
    structural pruning drops unknown fields (unless preserve-unknown-fields says otherwise)."""
    if isinstance(schema, dict):
        out = {k: _closed(v) for k, v in schema.items()}
        if (
            "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_closed(v) for v in schema]
    return schema


def _crd_validator(name: str) -> jsonschema.Draft7Validator:
    crd = yaml.safe_load((REFERENCE / name).read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1")
    schema = _closed(version["schema"]["openAPIV3Schema"])
    schema["properties"]["metadata"].pop("additionalProperties", None)
    return jsonschema.Draft7Validator(schema)


def _errors(validator: jsonschema.Draft7Validator, doc: Any) -> list[str]:
    return [
        f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)
    ]


def test_the_validator_accepts_upstream_examples_and_rejects_mistakes() -> None:
    example = yaml.safe_load((REFERENCE / "rollout-canary.example.yaml").read_text())
    assert _errors(_crd_validator("rollout-crd.yaml"), example) == []
    validator = _crd_validator("analysis-template-crd.yaml")
    good = render.argo_analysis(STANDARD, render.target_for(STANDARD, {}))
    assert _errors(validator, good) == []
    for mistake in (
        lambda m: m.pop("provider"),
        lambda m: m.update(sucessCondition="result[0] > 1"),
        lambda m: m.update(failureLimit=[1]),
        lambda m: m["provider"]["prometheus"].update(adress="http://x"),
    ):
        bad = copy.deepcopy(good)
        mistake(bad["spec"]["metrics"][0])
        assert _errors(validator, bad), bad["spec"]["metrics"][0]


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: p.stem)
def test_analysis_templates_match_the_argo_crd(
    policy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = _rendered("argo-analysis", capsys, "--policy", str(policy), "--label", "job=web")
    doc = yaml.safe_load(text)
    assert _errors(_crd_validator("analysis-template-crd.yaml"), doc) == []
    assert doc["apiVersion"] == "argoproj.io/v1alpha1" and doc["kind"] == "AnalysisTemplate"
    loaded = load_policy(policy)
    metrics = doc["spec"]["metrics"]
    thresholds = [c.name for c in loaded.checks.values() if c.kind == "threshold"]
    assert [m["name"] for m in metrics] == thresholds  # compare checks have no Argo form
    for m in metrics:
        assert m["failureLimit"] == loaded.limits.failure_limit
        assert m["inconclusiveLimit"] == loaded.limits.inconclusive_limit - 1
        assert m["provider"]["prometheus"]["address"] == render.DEFAULT_PROMETHEUS


def test_analysis_conditions_follow_each_checks_operator_and_no_data() -> None:
    policy = dataclasses.replace(
        STANDARD,
        checks={
            **STANDARD.checks,
            "error-rate": dataclasses.replace(
                STANDARD.checks["error-rate"], no_data=render.NoData.FAIL
            ),
        },
    )
    doc = render.argo_analysis(policy, render.target_for(policy, {}), "http://prom:9090")
    by_name = {m["name"]: m for m in doc["spec"]["metrics"]}
    success = by_name["success-rate"]
    assert success["successCondition"] == "len(result) > 0 && all(result, {# >= 0.995})"
    assert success["failureCondition"] == "len(result) > 0 && any(result, {# < 0.995})"
    assert success["interval"] == "30s"
    assert success["provider"]["prometheus"]["address"] == "http://prom:9090"
    errors = by_name["error-rate"]
    assert errors["successCondition"] == "len(result) > 0 && all(result, {# <= 0.001})"
    assert errors["failureCondition"] == "len(result) == 0 || any(result, {isNaN(#) || # > 0.001})"


# --------------------------------------------------------------------------- the command


def test_without_labels_the_job_is_the_policys_name(capsys: pytest.CaptureFixture[str]) -> None:
    text = _rendered("argo-analysis", capsys, "--policy", "matriz-fast-track")
    assert 'job=~"matriz-fast-track"' in text


def test_label_values_are_matched_literally(capsys: pytest.CaptureFixture[str]) -> None:
    args = ("--policy", "matriz-standard", "--label", "job=api.v1", "--label", "env=prod")
    rules = yaml.safe_load(_rendered("prometheus-rules", capsys, *args))["groups"][0]["rules"]
    assert 'job=~"api\\\\.v1"' in rules[0]["expr"]
    assert "sum by (env, job, deployment)" in rules[0]["expr"]
    assert rules[0]["labels"]["env"] == "prod" and rules[0]["labels"]["target"] == "api.v1"


def test_out_replaces_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "dashboard.json"
    out.write_text("old")
    assert ctl.main(["render", "grafana", "--policy", "matriz-standard", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["uid"] == "canaryd-matriz-standard"
    assert capsys.readouterr().out == ""
    assert list(tmp_path.iterdir()) == [out]


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["nagios", "--policy", "matriz-standard"], "invalid choice"),
        (["grafana", "--policy", "no-such-policy"], "no-such-policy"),
        (["grafana", "--policy", "matriz-standard", "--label", "job"], "NAME=VALUE"),
        (["grafana", "--policy", "matriz-standard", "--label", "1x=a"], "label name"),
        (["grafana", "--policy", "matriz-standard", "--label", "window=5m"], "{{window}}"),
    ],
)
def test_bad_arguments_exit_2_saying_what_is_wrong(
    args: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        code = ctl.main(["render", *args])
    except SystemExit as exc:  # argparse's own errors
        code = exc.code  # type: ignore[assignment]
    captured = capsys.readouterr()
    assert code == 2
    assert said in captured.err and captured.out == ""


def test_the_installed_command_renders(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "canaryd.ctl",
            "render",
            "prometheus-rules",
            "--policy",
            "matriz-fast-track",
            "--label",
            "job=web",
            "--severity",
            "page",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    rules = yaml.safe_load(done.stdout)["groups"][0]["rules"]
    assert {r["labels"]["severity"] for r in rules} == {"page"}


def test_yaml_documents_say_their_windows_are_not_clipped_to_a_rollout() -> None:
    """The daemon and replay clip windows to the rollout's age (core.scope); a rule file or an
    AnalysisTemplate has no rollout, keeps the policy's window, and says so first."""
    from canaryd.offline.queries import target_for

    policy = load_policy(RULES_DIR / "matriz-fast-track.yaml")
    target = target_for(policy, {"job": "lukhas-matriz-canary"})
    for kind in ("prometheus-rules", "argo-analysis"):
        text = render.render(kind, policy, target)
        first = text.splitlines()[0]
        assert first.startswith(f"# Windows are the policy's ({policy.window})"), first
        assert "[2m]" in text  # as written
        yaml.safe_load(text)  # still one YAML document
