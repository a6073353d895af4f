"""Every canaryd config the project shows is one ``canaryd check`` accepts, without a warning.

A reader copies a config out of the README or a guide and runs it; a config that has drifted
from the code (a renamed key, a kind that moved) fails them at their first step. So every
```` ```yaml ```` block of ``README.md``, ``rules/README.md`` and ``docs/**/*.md`` whose top level
has ``targets:`` is a whole config, and so is every shipped ``*.yaml``/``*.yml`` file with a
top-level ``targets:`` (``config/``, ``systemd/``, ``examples/``, ``deployment/``). Each one goes
through the real ``canaryd check`` (a subprocess, as a user runs it) and must exit 0 with
nothing on stderr that says ``warning``.

Nothing is excluded; instead each config is checked where it would be read:

- a block is read as if it were a file at the root of the checkout, a shipped file at its own
  place in it: the checkout is mirrored into ``tmp_path`` (symbolic links to everything but the
  directories leading to the config), so relative references (``rules/...``, a policy one
  directory up, ``config/...``) resolve exactly as in a clone, and nothing is written into it;
- the secret files a config names (every ``*_file`` key) are what the operator provisions, so
  the test provides them: a relative one that the checkout lacks is written beside the config,
  an absolute one (``/etc/canaryd/tokens.yaml``) is moved under ``tmp_path`` (the config's text
  is rewritten to the moved path) and written there, mode 0600. ``canaryd check`` then reads
  and validates them as it would on the host, instead of warning that they do not exist yet.
  A ``tokens_file`` gets a valid tokens list, any other a token.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", ROOT / "rules" / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
SHIPPED_DIRS = ("config", "systemd", "examples", "deployment")
_FENCE = re.compile(r"^```ya?ml[ \t]*\n(.*?)^```", re.M | re.S)
_TOP_LEVEL_TARGETS = re.compile(r"^targets:", re.M)
TOKENS = "- {name: me, role: admin, token: docs-example-token-0123}\n"
SECRET = "docs-example-secret-0123\n"


@dataclass(frozen=True)
class Shown:
    """One config the project shows: its text, where it is shown, and where it is read from."""

    where: str  # "docs/guides/kubernetes.md:42" or "config/observe-only.yaml"
    text: str
    place: Path  # the path, relative to the checkout, canaryd reads it at


def _is_config(text: str) -> bool:
    """A whole canaryd config: one YAML document whose top level has ``targets``. Text that
    does not parse but has a top-level ``targets:`` counts too, so ``check`` names the fault."""
    try:
        documents = list(yaml.safe_load_all(text))
    except yaml.YAMLError:
        return bool(_TOP_LEVEL_TARGETS.search(text))
    return len(documents) == 1 and isinstance(documents[0], dict) and "targets" in documents[0]


def _doc_blocks() -> Iterator[Shown]:
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        name = doc.relative_to(ROOT).as_posix()
        for found in _FENCE.finditer(text):
            block = found.group(1)
            if _is_config(block):
                line = text.count("\n", 0, found.start()) + 2  # the block's first line
                stem = re.sub(r"\W", "-", name)
                yield Shown(f"{name}:{line}", block, Path(f"{stem}-{line}.yaml"))


def _shipped_files() -> Iterator[Shown]:
    for top in SHIPPED_DIRS:
        for path in sorted((ROOT / top).rglob("*")):
            if path.suffix in (".yaml", ".yml") and path.is_file():
                text = path.read_text(encoding="utf-8")
                if _is_config(text):
                    place = path.relative_to(ROOT)
                    yield Shown(place.as_posix(), text, place)


SHOWN = [*_doc_blocks(), *_shipped_files()]


# --------------------------------------------------------------------------- the mirror


def _mirror(checkout: Path, into: Path, place: Path) -> Path:
    """A view of ``checkout`` under ``into`` in which the directories leading to ``place`` are
    real (so files can be written there) and everything else links back; returns the path at
    which the config is to be written."""
    here, there = into, checkout
    for part in place.parts[:-1]:
        here.mkdir(exist_ok=True)
        _link_entries(there, here, keep=part)
        here, there = here / part, there / part
    here.mkdir(exist_ok=True)
    _link_entries(there, here, keep=place.name)
    return here / place.name


def _link_entries(source: Path, mirror: Path, keep: str) -> None:
    """Link every entry of ``source`` into ``mirror`` except ``keep`` (made real by the caller)
    and the repository's own metadata."""
    if not source.is_dir():
        return
    for entry in source.iterdir():
        if entry.name not in (keep, ".git") and not (mirror / entry.name).exists():
            (mirror / entry.name).symlink_to(entry)


