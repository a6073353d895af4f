"""HTTPS on the listener (``listen_tls``): the server's TLS context and its certificate reload.

Certificates are short-lived (cert-manager, an ACME client, a Vault agent renew them in place),
and a restart to pick up a new one would drop every open request and pause every rollout's
worker, so the certificate is reloaded in the running daemon: on ``SIGHUP`` and whenever the
certificate or key file changes (polled every ``WATCH_INTERVAL`` seconds: a ``stat`` each, cheap
on the loop). The reload calls ``load_cert_chain`` on the *same* ``SSLContext`` the listener
was started with: OpenSSL copies the certificate into each connection when its handshake
starts, so new handshakes get the new certificate and open connections keep theirs.

A reload that fails (the key renewed but not yet the certificate: they no longer match) keeps
serving the old certificate, logs why, and is tried again at the next change or poll, so a
renewal written as two renames converges once both are in place.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from pathlib import Path

import structlog

from canaryd.config.transport import ListenTls, load_certificate, server_context
from canaryd.core.errors import ConfigError

WATCH_INTERVAL = 2.0  # seconds between looks at the certificate files

log = structlog.get_logger("canaryd.tls")

Signature = tuple[tuple[int, int, int], ...]


class CertificateReloader:
    """The listener's TLS context, and the reload of its certificate in place."""

    def __init__(self, config: Path, tls: ListenTls) -> None:
        self.config, self.tls = config, tls
        self.context: ssl.SSLContext = server_context(config, tls)  # ConfigError: refuse to start
        self._loaded = self._signature()
        self._failed: Signature | None = None  # files whose reload failed (logged once)
        self.reloads = 0

    def _signature(self) -> Signature:
        """What changes when the files are rewritten or replaced (an atomic rename, too)."""
        out = []
        for path in (self.tls.cert_file, self.tls.key_file):
            try:
                st = os.stat(path)
            except OSError:
                out.append((0, 0, 0))
                continue
            out.append((st.st_ino, st.st_mtime_ns, st.st_size))
        return tuple(out)

    def reload(self, why: str) -> bool:
        """Load the files again into the live context; False (logged) when they cannot be."""
        signature = self._signature()
        try:
            load_certificate(self.config, self.tls, self.context)
        except ConfigError as exc:
            if signature != self._failed or why == "signal":
                log.warning("tls_reload_failed", why=why, error=str(exc), keeps="the old one")
            self._failed = signature
            return False
        self._loaded, self._failed = signature, None
        self.reloads += 1
        log.info("tls_reloaded", why=why, cert_file=str(self.tls.cert_file))
        return True

    def changed(self) -> bool:
        signature = self._signature()
        return signature != self._loaded and signature != self._failed

    async def watch(self, every: float = WATCH_INTERVAL) -> None:
        """Eternal: reload whenever the certificate or key file changes."""
        while True:
            await asyncio.sleep(every)
            if self.changed():
                self.reload("file-changed")
