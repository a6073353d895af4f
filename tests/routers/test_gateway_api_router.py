"""The ``gateway-api`` router through the real kubernetes_asyncio client against kmock's
Kubernetes emulator over HTTP (tests/support/kube.py adds resourceVersion, replace and 409
Conflict), every written route checked against the upstream HTTPRoute CRD (Gateway API v1.6.1,
tests/upstream/gateway-api), closed like Kubernetes' pruning."""

from __future__ import annotations

import copy
import os
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from canaryd.adapters.routers import gateway_api
from canaryd.adapters.routers.gateway_api import GatewayApiHTTPRouteRouter
from canaryd.app import build_router, load_config
from canaryd.core.errors import CanarydError, RouterConflict, RouterUnavailable
from support import kube

NS = "shop"
CRD = kube.HTTPROUTE_CRD
PIN_HEADER = {"type": "Exact", "name": "X-Canary-Deploy", "value": "canary"}
API_RULE = {
    "matches": [{"path": {"type": "PathPrefix", "value": "/api"}}],
    "backendRefs": [{"name": "api", "port": 9090}],
}
WEB_MATCHES = [
    {"path": {"type": "PathPrefix", "value": "/"}},
    {"path": {"type": "Exact", "value": "/healthz"}, "method": "GET"},
]


def user_route() -> dict[str, Any]:
    """A route as its owner wrote it: canaryd takes over the rule that sends to web-stable."""
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "web", "namespace": NS, "labels": {"team": "shop"}},
        "spec": {
            "parentRefs": [{"name": "prod-gw", "namespace": "gateways"}],
            "hostnames": ["web.example.com"],
            "rules": [
                copy.deepcopy(API_RULE),
                {
                    "matches": copy.deepcopy(WEB_MATCHES),
                    "backendRefs": [{"name": "web-stable", "port": 8080}],
                },
            ],
        },
    }


def split(stable: int, canary: int, port: int = 8080) -> list[dict[str, Any]]:
    return [
        {"group": "", "kind": "Service", "name": "web-stable", "port": port, "weight": stable},
        {"group": "", "kind": "Service", "name": "web-canary", "port": port, "weight": canary},
    ]


@pytest.fixture
async def k8s() -> AsyncIterator[kube.Cluster]:
    async with kube.cluster() as cluster:
        yield cluster


def router(cluster: kube.Cluster, **kwargs: Any) -> GatewayApiHTTPRouteRouter:
    return GatewayApiHTTPRouteRouter(
        "web", "web-stable", "web-canary", namespace=NS, api_client=cluster.api, **kwargs
    )


def stored(cluster: kube.Cluster) -> dict[str, Any]:
    route = cluster.get(kube.HTTPROUTES, NS, "web")
    assert route is not None
    return route


def puts(cluster: kube.Cluster) -> int:
    return sum(1 for method, _ in cluster.writes if method == "PUT")


def assert_service_refs_have_ports(route: dict[str, Any]) -> None:
    """The CRD's CEL rule "Must have port for Service reference", which jsonschema skips."""
    for rule in route["spec"]["rules"]:
        for ref in rule["backendRefs"]:
            if ref.get("group", "") == "" and ref.get("kind", "Service") == "Service":
                assert isinstance(ref.get("port"), int), ref


# --------------------------------------------------------------------------- the validator


def test_the_validator_accepts_the_upstream_example_and_rejects_mistakes() -> None:
    example = yaml.safe_load(
        (kube.REFERENCE / "gateway-api/httproute-traffic-split.example.yaml").read_text()
    )
    assert kube.schema_errors(example, CRD, "v1") == []
    negative = copy.deepcopy(example)
    negative["spec"]["rules"][0]["backendRefs"][0]["weight"] = -1
    assert any("weight" in e for e in kube.schema_errors(negative, CRD, "v1"))
    typo = copy.deepcopy(example)
    typo["spec"]["rules"][0]["backendRefs"][0]["wieght"] = 10
    assert any("wieght" in e for e in kube.schema_errors(typo, CRD, "v1"))
    bad_header = copy.deepcopy(example)
    bad_header["spec"]["rules"][0]["matches"] = [{"headers": [{"name": "X Canary", "value": "1"}]}]
    assert any("headers" in e for e in kube.schema_errors(bad_header, CRD, "v1"))


