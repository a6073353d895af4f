"""The values canaryd reasons about: policies, rollouts, what was observed, what was decided.

Everything here is a frozen, slotted dataclass or a StrEnum, so a rollout crosses every
boundary (engine, store, API) as one immutable record, and "what changed" is always a new
value, never a mutation. Times are plain floats in seconds on whatever clock the caller
uses (the loop clock in the daemon, a virtual clock in `simulate`); the core never reads one.

Weights are the canary's share in percent; the stable share is always ``100 - weight``, so
the two can never disagree.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum


class Phase(StrEnum):
    PENDING = "Pending"
    PROGRESSING = "Progressing"
    PAUSED = "Paused"
    PROMOTING = "Promoting"
    SUCCEEDED = "Succeeded"
    ROLLING_BACK = "RollingBack"
    ROLLED_BACK = "RolledBack"
    FAILED = "Failed"

    @property
    def terminal(self) -> bool:
        """Ended whatever the record says. A ``Failed`` rollout may be over too (a refused
        verification, ``Stuck.REFUSED``): ask ``Rollout.ended`` about a rollout."""
        return self in (Phase.SUCCEEDED, Phase.ROLLED_BACK)

    @property
    def active(self) -> bool:
        return not self.terminal


class PromoteStep(StrEnum):
    """Where a promotion (or a rollback that interrupted one) stands; ``Rollout.promote_step``."""

    UPDATE_STABLE = "update-stable"  # the platform is asked to put the new image on stable
    SHIFT = "shift"  # stable runs it; all traffic goes back to stable
    REMOVE = "remove"  # the canary no longer serves traffic and is removed
    RESTORE_STABLE = "restore-stable"  # a rollback interrupted UPDATE_STABLE: put it back


class Stuck(StrEnum):
    """The states the wire phase ``Failed`` stands for (``Rollout.stuck``).

    A promotion that cannot update the stable and a rollback the router does not apply both
    show as ``Failed`` (the API, the store and ``canaryctl`` have always said so) and both keep
    retrying; what they retry differs. ``PROMOTION`` is a Failed rollout with no rollback
    reason, ``ROLLBACK`` one with. ``REFUSED`` is the one Failed that is over: the target's
    verify commands refused the image before anything was created (``stages.gate``); nothing
    is retried, ``finished_at`` is set, and the target is free for a new start. The engine
    reads ``Rollout.stuck``, never the fields behind it.
    """

    PROMOTION = "promotion"
    ROLLBACK = "rollback"
    REFUSED = "refused"


class Verdict(StrEnum):
    """Outcome of one check evaluation. Never a bare bool: no data is not a pass."""

    SUCCESSFUL = "successful"
    FAILED = "failed"
    INCONCLUSIVE = "inconclusive"
    ERROR = "error"


class AlertAction(StrEnum):
    ROLLBACK = "rollback"
    PAUSE = "pause"
    OBSERVE = "observe"
    FREEZE = "freeze"


class OnInconclusive(StrEnum):
    PAUSE = "pause"
    ROLLBACK = "rollback"


class NoData(StrEnum):
    """What an empty or NaN result means for a check. Never "pass"."""

    INCONCLUSIVE = "inconclusive"
    FAIL = "fail"


class AlertStatus(StrEnum):
    """An Alertmanager alert's status. A StrEnum compares equal to the wire strings."""

    FIRING = "firing"
    RESOLVED = "resolved"


class Gate(StrEnum):
    AUTO = "auto"
    MANUAL = "manual"


MIN_WINDOW = 30.0  # seconds: twice the 15 s scrape interval of Prometheus's example config


class Scope(StrEnum):
    """How a policy keeps a rollout's evidence its own (``core.scope``)."""

    AGE = "age"  # every window clipped to the time since the canary became ready
    VERSION = "version"  # checks selecting by {{version}} keep their window; others: age


# --------------------------------------------------------------------------- policy


@dataclass(frozen=True, slots=True)
class Check:
    """One check: a PromQL template judged by ``kind``.

    ``threshold`` checks compare the query's value with ``threshold`` using ``op``. The
    analysis layer dispatches on ``kind``, and a measurement carries both a value and request
    counts, so count-consuming checks (a sequential test of canary against stable) slot in
    as another kind with their own ``params``.
    """

    name: str
    query: str
    op: str = ">="
    threshold: float = 0.0
    kind: str = "threshold"
    no_data: NoData = NoData.INCONCLUSIVE
    params: Mapping[str, float] = field(default_factory=dict)
    # kind "compare" (canary against stable, core.compare): what is compared ("errors" or
    # "latency"), its PromQL by part ("requests"/"errors", or "buckets") answering both sides'
    # cumulative counters, and how much worse (relative odds) the canary may be
    compare: str = ""
    queries: Mapping[str, str] = field(default_factory=dict)
    tolerance: float = 0.0
    # its part of the policy's alpha, relative to the policy's other compare checks
    alpha_weight: float = 1.0


