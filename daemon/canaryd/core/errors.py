"""The one error tree of canaryd: every exception class the package defines, where it lives and
what it becomes at the edges (an HTTP answer of ``canaryd serve``, an exit code of ``canaryd`` or
``canaryctl``). The classes of this module are the ones the core and the runtime reason about;
the others live next to the one adapter that raises them. ``tests/quality/test_error_tree.py``
fails when a class is defined anywhere in ``canaryd`` without being named here.

    CanarydError (core.errors)   what canaryd raises on purpose; `canaryd serve` prints one line
    │                            per such error and exits 1 (2 for config and StateLocked)
    ├── ConfigError              bad config or policy; carries `file: key.path: message`
    │                            problems. HTTP 422 (a start naming a bad policy); exit 2
    ├── StillRunning             accepted and under way, not finished within the request's
    │                            bounded wait. HTTP 202 + Location to poll
    ├── ServiceFailed (runtime.supervisor)  a long-lived task ended and could not be kept
    │                            running: the daemon stopped in order; `serve` exits 1
    ├── ErrorAnswer (ctl.client) the API answered an error status; canaryctl exits 4 (401),
    │                            5 (403), 6 (404), 7 (409), 8 (422), 9 (503), 1 otherwise.
    │                            (a distinct name from api.edge's ApiError)
    ├── TemporaryError           worth retrying: HTTP 503 (+ Retry-After); the worker retries
    │   ├── SourceUnavailable    Prometheus did not answer (connection, timeout, no JSON
    │   │                        envelope, over the size cap); an error measurement, never a fail
    │   ├── RouterConflict       the router's object changed under us, attempts ran out
    │   ├── RouterUnavailable    the router refused or could not apply a change (nginx -t,
    │   │                        reload, a file that cannot be written)
    │   ├── PlatformUnavailable  the platform could not do an effect just now
    │   ├── StoreUnavailable (ports)     the state store is locked or failing just now;
    │   │                        the webhook answers 503 so Alertmanager retries
    │   ├── NotLeader (ports)    this replica does not hold the Lease (any more): it writes
    │   │                        and acts nothing (fencing); HTTP 503 + Retry-After
    │   └── DaemonUnreachable (ctl.client)  nothing answered at canaryctl's URL: exit 3
    └── PermanentError           retrying will not help
        ├── CommandRejected      an operator command the rollout's phase does not allow (409)
        ├── UnknownTarget        no target of that name is configured (404)
        ├── RolloutRefused       a start refused by admission: frozen, or already rolling (409)
        ├── RolloutConflict (ports)   a second active rollout for a target (409)
        ├── StateLocked (ports)  another canaryd holds the state file: `serve` exits 2
        ├── Unstorable (runtime.worker)   a decision the store refused for good; the command's
        │                        caller gets it (409), the pass goes on without it
        └── CorruptState (ports) stored state canaryd cannot read: re-raised, HTTP 500;
            │                    `serve` refuses to start, exit 1
            └── UnstorableValue (adapters.store.schema)  one write's input SQLite cannot hold
                                 (a number beyond 64 bits): that write fails, the store is fine

Outside the tree: errors that never cross a layer, each turned into one of the above, or into
an answer, by the module that defines it.

    ValueError
    ├── PayloadError (api.webhook)         a webhook body canaryd cannot take: HTTP 400
    ├── RouteShapeError (adapters.routers.gateway_api)  an HTTPRoute canaryd cannot take over:
    │                                      read as "cannot tell", applied as RouterUnavailable
    ├── IngressRouteShapeError (adapters.routers.traefik_service)  the user's IngressRoute has
    │                                      no route to the TraefikService: as RouteShapeError
    ├── IngressShapeError (adapters.routers.nginx_ingress)  a stable Ingress with no path to
    │                                      copy, or two Services and no canary_service: as
    │                                      RouteShapeError
    ├── SamplesError (offline.simulate)    a bad line of `canaryctl simulate --samples`: exit 2
    └── NotLoopback (demo.load)            the demo's load generator refuses a non-loopback URL
    Exception
    ├── ApiError (api.edge)                an error answer under way: status, code, message
    │                                      (raised by handlers, answered by the middleware)
    ├── KubeUnavailable (adapters.kube)    no API server to talk to (not in a pod, no usable
    │                                      kubeconfig): the adapter raises Router/Platform-
    │                                      Unavailable naming why
    ├── Unauthenticated (api.auth)         no or unknown bearer token: HTTP 401 + challenge
    ├── ReplayError (offline.replay)       `canaryctl replay` cannot run: exit 2 (3: Prometheus
    │                                      unreachable), carried in its `exit_code`
    ├── KubeConflict (adapters.kube)       409 from the Kubernetes API: read again and
    │                                      re-apply; RouterConflict/PlatformUnavailable once
    │                                      the attempts run out
    ├── _Gone (adapters.routers.kubeobject)  404 on a delete: already gone, which is success
    ├── LeaseUnavailable (adapters.lease)  the Lease could not be read or written this round:
    │                                      logged by runtime.leadership, tried again; a
    │                                      leader that keeps failing stops at its deadline
    RuntimeError
    └── StackError (demo.stack)            the demo's stack did not start: `canaryd demo` exits 2
    yaml.YAMLError
    └── DuplicateKeys (config.reader)      repeated mapping keys; each becomes a ConfigError
                                           problem naming its key path

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


class CommandRejected(PermanentError):
    """The command does not apply to the rollout in its current phase (HTTP 409)."""


class UnknownTarget(PermanentError):
    """No target of that name is configured (HTTP 404)."""


class RolloutRefused(PermanentError):
    """A start that admission refused: frozen, or a rollout active (HTTP 409); ``rollout``
    names the active rollout when that is why."""

    def __init__(self, message: str, rollout: str | None = None) -> None:
        super().__init__(message)
        self.rollout = rollout
