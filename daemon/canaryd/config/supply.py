"""A target's supply-chain options (SPEC §8): ``require_digest``, ``verify``, ``verify_timeout``.

    targets:
      - name: matriz
        require_digest: true            # a start must name <image>@sha256:<64 hex>
        verify:                          # argv lists, run in order before the first stage
          - [cosign, verify, --key, /etc/canaryd/cosign.pub, "{image}"]
        verify_timeout: 2m               # per command (default 120s)

Read beside the rest of a target by ``settings``; kept apart so the settings module stays
about the file as a whole. A verify command is an argv list, never a string: a string would
invite a shell, and a shell would make an image name into code. ``{image}`` may appear inside
an argument (``--image={image}``); a command without it is allowed (a scanner that reads the
image from elsewhere) but named in a warning, since it is usually a mistake. Whether the
executable exists is not checked here (``check`` may run on another machine): one that
cannot be started fails the verification, which says so.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from canaryd.config.reader import Reader, duration, join, to_bool
from canaryd.core.errors import Problem
from canaryd.core.supply import PLACEHOLDER

KEYS = frozenset({"require_digest", "verify", "verify_timeout"})
DEFAULT_VERIFY_TIMEOUT = 120.0
_MAX_ARGS = 256  # per command: far more than any verifier takes, bounded all the same


@dataclass(frozen=True, slots=True)
class Supply:
    """What a start of this target must satisfy before any traffic moves."""

    require_digest: bool = False
    verify: tuple[tuple[str, ...], ...] = ()
    verify_timeout: float = DEFAULT_VERIFY_TIMEOUT


def read_supply(r: Reader, t: Mapping[str, Any], where: str, warnings: list[Problem]) -> Supply:
    """The target mapping ``t``'s supply-chain keys; every problem recorded on ``r``."""
    commands: list[tuple[str, ...]] = []
    raw = t.get("verify")
    vpath = join(where, "verify")
    for i, argv in enumerate(r.seq(raw, vpath) if raw is not None else []):
        command = _command(r, argv, join(vpath, i))
        if command is None:
            continue
        if not any(PLACEHOLDER in arg for arg in command):
            warnings.append(
                Problem(
                    r.file,
                    join(vpath, i),
                    f"no {PLACEHOLDER} in the command: it will not be told which image to verify",
                )
            )
        commands.append(command)
    return Supply(
        require_digest=r.field(t, "require_digest", where, to_bool, False),
        verify=tuple(commands),
        verify_timeout=r.field(t, "verify_timeout", where, _timeout, DEFAULT_VERIFY_TIMEOUT),
    )


def _command(r: Reader, argv: Any, where: str) -> tuple[str, ...] | None:
    if isinstance(argv, str):
        r.problem(
            where,
            f"expected an argv list such as [cosign, verify, --key, KEY, "
            f'"{PLACEHOLDER}"], got a string (commands never run through a shell)',
        )
        return None
    items = r.seq(argv, where)
    if isinstance(argv, list) and not items:
        r.problem(where, "an empty command")
        return None
    if len(items) > _MAX_ARGS:
        r.problem(where, f"{len(items)} arguments; at most {_MAX_ARGS}")
        return None
    good = True
    for j, arg in enumerate(items):
        if isinstance(arg, bool) or not isinstance(arg, str | int | float):
            r.problem(join(where, j), f"expected a string argument, got {arg!r}")
            good = False
        elif "\0" in str(arg):
            r.problem(join(where, j), "an argument cannot contain a NUL character")
            good = False
    if not good or not items:
        return None
    if not str(items[0]):
        r.problem(join(where, 0), "the command's name is empty")
        return None
    return tuple(str(arg) for arg in items)


def _timeout(value: Any) -> float:
    seconds = duration(value)
    if seconds <= 0:
        raise ValueError(f"must be greater than zero, got {value!r}")
    return seconds
