"""Router kinds the SPEC names that this build cannot run yet: their config, not their adapter.

``argo-rollouts`` is read and checked like any kind
(a typo in their keys is named), then refused with one clear line by ``canaryd check`` and
``canaryd serve`` alike: a row without a factory. When one lands, its dataclass and reader move
to its own module beside its adapter, with a factory, and its row in ``ROUTERS`` points there.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

from canaryd.config.kinds import Kind, Loader, config_keys, object_ref, to_name, to_port

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

USE_MEANWHILE = "use noop (observe-only) for now"
C = TypeVar("C", bound="DataclassInstance")


@dataclass(frozen=True, slots=True)
class ArgoRolloutsConfig:
    name: str  # the Rollout
    namespace: str = "default"
    kind: Literal["argo-rollouts"] = field(default="argo-rollouts", init=False)


_CONVERT: dict[str, Callable[[Any], object]] = {"port": to_port}  # any other key: a name


def _reader(config: type[C]) -> Callable[[Loader, Mapping[str, Any], str], C]:
    """A planned kind's reader, from its dataclass: the object reference, then every other
    field, optional, in the dataclass's order (``port`` a port number, the rest object names).
    It only has to check the keys: nothing is built from them yet."""

    def read(ld: Loader, m: Mapping[str, Any], where: str) -> C:
        name, namespace = object_ref(ld, m, where)
        options = {
            f.name: ld.r.field(m, f.name, where, _CONVERT.get(f.name, to_name), None)
            for f in fields(config)
            if f.init and f.name not in ("name", "namespace")
        }
        return cast(Callable[..., C], config)(name, namespace, **options)

    return read


def _object(c: Any) -> tuple[object, ...] | None:
    """A named Kubernetes object: two targets may not share it."""
    return (c.kind, c.namespace, c.name) if c.name else None


def _named(c: Any) -> str:
    return f"{c.kind} ({c.namespace}/{c.name})"


def _planned(name: str, config: type[C]) -> Kind[C, Any]:
    """The row of a kind without a factory: its keys (its dataclass's fields) are checked, then
    ``check`` and ``serve`` refuse it and name what to use meanwhile."""
    return Kind(
        name=name,
        keys=config_keys(config),
        read=_reader(config),
        build=None,
        describe=_named,
        identity=_object,
        fallback=USE_MEANWHILE,
    )


ARGO_ROLLOUTS = _planned("argo-rollouts", ArgoRolloutsConfig)
