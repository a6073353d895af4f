"""The daemon's config file (``config/canaryd.yaml``, SPEC §5.5) into typed, frozen settings.

``load_config`` reads the whole file with a ``Reader``, so one run names every mistake: unknown
keys (with a did-you-mean), wrong types, unknown platform or router kinds, bad durations,
duplicate targets, and every problem inside every policy the targets name (reported against the
policy file itself). A wrong key is always an error, never a silent default.

Platforms and routers are tagged by ``kind``; each kind is its own small dataclass with exactly
the keys that kind understands, declared beside its adapter. The loader sits below the adapters,
so it is handed the tables it dispatches on (``kinds.Kinds``: the composition root's
``app.KINDS``, the same for ``check`` and ``serve``); a kind named but not built yet is refused
here, so ``check`` says what ``serve`` would.

Secret files (API tokens, the webhook credential) need not exist when the config is checked —
they are often provisioned later — so a missing one is a warning; one that exists is checked
here by the same rules ``serve`` applies (``config.secrets``: not writable by others, not empty,
no token twice), and its secrets are never echoed.

``policies:`` lists policies the API may name besides every target's own (``api_policies``, by
file stem): a start request names one of those, never a file. ``alerts.expire_after`` is how
long a firing alert that Alertmanager stopped re-sending stays active.

Relative paths in the config are relative to the config file's directory.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

from canaryd.config import kubeaccess, policies, supply
from canaryd.config.kinds import (
    Kind,
    KindConfig,
    Kinds,
    not_built,
    read_labels,
    to_name,
    to_port,
)
from canaryd.config.kubeaccess import KubeAccess
from canaryd.config.notify import Channel, public_url, read_channels
from canaryd.config.reader import Reader, duration, join, shown_path, to_str
from canaryd.config.secrets import (
    ROLES,
    Auth,
    AuthReader,
    BasicAuth,
    Token,
    WebhookAuth,
    load_tokens,
    read_tokens,
    secret_for_serve,
    tokens_for_serve,
)
from canaryd.config.supply import Supply, read_supply
from canaryd.config.transport import ListenTls, Tracing, read_listen_tls, read_tracing
from canaryd.core.errors import Problem
from canaryd.core.model import Matcher, Policy
from canaryd.core.rules import matches, parse_matcher

__all__ = [
    "DEFAULT_ALERT_EXPIRY",
    "DEFAULT_LISTEN",
    "DEFAULT_STATE_PATH",
    "ROLES",
    "Alerts",
    "Auth",
    "BasicAuth",
    "Channel",
    "KindConfig",
    "Kinds",
    "KubernetesState",
    "Listen",
    "ListenTls",
    "Prometheus",
    "Settings",
    "SqliteState",
    "State",
    "Target",
    "Token",
    "Tracing",
    "WebhookAuth",
    "load_config",
    "load_tokens",
    "parse_listen",
    "read_tokens",
    "secret_for_serve",
    "tokens_for_serve",
]

T = TypeVar("T")

DEFAULT_LISTEN = "127.0.0.1:9870"
DEFAULT_STATE_PATH = "/var/lib/canaryd/state.db"
# Alertmanager re-sends a firing alert every repeat_interval (default 4h): three of those.
DEFAULT_ALERT_EXPIRY = 12 * 3600.0

_TOP = {"listen", "state", "prometheus", "auth", "alerts", "policies", "targets"}
_TOP |= {"notify", "public_url"}  # config.notify
_TOP |= {"listen_tls", "tracing"}  # config.transport
_TOP |= {kubeaccess.KEY}  # config.kubeaccess
_TARGET = {"name", "policy", "platform", "router", "labels", "alert_matchers", *supply.KEYS}
_TARGET |= {kubeaccess.KEY}
_STATE_KEYS: dict[str, set[str]] = {
    "sqlite": {"backend", "path"},
    "kubernetes": {
        "backend",
        "namespace",
        "lease",
        "lease_duration",
        "renew_deadline",
        "retry_period",
        "advertise_url",
    },
}
# client-go's leaderelection defaults (LeaseDuration, RenewDeadline, RetryPeriod) and its rule
# that RenewDeadline exceed JitterFactor (1.2) retry periods
LEASE_DURATION, RENEW_DEADLINE, RETRY_PERIOD, JITTER = 15.0, 10.0, 2.0, 1.2


# --------------------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class Listen:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class SqliteState:
    path: Path
    backend: Literal["sqlite"] = field(default="sqlite", init=False)


@dataclass(frozen=True, slots=True)
class KubernetesState:
    """The kubernetes state backend, and its leader election (``adapters.lease``).

    A replica leads while its last renewal began less than ``renew_deadline`` seconds ago; the
    Lease is written with ``lease_duration`` (whole seconds), the time the others wait; every
    replica tries every ``retry_period``. ``advertise_url``: the leader's API address written
    on the Lease for followers to forward writes to (``$CANARYD_ADVERTISE_URL`` overrides it;
    None: from ``$POD_IP`` or the listen address, see ``app``).
    """

    namespace: str = "default"
    lease: str = "canaryd"  # the coordination.k8s.io Lease used for leader election
    lease_duration: float = LEASE_DURATION
    renew_deadline: float = RENEW_DEADLINE
    retry_period: float = RETRY_PERIOD
    advertise_url: str | None = None
    backend: Literal["kubernetes"] = field(default="kubernetes", init=False)


State = SqliteState | KubernetesState


@dataclass(frozen=True, slots=True)
class Prometheus:
    url: str
    timeout: float = 5.0


@dataclass(frozen=True, slots=True)
class Alerts:
    """How Alertmanager's alerts are kept.

    ``expire_after``: seconds a firing alert stays active after Alertmanager last sent it. It
    re-sends firing alerts every ``repeat_interval`` of the route, so this must exceed that.
    """

    expire_after: float = DEFAULT_ALERT_EXPIRY


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    policy_ref: str  # as written in the config
    policy_file: Path
    policy: Policy
    platform: KindConfig  # the platform kind's config dataclass (beside its adapter)
    router: KindConfig  # the router kind's config dataclass
    labels: Mapping[str, str] = field(default_factory=dict)  # always has "job"
    alert_matchers: tuple[Matcher, ...] = ()
    supply: Supply = field(
        default_factory=Supply
    )  # require_digest, verify, verify_timeout (config.supply)
    kube: KubeAccess = field(default_factory=KubeAccess)  # its cluster (config.kubeaccess)

    @property
    def job(self) -> str:
        """The ``{{job}}`` of the policy's queries: ``labels.job``, by default the target's name."""
        return self.labels.get("job", self.name)

    def concerns(self, alert_labels: Mapping[str, str]) -> bool:
        """Whether an Alertmanager alert is about this target.

        With ``alert_matchers``, every matcher must hold. Without, the alert must carry
        ``target="<name>"`` or ``job="<job>"``.
        """
        if self.alert_matchers:
            return all(matches(m, alert_labels) for m in self.alert_matchers)
        return alert_labels.get("target") == self.name or alert_labels.get("job") == self.job


@dataclass(frozen=True, slots=True)
class Settings:
    file: Path
    listen: Listen
    state: State
    prometheus: Prometheus
    auth: Auth
    targets: tuple[Target, ...]
    warnings: tuple[Problem, ...] = ()
    alerts: Alerts = Alerts()
    # the policies a start request may name, by file stem: the targets' own and ``policies:``
    api_policies: Mapping[str, Policy] = field(default_factory=dict)
    notify: tuple[Channel, ...] = ()  # config.notify: who is told about rollouts
    public_url: str | None = None  # base of the links to canaryd's pages (None: from listen)
    listen_tls: ListenTls | None = None  # HTTPS (and mutual TLS) on the listener
    tracing: Tracing | None = None  # OpenTelemetry traces over OTLP/HTTP
    kubernetes: KubeAccess = field(default_factory=KubeAccess)  # the default cluster

    @property
    def policies(self) -> dict[str, Policy]:
        """The loaded policy of every target, by target name."""
        return {t.name: t.policy for t in self.targets}

    def api_policy(self, name: str) -> Policy:
        """The policy an API request names; ``LookupError`` for anything the config did not allow.

        A lookup, never a file read: the API must not make the daemon open a path of the
        caller's choosing (a FIFO, ``/dev/zero``, a file whose keys an error would echo).
        """
        found = self.api_policies.get(name)
        if found is None:
            allowed = ", ".join(sorted(self.api_policies)) or "none"
            raise LookupError(f"unknown policy {name!r}; the config allows: {allowed}")
        return found

    def target(self, name: str) -> Target:
        for t in self.targets:
            if t.name == name:
                return t
        raise KeyError(name)


# --------------------------------------------------------------------------- loading


def load_config(path: str | Path, kinds: Kinds) -> Settings:
    """Read and validate a config and every policy it names; ``ConfigError`` lists all problems.

    ``kinds``: the platform and router kinds this build knows (``app.KINDS``).
    """
    r = Reader(path)
    doc = r.load()
    if r.problems:
        r.done()
    settings = _Loader(r, Path(path), kinds).read(doc)
    r.done()
    return settings


def _required(
    r: Reader, m: Mapping[str, Any], key: str, where: str, convert: Callable[[Any], T], missing: T
) -> T:
    """A required key: a problem if absent; ``missing`` stands in for a bad or absent value."""
    if m.get(key) is None:
        r.problem(join(where, key), "required key is missing")
        return missing
    return r.field(m, key, where, convert, missing)


class _Loader:
    def __init__(self, r: Reader, file: Path, kinds: Kinds) -> None:
        self.r = r
        self.kinds = kinds
        self.file = file
        self.base = file.parent.absolute()
        self.warnings: list[Problem] = []
        self._policies: dict[Path, Policy | None] = {}
        self._named: dict[str, tuple[Path, Policy]] = {}  # what the API may name, by stem
        self.kube = KubeAccess()  # the daemon's (read first: the targets' lie over it)

    def read(self, doc: Any) -> Settings:
        r = self.r
        top = r.mapping(doc, "", _TOP)
        self.kube = kubeaccess.daemon_access(self, top.get(kubeaccess.KEY))
        self.warnings += kubeaccess.kubeconfig_warnings(r.file, kubeaccess.KEY, self.kube)
        return Settings(
            file=self.file,
            listen=r.field(top, "listen", "", parse_listen, parse_listen(DEFAULT_LISTEN)),
            state=self._state(top.get("state")),
            prometheus=self._prometheus(top.get("prometheus")),
            auth=self._auth(top.get("auth")),
            alerts=self._alerts(top.get("alerts")),
            targets=self._targets(top.get("targets")),
            api_policies=self._api_policies(top.get("policies")),
            notify=self._notify(top.get("notify")),
            public_url=r.field(top, "public_url", "", public_url, None),
            listen_tls=read_listen_tls(r, top.get("listen_tls"), self.path, self.warnings),
            tracing=read_tracing(r, top.get("tracing")),
            kubernetes=self.kube,
            warnings=tuple(self.warnings),
        )

    # ---- helpers

    def need(
        self, m: Mapping[str, Any], key: str, where: str, convert: Callable[[Any], T], missing: T
    ) -> T:
        return _required(self.r, m, key, where, convert, missing)

    def path(self, value: Any) -> Path:
        p = Path(to_str(value)).expanduser()
        return p if p.is_absolute() else self.base / p

    def section(self, raw: Any, where: str, allowed: set[str] | None = None) -> dict[str, Any]:
        """A mapping; None (absent) reads as empty, anything else is a problem."""
        if raw is None:
            return {}
        return self.r.mapping(raw, where, allowed)

    def kind(
        self,
        raw: Any,
        where: str,
        key: str,
        kinds: Mapping[str, Any],
        what: str,
        default: str | None = None,
    ) -> tuple[str, dict[str, Any]]:
        """The section and its ``key`` if that is one of ``kinds``; ("", {}) after a problem."""
        valid = ", ".join(kinds)
        if raw is None and default is None:
            self.r.problem(where, f"required key is missing (a mapping with {key}: {valid})")
            return "", {}
        if raw is not None and not isinstance(raw, Mapping):
            self.r.mapping(raw, where)
            return "", {}
        m = self.section(raw, where)
        value = m.get(key, default)
        if value is None:
            self.r.problem(join(where, key), f"required key is missing (one of: {valid})")
            return "", m
        if not isinstance(value, str) or value not in kinds:
            hints = difflib.get_close_matches(str(value), list(kinds), n=1, cutoff=0.6)
            hint = f" (did you mean {hints[0]!r}?)" if hints else ""
            self.r.problem(join(where, key), f"unknown {what} {value!r}{hint}; valid: {valid}")
            return "", m
        return str(value), m

    def keys(self, m: Mapping[str, Any], where: str, allowed: set[str], what: str) -> None:
        for key in m:
            if key not in allowed:
                hints = difflib.get_close_matches(str(key), sorted(allowed), n=1, cutoff=0.75)
                hint = f"did you mean {hints[0]!r}? " if hints else ""
                self.r.problem(
                    join(where, str(key)),
                    f"unknown key for {what} ({hint}keys: {', '.join(sorted(allowed))})",
                )

    # ---- sections

    def _state(self, raw: Any) -> State:
        r, where = self.r, "state"
        backend, m = self.kind(raw, where, "backend", _STATE_KEYS, "state backend", "sqlite")
        if not backend:
            return SqliteState(Path(DEFAULT_STATE_PATH))
        self.keys(m, where, _STATE_KEYS[backend], f"state backend {backend}")
        fallback = self.kinds.state_backends.get(backend)
        if fallback != "":  # named by the SPEC, not run by this build (or unknown to it)
            self.r.problem(
                join(where, "backend"),
                not_built("state backend", backend, fallback or "use sqlite for now"),
            )
        if backend == "kubernetes":
            return self._kubernetes_state(m, where)
        return SqliteState(r.field(m, "path", where, self.path, Path(DEFAULT_STATE_PATH)))

    def _kubernetes_state(self, m: Mapping[str, Any], where: str) -> KubernetesState:
        r = self.r
        lease = r.field(m, "lease_duration", where, _whole_seconds, LEASE_DURATION)
        renew = r.field(m, "renew_deadline", where, _positive_duration, RENEW_DEADLINE)
        retry = r.field(m, "retry_period", where, _positive_duration, RETRY_PERIOD)
        if not lease > renew:  # the defaults hold both rules
            r.problem(
                join(where, "renew_deadline"),
                f"must be shorter than lease_duration ({lease:g}s), got {renew:g}s: a "
                "leader must stop acting before the others may take over",
            )
        elif not renew > JITTER * retry:
            r.problem(
                join(where, "retry_period"),
                f"must be shorter than renew_deadline / {JITTER:g} ({renew / JITTER:g}s), "
                f"got {retry:g}s: a leader needs more than one try to renew in time",
            )
        return KubernetesState(
            namespace=r.field(m, "namespace", where, to_name, "default"),
            lease=r.field(m, "lease", where, to_name, "canaryd"),
            lease_duration=lease,
            renew_deadline=renew,
            retry_period=retry,
            advertise_url=r.field(m, "advertise_url", where, _url, None),
        )

    def _prometheus(self, raw: Any) -> Prometheus:
        r, where = self.r, "prometheus"
        if raw is None:
            r.problem(where, "required key is missing (every policy queries Prometheus)")
            return Prometheus("")
        if not isinstance(raw, Mapping):
            r.mapping(raw, where)
            return Prometheus("")
        m = r.mapping(raw, where, {"url", "timeout"})
        return Prometheus(
            url=self.need(m, "url", where, _url, ""),
            timeout=r.field(m, "timeout", where, _positive_duration, 5.0),
        )

    def _auth(self, raw: Any) -> Auth:
        reader = AuthReader(self.r, self.file, self.path)
        auth = reader.read(raw)
        self.warnings += reader.warnings
        return auth

    def _notify(self, raw: Any) -> tuple[Channel, ...]:
        reader = AuthReader(self.r, self.file, self.path)  # its secret-file rules
        channels = read_channels(self.r, raw, reader)
        self.warnings += reader.warnings
        return channels

    def _alerts(self, raw: Any) -> Alerts:
        m = self.section(raw, "alerts", {"expire_after"})
        return Alerts(
            expire_after=self.r.field(
                m, "expire_after", "alerts", _positive_duration, DEFAULT_ALERT_EXPIRY
            )
        )

    def _api_policies(self, raw: Any) -> dict[str, Policy]:
        """The targets' policies (named as they load) and each entry of ``policies:``."""
        where = "policies"
        for i, ref in enumerate(self.r.seq(raw, where) if raw is not None else []):
            try:
                text = to_str(ref)
            except ValueError as exc:
                self.r.problem(join(where, i), str(exc))
                continue
            file, policy = self._policy(text, join(where, i))
            self._name(file, policy, join(where, i))
        return {name: policy for name, (_, policy) in self._named.items()}

    def _name(self, file: Path, policy: Policy | None, where: str) -> None:
        """Let the API name a loaded policy by its file's stem; one stem, one file."""
        if policy is None:
            return
        name = file.stem
        known = self._named.get(name)
        if known is not None and known[0].resolve() != file.resolve():
            self.r.problem(
                where,
                f"another policy is already named {name!r} ({known[0]}); "
                "the API names policies by file name",
            )
            return
        self._named.setdefault(name, (file, policy))

    def _targets(self, raw: Any) -> tuple[Target, ...]:
        r = self.r
        if raw is None:
            r.problem("targets", "required key is missing")
            return ()
        items = r.seq(raw, "targets")
        if isinstance(raw, list) and not items:
            r.problem("targets", "no targets: canaryd would have nothing to do")
        targets: list[Target] = []
        first_seen: dict[str, str] = {}
        routed: dict[tuple[object, ...], str] = {}
        for i, spec in enumerate(items):
            where = join("targets", i)
            target = self._target(spec, where)
            if target is None:
                continue
            if target.name and target.name in first_seen:
                r.problem(
                    join(where, "name"),
                    f"duplicate target name {target.name!r} (also {first_seen[target.name]})",
                )
            first_seen.setdefault(target.name, where)
            row = self.kinds.routers.get(target.router.kind)
            identity = row.identity(target.router) if row is not None else None
            if identity is not None:
                identity = kubeaccess.in_cluster(identity, target.kube)
                if identity in routed:
                    r.problem(
                        join(where, "router"),
                        f"{routed[identity]} already routes through the same "
                        f"{target.router.kind} object; two targets would overwrite each other",
                    )
                routed.setdefault(identity, where)
            if row is not None and row.deploys and target.platform.kind not in ("none", ""):
                r.problem(
                    join(where, "platform"),
                    f"router {row.name} deploys the canary itself; the platform must be "
                    f"{{kind: none}}, not {target.platform.kind}",
                )
            targets.append(target)
        return tuple(targets)

    def _target(self, spec: Any, where: str) -> Target | None:
        r = self.r
        if not isinstance(spec, Mapping):
            r.mapping(spec, where)
            return None
        t = r.mapping(spec, where, _TARGET)
        name = self.need(t, "name", where, to_name, "")
        ref = self.need(t, "policy", where, to_str, "")
        policy_file, policy = self._policy(ref, join(where, "policy"))
        self._name(policy_file, policy, join(where, "policy"))
        labels = read_labels(r, t.get("labels"), join(where, "labels"))
        if name:  # the job label identifies the target's series; default: the target's name
            labels.setdefault("job", name)
        matchers: list[Matcher] = []
        mpath = join(where, "alert_matchers")
        raw_matchers = t.get("alert_matchers")
        for j, text in enumerate(r.seq(raw_matchers, mpath) if raw_matchers is not None else []):
            try:
                matchers.append(parse_matcher(to_str(text)))
            except ValueError as exc:
                r.problem(join(mpath, j), str(exc))
        return Target(
            name=name,
            policy_ref=ref,
            policy_file=policy_file,
            policy=policy or Policy(name=ref, stages=(), checks={}),
            platform=self._platform(t.get("platform"), join(where, "platform")),
            router=self._router(t.get("router"), join(where, "router")),
            labels=labels,
            alert_matchers=tuple(matchers),
            supply=read_supply(r, t, where, self.warnings),
            kube=kubeaccess.target_access(self, t, where, self.kube, self.warnings),
        )

    def _policy(self, ref: str, where: str) -> tuple[Path, Policy | None]:
        if not ref:
            return Path(), None
        rules_dir = _rules_dir(self.base)
        file = policies.resolve(ref, base=self.base, rules_dir=rules_dir)
        if not file.is_file():
            if file.parent == rules_dir and "/" not in ref:
                known = ", ".join(sorted(p.stem for p in rules_dir.glob("*.y*ml"))) or "none"
                self.r.problem(
                    where,
                    f"no policy named {ref!r} in {shown_path(rules_dir)} (available: {known})",
                )
            else:
                self.r.problem(where, f"no policy file {shown_path(file)}")
            return file, None
        key = file.resolve()
        if key not in self._policies:
            reader = Reader(shown_path(file))
            doc = reader.load()
            loaded = None
            if not reader.problems:
                loaded = policies.read_policy(reader, doc, default_name=file.stem)
            self.r.problems.extend(reader.problems)
            self._policies[key] = None if reader.problems else loaded
        return file, self._policies[key]

    def _platform(self, raw: Any, where: str) -> KindConfig:
        return self._kind(raw, where, self.kinds.platforms, "platform")

    def _router(self, raw: Any, where: str) -> KindConfig:
        return self._kind(raw, where, self.kinds.routers, "router")

    def _kind(
        self, raw: Any, where: str, table: Mapping[str, Kind[Any, Any]], role: str
    ) -> KindConfig:
        """The section read by its kind's reader; a kind without a factory is named as such."""
        name, m = self.kind(raw, where, "kind", table, f"{role} kind")
        if not name:
            return Unread()
        row = table[name]
        self.keys(m, where, set(row.keys) | {"kind"}, f"{role} kind {name}")
        value: KindConfig = row.read(self, m, where)
        if row.build is None:
            self.r.problem(join(where, "kind"), not_built(role, name, row.fallback))
        return value


