"""Which Kubernetes cluster a target talks to: a kubeconfig and a context, per daemon or per target.

    kubernetes:                        # the daemon's default (optional)
      kubeconfig: /etc/canaryd/kubeconfig
      context: us-east-1
    targets:
      - name: matriz-eu
        kubernetes: {context: eu-west-1}   # this target's cluster (optional)

The runbook runs one canaryd per region and names the region with ``KUBECTL_CONTEXT``; canaryd's
own equivalent is ``$CANARYD_KUBE_CONTEXT``, read when the config is loaded (by ``serve`` and
``check`` alike, so both say the same). It replaces the top-level ``kubernetes.context``, as
``$CANARYD_LISTEN`` replaces ``listen``, and yields to a target's own ``context``: a target that
names its cluster means that cluster whatever the daemon's default is.

A target's effective access is the daemon's with the target's keys laid over it, key by key.
Nothing set anywhere keeps today's behaviour: in-cluster configuration in a pod, else
``$KUBECONFIG`` / ``~/.kube/config`` with its current context. Naming a kubeconfig or a context
skips in-cluster configuration (a pod's service account has no contexts to choose among).

Whether the kubeconfig exists and holds the context is a warning, not an error: the file is
often provisioned after the config is checked, or on another machine (as for secret files).
The default kubeconfig (``$KUBECONFIG``, ``~/.kube/config``) missing where ``check`` runs is
not even that: only one the config names is expected to be there.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import yaml

from canaryd.config.reader import join, to_str
from canaryd.core.errors import Problem

KEY = "kubernetes"  # the top-level key and the target key
CONTEXT_ENV = "CANARYD_KUBE_CONTEXT"
_KEYS = ("kubeconfig", "context")
_MAX_CONTEXT = 253  # kubeconfig names have no documented limit; a DNS name's is plenty


@dataclass(frozen=True, slots=True)
class KubeAccess:
    """Where a Kubernetes adapter's API server is. ``None`` fields: the default (see above)."""

    kubeconfig: Path | None = None
    context: str | None = None

    def over(self, default: KubeAccess) -> KubeAccess:
        """This access with ``default`` filling what it leaves unset."""
        return KubeAccess(
            kubeconfig=self.kubeconfig if self.kubeconfig is not None else default.kubeconfig,
            context=self.context if self.context is not None else default.context,
        )

    @property
    def explicit(self) -> bool:
        """Whether a kubeconfig or context is named (then in-cluster config is not tried)."""
        return self.kubeconfig is not None or self.context is not None


class _Loader(Protocol):
    """What this module uses of ``settings``' loader."""

    @property
    def r(self) -> Any: ...
    def path(self, value: Any) -> Path: ...


def to_context(value: Any) -> str:
    """A kubeconfig context name: any printable text (EKS names are ARNs), bounded."""
    text = to_str(value)
    if not text or len(text) > _MAX_CONTEXT or not text.isprintable() or text != text.strip():
        raise ValueError(
            f"expected a kubeconfig context name (printable, 1..{_MAX_CONTEXT} characters, "
            f"no surrounding spaces), got {value!r}"
        )
    return text


def read_access(loader: _Loader, raw: Any, where: str) -> KubeAccess:
    """A ``kubernetes:`` section (top level or a target's); absent reads as all defaults."""
    if raw is None:
        return KubeAccess()
    r = loader.r
    m: Mapping[str, Any] = r.mapping(raw, where, _KEYS)
    return KubeAccess(
        kubeconfig=r.field(m, "kubeconfig", where, loader.path, None),
        context=r.field(m, "context", where, to_context, None),
    )


def target_access(
    loader: _Loader,
    t: Mapping[str, Any],
    where: str,
    default: KubeAccess,
    warnings: list[Problem],
) -> KubeAccess:
    """A target's cluster: its own section over the daemon's ``default``. A kubeconfig or
    context it names itself is looked at (warnings only, see above)."""
    where = join(where, KEY)
    own = read_access(loader, t.get(KEY), where)
    if own.explicit:
        warnings += kubeconfig_warnings(loader.r.file, where, own.over(default))
    return own.over(default)


def in_cluster(identity: tuple[object, ...], access: KubeAccess) -> tuple[object, ...]:
    """A router's identity (what two targets may not share) with the cluster it lives in: an
    object named by kind, namespace and name in one region is not the same object as its twin
    in another, so the runbook's per-region targets may name the same Ingress. An identity that
    holds a path is a file on this machine, whatever the cluster: left as it is."""
    if any(isinstance(part, Path) for part in identity):
        return identity
    return (*identity, access)


def daemon_access(
    loader: _Loader, raw: Any, environ: Mapping[str, str] | None = None
) -> KubeAccess:
    """The top-level section, its context replaced by ``$CANARYD_KUBE_CONTEXT`` when that is
    set and not empty (an empty variable counts as unset, as unit files leave them)."""
    access = read_access(loader, raw, KEY)
    env = os.environ if environ is None else environ
    value = env.get(CONTEXT_ENV) or None
    if value is None:
        return access
    try:
        return KubeAccess(access.kubeconfig, to_context(value))
    except ValueError as exc:
        loader.r.problem(KEY, f"${CONTEXT_ENV}: {exc}")
        return access


def kubeconfig_warnings(file: str, where: str, access: KubeAccess) -> list[Problem]:
    """What ``check`` can say of a named kubeconfig: missing, unreadable, or without the
    context. Warnings only (see the module's docstring); nothing named, nothing said."""
    if not access.explicit:
        return []
    path = access.kubeconfig
    if path is None:
        path = Path(os.environ.get("KUBECONFIG") or "~/.kube/config").expanduser()
    shown = join(where, "kubeconfig" if access.kubeconfig is not None else "context")
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if access.kubeconfig is None:  # the default file: often absent where check runs
            return []
        return [Problem(file, shown, f"kubeconfig {path} does not exist (yet)")]
    except OSError as exc:
        return [Problem(file, shown, f"kubeconfig {path} cannot be read now: {exc.strerror}")]
    except yaml.YAMLError as exc:
        return [Problem(file, shown, f"kubeconfig {path} is not YAML: {exc}")]
    if access.context is None:
        return []
    contexts = doc.get("contexts") if isinstance(doc, Mapping) else None
    names = [str(c.get("name")) for c in contexts or [] if isinstance(c, Mapping) and c.get("name")]
    if access.context in names:
        return []
    return [
        Problem(
            file,
            join(where, "context"),
            f"context {access.context!r} is not in kubeconfig {path} "
            f"(contexts: {', '.join(names) or 'none'})",
        )
    ]
