"""The real-cluster suite's fixture: ``cluster``, a throwaway namespace on the cluster of
``KUBECONFIG`` or on the emulator (``support.clusters``). Every test here is marked
``realcluster``, which ``pyproject.toml`` deselects unless ``-m realcluster`` is given."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from support import clusters


@pytest.fixture
async def cluster() -> AsyncIterator[clusters.Cluster]:
    async with clusters.cluster() as opened:
        yield opened
