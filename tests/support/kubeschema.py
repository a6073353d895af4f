"""What the emulated API server knows of each resource it serves: its kind, whether it has a
status subresource, and the schema every object written to it must pass (``support.kube``).

The real apiserver refuses (422 Invalid) an object that breaks its type's schema, so a bug in
what canaryd writes shows up as a refused write, not as a test's after-the-fact check. Two
sources of schemas, both copied into the repository or installed, never fetched:

- built-in kinds (Deployment, Service, Ingress, Lease, ConfigMap, Secret): the Kubernetes
  OpenAPI schemas that the ``kubernetes-validate`` package ships (its ``-strict`` variant,
  where an unknown field is an error), for the newest Kubernetes version it carries;
- custom resources: the ``openAPIV3Schema`` of the CRDs in ``tests/upstream`` (HTTPRoute,
  TraefikService, IngressRoute, Rollout, AnalysisRun, AnalysisTemplate), closed as structural
  pruning would close it, with ``metadata`` checked against the built-in ``ObjectMeta``.

An unknown field is a 422 here, where a real apiserver drops it (pruning, or
``fieldValidation=Warn``) with at most a warning. Either way what canaryd reads back would not
be what it wrote; the emulator makes that loud. Not emulated: CEL rules
(``x-kubernetes-validations``), defaulting, int-or-string formats beyond the schema's types,
and admission webhooks.

A resource in neither table is unknown to the emulated server: 404, as on a cluster without
that CRD, so a test cannot use a resource nobody validates.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate.utils as kv
import yaml
from referencing import Registry, Resource

REFERENCE = Path(__file__).resolve().parents[1] / "upstream"
K8S_VERSION = kv.latest_version()  # the newest schemas kubernetes-validate ships
_DEFS = "/api/_definitions.json#/$defs/"
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_DNS_LABEL_1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")

Key = tuple[str, str, str]  # (group, version, plural)


@dataclass(frozen=True)
class Builtin:
    kind: str
    status: bool  # has a status subresource
    dns_label: bool = False  # the name must be a DNS-1035 label (Services), not a subdomain


BUILTINS: dict[Key, Builtin] = {
    ("apps", "v1", "deployments"): Builtin("Deployment", status=True),
    ("", "v1", "services"): Builtin("Service", status=True, dns_label=True),
    ("networking.k8s.io", "v1", "ingresses"): Builtin("Ingress", status=True),
    ("coordination.k8s.io", "v1", "leases"): Builtin("Lease", status=False),
    ("", "v1", "configmaps"): Builtin("ConfigMap", status=False),
    ("", "v1", "secrets"): Builtin("Secret", status=False),
    ("", "v1", "pods"): Builtin("Pod", status=True),  # the kubelet's: platforms read imageID
}

CRD_FILES: dict[tuple[str, str], str] = {  # (group, plural) -> file under tests/upstream
    ("gateway.networking.k8s.io", "httproutes"): (
        "gateway-api/gateway.networking.k8s.io_httproutes.yaml"
    ),
    ("traefik.io", "traefikservices"): "traefik/traefik.io_traefikservices.yaml",
    ("traefik.io", "ingressroutes"): "traefik/traefik.io_ingressroutes.yaml",
    ("argoproj.io", "rollouts"): "argo-rollouts/rollout-crd.yaml",
    ("argoproj.io", "analysisruns"): "argo-rollouts/analysis-run-crd.yaml",
    ("argoproj.io", "analysistemplates"): "argo-rollouts/analysis-template-crd.yaml",
}


@dataclass(frozen=True)
class Cause:
    """One ``details.causes`` entry of a 422 Status, as the apiserver writes it."""

    reason: str  # FieldValueInvalid, FieldValueRequired, FieldValueTypeInvalid, ...
    message: str
    field: str


@dataclass(frozen=True)
class ResourceType:
    """A resource the emulated server serves, and how it checks an object of it."""

    group: str
    version: str
    plural: str
    kind: str
    status: bool  # a status subresource: spec writes keep status, status writes keep the rest
    _validator: Any
    dns_label: bool = False

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        """``Deployment.apps``, as the apiserver names the kind in its messages."""
        return f"{self.kind}.{self.group}" if self.group else self.kind

    def causes(self, obj: dict[str, Any]) -> list[Cause]:
        """Every way ``obj`` breaks the schema (``[]``: valid), in the apiserver's shape."""
        found = [_cause(e) for e in self._validator.iter_errors(obj)]
        name = obj.get("metadata", {}).get("name")
        pattern, limit = (_DNS_LABEL_1035, 63) if self.dns_label else (_DNS_SUBDOMAIN, 253)
        if isinstance(name, str) and (not pattern.fullmatch(name) or len(name) > limit):
            what = "a DNS-1035 label" if self.dns_label else "a lowercase RFC 1123 subdomain"
            found.append(
                Cause(
                    "FieldValueInvalid", f'Invalid value: "{name}": must be {what}', "metadata.name"
                )
            )
        return sorted(set(found), key=lambda c: (c.field, c.message))


