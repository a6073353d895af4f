"""The shipped Compose stack (``config/compose/``) agrees with itself: the names one file gives
are the names the others use. (``test_compose_traefik_e2e.py`` runs it; this says why it would
break if someone renamed one side.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from canaryd.adapters.platforms.docker import build as build_platform
from canaryd.adapters.platforms.docker_config import DockerConfig
from canaryd.adapters.routers.traefik_file import TraefikFileConfig, TraefikFileProviderRouter
from canaryd.app import load_config

STACK = Path(__file__).resolve().parents[2] / "config" / "compose"


def _yaml(name: str) -> dict[str, Any]:
    return dict(yaml.safe_load((STACK / name).read_text(encoding="utf-8")))


def test_the_compose_stack_names_the_same_things_in_every_file() -> None:
    [target] = load_config(STACK / "canaryd.yaml").targets  # what `canaryd check` loads
    platform, router = target.platform, target.router
    assert isinstance(platform, DockerConfig) and isinstance(router, TraefikFileConfig)
    assert platform.service and router.service and router.stable_service and router.canary_service
    compose = _yaml("compose.yaml")
    service = compose["services"][platform.service]
    assert compose["name"] == platform.project

    # The canary's name is the address the user's canary service points at.
    canary = build_platform(target.name, platform, None).canary_name
    assert canary == "lukhas-matriz-canary"  # the runbook's `docker logs lukhas-matriz-canary`
    users = _yaml("dynamic/matriz-canary.yml")["http"]["services"][router.canary_service]
    assert users["loadBalancer"]["servers"] == [{"url": f"http://{canary}:8080"}]

    # The stable's labels make the service canaryd weighs, and route to canaryd's service.
    labels = service["labels"]
    stable = router.stable_service.removesuffix("@docker")
    assert f"traefik.http.services.{stable}.loadbalancer.server.port" in labels
    assert labels["traefik.http.routers.matriz.service"] == f"{router.service}@file"
    assert labels["traefik.http.routers.matriz.rule"] == router.rule

    # Traefik reaches containers on the stack's network; watches the directory canaryd writes.
    static = _yaml("traefik.yml")
    [network] = compose["networks"]
    assert static["providers"]["docker"]["network"] == f"{compose['name']}_{network}"
    directory = static["providers"]["file"]["directory"]
    assert str(router.path.parent) == directory
    assert any(v.endswith(f":{directory}") for v in compose["services"]["canaryd"]["volumes"])


def test_the_shipped_weighted_service_file_is_what_canaryd_writes_at_weight_0() -> None:
    """Traefik needs ``matriz@file`` before the first rollout; canaryd reads it back as 0 %."""
    [target] = load_config(STACK / "canaryd.yaml").targets
    router = target.router
    assert isinstance(router, TraefikFileConfig)
    shipped = STACK / "dynamic" / router.path.name
    written = TraefikFileProviderRouter(
        target.name,
        shipped,
        service=router.service,
        stable_service=router.stable_service,
        canary_service=router.canary_service,
        rule=router.rule,
        entry_points=router.entry_points,
    ).render(0)
    assert shipped.read_text(encoding="utf-8") == written
