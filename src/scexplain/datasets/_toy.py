"""A toy count matrix with planted marker genes: the ground truth explainers should recover."""

from __future__ import annotations

import numpy as np
import pandas as pd
from anndata import AnnData

__all__ = ["toy"]


def toy(
    n_cells: int = 600,
    n_genes: int = 100,
    n_groups: int = 4,
    *,
    n_markers: int = 5,
    fold_change: float = 6.0,
    seed: int = 0,
) -> AnnData:
    """Integer counts of ``n_groups`` cell types, each with ``n_markers`` planted marker genes.

    Counts are negative binomial (mean 1–5, dispersion 5); a group's marker genes have their mean multiplied by
    ``fold_change`` in that group's cells. Same ``seed`` → same data.

    Parameters
    ----------
    n_cells, n_genes, n_groups
        Shape and number of cell types (``obs["cell_type"]``, categories ``type_0`` …).
    n_markers
        Marker genes per group; ``n_groups * n_markers`` must not exceed ``n_genes``.
    fold_change
        Up-regulation of markers in their group.
    seed
        Random seed.

    Returns
    -------
    AnnData with counts (float32, integer-valued) in ``X`` and ``layers["counts"]``, log1p-normalised values in
    ``layers["lognorm"]``, ``var["marker_of"]`` (the group a gene marks, or ``""``) and
    ``uns["toy"]["markers"]`` (group → marker genes).

    Examples
    --------
    >>> import scexplain as sx
    >>> adata = sx.datasets.toy(n_cells=200, n_genes=50, n_groups=3, seed=1)
    >>> adata.uns["toy"]["markers"]["type_0"][:2].tolist()
    ['gene_000', 'gene_001']
    """
    for name, v in {"n_cells": n_cells, "n_genes": n_genes, "n_groups": n_groups, "n_markers": n_markers}.items():
        if not isinstance(v, int | np.integer) or v < 1:
            raise ValueError(f"`{name}` must be a positive integer, got {v!r}.")
    if n_groups * n_markers > n_genes:
        raise ValueError(f"{n_groups} groups × {n_markers} markers need at least {n_groups * n_markers} genes.")
    if fold_change <= 0:
        raise ValueError(f"`fold_change` must be positive, got {fold_change!r}.")
    rng = np.random.default_rng(seed)
    groups = np.arange(n_cells) % n_groups
    rng.shuffle(groups)
    base = rng.uniform(1.0, 5.0, size=n_genes)
    mean = np.tile(base, (n_cells, 1))
    marker_of = np.full(n_genes, "", dtype=object)
    group_names = [f"type_{g}" for g in range(n_groups)]
    markers: dict[str, np.ndarray] = {}
    gene_names = np.asarray([f"gene_{i:03d}" for i in range(n_genes)], dtype=object)
    for g in range(n_groups):
        genes = np.arange(g * n_markers, (g + 1) * n_markers)
        mean[np.ix_(groups == g, genes)] *= fold_change
        marker_of[genes] = group_names[g]
        markers[group_names[g]] = gene_names[genes]
    dispersion = 5.0
    counts = rng.negative_binomial(dispersion, dispersion / (dispersion + mean)).astype(np.float32)
    obs = pd.DataFrame(
        {"cell_type": pd.Categorical([group_names[g] for g in groups], categories=group_names)},
        index=[f"cell_{i:04d}" for i in range(n_cells)],
    )
    var = pd.DataFrame({"marker_of": marker_of}, index=gene_names)
    adata = AnnData(counts, obs=obs, var=var)
    adata.layers["counts"] = counts.copy()
    size = counts.sum(axis=1, keepdims=True)
    adata.layers["lognorm"] = np.log1p(counts / np.maximum(size, 1) * 1e4).astype(np.float32)
    adata.uns["toy"] = {"markers": markers, "seed": int(seed), "fold_change": float(fold_change)}
    return adata
