"""scanpy's bundled pbmc68k_reduced with integer counts rebuilt from its log-normalised ``.raw`` (offline)."""

from __future__ import annotations

import numpy as np
from anndata import AnnData

__all__ = ["pbmc68k_counts"]


def pbmc68k_counts() -> AnnData:
    """700 PBMCs × 765 genes with counts, ``bulk_labels`` and the bundled embeddings; no network.

    scanpy's ``pbmc68k_reduced`` stores log-normalised values in ``.raw`` (``log1p(counts / n_counts * 1e4)``).
    The counts are rebuilt as ``round(expm1(raw) * n_counts / 1e4)``.

    Returns
    -------
    AnnData with counts (float32, integer-valued) in ``X`` and ``layers["counts"]``, the log-normalised values
    in ``layers["lognorm"]``, ``obs`` (``bulk_labels``, ``n_counts``, …) and ``obsm["X_pca"]``/``obsm["X_umap"]``.

    Examples
    --------
    >>> import scexplain as sx
    >>> adata = sx.datasets.pbmc68k_counts()
    >>> adata.shape
    (700, 765)
    """
    import scanpy as sc

    src = sc.datasets.pbmc68k_reduced()
    lognorm = src.raw.X.toarray() if hasattr(src.raw.X, "toarray") else np.asarray(src.raw.X)
    lognorm = lognorm.astype(np.float64)
    n_counts = src.obs["n_counts"].to_numpy(dtype=np.float64)[:, None]
    counts = np.rint(np.expm1(lognorm) * n_counts / 1e4).astype(np.float32)
    adata = AnnData(counts, obs=src.obs.copy(), var=src.raw.var.copy())
    adata.layers["counts"] = counts.copy()
    adata.layers["lognorm"] = lognorm.astype(np.float32)
    for k in ("X_pca", "X_umap"):
        if k in src.obsm:
            adata.obsm[k] = np.asarray(src.obsm[k])
    return adata
