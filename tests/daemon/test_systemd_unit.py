"""canaryd as a systemd service, as shipped and as deployment/install.sh lays it out.

The unit names ``/opt/canaryd/bin/canaryd`` (the venv the guide installs into), which a dev box
does not have; ``systemd-analyze verify`` insists that ExecStart exists and is executable. So
install.sh runs into a temporary root (``--root``), with the distribution's own units copied
there (verify needs sysinit.target and friends), and ``systemd-analyze verify --root`` checks
the unit exactly as installed, byte for byte the shipped one. The venv it makes reuses this
Python's packages (``--system-site-packages``), so only canaryd itself is built.

The service user is read from the temporary root's own /etc/passwd (systemd-sysusers writes it
there); reading the config as that uid (``setpriv``) shows the service can, and others cannot.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "canaryd.service"
SYSUSERS = ROOT / "systemd" / "canaryd.sysusers"
TMPFILES = ROOT / "systemd" / "canaryd.tmpfiles"
HOST_CONFIG = ROOT / "systemd" / "canaryd.yaml"
NGINX_TEST_UNIT = ROOT / "systemd" / "canaryd-nginx-test.service"
POLKIT_RULE = ROOT / "systemd" / "canaryd-nginx.rules"
INSTALL = ROOT / "deployment" / "install.sh"
GUIDE = ROOT / "docs" / "guides" / "systemd.md"
DISTRIBUTION_UNITS = Path("/usr/lib/systemd/system")
EXEC_START = "/opt/canaryd/bin/canaryd serve -c /etc/canaryd/canaryd.yaml"


def run(*argv: str | Path, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, timeout=120, **kwargs
    )


def systemd_tool(name: str) -> str:
    tool = shutil.which(name)
    assert tool, f"{name} not found: install systemd (Debian 12 ships it)"
    return tool


def unit_entries(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) for every assignment; keys may repeat, as systemd allows."""
    entries, section = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not an assignment: {raw!r}"
        entries.append((section, key.strip(), value.strip()))
    return entries


# --------------------------------------------------------------------------- the files as shipped


def test_the_unit_runs_the_venvs_canaryd_as_canaryd_with_notify_watchdog_and_sandbox() -> None:
    entries = unit_entries(UNIT.read_text())
    service = {k: v for s, k, v in entries if s == "Service"}
    assert {s for s, _, _ in entries} == {"Unit", "Service", "Install"}
    required = {
        "Type": "notify",
        "ExecStart": EXEC_START,
        "WatchdogSec": "30",
        "Restart": "on-failure",
        "User": "canaryd",
        "Group": "canaryd",
        "StateDirectory": "canaryd",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "NoNewPrivileges": "yes",
        "PrivateTmp": "yes",
    }
    for key, value in required.items():
        assert service.get(key) == value, f"[Service] {key}={service.get(key)!r}"
    # a fixed user from sysusers.d: a dynamic one could not own /etc/canaryd ahead of time
    assert "DynamicUser" not in service
    # a config error (exit 2) is not retried; the sandbox leaves no capabilities
    assert "2" in service["RestartPreventExitStatus"].split()
    assert service["CapabilityBoundingSet"] == ""
    assert ("Install", "WantedBy", "multi-user.target") in entries
    docs = [v for s, k, v in entries if (s, k) == ("Unit", "Documentation")]
    assert "file:/opt/canaryd/share/doc/canaryd/systemd.md" in docs


def test_the_units_comments_install_from_the_checkout_not_the_unrelated_pypi_canaryd() -> None:
    text = UNIT.read_text()
    assert "pip install canaryd" not in text
    assert "deployment/install.sh" in text and "docs/guides/systemd.md" in text


