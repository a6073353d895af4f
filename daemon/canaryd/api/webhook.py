"""Alertmanager's webhook (protocol version "4") into ``core.model.Alert``, and its credential.

The wire format is summarised in ``tests/upstream/alertmanager/webhook-semantics.md``
(upstream ``notify/webhook/webhook.go`` and ``template/template.go``, v0.34.0). What this
module relies on, and why it is shaped the way it is:

* Both shapes are accepted: before v0.32 there is no ``notification_reason``, before v0.34 no
  ``routeLabels``. Fields we do not act on are ignored, never validated, so the next
  Alertmanager release that adds or changes one does not break us (``receiver``, ``groupKey``,
  ``truncatedAlerts`` and ``notification_reason`` are read for the log, if they make sense).
  Only what canaryd acts on is checked: ``version`` if present, and ``alerts[]`` with
  ``status``, ``labels``, ``startsAt``, ``endsAt`` and ``fingerprint``.
* A firing alert carries ``endsAt = "0001-01-01T00:00:00Z"``, Go's zero time, meaning "not
  known yet": it becomes ``None``, never "ended in year 1".
* Times are RFC 3339 with up to nanosecond precision (Go trims trailing zeros), read by
  ``core.timefmt.parse_rfc3339``, the one parser of such times (it keeps the nanoseconds).
* ``fingerprint`` is the FNV-1a hash of the sorted label set (prometheus/common
  ``model.LabelSet.Fingerprint``). Alertmanager always sends it; a hand-written payload (curl)
  may not, and then it is computed the same way, so de-duplication still works.
* Every problem raises ``PayloadError`` (a ``ValueError``) naming the field, e.g.
  ``alerts[2].startsAt: not an RFC 3339 time``. The HTTP layer answers 400 for it: Alertmanager
  drops a 4xx message instead of retrying it, which is right for a body that will never parse.
* **Hostile text is made safe, not refused.** JSON can carry a lone UTF-16 surrogate
  (``"\udc80"``) that no UTF-8 encoder accepts, and control characters (NUL, ESC, newlines)
  that would forge log lines or drive a terminal showing ``canaryctl status``. A 4xx makes
  Alertmanager drop the *whole group*, possibly a critical alert beside the bad one, so every
  label name and value, the fingerprint and the logged fields have each such character
  replaced by U+FFFD (``make_safe``) instead: the alert still matches rules on its other
  labels and can still roll a rollout back. Only absurd sizes are refused (400): more than
  ``MAX_LABELS`` labels, a name over ``MAX_LABEL_NAME`` or a value over ``MAX_LABEL_VALUE``
  characters. No real alert comes near them, and keeping such text would let one sender fill
  the store and the inbox; refusing is the one answer that keeps the bound.

The webhook's credential is what Alertmanager's ``http_config`` sends: ``authorization``
(``Authorization: Bearer <credentials>``) or ``basic_auth``. It is compared in constant time
(``hmac.compare_digest`` of SHA-256 digests, so not even its length leaks) and never appears
in a repr or a log line.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from canaryd.core.model import Alert, AlertStatus
from canaryd.core.timefmt import SHAPE as RFC3339_SHAPE
from canaryd.core.timefmt import parse_rfc3339

VERSION = "4"
STATUSES = ("firing", "resolved")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
GO_ZERO_TIME = (datetime(1, 1, 1, tzinfo=UTC) - _EPOCH).total_seconds()
GO_ZERO_TEXT = "0001-01-01T00:00:00Z"  # how Go writes its zero time; a firing alert's endsAt

_FNV_OFFSET = 14695981039346656037
_FNV_PRIME = 1099511628211
_SEPARATOR = 0xFF  # prometheus/common model.SeparatorByte


MAX_LABELS = 256  # labels of one alert; real ones have a dozen or two
MAX_LABEL_NAME = 1024  # characters
MAX_LABEL_VALUE = 16384  # characters: room for a URL or a short message, not for a document

# A lone UTF-16 surrogate (json.loads keeps them; pairs become one code point), a C0 or C1
# control character, or DEL: text canaryd will not keep as it came.
UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def make_safe(text: str) -> str:
    """``text`` with every lone surrogate and control character replaced by U+FFFD."""
    return UNSAFE.sub("\ufffd", text) if UNSAFE.search(text) else text


class PayloadError(ValueError):
    """A webhook body canaryd cannot take; the message names the field (``alerts[0].labels``)."""


@dataclass(frozen=True, slots=True)
class Notification:
    """One webhook message: its alerts, and what is worth logging about the message itself."""

    alerts: tuple[Alert, ...]
    receiver: str = ""
    group_key: str = ""
    truncated: int = 0  # alerts Alertmanager left out because of the receiver's max_alerts
    reason: str = ""  # notification_reason (v0.32+), "" before


# --------------------------------------------------------------------------- times


def parse_time(text: object, where: str) -> float:
    """An RFC 3339 time (nanoseconds allowed) to seconds since the Unix epoch."""
    if not isinstance(text, str):
        raise PayloadError(f"{where}: expected an RFC 3339 time as a string")
    try:
        return parse_rfc3339(text)
    except ValueError as exc:
        why = _show(text) if str(exc) == f"expected {RFC3339_SHAPE}" else str(exc)
        raise PayloadError(f"{where}: not an RFC 3339 time: {why}") from None


def parse_end(text: object, where: str) -> float | None:
    """``endsAt``: Go's zero time (a firing alert's "not known yet") is None."""
    seconds = parse_time(text, where)
    return None if seconds <= GO_ZERO_TIME else seconds


# --------------------------------------------------------------------------- payload


def fingerprint(labels: Mapping[str, str]) -> str:
    """Alertmanager's fingerprint of a label set: FNV-1a over the sorted names and values."""
    h = _FNV_OFFSET
    for name in sorted(labels):
        for chunk in (name.encode(), labels[name].encode()):
            for byte in chunk:
                h = ((h ^ byte) * _FNV_PRIME) & 0xFFFFFFFFFFFFFFFF
            h = ((h ^ _SEPARATOR) * _FNV_PRIME) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def parse_notification(doc: object) -> Notification:
    """A decoded webhook body (``json.loads``) into a ``Notification``; ``PayloadError`` if not."""
    if not isinstance(doc, dict):
        raise PayloadError(f"body: expected a JSON object, got {_kind(doc)}")
    version = doc.get("version")
    if version is not None and version != VERSION:
        raise PayloadError(
            f"version: canaryd reads webhook version {VERSION!r}, got {_show(version)}"
        )
    raw_alerts = doc.get("alerts")
    if not isinstance(raw_alerts, list):
        problem = (
            "is missing" if raw_alerts is None else f"expected a list, got {_kind(raw_alerts)}"
        )
        raise PayloadError(f"alerts: {problem}")
    alerts = tuple(_alert(raw, i) for i, raw in enumerate(raw_alerts))
    truncated = doc.get("truncatedAlerts", 0)
    if isinstance(truncated, bool) or not isinstance(truncated, int) or truncated < 0:
        truncated = 0  # only logged: a strange value is not worth refusing the alerts for
    return Notification(
        alerts=alerts,
        receiver=_optional_str(doc, "receiver", ""),
        group_key=_optional_str(doc, "groupKey", ""),
        truncated=truncated,
        reason=_optional_str(doc, "notification_reason", ""),
    )


