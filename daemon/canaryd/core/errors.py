"""The one error tree of canaryd.

    CanarydError
    ├── ConfigError            bad config or policy; carries `file: key.path: message` problems
    ├── StillRunning           accepted and under way, not finished within the request's
    │                          bounded wait (HTTP 202 + Location to poll)
    ├── TemporaryError         worth retrying
    │   ├── SourceUnavailable  Prometheus (or another source) did not answer
    │   ├── RouterConflict     the router's object changed under us
    │   └── RouterUnavailable  the router refused or could not apply a change (nginx -t, reload,
    │                          a file that cannot be written)
    └── PermanentError         retrying will not help
        ├── NoDataError        a query returned nothing usable
        ├── CommandRejected    an operator command that the rollout's phase does not allow
        ├── UnknownTarget      no target of that name is configured (HTTP 404)
        └── RolloutRefused     a start refused by admission: frozen, or already rolling (409)

Adapters re-raise library errors as one of these with ``from``.
"""

from __future__ import annotations

from dataclasses import dataclass


class CanarydError(Exception):
    """Base of every error canaryd raises on purpose."""


@dataclass(frozen=True, slots=True)
class Problem:
    file: str
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.path}: {self.message}"


class ConfigError(CanarydError):
    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class StillRunning(CanarydError):
    """A request was accepted and is being carried out, but did not finish within the bounded
    time a request may wait (HTTP 202 with a ``Location`` to poll). ``target`` names it."""

    def __init__(self, message: str, target: str) -> None:
        super().__init__(message)
        self.target = target


class TemporaryError(CanarydError):
    pass


class SourceUnavailable(TemporaryError):
    pass


class RouterConflict(TemporaryError):
    pass


class RouterUnavailable(TemporaryError):
    """The router could not apply a weight just now: its own check refused the new
    configuration (the previous one was put back), its reload failed, or its file could not be
    written (a directory not mounted yet, a read-only one). Temporary because the cause is
    outside canaryd (a host that does not resolve yet, a proxy that is down, a hand-edited main
    config) and the worker re-applies the weight on its next pass."""


class PlatformUnavailable(TemporaryError):
    """The platform could not do what an effect asked just now: its API failed or timed out,
    the image is not on the host (canaryd never pulls), no stable container to clone, or a
    new container did not get ready in time. Temporary because the worker applies the effect
    again on its next pass, and each of these causes can go away (an engine restarting, an
    image loaded meanwhile)."""


class PermanentError(CanarydError):
    pass


class NoDataError(PermanentError):
    pass


class CommandRejected(PermanentError):
    """The command does not apply to the rollout in its current phase (HTTP 409)."""


class UnknownTarget(PermanentError):
    """No target of that name is configured (HTTP 404)."""


class RolloutRefused(PermanentError):
    """A start that admission refused: frozen, or the same image already rolling (HTTP 409)."""
