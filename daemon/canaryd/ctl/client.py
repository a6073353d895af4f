"""The small HTTP client ``canaryctl`` talks to a running canaryd with (SPEC §5.2).

It is built on the standard library's ``urllib``, not aiohttp, on purpose: ``canaryctl`` makes
one request (``watch``: one a second) and exits, so an event loop buys nothing, and importing
aiohttp alone costs ~110 ms, more than half of a whole ``canaryctl status`` (~0.2 s here),
which an operator typing it during an incident, or a script calling it in a loop, notices.

Errors are the API's: ``{"error": {"code", "message"}}`` becomes an ``ErrorAnswer`` carrying the
HTTP status, and each status ``canaryctl`` cares about has its own exit code (``EXIT_*``), so
scripts can tell "bad token" from "no such target" from "a rollout is already running" without
parsing text. A daemon that cannot be reached is ``DaemonUnreachable``.

The API's payloads are read through the ``*_of`` helpers below into ``RolloutView``: they take
the API's rollout view (1-based ``stage``, ``plan``), a target summary, or the stored record of
``core.codec.rollout_to_dict``, bare or wrapped (``{"rollout": ...}``), so the renderers in
``ctl`` depend on neither the envelope nor which of those shapes an endpoint returns.
"""

from __future__ import annotations

import json
import socket
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from canaryd.core.errors import CanarydError, TemporaryError
from canaryd.core.timefmt import parse_rfc3339

DEFAULT_URL = "http://127.0.0.1:9870"
API = "/api/v1"
AUDIT_PAGE = 1000  # the most rows GET /api/v1/audit answers at once

# Exit codes of canaryctl (2 stays argparse's "bad arguments").
EXIT_OK = 0
EXIT_ERROR = 1  # anything else the API refused (400, 413, 5xx) or answered oddly
EXIT_UNREACHABLE = 3
EXIT_UNAUTHENTICATED = 4  # 401
EXIT_FORBIDDEN = 5  # 403
EXIT_NOT_FOUND = 6  # 404
EXIT_CONFLICT = 7  # 409
EXIT_INVALID = 8  # 422
EXIT_UNAVAILABLE = 9  # 503: not ready yet, or shutting down
EXIT_ROLLED_BACK = 10  # watch: the rollout ended rolled back
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT

_EXIT_BY_STATUS = {
    401: EXIT_UNAUTHENTICATED,
    403: EXIT_FORBIDDEN,
    404: EXIT_NOT_FOUND,
    409: EXIT_CONFLICT,
    422: EXIT_INVALID,
    503: EXIT_UNAVAILABLE,
}


class ErrorAnswer(CanarydError):
    """The API answered with an error status, or with something that is not an answer.

    (Not ``ApiError``: that is the daemon's side, ``api.edge.ApiError``, the answer it sends.)"""

    def __init__(self, status: int, code: str, message: str, body: Any = None) -> None:
        self.status, self.code, self.message, self.body = status, code, message, body
        super().__init__(f"HTTP {status} {code}: {message}")

    @property
    def exit_code(self) -> int:
        return _EXIT_BY_STATUS.get(self.status, EXIT_ERROR)

    @property
    def required_role(self) -> str | None:
        """The role a 403 says is needed, when the API names one."""
        error = self.body.get("error") if isinstance(self.body, Mapping) else None
        if isinstance(error, Mapping):
            for key in ("required_role", "required", "needs", "role"):
                if isinstance(error.get(key), str):
                    return str(error[key])
        return None


class DaemonUnreachable(TemporaryError):
    """Nothing answered at the URL (refused, timed out, unknown host)."""

    def __init__(self, url: str, reason: str) -> None:
        self.url, self.reason = url, reason
        super().__init__(f"cannot reach canaryd at {url}: {reason} — is `canaryd serve` running?")

    exit_code = EXIT_UNREACHABLE


def with_scheme(url: str) -> str:
    """``url`` with ``http://`` in front when it names no scheme: ``CANARYD_URL=127.0.0.1:9870``
    (or ``localhost:9870``, which ``urllib`` would read as scheme ``localhost``) means the
    daemon's plain-HTTP API there, not "unknown url type"."""
    url = url.strip()
    return url if "://" in url else f"http://{url}"


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """How canaryctl speaks TLS to an ``https://`` daemon: ``cacert`` the CA its certificate
    chains to (None: the system's), ``cert``/``key`` the client certificate a daemon with
    ``listen_tls.client_ca_file`` (mutual TLS) requires (``--cacert``/``CANARYCTL_CACERT``,
    ``--cert``/``CANARYCTL_CERT``, ``--key``/``CANARYCTL_KEY``)."""

    cacert: str | None = None
    cert: str | None = None
    key: str | None = None

    def context(self) -> ssl.SSLContext:
        """The client's context; ``ssl.SSLError``/``OSError`` when a file cannot be loaded."""
        context = ssl.create_default_context(cafile=self.cacert)
        if self.cert:
            context.load_cert_chain(self.cert, self.key or None)
        return context


