"""What the platforms that run a canary image themselves (docker, kubernetes) share.

Both make one change at a time (a removal must not race an ensure), and both remember the image
this process last asked the canary to run. A canary found running another image, a previous
rollout's left behind, is reported present but not ready, so the worker never judges the new
image on the old one's traffic; the next ``ensure_canary`` replaces it. Before the first
``ensure_canary`` (after a restart) any image counts: the stored rollout re-asserts it.
"""

from __future__ import annotations

import asyncio


class ImageCanaryPlatform:
    """The lock and the wanted image; a kind subclasses it and calls ``__init__``."""

    def __init__(self) -> None:
        self._wanted: str | None = None  # the image last ensured by this process
        self._lock = asyncio.Lock()  # one change at a time

    def _runs_wanted(self, image: str | None) -> bool:
        """Whether a canary running ``image`` (None: unknown) is the one this process asked for."""
        return self._wanted is None or image == self._wanted
