"""The registry shape of platform and router kinds, and the converters their readers share.

A target's ``platform`` (where the canary runs) and ``router`` (how traffic is split) are tagged
by ``kind``. Each kind is declared once, next to its adapter (``adapters/routers/nginx.py``,
``adapters/platforms/docker.py``, ...), as one ``Kind`` value: its frozen config dataclass
(exactly the keys that kind understands), its reader, its factory and how ``canaryd check``
describes it. One table per role (``adapters.routers.ROUTERS``, ``adapters.platforms.PLATFORMS``)
lists them, as Flagger's ``pkg/router/factory.go`` does; a new router is its module plus one row.

Why the shape lives here and the kinds do not: config sits below the adapters in the layers, so
the loader (``settings``) never imports an adapter. The composition root hands it the tables
(``Kinds``), and ``canaryd check`` and ``canaryd serve`` hand it the same ones, so they accept
exactly the same kinds. A kind the SPEC names but this build cannot run yet has no factory
(``build=None``): its keys are still checked, and the loader names it as not available.

The readers see the loader through ``Loader`` (the three members they use).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from canaryd.config.reader import Reader, join, to_int, to_str

if TYPE_CHECKING:  # typeshed's name for "a dataclass", not importable at run time
    from _typeshed import DataclassInstance

T = TypeVar("T")
C = TypeVar("C")  # a kind's config dataclass
F = TypeVar("F")  # a kind's factory (its type is the adapters' business)

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_LABEL = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# host:port as nginx's upstream ``server`` takes it; nothing that could end the directive
_SERVER = re.compile(
    r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?):([0-9]{1,5})"
)


class KindConfig(Protocol):
    """What the loader and the runtime know of any kind's config value: its tag."""

    @property
    def kind(self) -> str: ...


class Loader(Protocol):
    """What a kind's reader uses of ``settings``' loader."""

    @property
    def r(self) -> Reader: ...

    def need(
        self, m: Mapping[str, Any], key: str, where: str, convert: Callable[[Any], T], missing: T
    ) -> T:
        """A required key: a problem if absent; ``missing`` stands in for a bad or absent value."""
        ...

    def path(self, value: Any) -> Path:
        """A path from the config, relative to the config file's directory."""
        ...


def _owns_nothing(config: Any) -> tuple[object, ...] | None:
    return None


@dataclass(frozen=True, slots=True)
class Kind(Generic[C, F]):
    """One platform or router kind: everything canaryd knows of it, in one row.

    ``read`` turns the section into ``C`` (problems go to the loader's reader), ``keys`` are the
    section's keys besides ``kind``, ``build`` makes the adapter (``None``: named by the SPEC,
    not built yet), ``describe`` is the phrase ``canaryd check`` prints, and ``identity`` what a
    router takes over (two targets may not share it; ``None``: nothing exclusive).
    """

    name: str
    keys: frozenset[str]
    read: Callable[[Loader, Mapping[str, Any], str], C]
    build: F | None
    describe: Callable[[C], str]
    identity: Callable[[C], tuple[object, ...] | None] = _owns_nothing
    fallback: str = ""  # what to use meanwhile, for a kind without ``build``
    # observe-only: the kind changes nothing in the world (``noop``, ``none``), so decisions
    # say what canaryd did not do instead of claiming the traffic or the stable moved
    observe_only: bool = False
    # a router that runs the workload too (``argo-rollouts``: the Rollout owns the ReplicaSets):
    # its target's platform must be ``none``, and the router's adapter plays the platform
    deploys: bool = False


@dataclass(frozen=True, slots=True)
class Kinds:
    """The tables the loader dispatches on, by kind name (in the order errors list them).

    ``state_backends``: every ``state.backend`` the SPEC names, each with ``""`` when this
    build runs it, else what to use meanwhile; the loader refuses one not built yet, so
    ``check`` says what ``serve`` would, as for a kind without a factory."""

    platforms: Mapping[str, Kind[Any, Any]] = field(default_factory=dict)
    routers: Mapping[str, Kind[Any, Any]] = field(default_factory=dict)
    state_backends: Mapping[str, str] = field(
        default_factory=lambda: {"sqlite": "", "kubernetes": ""}
    )


