"""The ``nginx`` router: the split lives in an include file that nginx re-reads on a reload.

Open-source nginx has no API to change upstream weights at run time, so canaryd owns one small
file per target, included in the ``http`` block of the user's configuration, and applies a
weight in three steps: write the file atomically (temp file in the same directory, fsync,
``os.replace``), validate the whole configuration with ``test_command`` (``nginx -t``), then
``reload_command`` (``nginx -s reload``: the master starts workers with the new configuration
and lets the old ones finish their requests, so nothing is dropped). If the test fails the
previous file is put back byte for byte (or removed if there was none) before the error is
raised, so a broken weight never reaches the next reload, whoever triggers it.

For target ``web`` with ``stable_servers: [10.0.0.5:8080, 10.0.0.6:8080]`` and
``canary_servers: [10.0.0.7:8080]`` at weight 25 the file reads::

    # canaryd: target=web weight=25
    # Written by canaryd (router kind nginx); a hand edit is overwritten on the next change.
    upstream web {
        server 10.0.0.5:8080 weight=3;
        server 10.0.0.6:8080 weight=3;
        server 10.0.0.7:8080 weight=2;
    }
    upstream web_stable {
        server 10.0.0.5:8080;
        server 10.0.0.6:8080;
    }
    upstream web_canary {
        server 10.0.0.7:8080;
    }
    map $http_x_canary_deploy $web_pool {
        default web;
        canary web_canary;
        stable web_stable;
    }

and the user's configuration proxies through the map's variable::

    http {
        include /etc/nginx/canaryd/web.conf;
        server {
            listen 80;
            location / {
                proxy_pass http://$web_pool;
            }
        }
    }

Each side's share is spread evenly over its servers (2 stable at 75 %, 1 canary at 25 %:
75·1 : 25·2 per server, reduced to 3 : 2). nginx weights must be at least 1, so at weight 0
the canary servers are left out of the weighted upstream and at 100 the stable ones are; the
pinned upstreams always list their side. A request with ``X-Canary-Deploy: canary`` goes to the
canary at every weight (and ``stable`` to stable; nginx's ``map`` compares case-insensitively).
``proxy_pass`` with a variable that names an upstream group needs no ``resolver``
(https://nginx.org/en/docs/http/ngx_http_proxy_module.html#proxy_pass). The addresses are
written as given: the config loader lets nothing but ``host:port`` through
(``config.kinds.to_server``), so no value can end a directive early.

Reading back: ``get_weight`` returns the weight of the header comment only if the file is,
byte for byte, what ``set_weight`` writes for that weight, which pins every server weight,
both pinned pools and the map to the comment. Anything else (no file, a hand edit, servers
that changed in canaryd's config) is ``None``, "cannot tell", and the worker re-asserts its
weight, which rewrites the file. It is also ``None`` until this process has itself tested and
reloaded that content: the file on disk says what nginx *will* load, not what it has loaded (a
crash between the write and the reload, a reload that failed), so after a restart canaryd
reloads once rather than trust it. ``set_weight`` with the file already right and applied
does nothing: no write, no reload.

``finalize`` sends all traffic to stable (weight 0) and leaves the file where it is: the
user's configuration includes it, and nginx would refuse to reload without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from canaryd.adapters.routers.files import FileRouter, file_kind, write_atomically
from canaryd.config.kinds import Loader, command, label_name, to_server
from canaryd.config.reader import join
from canaryd.core.errors import RouterUnavailable

COMMAND_TIMEOUT = 10.0  # seconds for nginx -t or a reload; a graceful reload returns in ~15 ms
_HEADER = re.compile(r"# canaryd: target=(\S+) weight=(\d{1,3})\n")
_STDERR_CHARS = 1500


def upstream_name(target: str) -> str:
    """A target name as an nginx upstream / variable name (letters, digits, ``_``)."""
    name = re.sub(r"[^A-Za-z0-9_]", "_", target)
    return name if name and not name[0].isdigit() else f"_{name}"


def render(
    target: str,
    upstream: str,
    stable: Sequence[str],
    canary: Sequence[str],
    weight: int,
) -> str:
    """The include file that sends ``weight`` percent of requests to the canary."""
    if not 0 <= weight <= 100:
        raise ValueError(f"weight must be within 0..100, got {weight}")
    if not stable or not canary:
        raise ValueError("nginx needs at least one stable and one canary server")
    per_stable, per_canary = (100 - weight) * len(canary), weight * len(stable)
    common = math.gcd(per_stable, per_canary)
    weighted = [(s, per_stable // common) for s in stable if per_stable] + [
        (c, per_canary // common) for c in canary if per_canary
    ]
    lines = [
        f"# canaryd: target={target} weight={weight}",
        "# Written by canaryd (router kind nginx); a hand edit is overwritten on the next change.",
        f"upstream {upstream} {{",
        *(f"    server {server} weight={w};" for server, w in weighted),
        "}",
        f"upstream {upstream}_stable {{",
        *(f"    server {server};" for server in stable),
        "}",
        f"upstream {upstream}_canary {{",
        *(f"    server {server};" for server in canary),
        "}",
        f"map $http_x_canary_deploy ${upstream}_pool {{",
        f"    default {upstream};",
        f"    canary {upstream}_canary;",
        f"    stable {upstream}_stable;",
        "}",
    ]
    return "\n".join(lines) + "\n"


class NginxFileRouter(FileRouter):
    kind = "nginx"

    def __init__(
        self,
        target: str,
        path: Path,
        *,
        stable_servers: Sequence[str],
        canary_servers: Sequence[str],
        test_command: Sequence[str] = ("nginx", "-t"),
        reload_command: Sequence[str] = ("nginx", "-s", "reload"),
        upstream: str | None = None,
        timeout: float = COMMAND_TIMEOUT,
    ) -> None:
        if not stable_servers or not canary_servers:
            raise ValueError("nginx needs at least one stable and one canary server")
        super().__init__(target, path)
        self.upstream = upstream or upstream_name(target)
        self._stable, self._canary = tuple(stable_servers), tuple(canary_servers)
        self._test, self._reload = tuple(test_command), tuple(reload_command)
        self._timeout = timeout
        self._applied: bytes | None = None  # what this process last tested and reloaded

    def render(self, weight: int) -> str:
        return render(self.target, self.upstream, self._stable, self._canary, weight)

    async def set_weight(self, weight: int) -> None:
        wanted = self.render(weight).encode()
        async with self._lock:
            previous = await self._read_before_change()
            if previous == wanted and self._applied == wanted:
                return
            wrote = previous != wanted
            if wrote:
                await asyncio.to_thread(self._write_or_raise, wanted)
            # Test even when the file was already right (only the reload is owed): the rest of
            # nginx's configuration may have changed since, and a refusal must come with
            # nginx's own message before anything is signalled.
            code, stderr = await self._run(self._test)
            if code != 0:
                outcome = await self._restore(previous) if wrote else "unchanged"
                raise RouterUnavailable(
                    f"{_show(self._test)} rejected weight {weight} for {self.target} "
                    f"(exit {code}; {self.path} {outcome}): {stderr}"
                )
            code, stderr = await self._run(self._reload)
            if code != 0:
                # The file is valid (it passed the test) and stays: nginx loads it on its next
                # start. Not marked applied, so get_weight says "cannot tell" and the worker's
                # next pass reloads again.
                raise RouterUnavailable(
                    f"{_show(self._reload)} failed (exit {code}) after writing weight {weight} "
                    f"for {self.target}: {stderr}"
                )
            self._applied = wanted

    def _stated(self, content: bytes) -> int | None:
        """The header's weight, for content this process has itself tested and reloaded."""
        if content != self._applied:
            return None
        found = _HEADER.match(content.decode("utf-8", errors="replace"))
        if found is None or found.group(1) != self.target:
            return None
        return int(found.group(2))

    # ---------------------------------------------------------------- helpers

    async def _run(self, argv: tuple[str, ...]) -> tuple[int, str]:
        """Run ``argv`` (no shell); its exit code and its trimmed stderr."""
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            return 127, f"cannot run {argv[0]!r}: {exc.strerror or exc}"
        try:
            async with asyncio.timeout(self._timeout):
                _, stderr = await process.communicate()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            return -1, f"no answer within {self._timeout:g}s"
        return process.returncode or 0, _trim(stderr)

    def _write_or_raise(self, content: bytes) -> None:
        try:
            write_atomically(self.path, content)
        except OSError as exc:
            raise RouterUnavailable(f"cannot write {self.path}: {exc}") from exc

    async def _restore(self, previous: bytes | None) -> str:
        """Put the file back as it was (no file: remove it); what happened, for the error."""
        try:
            if previous is None:
                await asyncio.to_thread(self.path.unlink, missing_ok=True)
                return "removed again"
            await asyncio.to_thread(write_atomically, self.path, previous)
        except OSError as exc:
            return f"could NOT be restored: {exc}"
        return "restored"


