"""What a canary or a replacement copies from a stable container: pure functions on the
engine's ``GET /containers/{id}/json`` documents (``docker`` does the talking).

Apart from ``docker`` to keep that module under 600 lines, and because these are the parts
worth testing without an engine: which settings are the container's own, which labels a
canary must not carry, which networks and aliases it joins.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

Info = dict[str, Any]  # a container as ``GET /containers/{id}/json`` describes it

# Networks where the engine allows no aliases, and modes that bring no network of their own
_BUILTIN_NETWORKS = {"bridge", "host", "none", "default"}
# Container settings copied as they are unless they equal the old image's default
_SETTINGS = (
    "Cmd",
    "Entrypoint",
    "Healthcheck",
    "WorkingDir",
    "User",
    "StopSignal",
    "StopTimeout",
    "Tty",
    "OpenStdin",
    "StdinOnce",
    "Domainname",
)


def own_settings(info: Info, defaults: Mapping[str, Any], image: str) -> dict[str, Any]:
    """What a container set itself, as a create body with ``image``: its configuration less
    the values its image (``defaults``, the image's ``Config``) gave it."""
    config: dict[str, Any] = {"Image": image}
    mine = info["Config"]
    for key in _SETTINGS:
        value = mine.get(key)
        if value not in (None, "", defaults.get(key)):
            config[key] = value
    if mine.get("Hostname") and mine["Hostname"] != info["Id"][:12]:
        config["Hostname"] = mine["Hostname"]  # set by the user, not the engine's default
    inherited_env = set(defaults.get("Env") or ())
    env = [e for e in mine.get("Env") or () if e not in inherited_env]
    if env:
        config["Env"] = env
    image_labels = defaults.get("Labels") or {}
    config["Labels"] = {
        k: v for k, v in (mine.get("Labels") or {}).items() if image_labels.get(k) != v
    }
    image_ports = defaults.get("ExposedPorts") or {}
    ports: dict[str, Any] = {p: {} for p in mine.get("ExposedPorts") or {} if p not in image_ports}
    if ports:
        config["ExposedPorts"] = ports
    return config


def without_prefixes(labels: Mapping[str, str], prefixes: tuple[str, ...]) -> dict[str, str]:
    """``labels`` less every one whose key starts with one of ``prefixes``."""
    return {k: v for k, v in labels.items() if not k.startswith(prefixes)}


def endpoints_of(info: Info, canary_aliases: list[str] | None) -> dict[str, dict[str, Any]]:
    """The endpoint settings to join ``info``'s networks with: for a canary only its own
    aliases (and no fixed address); for a replacement the old aliases less the engine's
    container-id alias."""
    mode = str(info["HostConfig"].get("NetworkMode") or "default")
    if mode in ("host", "none") or mode.startswith("container:"):
        return {}
    endpoints: dict[str, dict[str, Any]] = {}
    for network, endpoint in (info["NetworkSettings"].get("Networks") or {}).items():
        user_defined = network not in _BUILTIN_NETWORKS
        if canary_aliases is not None:
            settings: dict[str, Any] = {"Aliases": canary_aliases if user_defined else None}
        else:
            aliases = [a for a in endpoint.get("Aliases") or () if a != info["Id"][:12]]
            settings = {
                "Aliases": aliases if user_defined and aliases else None,
                "IPAMConfig": endpoint.get("IPAMConfig"),
            }
        settings["Links"] = endpoint.get("Links")
        endpoints[network] = settings
    return endpoints