def _alert(raw: object, index: int) -> Alert:
    """One alert of the body. Field paths for messages are built only when something is wrong:
    this runs for every alert of every delivery."""
    if not isinstance(raw, dict):
        raise PayloadError(f"alerts[{index}]: expected an object, got {_kind(raw)}")
    status = raw.get("status")
    if status not in STATUSES:
        raise PayloadError(
            f"alerts[{index}].status: expected 'firing' or 'resolved', got {_show(status)}"
        )
    labels = _labels(raw.get("labels"), index)
    if "startsAt" not in raw:
        raise PayloadError(f"alerts[{index}].startsAt: is missing")
    try:
        starts_at = parse_time(raw["startsAt"], "startsAt")
        ends_raw = raw.get("endsAt")
        ends_at = (
            None if ends_raw is None or ends_raw == GO_ZERO_TEXT else parse_end(ends_raw, "endsAt")
        )
    except PayloadError as exc:
        raise PayloadError(f"alerts[{index}].{exc}") from None
    given = raw.get("fingerprint")
    if given is None:
        given = fingerprint(labels)
    elif not isinstance(given, str) or not given or len(given) > 64:
        raise PayloadError(f"alerts[{index}].fingerprint: expected a non-empty string")
    return Alert(
        fingerprint=make_safe(given),
        status=AlertStatus(status),
        labels=labels,  # freshly decoded (or made safe) above: ours to keep, no copy
        starts_at=starts_at,
        ends_at=ends_at,
    )


def _labels(raw: object, index: int) -> dict[str, str]:
    """An alert's labels, checked and made safe. The common case (a few short, clean strings)
    is one pass and no copy: this runs for every label of every alert of every delivery."""
    if isinstance(raw, dict) and len(raw) <= MAX_LABELS:
        clean = True
        for name, value in raw.items():
            if (
                not isinstance(value, str)
                or len(name) > MAX_LABEL_NAME
                or len(value) > MAX_LABEL_VALUE
            ):
                return _bad_labels(raw, f"alerts[{index}].labels")
            if clean and (UNSAFE.search(name) or UNSAFE.search(value)):
                clean = False
        if clean:
            return raw
        return {make_safe(name): make_safe(value) for name, value in raw.items()}
    return _bad_labels(raw, f"alerts[{index}].labels")


