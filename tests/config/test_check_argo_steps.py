"""``canaryd check --kubeconfig FILE`` reads each argo-rollouts target's Rollout and names the
first step that differs from the target's stages; without ``--kubeconfig`` check stays offline.
The Rollouts live in the validating emulator (tests/support/kube.py), on a thread of its own."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from support import fakeargo, kube

REPO = Path(__file__).resolve().parents[2]
NS = "shop"
STANDARD = [10, 25, 50, 100]  # rules/matriz-standard.yaml


def config(tmp: Path, *names: str) -> Path:
    lines = ["listen: 127.0.0.1:9870", "prometheus: {url: http://127.0.0.1:9}", "targets:"]
    for name in names:
        lines += [
            f"  - name: {name}",
            "    policy: matriz-standard",
            "    platform: {kind: none}",
            f"    router: {{kind: argo-rollouts, name: {name}, namespace: {NS}}}",
        ]
    path = tmp / "canaryd.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "canaryd.cli", "check", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_check_with_a_kubeconfig_names_the_step_that_differs(tmp_path: Path) -> None:
    with fakeargo.InThread(NS).started() as cluster:
        assert cluster.cluster is not None
        cluster.seed(fakeargo.rollout_manifest("web", "web:1", STANDARD))
        cluster.seed(fakeargo.rollout_manifest("api", "api:1", [10, 30, 50, 100]))
        path = config(tmp_path, "web", "api", "gone")
        offline = check("-c", str(path))
        access = kube.kubeconfig(tmp_path / "kubeconfig", cluster.cluster.url)
        online = check("-c", str(path), "--kubeconfig", str(access))
    assert offline.returncode == 0, offline.stderr
    assert online.returncode == 2, online.stderr
    assert online.stderr.splitlines() == [
        f"{path}: targets[1].router: Rollout shop/api: step 3 pauses at setWeight 30, "
        "canaryd stage 2 expects 25",
        f"{path}: targets[2].router: Rollout shop/gone not found",
    ]
