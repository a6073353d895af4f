"""A start request names a policy the config allows, never a file (issue 7, point 7).

Against a real ``canaryd serve``: a path (a readable file, a FIFO, ``/dev/zero``) is answered
422 at once without reading it or echoing anything from it, and the daemon stays responsive;
a name listed under ``policies:`` starts a rollout with that policy.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.servekit import TOKENS, Serve, TargetSpec, call, probe, write_config

CHECKLESS = (
    "checks:\n  unused: {query: vector(1), threshold: 0}\n"
    "stages:\n  - {weight: 50, duration: 1h}\n  - {weight: 100, duration: 0s}\n"
)


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Serve]:
    (tmp_path / "own.yaml").write_text(CHECKLESS)
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "slow.yaml").write_text("name: slow\n" + CHECKLESS)
    config = write_config(tmp_path, [TargetSpec("web", "own.yaml")])
    config.write_text(config.read_text() + "policies: [policies/slow.yaml]\n")
    serve = Serve(config)
    try:
        serve.start()
        yield serve
    finally:
        serve.stop()


def start(daemon: Serve, policy: str) -> tuple[int, object]:
    return call(
        daemon.url,
        "POST",
        "/api/v1/targets/web/rollouts",
        {"image": "web:2", "policy": policy},
        token=TOKENS["operator"],
        timeout=10,
    )


def test_a_path_is_refused_at_once_without_being_read(daemon: Serve, tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    leaky = tmp_path / "leaky.yaml"
    leaky.write_text("secret_key_name: 1\nanother_private_key: 2\n")
    for path in ("/etc/passwd", str(leaky), str(fifo), "/dev/zero", "policies/slow.yaml"):
        status, doc = start(daemon, path)
        assert status == 422, (path, doc)
        assert doc == {
            "error": {
                "code": "invalid",
                "message": "policy: expected a policy name (letters, digits, '.', '_' or '-', "
                "at most 64 characters), not a path",
            }
        }
        assert probe(f"{daemon.url}/healthz") == "200"
    for name in ("matriz-standard", "leaky", "fifo"):  # names, but not ones the config allows
        status, doc = start(daemon, name)
        assert status == 422, (name, doc)
        assert isinstance(doc, dict)
        assert doc["error"]["message"].endswith(
            f"unknown policy {name!r}; the config allows: own, slow"
        ), doc
        assert probe(f"{daemon.url}/healthz") == "200"
    assert "root:x:" not in daemon.tail() and "secret_key_name" not in daemon.tail()


def test_a_policy_the_config_lists_is_named_by_its_file_stem(daemon: Serve) -> None:
    status, doc = start(daemon, "slow")
    assert status == 201, (doc, daemon.tail())
    assert isinstance(doc, dict) and doc["policy"] == "slow"
