"""Shared benchmark setup: the pbmc68k_reduced data and the small MLP of the DeepSHAP/gradient benchmarks."""

from __future__ import annotations

import numpy as np
import pandas as pd


def load_pbmc_benchmark():
    """``(X, y, names)``: scanpy's bundled pbmc68k_reduced ``.raw`` (log-normalised, 700 × 765), ``bulk_labels``."""
    import scanpy as sc

    adata = sc.datasets.pbmc68k_reduced()
    X = adata.raw.X.toarray().astype(np.float32)
    labels = pd.Categorical(adata.obs["bulk_labels"].astype(str))
    return X, np.asarray(labels.codes, dtype=np.int64), [str(c) for c in labels.categories]


def train_benchmark_mlp(X, y, seed: int = 0):
    """The benchmark model, trained with a fixed seed, in eval mode."""
    from scexplain._demo import train_mlp

    return train_mlp(X, y, epochs=30, seed=seed)


def pick_cells(n_obs: int, n: int, seed: int):
    """``n`` distinct row indices, seeded."""
    return np.sort(np.random.default_rng(seed).choice(n_obs, size=n, replace=False))
