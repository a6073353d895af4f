"""The docker platform's pure parts: which image a bare tag means, which labels a canary never
carries, what the canary is called, and how the config says so (errors name the key)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from canaryd.adapters.platforms.docker import DockerEnginePlatform, build
from canaryd.adapters.platforms.docker_clone import without_prefixes
from canaryd.adapters.platforms.docker_config import (
    ALWAYS_STRIPPED,
    DockerConfig,
    canary_name,
    check_canary_name,
)
from canaryd.adapters.platforms.images import is_bare_tag, repository, resolve_image
from canaryd.app import load_config
from canaryd.core.errors import ConfigError

DIGEST = "sha256:" + "ab" * 32

# --------------------------------------------------------------------------- image references


@pytest.mark.parametrize(
    ("reference", "repo"),
    [
        ("matriz:v2.0.0", "matriz"),
        ("lukhas/matriz:v2.0.0", "lukhas/matriz"),
        ("registry.example.com/lukhas/matriz:v2.0.0", "registry.example.com/lukhas/matriz"),
        (
            "registry.example.com:5000/lukhas/matriz:v2.0.0",
            "registry.example.com:5000/lukhas/matriz",
        ),
        ("registry.example.com:5000/lukhas/matriz", "registry.example.com:5000/lukhas/matriz"),
        ("localhost:5000/matriz", "localhost:5000/matriz"),
        (f"lukhas/matriz@{DIGEST}", "lukhas/matriz"),
        (f"host:5000/lukhas/matriz:v2@{DIGEST}", "host:5000/lukhas/matriz"),
        ("busybox", "busybox"),
        (DIGEST, None),  # an image id: no repository to put a tag in
        ("0123456789ab", None),
    ],
)
def test_the_repository_of_a_reference_keeps_a_registry_port_and_drops_tag_and_digest(
    reference: str, repo: str | None
) -> None:
    assert repository(reference) == repo


@pytest.mark.parametrize(
    ("asked", "stable", "runs"),
    [
        # the runbook's --image=v2.1.0: the stable's repository at that tag
        (
            "v2.1.0",
            "registry.example.com:5000/lukhas/matriz:v2.0.0",
            "registry.example.com:5000/lukhas/matriz:v2.1.0",
        ),
        (":v2.1.0", "lukhas/matriz:v2.0.0", "lukhas/matriz:v2.1.0"),
        ("v2.1.0", f"lukhas/matriz@{DIGEST}", "lukhas/matriz:v2.1.0"),
        ("latest", "localhost:5000/matriz", "localhost:5000/matriz:latest"),
        # anything with a repository, a registry or a digest is used as given
        ("other/app:v3", "lukhas/matriz:v2.0.0", "other/app:v3"),
        ("matriz:v3", "lukhas/matriz:v2.0.0", "matriz:v3"),
        ("host:5000/lukhas/matriz", "lukhas/matriz:v2.0.0", "host:5000/lukhas/matriz"),
        (f"lukhas/matriz@{DIGEST}", "lukhas/matriz:v2.0.0", f"lukhas/matriz@{DIGEST}"),
    ],
)
def test_a_bare_tag_resolves_against_the_stables_repository_and_a_reference_is_kept(
    asked: str, stable: str, runs: str
) -> None:
    assert resolve_image(asked, stable) == runs


def test_a_tag_cannot_resolve_against_an_image_id_or_be_malformed() -> None:
    with pytest.raises(ValueError, match=r"the stable runs 'sha256:ab.*an image id"):
        resolve_image("v2.1.0", DIGEST)
    with pytest.raises(ValueError, match="':-bad' is not a valid image tag"):
        resolve_image(":-bad", "lukhas/matriz:v1")
    assert is_bare_tag("v2.1.0") and is_bare_tag(":v2.1.0") and is_bare_tag("nginx")
    assert not any(map(is_bare_tag, ("matriz:v2", "a/b", f"x@{DIGEST}", "", "-x")))


# --------------------------------------------------------------------------- labels


def test_the_canary_never_carries_compose_or_traefik_labels_nor_the_configured_prefixes() -> None:
    labels = {
        "com.docker.compose.service": "matriz",
        "traefik.enable": "true",
        "traefik.http.services.matriz-stable.loadbalancer.server.port": "8080",
        "caddy": "matriz.example.com",
        "caddy.reverse_proxy": "{{upstreams 8080}}",
        "team": "web",
        "traefikish": "kept: not under the traefik. prefix",
    }
    prefixes = (*ALWAYS_STRIPPED, "caddy")
    assert without_prefixes(labels, prefixes) == {
        "team": "web",
        "traefikish": "kept: not under the traefik. prefix",
    }
    platform = DockerEnginePlatform("web", service="web", strip_labels=("caddy",))
    assert platform.strip_labels == ("com.docker.compose.", "traefik.", "caddy")


# --------------------------------------------------------------------------- the canary's name


def test_the_canary_name_pattern_fills_target_service_and_project() -> None:
    assert canary_name("{target}-canary", target="t", service="s", project=None) == "t-canary"
    runbook = canary_name(
        "lukhas-{service}-canary",
        target="lukhas-matriz-orchestrator",
        service="matriz",
        project=None,
    )
    assert runbook == "lukhas-matriz-canary"  # the runbook's `docker logs lukhas-matriz-canary`
    platform = DockerEnginePlatform(
        "orch", service="matriz", project="shop", canary_name_pattern="{project}_{service}_canary"
    )
    assert platform.canary_name == "shop_matriz_canary"
    assert DockerEnginePlatform("web", labels={"app": "web"}).canary_name == "web-canary"


@pytest.mark.parametrize(
    ("pattern", "unset", "message"),
    [
        ("{name}-canary", [], "unknown placeholder {name} in '{name}-canary'; use {target}, "),
        ("{target!r}", [], "unknown placeholder {target}"),
        ("{target:>9}", [], "unknown placeholder {target}"),
        ("{target", [], "is not a valid pattern"),
        ("{service}-canary", ["service"], "uses {service}, but the platform sets no service"),
        ("{project}-canary", ["project"], "uses {project}, but the platform sets no project"),
        ("canary for {target}", [], "does not make a container name"),
        ("-{target}", [], "does not make a container name"),
        ("{target}.canaryd-old", [], "does not make a container name"),
    ],
)
def test_a_bad_canary_name_pattern_says_what_is_wrong(
    pattern: str, unset: list[str], message: str
) -> None:
    with pytest.raises(ValueError) as caught:
        check_canary_name(pattern, unset)
    assert message in str(caught.value)


# --------------------------------------------------------------------------- the config


def _config(tmp_path: Path, platform: str) -> Path:
    path = tmp_path / "canaryd.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            listen: 127.0.0.1:9870
            prometheus: {url: http://127.0.0.1:9090}
            targets:
              - name: lukhas-matriz-orchestrator
                policy: matriz-fast-track
                router: {kind: noop}
            """
        )
        + textwrap.indent(f"platform: {platform}\n", " " * 4),
        encoding="utf-8",
    )
    return path