def _trim(stderr: bytes) -> str:
    text = stderr.decode("utf-8", errors="replace").strip()
    if len(text) > _STDERR_CHARS:
        text = "..." + text[-_STDERR_CHARS:]
    return " | ".join(line.strip() for line in text.splitlines() if line.strip()) or "(no output)"


def _show(argv: Sequence[str]) -> str:
    return " ".join(argv)


# --------------------------------------------------------------------------- the kind


@dataclass(frozen=True, slots=True)
class NginxConfig:
    """``router: {kind: nginx, ...}``: an include file with the upstream and the header map."""

    path: Path  # the include file with the upstream and the header map
    reload_command: tuple[str, ...] = ("nginx", "-s", "reload")
    test_command: tuple[str, ...] = ("nginx", "-t")
    upstream: str | None = None  # upstream name (default: the target's name)
    # "host:port" of each server; required by the loader (empty only in a hand-built value)
    stable_servers: tuple[str, ...] = ()
    canary_servers: tuple[str, ...] = ()
    kind: Literal["nginx"] = field(default="nginx", init=False)


def read_config(ld: Loader, m: Mapping[str, Any], where: str) -> NginxConfig:
    f = ld.r.field
    base = NginxConfig(path=Path())
    return NginxConfig(
        path=ld.need(m, "path", where, ld.path, Path()),
        reload_command=f(m, "reload_command", where, command, base.reload_command),
        test_command=f(m, "test_command", where, command, base.test_command),
        upstream=f(m, "upstream", where, label_name, None),
        stable_servers=_servers(ld, m, "stable_servers", where),
        canary_servers=_servers(ld, m, "canary_servers", where, also=m.get("stable_servers")),
    )


