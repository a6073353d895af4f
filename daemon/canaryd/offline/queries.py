"""A policy's queries filled for one target, exactly as the daemon fills them.

Shared by ``offline.render`` (Prometheus rules, Argo analysis) and ``offline.grafana`` (the
dashboard). The values come from ``runtime.evaluator.template_variables``, imported rather than
copied so they cannot drift: ``{{job}}`` and the other labels become anchored regex literals,
``{{group}}`` the label names plus ``deployment``, ``{{deployment}}`` ``canary`` (or
``canary|stable`` where both are drawn), ``{{window}}``/``{{interval}}`` and params from the
policy.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from canaryd.core import templates
from canaryd.core.model import Check, Policy
from canaryd.runtime.evaluator import CANARY, template_variables

STABLE = "stable"
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
# Label names that would shadow a built-in variable of the queries.
_RESERVED = templates.BUILTIN_VARIABLES - {"job"}


@dataclass(frozen=True, slots=True)
class Target:
    """What the documents are rendered for: the target's labels (always with ``job``), its
    name (``{{target}}``) and, if a query needs it, the canary's image (``{{version}}``)."""

    labels: Mapping[str, str]
    name: str
    image: str | None = None


def target_for(
    policy: Policy, labels: Mapping[str, str], name: str | None = None, image: str | None = None
) -> Target:
    """The target of ``--label``/``--target``/``--image``; ``ValueError`` says what is wrong."""
    for label in labels:
        if not _LABEL.fullmatch(label) or label.startswith("__"):
            raise ValueError(f"{label!r} is not a valid Prometheus label name")
        if label in _RESERVED or label in policy.params:
            raise ValueError(f"label {label!r} would hide the template variable {{{{{label}}}}}")
    full = {"job": policy.name, **labels}
    target = Target(full, name or full["job"], image)
    for check in thresholds(policy):
        if "version" in templates.variables(check.query) and image is None:
            raise ValueError(f"check {check.name!r} uses {{{{version}}}}: give --image IMAGE")
    return target


def query(
    policy: Policy, check: Check, target: Target, deployments: tuple[str, ...] = (CANARY,)
) -> str:
    """The check's PromQL for ``target``, as the daemon's evaluator renders it."""
    variables = template_variables(policy, {k: [v] for k, v in target.labels.items()}, deployments)
    variables.setdefault("target", target.name)
    variables.setdefault("version", target.image or "")
    return templates.render(check.query, variables)


def thresholds(policy: Policy) -> list[Check]:
    """The checks a document can express: the ``threshold`` ones. A ``compare`` check's verdict
    is a sequential test's over the whole rollout (``core.compare``), which no alert expression,
    Argo condition or dashboard query can state."""
    return [c for c in policy.checks.values() if c.kind == "threshold"]
