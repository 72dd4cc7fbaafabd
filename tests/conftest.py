"""Shared fixtures: offline data only."""

from __future__ import annotations

import copy

import pytest


@pytest.fixture(scope="session")
def toy_adata():
    import scexplain as sx

    return sx.datasets.toy(n_cells=240, n_genes=40, n_groups=4, n_markers=4, seed=0)


@pytest.fixture
def snapshot():
    """Deep copy of an AnnData, to check that a failing call left it untouched."""
    return copy.deepcopy
