"""Image references as the supply-chain options read them (SPEC §8): pinned or not, and the
``{image}`` of a ``verify:`` command.

A reference is *pinned* when it names bytes, not a name that can be moved: it ends in
``@sha256:<64 lowercase hex>`` (``registry/repo:tag@sha256:…`` included, the tag being then
only a comment), or it is an engine's image ID ``sha256:<64 hex>`` (what the docker platform
pins a locally built image to: such an image has no registry digest). ``require_digest``
accepts only the first form from a person: an image ID means something on one engine only.
Pure, like the rest of ``core``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_DIGEST = re.compile(r"@sha256:[0-9a-f]{64}\Z")
_IMAGE_ID = re.compile(r"sha256:[0-9a-f]{64}\Z")
PLACEHOLDER = "{image}"


def has_digest(image: str) -> bool:
    """``…@sha256:<64 hex>``: what ``require_digest: true`` asks a start to give."""
    return _DIGEST.search(image) is not None


def is_pinned(image: str) -> bool:
    """A reference that names bytes: a registry digest or an engine's image ID."""
    return has_digest(image) or _IMAGE_ID.match(image) is not None


def digest_refusal(target: str, image: str) -> str | None:
    """Why a start of ``image`` on a ``require_digest`` target is refused, or None."""
    if has_digest(image):
        return None
    return (
        f"target {target} requires an image pinned by digest (require_digest: true): "
        f"expected <image>@sha256:<64 hex>, got {image!r}"
    )


def substitute(argv: Sequence[str], image: str) -> tuple[str, ...]:
    """``argv`` with every ``{image}`` replaced by ``image`` (inside an argument too, as in
    ``--image={image}``); nothing else is interpreted: no shell, no other braces."""
    return tuple(arg.replace(PLACEHOLDER, image) for arg in argv)