async def test_the_emulator_stamps_resource_versions_and_refuses_a_stale_replace(
    k8s: kube.Cluster,
) -> None:
    api = client.CustomObjectsApi(k8s.api)
    args = ("gateway.networking.k8s.io", "v1", NS, "httproutes")
    made = await api.create_namespaced_custom_object(*args, user_route())
    assert made["metadata"]["resourceVersion"]
    read = await api.get_namespaced_custom_object(*args, "web")
    read["spec"]["hostnames"] = ["new.example.com"]
    replaced = await api.replace_namespaced_custom_object(*args, "web", read)
    assert int(replaced["metadata"]["resourceVersion"]) > int(made["metadata"]["resourceVersion"])
    with pytest.raises(ApiException) as stale:
        await api.replace_namespaced_custom_object(*args, "web", read)
    assert stale.value.status == 409
    assert stored(k8s)["spec"]["hostnames"] == ["new.example.com"]


# --------------------------------------------------------------------------- weights


@pytest.mark.parametrize("weight", [0, 10, 25, 50, 100])
async def test_each_weight_is_an_absolute_split_of_the_main_rule_that_validates(
    k8s: kube.Cluster, weight: int
) -> None:
    k8s.seed(kube.HTTPROUTES, NS, user_route())
    r = router(k8s)
    await r.set_weight(weight)
    route = stored(k8s)
    _pin, api_rule, main = route["spec"]["rules"]
    assert main == {"matches": WEB_MATCHES, "backendRefs": split(100 - weight, weight)}
    assert api_rule == API_RULE  # the user's other rule is untouched
    assert route["spec"]["parentRefs"] == [{"name": "prod-gw", "namespace": "gateways"}]
    assert route["spec"]["hostnames"] == ["web.example.com"]
    assert route["metadata"]["labels"] == {"team": "shop"}
    assert kube.schema_errors(route, CRD, "v1") == []
    assert_service_refs_have_ports(route)
    assert await r.get_weight() == weight


async def test_the_pin_rule_comes_first_and_adds_the_header_to_each_match_of_the_main_rule(
    k8s: kube.Cluster,
) -> None:
    k8s.seed(kube.HTTPROUTES, NS, user_route())
    await router(k8s).set_weight(10)
    pin = stored(k8s)["spec"]["rules"][0]
    assert pin["matches"] == [{**m, "headers": [PIN_HEADER]} for m in WEB_MATCHES]
    assert pin["backendRefs"] == [
        {"group": "", "kind": "Service", "name": "web-canary", "port": 8080, "weight": 100}
    ]
    header_schema = kube.crd_schema(CRD, "v1")["properties"]["spec"]["properties"]["rules"][
        "items"
    ]["properties"]["matches"]["items"]["properties"]["headers"]
    for match in pin["matches"]:
        jsonschema.validate(match["headers"], header_schema)


async def test_a_route_already_at_the_weight_is_not_written_again(k8s: kube.Cluster) -> None:
    k8s.seed(kube.HTTPROUTES, NS, user_route())
    r = router(k8s)
    await r.set_weight(25)
    await r.set_weight(25)
    assert puts(k8s) == 1
    await r.set_weight(50)
    assert puts(k8s) == 2


async def test_the_port_of_the_settings_wins_over_the_routes(k8s: kube.Cluster) -> None:
    k8s.seed(kube.HTTPROUTES, NS, user_route())
    r = router(k8s, port=8443)
    await r.set_weight(25)
    assert stored(k8s)["spec"]["rules"][2]["backendRefs"] == split(75, 25, port=8443)
    assert await r.get_weight() == 25


