"""Secret files (API tokens, the webhook credential) as ``canaryd check`` and ``serve`` see them.

Issue 7, points 6, 15 and 16: an empty or whitespace-only secret file, an empty token, two
entries with the same token, and a secret file that others may write are config errors (exit 2
naming the file and key) in ``check`` and ``serve`` alike; a world-readable one is a warning.
Each case runs the real command as a subprocess against real files with real modes.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from support.procs import free_port
from support.servekit import WEBHOOK_TOKEN, Serve, TargetSpec, probe, write_config

REPO = Path(__file__).resolve().parents[2]
TOKEN = "ci-token-0123456789abcdef"
POLICY = "checkless.yaml"
CHECKLESS = (
    "checks:\n  unused: {query: vector(1), threshold: 0}\n"
    "stages:\n  - {weight: 50, duration: 1h}\n  - {weight: 100, duration: 0s}\n"
)


def canaryd(*args: str, cwd: Path = REPO, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "canaryd.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )


def secret(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return path


def setup(directory: Path, auth: str) -> Path:
    """A config (noop router, no platform, a policy without checks) with the given ``auth:``."""
    (directory / POLICY).write_text(CHECKLESS)
    config = directory / "canaryd.yaml"
    config.write_text(
        textwrap.dedent(
            f"""\
            listen: 127.0.0.1:{free_port()}
            state: {{backend: sqlite, path: state.db}}
            prometheus: {{url: 'http://127.0.0.1:{free_port()}'}}
            auth: {auth}
            targets:
              - {{name: web, policy: {POLICY}, platform: {{kind: none}}, router: {{kind: noop}}}}
            """
        )
    )
    return config


def serve_refuses(config: Path) -> subprocess.CompletedProcess[str]:
    """``canaryd serve`` on ``config``: it must exit by itself, before listening."""
    done = canaryd("serve", "-c", str(config), cwd=config.parent, timeout=30)
    port = int(config.read_text().split("listen: 127.0.0.1:")[1].split()[0])
    assert probe(f"http://127.0.0.1:{port}/healthz") == "refused"
    return done


# --------------------------------------------------------------------------- point 6: empty


@pytest.mark.parametrize("content", ["", "\n", "  \t\n\n"], ids=["empty", "newline", "blank"])
def test_an_empty_webhook_token_file_is_refused_by_check_and_serve(
    tmp_path: Path, content: str
) -> None:
    secret(tmp_path / "webhook-token", content)
    config = setup(tmp_path, "{webhook: {bearer_token_file: webhook-token}}")
    expected = f"{config}: auth.webhook.bearer_token_file: {tmp_path / 'webhook-token'} is empty"
    checked = canaryd("check", "-c", str(config))
    assert checked.returncode == 2, checked.stdout + checked.stderr
    assert any(line.startswith(expected) for line in checked.stderr.splitlines()), checked.stderr
    served = serve_refuses(config)
    assert served.returncode == 2, served.stderr
    assert any(line.startswith(expected) for line in served.stderr.splitlines()), served.stderr


def test_an_empty_basic_auth_password_file_is_refused(tmp_path: Path) -> None:
    secret(tmp_path / "password", " \n")
    config = setup(tmp_path, "{webhook: {basic: {username: am, password_file: password}}}")
    checked = canaryd("check", "-c", str(config))
    assert checked.returncode == 2
    assert f"auth.webhook.basic.password_file: {tmp_path / 'password'} is empty" in checked.stderr


@pytest.mark.parametrize(
    "entry",
    [
        "{name: ci, role: admin, token: }",
        "{name: ci, role: admin, token: ''}",
        "{name: ci, role: admin, token: '                    '}",
        # the SHA-256 of the empty string: it would let 'Authorization: Bearer' in
        f"{{name: ci, role: admin, sha256: '{hashlib.sha256(b'').hexdigest()}'}}",
    ],
    ids=["null", "empty", "blank", "sha256-of-nothing"],
)
def test_a_tokens_file_entry_with_an_empty_token_is_refused(tmp_path: Path, entry: str) -> None:
    secret(tmp_path / "tokens.yaml", f"- {entry}\n")
    config = setup(tmp_path, "{tokens_file: tokens.yaml}")
    checked = canaryd("check", "-c", str(config))
    assert checked.returncode == 2, checked.stdout + checked.stderr
    assert checked.stderr.startswith(f"{tmp_path / 'tokens.yaml'}: [0]"), checked.stderr
    served = serve_refuses(config)
    assert served.returncode == 2 and served.stderr == checked.stderr


def test_an_empty_bearer_is_refused_when_the_files_hold_real_tokens(tmp_path: Path) -> None:
    daemon = Serve(write_config(tmp_path, [TargetSpec("web", POLICY)]))
    (tmp_path / POLICY).write_text(CHECKLESS)
    try:
        daemon.start()
        for header in ("Bearer", "Bearer ", "Bearer    ", "bearer", ""):
            assert alert_status(daemon.url, header) == 401, header
            assert api_status(daemon.url, header) == 401, header
        assert alert_status(daemon.url, f"Bearer {WEBHOOK_TOKEN}") == 200
    finally:
        daemon.stop()


def alert_status(url: str, authorization: str) -> int:
    body = b'{"version": "4", "status": "firing", "alerts": []}'
    return _status(url + "/api/v1/alerts", authorization, body)


def api_status(url: str, authorization: str) -> int:
    return _status(url + "/api/v1/targets", authorization, None)


def _status(url: str, authorization: str, body: bytes | None) -> int:
    headers = {"Content-Type": "application/json"}
    if authorization:
        headers["Authorization"] = authorization
    request = urllib.request.Request(url, body, headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


# --------------------------------------------------------------------------- point 15: duplicates


@pytest.mark.parametrize(
    "second",
    [
        f"{{name: deploy, role: viewer, token: {TOKEN}}}",
        f"{{name: deploy, role: viewer, sha256: '{hashlib.sha256(TOKEN.encode()).hexdigest()}'}}",
    ],
    ids=["same-token", "its-sha256"],
)
def test_two_entries_with_the_same_token_are_refused_without_showing_it(
    tmp_path: Path, second: str
) -> None:
    secret(tmp_path / "tokens.yaml", f"- {{name: ci, role: admin, token: {TOKEN}}}\n- {second}\n")
    config = setup(tmp_path, "{tokens_file: tokens.yaml}")
    checked = canaryd("check", "-c", str(config))
    assert checked.returncode == 2, checked.stdout + checked.stderr
    assert checked.stderr.splitlines() == [
        f"{tmp_path / 'tokens.yaml'}: [1]: the same token as [0] (ci): "
        "each token must identify one entry (value not shown)"
    ]
    assert TOKEN not in checked.stderr and TOKEN[:8] not in checked.stderr


# --------------------------------------------------------------------------- point 16: modes


@pytest.mark.parametrize("mode", [0o620, 0o602, 0o666, 0o777], ids=oct)
@pytest.mark.parametrize(
    ("file", "auth", "key"),
    [
        ("tokens.yaml", "{tokens_file: tokens.yaml}", "auth.tokens_file"),
        (
            "webhook-token",
            "{webhook: {bearer_token_file: webhook-token}}",
            "auth.webhook.bearer_token_file",
        ),
    ],
    ids=["tokens", "webhook"],
)
def test_a_secret_file_others_may_write_is_refused(
    tmp_path: Path, mode: int, file: str, auth: str, key: str
) -> None:
    content = f"- {{name: ci, role: admin, token: {TOKEN}}}\n" if file == "tokens.yaml" else TOKEN
    secret(tmp_path / file, content, mode)
    config = setup(tmp_path, auth)
    checked = canaryd("check", "-c", str(config))
    assert checked.returncode == 2, checked.stdout + checked.stderr
    assert checked.stderr.splitlines() == [
        f"{config}: {key}: {tmp_path / file} is writable by "
        f"{'group and others' if mode & 0o022 == 0o022 else 'group' if mode & 0o020 else 'others'}"
        f" (mode {mode:04o}): anyone who can write it can let themselves in; "
        f"chmod go-w {tmp_path / file}"
    ]
    served = serve_refuses(config)
    assert served.returncode == 2 and served.stderr == checked.stderr


@pytest.mark.parametrize("kind", ["directory", "fifo"])
def test_a_secret_file_that_is_not_a_regular_file_is_refused_without_reading_it(
    tmp_path: Path, kind: str
) -> None:
    tokens = tmp_path / "tokens.yaml"
    if kind == "fifo":
        os.mkfifo(tokens, 0o600)  # reading it would block check and serve forever
    else:
        tokens.mkdir(0o700)
    config = setup(tmp_path, "{tokens_file: tokens.yaml}")
    checked = canaryd("check", "-c", str(config), timeout=20)
    assert checked.returncode == 2
    assert checked.stderr == f"{config}: auth.tokens_file: {tokens} is not a regular file\n"
    served = serve_refuses(config)
    assert served.returncode == 2 and served.stderr == checked.stderr


def test_a_world_readable_secret_file_is_a_warning_from_check_and_serve(tmp_path: Path) -> None:
    secret(tmp_path / "tokens.yaml", f"- {{name: ci, role: admin, token: {TOKEN}}}\n", 0o644)
    secret(tmp_path / "webhook-token", WEBHOOK_TOKEN, 0o640)  # group-readable: no warning
    auth = "{tokens_file: tokens.yaml, webhook: {bearer_token_file: webhook-token}}"
    config = setup(tmp_path, auth)
    warning = (
        f"warning: {config}: auth.tokens_file: {tmp_path / 'tokens.yaml'} is readable by "
        f"everyone (mode 0644); chmod o-r {tmp_path / 'tokens.yaml'}"
    )
    checked = canaryd("check", "-c", str(config))
    assert checked.returncode == 0, checked.stderr
    assert checked.stderr.splitlines() == [warning]
    daemon = Serve(config)
    try:
        daemon.start()
        assert warning in daemon.tail()
        assert "webhook-token" not in daemon.tail()
    finally:
        assert daemon.stop() == 0


def test_a_private_secret_file_is_used_quietly(tmp_path: Path) -> None:
    secret(tmp_path / "tokens.yaml", f"- {{name: ci, role: admin, token: {TOKEN}}}\n", 0o600)
    config = setup(tmp_path, "{tokens_file: tokens.yaml}")
    checked = canaryd("check", "-c", str(config))
    assert checked.returncode == 0 and checked.stderr == ""
    assert os.stat(tmp_path / "tokens.yaml").st_mode & 0o777 == 0o600  # check changed nothing
