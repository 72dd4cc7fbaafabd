"""``pl.embedding``: a UMAP/PCA coloured by one gene's per-cell attribution, drawn by scanpy."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from anndata import AnnData

from ._utils import color_limits, finish, get_result, is_signed, wrap_label

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.colors import Colormap
    from matplotlib.figure import Figure

__all__ = ["embedding"]


def _resolve_basis(adata: AnnData, basis: str | None) -> str:
    """The ``obsm`` key of the embedding: ``basis`` (with or without ``X_``), else UMAP, else PCA."""
    if basis is None:
        for cand in ("X_umap", "X_tsne", "X_pca"):
            if cand in adata.obsm:
                return cand
        raise ValueError(
            "No embedding found in adata.obsm (looked for X_umap, X_tsne, X_pca); compute one with "
            "scanpy.pp.pca(adata) / scanpy.tl.umap(adata), or pass `basis=` naming an obsm key."
        )
    for cand in (basis, f"X_{basis}"):
        if cand in adata.obsm:
            return cand
    raise ValueError(f"Embedding {basis!r} not found in adata.obsm; available: {list(adata.obsm)}.")


def embedding(
    adata: AnnData,
    key: str,
    genes: str | Sequence[str],
    *,
    basis: str | None = None,
    cmap: str | Colormap | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    title: str | Sequence[str] | None = None,
    ncols: int = 4,
    size: float | None = None,
    panel_size: tuple[float, float] = (4.4, 3.6),
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
    **kwargs: Any,
) -> Figure | Axes | list[Axes] | None:
    """Cells on an embedding coloured by their attribution for a gene (or embedding dimension).

    The values are the per-cell attributions toward each cell's own target (``layers[key]``, or ``obsm[key]`` for
    tree models on an embedding); the plot itself is :func:`scanpy.pl.embedding`. Signed values use a diverging
    colour map centred at 0 with symmetric limits, and cells with the largest ``|attribution|`` are drawn on top.

    Parameters
    ----------
    adata
        AnnData holding a result of a ``scexplain.tl`` function and an embedding in ``obsm``.
    key
        The result's key (e.g. ``"deep_shap"``).
    genes
        One gene (or embedding dimension such as ``"PC3"``), or several (one panel each).
    basis
        Embedding in ``adata.obsm`` (``"umap"``, ``"X_pca"``, …); default: UMAP, else t-SNE, else PCA.
    cmap
        Colour map; default ``"RdBu_r"`` for signed values, ``"Reds"`` otherwise.
    vmin, vmax
        Colour limits (every panel); default symmetric ``±max|value|`` per panel for signed values.
    title
        Panel title(s); default: the gene and the method.
    ncols
        Panels per row.
    size
        Dot size (scanpy's default when ``None``).
    panel_size
        Size of one panel in inches.
    ax
        Draw into this axes (one gene only).
    show
        Show the figure; default: only when nothing is returned and no ``ax`` is given.
    return_fig
        Return the Figure.
    **kwargs
        Passed to :func:`scanpy.pl.embedding` (e.g. ``frameon``, ``components``).

    Returns
    -------
    The Figure if ``return_fig``; else, when not shown, the Axes (one gene) or a list of Axes; else ``None``.

    Examples
    --------
    >>> import scexplain as sx
    >>> sx.pl.embedding(adata, "deep_shap", "CD79A", basis="umap")  # doctest: +SKIP
    >>> sx.pl.embedding(adata, "tree_shap_gpu", ["PC1", "PC2"], basis="pca")  # doctest: +SKIP
    """
    import matplotlib.pyplot as plt
    import scanpy as sc

    res = get_result(adata, key)
    names = [genes] if isinstance(genes, str) else [str(g) for g in genes]
    if not names:
        raise ValueError("`genes` is empty; name at least one gene.")
    index = pd.Index(res.feature_names)
    missing = [g for g in names if g not in index]
    if missing:
        raise ValueError(f"{res.feature_kind.capitalize()}s {missing} are not among the explained features of {key!r}.")
    if ax is not None and len(names) != 1:
        raise ValueError("`ax` can hold one panel; pass a single gene, or no `ax`.")
    for bad in ("save", "color", "layer", "use_raw", "return_fig", "show", "ax"):
        if bad in kwargs:
            raise TypeError(f"embedding() got `{bad}` for scanpy.pl.embedding; it is set by scexplain.")
    obsm_key = _resolve_basis(adata, basis)
    values = res.cell_values()[:, index.get_indexer(names)]
    titles = [title] if isinstance(title, str) else (list(title) if title is not None else None)
    if titles is not None and len(titles) != len(names):
        raise ValueError(f"`title` has {len(titles)} entries for {len(names)} genes.")

    if ax is not None:
        fig, axs, ax_given = ax.get_figure(), [ax], True
    else:
        ax_given = False
        nc = min(int(ncols), len(names))
        nr = int(np.ceil(len(names) / nc))
        fig, grid = plt.subplots(nr, nc, figsize=(panel_size[0] * nc, panel_size[1] * nr), squeeze=False,
                                 layout="constrained")
        axs = list(grid.ravel())
        for extra in axs[len(names):]:
            extra.set_visible(False)
        axs = axs[:len(names)]
    coords = np.asarray(adata.obsm[obsm_key])
    basis_name = obsm_key[2:] if obsm_key.startswith("X_") else obsm_key  # scanpy labels axes "UMAP1", "PC1"
    for i, (gene, a) in enumerate(zip(names, axs, strict=True)):
        v = values[:, i]
        signed = is_signed(v)
        lo, hi = color_limits(v, signed=signed, vmin=vmin, vmax=vmax)
        order = np.argsort(np.abs(v), kind="stable")  # largest |value| on top
        col = f"{gene} attribution"
        tmp = AnnData(obs=pd.DataFrame({col: v[order]}, index=adata.obs_names[order]),
                      obsm={f"X_{basis_name}": coords[order]})
        label = titles[i] if titles is not None else f"{gene}: {res.label} attribution"
        sc.pl.embedding(tmp, basis_name, color=col, cmap=cmap if cmap is not None else ("RdBu_r" if signed else "Reds"),
                        vmin=lo, vmax=hi, sort_order=False, size=size, title=label, ax=a, show=False, **kwargs)
        mappable = a.collections[-1]
        if getattr(mappable, "colorbar", None) is not None:
            chars = int(panel_size[1] * 0.9 * 72 / 5)  # characters of 9 pt text along the colour bar
            label = f"{res.label}: {res.meaning(None).replace('mean ', '')}"
            mappable.colorbar.set_label(wrap_label(label, chars), fontsize=9)
    out = axs[0] if len(axs) == 1 else axs
    return finish(fig, out, ax_given=ax_given, show=show, return_fig=return_fig)