# --------------------------------------------------------------------------- read back


async def test_a_hand_edited_split_or_pin_reads_as_cannot_tell_until_reasserted(
    k8s: kube.Cluster,
) -> None:
    k8s.seed(kube.HTTPROUTES, NS, user_route())
    r = router(k8s)
    await r.set_weight(25)

    def reweigh(route: dict[str, Any]) -> None:
        route["spec"]["rules"][2]["backendRefs"][0]["weight"] = 70  # 70 + 25: not canaryd's

    k8s.write(kube.HTTPROUTES, NS, "web", reweigh)
    assert await r.get_weight() is None
    await r.set_weight(25)
    assert await r.get_weight() == 25

    def unpin(route: dict[str, Any]) -> None:
        del route["spec"]["rules"][0]

    k8s.write(kube.HTTPROUTES, NS, "web", unpin)
    assert await r.get_weight() is None

    def third_backend(route: dict[str, Any]) -> None:
        route["spec"]["rules"][2]["backendRefs"].append({"name": "web-old", "port": 8080})

    await r.set_weight(25)
    k8s.write(kube.HTTPROUTES, NS, "web", third_backend)
    assert await r.get_weight() is None


async def test_a_route_that_was_never_split_reads_as_cannot_tell(k8s: kube.Cluster) -> None:
    k8s.seed(kube.HTTPROUTES, NS, user_route())
    assert await router(k8s).get_weight() is None


# --------------------------------------------------------------------------- concurrency


async def test_a_writer_between_read_and_write_causes_a_retry_that_keeps_its_change(
    k8s: kube.Cluster,
) -> None:
    k8s.seed(kube.HTTPROUTES, NS, user_route())

    def gitops_sync(route: dict[str, Any]) -> None:
        route["spec"]["hostnames"].append("shop.example.com")
        route["metadata"]["labels"]["synced"] = "yes"

    def between_read_and_write(_: Any) -> None:
        k8s.write(kube.HTTPROUTES, NS, "web", gitops_sync)

    k8s.before_next_write(between_read_and_write)
    r = router(k8s)
    await r.set_weight(10)
    assert puts(k8s) == 2  # the first replace carried a stale resourceVersion
    assert [getattr(e, "status", None) for e in k8s.emulator.errors] == [409]
    route = stored(k8s)
    assert route["spec"]["hostnames"] == ["web.example.com", "shop.example.com"]
    assert route["metadata"]["labels"] == {"team": "shop", "synced": "yes"}
    assert route["spec"]["rules"][2]["backendRefs"] == split(90, 10)
    assert await r.get_weight() == 10


async def test_a_route_that_keeps_changing_is_a_router_conflict(k8s: kube.Cluster) -> None:
    k8s.seed(kube.HTTPROUTES, NS, user_route())

    def touch(route: dict[str, Any]) -> None:
        route["metadata"].setdefault("annotations", {})["touched"] = "again"

    def before_each_write(_: Any) -> None:
        k8s.write(kube.HTTPROUTES, NS, "web", touch)

    k8s.before_every_write(before_each_write)
    with pytest.raises(CanarydError) as caught:
        await router(k8s).set_weight(10)
    assert isinstance(caught.value, RouterConflict)
    assert "HTTPRoute shop/web" in str(caught.value)
    assert puts(k8s) == gateway_api.ATTEMPTS
    assert stored(k8s)["spec"]["rules"] == user_route()["spec"]["rules"]


# --------------------------------------------------------------------------- errors


async def test_a_missing_route_is_a_canaryd_error_naming_namespace_and_name(
    k8s: kube.Cluster,
) -> None:
    r = router(k8s)
    with pytest.raises(CanarydError) as caught:
        await r.set_weight(10)
    assert isinstance(caught.value, RouterUnavailable)
    assert "HTTPRoute shop/web not found" in str(caught.value)
    assert await r.get_weight() is None
    assert k8s.writes == []