def test_sysusers_declares_a_nologin_system_user_and_tmpfiles_gives_etc_to_its_group() -> None:
    users = [line.split() for line in SYSUSERS.read_text().splitlines()]
    users = [words for words in users if words and not words[0].startswith("#")]
    assert len(users) == 1 and users[0][:3] == ["u", "canaryd", "-"]
    assert users[0][-1] == "/usr/sbin/nologin"
    dirs = {
        words[1]: words[2:5]
        for words in (line.split() for line in TMPFILES.read_text().splitlines())
        if words and words[0] == "d"
    }
    assert dirs["/etc/canaryd"] == ["0750", "root", "canaryd"]
    assert dirs["/var/lib/canaryd"] == ["0750", "canaryd", "canaryd"]


def test_the_nginx_test_unit_is_a_oneshot_of_nginx_t_that_verifies_on_this_host() -> None:
    """nginx is installed here (the router's tests need it), so the helper unit verifies
    against the host itself: its ExecStart, /usr/sbin/nginx, must exist."""
    service = {k: v for s, k, v in unit_entries(NGINX_TEST_UNIT.read_text()) if s == "Service"}
    assert service == {"Type": "oneshot", "ExecStart": "/usr/sbin/nginx -t -q"}
    done = run(systemd_tool("systemd-analyze"), "verify", NGINX_TEST_UNIT)
    assert (done.returncode, done.stderr) == (0, ""), done.stderr


POLKIT_PROBE = """
const fs = require("fs");
const rules = [];
const polkit = {Result: {YES: "yes", NOT_HANDLED: null}, addRule: (f) => rules.push(f)};
eval(fs.readFileSync(process.argv[2], "utf8"));
const [user, unit, verb] = process.argv.slice(3);
const action = {
    id: "org.freedesktop.systemd1.manage-units",
    lookup: (key) => ({unit: unit, verb: verb})[key],
};
console.log(String(rules.map((rule) => rule(action, {user: user})).find((r) => r) ?? "no"));
"""


@pytest.mark.parametrize(
    ("user", "unit", "verb", "answer"),
    [
        ("canaryd", "canaryd-nginx-test.service", "start", "yes"),
        ("canaryd", "nginx.service", "reload", "yes"),
        ("canaryd", "nginx.service", "stop", "no"),
        ("canaryd", "nginx.service", "restart", "no"),
        ("canaryd", "ssh.service", "reload", "no"),
        ("www-data", "nginx.service", "reload", "no"),
    ],
)
def test_the_polkit_rule_grants_canaryd_the_nginx_test_and_reload_and_nothing_else(
    tmp_path: Path, user: str, unit: str, verb: str, answer: str
) -> None:
    """The rule run by node (polkit's rules are JavaScript) against a stand-in ``polkit``."""
    node = shutil.which("node")
    assert node, "node not found: it runs the polkit rule"
    probe = tmp_path / "probe.js"
    probe.write_text(POLKIT_PROBE)
    done = run(node, probe, POLKIT_RULE, user, unit, verb)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == answer


# --------------------------------------------------------------------------- install.sh


@dataclass(frozen=True)
class Installed:
    """A root install.sh laid canaryd out in, and the ids it gave the canaryd user."""

    root: Path
    uid: int
    gid: int

    def path(self, absolute: str) -> Path:
        return self.root / absolute.lstrip("/")


def install(root: Path) -> subprocess.CompletedProcess[str]:
    return run(
        "bash", INSTALL, "--root", root, "--system-site-packages", "--python", sys.executable
    )