@dataclass(frozen=True, slots=True)
class Client:
    url: str = DEFAULT_URL
    token: str | None = None
    timeout: float = 30.0
    tls: TlsFiles | None = None  # None: the system's CAs, no client certificate

    def __post_init__(self) -> None:
        object.__setattr__(self, "url", with_scheme(self.url))  # frozen: set once, here

    # ------------------------------------------------------------------ endpoints

    def targets(self) -> Any:
        return self.request("GET", f"{API}/targets")

    def target(self, name: str) -> Any:
        return self.request("GET", f"{API}/targets/{_seg(name)}")

    def history(self, name: str, rollout: str | None = None, limit: int | None = None) -> Any:
        query = {"rollout": rollout, "limit": None if limit is None else str(limit)}
        given = urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
        return self.request(
            "GET", f"{API}/targets/{_seg(name)}/history" + (f"?{given}" if given else "")
        )

    def audit(self, query: Mapping[str, str], limit: int) -> tuple[list[Any], str | None]:
        """Up to ``limit`` audit entries matching ``query``, newest first, following the API's
        ``next`` links (a page is at most ``AUDIT_PAGE`` rows); and the link to the rest, or
        None when there is no more."""
        entries: list[Any] = []
        link: str | None = f"{API}/audit?{urllib.parse.urlencode(query)}"
        while link is not None and len(entries) < limit:
            doc = self.request("GET", _with_limit(link, min(limit - len(entries), AUDIT_PAGE)))
            page = doc.get("entries") if isinstance(doc, Mapping) else None
            if not isinstance(page, list):
                raise ErrorAnswer(0, "bad_response", "the audit answer has no entries list")
            entries += page
            following = doc.get("next")
            link = following if isinstance(following, str) and following.startswith(API) else None
        return entries, link

    def start(
        self,
        name: str,
        image: str,
        traffic: int | None = None,
        policy: str | None = None,
        supersede: bool = False,
    ) -> Any:
        """``supersede``: roll back the target's active rollout for this one (else a 409)."""
        body: dict[str, Any] = {"image": image}
        if supersede:
            body["supersede"] = True
        if traffic is not None:
            body["traffic"] = traffic
        if policy is not None:
            body["policy"] = policy
        return self.request("POST", f"{API}/targets/{_seg(name)}/rollouts", body)

    def promote(self, name: str, full: bool = False) -> Any:
        body = {"full": True} if full else {}
        return self.request("POST", f"{API}/targets/{_seg(name)}/promote", body)

    def rollback(self, name: str, reason: str | None = None) -> Any:
        body = {"reason": reason} if reason else {}
        return self.request("POST", f"{API}/targets/{_seg(name)}/rollback", body)

    def pause(self, name: str) -> Any:
        return self.request("POST", f"{API}/targets/{_seg(name)}/pause", {})

    def resume(self, name: str) -> Any:
        return self.request("POST", f"{API}/targets/{_seg(name)}/resume", {})

    def set_weight(self, name: str, weight: int) -> Any:
        return self.request("POST", f"{API}/targets/{_seg(name)}/weight", {"weight": weight})

    def cleanup(self, name: str) -> Any:
        return self.request("DELETE", f"{API}/targets/{_seg(name)}/rollout")

    # ------------------------------------------------------------------ transport

    def request(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        """One request; the decoded JSON answer (None for an empty one), or an error raised."""
        url = self.url.rstrip("/") + path
        data = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json", "User-Agent": "canaryctl"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(url, data=data, headers=headers, method=method)
        context = self._tls_context() if url.startswith("https:") else None
        try:
            with urllib.request.urlopen(req, timeout=self.timeout, context=context) as response:
                return _decode(response.read())
        except urllib.error.HTTPError as exc:
            raise _api_error(exc) from exc
        except urllib.error.URLError as exc:
            raise DaemonUnreachable(self.url, _why(exc.reason)) from exc
        except TimeoutError as exc:
            raise DaemonUnreachable(self.url, f"no answer within {self.timeout:g}s") from exc
        except ConnectionError as exc:  # reset or closed mid-answer
            raise DaemonUnreachable(self.url, _why(exc) + self._mtls_hint(url)) from exc

    def _mtls_hint(self, url: str) -> str:
        """Under TLS 1.3 a daemon that requires a client certificate (mutual TLS) refuses one
        only after the handshake: the client sees the connection closed, so say why it may be."""
        if not url.startswith("https:") or (self.tls is not None and self.tls.cert):
            return ""
        return (
            " (TLS: if the daemon requires a client certificate, give it with --cert/--key "
            "or CANARYCTL_CERT/CANARYCTL_KEY)"
        )

    def _tls_context(self) -> ssl.SSLContext:
        tls = self.tls or TlsFiles()
        try:
            return tls.context()
        except (OSError, ssl.SSLError) as exc:
            files = ", ".join(f for f in (tls.cacert, tls.cert, tls.key) if f) or "system CAs"
            raise ErrorAnswer(0, "tls_files", f"cannot load TLS files ({files}): {exc}") from exc


def _with_limit(link: str, limit: int) -> str:
    """``link`` (a path and query) asking for ``limit`` rows, whatever it asked before."""
    path, _, query = link.partition("?")
    kept = [(k, v) for k, v in urllib.parse.parse_qsl(query) if k != "limit"]
    return f"{path}?{urllib.parse.urlencode([*kept, ('limit', str(limit))])}"


def _seg(name: str) -> str:
    return urllib.parse.quote(name, safe="")


def _decode(raw: bytes) -> Any:
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise ErrorAnswer(0, "bad_response", f"the answer is not JSON: {raw[:80]!r}") from exc


def _api_error(exc: urllib.error.HTTPError) -> ErrorAnswer:
    raw = exc.read() if exc.fp is not None else b""
    try:
        body = json.loads(raw) if raw.strip() else None
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, Mapping) else None
    if isinstance(error, Mapping):
        code = str(error.get("code") or exc.reason)
        message = str(error.get("message") or exc.reason)
    else:  # not our server (a proxy, something else on the port): say what came back
        code = str(exc.reason)
        text = raw.decode(errors="replace").strip().splitlines()
        message = text[0][:200] if text else str(exc.reason)
    return ErrorAnswer(exc.code, code, message, body)