def _servers(
    ld: Loader, m: Mapping[str, Any], key: str, where: str, also: Any = None
) -> tuple[str, ...]:
    """A required, non-empty list of ``host:port``; each bad entry is named by its index.

    The addresses end up inside nginx's configuration, so nothing but a host name, an IPv4
    address or a bracketed IPv6 address and a port gets through. An address may not appear
    twice, nor in both lists (``also``: the other list): a server on both sides would blur the
    split and defeat the ``X-Canary-Deploy`` pin.
    """
    r, path = ld.r, join(where, key)
    raw: list[Any] = ld.need(m, key, where, _server_list, [])
    others: set[Any] = set(also) if isinstance(also, list) else set()
    servers: list[str] = []
    for i, item in enumerate(raw):
        try:
            server = to_server(item)
        except ValueError as exc:
            r.problem(join(path, i), str(exc))
            continue
        if server in servers:
            r.problem(join(path, i), f"{server!r} is listed twice")
        elif server in others:
            r.problem(join(path, i), f"{server!r} is also a stable server")
        servers.append(server)
    return tuple(servers)


def _server_list(value: Any) -> list[Any]:
    if not isinstance(value, list) or not value:
        raise ValueError(
            f"expected a non-empty list of host:port addresses such as [127.0.0.1:8080], "
            f"got {value!r}"
        )
    return value


KIND = file_kind("nginx", NginxConfig, read_config, NginxFileRouter)
