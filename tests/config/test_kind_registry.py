"""The kind registry: a router kind is one module plus one row, and ``check`` and ``serve``
accept exactly the kinds of the same tables (``app.KINDS``).

The toy kind below is declared as a real one is (``adapters/routers/noop.py`` is the model):
a config dataclass, a reader, a factory, a ``Kind`` row. Registering it is one row in
``adapters.routers.ROUTERS``; nothing else changes for ``canaryd check`` to read, check and
describe it and for the daemon's factory to build it.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest

from canaryd.adapters.kube import KubeClient
from canaryd.adapters.platforms import PLATFORMS
from canaryd.adapters.routers import ROUTERS
from canaryd.app import KINDS, build_router, load_config
from canaryd.cli import main
from canaryd.config.kinds import Kind, Loader, table, to_name

REPO = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------- a toy router kind, whole


class ToyRouter:
    kind = "toy"

    def __init__(self, target: str, lane: str) -> None:
        self.target, self.lane = target, lane
        self.weight: int | None = None
        self.closed = False

    async def set_weight(self, weight: int) -> None:
        self.weight = weight

    async def get_weight(self) -> int | None:
        return self.weight

    async def finalize(self) -> None:
        self.weight = None

    async def aclose(self) -> None:
        self.closed = True


@dataclass(frozen=True, slots=True)
class ToyConfig:
    lane: str
    kind: Literal["toy"] = field(default="toy", init=False)


def read_toy(ld: Loader, m: Mapping[str, Any], where: str) -> ToyConfig:
    return ToyConfig(lane=ld.need(m, "lane", where, to_name, ""))


def build_toy(target: str, c: ToyConfig, kube: KubeClient | None) -> ToyRouter:
    return ToyRouter(target, c.lane)


TOY: Kind[ToyConfig, Any] = Kind(
    name="toy",
    keys=frozenset({"lane"}),
    read=read_toy,
    build=build_toy,
    describe=lambda c: f"toy (lane {c.lane})",
    identity=lambda c: ("toy", c.lane),
)


def config(tmp_path: Path, router: str, name: str = "web") -> Path:
    path = tmp_path / "canaryd.yaml"
    path.write_text(
        textwrap.dedent(
            f"""\
            listen: 127.0.0.1:9870
            state: {{backend: sqlite, path: {tmp_path / "state.db"}}}
            prometheus: {{url: http://127.0.0.1:9090}}
            targets:
              - name: {name}
                policy: matriz-fast-track
                platform: {{kind: none}}
                router: {router}
            """
        ),
        encoding="utf-8",
    )
    return path


@pytest.fixture
def toy_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    """The one row a new router kind adds (here for the test's duration)."""
    monkeypatch.setitem(ROUTERS, "toy", TOY)


@pytest.mark.usefixtures("toy_registered")
def test_a_toy_router_registered_by_one_row_passes_canaryd_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO)
    path = config(tmp_path, "{kind: toy, lane: blue}")
    assert main(["check", "-c", str(path)]) == 0
    out = capsys.readouterr().out
    assert "target web: policy matriz-fast-track, platform none, router toy (lane blue)" in out


@pytest.mark.usefixtures("toy_registered")
def test_the_toy_kind_is_checked_like_any_kind(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = config(tmp_path, "{kind: toy, lnae: blue}")
    assert main(["check", "-c", str(path)]) == 2
    err = capsys.readouterr().err
    assert "targets[0].router.lane: required key is missing" in err
    assert "targets[0].router.lnae: unknown key for router kind toy (did you mean 'lane'?" in err


@pytest.mark.usefixtures("toy_registered")
def test_the_daemon_builds_the_toy_router_from_its_row(tmp_path: Path) -> None:
    [target] = load_config(config(tmp_path, "{kind: toy, lane: green}")).targets
    router = build_router(target)
    assert isinstance(router, ToyRouter)
    assert (router.target, router.lane) == ("web", "green")


@pytest.mark.usefixtures("toy_registered")
def test_two_targets_may_not_share_a_toy_lane(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The row's ``identity`` is what the loader's "routes through the same object" rule uses."""
    path = config(tmp_path, "{kind: toy, lane: blue}")
    text = path.read_text(encoding="utf-8")
    second = text[text.index("  - name: web") :].replace("name: web", "name: api")
    path.write_text(text + second, encoding="utf-8")
    assert main(["check", "-c", str(path)]) == 2
    assert "targets[0] already routes through the same toy object" in capsys.readouterr().err


def test_without_its_row_the_kind_is_unknown_with_a_did_you_mean(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert "toy" not in ROUTERS
    path = config(tmp_path, "{kind: toys, lane: blue}")
    assert main(["check", "-c", str(path)]) == 2
    assert "unknown router kind 'toys'" in capsys.readouterr().err


def test_the_registry_tables_are_the_composition_roots() -> None:
    assert KINDS.routers is ROUTERS and KINDS.platforms is PLATFORMS
    assert list(ROUTERS) == [
        "gateway-api",
        "traefik-service",
        "argo-rollouts",
        "nginx-ingress",
        "traefik-file",
        "nginx",
        "noop",
    ]
    assert list(PLATFORMS) == ["kubernetes", "docker", "none"]
    for kind in [*ROUTERS.values(), *PLATFORMS.values()]:
        assert kind.build is not None or kind.fallback, kind.name


def test_a_kind_registered_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="'toy' is registered twice"):
        table(TOY, TOY)


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "canaryd.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_every_router_kind_is_built() -> None:
    """No router kind is refused as "not available in this build" any more (argo-rollouts was
    the last). The one line ``check`` and ``serve`` print for a kind or backend not built yet
    is still held by tests/config/test_check_serve_agree.py (``state.backend: kubernetes``)."""
    assert [k for k, row in ROUTERS.items() if row.build is None] == []


def test_a_kinds_keys_are_checked_with_a_did_you_mean(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = config(tmp_path, "{kind: argo-rollouts, name: web, namespce: shop}")
    assert main(["check", "-c", str(path)]) == 2
    assert "did you mean 'namespace'?" in capsys.readouterr().err
