"""``notify:`` and ``public_url`` as ``canaryd check`` and ``serve`` read them.

Each case runs the real command as a subprocess against real files: every wrong value is
named by file and key path in one run, the defaults are what the docs say, and the bearer
token file follows the secret-file rules of ``auth`` (others may not write it; missing is a
warning for ``check``, an error for ``serve``), with no message echoing a secret.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from canaryd.app import load_config
from canaryd.config.notify import EVENTS
from support.procs import free_port

REPO = Path(__file__).resolve().parents[2]
SLACK_SECRET = "T000/B000/xoxb-very-secret-path"


def canaryd(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "canaryd.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def config(directory: Path, notify: str, top: str = "") -> Path:
    path = directory / "canaryd.yaml"
    body = f"""\
        listen: 127.0.0.1:{free_port()}
        state: {{backend: sqlite, path: state.db}}
        prometheus: {{url: 'http://127.0.0.1:{free_port()}'}}
        targets:
          - name: web
            policy: matriz-fast-track
            platform: {{kind: none}}
            router: {{kind: noop}}
        """
    path.write_text(textwrap.dedent(body) + top + notify)
    return path


def test_defaults_every_event_json_no_token_and_links_from_listen(tmp_path: Path) -> None:
    settings = load_config(config(tmp_path, "notify:\n  - url: https://hooks.example/canary\n"))
    (channel,) = settings.notify
    assert channel.format == "json"
    assert channel.events == frozenset(EVENTS)
    assert channel.bearer_token_file is None
    assert settings.public_url is None
    assert load_config(config(tmp_path, "")).notify == ()


def test_every_mistake_is_named_by_file_and_key_in_one_run(tmp_path: Path) -> None:
    notify = f"""\
public_url: ftp://canaryd.example
notify:
  - url: https://hooks.slack.com/services/{SLACK_SECRET}
    format: slak
    events: [rolled-back, sucseeded]
  - {{format: json}}
  - url: hooks.example/canary
  - url: https://hooks.example/x
    events: []
    retries: 3
  - just-a-string
"""
    done = canaryd("check", "-c", str(config(tmp_path, notify)), cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    expected = [
        "notify[0].format: unknown format 'slak' (did you mean 'slack'?); "
        "valid: json, slack, alertmanager",
        "notify[0].events[1]: unknown event 'sucseeded' (did you mean 'succeeded'?); "
        "valid: rolled-back, succeeded, paused, waiting-for-promote, failed",
        "notify[1].url: required key is missing",
        "notify[2].url: expected an absolute http(s) URL such as https://hooks.example/canary",
        "notify[3].retries: unknown key",
        "notify[3].events: no events: leave the key out for all",
        "notify[4]: expected a mapping, got str",
        "public_url: expected the http(s) base URL",
    ]
    for text in expected:
        assert any(f"canaryd.yaml: {text}" in line for line in lines), (text, lines)
    assert SLACK_SECRET not in done.stderr, "a webhook URL's path is its credential"


def test_the_bearer_token_file_follows_the_secret_file_rules(tmp_path: Path) -> None:
    notify = "notify:\n  - {url: 'http://127.0.0.1:9/hook', bearer_token_file: notify-token}\n"
    path = config(tmp_path, notify)

    missing = canaryd("check", "-c", str(path), cwd=tmp_path)
    assert missing.returncode == 0, missing.stderr
    assert "warning: " in missing.stderr and "notify[0].bearer_token_file" in missing.stderr
    assert "does not exist (yet)" in missing.stderr

    serve = canaryd("serve", "-c", str(path), cwd=tmp_path)
    assert serve.returncode == 2, serve.stderr
    assert "notify[0].bearer_token_file" in serve.stderr and "does not exist" in serve.stderr

    token = tmp_path / "notify-token"
    token.write_text("a-secret-notify-token-0123\n")
    token.chmod(0o662)
    writable = canaryd("check", "-c", str(path), cwd=tmp_path)
    assert writable.returncode == 2
    assert "notify[0].bearer_token_file" in writable.stderr
    assert "writable by group and others" in writable.stderr
    assert "a-secret-notify-token" not in writable.stderr

    token.write_text("   \n")
    token.chmod(0o600)
    empty = canaryd("check", "-c", str(path), cwd=tmp_path)
    assert empty.returncode == 2 and "is empty" in empty.stderr

    token.write_text("a-secret-notify-token-0123\n")
    fine = canaryd("check", "-c", str(path), cwd=tmp_path)
    assert fine.returncode == 0 and "warning" not in fine.stderr, fine.stderr


def test_public_url_is_the_links_base_without_its_trailing_slash(tmp_path: Path) -> None:
    path = config(tmp_path, "", top="public_url: https://canaryd.example.com/ops/\n")
    assert load_config(path).public_url == "https://canaryd.example.com/ops"