def _bad_labels(raw: object, where: str) -> dict[str, str]:
    """Raise ``PayloadError`` naming what is wrong with ``raw``, an alert's labels."""
    if not isinstance(raw, dict):
        problem = "is missing" if raw is None else f"expected an object, got {_kind(raw)}"
        raise PayloadError(f"{where}: {problem}")
    if len(raw) > MAX_LABELS:
        raise PayloadError(f"{where}: {len(raw)} labels, at most {MAX_LABELS} are taken")
    for name, value in raw.items():
        label = f"{where}.{_show(name)}"
        if not isinstance(value, str):
            raise PayloadError(f"{label}: expected a string, got {_kind(value)}")
        if len(name) > MAX_LABEL_NAME:
            raise PayloadError(f"{label}: a label name of at most {MAX_LABEL_NAME} characters")
        if len(value) > MAX_LABEL_VALUE:
            raise PayloadError(f"{label}: a value of at most {MAX_LABEL_VALUE} characters")
    raise AssertionError("unreachable: _labels found a problem")  # pragma: no cover


def _optional_str(doc: Mapping[str, Any], key: str, default: str) -> str:
    value = doc.get(key, default)
    if not isinstance(value, str):
        return default
    return make_safe(value[:1024])  # only logged, never acted on: bounded and made safe


def _kind(value: object) -> str:
    if value is None:
        return "null"
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string"}
    names.update({list: "a list", dict: "an object"})
    return names.get(type(value), type(value).__name__)


def _show(value: object, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------- credential


@dataclass(frozen=True, slots=True)
class WebhookCredential:
    """What Alertmanager's ``http_config`` must present: a bearer token or basic auth.

    ``scheme`` is ``authorization.type`` (``Bearer`` unless configured otherwise); it only
    applies to a token, basic auth is always ``Basic``.
    """

    token: str | None = field(default=None, repr=False)
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    scheme: str = "Bearer"

    def __post_init__(self) -> None:
        basic = self.username is not None or self.password is not None
        if (self.token is not None) == basic:
            raise ValueError("a webhook credential is a token or a username and password")
        if basic and (self.username is None or self.password is None):
            raise ValueError("basic auth needs both a username and a password")

    @classmethod
    def bearer(cls, token: str, scheme: str = "Bearer") -> WebhookCredential:
        return cls(token=token, scheme=scheme)

    @classmethod
    def basic(cls, username: str, password: str) -> WebhookCredential:
        return cls(username=username, password=password, scheme="Basic")

    @classmethod
    def from_files(
        cls,
        *,
        bearer_token_file: str | os.PathLike[str] | None = None,
        username: str | None = None,
        password_file: str | os.PathLike[str] | None = None,
    ) -> WebhookCredential:
        """The credential from its secret files (config ``auth.webhook``), stripped of the
        trailing newline an editor leaves; ``OSError`` if a file cannot be read."""
        if bearer_token_file is not None:
            return cls.bearer(_secret(bearer_token_file))
        if username is None or password_file is None:
            raise ValueError("a webhook credential needs a token file or a username and password")
        return cls.basic(username, _secret(password_file))

    @property
    def challenge(self) -> str:
        """The ``WWW-Authenticate`` value of a 401."""
        scheme = self.scheme if self.token is not None else "Basic"
        return f'{scheme} realm="canaryd webhook"'

    def accepts(self, authorization: str | None) -> bool:
        """Whether the request's ``Authorization`` header carries this credential."""
        if self.token is not None:
            return bearer_matches(authorization, self.token, self.scheme)
        assert self.username is not None and self.password is not None
        return basic_matches(authorization, self.username, self.password)


def _secret(path: str | os.PathLike[str]) -> str:
    secret = Path(path).read_text(encoding="utf-8").strip()
    if not secret:
        raise ValueError(f"{path}: the secret file is empty")
    return secret


def _same(presented: str, expected: str) -> bool:
    """Constant time, length included: ``compare_digest`` of the two strings' SHA-256."""
    # surrogatepass: a header with odd bytes still encodes (injectively), it just won't match
    a = hashlib.sha256(presented.encode("utf-8", "surrogatepass")).digest()
    b = hashlib.sha256(expected.encode("utf-8", "surrogatepass")).digest()
    return hmac.compare_digest(a, b)


def credentials_of(authorization: str | None, scheme: str) -> str | None:
    """The credentials of an ``Authorization: <scheme> <credentials>`` header (scheme: any case)."""
    if not authorization:
        return None
    given, _, value = authorization.strip().partition(" ")
    if given.lower() != scheme.lower():
        return None
    return value.strip()


def bearer_matches(authorization: str | None, token: str, scheme: str = "Bearer") -> bool:
    """``Authorization: Bearer <token>``, compared in constant time."""
    presented = credentials_of(authorization, scheme)
    if presented is None:
        return False
    return _same(presented, token)


def basic_matches(authorization: str | None, username: str, password: str) -> bool:
    """``Authorization: Basic base64(user:password)``, both parts compared in constant time."""
    presented = credentials_of(authorization, "Basic")
    if presented is None:
        return False
    try:
        decoded = base64.b64decode(presented, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return False
    user, sep, secret = decoded.partition(":")
    user_ok = _same(user, username)
    secret_ok = _same(secret, password)
    return bool(sep) and user_ok and secret_ok
