"""What the platforms that run a canary image themselves (docker, kubernetes) share.

Both make one change at a time (a removal must not race an ensure), and both remember the image
this process last asked the canary to run. A canary found running another image, a previous
rollout's left behind, is reported present but not ready, so the worker never judges the new
image on the old one's traffic; the next ``ensure_canary`` replaces it. Before the first
``ensure_canary`` (after a restart) any image counts: the stored rollout re-asserts it.

The runbook's ``--image=v2.1.0`` is a bare tag: ``resolve_image`` places it in the repository
the stable runs (the docker platform uses it). It is pure, so other steps on the image (digest
pinning) can run on its result.
"""

from __future__ import annotations

import asyncio
import re


class ImageCanaryPlatform:
    """The lock and the wanted image; a kind subclasses it and calls ``__init__``."""

    def __init__(self) -> None:
        self._wanted: str | None = None  # the image last ensured by this process
        self._lock = asyncio.Lock()  # one change at a time

    def _runs_wanted(self, image: str | None) -> bool:
        """Whether a canary running ``image`` (None: unknown) is the one this process asked for."""
        return self._wanted is None or image == self._wanted


# ------------------------------------------------------------------ image references
#
# The runbook starts a canary with ``--image=v2.1.0``: a tag, meaning "the stable's image at
# that tag". Grammar from the distribution spec (docker/distribution ``reference``): a tag is
# ``[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}``; a reference is ``[host[:port]/]path[:tag][@digest]``,
# so a ``:`` after the last ``/`` starts the tag and one before it is a registry's port.

_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_IMAGE_ID = re.compile(r"(sha256:)?[0-9a-f]{12,64}")


def is_bare_tag(image: str) -> bool:
    """Whether ``image`` names only a tag: ``v2.1.0`` or ``:v2.1.0`` (no ``/``, ``@`` or other
    ``:``). A one-word image name (``nginx``) reads as a tag too: write ``nginx:latest``."""
    tag = image.removeprefix(":")
    return bool(_TAG.fullmatch(tag)) and "/" not in image


def repository(reference: str) -> str | None:
    """The repository of an image reference, without tag or digest
    (``host:5000/team/app:v1`` -> ``host:5000/team/app``); None for an image id."""
    if _IMAGE_ID.fullmatch(reference):
        return None
    name = reference.split("@", 1)[0]
    if name.rfind(":") > name.rfind("/"):
        name = name[: name.rfind(":")]
    return name or None


def resolve_image(image: str, stable: str) -> str:
    """The image to run for a requested ``image``, given the reference the stable runs:
    a bare tag becomes the stable's repository at that tag, anything else is used as given.
    Raises ``ValueError`` (saying why) when a tag cannot be placed: the stable runs an image
    id, or the tag is malformed."""
    if not image.startswith(":") and not is_bare_tag(image):
        return image
    tag = image.removeprefix(":")
    if not _TAG.fullmatch(tag):
        raise ValueError(f"{image!r} is not a valid image tag")
    repo = repository(stable)
    if repo is None:
        raise ValueError(
            f"tag {tag!r} needs the stable's repository, but the stable runs {stable!r} (an "
            "image id): give the full reference, e.g. registry.example.com/app:" + tag
        )
    return f"{repo}:{tag}"