async def test_a_route_with_no_rule_for_the_services_is_refused_unwritten(
    k8s: kube.Cluster,
) -> None:
    route = user_route()
    route["spec"]["rules"] = [copy.deepcopy(API_RULE)]
    k8s.seed(kube.HTTPROUTES, NS, route)
    with pytest.raises(RouterUnavailable, match=r"HTTPRoute shop/web: 0 rules send to web-stable"):
        await router(k8s).set_weight(10)
    assert puts(k8s) == 0


async def test_a_write_the_apiserver_refuses_is_router_unavailable(k8s: kube.Cluster) -> None:
    k8s.seed(kube.HTTPROUTES, NS, user_route())

    def refuse(_: Any) -> None:
        raise kube.kmock.KubernetesError(
            status=422, reason="Invalid", message="spec.rules: Too many: 17", details={}
        )

    k8s.before_next_write(refuse)
    with pytest.raises(RouterUnavailable, match=r"HTTPRoute shop/web: weight 10 refused: 422"):
        await router(k8s).set_weight(10)


# --------------------------------------------------------------------------- finalize


async def test_finalize_removes_the_pin_rule_and_leaves_weight_zero(k8s: kube.Cluster) -> None:
    k8s.seed(kube.HTTPROUTES, NS, user_route())
    r = router(k8s)
    await r.set_weight(50)
    await r.finalize()
    route = stored(k8s)
    assert route["spec"]["rules"] == [
        API_RULE,
        {"matches": WEB_MATCHES, "backendRefs": split(100, 0)},
    ]
    assert not any(m.get("headers") for rule in route["spec"]["rules"] for m in rule["matches"])
    assert kube.schema_errors(route, CRD, "v1") == []
    assert await r.get_weight() == 0
    writes = puts(k8s)
    await r.finalize()
    assert puts(k8s) == writes


# --------------------------------------------------------------------------- configuration


async def test_without_a_client_the_router_connects_through_the_kubeconfig(
    k8s: kube.Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        textwrap.dedent(
            f"""\
            apiVersion: v1
            kind: Config
            clusters: [{{name: kmock, cluster: {{server: "{k8s.url}"}}}}]
            users: [{{name: tester, user: {{token: not-checked}}}}]
            contexts: [{{name: kmock, context: {{cluster: kmock, user: tester}}}}]
            current-context: kmock
            """
        )
    )
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    k8s.seed(kube.HTTPROUTES, NS, user_route())
    r = GatewayApiHTTPRouteRouter("web", "web-stable", "web-canary", namespace=NS)
    try:
        await r.set_weight(25)
        assert await r.get_weight() == 25
    finally:
        await r.aclose()
    assert stored(k8s)["spec"]["rules"][2]["backendRefs"] == split(75, 25)


async def test_no_cluster_and_no_kubeconfig_is_router_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    with pytest.raises(RouterUnavailable, match="not in a pod"):
        await GatewayApiHTTPRouteRouter("web", "a", "b").set_weight(10)
    assert "KUBERNETES_SERVICE_HOST" not in os.environ


def test_the_config_builds_a_gateway_api_router(tmp_path: Path) -> None:
    path = tmp_path / "canaryd.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            listen: 127.0.0.1:9870
            prometheus: {url: http://127.0.0.1:9090, timeout: 5s}
            targets:
              - name: web
                policy: matriz-standard
                platform: {kind: none}
                router: {kind: gateway-api, name: web, namespace: shop, port: 8080,
                         stable_service: web-stable, canary_service: web-canary}
                labels: {job: web}
            """
        )
    )
    [target] = load_config(path).targets
    r = build_router(target)
    assert isinstance(r, GatewayApiHTTPRouteRouter)
    assert (r.kind, r.name, r.namespace, r.port) == ("gateway-api", "web", "shop", 8080)
    assert (r.stable_service, r.canary_service) == ("web-stable", "web-canary")