def _why(reason: object) -> str:
    if isinstance(reason, ssl.SSLCertVerificationError):
        return (
            f"TLS: the daemon's certificate is not trusted ({reason.verify_message}); "
            "give the CA that signed it with --cacert FILE or CANARYCTL_CACERT"
        )
    if isinstance(reason, ssl.SSLError):
        hint = ""
        if "CERTIFICATE_REQUIRED" in str(reason) or "certificate required" in str(reason):
            hint = "; the daemon requires a client certificate: --cert/--key or CANARYCTL_CERT"
        return f"TLS handshake failed: {reason.reason or reason}{hint}"
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, TimeoutError):
        return "timed out"
    if isinstance(reason, socket.gaierror):
        return f"unknown host ({reason.strerror})"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror.lower()
    return str(reason)


# --------------------------------------------------------------------------- payloads

TERMINAL_PHASES = frozenset({"Succeeded", "RolledBack"})


@dataclass(frozen=True, slots=True)
class StageView:
    weight: int
    duration: float
    checks: tuple[str, ...]
    gate: str


@dataclass(frozen=True, slots=True)
class RolloutView:
    """What ``canaryctl`` shows of a rollout, read from any of the shapes the API uses."""

    id: str
    target: str
    image: str
    policy: str
    phase: str
    stage: int  # 1-based, as people count (and as the API shows it)
    stage_count: int
    plan: tuple[StageView, ...]  # empty when the answer only summarises
    weight: int
    stable_weight: int
    started_at: float | None = None
    finished_at: float | None = None
    credited: float = 0.0
    pause_reason: str | None = None
    rollback_reason: str | None = None
    message: str | None = None
    waiting_for_promote: bool = False

    @classmethod
    def of(cls, d: Mapping[str, Any]) -> RolloutView:
        """The API's rollout view (``stage`` 1-based, ``plan``), a target summary
        (``rollout_id``), or the stored record of ``codec.rollout_to_dict`` (``stage``
        0-based, ``policy.stages``)."""
        raw = d.get("policy")
        record = isinstance(raw, Mapping)  # codec.rollout_to_dict embeds the whole policy
        policy: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
        steps = policy.get("stages") if record else d.get("plan")
        plan = tuple(
            StageView(
                int(s.get("weight", 0)),
                float(s.get("duration", 0.0)),
                tuple(str(c) for c in s.get("checks", ())),
                str(s.get("gate", "auto")),
            )
            for s in (steps if isinstance(steps, list) else ())
            if isinstance(s, Mapping)
        )
        count = d.get("stages")
        stage_count = count if isinstance(count, int) else len(plan)
        stage = int(d.get("stage") or 0) + (1 if record else 0)
        weight = int(d.get("weight") or 0)
        stable = d.get("stable_weight")
        return cls(
            id=str(d.get("id") or d.get("rollout_id") or "?"),
            target=str(d.get("target") or d.get("name") or "?"),
            image=str(d.get("image") or "?"),
            policy=str(policy.get("name", "?") if record else raw or "?"),
            phase=str(d.get("phase") or "?"),
            stage=min(stage, stage_count) if stage_count else stage,
            stage_count=stage_count,
            plan=plan,
            weight=weight,
            stable_weight=int(stable) if isinstance(stable, int) else 100 - weight,
            started_at=seconds_of(d, "started_at"),
            finished_at=seconds_of(d, "finished_at"),
            credited=float(d.get("credited") or 0.0),
            pause_reason=_str(d.get("pause_reason")),
            rollback_reason=_str(d.get("rollback_reason")),
            message=_str(d.get("message")),
            waiting_for_promote=bool(d.get("waiting_for_promote")),
        )

    @property
    def terminal(self) -> bool:
        """Over: Succeeded, RolledBack, or a Failed that is over (its verification refused
        the image: ``finished_at`` set); any other Failed keeps retrying."""
        failed_for_good = self.phase == "Failed" and self.finished_at is not None
        return self.phase in TERMINAL_PHASES or failed_for_good

    @property
    def current(self) -> StageView | None:
        return self.plan[self.stage - 1] if 0 < self.stage <= len(self.plan) else None

    @property
    def stage_text(self) -> str:
        return f"{self.stage}/{self.stage_count}" if self.stage_count else str(self.stage)


