"""Files that a proxy reads while canaryd rewrites them (nginx's include, Traefik's dynamic file).

Both routers need the same two things: read a file that may not exist yet, and replace it so
that a reader (``nginx -t``, a reload someone else triggers, Traefik's directory watch) sees the
old content or the new, never a half-written file. The new content goes to a temp file in the
same directory (a rename is atomic only within one file system), is fsynced, then renamed over
the old one, and the directory is fsynced so the rename survives a crash. The temp file's name
is ``.<name>.<random>.tmp``: hidden, and with a suffix neither proxy loads as configuration.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def read_if_present(path: Path) -> bytes | None:
    """The file's bytes, or None if there is no file (other ``OSError``\\ s propagate)."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def write_atomically(path: Path, content: bytes) -> None:
    """Replace ``path`` by ``content`` in one rename, keeping the old file's mode (or 0644)."""
    try:
        mode = path.stat().st_mode & 0o777
    except FileNotFoundError:
        mode = 0o644
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(content)
            out.flush()
            os.fchmod(out.fileno(), mode)
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself survives a crash
    finally:
        os.close(directory)