def not_built(what: str, name: str, fallback: str) -> str:
    """The one line ``check`` and ``serve`` print for a kind or backend not built yet."""
    return f"{what} {name!r} is not available in this build yet; {fallback}"


def keyless(
    name: str,
    config: Callable[[], C],
    adapter: Callable[[], T],
    describe: str,
    *,
    observe_only: bool = False,
) -> Kind[C, Callable[[str, C, object], T]]:
    """The row of a kind with no keys besides ``kind`` (observe-only's ``none`` and ``noop``):
    its reader makes the one config value there is, and its factory needs nothing from it."""
    return Kind(
        name=name,
        keys=frozenset(),
        read=lambda ld, m, where: config(),
        build=lambda target, c, kube: adapter(),
        describe=lambda c: describe,
        observe_only=observe_only,
    )


def config_keys(config: type[DataclassInstance]) -> frozenset[str]:
    """A kind's keys, read off its config dataclass: every field but the ``kind`` tag. A row
    built this way cannot accept a key its dataclass has no field for, nor miss one it has."""
    return frozenset(f.name for f in fields(config)) - {"kind"}


def table(*kinds: Kind[Any, Any]) -> dict[str, Kind[Any, Any]]:
    """A registry table from its rows; a name given twice is a programming error."""
    rows: dict[str, Kind[Any, Any]] = {}
    for kind in kinds:
        if kind.name in rows:
            raise ValueError(f"kind {kind.name!r} is registered twice")
        rows[kind.name] = kind
    return rows


# --------------------------------------------------------------------------- converters


def to_name(value: Any) -> str:
    text = to_str(value)
    if not _NAME.fullmatch(text):
        raise ValueError(f"{text!r} is not a valid name (letters, digits, '.', '_', '-')")
    return text


def label_name(value: Any) -> str:
    text = to_str(value)
    if not _LABEL.fullmatch(text):
        raise ValueError(f"{text!r} is not a valid identifier")
    return text


def to_port(value: Any) -> int:
    port = to_int(value)
    if not 1 <= port <= 65535:
        raise ValueError(f"port must be within 1..65535, got {port}")
    return port


def to_server(value: Any) -> str:
    """``host:port`` for an nginx ``server`` line: a host name, IPv4 or ``[IPv6]``, and a port."""
    text = value if isinstance(value, str) else None
    found = _SERVER.fullmatch(text) if text is not None else None
    if text is None or found is None:
        raise ValueError(
            f"expected host:port such as 127.0.0.1:8080 or web-1.internal:8080, got {value!r}"
        )
    if not 1 <= int(found.group(1)) <= 65535:
        raise ValueError(f"port must be within 1..65535, got {value!r}")
    return text


def command(value: Any) -> tuple[str, ...]:
    """A command as an argv list, or one string split on whitespace (no shell is involved)."""
    if isinstance(value, str) and value.split():
        return tuple(value.split())
    if isinstance(value, list) and value and all(isinstance(v, str) and v for v in value):
        return tuple(value)
    raise ValueError(f"expected a command (a string or a list of strings), got {value!r}")


def object_ref(ld: Loader, m: Mapping[str, Any], where: str, key: str = "name") -> tuple[str, str]:
    """A Kubernetes object's name (``key``, required) and ``namespace`` (default ``default``):
    the reference every Kubernetes kind starts with, read and checked one way."""
    return ld.need(m, key, where, to_name, ""), ld.r.field(
        m, "namespace", where, to_name, "default"
    )


def read_labels(r: Reader, raw: Any, where: str, names: bool = True) -> dict[str, str]:
    """Label names (any keys, with ``names=False``) to strings; a bad entry is a problem."""
    labels: dict[str, str] = {}
    for key, value in (r.mapping(raw, where) if raw is not None else {}).items():
        if names and not _LABEL.fullmatch(key):
            r.problem(join(where, key), "not a valid Prometheus label name")
            continue
        if not isinstance(value, str):
            r.problem(
                join(where, key),
                f"expected a string, got {type(value).__name__} {value!r} (quote it)",
            )
            continue
        labels[key] = value
    return labels
