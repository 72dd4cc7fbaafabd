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


def _cuda_available() -> bool:
    """A CUDA device seen by CuPy or torch."""
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() > 0:
            return True
    except Exception:
        pass
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def pytest_collection_modifyitems(config, items):
    """Skip tests marked ``gpu`` when no CUDA device is present (the CPU paths are always tested)."""
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if not gpu_items or _cuda_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (CuPy or torch.cuda); none present")
    for item in gpu_items:
        item.add_marker(skip)
