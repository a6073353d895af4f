"""Which bytes an image reference names on a Docker engine right now (SPEC §8: digest pinning).

A tag can be moved at any time (``docker tag``, a push, a pull); a rollout must promote the
bytes it verified and judged, so the docker platform resolves the tag once, at start, and the
rollout uses the answer from then on (``Rollout.pinned``):

* the image's registry digest, ``<repository>@sha256:…``, when ``RepoDigests`` has one for the
  image's own repository (an image pulled from, or pushed to, a registry);
* else its image ID, ``sha256:…``: an image built or loaded on the host has no registry digest
  (``RepoDigests`` is empty until it is pushed), and the engine accepts the ID wherever it
  accepts a name. The ID names the same bytes for as long as the image exists on this host.

The kubernetes platform cannot pin at start (the node, not canaryd, pulls the image): it pins
once the canary runs, from what its pods report (``pinned_from_image_id``).

Pure: the platforms read the engine or the API and hand the result here.
"""

from __future__ import annotations

import re
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


# --------------------------------------------------------------------------- Kubernetes

_HEX = r"sha256:[0-9a-f]{64}"
_PATH = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_HOST = r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?(?::[0-9]+)?"
_REPOSITORY = re.compile(rf"(?:{_HOST}/)?{_PATH}(?:/{_PATH})*\Z")
_IMAGE_ID = re.compile(
    rf"(?:docker-pullable://(?P<pullable>[^@]+)@|(?P<repo>[^@:/][^@]*)@)?(?P<digest>{_HEX})\Z"
)
_ID_SHOWN = 120  # characters of a refused imageID quoted back in an error


def pinned_from_image_id(image: str, image_id: str) -> str:
    """``repo@sha256:<64 hex>`` for the bytes a pod's container runs, from its
    ``status.containerStatuses[].imageID``, which the kubelet reports in one of three forms:

    * ``docker-pullable://registry/repo@sha256:…`` (dockershim, cri-dockerd);
    * ``registry/repo@sha256:…`` (containerd, CRI-O): the repository the bytes came from;
    * ``sha256:…`` (no repository: an image loaded onto the node): taken as the digest of
      ``image``'s repository, the only one the pod could have named.

    Anything else is refused with ``ValueError`` (a tag, a short or uppercase digest, another
    algorithm, a stray scheme, an empty ID before the container started): a rollout must not
    promote a reference built from text it could not read exactly.
    """
    found = _IMAGE_ID.match(image_id)
    if found is None:
        shown = image_id if len(image_id) <= _ID_SHOWN else image_id[:_ID_SHOWN] + "…"
        raise ValueError(
            f"imageID {shown!r} is not docker-pullable://<repo>@sha256:<64 hex>, "
            "<repo>@sha256:<64 hex> or sha256:<64 hex>"
        )
    repo = found.group("pullable") or found.group("repo") or repository(image)
    if _REPOSITORY.match(repo) is None:
        raise ValueError(f"imageID {image_id!r} names no valid repository ({repo!r})")
    return f"{repo}@{found.group('digest')}"