@dataclass(frozen=True, slots=True)
class Stage:
    weight: int
    duration: float
    checks: tuple[str, ...] = ()
    gate: Gate = Gate.AUTO
    min_requests: int = 0


@dataclass(frozen=True, slots=True)
class Matcher:
    """An Alertmanager-style label matcher: ``=``, ``!=``, ``=~`` or ``!~`` (anchored)."""

    label: str
    op: str
    value: str


@dataclass(frozen=True, slots=True)
class AlertRule:
    matchers: tuple[Matcher, ...]
    action: AlertAction
    cooldown: float = 60.0
    include_preexisting: bool = False
    name: str = ""


@dataclass(frozen=True, slots=True)
class Limits:
    failure_limit: int = 0
    inconclusive_limit: int = 3
    consecutive_error_limit: int = 4
    progress_deadline: float = 600.0
    on_inconclusive: OnInconclusive = OnInconclusive.PAUSE


@dataclass(frozen=True, slots=True)
class Policy:
    name: str
    stages: tuple[Stage, ...]
    checks: Mapping[str, Check]
    alert_rules: tuple[AlertRule, ...] = ()
    limits: Limits = Limits()
    interval: float = 30.0
    error_backoff: float = 5.0
    scale_down_delay: float = 30.0
    window: str = "2m"
    params: Mapping[str, str] = field(default_factory=dict)
    alpha: float = 0.05  # the compare checks' shared false-rollback budget for a whole rollout
    scope: Scope = Scope.AGE
    min_window: float = MIN_WINDOW  # a younger rollout has no data yet (core.scope)
    # verified split (core.split): how far the canary's observed share of requests may be
    # from the weight asked, as a fraction (0.05: ±5 points); None: not verified
    split_tolerance: float | None = None

    @property
    def total_duration(self) -> float:
        return sum(stage.duration for stage in self.stages)


# --------------------------------------------------------------------------- rollout


