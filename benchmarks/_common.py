"""Shared benchmark setup: the pbmc68k_reduced data and the small MLP of the DeepSHAP/gradient benchmarks, the
float32 GEMM rate the floors are measured against, and a timer."""

from __future__ import annotations

import time

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


def gemm_rate(repeats: int = 7, size: int = 2000) -> float:
    """Best float32 ``torch.mm`` rate (flop/s) of two ``size × size`` matrices."""
    import torch

    gen = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=gen)
    b = torch.randn(size, size, generator=gen)
    torch.mm(a, b)
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * size**3 / best


def timed(fn):
    """``(result, wall seconds)`` of one call."""
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start