def _cause(error: jsonschema.ValidationError) -> Cause:
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path).lstrip(
        "."
    )
    reason = {
        "required": "FieldValueRequired",
        "type": "FieldValueTypeInvalid",
        "enum": "FieldValueNotSupported",
        "additionalProperties": "FieldValueInvalid",
    }.get(str(error.validator), "FieldValueInvalid")
    if error.validator == "required":
        return Cause(reason, f"Required value: {error.message}", path or "<root>")
    shown = json.dumps(error.instance)[:80]
    return Cause(reason, f"Invalid value: {shown}: {error.message}", path or "<root>")


# --------------------------------------------------------------------------- built-in kinds


@cache
def _registry() -> Registry:
    strict = f"v{K8S_VERSION}-local-strict"
    defs = kv.schema_contents(f"kubernetes-json-schema/{strict}/_definitions.json", K8S_VERSION)
    return Resource.from_contents(defs) @ Registry()


def _builtin_schema(kind: str, api_version: str) -> dict[str, Any]:
    strict = f"v{K8S_VERSION}-local-strict"
    short = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    schema: dict[str, Any] = kv.schema_contents(
        f"kubernetes-json-schema/{strict}/{kind.lower()}-{short}.json", K8S_VERSION
    )
    return schema


def _object_meta() -> dict[str, Any]:
    return {"$ref": f"{_DEFS}io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}


# --------------------------------------------------------------------------- CRDs


def closed(schema: Any) -> Any:
    """Every object schema that lists its properties closed to others, as Kubernetes' structural
    pruning drops unknown fields (unless x-kubernetes-preserve-unknown-fields says otherwise)."""
    if isinstance(schema, dict):
        out: dict[str, Any] = {}
        for key, value in schema.items():
            if key == "properties" and isinstance(value, dict):  # names -> schemas
                out[key] = {name: closed(sub) for name, sub in value.items()}
            elif key in ("default", "example", "enum"):  # values, not schemas
                out[key] = value
            else:
                out[key] = closed(value)
        if (
            isinstance(out.get("properties"), dict)
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [closed(v) for v in schema]
    return schema


@cache
def _crd_json(crd: str) -> str:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with (REFERENCE / crd).open(encoding="utf-8") as file:
        document = yaml.load(file, Loader=loader)  # a safe loader (C if built)
    return json.dumps(document)


def crd_document(crd: str) -> dict[str, Any]:
    """The CRD at ``crd`` (a path relative to ``tests/upstream``), parsed once per process."""
    document: dict[str, Any] = json.loads(_crd_json(crd))
    return document


def crd_version(crd: str, version: str | None) -> dict[str, Any]:
    """``version`` of the CRD (default: the storage version), a ``spec.versions`` entry."""
    versions = crd_document(crd)["spec"]["versions"]
    chosen: dict[str, Any] = (
        next(v for v in versions if v["name"] == version)
        if version
        else next(v for v in versions if v.get("storage"))
    )
    return chosen


def crd_schema(crd: str, version: str | None = None) -> dict[str, Any]:
    """The ``openAPIV3Schema`` of ``version`` (default: the storage version) of the CRD."""
    schema: dict[str, Any] = copy.deepcopy(crd_version(crd, version)["schema"]["openAPIV3Schema"])
    return schema


def validator(crd: str, version: str | None = None) -> jsonschema.Draft7Validator:
    """A validator for whole objects: the structural schema closed like pruning; ``metadata``
    stays open (the apiserver's ObjectMeta, not part of the CRD)."""
    schema = closed(crd_schema(crd, version))
    schema["properties"]["metadata"] = {"type": "object"}
    return jsonschema.Draft7Validator(schema)


def schema_errors(obj: Any, crd: str, version: str | None = None) -> list[str]:
    """``path: message`` for each way ``obj`` breaks the CRD's schema; ``[]`` when it validates."""
    return [
        f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in validator(crd, version).iter_errors(obj)
    ]


# --------------------------------------------------------------------------- the lookup


@cache
def lookup(group: str, version: str, plural: str) -> ResourceType | None:
    """The resource the emulated server serves at ``group/version/plural``; None: unknown."""
    builtin = BUILTINS.get((group, version, plural))
    if builtin is not None:
        api_version = f"{group}/{version}" if group else version
        schema = _builtin_schema(builtin.kind, api_version)
        checker = jsonschema.Draft202012Validator(schema, registry=_registry())
        return ResourceType(
            group, version, plural, builtin.kind, builtin.status, checker, builtin.dns_label
        )
    crd = CRD_FILES.get((group, plural))
    if crd is None:
        return None
    served = [v for v in crd_document(crd)["spec"]["versions"] if v["name"] == version]
    if not served:
        return None
    schema = closed(crd_schema(crd, version))
    schema["properties"]["metadata"] = _object_meta()
    schema["$schema"] = "http://json-schema.org/draft-07/schema#"
    schema["$id"] = (
        f"https://kubernetes.io/api/{plural}.{group}"  # so that ObjectMeta's reference resolves
    )
    checker = jsonschema.Draft7Validator(schema, registry=_registry())
    kind = crd_document(crd)["spec"]["names"]["kind"]
    has_status = "status" in (served[0].get("subresources") or {})
    return ResourceType(group, version, plural, kind, has_status, checker)
