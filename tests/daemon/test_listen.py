"""Where ``canaryd serve`` listens: the config's ``listen``, replaced by ``$CANARYD_LISTEN``,
replaced by ``--listen`` (SPEC §5.1).

The container image sets ``CANARYD_LISTEN=0.0.0.0:9870`` because a container's loopback cannot
be reached from outside; an operator overrides it once more with ``--listen``. Each case runs a
real ``canaryd serve`` subprocess and asks its ``/readyz`` on the address it should have taken
and on the one it should not: a daemon answering on the config's port while told otherwise
would look fine to a local probe and be unreachable to everyone else. Everything listens on
127.0.0.1 only; the ``[::]`` form is checked by the parser, without IPv6 traffic.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from canaryd.cli import LISTEN_ENV, listen_override
from canaryd.config.settings import Listen, parse_listen
from support.procs import free_port
from support.servekit import Serve, TargetSpec, listen_port, probe, write_config

# A policy needs one check; no rollout starts here, so nothing ever asks Prometheus.
NOOP_POLICY = """\
name: listen-noop
interval: 1s
checks:
  unused: {query: vector(1), threshold: 0}
stages:
  - {weight: 50, duration: 1h}
"""


class ListenServe(Serve):
    """``Serve`` with extra ``serve`` arguments and environment, ready at ``url``."""

    def __init__(self, config: Path, url: str, argv: list[str], env: dict[str, str]) -> None:
        super().__init__(config)
        self.url, self.argv, self.env = url, argv, env

    def spawn(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "canaryd.cli",
                    "serve",
                    "-c",
                    str(self.config),
                    "--json-logs",
                    *self.argv,
                ],
                cwd=self.directory,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )


@pytest.fixture
def config(tmp_path: Path) -> Path:
    (tmp_path / "noop.yaml").write_text(NOOP_POLICY)
    return write_config(tmp_path, [TargetSpec("svc", "noop.yaml")])


def environ(**extra: str) -> dict[str, str]:
    """This process's environment without any CANARYD_LISTEN of its own, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k != LISTEN_ENV}
    return {**env, **extra}


@pytest.fixture
def serving(config: Path) -> Iterator[list[ListenServe]]:
    """The daemons a test started; each stopped (SIGTERM, then SIGKILL) when it ends."""
    started: list[ListenServe] = []
    yield started
    for serve in started:
        serve.stop()


def start(serving: list[ListenServe], config: Path, port: int, argv: list[str],
          env: dict[str, str]) -> ListenServe:  # fmt: skip
    serve = ListenServe(config, f"http://127.0.0.1:{port}", argv, env)
    serving.append(serve)
    serve.start()
    return serve


def assert_listens_only_on(port: int, config: Path) -> None:
    assert probe(f"http://127.0.0.1:{port}/readyz") == "200"
    assert probe(f"http://127.0.0.1:{listen_port(config)}/readyz") == "refused"


def test_the_listen_flag_replaces_the_configs_address(
    config: Path, serving: list[ListenServe]
) -> None:
    port = free_port()
    start(serving, config, port, ["--listen", f"127.0.0.1:{port}"], environ())
    assert_listens_only_on(port, config)


def test_canaryd_listen_replaces_the_configs_address(
    config: Path, serving: list[ListenServe]
) -> None:
    port = free_port()
    start(serving, config, port, [], environ(CANARYD_LISTEN=f"127.0.0.1:{port}"))
    assert_listens_only_on(port, config)


def test_the_flag_beats_the_variable(config: Path, serving: list[ListenServe]) -> None:
    port, other = free_port(), free_port()
    env = environ(CANARYD_LISTEN=f"127.0.0.1:{other}")
    start(serving, config, port, ["--listen", f"127.0.0.1:{port}"], env)
    assert_listens_only_on(port, config)
    assert probe(f"http://127.0.0.1:{other}/readyz") == "refused"


def test_an_empty_variable_leaves_the_configs_address(
    config: Path, serving: list[ListenServe]
) -> None:
    start(serving, config, listen_port(config), [], environ(CANARYD_LISTEN=""))
    assert probe(f"http://127.0.0.1:{listen_port(config)}/readyz") == "200"


BAD = [
    (["--listen", "nonsense"], {}, "canaryd: --listen: expected host:port"),
    (["--listen", "127.0.0.1:99999"], {}, "canaryd: --listen: port must be within 1..65535"),
    (["--listen", ""], {}, "canaryd: --listen: expected host:port"),
    ([], {"CANARYD_LISTEN": "0.0.0.0"}, "canaryd: CANARYD_LISTEN: expected host:port"),
    ([], {"CANARYD_LISTEN": "[::1:9870"}, "canaryd: CANARYD_LISTEN: expected host:port"),
    # the flag wins, so a good flag is not spoilt by a bad variable, but a bad flag is named
    (["--listen", "x:y"], {"CANARYD_LISTEN": "127.0.0.1:9870"}, "canaryd: --listen: "),
]


@pytest.mark.parametrize(
    ("argv", "env", "line"), BAD, ids=[" ".join(a) or str(e) for a, e, _ in BAD]
)
def test_a_bad_address_is_exit_2_with_one_line_naming_the_flag_or_variable(
    config: Path, argv: list[str], env: dict[str, str], line: str
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "canaryd.cli", "serve", "-c", str(config), *argv],
        env=environ(**env),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert len(done.stderr.splitlines()) == 1 and done.stderr.startswith(line), done.stderr


def test_a_good_flag_is_not_spoilt_by_a_bad_variable() -> None:
    assert listen_override("127.0.0.1:8080", {LISTEN_ENV: "junk"}) == Listen("127.0.0.1", 8080)


@pytest.mark.parametrize(
    ("text", "listen"),
    [
        ("127.0.0.1:9870", Listen("127.0.0.1", 9870)),
        ("0.0.0.0:9870", Listen("0.0.0.0", 9870)),
        ("[::]:9870", Listen("::", 9870)),
        ("[::1]:80", Listen("::1", 80)),
        ("localhost:9870", Listen("localhost", 9870)),
    ],
)
def test_the_address_forms_the_config_and_the_override_share(text: str, listen: Listen) -> None:
    assert parse_listen(text) == listen
    assert listen_override(text, {}) == listen
    assert listen_override(None, {LISTEN_ENV: text}) == listen
    assert str(listen) == text


def test_no_override_is_none() -> None:
    assert listen_override(None, {}) is None
    assert listen_override(None, {LISTEN_ENV: ""}) is None


def test_serve_help_names_the_flag_and_the_variable() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "canaryd.cli", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0
    assert "--listen ADDR" in done.stdout and "$CANARYD_LISTEN" in done.stdout
