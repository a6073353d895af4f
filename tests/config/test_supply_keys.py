"""``require_digest``, ``verify`` and ``verify_timeout`` as ``canaryd check`` reads them: every
mistake named with its file and key path, a command never a string (issue 13 points 1+2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from canaryd.app import load_config
from canaryd.core.errors import ConfigError

BASE = """\
prometheus: {url: http://127.0.0.1:9090}
targets:
  - name: matriz
    policy: matriz-fast-track
    platform: {kind: none}
    router: {kind: noop}
"""


def config(tmp_path: Path, extra: str) -> Path:
    path = tmp_path / "canaryd.yaml"
    path.write_text(BASE + extra)
    return path


def test_the_keys_are_read_with_their_defaults(tmp_path: Path) -> None:
    plain = load_config(config(tmp_path, "")).target("matriz").supply
    assert (plain.require_digest, plain.verify, plain.verify_timeout) == (False, (), 120.0)
    extra = (
        "    require_digest: true\n"
        "    verify:\n"
        '      - [cosign, verify, --key, /etc/canaryd/cosign.pub, "{image}"]\n'
        '      - [scan, "--image={image}", 3]\n'
        "    verify_timeout: 90s\n"
    )
    supply = load_config(config(tmp_path, extra)).target("matriz").supply
    assert supply.require_digest is True and supply.verify_timeout == 90.0
    assert supply.verify == (
        ("cosign", "verify", "--key", "/etc/canaryd/cosign.pub", "{image}"),
        ("scan", "--image={image}", "3"),
    )


@pytest.mark.parametrize(
    ("extra", "where", "words"),
    [
        ("    require_digest: yes please\n", "targets[0].require_digest", "true or false"),
        (
            '    verify: ["cosign verify {image}"]\n',
            "targets[0].verify[0]",
            "never run through a shell",
        ),
        ("    verify: [[]]\n", "targets[0].verify[0]", "an empty command"),
        ("    verify: [[cosign, {a: b}]]\n", "targets[0].verify[0][1]", "string argument"),
        ("    verify: {cosign: verify}\n", "targets[0].verify", "expected a list"),
        ("    verify_timeout: 0s\n", "targets[0].verify_timeout", "greater than zero"),
        ("    verfy: [[cosign]]\n", "targets[0].verfy", "verify"),
    ],
)
def test_every_mistake_is_named_with_its_key_path(
    tmp_path: Path, extra: str, where: str, words: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(config(tmp_path, extra))
    text = str(caught.value)
    assert f"canaryd.yaml: {where}:" in text and words in text, text


def test_a_command_without_the_image_placeholder_is_a_warning(tmp_path: Path) -> None:
    settings = load_config(config(tmp_path, "    verify: [[/usr/local/bin/scan-all]]\n"))
    assert [(w.path, "{image}" in w.message) for w in settings.warnings] == [
        ("targets[0].verify[0]", True)
    ]