@dataclass(frozen=True, slots=True)
class Rollout:
    """One attempt to move a target to ``image``; the whole persisted state of it.

    Stage timing is stored as timestamps and credited seconds so that a restarted daemon
    recomputes every timer from the record instead of from memory.
    """

    id: str
    target: str
    image: str
    policy: Policy
    started_at: float
    phase: Phase = Phase.PENDING
    stage: int = 0
    weight: int = 0
    # stage bookkeeping
    weight_set_at: float | None = None  # when the current weight was requested
    stage_started_at: float | None = None  # when the router confirmed it (timer start)
    ready_at: float | None = None  # when the canary became ready: its evidence starts here
    credited: float = 0.0  # seconds of passing analysis in this stage
    stage_requests: float = 0.0  # canary requests seen by this stage's evaluations
    paused_total: float = 0.0  # seconds this stage spent paused (not counted to deadline)
    last_eval_at: float | None = None
    next_eval_at: float | None = None
    failures: Mapping[str, int] = field(default_factory=dict)
    consecutive_inconclusive: int = 0
    consecutive_errors: int = 0
    stage_passed: bool = False  # analysis passed; waiting only for a manual gate
    # pausing
    paused_at: float | None = None
    pause_reason: str | None = None  # for people; the engine reads ``pause_cause``
    pause_cause: Cause | None = None  # why it is paused (an alert pause resumes on its own)
    alert_pauses: frozenset[str] = frozenset()  # fingerprints of firing pause alerts
    resume_at: float | None = None
    # ending
    rollback_reason: str | None = None
    rollback_at: float | None = None
    rolled_back_at: float | None = None
    cleanup_at: float | None = None
    finished_at: float | None = None
    # update-stable -> shift -> remove; restore-stable when a rollback interrupts
    # update-stable and the stable must be put back on ``previous_image``
    promote_step: PromoteStep | None = None
    # the stable's image as first observed, before promotion touched it (None: the platform
    # reports none); what a rollback during the stable update restores
    previous_image: str | None = None
    # de-duplication keys of applied alerts that matched a rule (bounded; see stages)
    handled_alerts: frozenset[str] = frozenset()
    message: str | None = None  # why a Failed rollout is stuck
    successor: str | None = None  # the rollout that superseded this one and took its canary
    cleanup_now: bool = False  # an operator's cleanup: remove the canary without the delay
    # supply chain (SPEC §8): the digest reference ``image`` was resolved to once, at start
    # (None: the platform could not tell; ``image`` is used as given); see ``ref``
    pinned: str | None = None
    verify_pending: bool = False  # the target's ``verify:`` commands have not passed yet
    # whether canaryd moves the traffic (False: an observe-only router, ``noop``) and deploys
    # the canary and the stable (False: ``none``); decisions say what it did not do
    routes: bool = True
    deploys: bool = True
    # OpenTelemetry (``tracing:``): the rollout's trace, 32 hex digits (None: not traced), and
    # the span its start request came from (a ``traceparent``), kept so that a restarted
    # daemon goes on with the same trace under the same parent
    trace_id: str | None = None
    trace_parent: str | None = None
    # the platform pins only once the canary runs (kubernetes: from its pods' imageID): the
    # first stage waits for ``pinned`` (``stages.progress``)
    pin_on_ready: bool = False
    # each compare check's e-process over the rollout (core.compare), by check name
    compare: Mapping[str, CompareState] = field(default_factory=dict)
    # the current stage's verified split (core.split): per-side requests since the stage's
    # weight was applied; reset with the stage
    split: SplitState | None = None

    def __post_init__(self) -> None:
        # a plain "update-stable" (an older caller, a test) becomes the enum, so the engine's
        # ``is`` comparisons hold whoever built the record
        step = self.promote_step
        if step is not None and not isinstance(step, PromoteStep):
            object.__setattr__(self, "promote_step", PromoteStep(step))

    @property
    def stuck(self) -> Stuck | None:
        """Which of the two Failed states this is (None: the phase is not Failed)."""
        if self.phase is not Phase.FAILED:
            return None
        if self.finished_at is not None:  # only a refused verification ends Failed
            return Stuck.REFUSED
        return Stuck.PROMOTION if self.rollback_reason is None else Stuck.ROLLBACK

    @property
    def ended(self) -> bool:
        """Over: Succeeded, RolledBack, or Failed for good (``Stuck.REFUSED``). Nothing more
        happens to an ended rollout but a rolled-back canary's scale-down."""
        return self.phase.terminal or self.stuck is Stuck.REFUSED

    @property
    def promoting(self) -> bool:
        """Promoting, or a promotion stuck updating the stable (it keeps retrying)."""
        return self.phase is Phase.PROMOTING or self.stuck is Stuck.PROMOTION

    @property
    def rolling_back(self) -> bool:
        """Rolling back, or a rollback stuck (the router has not applied it; it retries)."""
        return self.phase is Phase.ROLLING_BACK or self.stuck is Stuck.ROLLBACK

    @property
    def stable_weight(self) -> int:
        return 100 - self.weight

    @property
    def ref(self) -> str:
        """What the platform is given to run: the pinned reference once there is one, so the
        canary and, on promotion, the stable run exactly the bytes that were verified and
        judged, even if the tag is moved meanwhile."""
        return self.pinned or self.image

    @property
    def current_stage(self) -> Stage:
        return self.policy.stages[min(self.stage, len(self.policy.stages) - 1)]


@dataclass(frozen=True, slots=True)
class CompareState:
    """A compare check's evidence so far in the rollout (``core.compare``, ``core.sequential``).

    ``last``: the cumulative counters last read, by part (``canary.requests``,
    ``stable.le=0.25`` ...), the baseline for the next increment. ``counted``: what the rollout
    has seen since its first reading, by the same names. ``logs``: per bad event (``errors``,
    or ``slower than <bound>``) the log of each mixture component's likelihood-ratio product.
    ``concluded``: the e-value reached ``1/alpha`` once; the verdict stays *failed*.
    """

    last: Mapping[str, float] = field(default_factory=dict)
    counted: Mapping[str, float] = field(default_factory=dict)
    logs: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    concluded: bool = False


