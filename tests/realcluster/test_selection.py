"""How the real-cluster suite is selected, checked on every run (this module is not marked):
deselected by default, failing when selected without a cluster, and passing whole against the
emulator (``CANARYD_REALCLUSTER=emulator``), so that it does not rot where no cluster runs.

Each case runs pytest in a subprocess on ``tests/realcluster``, bounded in time."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import routers.test_router_contract as contract
from support import clustercases, clusters, kube, kubeschema

ROOT = Path(__file__).resolve().parents[2]
SUITE = "tests/realcluster"


def pytest_run(*args: str, **env: str) -> tuple[int, str]:
    """``python -m pytest -q <args>`` from the root, with ``env`` over a cleaned environment."""
    environ = {
        k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "CANARYD_REALCLUSTER")
    }
    environ["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT / "daemon"), *filter(None, [environ.get("PYTHONPATH")])]
    )
    environ.update(env)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return done.returncode, done.stdout + done.stderr


def count(output: str, outcome: str) -> int:
    found = re.search(rf"(\d+) {outcome}", output.splitlines()[-1] if output else "")
    return int(found[1]) if found else 0


def test_by_default_the_suite_is_deselected_and_against_the_emulator_it_all_passes() -> None:
    code, listed = pytest_run("--co", SUITE)
    assert code == 0, listed
    deselected = count(listed, "deselected")
    assert deselected >= 20, listed
    assert "test_cluster_" not in listed.replace(f"{SUITE}/test_selection.py", ""), listed
    code, ran = pytest_run("-m", "realcluster", SUITE, CANARYD_REALCLUSTER="emulator")
    assert code == 0, ran
    assert count(ran, "passed") == deselected, ran  # every deselected test, and all passed
    assert "skipped" not in ran.splitlines()[-1], ran


def test_selected_without_a_cluster_every_scenario_fails_saying_what_it_needs() -> None:
    code, ran = pytest_run("-m", "realcluster", f"{SUITE}/test_cluster_platform.py")
    assert code == 1, ran
    summary = ran.splitlines()[-1]
    assert count(ran, "error") == 3 and "passed" not in summary and "skipped" not in summary, ran
    assert "the realcluster tests need a cluster: set KUBECONFIG" in ran


def test_through_a_kubeconfig_to_the_emulator_the_suite_takes_its_real_cluster_path() -> None:
    """``run_against_emulator.py``: KUBECONFIG, a namespace created and deleted per test."""
    script = ROOT / SUITE / "run_against_emulator.py"
    environ = {
        k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "CANARYD_REALCLUSTER")
    }
    done = subprocess.run(
        [sys.executable, str(script), "-q", "-p", "no:cacheprovider", SUITE],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=300,
    )
    ran = done.stdout + done.stderr
    assert done.returncode == 0, ran
    assert count(ran, "passed") >= 20 and "left behind" not in ran, ran


def test_every_kubernetes_router_kind_of_the_contract_suite_is_in_the_cluster_suite() -> None:
    """The contract suite's router kinds without a proxy, noop aside, are the ones whose objects
    live in the Kubernetes API: each of them is in the cluster suite (argo-rollouts, whose
    contract is its own, is ``test_cluster_argo.py``)."""
    in_kubernetes = {k.kind for k in contract.ROUTERS if not k.data_plane} - {"noop"}
    assert in_kubernetes == set(clustercases.ROUTERS)
    assert set(contract.OWN_CONTRACT) == {"argo-rollouts"}


async def test_a_cluster_without_a_crd_fails_the_scenario_naming_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As a cluster without Argo Rollouts: the emulator made not to serve Rollouts."""
    served = kubeschema.lookup

    def without_rollouts(group: str, version: str, plural: str) -> kubeschema.ResourceType | None:
        return (
            None
            if (group, plural) == ("argoproj.io", "rollouts")
            else served(group, version, plural)
        )

    monkeypatch.setattr(kubeschema, "lookup", without_rollouts)
    async with clusters.emulated() as cluster:
        await cluster.require(kube.DEPLOYMENTS, kube.HTTPROUTES)  # served: nothing to say
        with pytest.raises(pytest.fail.Exception, match=r"CRD rollouts\.argoproj\.io is missing"):
            await cluster.require(kube.ROLLOUTS)
