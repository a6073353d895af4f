"""The config's ``listen_tls`` and ``tracing`` sections: how the API is encrypted, where traces go.

A module of its own so that ``settings`` (which every section passes through) only gains two
calls. Both sections are optional; absent, canaryd listens on plain HTTP and exports no traces
(and never imports OpenTelemetry).

``listen_tls: {cert_file, key_file, client_ca_file?}``: the files are checked the way the
auth section's secret files are: ``canaryd check`` reads them only if they exist (certificates
are often provisioned after the config is written: a missing one is a warning there), and then
loads them into a TLS context, so an unreadable key, a certificate that is not PEM or a key that
does not match its certificate is named with its key (``listen_tls.key_file: ...``) before the
daemon is started. ``serve`` needs every named file (``api.tls``).

``tracing: {otlp_endpoint, environment?}``: the OTLP/HTTP collector's base URL
(``http://127.0.0.1:4318``; spans are posted to ``<endpoint>/v1/traces``) and the
``deployment.environment`` put on every rollout's spans.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from canaryd.config.reader import Reader, join, shown_path, to_str
from canaryd.core.errors import ConfigError, Problem

TLS_KEYS = {"cert_file", "key_file", "client_ca_file"}
TRACING_KEYS = {"otlp_endpoint", "environment"}


@dataclass(frozen=True, slots=True)
class ListenTls:
    """The listener's certificate and key, and the CA that client certificates must chain to
    (``client_ca_file`` set: mutual TLS, a client without a valid certificate is refused)."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None


@dataclass(frozen=True, slots=True)
class Tracing:
    otlp_endpoint: str  # base URL; the exporter posts to <endpoint>/v1/traces
    environment: str | None = None  # deployment.environment on every rollout's spans

    @property
    def traces_url(self) -> str:
        return f"{self.otlp_endpoint}/v1/traces"


def read_listen_tls(
    r: Reader, raw: Any, resolve: Callable[[Any], Path], warnings: list[Problem]
) -> ListenTls | None:
    """``listen_tls`` (None when absent); files that exist are loaded to check them now."""
    where = "listen_tls"
    if raw is None:
        return None
    m = r.mapping(raw, where, TLS_KEYS)
    if not isinstance(raw, Mapping):
        return None
    paths: dict[str, Path | None] = {}
    for key in sorted(TLS_KEYS):
        if m.get(key) is None:
            if key != "client_ca_file":
                r.problem(join(where, key), "required key is missing")
            paths[key] = None
            continue
        paths[key] = r.field(m, key, where, resolve, None)
    cert, key_file = paths["cert_file"], paths["key_file"]
    if cert is None or key_file is None:
        return None
    tls = ListenTls(cert, key_file, paths["client_ca_file"])
    missing = False
    for k, path in _files(tls):
        if not path.exists():
            missing = True
            message = f"{shown_path(path)} does not exist yet; `canaryd serve` needs it"
            warnings.append(Problem(r.file, join(where, k), message))
    if not missing:
        try:
            server_context(Path(r.file), tls)
        except ConfigError as exc:
            r.problems.extend(exc.problems)
    return tls


def read_tracing(r: Reader, raw: Any) -> Tracing | None:
    """``tracing`` (None when absent: no spans, OpenTelemetry never imported)."""
    where = "tracing"
    if raw is None:
        return None
    m = r.mapping(raw, where, TRACING_KEYS)
    if not isinstance(raw, Mapping):
        return None
    if m.get("otlp_endpoint") is None:
        r.problem(join(where, "otlp_endpoint"), "required key is missing")
        return None
    endpoint = r.field(m, "otlp_endpoint", where, _endpoint, "")
    environment = r.field(m, "environment", where, to_str, None) if "environment" in m else None
    return Tracing(endpoint, environment) if endpoint else None


def server_context(config: Path, tls: ListenTls) -> ssl.SSLContext:
    """A server-side TLS context with ``tls``'s certificate (and client CA: mutual TLS);
    ``ConfigError`` naming the file and key of whatever cannot be loaded."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    load_certificate(config, tls, context)
    if tls.client_ca_file is not None:
        try:
            context.load_verify_locations(cafile=str(tls.client_ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise _tls_error(config, "client_ca_file", tls.client_ca_file, exc) from exc
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def load_certificate(config: Path, tls: ListenTls, context: ssl.SSLContext) -> None:
    """Load the certificate and key into ``context`` (a reload: new handshakes use them)."""
    for key, path in _files(tls):
        if key != "client_ca_file" and not path.is_file():
            raise _tls_error(config, key, path, FileNotFoundError("no such file"))
    try:
        context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    except ssl.SSLError as exc:  # which of the two is wrong: try the certificate alone
        key = "key_file" if _certificate_loads(tls.cert_file) else "cert_file"
        raise _tls_error(config, key, getattr(tls, key), exc) from exc
    except OSError as exc:
        raise _tls_error(config, "key_file", tls.key_file, exc) from exc


def _certificate_loads(path: Path) -> bool:
    try:
        return "BEGIN CERTIFICATE" in path.read_text(encoding="ascii", errors="replace")
    except OSError:
        return False


def _files(tls: ListenTls) -> list[tuple[str, Path]]:
    out = [("cert_file", tls.cert_file), ("key_file", tls.key_file)]
    if tls.client_ca_file is not None:
        out.append(("client_ca_file", tls.client_ca_file))
    return out


def _tls_error(config: Path, key: str, path: Path, exc: BaseException) -> ConfigError:
    why = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)
    return ConfigError(
        [Problem(str(config), f"listen_tls.{key}", f"{shown_path(path)}: cannot load: {why}")]
    )


def _endpoint(value: Any) -> str:
    text = to_str(value)
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"expected an http(s) URL such as http://127.0.0.1:4318, got {text!r}")
    return text.rstrip("/")
