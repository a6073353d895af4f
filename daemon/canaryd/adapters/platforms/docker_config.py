"""The ``docker`` platform kind's config: its dataclass and its reader (``docker.KIND`` uses them).

Apart from ``docker`` only to keep that module under 600 lines; nothing here talks to Docker.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from canaryd.config.kinds import Loader, read_labels, to_port
from canaryd.config.reader import Reader, join, to_str

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
    kind: Literal["docker"] = field(default="docker", init=False)


def read_config(ld: Loader, m: Mapping[str, Any], where: str) -> DockerConfig:
    r = ld.r
    service = r.field(m, "service", where, to_str, None)
    labels = read_labels(r, m.get("labels", {}), join(where, "labels"), names=False)
    if (service is None) == (not labels):
        r.problem(where, "needs exactly one of service (a Compose service) or labels")
    probe_path = r.field(m, "probe_path", where, to_str, None)
    if probe_path is not None and not probe_path.startswith("/"):
        r.problem(join(where, "probe_path"), f"must start with '/', got {probe_path!r}")
    return DockerConfig(
        service=service,
        labels=labels,
        project=r.field(m, "project", where, to_str, None),
        host=r.field(m, "host", where, to_str, None),
        probe_path=probe_path,
        probe_port=r.field(m, "probe_port", where, to_port, None),
        canary_ports=_published_ports(r, m.get("canary_ports", []), join(where, "canary_ports")),
    )


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
