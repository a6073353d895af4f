"""The dashboard's stylesheet and script, served by canaryd itself (no CDN, nothing external).

They are package data (``pyproject.toml``'s ``package-data``), read once when this module is
imported, at the daemon's start, so serving one never touches the disk on the event loop; a
non-editable install ships them beside this module. ``Cache-Control: no-cache`` makes a
browser revalidate after an upgrade; the ``ETag`` (a digest of the file) lets it keep its copy
otherwise.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib.resources import files

TYPES = {"dashboard.css": "text/css", "dashboard.js": "text/javascript"}


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


def _load(name: str) -> Asset:
    body = files("canaryd.api.dashboard").joinpath("static", name).read_bytes()
    return Asset(body, TYPES[name], '"' + hashlib.sha256(body).hexdigest()[:32] + '"')


ASSETS = {name: _load(name) for name in TYPES}