@dataclass(frozen=True, slots=True)
class SplitState:
    """The stage's verified split so far (``core.split``).

    ``weight``: the canary weight asked when the stage's counting began (another weight starts
    afresh). ``last``: the cumulative request counters last read (``canary``, ``stable``), the
    baseline of the next increment. ``counted``: requests per side since the stage's first
    reading. ``logs``: per direction (``low``: fewer than asked, ``high``: more) the log of
    each mixture component's likelihood-ratio product. ``concluded``: the e-value reached
    ``1/alpha`` in this stage: the share is outside tolerance and the stage cannot pass.
    """

    weight: int
    last: Mapping[str, float] = field(default_factory=dict)
    counted: Mapping[str, float] = field(default_factory=dict)
    logs: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    concluded: bool = False


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True, slots=True)
class Counts:
    """Requests and errors over the stage, for checks that weigh evidence, not one value."""

    canary_requests: float
    canary_errors: float
    stable_requests: float = 0.0
    stable_errors: float = 0.0


@dataclass(frozen=True, slots=True)
class Measurement:
    """The result of one check's query at one evaluation.

    ``value`` None means no data (empty result or NaN); ``error`` set means the source could
    not answer (Prometheus down, timeout, bad response), which is not the same thing.
    """

    check: str
    value: float | None = None
    counts: Counts | None = None
    error: str | None = None
    histograms: Histograms | None = None  # a latency compare check's buckets, both sides


@dataclass(frozen=True, slots=True)
class Histograms:
    """Cumulative ``le`` bucket counts of one histogram, per side: bound -> count, the bound
    written as Prometheus writes it (``0.25``, ``+Inf``)."""

    canary: Mapping[str, float]
    stable: Mapping[str, float]


@dataclass(frozen=True, slots=True)
class Observed:
    """What the outside world looks like right now, as adapters last read it.

    ``weight`` is the canary weight the router reports (None: it cannot tell).
    """

    weight: int | None = None
    canary_ready: bool = False
    canary_present: bool = False
    stable_image: str | None = None
    # what the canary's pods run, pinned (``repo@sha256:…``), read only while a rollout waits
    # for it (``Rollout.pin_on_ready``); else why it could not be read
    canary_pin: str | None = None
    pin_problem: str | None = None


@dataclass(frozen=True, slots=True)
class Alert:
    """An Alertmanager alert, converted at the adapter edge. Times are on the caller's clock."""

    fingerprint: str
    status: AlertStatus  # a plain "firing"/"resolved" is converted on construction
    labels: Mapping[str, str]
    starts_at: float
    ends_at: float | None = None
    # The de-duplication key: Alertmanager re-sends the same (fingerprint, status, startsAt)
    # on every group_interval and retry. Computed once: the webhook's hot path reads it twice.
    key: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", AlertStatus(self.status))
        object.__setattr__(self, "key", f"{self.fingerprint}:{self.status}:{self.starts_at:.3f}")

    @property
    def name(self) -> str:
        return self.labels.get("alertname", self.fingerprint)


class CommandKind(StrEnum):
    PROMOTE = "promote"
    PROMOTE_FULL = "promote-full"
    ROLLBACK = "rollback"
    PAUSE = "pause"
    RESUME = "resume"
    SET_WEIGHT = "set-weight"
    CLEANUP = "cleanup"


@dataclass(frozen=True, slots=True)
class Command:
    kind: CommandKind
    by: str = "operator"
    reason: str = ""
    weight: int | None = None
    # why a rollback is asked for: an operator (MANUAL) or a start superseding the rollout
    cause: Cause | None = None


@dataclass(frozen=True, slots=True)
class Findings:
    """What happened since the last decision: an evaluation's measurements, alerts, commands."""

    measurements: tuple[Measurement, ...] = ()
    alerts: tuple[Alert, ...] = ()
    commands: tuple[Command, ...] = ()
    requests: float | None = None  # canary requests since the previous evaluation (None: unknown)
    verification: Verification | None = None  # the verify commands finished (see ``gate``)


@dataclass(frozen=True, slots=True)
class Verification:
    """What a target's ``verify:`` commands said about a rollout's image (SPEC §8).

    ``summary`` is one line for people (which command, its exit code or timeout);
    ``evidence`` the structured facts (each command's argv, exit code, seconds and the bounded
    tail of its output), kept in the decision it leads to.
    """

    passed: bool
    summary: str
    evidence: Mapping[str, object] = field(default_factory=dict)


# --------------------------------------------------------------------------- outputs


