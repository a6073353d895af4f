"""Config keys added by the hardening issue (issue 7), read by the real loader from real files.

- point 15: a mapping key given twice anywhere in canaryd's YAML (config, tokens file, policy)
  is an error naming the file, the key path and both lines; YAML itself would keep the last.
- point 7: ``policies:`` and the map of policies the API may name (file stems, never paths).
- point 5: ``alerts: {expire_after}``, how long a firing alert Alertmanager stopped re-sending
  stays active.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

from canaryd.app import load_config
from canaryd.config.policies import RULES_DIR, load_policy
from canaryd.config.reader import DuplicateKeys, StrictLoader
from canaryd.config.settings import load_tokens
from canaryd.core.errors import ConfigError

HEAD = "prometheus: {url: http://127.0.0.1:9090}\n"
TARGET = """\
targets:
  - name: web
    policy: matriz-fast-track
    platform: {kind: none}
    router: {kind: noop}
"""


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return [str(p) for p in caught.value.problems]


# --------------------------------------------------------------------------- point 15


def test_a_key_given_twice_in_the_config_names_its_path_and_both_lines(tmp_path: Path) -> None:
    path = write(
        tmp_path / "canaryd.yaml",
        """\
        prometheus: {url: http://127.0.0.1:9090}
        listen: 127.0.0.1:9870
        targets:
          - name: web
            policy: matriz-fast-track
            platform: {kind: none}
            router: {kind: noop}
            labels:
              job: web
              job: web-canary
        listen: 0.0.0.0:9870
        """,
    )
    assert problems_of(path) == [
        f"{path}: targets[0].labels.job: duplicate key (line 10; first on line 9): "
        "YAML would silently keep the last",
        f"{path}: listen: duplicate key (line 11; first on line 2): "
        "YAML would silently keep the last",
    ]


def test_a_key_given_twice_in_the_tokens_file_or_a_policy_is_an_error(tmp_path: Path) -> None:
    tokens = write(
        tmp_path / "tokens.yaml",
        """\
        - name: ci
          role: viewer
          token: ci-token-0123456789abcdef
          role: admin
        """,
    )
    with pytest.raises(ConfigError) as caught:
        load_tokens(tokens)
    assert [str(p) for p in caught.value.problems] == [
        f"{tokens}: [0].role: duplicate key (line 4; first on line 2): "
        "YAML would silently keep the last"
    ]
    text = (RULES_DIR / "matriz-fast-track.yaml").read_text(encoding="utf-8")
    policy = tmp_path / "twice.yaml"
    policy.write_text(text + "interval: 1s\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_policy(policy)
    [problem] = [str(p) for p in caught.value.problems]
    assert problem.startswith(f"{policy}: interval: duplicate key (line ")
    path = write(tmp_path / "canaryd.yaml", HEAD + TARGET.replace("matriz-fast-track", str(policy)))
    assert any(p.startswith(f"{policy}: interval: duplicate key") for p in problems_of(path))


def test_the_strict_loader_is_a_safe_loader_that_keeps_anchors_and_merges() -> None:
    text = "base: &b {a: 1}\nderived:\n  <<: *b\n  c: 2\nlist: [{x: 1}, {x: 2}]\n"
    assert yaml.load(text, Loader=StrictLoader) == yaml.safe_load(text)
    with pytest.raises(DuplicateKeys) as caught:
        yaml.load("list:\n  - {x: 1, 'x': 2}\n", Loader=StrictLoader)
    assert [(d.path, d.line, d.first_line) for d in caught.value.duplicates] == [
        ("list[0].x", 2, 2)
    ]
    with pytest.raises(yaml.constructor.ConstructorError):
        yaml.load("!!python/object:os.system {}\n", Loader=StrictLoader)


# --------------------------------------------------------------------------- point 7


def mine(tmp_path: Path, name: str) -> Path:
    (tmp_path / "policies").mkdir(exist_ok=True)
    text = (RULES_DIR / "matriz-fast-track.yaml").read_text(encoding="utf-8")
    return write(tmp_path / "policies" / f"{name}.yaml", text.replace("fast-track", name))


def test_the_api_may_name_each_targets_policy_and_the_listed_ones_by_file_stem(
    tmp_path: Path,
) -> None:
    mine(tmp_path, "quick")
    path = write(
        tmp_path / "canaryd.yaml",
        HEAD + "policies: [matriz-conservative, policies/quick.yaml]\n" + TARGET,
    )
    settings = load_config(path)
    assert sorted(settings.api_policies) == [
        "matriz-conservative",
        "matriz-fast-track",
        "quick",
    ]
    assert settings.api_policy("quick").name == "matriz-quick"
    assert settings.api_policy("matriz-conservative") == load_policy(
        RULES_DIR / "matriz-conservative.yaml"
    )
    assert settings.api_policy("matriz-fast-track") is settings.target("web").policy


@pytest.mark.parametrize(
    "name",
    [
        "matriz-standard",  # shipped, but this config does not allow it
        "/etc/passwd",
        "policies/quick.yaml",
        "quick.yaml",
        "../rules/matriz-fast-track",
        "",
    ],
)
def test_anything_but_an_allowed_name_is_an_unknown_policy(tmp_path: Path, name: str) -> None:
    mine(tmp_path, "quick")
    path = write(tmp_path / "canaryd.yaml", HEAD + "policies: [policies/quick.yaml]\n" + TARGET)
    settings = load_config(path)
    with pytest.raises(LookupError) as caught:
        settings.api_policy(name)
    assert caught.value.args[0] == (
        f"unknown policy {name!r}; the config allows: matriz-fast-track, quick"
    )


def test_bad_policies_entries_are_named_like_any_other_key(tmp_path: Path) -> None:
    mine(tmp_path, "quick")
    (tmp_path / "other").mkdir()
    write(tmp_path / "other" / "quick.yaml", (tmp_path / "policies" / "quick.yaml").read_text())
    broken = write(tmp_path / "broken.yaml", "stages: 7\n")
    path = write(
        tmp_path / "canaryd.yaml",
        HEAD
        + "policies: [no-such-policy, 7, policies/quick.yaml, other/quick.yaml, broken.yaml]\n"
        + TARGET,
    )
    problems = problems_of(path)
    assert problems[0].startswith(f"{path}: policies[0]: no policy named 'no-such-policy' in ")
    assert problems[1] == f"{path}: policies[1]: expected a non-empty string, got int 7"
    assert problems[2] == (
        f"{path}: policies[3]: another policy is already named 'quick' "
        f"({tmp_path / 'policies' / 'quick.yaml'}); the API names policies by file name"
    )
    assert f"{broken}: stages: expected a list, got int" in problems[3:]
    assert all(p.startswith(f"{broken}: ") for p in problems[3:])
    not_a_list = write(tmp_path / "canaryd.yaml", HEAD + "policies: quick\n" + TARGET)
    assert problems_of(not_a_list) == [f"{not_a_list}: policies: expected a list, got str"]


# --------------------------------------------------------------------------- point 5


def test_alerts_expire_after_defaults_to_three_of_alertmanagers_repeat_intervals(
    tmp_path: Path,
) -> None:
    assert load_config(write(tmp_path / "a.yaml", HEAD + TARGET)).alerts.expire_after == 12 * 3600
    path = write(tmp_path / "b.yaml", HEAD + "alerts: {expire_after: 1h30m}\n" + TARGET)
    assert load_config(path).alerts.expire_after == 5400.0


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("{expire_after: 0s}", "alerts.expire_after: must be greater than zero, got '0s'"),
        ("{expire_after: soon}", "alerts.expire_after: expected a duration"),
        ("{expire_afer: 1h}", "alerts.expire_afer: unknown key (did you mean 'expire_after'?)"),
        ("12h", "alerts: expected a mapping, got str"),
    ],
)
def test_a_bad_alerts_section_is_named(tmp_path: Path, value: str, message: str) -> None:
    path = write(tmp_path / "canaryd.yaml", HEAD + f"alerts: {value}\n" + TARGET)
    [problem] = problems_of(path)
    assert problem.startswith(f"{path}: {message}")


def test_the_shipped_config_lets_the_api_name_its_listed_policies() -> None:
    settings = load_config(Path(__file__).resolve().parents[2] / "config" / "canaryd.yaml")
    assert sorted(settings.api_policies) == [
        "matriz-conservative",
        "matriz-fast-track",
        "matriz-standard",
    ]
    assert settings.alerts.expire_after == 12 * 3600
