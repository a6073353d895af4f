"""The reference docs (``docs/``, ``README.md``, ``rules/README.md``) stay true to the code.

Docs drift silently: a route is added and never documented, a router kind gains a key, an
example stops being accepted. These tests read the facts from the running code, never from a
list kept here, and compare them with the docs:

- every route the API serves is in ``docs/api.md``'s route table, and every row of that table
  is served, with the role it names (a token one role lower is refused 403, the named role is
  let through);
- every top-level config key, every router and platform kind, every key of each kind and of
  each state backend is in ``docs/config.md`` (kinds and keys are read from ``canaryd check``'s
  own messages, so a kind added to the config is a kind the docs must describe);
- (every whole config the docs show passes ``canaryd check``: ``test_doc_configs.py``);
- every relative link of the docs leads to a file of the project (and an ``#anchor`` to one of
  its headings), and no file of the project reaches outside it for a reference document.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient

from support.apikit import IDLE, auth, running_stack, webhook_auth

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
API_MD = DOCS / "api.md"
CONFIG_MD = DOCS / "config.md"
OWN_DOCS = [ROOT / "README.md", ROOT / "rules" / "README.md", *sorted(DOCS.rglob("*.md"))]

Client = TestClient[Any, Any]
MakeClient = Callable[[web.Application], Awaitable[Client]]

ROLES = ("viewer", "operator", "admin")
_ROUTE_ROW = re.compile(r"^\| `(GET|POST|PUT|PATCH|DELETE) (/[^`]*)` \| ([^|]+?) \|", re.M)


# --------------------------------------------------------------------------- helpers


def _section(text: str, heading: re.Pattern[str]) -> str:
    """The text under the first heading matching ``heading``, up to the next heading of the same
    or a higher level; ``AssertionError`` naming the pattern if there is none."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        found = re.match(r"(#+) ", line)
        if found and heading.search(line):
            level = len(found.group(1))
            body: list[str] = []
            for rest in lines[i + 1 :]:
                deeper = re.match(r"(#+) ", rest)
                if deeper and len(deeper.group(1)) <= level:
                    break
                body.append(rest)
            return "\n".join(body)
    raise AssertionError(f"no heading matching {heading.pattern!r}")


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


def _documented_routes() -> dict[tuple[str, str], str]:
    """(method, path) → the role column of ``docs/api.md``'s route table."""
    section = _section(API_MD.read_text(encoding="utf-8"), re.compile(r"^## Routes$"))
    return {(m, p): role.strip() for m, p, role in _ROUTE_ROW.findall(section)}


# --------------------------------------------------------------------------- the API


async def test_every_route_the_api_serves_is_documented_and_nothing_more(tmp_path: Path) -> None:
    async with running_stack(tmp_path, load=False) as stack:
        served = {
            (route.method, route.resource.canonical)
            for route in stack.app.router.routes()
            if route.method != "HEAD" and route.resource is not None
        }
    documented = set(_documented_routes())
    assert served, "the app serves no route: the test reads the router wrongly"
    assert not served - documented, f"served but not in docs/api.md: {sorted(served - documented)}"
    assert not documented - served, f"in docs/api.md but not served: {sorted(documented - served)}"


async def test_each_route_needs_the_role_docs_api_md_names(
    tmp_path: Path, aiohttp_client: MakeClient
) -> None:
    """A token one role below the documented one is refused (401 without a token for
    ``viewer``); the documented role gets past the role check. Writes are sent an unknown body
    field, so that getting past is a 422 and nothing changes; the idle target has no rollout."""
    routes = _documented_routes()
    assert set(routes.values()) <= {*ROLES, "open", "webhook credential"}, routes
    async with running_stack(tmp_path) as stack:
        client = await aiohttp_client(stack.app)
        for (method, template), role in sorted(routes.items()):
            path = template.replace("{target}", IDLE)
            where = f"{method} {template} (documented: {role})"
            if role == "open":
                assert await _status(client, method, path, {}) == 200, where
            elif role == "webhook credential":
                assert await _status(client, method, path, {}) == 401, where
                past = await _status(client, method, path, webhook_auth())
                assert past == 400, where  # past the credential, refused for the body
            else:
                lower = ROLES.index(role) - 1
                below = auth(ROLES[lower]) if lower >= 0 else {}
                refused = await _status(client, method, path, below)
                assert refused == (403 if lower >= 0 else 401), where
                allowed = await _status(client, method, path, auth(role))
                assert allowed == (200 if method == "GET" else 422), where


async def _status(client: Client, method: str, path: str, headers: dict[str, str]) -> int:
    """The status of one request; anything but a GET carries an unknown field (a 422 once the
    caller is let through, so nothing changes)."""
    body = {"zzz": 1} if method != "GET" else None
    async with client.request(method, path, json=body, headers=headers) as answer:
        return answer.status


def test_every_canaryctl_command_is_in_docs_api_md() -> None:
    """The canaryctl table maps each command to its route; the offline ones are named too."""
    from canaryd.ctl.main import build_parser

    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    section = _section(API_MD.read_text(encoding="utf-8"), re.compile(r"^## canaryctl$"))
    missing = [
        name
        for name in commands.choices
        if f"`canaryctl {name}" not in section and f"`{name}`" not in section
    ]
    assert not missing, f"canaryctl commands not in docs/api.md: {missing}"


def test_every_rollout_phase_is_in_docs_api_md() -> None:
    """The API shows a rollout's phase; a phase added or renamed in the engine is documented."""
    from canaryd.core.model import Phase

    text = API_MD.read_text(encoding="utf-8")
    missing = [str(p) for p in Phase if f"`{p}`" not in text]
    assert not missing, f"phases not in docs/api.md: {missing}"


# --------------------------------------------------------------------------- the config


def _probe(tmp_path: Path, name: str, text: str) -> str:
    """What ``canaryd check`` says about a deliberately wrong config (its stderr)."""
    config = tmp_path / name
    config.write_text(text, encoding="utf-8")
    done = _check(config)
    assert done.returncode == 2, done.stdout + done.stderr
    return done.stderr


def _valid(message: str, what: str) -> list[str]:
    found = re.search(rf"unknown {what} 'zzz'; valid: ([^\n]+)", message)
    assert found, f"canaryd check no longer lists the valid {what}s:\n{message}"
    return [v.strip() for v in found.group(1).split(",")]


def _kinds(tmp_path: Path) -> tuple[list[str], list[str], list[str]]:
    """(state backends, platform kinds, router kinds), as ``canaryd check`` lists them."""
    said = _probe(
        tmp_path,
        "kinds.yaml",
        "state: {backend: zzz}\nprometheus: {url: http://127.0.0.1:9090}\n"
        "targets:\n- {name: a, policy: matriz-fast-track,"
        " platform: {kind: zzz}, router: {kind: zzz}}\n",
    )
    return (
        _valid(said, "state backend"),
        _valid(said, "platform kind"),
        _valid(said, "router kind"),
    )


def _keys_of(message: str, what: str) -> dict[str, list[str]]:
    """kind → its keys, from ``unknown key for <what> <kind> (keys: ...)`` messages."""
    pattern = rf"unknown key for {what} (\S+) \((?:did you mean '\w+'\? )?keys: ([^)]*)\)"
    return {
        kind: [k.strip() for k in keys.split(",") if k.strip() not in ("kind", "")]
        for kind, keys in re.findall(pattern, message)
    }


def test_every_key_and_kind_is_in_the_config_reference(tmp_path: Path) -> None:
    doc = CONFIG_MD.read_text(encoding="utf-8")
    backends, platforms, routers = _kinds(tmp_path)
    missing: list[str] = []

    shipped = yaml.safe_load((ROOT / "config" / "canaryd.yaml").read_text(encoding="utf-8"))
    top = _section(doc, re.compile(r"^## Top level$"))
    missing += [f"top-level key {k}" for k in shipped if f"| `{k}` |" not in top]

    state_keys: dict[str, list[str]] = {}
    for backend in backends:
        said = _probe(
            tmp_path,
            f"state-{backend}.yaml",
            f"state: {{backend: {backend}, zzz: 1}}\nprometheus: {{url: http://127.0.0.1:9090}}\n"
            "targets:\n- {name: a, policy: matriz-fast-track,"
            " platform: {kind: none}, router: {kind: noop}}\n",
        )
        state_keys.update(_keys_of(said, "state backend"))
    assert set(state_keys) == set(backends), state_keys
    state = _section(doc, re.compile(r"^### `state`$"))
    for backend, keys in state_keys.items():
        if f"`{backend}`" not in state:
            missing.append(f"state backend {backend}")
        missing += [f"state.{k} ({backend})" for k in keys if f"`{k}`" not in state]

    rows = "".join(
        f"- name: t{i}\n  policy: matriz-fast-track\n"
        f"  platform: {{kind: {platforms[i % len(platforms)]}, zzz: 1}}\n"
        f"  router: {{kind: {routers[i % len(routers)]}, zzz: 1}}\n"
        for i in range(max(len(platforms), len(routers)))
    )
    said = _probe(
        tmp_path, "keys.yaml", f"prometheus: {{url: http://127.0.0.1:9090}}\ntargets:\n{rows}"
    )
    for what, kinds in (("platform", platforms), ("router", routers)):
        by_kind = _keys_of(said, f"{what} kind")
        assert set(by_kind) == set(kinds), f"{what} kinds {kinds}, keys read for {sorted(by_kind)}"
        for kind in kinds:
            heading = re.compile(rf"^###.*`{re.escape(kind)}`.*\b{what}s?$")
            try:
                body = _section(doc, heading)
            except AssertionError:
                missing.append(f"{what} kind {kind} (a '### `{kind}` {what}' section)")
                continue
            missing += [
                f"{what} kind {kind}: key {k}" for k in by_kind[kind] if f"`{k}`" not in body
            ]
    assert not missing, "docs/config.md does not describe:\n" + "\n".join(missing)


# --------------------------------------------------------------------------- links


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(file: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", file.read_text(encoding="utf-8"), flags=re.M | re.S)
    return {_slug(m) for m in re.findall(r"^#+ (.+)$", text, re.M)}


def test_every_relative_link_of_the_docs_leads_inside_the_project() -> None:
    broken: list[str] = []
    for doc in OWN_DOCS:
        text = re.sub(r"^```.*?^```", "", doc.read_text(encoding="utf-8"), flags=re.M | re.S)
        for link in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", link):
                continue  # http(s), mailto: not ours to check offline
            name, _, anchor = link.partition("#")
            target = (doc.parent / name).resolve() if name else doc
            shown = f"{doc.relative_to(ROOT)}: {link}"
            if not target.is_relative_to(ROOT) or not target.exists():
                broken.append(f"{shown} (no such file in the project)")
            elif anchor and target.suffix == ".md" and anchor not in _anchors(target):
                broken.append(f"{shown} (no such heading)")
    assert not broken, "\n".join(broken)


_SKIP_DIRS = {  # what .gitignore keeps out of the project: caches and build output
    ".git",
    "__pycache__",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    ".hypothesis",
    ".import_linter_cache",
    ".venv",
    "build",
    "dist",
}


def _project_files() -> Iterator[Path]:
    for path in ROOT.rglob("*"):
        parts = set(path.relative_to(ROOT).parts)
        if (
            path.is_file()
            and not parts & _SKIP_DIRS
            and not any(p.endswith(".egg-info") for p in parts)
        ):
            yield path


def test_no_file_of_the_project_reaches_outside_it() -> None:
    """A fresh clone has nothing beside it: no file may link or read the old shared folder."""
    outside = ("../" + "shared", "/work/" + "shared")  # split, or this file would match itself
    upstream = ROOT / "tests" / "upstream"
    found = []
    for path in _project_files():
        if path.is_relative_to(upstream):
            continue  # upstream's own files, kept as they were published
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue  # binary
        found += [f"{path.relative_to(ROOT)}: {s}" for s in outside if s in text]
    assert not found, "\n".join(found)
