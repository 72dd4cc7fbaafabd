"""The small cell-type classifier the demo and the benchmarks train (seeded, CPU, seconds)."""

from __future__ import annotations

import numpy as np

__all__ = ["benchmark_mlp", "train_mlp"]


def benchmark_mlp(n_genes: int, n_classes: int, *, seed: int = 0):
    """``Linear(G,128)-BatchNorm1d-ReLU-Dropout-Linear(128,64)-ReLU-Linear(64,C)``, seeded initialisation."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(n_genes, 128),
        nn.BatchNorm1d(128),
        nn.ReLU(),
        nn.Dropout(0.2),
        nn.Linear(128, 64),
        nn.ReLU(),
        nn.Linear(64, n_classes),
    )


def train_mlp(X: np.ndarray, y: np.ndarray, *, n_classes: int | None = None, epochs: int = 30, seed: int = 0):
    """Train :func:`benchmark_mlp` on ``X`` (cells × genes) and integer labels ``y``; returns it in eval mode.

    Full-batch Adam with a fixed seed: same data and seed → same weights.
    """
    import torch

    X = np.asarray(X, dtype=np.float32)
    y = np.asarray(y, dtype=np.int64)
    n_classes = int(y.max()) + 1 if n_classes is None else n_classes
    model = benchmark_mlp(X.shape[1], n_classes, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-4)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(xt), generator=gen)
        for start in range(0, len(xt), 128):
            idx = perm[start : start + 128]
            if len(idx) < 2:
                continue
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
    return model.eval()
