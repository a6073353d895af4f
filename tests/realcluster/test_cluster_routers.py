"""The router contract (``tests/routers/test_router_contract.py``) against a cluster: the
gateway-api, traefik-service and nginx-ingress routers driven through ``set_weight``,
``get_weight`` and ``finalize``, every object they write stored by the cluster's apiserver
(validated by it, defaults filled in) and read back through it.

The contract's own test functions are imported and run unchanged; only their fixtures
(``case``, ``editable``) are this suite's, built by ``support.clustercases``. The traffic cases
are left out: no data plane is asked of the cluster (a Traefik or ingress-nginx controller
reading these objects is not required).
"""

from __future__ import annotations

import pytest

import routers.test_router_contract as contract
from support import clustercases, clusters
from support.routercases import RouterCase

pytestmark = pytest.mark.realcluster

KINDS = list(clustercases.ROUTERS)


async def _open(kind: str, cluster: clusters.Cluster) -> RouterCase:
    opened = await clustercases.ROUTERS[kind](cluster)
    assert opened.router.kind == kind
    return opened


@pytest.fixture(params=KINDS)
async def case(request: pytest.FixtureRequest, cluster: clusters.Cluster) -> RouterCase:
    return await _open(request.param, cluster)


@pytest.fixture(params=KINDS)
async def editable(request: pytest.FixtureRequest, cluster: clusters.Cluster) -> RouterCase:
    return await _open(request.param, cluster)


test_every_weight_0_to_100_reads_back_exactly = (
    contract.test_every_weight_0_to_100_reads_back_exactly
)
test_the_same_weight_again_changes_nothing = contract.test_the_same_weight_again_changes_nothing
test_a_weight_outside_0_to_100_is_refused_and_changes_nothing = (
    contract.test_a_weight_outside_0_to_100_is_refused_and_changes_nothing
)
test_after_a_restart_the_weight_reads_back_or_cannot_tell = (
    contract.test_after_a_restart_the_weight_reads_back_or_cannot_tell
)
test_a_hand_edit_reads_as_cannot_tell_until_the_weight_is_set_again = (
    contract.test_a_hand_edit_reads_as_cannot_tell_until_the_weight_is_set_again
)
test_finalize_gives_back_what_the_router_took_and_can_be_repeated = (
    contract.test_finalize_gives_back_what_the_router_took_and_can_be_repeated
)
test_finalize_before_any_weight_is_harmless = contract.test_finalize_before_any_weight_is_harmless
