"""Files that a proxy reads while canaryd rewrites them (nginx's include, Traefik's dynamic file).

Both routers need the same two things: read a file that may not exist yet, and replace it so
that a reader (``nginx -t``, a reload someone else triggers, Traefik's directory watch) sees the
old content or the new, never a half-written file. The new content goes to a temp file in the
same directory (a rename is atomic only within one file system), is fsynced, then renamed over
the old one, and the directory is fsynced so the rename survives a crash. The temp file's name
is ``.<name>.<random>.tmp``: hidden, and with a suffix neither proxy loads as configuration.

They also read a weight back the same way (``FileRouter``): the weight the file states counts
only if rendering that weight gives the file byte for byte, so a hand edit, another target's
file or a half-understood one reads as ``None``, "cannot tell", and the worker re-asserts its
weight. And they share their registry row's shape (``file_kind``): ``canaryd check`` names the
file, and two targets may not rewrite the same one.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import Field
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar

from canaryd.adapters.kube import KubeClient
from canaryd.config.kinds import Kind, Loader, config_keys
from canaryd.core.errors import RouterUnavailable


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


class FileRouter(abc.ABC):
    """A router whose whole state is one file it rewrites (``path``), for one target.

    A kind subclasses it with ``render``, ``set_weight`` and ``_stated``."""

    kind: str

    def __init__(self, target: str, path: Path) -> None:
        self.target, self.path = target, Path(path)
        self._lock = asyncio.Lock()  # one change at a time: a restore must not undo another

    @abc.abstractmethod
    def render(self, weight: int) -> str:
        """The file's whole text at ``weight``."""

    @abc.abstractmethod
    async def set_weight(self, weight: int) -> None:
        """Write the file for ``weight`` (and whatever the proxy needs to load it)."""

    @abc.abstractmethod
    def _stated(self, content: bytes) -> int | None:
        """The weight ``content`` states, or None if it states none this router would trust."""

    async def get_weight(self) -> int | None:
        """The file's weight if the file is exactly what ``render`` writes for it, else None."""
        try:
            content = await asyncio.to_thread(read_if_present, self.path)
        except OSError:
            return None
        weight = None if content is None else self._stated(content)
        if weight is None or not 0 <= weight <= 100 or self.render(weight).encode() != content:
            return None
        return weight

    async def aclose(self) -> None:  # noqa: B027 (concrete on purpose: nothing is held)
        """Nothing to close: each call opens and closes what it uses."""

    async def finalize(self) -> None:
        """Everything to stable; the file stays, since the user's proxy configuration names
        what it defines (nginx.conf includes it, a Traefik router names its service)."""
        await self.set_weight(0)

    async def _read_before_change(self) -> bytes | None:
        """The file as it is before a change (None: no file yet). Unreadable raises
        ``RouterUnavailable``: no change is made over content this router could not see."""
        try:
            return await asyncio.to_thread(read_if_present, self.path)
        except OSError as exc:
            raise RouterUnavailable(f"cannot read {self.path}: {exc}") from exc


class FileConfig(Protocol):
    """A file router's config: a dataclass whose ``path`` is the file."""

    __dataclass_fields__: ClassVar[dict[str, Field[Any]]]

    @property
    def path(self) -> Path: ...


C = TypeVar("C", bound=FileConfig)
R = TypeVar("R", bound=FileRouter)
Factory = Callable[[str, C, KubeClient | None], R]


def file_kind(
    name: str,
    config: type[C],
    read: Callable[[Loader, Mapping[str, Any], str], C],
    router: Callable[..., R],
) -> Kind[C, Factory[C, R]]:
    """The registry row of a file router, from its config dataclass and its router class.

    The two are made to match: the config's fields are the section's keys, and each one but
    ``path`` is the router's keyword of the same name, so a key added to one is added to the
    other and cannot be forgotten in between. ``check`` shows the file, and the resolved file is
    what the router takes over (an unset path, which the loader has already named, owns
    nothing)."""
    keys = config_keys(config)

    def build(target: str, c: C, kube: KubeClient | None) -> R:
        options = {key: getattr(c, key) for key in keys - {"path"}}
        return router(target, c.path, **options)

    return Kind(
        name=name,
        keys=keys,
        read=read,
        build=build,
        describe=lambda c: f"{name} ({c.path})",
        identity=lambda c: (name, c.path.resolve()) if c.path != Path() else None,
    )
