"""The config's ``notify:`` list and ``public_url``: who is told about a rollout, and how.

Why a module of its own: the settings loader is shared by every kind of config and is close to
its size limit, and a notification channel has rules of its own. Each entry has exactly the keys
SPEC §5.5 fixes::

    notify:
      - url: https://hooks.example/canary      # POST
        format: json                           # json | slack | alertmanager
        events: [rolled-back, succeeded, paused, waiting-for-promote, failed]   # default: all
        bearer_token_file: /etc/canaryd/notify-token                         # optional

``bearer_token_file`` is a secret file and is read by the very rules of ``config.secrets``
(not writable by others, not empty; a missing one is only a warning for ``check``, ``serve``
needs it). A channel's URL may itself be a secret (a Slack incoming-webhook URL is the
credential), so no message here echoes more of it than its scheme and host.

``public_url`` is where people reach canaryd's pages (a proxy, a DNS name): the link in every
notification is ``<public_url>/targets/<name>``. Without it the link is built from ``listen``.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from canaryd.config.reader import Reader, join, to_str
from canaryd.config.secrets import AuthReader

EVENTS = ("rolled-back", "succeeded", "paused", "waiting-for-promote", "failed")
FORMATS = ("json", "slack", "alertmanager")
_KEYS = {"url", "format", "events", "bearer_token_file"}


@dataclass(frozen=True, slots=True)
class Channel:
    """One ``notify:`` entry: where to POST, in which format, which events."""

    url: str
    format: str = "json"
    events: frozenset[str] = frozenset(EVENTS)
    bearer_token_file: Path | None = None

    @property
    def shown(self) -> str:
        """The URL as logs and messages may show it: scheme and host, never path or query
        (a Slack webhook's path is its credential)."""
        return shown_url(self.url)


def shown_url(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}/…"


def read_channels(r: Reader, raw: Any, secrets: AuthReader) -> tuple[Channel, ...]:
    """Every entry of ``notify:`` (absent: none); each problem named by its key path."""
    if raw is None:
        return ()
    channels: list[Channel] = []
    for i, entry in enumerate(r.seq(raw, "notify")):
        where = join("notify", i)
        if not isinstance(entry, Mapping):
            r.mapping(entry, where)
            continue
        m = r.mapping(entry, where, _KEYS)
        if m.get("url") is None:
            r.problem(join(where, "url"), "required key is missing")
        channels.append(
            Channel(
                url=r.field(m, "url", where, channel_url, ""),
                format=r.field(m, "format", where, _format, "json"),
                events=_events(r, m.get("events"), join(where, "events")),
                bearer_token_file=secrets.secret_file(m, "bearer_token_file", where),
            )
        )
    return tuple(channels)


def channel_url(value: Any) -> str:
    """An absolute http(s) URL with a host; the message never repeats the URL itself."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected a URL as a non-empty string, got {type(value).__name__}")
    text = value
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("expected an absolute http(s) URL such as https://hooks.example/canary")
    try:
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError as exc:
        raise ValueError(f"expected an absolute http(s) URL: {exc}") from None
    return text


def public_url(value: Any) -> str:
    """``public_url``: the base of links to canaryd's pages (no trailing ``/``)."""
    text = to_str(value)
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query:
        raise ValueError(
            f"expected the http(s) base URL people open canaryd at, such as "
            f"https://canaryd.example.com, got {text!r}"
        )
    return text.rstrip("/")


def _format(value: Any) -> str:
    if value not in FORMATS:
        hint = _hint(value, FORMATS)
        raise ValueError(f"unknown format {value!r}{hint}; valid: {', '.join(FORMATS)}")
    return str(value)


def _events(r: Reader, raw: Any, where: str) -> frozenset[str]:
    """The events to send; absent means all of them, an empty list is a mistake."""
    if raw is None:
        return frozenset(EVENTS)
    items = r.seq(raw, where)
    if isinstance(raw, list) and not items:
        r.problem(where, f"no events: leave the key out for all ({', '.join(EVENTS)})")
    chosen: set[str] = set()
    for j, name in enumerate(items):
        if name not in EVENTS:
            hint = _hint(name, EVENTS)
            r.problem(join(where, j), f"unknown event {name!r}{hint}; valid: {', '.join(EVENTS)}")
            continue
        chosen.add(str(name))
    return frozenset(chosen) if chosen else frozenset(EVENTS)


def _hint(value: Any, choices: tuple[str, ...]) -> str:
    found = difflib.get_close_matches(str(value), list(choices), n=1, cutoff=0.6)
    return f" (did you mean {found[0]!r}?)" if found else ""
