"""The Protocols the runtime is written against, and the errors that cross them.

The runtime never names an adapter: it holds a ``StateStore`` and a ``Clock`` and the
composition root decides which ones (SQLite or Kubernetes objects; the loop clock or a
fast-forwarded one in tests). Errors a caller must tell apart live here, beside the port that
raises them, so the runtime can catch them without importing any adapter (the two sit side by
side in the layer contract and may not import each other).

The store is synchronous on purpose: SQLite is a blocking library, and a port that pretends
otherwise only hides the thread hop. The runtime wraps each call in ``asyncio.to_thread``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypedDict, runtime_checkable

from canaryd.core.errors import PermanentError, TemporaryError
from canaryd.core.model import (
    Action,
    Alert,
    Effect,
    Measurement,
    Observed,
    Rollout,
    Verification,
)

# --------------------------------------------------------------------------- errors


class StoreUnavailable(TemporaryError):
    """The state store could not be read or written just now (locked, I/O error)."""


class RolloutConflict(PermanentError):
    """A second active rollout for a target: SPEC §2 allows at most one."""


class CorruptState(PermanentError):
    """Stored state canaryd cannot read: an unknown schema version or a damaged record."""


class StateLocked(PermanentError):
    """Another canaryd holds the state (SPEC §7: one state, one actor)."""


class NotLeader(TemporaryError):
    """This replica does not hold the Lease (any more), so it must not write state or act
    (``runtime.leadership``: fencing). HTTP 503 + Retry-After; the leader does it instead."""


# --------------------------------------------------------------------------- rows


class DecisionRecord(TypedDict):
    """One decision as the history shows it (``GET .../history``, ``canaryctl status``).

    ``phase`` is the rollout's phase once the decision was taken, ``stage`` the 1-based stage
    number a human reads (as ``canaryctl simulate`` prints it), ``weight`` the canary weight
    the decision asked for (the rollout's weight when the action names none). ``cause`` is the
    decision's typed cause (``core.model.Cause``: what programs read); ``reason`` the same in
    words for people. Decisions stored before causes were (state schema < 4) have none.
    """

    seq: int
    rollout_id: str
    target: str
    t: float
    phase: str
    stage: int
    weight: int
    action: str
    cause: str | None
    reason: str
    evidence: dict[str, Any]
    trace_id: str | None  # the rollout's OpenTelemetry trace (``tracing:``); None: untraced


class MeasurementRecord(TypedDict):
    seq: int
    rollout_id: str
    t: float
    check: str
    value: float | None
    error: str | None
    canary_requests: float | None
    canary_errors: float | None
    stable_requests: float | None
    stable_errors: float | None


class AuditRecord(TypedDict):
    seq: int
    t: float
    who: str
    what: str
    target: str | None
    outcome: str
    detail: dict[str, Any]


# --------------------------------------------------------------------------- ports


# A batch of alerts ready to be written: (time received, the alerts encoded as JSON). Encoding
# happens on the event loop, the write in a thread (see ``StateStore.prepare_alerts``).
PreparedAlerts = tuple[float, str]


class StateStore(Protocol):
    """Where rollouts, their decisions and measurements, and the audit log are kept.

    ``commit`` is the one write that decides something: it returns only once the new record
    and the decisions that led to it are durable, so the runtime may then act on them
    (SPEC §7). Reads return what the last completed ``commit`` left.
    """

    def load_active(self) -> list[Rollout]:
        """Every rollout the runtime still owes work: active phases, and rolled-back ones whose
        canary awaits its scale-down delay (the timer is in the record)."""
        ...

    def get(self, rollout_id: str) -> Rollout | None: ...

    def latest_for_target(self, target: str) -> Rollout | None:
        """The most recently started rollout of ``target``, active or not."""
        ...

    def commit(
        self,
        rollout: Rollout,
        actions: Sequence[Action],
        now: float,
        measurements: Sequence[Measurement] = (),
    ) -> None:
        """Upsert ``rollout`` and append its decisions and measurements, in one transaction.

        Raises ``RolloutConflict`` if the target already has another active rollout.
        """
        ...

    def audit(
        self,
        now: float,
        who: str,
        what: str,
        target: str | None,
        outcome: str,
        detail: Mapping[str, object] | None = None,
    ) -> None: ...

    def audit_log(
        self,
        target: str | None = None,
        *,
        who: str | None = None,
        outcome: str | None = None,
        since: float | None = None,
        until: float | None = None,
        before: int | None = None,
        after: int | None = None,
        limit: int | None = None,
        newest_first: bool = False,
    ) -> list[AuditRecord]:
        """Audit rows matching every filter given: ``since <= t <= until``, ``before``/``after``
        exclusive ``seq`` cursors; ``limit`` keeps the newest N, or with ``after`` the N just
        past it. Oldest first unless ``newest_first``."""
        ...

    def record_alerts(self, alerts: Sequence[Alert], now: float) -> None:
        """Durably record alerts as received at ``now`` (repeats too: the inbox de-duplicates)."""
        ...

    def prepare_alerts(self, alerts: Sequence[Alert], now: float) -> PreparedAlerts:
        """``record_alerts`` in two halves: this cheap one on the loop, ``write_alerts`` (the
        durable write) in a thread."""
        ...

    def write_alerts(self, prepared: PreparedAlerts) -> None: ...

    def compact_alerts(self, before: float) -> int:
        """Forget alerts received before ``before`` unless they still fire."""
        ...

    def firing_alerts(self, now: float, expire_after: float = float("inf")) -> list[Alert]:
        """Alerts still firing, to rebuild the inbox after a restart (``core.alertbook``'s
        replay: a firing alert last received ``expire_after`` ago or more has expired)."""
        ...

    def alert_book(self, now: float, expire_after: float) -> list[tuple[float, Alert]]:
        """What the inbox needs after a restart (``core.alertbook.rebuild``): the newest
        notification of every fingerprint still active or seen within ``expire_after`` (a
        resolved one too, so a late duplicate cannot re-open it), with when it was last
        received, latest news last."""
        ...

    def history(
        self, *, rollout_id: str | None = None, target: str | None = None
    ) -> list[DecisionRecord]:
        """Decisions of one rollout or of every rollout of a target, oldest first."""
        ...

    def measurements(self, rollout_id: str) -> list[MeasurementRecord]: ...

    def write_problem(self) -> str | None:
        """None while the store can write; else why its last write failed (disk full, the
        file deleted under us, the lock lost). Cheap: called by ``/readyz``; after a failure it
        probes with a tiny write at most once a second, so recovery is noticed."""
        ...

    def compact_audit(self, before: float, keep: int) -> int:
        """Forget audit rows older than ``before`` and all but the newest ``keep``; return how
        many went."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Leader:
    """Who holds the Lease, as a replica last saw it: its identity and the API URL it
    advertises (None: it advertised none, so requests cannot be forwarded to it)."""

    identity: str
    url: str | None = None


class Elector(Protocol):
    """One candidate in a leader election (``adapters.lease``: a coordination.k8s.io Lease).

    ``attempt`` acquires or renews once and says whether this candidate holds it now (errors
    talking to the election's backend are raised; the caller retries). ``valid_until`` is a
    ``time.monotonic()`` instant: the candidate may act only before it, and it lies early
    enough that no other candidate can take over before it passes (fencing).
    """

    identity: str
    valid_until: float

    @property
    def retry_period(self) -> float: ...

    async def attempt(self) -> bool: ...

    def leader(self) -> Leader | None:
        """The holder as last seen, while its lease is current; None when nobody holds it."""
        ...

    async def release(self) -> None:
        """Give up the lease if held (clean shutdown), so another takes over at once."""
        ...


class Clock(Protocol):
    """The runtime's only source of time, in seconds since the Unix epoch.

    Wall-clock seconds, not a monotonic count: the values are stored in rollout records and
    compared after a restart (or a reboot, which resets ``time.monotonic``), and with
    Alertmanager's ``startsAt``. Tests substitute a clock they advance by hand.
    """

    def time(self) -> float: ...


# --------------------------------------------------------------------------- the outside world


class Router(Protocol):
    """What splits traffic (Flagger's four methods, less reconcile which ``set_weight`` does).

    Weights are the canary's share in percent, set as absolute values; ``get_weight`` re-reads
    what is really applied (``None``: cannot tell) so that a split is verified, not assumed.
    ``finalize`` gives back what the router took over when canaryd lets go of the target.
    """

    kind: str

    async def set_weight(self, weight: int) -> None: ...

    async def get_weight(self) -> int | None: ...

    async def finalize(self) -> None: ...


class Platform(Protocol):
    """What runs the canary and the stable version."""

    kind: str

    async def ensure_canary(self, image: str) -> None: ...

    async def canary_status(self) -> tuple[bool, bool]:
        """(present, ready)."""
        ...

    async def stable_image(self) -> str | None: ...

    async def update_stable(self, image: str) -> None: ...

    async def remove_canary(self) -> None: ...


@runtime_checkable
class PinsImages(Protocol):
    """A platform that can tell which bytes an image reference names right now (SPEC §8).

    ``pin`` answers a reference that names exactly those bytes (``repo@sha256:…``, or an
    engine's image ID for an image built on the host), or None when it cannot tell before
    the canary runs. The controller asks once, at start, and the rollout uses the answer from
    then on. Optional: a platform without it (``none``) leaves the image as given.
    """

    async def pin(self, image: str) -> str | None: ...


@runtime_checkable
class PinsRunningCanary(Protocol):
    """A platform that can only tell which bytes a tag names once the canary runs them
    (``kubernetes``: the node pulls the image, canaryd never sees it before).

    ``canary_pin`` answers ``repo@sha256:…`` for the bytes every current canary pod of
    ``image`` runs, or raises ``PlatformUnavailable`` saying why it cannot yet (no pod
    reports one, the pods disagree, an ID it cannot read). The worker asks while the rollout
    waits for it (``Rollout.pin_on_ready``); the engine records the answer before the first
    stage, and the rollout uses it from then on, promotion included.
    """

    async def canary_pin(self, image: str) -> str: ...


@runtime_checkable
class ChecksStart(Protocol):
    """A platform that can tell, before a rollout starts, that it cannot run it (argo-rollouts:
    the Rollout's steps differ from the stages). The controller asks once, at start; the
    answer (None: it can) refuses the start with its words, before anything is written."""

    async def refusal(self, weights: Sequence[int], image: str) -> str | None: ...


@runtime_checkable
class ReportsAbort(Protocol):
    """A router whose own controller may abort a canary (argo-rollouts: the Rollout's own
    analysis failed). ``external_abort`` answers that controller's words once it has aborted
    the canary of ``image``, else None; the worker asks on each pass of a rollout in progress
    and rolls back with them."""

    async def external_abort(self, image: str) -> str | None: ...


@runtime_checkable
class ReportsCanaryExit(Protocol):
    """A platform that can tell its canary died (docker: the container exited, was killed or
    OOM-killed), as opposed to not being ready yet. ``canary_exit`` answers why, from the last
    ``canary_status``, else None; the worker asks on each pass of a rollout whose canary serves
    and rolls back with it. Not for readiness: a Deployment whose pods are being replaced
    (eviction, scaling) is not ready for a while without having failed."""

    def canary_exit(self) -> str | None: ...


class Verifier(Protocol):
    """Runs a target's ``verify:`` commands on an image reference; never raises for what
    the commands do (a failure, a timeout, a command that cannot run is a failed
    ``Verification``)."""

    async def __call__(self, image: str) -> Verification: ...


class RuntimeEvents(Protocol):
    """What the runtime reports as it works: the telemetry adapter turns it into metrics and
    log lines."""

    def decided(
        self,
        state: Rollout,
        actions: Sequence[Action],
        measurements: Sequence[Measurement],
        now: float,
    ) -> None: ...

    def observed(self, state: Rollout, observed: Observed) -> None: ...

    def applied(self, state: Rollout, effect: Effect, seconds: float, router: str) -> None: ...

    def effect_failed(self, state: Rollout, effect: Effect, error: Exception) -> None: ...

    def failed_pass(self, state: Rollout, error: Exception) -> None: ...

    def orphan(self, state: Rollout) -> None: ...

    def housekeeping_failed(self, what: str, error: Exception) -> None: ...

    def finished(self, state: Rollout) -> None:
        """The rollout's worker has nothing left to do: its last decision is durable and its
        last effects applied (not called for a worker stopped by a shutdown)."""
        ...
