"""Every shipped MATRIZ policy judges the canary against stable and verifies the split in
every stage (issue: decision quality), on top of the runbook's absolute SLOs."""

from __future__ import annotations

from pathlib import Path

import pytest

from canaryd.config.policies import RULES_DIR, load_policy

SHIPPED = sorted(RULES_DIR.glob("matriz-*.yaml"))


def test_the_rules_folder_ships_the_matriz_policies() -> None:
    assert {p.stem for p in SHIPPED} >= {
        "matriz-fast-track", "matriz-standard", "matriz-conservative", "matriz-compose"
    }  # fmt: skip


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_every_stage_compares_with_stable_and_the_split_is_verified(path: Path) -> None:
    policy = load_policy(path)
    assert policy.checks["errors-vs-stable"].compare == "errors"
    assert policy.checks["latency-vs-stable"].compare == "latency"
    assert policy.split_tolerance == pytest.approx(0.03)
    for n, stage in enumerate(policy.stages, 1):
        assert {"errors-vs-stable", "latency-vs-stable"} <= set(stage.checks), f"stage {n}"
        absolute = [c for c in stage.checks if not policy.checks[c].compare]
        assert absolute, f"stage {n} keeps an absolute SLO check"