def seconds_of(d: Mapping[str, Any], key: str) -> float | None:
    """A time of an answer in Unix seconds: its ``<key>_unix`` twin, the RFC 3339 ``key``
    (what the API documents), or a number (the stored record)."""
    for value in (d.get(f"{key}_unix"), d.get(key)):
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return parse_rfc3339(value)
            except ValueError:
                return None
    return None


def _str(value: Any) -> str | None:
    return str(value) if value else None


def rollout_of(doc: Any) -> RolloutView | None:
    """The rollout in an answer: a rollout itself (``POST .../rollouts``, commands), or the
    ``"rollout"`` of a target (``GET /targets/{t}``, cleanup); None when there is none."""
    if not isinstance(doc, Mapping):
        return None
    if "rollout" in doc:
        inner = doc["rollout"]
        return RolloutView.of(inner) if isinstance(inner, Mapping) else None
    if "phase" in doc and "id" in doc:
        return RolloutView.of(doc)
    return None


@dataclass(frozen=True, slots=True)
class TargetRow:
    name: str
    policy: str | None
    rollout: RolloutView | None


def targets_of(doc: Any) -> list[TargetRow]:
    """``GET /targets`` as rows: its items are target summaries (``rollout_id``, ``phase``,
    ``stage``, ... at the top level) or carry a ``"rollout"``."""
    items = doc.get("targets", doc.get("items", [])) if isinstance(doc, Mapping) else doc
    out: list[TargetRow] = []
    for item in items if isinstance(items, list) else []:
        if isinstance(item, str):
            out.append(TargetRow(item, None, None))
        elif isinstance(item, Mapping):
            name = str(item.get("name") or item.get("target") or "?")
            policy = item.get("policy") if isinstance(item.get("policy"), str) else None
            if "rollout" in item:
                rollout = rollout_of(item)
            elif item.get("rollout_id") or item.get("id"):
                rollout = RolloutView.of(item)
            else:
                rollout = None
            out.append(TargetRow(name, policy or (rollout.policy if rollout else None), rollout))
    return out


def decisions_of(doc: Any) -> list[dict[str, Any]]:
    """The decisions of an answer (``ports.DecisionRecord`` rows), oldest first."""
    if isinstance(doc, Mapping):
        for key in ("decisions", "history", "items"):
            if isinstance(doc.get(key), list):
                doc = doc[key]
                break
    return [dict(d) for d in doc if isinstance(d, Mapping)] if isinstance(doc, list) else []


def checks_of(doc: Any, decisions: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The latest ``{"value", "verdict", ...}`` per check: from the answer's own measurements
    when it carries them, else from the evidence of the latest decision that records check
    results (a passing evaluation that decides nothing leaves no decision behind)."""
    latest: dict[str, dict[str, Any]] = {}
    if isinstance(doc, Mapping):
        for key in ("checks", "last_checks", "measurements"):
            value = doc.get(key)
            if isinstance(value, Mapping):
                for name, v in value.items():
                    latest[str(name)] = dict(v) if isinstance(v, Mapping) else {"value": v}
            elif isinstance(value, list):
                for m in value:
                    if isinstance(m, Mapping) and "check" in m:
                        latest[str(m["check"])] = dict(m)
    if latest:
        return latest
    for decision in reversed(decisions):
        evidence = decision.get("evidence")
        if isinstance(evidence, Mapping):
            found = {
                str(k): dict(v)
                for k, v in evidence.items()
                if isinstance(v, Mapping) and "verdict" in v
            }
            if found:
                return found
    return {}