class Cause(StrEnum):
    """Why a decision was taken: the typed twin of ``Action.reason``.

    The reason is text for people and may be reworded at will; everything a program reads
    (metric labels, the pause/resume logic, the history's ``cause``) reads this instead. The
    values are stable: they are stored with every decision and shown by the API. The metric
    label each maps to is ``adapters.telemetry.REASON_LABELS``.
    """

    STARTED = "started"  # a rollout began
    CANARY_READY = "canary-ready"  # the canary is up: the first stage's weight is set
    STAGE_STARTED = "stage-started"  # the router applied the stage's weight: its timer runs
    STAGE_PASSED = "stage-passed"  # a stage's analysis passed (next stage, gate or promote)
    CHECK_FAILED = "check-failed"  # a check failed (held within failure_limit, else rollback)
    SOURCE_ERRORS = "source-errors"  # the metrics source could not answer
    NO_DATA = "no-data"  # a check had no data: the stage timer holds
    INCONCLUSIVE = "inconclusive"  # inconclusive_limit reached: pause or rollback
    TOO_FEW_REQUESTS = "too-few-requests"  # the stage saw fewer than min_requests
    CANARY_NOT_READY = "canary-not-ready"  # not ready in time, or its container died
    ROUTER_NOT_APPLIED = "router-not-applied"  # the router did not apply a stage's weight
    PROGRESS_DEADLINE = "progress-deadline"  # a stage did not pass within its deadline
    ALERT = "alert"  # a firing alert matched a rule (rollback, pause, observe, freeze)
    ALERT_RESOLVED = "alert-resolved"  # an alert that matched a rule resolved
    ALERT_COOLDOWN = "alert-cooldown"  # the last pause alert resolved and its cooldown ran out
    ALERT_IGNORED = "alert-ignored"  # alerts nothing is done about (no rule, pre-existing, ...)
    MANUAL = "manual"  # an operator's rollback
    MANUAL_PAUSE = "manual-pause"  # an operator paused
    MANUAL_RESUME = "manual-resume"  # an operator resumed
    MANUAL_WEIGHT = "manual-weight"  # an operator set the weight
    MANUAL_PROMOTE = "manual-promote"  # an operator promoted (a stage, or fully)
    CLEANUP = "cleanup"  # an operator's cleanup (rollback and/or immediate removal)
    SUPERSEDED = "superseded"  # a start with another image rolled this rollout back
    REFUSED = "refused"  # an operator's command could not apply (answered 409)
    STABLE_UPDATED = "stable-updated"  # promotion: the stable runs the new image
    CANARY_DRAINED = "canary-drained"  # promotion: the canary serves no traffic
    PROMOTED = "promoted"  # promotion finished: Succeeded
    ROLLED_BACK = "rolled-back"  # a rollback finished: RolledBack
    STUCK = "stuck"  # a promotion or rollback is past its deadline: Failed, retrying
    SCALED_DOWN = "scaled-down"  # scale_down_delay over: the canary is removed
    HANDED_OVER = "handed-over"  # the canary slot went to the rollout that superseded this one
    VERIFIED = "verified"  # the target's verify commands passed: the canary may be created
    VERIFY_FAILED = "verify-failed"  # a verify command failed or timed out: nothing deployed
    SPLIT_OFF = "split-off"  # the canary's measured share of requests is outside tolerance
    PINNED = "pinned"  # the canary's pods report the digest the tag named: recorded, used from now


class ActionKind(StrEnum):
    START = "start"
    SET_WEIGHT = "set-weight"
    STAGE_STARTED = "stage-started"
    HOLD = "hold"
    PAUSE = "pause"
    RESUME = "resume"
    ROLLBACK = "rollback"
    ROLLED_BACK = "rolled-back"
    PROMOTE = "promote"
    UPDATE_STABLE = "update-stable"
    REMOVE_CANARY = "remove-canary"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    OBSERVE = "observe"
    IGNORE = "ignore"


@dataclass(frozen=True, slots=True)
class Action:
    """One decision: what canaryd does (or notes), why, and the evidence behind it.

    An Action *is* a decision: everything outside the core (store, API, metrics) calls it
    one. ``kind`` says what, ``cause`` why (typed: programs read it), ``reason`` why in words
    (for people only: reword it freely), ``evidence`` the structured facts behind it.
    """

    kind: ActionKind
    reason: str
    weight: int | None = None
    evidence: Mapping[str, object] = field(default_factory=dict)
    phase: Phase | None = None  # the phase right after this decision (set by ``decide``)
    cause: Cause | None = None  # None only for decisions stored before causes existed


class EffectKind(StrEnum):
    ENSURE_CANARY = "ensure-canary"
    SET_WEIGHT = "set-weight"
    UPDATE_STABLE = "update-stable"
    REMOVE_CANARY = "remove-canary"


@dataclass(frozen=True, slots=True)
class Effect:
    """Something the world must be made to look like. Idempotent by construction."""

    kind: EffectKind
    weight: int | None = None
    image: str | None = None
