"""The ``docker`` platform kind's config: its dataclass and its reader (``docker.KIND`` uses them).

Apart from ``docker`` only to keep that module under 600 lines; nothing here talks to Docker.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from canaryd.config.kinds import Loader, read_labels, to_port
from canaryd.config.reader import Reader, join, to_str

# Label prefixes a canary never copies from the stable, whatever the config says: Compose's own
# (``docker compose up`` would stop or renumber a container it did not create) and Traefik's
# (with Traefik's Docker provider a copied ``traefik.http.services.*`` label makes the canary a
# server of the stable's service, taking traffic canaryd never assigned).
ALWAYS_STRIPPED = ("com.docker.compose.", "traefik.")
CANARY_NAME = "{target}-canary"
# What ``canary_name`` may say: the target, the Compose service and project it is found by
NAME_FIELDS = ("target", "service", "project")
# The engine's container names (moby ``daemon/names``): [a-zA-Z0-9][a-zA-Z0-9_.-]+
_CONTAINER_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+")
_LABEL_PREFIX = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-/]*")

# Compose's short port syntax: [IP:]HOST_PORT:CONTAINER_PORT[/PROTO] (IPv4 or [IPv6])
_PUBLISH = re.compile(
    r"(?:([0-9.]+|\[[0-9A-Fa-f:.]+\]):)?([0-9]{1,5}):([0-9]{1,5})(?:/(tcp|udp|sctp))?"
)


@dataclass(frozen=True, slots=True)
class DockerConfig:
    """A Compose service (``service``) or the containers carrying all of ``labels``."""

    service: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    project: str | None = None  # com.docker.compose.project, when several share a host
    host: str | None = None  # Docker endpoint, e.g. unix:///var/run/docker.sock
    probe_path: str | None = None  # HTTP readiness probe when the image has no HEALTHCHECK
    probe_port: int | None = None
    # "8080/tcp" -> (host ip, host port): where the canary's ports are published for the router
    canary_ports: Mapping[str, tuple[str, int]] = field(default_factory=dict)
    # label prefixes not copied to the canary, on top of ALWAYS_STRIPPED
    strip_labels: tuple[str, ...] = ()
    canary_name: str = CANARY_NAME  # a pattern with {target}, {service}, {project}
    kind: Literal["docker"] = field(default="docker", init=False)


def read_config(ld: Loader, m: Mapping[str, Any], where: str) -> DockerConfig:
    r = ld.r
    service = r.field(m, "service", where, to_str, None)
    labels = read_labels(r, m.get("labels", {}), join(where, "labels"), names=False)
    if (service is None) == (not labels):
        r.problem(where, "needs exactly one of service (a Compose service) or labels")
    project = r.field(m, "project", where, to_str, None)
    pattern = r.field(m, "canary_name", where, to_str, CANARY_NAME)
    unset = [k for k, v in (("service", service), ("project", project)) if v is None]
    try:
        check_canary_name(pattern, unset=unset)
    except ValueError as exc:
        r.problem(join(where, "canary_name"), str(exc))
    probe_path = r.field(m, "probe_path", where, to_str, None)
    if probe_path is not None and not probe_path.startswith("/"):
        r.problem(join(where, "probe_path"), f"must start with '/', got {probe_path!r}")
    return DockerConfig(
        service=service,
        labels=labels,
        project=project,
        host=r.field(m, "host", where, to_str, None),
        probe_path=probe_path,
        probe_port=r.field(m, "probe_port", where, to_port, None),
        canary_ports=_published_ports(r, m.get("canary_ports", []), join(where, "canary_ports")),
        strip_labels=_prefixes(r, m.get("strip_labels", []), join(where, "strip_labels")),
        canary_name=pattern,
    )


def canary_name(pattern: str, *, target: str, service: str | None, project: str | None) -> str:
    """The canary container's name: ``pattern`` with its placeholders filled in."""
    return pattern.format(target=target, service=service, project=project)


def check_canary_name(pattern: str, unset: list[str]) -> None:
    """Raise ``ValueError`` unless ``pattern`` names a container for any valid target: only
    the placeholders ``NAME_FIELDS`` (not those in ``unset``), no format specs, and what it
    gives must be a name the engine takes."""
    try:
        fields = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(pattern)]
    except ValueError as exc:
        raise ValueError(f"{pattern!r} is not a valid pattern ({exc}); write {{target}}") from exc
    for name, spec, conversion in fields:
        if name is None:
            continue
        if name not in NAME_FIELDS or spec or conversion:
            known = ", ".join(f"{{{k}}}" for k in NAME_FIELDS)
            raise ValueError(f"unknown placeholder {{{name}}} in {pattern!r}; use {known}")
        if name in unset:
            raise ValueError(f"{pattern!r} uses {{{name}}}, but the platform sets no {name}")
    sample = pattern.format(**{k: "x" for k in NAME_FIELDS})
    if not _CONTAINER_NAME.fullmatch(sample) or sample.endswith(".canaryd-old"):
        raise ValueError(
            f"{pattern!r} does not make a container name (letters, digits, '_', '.', '-', "
            "starting with a letter or digit), e.g. {target}-canary or lukhas-{service}-canary"
        )


def _prefixes(r: Reader, raw: Any, where: str) -> tuple[str, ...]:
    """Label prefixes (``caddy``, ``com.example.router.``), each a problem by index if bad."""
    if not isinstance(raw, list):
        r.problem(where, f"expected a list of label prefixes such as ['caddy'], got {raw!r}")
        return ()
    prefixes: list[str] = []
    for i, item in enumerate(raw):
        if not isinstance(item, str) or not _LABEL_PREFIX.fullmatch(item):
            r.problem(join(where, i), f"expected a label prefix such as 'caddy', got {item!r}")
            continue
        prefixes.append(item)
    return tuple(prefixes)


def _published_ports(r: Reader, raw: Any, where: str) -> dict[str, tuple[str, int]]:
    """Compose-style ``[IP:]HOST_PORT:CONTAINER_PORT[/PROTO]``, by container port; without an
    address the port is published on 127.0.0.1 only (unlike Compose: it is for a router on
    this host). Each bad entry is named by its index."""
    if not isinstance(raw, list):
        r.problem(where, f"expected a list such as ['127.0.0.1:18080:8080'], got {raw!r}")
        return {}
    ports: dict[str, tuple[str, int]] = {}
    for i, item in enumerate(raw):
        found = _PUBLISH.fullmatch(item) if isinstance(item, str) else None
        if found is None:
            r.problem(
                join(where, i),
                f"expected [IP:]HOST_PORT:CONTAINER_PORT[/tcp|udp] such as "
                f"127.0.0.1:18080:8080, got {item!r}",
            )
            continue
        ip, host_port, port, proto = found.groups()
        if not all(1 <= int(p) <= 65535 for p in (host_port, port)):
            r.problem(join(where, i), f"ports must be within 1..65535, got {item!r}")
            continue
        key = f"{int(port)}/{proto or 'tcp'}"
        if key in ports:
            r.problem(join(where, i), f"container port {key} is published twice")
            continue
        ports[key] = ((ip or "127.0.0.1").strip("[]"), int(host_port))
    return ports