def passwd_ids(root: Path, name: str) -> tuple[int, int]:
    for line in (root / "etc" / "passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return int(fields[2]), int(fields[3])
    raise AssertionError(f"{root}/etc/passwd has no {name}")


@pytest.fixture(scope="module")
def installed() -> Iterator[Installed]:
    """install.sh run once into a fresh root, with the distribution's units beside it. The
    root sits under a world-traversable directory so the canaryd uid can reach its files."""
    systemd_tool("systemd-sysusers")
    base = Path(tempfile.mkdtemp(prefix="canaryd-root-"))
    try:
        base.chmod(0o755)
        done = install(base)
        assert done.returncode == 0, done.stdout + done.stderr
        units = base / "usr" / "lib" / "systemd" / "system"
        shutil.copytree(DISTRIBUTION_UNITS, units, symlinks=True, dirs_exist_ok=True)
        uid, gid = passwd_ids(base, "canaryd")
        yield Installed(base, uid, gid)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def mode_and_owner(path: Path) -> tuple[int, int, int]:
    info = path.stat()
    return stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid


def test_install_lays_out_the_venv_unit_user_and_a_config_only_its_group_reads(
    installed: Installed,
) -> None:
    at = installed.path
    assert os.access(at("/opt/canaryd/bin/canaryd"), os.X_OK)
    assert os.access(at("/opt/canaryd/bin/canaryctl"), os.X_OK)
    assert at("/etc/systemd/system/canaryd.service").read_bytes() == UNIT.read_bytes()
    assert at("/usr/lib/sysusers.d/canaryd.conf").read_bytes() == SYSUSERS.read_bytes()
    assert at("/usr/lib/tmpfiles.d/canaryd.conf").read_bytes() == TMPFILES.read_bytes()
    assert at("/opt/canaryd/share/doc/canaryd/systemd.md").read_bytes() == GUIDE.read_bytes()
    assert at("/opt/canaryd/share/canaryd/rules/matriz-standard.yaml").is_file()

    gid, uid = installed.gid, installed.uid
    assert mode_and_owner(at("/etc/canaryd")) == (0o750, 0, gid)
    assert mode_and_owner(at("/var/lib/canaryd")) == (0o750, uid, gid)
    for name in ("canaryd.yaml", "tokens.yaml", "webhook-token"):
        assert mode_and_owner(at(f"/etc/canaryd/{name}")) == (0o640, 0, gid), name
    assert at("/etc/canaryd/canaryd.yaml").read_bytes() == HOST_CONFIG.read_bytes()
    assert re.fullmatch(r"[0-9a-f]{64}", at("/etc/canaryd/webhook-token").read_text())
    passwd = at("/etc/passwd").read_text()
    assert f"canaryd:x:{uid}:{gid}:" in passwd and passwd.rstrip().endswith("/usr/sbin/nologin")


def test_systemd_analyze_verifies_the_installed_unit_and_rates_its_sandbox_ok(
    installed: Installed,
) -> None:
    tool = systemd_tool("systemd-analyze")
    root = f"--root={installed.root}"
    done = run(tool, "verify", root, "canaryd.service")
    # verify exits 0 even for an unknown key or a bad value; it only prints a warning
    assert done.returncode == 0, done.stderr
    assert done.stdout + done.stderr == ""
    installed_helper = installed.path("/etc/systemd/system/canaryd-nginx-test.service")
    assert installed_helper.read_bytes() == NGINX_TEST_UNIT.read_bytes()

    done = run(tool, "security", "--offline=yes", root, "--no-pager", "canaryd.service")
    match = re.search(r"Overall exposure level for \S+: ([\d.]+)", done.stdout)
    assert match, done.stdout[-2000:] + done.stderr
    assert float(match.group(1)) <= 2.0  # "OK"; systemd's scale runs 0 (safe) .. 10


def as_uid(installed: Installed, uid: int, gid: int, *argv: str | Path) -> int:
    argv_ = ("setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", *argv)
    return run(*argv_).returncode


def test_the_service_user_reads_the_config_and_secrets_and_other_users_cannot(
    installed: Installed,
) -> None:
    nobody = 65534
    for name in ("canaryd.yaml", "tokens.yaml", "webhook-token"):
        file = installed.path(f"/etc/canaryd/{name}")
        assert as_uid(installed, installed.uid, installed.gid, "cat", file) == 0, name
        assert as_uid(installed, nobody, nobody, "cat", file) != 0, name
        # the group reads, never writes: canaryd refuses a group-writable secret
        assert as_uid(installed, installed.uid, installed.gid, "test", "-w", file) != 0, name


def test_the_installed_canaryd_checks_the_installed_config(installed: Installed) -> None:
    """The config as installed, its /etc/canaryd paths moved into the root, passes the venv's
    own ``canaryd check``; its policy resolves to the rules shipped in the venv."""
    etc = installed.path("/etc/canaryd")
    text = (etc / "canaryd.yaml").read_text().replace("/etc/canaryd/", f"{etc}/")
    moved = etc / "check.yaml"
    moved.write_text(text)
    try:
        done = run(installed.path("/opt/canaryd/bin/canaryd"), "check", "-c", moved)
    finally:
        moved.unlink()
    assert done.returncode == 0, done.stdout + done.stderr
    assert "target web: policy matriz-standard, platform none, router nginx" in done.stdout
    assert "1 target" in done.stdout


def test_install_runs_again_keeping_the_config_and_secrets_and_putting_modes_back(
    installed: Installed,
) -> None:
    etc = installed.path("/etc/canaryd")
    config, token = etc / "canaryd.yaml", etc / "webhook-token"
    edited = config.read_text() + "# edited by the operator\n"
    config.write_text(edited)
    secret = token.read_text()
    token.chmod(0o666)
    try:
        done = install(installed.root)
        assert done.returncode == 0, done.stdout + done.stderr
        assert config.read_text() == edited
        assert token.read_text() == secret
        assert mode_and_owner(token) == (0o640, 0, installed.gid)
        assert passwd_ids(installed.root, "canaryd") == (installed.uid, installed.gid)
        lines = installed.path("/etc/passwd").read_text().splitlines()
        assert [line for line in lines if line.startswith("canaryd:")] == [
            f"canaryd:x:{installed.uid}:{installed.gid}:canaryd progressive-delivery daemon:"
            "/var/lib/canaryd:/usr/sbin/nologin"
        ]
        assert "installed" not in done.stdout  # nothing new was put in /etc/canaryd
    finally:
        config.write_text(HOST_CONFIG.read_text())


def test_install_refuses_what_it_does_not_understand_naming_it() -> None:
    done = run("bash", INSTALL, "--frobnicate")
    assert done.returncode != 0
    assert "unknown argument: --frobnicate" in done.stderr
    done = run("bash", INSTALL, "--root", "/nonexistent/canaryd-root")
    assert done.returncode != 0
    assert "--root /nonexistent/canaryd-root: no such directory" in done.stderr


# --------------------------------------------------------------------------- the guide


def fenced_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```$", text, flags=re.S | re.M)


def test_the_guide_shows_the_tested_host_config_and_the_shipped_install_path() -> None:
    guide = GUIDE.read_text()
    assert HOST_CONFIG.read_text() in fenced_blocks(guide, "yaml")
    assert "deployment/install.sh" in guide
    assert EXEC_START in guide
    assert "pip install canaryd" not in guide


def test_the_guides_drop_ins_verify_on_top_of_the_installed_unit(installed: Installed) -> None:
    """Every ``ini`` block in the guide is a drop-in the operator may add: each, installed as
    one, still passes ``systemd-analyze verify``."""
    drop_ins = fenced_blocks(GUIDE.read_text(), "ini")
    assert drop_ins, "the guide shows no drop-in"
    where = installed.path("/etc/systemd/system/canaryd.service.d")
    tool = systemd_tool("systemd-analyze")
    try:
        for number, body in enumerate(drop_ins):
            where.mkdir(exist_ok=True)
            (where / f"guide-{number}.conf").write_text(body)
            done = run(tool, "verify", f"--root={installed.root}", "canaryd.service")
            assert (done.returncode, done.stderr) == (0, ""), body
    finally:
        shutil.rmtree(where, ignore_errors=True)
