"""Observe-only mode, the workload half: the ``none`` platform (``routers.noop`` is the other).

Something else deploys the canary and updates the stable; canaryd takes the canary as present
and ready. It reports the stable image it was last told (None until then), so a rollback that
would need the previous stable image is refused once promotion has begun.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from canaryd.config.kinds import keyless


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


KIND = keyless("none", NoneConfig, NonePlatform, "none", observe_only=True)
