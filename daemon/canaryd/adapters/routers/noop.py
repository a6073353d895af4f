"""Observe-only mode, the traffic half: the ``noop`` router (``platforms.none`` is the other).

With these canaryd routes nothing and deploys nothing; another tool (a CD pipeline, Argo CD,
a person) runs the canary and moves traffic, and canaryd judges it, records every decision and
says "roll back" through its history, metrics and alerts. The router reports back the weight it
was last told, so stages progress on the policy's timing; after a restart it reports nothing
until told again (``None`` = cannot tell), which makes the worker re-assert the weight.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from canaryd.config.kinds import keyless


class NoopRouter:
    kind = "noop"

    def __init__(self) -> None:
        self._weight: int | None = None

    async def set_weight(self, weight: int) -> None:
        if not 0 <= weight <= 100:  # as every router: an impossible weight changes nothing
            raise ValueError(f"weight must be within 0..100, got {weight}")
        self._weight = weight

    async def get_weight(self) -> int | None:
        return self._weight

    async def finalize(self) -> None:
        self._weight = None

    async def aclose(self) -> None:
        """Nothing held."""


@dataclass(frozen=True, slots=True)
class NoopConfig:
    """``router: {kind: noop}``: weights are recorded, never applied (and cannot be verified)."""

    kind: Literal["noop"] = field(default="noop", init=False)


KIND = keyless("noop", NoopConfig, NoopRouter, "noop (observe only)", observe_only=True)
