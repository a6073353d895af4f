"""Observe-only mode, the workload half: the ``none`` platform (``routers.noop`` is the other).

Something else deploys the canary and updates the stable; canaryd takes the canary as present
and ready. It reports the stable image it was last told (None until then), so a rollback that
would need the previous stable image is refused once promotion has begun.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from canaryd.adapters.kube import KubeClient
from canaryd.config.kinds import Kind, Loader


class NonePlatform:
    """Something else deploys: the canary is taken as present and ready."""

    kind = "none"

    def __init__(self) -> None:
        self._stable: str | None = None
        self._present = True

    async def ensure_canary(self, image: str) -> None:
        self._present = True

    async def canary_status(self) -> tuple[bool, bool]:
        return self._present, self._present

    async def stable_image(self) -> str | None:
        return self._stable

    async def update_stable(self, image: str) -> None:
        self._stable = image

    async def remove_canary(self) -> None:
        self._present = False

    async def aclose(self) -> None:
        """Nothing held."""


@dataclass(frozen=True, slots=True)
class NoneConfig:
    """``platform: {kind: none}``: something else deploys the canary."""

    kind: Literal["none"] = field(default="none", init=False)


def read_config(ld: Loader, m: Mapping[str, Any], where: str) -> NoneConfig:
    return NoneConfig()


def build(target: str, c: NoneConfig, kube: KubeClient | None) -> NonePlatform:
    return NonePlatform()


KIND: Kind[NoneConfig, Any] = Kind(
    name="none", keys=frozenset(), read=read_config, build=build, describe=lambda c: "none"
)
