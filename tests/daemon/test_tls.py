"""HTTPS on the listener (``listen_tls``), mutual TLS, the certificate reload, and canaryctl's
``--cacert``/``--cert``/``--key``, against a real ``canaryd serve`` subprocess.

The certificates are made by the test (``support.tlskit``: a private CA, server and client
certificates for 127.0.0.1). Each daemon is one process per test; everything is on loopback.
"""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.servekit import TOKENS, Serve, TargetSpec, listen_port, wait_until, write_config
from support.tlskit import Authority, Pair, client_context, https_call, served_certificate

# One stage of an hour and no checks: the rollout stays Progressing and never asks Prometheus.
LONG_POLICY = """\
name: tls-long
interval: 1s
checks:
  unused: {query: vector(1), threshold: 0}
stages:
  - {weight: 50, duration: 1h, checks: []}
"""


class TlsServe(Serve):
    """``Serve`` reached over https:// with the given client context."""

    def __init__(self, config: Path, context: ssl.SSLContext) -> None:
        super().__init__(config)
        self.url = f"https://127.0.0.1:{listen_port(config)}"
        self.context = context

    def wait_ready(self, timeout: float = 20.0) -> list[str]:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"canaryd exited {self.process.returncode}:\n{self.tail()}")
            try:
                if https_call(self.url, "GET", "/readyz", self.context)[0] == 200:
                    return []
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"not ready over https in {timeout:g}s:\n{self.tail()}")

    def https(self, method: str, path: str, body: dict[str, object] | None = None) -> tuple:
        return https_call(self.url, method, path, self.context, body, TOKENS["admin"])


def tls_config(directory: Path, server: Pair, client_ca: Path | None = None) -> Path:
    (directory / "long.yaml").write_text(LONG_POLICY)
    config = write_config(directory, [TargetSpec("web", "long.yaml")])
    block = f"listen_tls: {{cert_file: {server.cert.name}, key_file: {server.key.name}"
    block += f", client_ca_file: {client_ca.name}}}\n" if client_ca else "}\n"
    config.write_text(config.read_text() + block)
    return config


@pytest.fixture
def ca(tmp_path: Path) -> Authority:
    return Authority(tmp_path)


@pytest.fixture
def daemon(tmp_path: Path, ca: Authority) -> Iterator[TlsServe]:
    config = tls_config(tmp_path, ca.issue("server"))
    serve = TlsServe(config, client_context(ca.path))
    try:
        serve.start()
        yield serve
    finally:
        serve.stop()


def ctl(serve: Serve, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "canaryd.ctl", "--url", serve.url, *args]
    environment = {**os.environ, "CANARYD_TOKEN": TOKENS["admin"], **(env or {})}
    for name in ("CANARYCTL_CACERT", "CANARYCTL_CERT", "CANARYCTL_KEY"):
        if env is None or name not in env:
            environment.pop(name, None)
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, env=environment)


# --------------------------------------------------------------------------- https


def test_the_api_answers_over_https_and_plain_http_is_refused(daemon: TlsServe) -> None:
    status, doc = daemon.https("GET", "/api/v1/targets")
    assert status == 200, doc
    assert [t["name"] for t in doc["targets"]] == ["web"]
    plain = daemon.url.replace("https://", "http://")
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        urllib.request.urlopen(f"{plain}/readyz", timeout=5)


def test_a_client_that_does_not_trust_the_ca_is_refused(daemon: TlsServe) -> None:
    with pytest.raises(urllib.error.URLError) as caught:
        https_call(daemon.url, "GET", "/readyz", ssl.create_default_context())
    assert isinstance(caught.value.reason, ssl.SSLCertVerificationError)


def test_mutual_tls_refuses_a_client_without_a_certificate(tmp_path: Path, ca: Authority) -> None:
    client = ca.issue("operator-laptop", client=True)
    config = tls_config(tmp_path, ca.issue("server"), client_ca=ca.path)
    serve = TlsServe(config, client_context(ca.path, client))
    try:
        serve.start()
        assert serve.https("GET", "/api/v1/targets")[0] == 200
        with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
            https_call(serve.url, "GET", "/readyz", client_context(ca.path))
        stranger = Authority(tmp_path / "other", "someone else's CA").issue("intruder", client=True)
        with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
            https_call(serve.url, "GET", "/readyz", client_context(ca.path, stranger))
        # canaryctl: the client certificate from the options, then from the environment
        tls = ["--cacert", str(ca.path), "--cert", str(client.cert), "--key", str(client.key)]
        assert ctl(serve, *tls, "status").returncode == 0
        env = {"CANARYCTL_CACERT": str(ca.path), "CANARYCTL_CERT": str(client.cert)}
        env["CANARYCTL_KEY"] = str(client.key)
        assert ctl(serve, "status", env=env).returncode == 0, ctl(serve, "status", env=env)
        refused = ctl(serve, "--cacert", str(ca.path), "status")
        assert refused.returncode == 3, refused
        assert "TLS" in refused.stderr and "--cert" in refused.stderr, refused.stderr
    finally:
        serve.stop()


