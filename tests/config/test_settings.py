"""The config loader: typed settings from a good file, every problem named from a bad one."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import pytest

from canaryd.adapters.platforms.docker_config import DockerConfig
from canaryd.adapters.platforms.none import NoneConfig
from canaryd.adapters.routers.gateway_api import GatewayApiConfig
from canaryd.adapters.routers.nginx import NginxConfig
from canaryd.adapters.routers.noop import NoopConfig
from canaryd.adapters.routers.traefik_file import TraefikFileConfig
from canaryd.app import KINDS, load_config
from canaryd.config import settings as config_settings
from canaryd.config.policies import RULES_DIR, load_policy
from canaryd.config.settings import KubernetesState, SqliteState, load_tokens
from canaryd.core.errors import ConfigError
from canaryd.core.model import Matcher

REPO = Path(__file__).resolve().parents[2]
SHIPPED_CONFIG = REPO / "config" / "canaryd.yaml"


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return [str(p) for p in caught.value.problems]


def config(tmp_path: Path, targets: str, head: str = "") -> Path:
    """A config in ``tmp_path`` with a valid head unless ``head`` replaces it."""
    head = (
        head
        or """\
        listen: 127.0.0.1:9870
        prometheus: {url: http://127.0.0.1:9090, timeout: 5s}
        """
    )
    return write(tmp_path / "canaryd.yaml", textwrap.dedent(head) + textwrap.dedent(targets))


ONE_TARGET = """\
    targets:
      - name: web
        policy: matriz-fast-track
        platform: {kind: none}
        router: {kind: noop}
    """


# --------------------------------------------------------------------------- good configs


def test_the_shipped_config_loads_the_fast_track_policy_for_the_matriz_target() -> None:
    settings = load_config(SHIPPED_CONFIG)
    target = settings.target("lukhas-matriz-orchestrator")
    assert str(settings.listen) == "127.0.0.1:9870"
    assert settings.state == SqliteState(Path("/var/lib/canaryd/state.db"))
    assert settings.prometheus.url == "http://127.0.0.1:9090"
    assert settings.prometheus.timeout == 5.0
    assert target.platform == DockerConfig(service="matriz")
    assert target.router == TraefikFileConfig(path=Path("/etc/traefik/dynamic/matriz.yml"))
    assert target.job == "lukhas-matriz-canary"
    assert settings.policies["lukhas-matriz-orchestrator"].name == "matriz-fast-track"
    assert settings.policies["lukhas-matriz-orchestrator"].total_duration == 17 * 60


def test_secret_files_that_do_not_exist_yet_are_warnings_not_errors(tmp_path: Path) -> None:
    path = config(
        tmp_path,
        ONE_TARGET,
        head="""\
        prometheus: {url: http://127.0.0.1:9090}
        auth: {tokens_file: missing-tokens.yaml, webhook: {bearer_token_file: /nope/token}}
        """,
    )
    settings = load_config(path)
    assert settings.auth.tokens_file == tmp_path / "missing-tokens.yaml"
    assert [w.path for w in settings.warnings] == [
        "auth.tokens_file",
        "auth.webhook.bearer_token_file",
    ]


def test_defaults_fill_only_what_was_left_out(tmp_path: Path) -> None:
    path = config(tmp_path, ONE_TARGET, head="prometheus: {url: 'http://prom:9090/'}\n")
    settings = load_config(path)
    assert str(settings.listen) == "127.0.0.1:9870"
    assert isinstance(settings.state, SqliteState)
    assert settings.prometheus.url == "http://prom:9090"
    assert settings.prometheus.timeout == 5.0
    target = settings.targets[0]
    assert target.platform == NoneConfig()
    assert target.router == NoopConfig()
    assert target.job == "web"
    assert target.labels == {"job": "web"}


def test_every_kind_of_platform_router_and_state_reads_into_its_own_type(tmp_path: Path) -> None:
    path = config(
        tmp_path,
        """\
        targets:
          - name: k8s
            policy: matriz-standard
            platform: {kind: kubernetes, deployment: api, namespace: shop}
            router: {kind: gateway-api, name: api, stable_service: api, canary_service: api-canary}
            labels: {job: api}
            alert_matchers: ['service=~"api.*"', 'env="prod"']
          - name: host
            policy: matriz-conservative
            platform: {kind: docker, labels: {app: host}}
            router:
              kind: nginx
              path: nginx/host.conf
              reload_command: "nginx -s reload"
              stable_servers: [10.0.0.5:8080, "[fd00::6]:8080"]
              canary_servers: [host-canary.internal:8080]
        """,
        head="""\
        listen: "[::1]:9999"
        state: {backend: kubernetes, namespace: canaryd}
        prometheus: {url: https://prom.example:9090}
        """,
    )
    # this build refuses the kubernetes backend (tests/config/test_check_serve_agree.py); a
    # build that runs it reads it into its type
    runs_it = dataclasses.replace(KINDS, state_backends={"sqlite": "", "kubernetes": ""})
    settings = config_settings.load_config(path, runs_it)
    assert (settings.listen.host, settings.listen.port) == ("::1", 9999)
    assert settings.state == KubernetesState(namespace="canaryd")
    k8s, host = settings.targets
    assert k8s.router == GatewayApiConfig(
        name="api", stable_service="api", canary_service="api-canary", namespace="default"
    )
    assert k8s.alert_matchers == (Matcher("service", "=~", "api.*"), Matcher("env", "=", "prod"))
    assert k8s.concerns({"service": "api-v2", "env": "prod"})
    assert not k8s.concerns({"service": "api-v2", "env": "dev"})
    assert host.platform == DockerConfig(labels={"app": "host"})
    assert host.router == NginxConfig(
        path=tmp_path / "nginx" / "host.conf",
        reload_command=("nginx", "-s", "reload"),
        stable_servers=("10.0.0.5:8080", "[fd00::6]:8080"),
        canary_servers=("host-canary.internal:8080",),
    )
    assert host.concerns({"job": "host"}) and not host.concerns({"job": "other"})
    assert set(settings.policies) == {"k8s", "host"}


def test_a_policy_given_as_a_path_is_relative_to_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "policies").mkdir()
    policy = (RULES_DIR / "matriz-fast-track.yaml").read_text(encoding="utf-8")
    (tmp_path / "policies" / "mine.yaml").write_text(
        policy.replace("name: matriz-fast-track", "name: mine"), encoding="utf-8"
    )
    path = config(tmp_path, ONE_TARGET.replace("matriz-fast-track", "policies/mine.yaml"))
    assert load_config(path).policies["web"].name == "mine"


def test_a_bare_policy_name_is_looked_up_in_rules_beside_the_config_first(tmp_path: Path) -> None:
    (tmp_path / "rules").mkdir()
    policy = (RULES_DIR / "matriz-fast-track.yaml").read_text(encoding="utf-8")
    (tmp_path / "rules" / "local.yaml").write_text(policy, encoding="utf-8")
    path = config(tmp_path, ONE_TARGET.replace("matriz-fast-track", "local"))
    assert load_config(path).targets[0].policy_file == tmp_path / "rules" / "local.yaml"


@pytest.mark.parametrize("policy", sorted(RULES_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_policy_loads(policy: Path) -> None:
    loaded = load_policy(policy)
    assert loaded.name == policy.stem
    assert loaded.stages and loaded.checks


def test_the_example_tokens_file_is_valid() -> None:
    tokens = load_tokens(REPO / "config" / "tokens.example.yaml")
    assert {t.role for t in tokens} == {"viewer", "operator", "admin"}


# --------------------------------------------------------------------------- bad configs


def test_three_different_mistakes_are_all_named_with_file_and_key_path(tmp_path: Path) -> None:
    path = config(
        tmp_path,
        """\
        targets:
          - name: web
            policy: matriz-fast-track
            platform: {kind: none}
            router: {kind: traefik-fle, path: /etc/traefik/web.yml}
        """,
        head="""\
        lisen: 127.0.0.1:9870
        prometheus: {url: http://127.0.0.1:9090, timeout: five seconds}
        """,
    )
    problems = problems_of(path)
    assert f"{path}: lisen: unknown key (did you mean 'listen'?)" in problems
    assert any(p.startswith(f"{path}: prometheus.timeout: expected a duration") for p in problems)
    assert any(
        p.startswith(f"{path}: targets[0].router.kind: unknown router kind 'traefik-fle'")
        and "did you mean 'traefik-file'" in p
        and "gateway-api, traefik-service, argo-rollouts, nginx-ingress, traefik-file, nginx, noop"
        in p
        for p in problems
    )
    assert len(problems) == 3


def test_wrong_types_are_reported_where_they_are(tmp_path: Path) -> None:
    path = config(
        tmp_path,
        """\
        targets:
          - name: web
            policy: matriz-fast-track
            platform: {kind: kubernetes, deployment: [web]}
            router:
              kind: nginx
              path: /etc/nginx/web.conf
              reload_command: 7
              stable_servers: [127.0.0.1:8080]
              canary_servers: 127.0.0.1:8081
            labels: {job: 42}
            alert_matchers: severity
        """,
        head="""\
        listen: 9870
        state: sqlite
        prometheus: {url: http://127.0.0.1:9090, timeout: true}
        """,
    )
    found = {p.split(": ")[1] for p in problems_of(path)}
    assert found == {
        "listen",
        "state",
        "prometheus.timeout",
        "targets[0].platform.deployment",
        "targets[0].router.reload_command",
        "targets[0].router.canary_servers",
        "targets[0].labels.job",
        "targets[0].alert_matchers",
    }


def test_keys_of_another_kind_and_missing_required_keys_are_errors(tmp_path: Path) -> None:
    path = config(
        tmp_path,
        """\
        targets:
          - name: web
            policy: matriz-fast-track
            platform: {kind: docker}
            router: {kind: gateway-api, name: web, namespce: shop, path: /x}
        """,
    )
    problems = problems_of(path)
    assert any("targets[0].platform: needs exactly one of service" in p for p in problems)
    assert any(
        "targets[0].router.namespce: unknown key for router kind gateway-api "
        "(did you mean 'namespace'?" in p
        for p in problems
    )
    assert any(
        "targets[0].router.path: unknown key for router kind gateway-api" in p for p in problems
    )
    assert any("targets[0].router.stable_service: required key is missing" in p for p in problems)
    assert any("targets[0].router.canary_service: required key is missing" in p for p in problems)


def test_the_nginx_router_needs_both_server_lists(tmp_path: Path) -> None:
    path = config(
        tmp_path,
        """\
        targets:
          - name: web
            policy: matriz-fast-track
            platform: {kind: none}
            router: {kind: nginx, path: /etc/nginx/web.conf, canary_servers: []}
        """,
    )
    problems = problems_of(path)
    assert f"{path}: targets[0].router.stable_servers: required key is missing" in problems
    assert any(
        p.startswith(
            f"{path}: targets[0].router.canary_servers: expected a non-empty list of host:port"
        )
        for p in problems
    )
    assert len(problems) == 2


def test_the_traefik_file_router_reads_its_rule_entry_points_and_other_providers_services(
    tmp_path: Path,
) -> None:
    path = config(
        tmp_path,
        """\
        targets:
          - name: web
            policy: matriz-fast-track
            platform: {kind: none}
            router:
              kind: traefik-file
              path: dynamic/web.yaml
              service: shop
              stable_service: shop-v1@docker
              canary_service: shop-v2@docker
              rule: "Host(`shop.example.com`) && PathPrefix(`/api`)"
              entry_points: [web, websecure]
        """,
    )
    assert load_config(path).targets[0].router == TraefikFileConfig(
        path=tmp_path / "dynamic" / "web.yaml",
        service="shop",
        stable_service="shop-v1@docker",
        canary_service="shop-v2@docker",
        rule="Host(`shop.example.com`) && PathPrefix(`/api`)",
        entry_points=("web", "websecure"),
    )


@pytest.mark.parametrize("name", ["web.json", "web.toml", "web"])
def test_a_traefik_file_with_a_suffix_traefik_would_skip_is_refused(
    tmp_path: Path, name: str
) -> None:
    path = config(
        tmp_path,
        f"""\
        targets:
          - name: web
            policy: matriz-fast-track
            platform: {{kind: none}}
            router: {{kind: traefik-file, path: /etc/traefik/dynamic/{name}}}
        """,
    )
    [problem] = problems_of(path)
    assert problem.startswith(
        f"{path}: targets[0].router.path: must end in .yml or .yaml, got {name!r}"
    )
    assert "Traefik's file provider skips" in problem


def test_bad_traefik_file_names_rules_and_entry_points_are_each_named(tmp_path: Path) -> None:
    path = config(
        tmp_path,
        """\
        targets:
          - name: web
            policy: matriz-fast-track
            platform: {kind: none}
            router:
              kind: traefik-file
              path: /etc/traefik/dynamic/web.yml
              service: shop@file
              stable_service: "web stable"
              canary_service: web-canary@
              rule: ""
              entry_points: []
              entrypoints: [web]
          - name: api
            policy: matriz-fast-track
            platform: {kind: none}
            router:
              kind: traefik-file
              path: /etc/traefik/dynamic/api.yml
              stable_service: api-v1
              canary_service: api-v1
              rule: "Host(`a`)\\n|| Host(`b`)"
        """,
    )
    problems = problems_of(path)
    where = f"{path}: targets[0].router"
    expected = [
        f"{where}.entrypoints: unknown key for router kind traefik-file (did you mean "
        "'entry_points'?",
        f"{where}.service: 'shop@file' is not a valid name",
        f"{where}.stable_service: 'web stable' is not a Traefik service name",
        f"{where}.canary_service: 'web-canary@' is not a Traefik service name",
        f"{where}.rule: expected a non-empty string",
        f"{path}: targets[1].router.rule: expected a Traefik rule on one line",
        f"{where}.entry_points: expected a non-empty list of entry point names",
        f"{path}: targets[1].router.canary_service: is the stable service too ('api-v1')",
    ]
    for start in expected:
        assert any(p.startswith(start) for p in problems), (start, problems)
    assert len(problems) == len(expected), problems


def test_each_bad_nginx_server_address_is_named_by_its_index(tmp_path: Path) -> None:
    path = config(
        tmp_path,
        """\
        targets:
          - name: web
            policy: matriz-fast-track
            platform: {kind: none}
            router:
              kind: nginx
              path: /etc/nginx/web.conf
              stable_servers: [127.0.0.1:8080, "web; include /etc/passwd:80", 8080]
              canary_servers: [127.0.0.1:99999, 127.0.0.1:8080, 127.0.0.1:9090, 127.0.0.1:9090]
        """,
    )
    problems = problems_of(path)
    where = f"{path}: targets[0].router"
    assert problems == [
        f"{where}.stable_servers[1]: expected host:port such as 127.0.0.1:8080 or "
        "web-1.internal:8080, got 'web; include /etc/passwd:80'",
        f"{where}.stable_servers[2]: expected host:port such as 127.0.0.1:8080 or "
        "web-1.internal:8080, got 8080",
        f"{where}.canary_servers[0]: port must be within 1..65535, got '127.0.0.1:99999'",
        f"{where}.canary_servers[1]: '127.0.0.1:8080' is also a stable server",
        f"{where}.canary_servers[3]: '127.0.0.1:9090' is listed twice",
    ]


def test_docker_canary_ports_read_like_compose_ports_on_loopback_by_default(
    tmp_path: Path,
) -> None:
    path = config(
        tmp_path,
        """\
        targets:
          - name: web
            policy: matriz-fast-track
            router: {kind: noop}
            platform:
              kind: docker
              service: web
              probe_path: /healthz
              canary_ports: ["18080:8080", "0.0.0.0:18443:8443/tcp", "[::1]:15353:53/udp"]
        """,
    )
    [target] = load_config(path).targets
    assert target.platform == DockerConfig(
        service="web",
        probe_path="/healthz",
        canary_ports={
            "8080/tcp": ("127.0.0.1", 18080),
            "8443/tcp": ("0.0.0.0", 18443),
            "53/udp": ("::1", 15353),
        },
    )


def test_each_bad_docker_canary_port_is_named_by_its_index(tmp_path: Path) -> None:
    path = config(
        tmp_path,
        """\
        targets:
          - name: web
            policy: matriz-fast-track
            router: {kind: noop}
            platform:
              kind: docker
              service: web
              canary_ports: ["18080:8080", 8080, "18081:99999", "18082:8080", "a:b:c"]
          - name: api
            policy: matriz-fast-track
            router: {kind: noop}
            platform: {kind: docker, service: api, canary_ports: "18080:8080"}
        """,
    )
    where = f"{path}: targets[0].platform.canary_ports"
    assert problems_of(path) == [
        f"{where}[1]: expected [IP:]HOST_PORT:CONTAINER_PORT[/tcp|udp] such as "
        "127.0.0.1:18080:8080, got 8080",
        f"{where}[2]: ports must be within 1..65535, got '18081:99999'",
        f"{where}[3]: container port 8080/tcp is published twice",
        f"{where}[4]: expected [IP:]HOST_PORT:CONTAINER_PORT[/tcp|udp] such as "
        "127.0.0.1:18080:8080, got 'a:b:c'",
        f"{path}: targets[1].platform.canary_ports: expected a list such as "
        "['127.0.0.1:18080:8080'], got '18080:8080'",
    ]


def test_duplicate_target_names_and_shared_router_files_are_refused(tmp_path: Path) -> None:
    target = """\
          - name: web
            policy: matriz-fast-track
            platform: {kind: none}
            router: {kind: traefik-file, path: /etc/traefik/web.yml}
        """
    path = config(tmp_path, "targets:\n" + textwrap.dedent(target) * 2)
    problems = problems_of(path)
    assert f"{path}: targets[1].name: duplicate target name 'web' (also targets[0])" in problems
    assert any(p.startswith(f"{path}: targets[1].router: targets[0] already") for p in problems)


def test_a_missing_policy_names_the_ones_that_exist(tmp_path: Path) -> None:
    path = config(tmp_path, ONE_TARGET.replace("matriz-fast-track", "matriz-fastrack"))
    [problem] = problems_of(path)
    assert problem.startswith(f"{path}: targets[0].policy: no policy named 'matriz-fastrack'")
    assert "matriz-fast-track" in problem and "matriz-standard" in problem


def test_problems_inside_a_policy_are_reported_against_the_policy_file(tmp_path: Path) -> None:
    policy = write(
        tmp_path / "broken.yaml",
        """\
        interval: 30s
        checks:
          x: {query: 'up{job="{{jbo}}"}', op: ">=", threshold: 1}
        stages:
          - {weight: 50, duration: 1m, checks: [x]}
          - {weight: 25, duration: 1m, checks: [x]}
        """,
    )
    path = config(tmp_path, ONE_TARGET.replace("matriz-fast-track", str(policy)))
    problems = problems_of(path)
    assert any(p.startswith(f"{policy}: stages[1].weight: weights must increase") for p in problems)
    assert any(
        p.startswith(f"{policy}: checks.x.query: unknown template variable {{{{jbo}}}}")
        for p in problems
    )


def test_a_malformed_tokens_file_is_an_error_that_never_echoes_a_secret(tmp_path: Path) -> None:
    write(
        tmp_path / "tokens.yaml",
        """\
        - {name: ci, role: root, token: hunter2}
        - {name: ci, role: admin}
        """,
    )
    path = config(
        tmp_path,
        ONE_TARGET,
        head="""\
        prometheus: {url: http://127.0.0.1:9090}
        auth: {tokens_file: tokens.yaml}
        """,
    )
    problems = problems_of(path)
    assert not any("hunter2" in p for p in problems)
    paths = {p.split(": ")[1] for p in problems}
    assert paths == {"[0].role", "[0].token", "[1].name", "[1]"}


def test_an_unreadable_or_empty_config_is_one_clear_problem(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    assert problems_of(missing) == [f"{missing}: (top): cannot read: No such file or directory"]
    broken = write(tmp_path / "broken.yaml", "targets: [\n")
    [problem] = problems_of(broken)
    assert problem.startswith(f"{broken}: (top): not valid YAML")


def test_a_stage_check_that_is_not_a_name_is_reported_at_its_list_index(tmp_path: Path) -> None:
    policy = write(
        tmp_path / "typo.yaml",
        """\
        checks:
          x: {query: 'up{job="{{job}}"}', threshold: 1}
        stages:
          - {weight: 50, duration: 1m, checks: [x, 7]}
        """,
    )
    path = config(tmp_path, ONE_TARGET.replace("matriz-fast-track", str(policy)))
    assert problems_of(path) == [
        f"{policy}: stages[0].checks[1]: expected a non-empty string, got int 7"
    ]
