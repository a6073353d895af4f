"""The platform contract (``tests/platforms/test_platform_contract.py``) for the ``kubernetes``
platform against a cluster: ``ensure_canary``, ``canary_status``, ``remove_canary``,
``stable_image`` and ``update_stable`` over a Deployment the cluster's Deployment controller
rolls out with real pods (``registry.k8s.io/pause``, two tags).

The contract's own test functions are imported and run unchanged; only their ``case`` fixture
is this suite's (``support.clustercases.kubernetes``), with nothing to ``settle``: the cluster's
controller does that by itself.
"""

from __future__ import annotations

import pytest

import platforms.test_platform_contract as contract
from support import clustercases, clusters
from support.platformcases import PlatformCase

pytestmark = pytest.mark.realcluster


@pytest.fixture
async def case(cluster: clusters.Cluster) -> PlatformCase:
    opened = await clustercases.kubernetes(cluster)
    assert opened.platform.kind == "kubernetes"
    return opened


test_ensure_canary_brings_a_ready_canary_and_again_changes_nothing = (
    contract.test_ensure_canary_brings_a_ready_canary_and_again_changes_nothing
)
test_remove_canary_leaves_no_canary_and_can_be_repeated = (
    contract.test_remove_canary_leaves_no_canary_and_can_be_repeated
)
test_update_stable_makes_stable_image_the_new_one_and_again_changes_nothing = (
    contract.test_update_stable_makes_stable_image_the_new_one_and_again_changes_nothing
)