# --------------------------------------------------------------------------- canaryctl


def test_canaryctl_trusts_the_daemon_with_cacert_and_says_so_without(
    daemon: TlsServe, ca: Authority
) -> None:
    ok = ctl(daemon, "--cacert", str(ca.path), "status", "-o", "json")
    assert ok.returncode == 0, ok.stderr
    assert '"web"' in ok.stdout
    by_env = ctl(daemon, "status", env={"CANARYCTL_CACERT": str(ca.path)})
    assert by_env.returncode == 0, by_env.stderr
    refused = ctl(daemon, "status")
    assert refused.returncode == 3, refused
    assert "certificate is not trusted" in refused.stderr
    assert "--cacert" in refused.stderr and "CANARYCTL_CACERT" in refused.stderr
    missing = ctl(daemon, "--cacert", str(ca.directory / "nope.pem"), "status")
    assert missing.returncode == 1 and "nope.pem" in missing.stderr, missing


# --------------------------------------------------------------------------- reload


def test_a_new_certificate_is_served_after_sighup_while_a_rollout_runs(
    daemon: TlsServe, ca: Authority
) -> None:
    port = listen_port(daemon.config)
    status, started = daemon.https(
        "POST", "/api/v1/targets/web/rollouts", {"image": "registry.example/web:2"}
    )
    assert status == 201, started
    rollout_id = started["rollout"]["id"] if "rollout" in started else started["id"]
    wait_until(
        lambda: daemon.https("GET", "/api/v1/targets/web")[1]["rollout"]["weight"],
        lambda w: w == 50,
        10,
        "the rollout at its first stage",
    )
    old = served_certificate(port)
    renewed = ca.issue("server-renewed")
    server = Path(daemon.directory / "server.crt")
    os.replace(renewed.cert, server)  # as a renewal writes them: a rename each
    os.replace(renewed.key, daemon.directory / "server.key")
    os.kill(daemon.pid, signal.SIGHUP)
    new = wait_until(lambda: served_certificate(port), lambda pem: pem != old, 10, "new cert")
    assert new.strip() == server.read_text().strip()
    rollout = daemon.https("GET", "/api/v1/targets/web")[1]["rollout"]
    assert (rollout["id"], rollout["phase"], rollout["weight"]) == (rollout_id, "Progressing", 50)
    assert daemon.running
    assert '"tls_reloaded"' in daemon.tail()


def test_a_certificate_rewritten_in_place_is_picked_up_without_a_signal(
    daemon: TlsServe, ca: Authority
) -> None:
    port = listen_port(daemon.config)
    old = served_certificate(port)
    renewed = ca.issue("server-2")
    (daemon.directory / "server.key").write_bytes(renewed.key.read_bytes())  # mismatched
    time.sleep(2.5)  # one watch poll sees a key without its certificate: keeps the old one
    assert served_certificate(port) == old
    (daemon.directory / "server.crt").write_bytes(renewed.cert.read_bytes())
    new = wait_until(lambda: served_certificate(port), lambda pem: pem != old, 10, "new cert")
    assert new.strip() == renewed.pem.strip()
    log = daemon.tail(20000)
    assert '"tls_reload_failed"' in log and '"file-changed"' in log


# --------------------------------------------------------------------------- config errors


def check(config: Path) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "canaryd.cli", "check", "-c", str(config)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd=config.parent)


def test_config_errors_name_the_file_and_the_key(tmp_path: Path, ca: Authority) -> None:
    server = ca.issue("server")
    config = tls_config(tmp_path, server)
    assert check(config).returncode == 0, check(config).stderr
    # a key that is not the certificate's: named as listen_tls.key_file
    server.key.write_bytes(ca.issue("other").key.read_bytes())
    bad = check(config)
    assert bad.returncode == 2, bad
    assert "canaryd.yaml: listen_tls.key_file:" in bad.stderr, bad.stderr
    # a certificate that is not one
    ca.issue("server")
    server.cert.write_text("not a certificate\n")
    bad = check(config)
    assert bad.returncode == 2 and "listen_tls.cert_file:" in bad.stderr, bad.stderr
    # a missing file: a warning for check (provisioned later), an error for serve
    server.cert.unlink()
    warned = check(config)
    assert warned.returncode == 0 and "listen_tls.cert_file" in warned.stderr, warned
    argv = [sys.executable, "-m", "canaryd.cli", "serve", "-c", str(config)]
    served = subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert served.returncode == 2, served
    assert "canaryd.yaml: listen_tls.cert_file:" in served.stderr, served.stderr
    assert "server.crt" in served.stderr
    # keys and types of the section itself
    config.write_text(config.read_text() + "tracing: {otlp_endpoint: nowhere}\n")
    text = config.read_text().replace("listen_tls: {", "listen_tls: {cert: x, ")
    config.write_text(text)
    bad = check(config)
    assert "listen_tls.cert:" in bad.stderr and "tracing.otlp_endpoint:" in bad.stderr, bad.stderr