@dataclass(frozen=True, slots=True)
class Unread:
    """Stands in for a platform or router that could not be read (the loader reports why)."""

    kind: str = ""


# --------------------------------------------------------------------------- helpers


def _rules_dir(config_dir: Path) -> Path:
    """Where bare policy names live: ``rules/`` beside the config or one level up, else ours."""
    for candidate in (config_dir / "rules", config_dir.parent / "rules"):
        if candidate.is_dir():
            return candidate
    return policies.RULES_DIR


# --------------------------------------------------------------------------- converters


def parse_listen(value: Any) -> Listen:
    """``host:port`` (``[::]:9870`` for IPv6) as a ``Listen``. One parser for the config's
    ``listen`` and for ``serve --listen``/``CANARYD_LISTEN``, so both accept the same forms."""
    if not isinstance(value, str):
        raise ValueError(f"expected host:port such as {DEFAULT_LISTEN}, got {value!r}")
    host, sep, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or "[" in host or "]" in host or not port.isdigit():
        raise ValueError(f"expected host:port such as {DEFAULT_LISTEN} or [::]:9870, got {value!r}")
    return Listen(host, to_port(int(port)))


def _url(value: Any) -> str:
    text = to_str(value)
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"expected an http(s) URL such as http://127.0.0.1:9090, got {text!r}")
    return text.rstrip("/")


def _whole_seconds(value: Any) -> float:
    """A duration of at least one whole second (a Lease's ``leaseDurationSeconds`` is an
    integer)."""
    seconds = duration(value)
    if seconds < 1 or seconds != int(seconds):
        raise ValueError(f"must be a whole number of seconds, at least 1s, got {value!r}")
    return seconds


def _positive_duration(value: Any) -> float:
    seconds = duration(value)
    if seconds <= 0:
        raise ValueError(f"must be greater than zero, got {value!r}")
    return seconds