def test_strip_labels_and_canary_name_are_read_from_the_config(tmp_path: Path) -> None:
    path = _config(
        tmp_path,
        "{kind: docker, service: matriz, strip_labels: [caddy, com.example.lb.], "
        'canary_name: "lukhas-{service}-canary"}',
    )
    [target] = load_config(path).targets
    assert target.platform == DockerConfig(
        service="matriz",
        strip_labels=("caddy", "com.example.lb."),
        canary_name="lukhas-{service}-canary",
    )
    assert isinstance(target.platform, DockerConfig)
    platform = build(target.name, target.platform, None)
    assert platform.canary_name == "lukhas-matriz-canary"
    assert platform.strip_labels == ("com.docker.compose.", "traefik.", "caddy", "com.example.lb.")
    defaults = load_config(_config(tmp_path, "{kind: docker, service: matriz}")).targets[0]
    assert isinstance(defaults.platform, DockerConfig)
    assert defaults.platform == DockerConfig(service="matriz")
    built = build(defaults.name, defaults.platform, None)
    assert built.canary_name == "lukhas-matriz-orchestrator-canary"


def test_bad_strip_labels_and_canary_name_are_named_by_key(tmp_path: Path) -> None:
    path = _config(
        tmp_path,
        '{kind: docker, labels: {app: m}, strip_labels: [caddy, 7, "a b"], '
        'canary_name: "{service}-canary"}',
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    where = f"{path}: targets[0].platform"
    assert [str(p) for p in caught.value.problems] == [
        f"{where}.canary_name: '{{service}}-canary' uses {{service}}, but the platform sets no "
        "service",
        f"{where}.strip_labels[1]: expected a label prefix such as 'caddy', got 7",
        f"{where}.strip_labels[2]: expected a label prefix such as 'caddy', got 'a b'",
    ]
    path = _config(tmp_path, "{kind: docker, service: m, strip_labels: caddy}")
    with pytest.raises(ConfigError, match=r"strip_labels: expected a list of label prefixes"):
        load_config(path)
