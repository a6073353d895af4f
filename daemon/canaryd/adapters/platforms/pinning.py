"""Which bytes an image reference names on a Docker engine right now (SPEC §8: digest pinning).

A tag can be moved at any time (``docker tag``, a push, a pull); a rollout must promote the
bytes it verified and judged, so the docker platform resolves the tag once, at start, and the
rollout uses the answer from then on (``Rollout.pinned``):

* the image's registry digest, ``<repository>@sha256:…``, when ``RepoDigests`` has one for the
  image's own repository (an image pulled from, or pushed to, a registry);
* else its image ID, ``sha256:…``: an image built or loaded on the host has no registry digest
  (``RepoDigests`` is empty until it is pushed), and the engine accepts the ID wherever it
  accepts a name. The ID names the same bytes for as long as the image exists on this host.

Pure: the docker platform inspects the image and hands the result here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from canaryd.core.supply import is_pinned


def repository(image: str) -> str:
    """``registry:5000/team/app:v2`` -> ``registry:5000/team/app`` (tag and digest dropped)."""
    name = image.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    return name[:colon] if colon > slash else name


def pinned_reference(image: str, inspected: Mapping[str, Any]) -> str:
    """The reference naming exactly the bytes ``inspected`` (``GET /images/{name}/json``)
    describes: a registry digest of ``image``'s repository, else the image ID."""
    if is_pinned(image):
        return image
    wanted = repository(image)
    digests = [str(d) for d in inspected.get("RepoDigests") or ()]
    for digest in digests:
        if repository(digest) == wanted and is_pinned(digest):
            return digest
    image_id = str(inspected.get("Id") or "")
    if not is_pinned(image_id):
        raise ValueError(f"the engine reports no image ID for {image!r}")
    return image_id