def _secret_files(doc: Any) -> Iterator[tuple[str, str]]:
    """(key, path) of every ``*_file`` key anywhere in a config."""
    if isinstance(doc, dict):
        for key, value in doc.items():
            if str(key).endswith("_file") and isinstance(value, str):
                yield str(key), value
            else:
                yield from _secret_files(value)
    elif isinstance(doc, list):
        for item in doc:
            yield from _secret_files(item)


def _provide(key: str, secret: Path, tmp: Path) -> None:
    """Write the secret a ``key`` names, inside ``tmp`` only (never through a link into the
    checkout), readable by its owner alone as the docs ask."""
    assert secret.resolve().is_relative_to(tmp.resolve()), (
        f"{key}: {secret} would be written outside the test's directory (through a link into "
        "the checkout); give the secret a path beside the config or an absolute one"
    )
    secret.parent.mkdir(parents=True, exist_ok=True)
    secret.write_text(TOKENS if key == "tokens_file" else SECRET, encoding="utf-8")
    secret.chmod(0o600)


def _materialise(shown: Shown, tmp: Path) -> Path:
    """Write ``shown`` where canaryd reads it, with the secrets it names provided; its path."""
    config = _mirror(ROOT, tmp / "checkout", shown.place)
    text = shown.text
    try:
        parsed = yaml.safe_load(text)
    except yaml.YAMLError:
        parsed = None  # check names the fault
    for key, value in sorted(set(_secret_files(parsed))):
        if Path(value).is_absolute():
            moved = tmp / "host" / Path(value).relative_to("/")
            text = text.replace(value, str(moved))
            _provide(key, moved, tmp)
        elif not (config.parent / value).exists():
            _provide(key, config.parent / value, tmp)
    config.write_text(text, encoding="utf-8")
    return config


def _check(config: Path) -> subprocess.CompletedProcess[str]:
    """``canaryd check -c config`` as a user runs it (this checkout's code first on the path)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT / "daemon"), env.get("PYTHONPATH")) if p
    )
    return subprocess.run(
        [sys.executable, "-m", "canaryd.cli", "check", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=config.parent,
    )


# --------------------------------------------------------------------------- the tests


@pytest.mark.parametrize("shown", SHOWN, ids=[s.where for s in SHOWN])
def test_every_config_the_project_shows_passes_canaryd_check(shown: Shown, tmp_path: Path) -> None:
    done = _check(_materialise(shown, tmp_path))
    said = f"{shown.where}:\n{shown.text}\ncanaryd check said:\n{done.stderr}{done.stdout}"
    assert done.returncode == 0, said
    assert "warning" not in done.stderr, said
    assert ": ok — " in done.stdout, said


def test_the_configs_are_found_where_the_readers_look() -> None:
    """The collection itself is tested: a fence or layout change must not make it find
    nothing (and so pass vacuously)."""
    places = {s.where.split(":")[0] for s in SHOWN}
    assert sum(1 for s in SHOWN if s.where.startswith("docs/config.md:")) >= 3, places
    expected = {
        "config/canaryd.yaml",
        "config/observe-only.yaml",
        "config/nginx-router.example.yaml",
        "config/traefik-file.example.yaml",
        "systemd/canaryd.yaml",
        "docs/guides/systemd.md",
        "docs/guides/kubernetes.md",
    }
    assert expected <= places, sorted(expected - places)
    assert "config/tokens.example.yaml" not in places  # a tokens list, not a config


def test_a_config_is_checked_where_it_is_read(tmp_path: Path) -> None:
    """The mirror resolves a relative policy path as a clone does, and moves an absolute secret
    under the test's directory instead of touching the host's."""
    shown = Shown(
        "probe",
        "prometheus: {url: http://127.0.0.1:9090}\n"
        "auth: {tokens_file: /etc/canaryd/tokens.yaml, webhook: {bearer_token_file: hook}}\n"
        "targets:\n- {name: a, policy: ../rules/matriz-standard.yaml,"
        " platform: {kind: none}, router: {kind: noop}}\n",
        Path("config") / "probe.yaml",
    )
    config = _materialise(shown, tmp_path)
    assert config == tmp_path / "checkout" / "config" / "probe.yaml"
    assert (config.parent / "observe-only.yaml").resolve() == ROOT / "config" / "observe-only.yaml"
    moved = tmp_path / "host" / "etc" / "canaryd" / "tokens.yaml"
    assert str(moved) in config.read_text() and moved.read_text() == TOKENS
    assert (config.parent / "hook").read_text() == SECRET
    wrong = config.read_text().replace("../rules/matriz-standard.yaml", "../rules/nope.yaml")
    config.write_text(wrong)
    done = _check(config)
    assert done.returncode == 2 and "nope" in done.stderr, done.stderr
