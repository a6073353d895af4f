"""The Kubernetes emulator (``support.kube``) does what the apiserver does that canaryd relies on.

Each case goes through the real ``kubernetes_asyncio`` client over HTTP, as canaryd's adapters
do: the status subresource as its own endpoint, server-side validation with the apiserver's
422 Status, 409 on a stale ``resourceVersion``, Leases, and 404 for a type the server does not
serve. If the emulator were laxer than a cluster, a bug in what canaryd writes would pass here
and fail there.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import kmock
import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from support import kube

NS = "shop"
MERGE = "application/merge-patch+json"


@pytest.fixture
async def k8s() -> AsyncIterator[kube.Cluster]:
    async with kube.cluster() as c:
        yield c


def _rollout(image: str = "web:1") -> dict[str, Any]:
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Rollout",
        "metadata": {"name": "web", "namespace": NS},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": image}]},
            },
            "strategy": {"canary": {"steps": [{"setWeight": 20}, {"pause": {}}]}},
        },
    }


def _deployment() -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": NS},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "web:1"}]},
            },
        },
    }


def _status_of(exc: ApiException) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(exc.body)
    return body


async def _objects(c: kube.Cluster) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(c.api)


# --------------------------------------------------------------------------- status subresource


async def test_a_spec_write_keeps_the_stored_status(k8s: kube.Cluster) -> None:
    k8s.seed(kube.ROLLOUTS, NS, _rollout())
    k8s.write(kube.ROLLOUTS, NS, "web", lambda o: o.update(status={"currentStepIndex": 1}))
    api = await _objects(k8s)
    patch = {"spec": {"paused": True}, "status": {"currentStepIndex": 0, "abort": True}}
    written = await api.patch_namespaced_custom_object(
        "argoproj.io", "v1alpha1", NS, "rollouts", "web", patch, _content_type=MERGE
    )
    assert written["spec"]["paused"] is True
    assert written["status"] == {"currentStepIndex": 1}, "status is not written through spec"
    assert written["metadata"]["generation"] == 2


async def test_a_status_write_changes_status_only(k8s: kube.Cluster) -> None:
    k8s.seed(kube.ROLLOUTS, NS, _rollout())
    api = await _objects(k8s)
    patch = {"spec": {"paused": True}, "status": {"abort": True}}
    written = await api.patch_namespaced_custom_object_status(
        "argoproj.io", "v1alpha1", NS, "rollouts", "web", patch, _content_type=MERGE
    )
    assert written["status"] == {"abort": True}
    assert "paused" not in written["spec"], "spec is not written through status"
    assert written["metadata"]["generation"] == 1
    stored = k8s.get(kube.ROLLOUTS, NS, "web")
    assert stored is not None and stored["status"] == {"abort": True}


async def test_a_status_replace_needs_a_current_resource_version(k8s: kube.Cluster) -> None:
    seeded = k8s.seed(kube.ROLLOUTS, NS, _rollout())
    api = await _objects(k8s)
    body = {**seeded, "status": {"promoteFull": True}}
    written = await api.replace_namespaced_custom_object_status(
        "argoproj.io", "v1alpha1", NS, "rollouts", "web", body
    )
    assert written["status"] == {"promoteFull": True}
    with pytest.raises(ApiException) as stale:
        await api.replace_namespaced_custom_object_status(
            "argoproj.io", "v1alpha1", NS, "rollouts", "web", body
        )
    assert stale.value.status == 409


async def test_a_create_drops_status_where_it_is_a_subresource(k8s: kube.Cluster) -> None:
    api = await _objects(k8s)
    created = await api.create_namespaced_custom_object(
        "argoproj.io", "v1alpha1", NS, "rollouts", {**_rollout(), "status": {"abort": True}}
    )
    assert "status" not in created


async def test_a_type_without_a_status_subresource_has_no_status_endpoint(
    k8s: kube.Cluster,
) -> None:
    k8s.seed(
        kube.TRAEFIKSERVICES,
        NS,
        {
            "apiVersion": "traefik.io/v1alpha1",
            "kind": "TraefikService",
            "metadata": {"name": "web", "namespace": NS},
            "spec": {"weighted": {"services": [{"name": "web", "port": 80, "weight": 1}]}},
        },
    )
    api = await _objects(k8s)
    with pytest.raises(ApiException) as missing:
        await api.patch_namespaced_custom_object_status(
            "traefik.io",
            "v1alpha1",
            NS,
            "traefikservices",
            "web",
            {"status": {}},
            _content_type=MERGE,
        )
    assert missing.value.status == 404


async def test_a_deployment_status_is_its_own_endpoint_too(k8s: kube.Cluster) -> None:
    k8s.seed(kube.DEPLOYMENTS, NS, _deployment())
    apps = client.AppsV1Api(k8s.api)
    await apps.patch_namespaced_deployment_status(
        "web", NS, {"status": {"readyReplicas": 2}, "spec": {"replicas": 9}}
    )
    stored = k8s.get(kube.DEPLOYMENTS, NS, "web")
    assert stored is not None
    assert (stored["spec"]["replicas"], stored["status"]) == (2, {"readyReplicas": 2})


# --------------------------------------------------------------------------- validation


async def test_a_custom_resource_against_its_crd_is_refused_with_the_apiservers_status(
    k8s: kube.Cluster,
) -> None:
    api = await _objects(k8s)
    bad = {
        "apiVersion": "traefik.io/v1alpha1",
        "kind": "TraefikService",
        "metadata": {"name": "web", "namespace": NS},
        "spec": {"weighted": {"services": [{"name": "web", "port": 80, "weight": "50"}]}},
    }
    with pytest.raises(ApiException) as refused:
        await api.create_namespaced_custom_object(
            "traefik.io", "v1alpha1", NS, "traefikservices", bad
        )
    status = _status_of(refused.value)
    assert refused.value.status == 422
    assert (status["kind"], status["status"], status["reason"]) == ("Status", "Failure", "Invalid")
    assert status["message"].startswith('TraefikService.traefik.io "web" is invalid: ')
    assert status["details"]["kind"] == "TraefikService"
    assert status["details"]["causes"] == [
        {
            "reason": "FieldValueTypeInvalid",
            "message": "Invalid value: \"50\": '50' is not of type 'integer'",
            "field": "spec.weighted.services[0].weight",
        }
    ]
    assert k8s.get(kube.TRAEFIKSERVICES, NS, "web") is None, "nothing stored"


async def test_a_patch_is_validated_as_the_object_it_makes(k8s: kube.Cluster) -> None:
    k8s.seed(kube.DEPLOYMENTS, NS, _deployment())
    apps = client.AppsV1Api(k8s.api)
    before = k8s.get(kube.DEPLOYMENTS, NS, "web")
    with pytest.raises(ApiException) as refused:
        await apps.patch_namespaced_deployment("web", NS, {"spec": {"replicas": "three"}})
    assert refused.value.status == 422
    [cause] = _status_of(refused.value)["details"]["causes"]
    assert cause["field"] == "spec.replicas"
    assert k8s.get(kube.DEPLOYMENTS, NS, "web") == before


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (
            lambda d: d["metadata"].update(annotations={"canary": True}),
            "metadata.annotations.canary",
        ),
        (lambda d: d["metadata"].update(name="Web_1"), "metadata.name"),
        (lambda d: d["spec"].update(replicaz=2), "spec"),
        (lambda d: d["spec"].pop("selector"), "spec"),
    ],
    ids=["an annotation not a string", "a name not DNS", "an unknown field", "a required field"],
)
async def test_a_built_in_kind_is_checked_against_the_kubernetes_schema(
    k8s: kube.Cluster, edit: Any, field: str
) -> None:
    body = _deployment()
    edit(body)
    with pytest.raises(ApiException) as refused:
        await client.AppsV1Api(k8s.api).create_namespaced_deployment(NS, body)
    assert refused.value.status == 422
    assert field in [c["field"] for c in _status_of(refused.value)["details"]["causes"]]


def test_a_seed_the_apiserver_would_refuse_is_a_broken_test(k8s: kube.Cluster) -> None:
    with pytest.raises(kmock.KubernetesError, match=r'Deployment.apps "web" is invalid'):
        k8s.seed(kube.DEPLOYMENTS, NS, {**_deployment(), "spec": {"replicas": 1}})
    assert k8s.get(kube.DEPLOYMENTS, NS, "web") is None


# --------------------------------------------------------------------------- versions, leases


async def test_a_stale_resource_version_is_409_on_replace_patch_and_delete(
    k8s: kube.Cluster,
) -> None:
    seeded = k8s.seed(kube.CONFIGMAPS, NS, {"metadata": {"name": "state"}, "data": {"a": "1"}})
    core = client.CoreV1Api(k8s.api)
    await core.patch_namespaced_config_map("state", NS, {"data": {"a": "2"}})
    stale = seeded["metadata"]["resourceVersion"]
    attempts = [
        core.replace_namespaced_config_map("state", NS, seeded),
        core.patch_namespaced_config_map(
            "state", NS, {"metadata": {"resourceVersion": stale}, "data": {"a": "3"}}
        ),
        core.delete_namespaced_config_map(
            "state", NS, body=client.V1DeleteOptions(preconditions={"resourceVersion": stale})
        ),
    ]
    for attempt in attempts:
        with pytest.raises(ApiException) as conflict:
            await attempt
        assert conflict.value.status == 409
        assert _status_of(conflict.value)["reason"] == "Conflict"
    stored = k8s.get(kube.CONFIGMAPS, NS, "state")
    assert stored is not None and stored["data"] == {"a": "2"}


async def test_a_lease_is_stored_versioned_and_validated(k8s: kube.Cluster) -> None:
    api = client.CoordinationV1Api(k8s.api)
    lease = {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "canaryd", "namespace": NS},
        "spec": {
            "holderIdentity": "canaryd-0",
            "leaseDurationSeconds": 15,
            "renewTime": "2026-01-01T00:00:00.000000Z",
        },
    }
    created = await api.create_namespaced_lease(NS, lease)
    assert created.spec.holder_identity == "canaryd-0"
    first = created.metadata.resource_version
    created.spec.holder_identity = "canaryd-1"
    renewed = await api.replace_namespaced_lease("canaryd", NS, created)
    assert renewed.metadata.resource_version != first
    with pytest.raises(ApiException) as stale:
        await api.replace_namespaced_lease("canaryd", NS, created)  # the old version again
    assert stale.value.status == 409
    with pytest.raises(ApiException) as refused:
        await api.patch_namespaced_lease("canaryd", NS, {"spec": {"leaseDurationSeconds": "15s"}})
    assert refused.value.status == 422
    assert [t[1] for t in k8s.emulator.write_times] == ["POST", "PUT", "PUT", "PATCH"]


async def test_a_type_the_server_does_not_serve_is_404(k8s: kube.Cluster) -> None:
    api = await _objects(k8s)
    with pytest.raises(ApiException) as missing:
        await api.create_namespaced_custom_object(
            "example.com", "v1", NS, "widgets", {"metadata": {"name": "w"}}
        )
    assert missing.value.status == 404
