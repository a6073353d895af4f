"""``canaryctl render argo-rollout``: a Rollout the ``argo-rollouts`` router can drive.

The steps are the policy's stages, a ``setWeight`` of the stage's weight then an indefinite
``pause: {}`` each: Argo stands at each pause until canaryd, having judged the stage, promotes
through it (the router's ``step_mismatch`` accepts exactly this shape). Traffic is split by
Traefik as in the runbook: ``trafficRouting.traefik.weightedTraefikServiceName`` names a
weighted ``TraefikService`` ``<name>`` over the Services ``<name>-stable`` and
``<name>-canary``, which Argo rewrites at each ``setWeight``; the user's IngressRoute sends to
that TraefikService. The Services and the TraefikService are the user's to create (they are
not part of the Rollout); the pod template is the smallest one that runs ``--image``, with a
readiness probe on ``/healthz`` when ``--port`` is given, to be completed by hand.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from canaryd.core.model import Policy

PLACEHOLDER_IMAGE = "REPLACE-ME:latest"  # without --image: to be filled in by hand


@dataclass(frozen=True, slots=True)
class Workload:
    """The Rollout's name, namespace, image, container port and replicas."""

    name: str
    image: str = PLACEHOLDER_IMAGE
    namespace: str | None = None
    port: int | None = None
    replicas: int = 3


def steps(policy: Policy) -> list[dict[str, Any]]:
    """One ``setWeight``/``pause: {}`` pair per stage of the policy."""
    out: list[dict[str, Any]] = []
    for stage in policy.stages:
        out += [{"setWeight": stage.weight}, {"pause": {}}]
    return out


def rollout(policy: Policy, w: Workload) -> dict[str, Any]:
    """The Rollout (see the module doc)."""
    labels = {"app": w.name}
    container: dict[str, Any] = {"name": w.name, "image": w.image}
    if w.port is not None:
        container["ports"] = [{"name": "http", "containerPort": w.port}]
        container["readinessProbe"] = {"httpGet": {"path": "/healthz", "port": "http"}}
    metadata: dict[str, Any] = {
        "name": w.name,
        "labels": {"app.kubernetes.io/managed-by": "canaryctl"},
        "annotations": {"canaryd/policy": policy.name},
    }
    if w.namespace:
        metadata["namespace"] = w.namespace
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Rollout",
        "metadata": metadata,
        "spec": {
            "replicas": w.replicas,
            "revisionHistoryLimit": 3,
            "selector": {"matchLabels": dict(labels)},  # copies: no YAML anchors in the output
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [container]}},
            "strategy": {
                "canary": {
                    "stableService": f"{w.name}-stable",
                    "canaryService": f"{w.name}-canary",
                    "trafficRouting": {"traefik": {"weightedTraefikServiceName": w.name}},
                    "steps": steps(policy),
                }
            },
        },
    }


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``render``'s options for ``argo-rollout`` (``--image`` is the shared one)."""
    p.add_argument("--name", help="argo-rollout: the Rollout's name (default: the target's)")
    p.add_argument("--namespace", help="argo-rollout: the Rollout's namespace")
    p.add_argument("--port", type=int, help="argo-rollout: the container's HTTP port")


def workload(args: argparse.Namespace, default_name: str) -> Workload:
    return Workload(
        name=args.name or default_name,
        image=args.image or PLACEHOLDER_IMAGE,
        namespace=args.namespace,
        port=args.port,
    )
