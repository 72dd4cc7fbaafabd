"""``pl.ranking``: the top positive and negative genes of each group as horizontal bars."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
from anndata import AnnData

from ._heatmap import _check_groups, top_features
from ._utils import check_choice, finish, fontsize_pt, get_result, text_size_in, wrap_label

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["ranking"]

POSITIVE_COLOR = "#b2182b"
NEGATIVE_COLOR = "#2166ac"


def ranked_pos_neg(column: pd.Series, n: int) -> pd.Series:
    """The ``n`` highest positive and ``n`` lowest negative values of ``column``, highest first."""
    pos = [g for g in top_features(column, n) if column[g] > 0]
    neg = [g for g in top_features(-column, n) if column[g] < 0 and g not in pos]
    return column[pos + neg[::-1]]


def ranking(
    adata: AnnData,
    key: str,
    *,
    groupby: str | None = None,
    groups: Sequence[str] | str | None = None,
    n_genes: int = 10,
    values: Literal["mean", "mean_abs"] = "mean",
    ncols: int = 4,
    sharex: bool = False,
    title: str | None = None,
    figsize: tuple[float, float] | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> Figure | Axes | list[Axes] | None:
    """Bar charts of each group's top positive and top negative genes.

    One panel per group: the ``n_genes`` genes with the highest mean attribution toward the group (red, top) and
    the ``n_genes`` with the most negative one (blue, bottom): what pushes the model toward the cell type and what
    speaks against it.

    Parameters
    ----------
    adata
        AnnData holding a result of a ``scexplain.tl`` function.
    key
        The result's key (e.g. ``"deep_shap"``).
    groupby
        Column of ``adata.obs``; default: the result's ``groupby``.
    groups
        Groups to show (one panel each); default: all.
    n_genes
        Genes per direction (positive, negative) and panel.
    values
        ``"mean"`` (signed) or ``"mean_abs"`` (mean |attribution|; only the top ``n_genes``).
    ncols
        Panels per row.
    sharex
        Same x axis in every panel (compare magnitudes across groups).
    title
        Figure title; default names the method.
    figsize
        Figure size in inches; default: sized from the number of genes and groups.
    ax
        Draw into this axes; only with a single group.
    show
        Show the figure; default: only when nothing is returned and no ``ax`` is given.
    return_fig
        Return the Figure.

    Returns
    -------
    The Figure if ``return_fig``; else, when not shown, the Axes (``ax`` given) or the list of panel axes; else
    ``None``.

    Examples
    --------
    >>> import scexplain as sx
    >>> sx.pl.ranking(adata, "deep_shap", n_genes=5)  # doctest: +SKIP
    >>> sx.pl.ranking(adata, "deep_shap", groups="B cell", n_genes=10)  # doctest: +SKIP
    """
    import matplotlib.pyplot as plt
    from matplotlib import rcParams

    check_choice("values", values, ("mean", "mean_abs"))
    if not isinstance(n_genes, int | np.integer) or isinstance(n_genes, bool) or n_genes < 1:
        raise ValueError(f"`n_genes` must be a positive integer, got {n_genes!r}.")
    if not isinstance(ncols, int | np.integer) or ncols < 1:
        raise ValueError(f"`ncols` must be a positive integer, got {ncols!r}.")
    res = get_result(adata, key)
    gb = res.groupby(groupby)
    table = res.group_table(gb, values)
    chosen = _check_groups(table, groups, f"Groups of {gb!r}")
    if ax is not None and len(chosen) != 1:
        raise ValueError(f"`ax` can hold one group's panel; pass `groups=` naming one of {chosen}, or no `ax`.")
    bars = {g: ranked_pos_neg(table[g], n_genes) if values == "mean" else table[g][top_features(table[g], n_genes)]
            for g in chosen}
    meaning = res.meaning(gb, values)
    tick_fs = fontsize_pt(rcParams["ytick.labelsize"])
    if title is None:
        title = f"{res.label}: top {res.feature_kind}s per {gb.replace('_', ' ')}"

    if ax is not None:
        fig, axs, ax_given = ax.get_figure(), [ax], True
    else:
        ax_given = False
        n_panels = len(chosen)
        nc = min(int(ncols), n_panels)
        nr = int(np.ceil(n_panels / nc))
        if figsize is None:
            label_w, _ = text_size_in([str(g) for s in bars.values() for g in s.index], tick_fs)
            rows = max(len(s) for s in bars.values())
            panel_w = label_w + 2.4
            panel_h = rows * max(0.2, 1.5 * tick_fs / 72) + 0.7
            figsize = (nc * panel_w + 0.3, nr * panel_h + 0.9)
        fig, grid = plt.subplots(nr, nc, figsize=figsize, squeeze=False, sharex=sharex, layout="constrained")
        axs = list(grid.ravel())
        for extra in axs[n_panels:]:
            extra.set_visible(False)
        axs = axs[:n_panels]
    for g, a in zip(chosen, axs, strict=True):
        _panel(a, bars[g], g, tick_fs)
    if ax_given:
        axs[0].set_xlabel(f"{res.label}: {meaning}")
        out = axs[0]
    else:
        fw = fig.get_size_inches()[0]
        fig.suptitle(wrap_label(title, fw - 0.3, fontsize_pt("large")))
        fig.supxlabel(f"{res.label}: {meaning}", fontsize=fontsize_pt("medium"))
        out = axs
    return finish(fig, out, ax_given=ax_given, show=show, return_fig=return_fig)


def _panel(ax: Axes, scores: pd.Series, group: str, tick_fs: float) -> None:
    y = np.arange(len(scores))
    vals = scores.to_numpy(dtype=np.float64)
    ax.barh(y, vals, color=np.where(vals >= 0, POSITIVE_COLOR, NEGATIVE_COLOR), height=0.75)
    ax.set_yticks(y)
    ax.set_yticklabels([str(i) for i in scores.index], fontsize=tick_fs)
    ax.set_ylim(len(scores) - 0.5, -0.5)
    ax.axvline(0, color="0.2", lw=0.8)
    ax.set_title(group, fontsize=fontsize_pt("medium"))
    ax.tick_params(axis="y", length=0)
    ax.tick_params(axis="x", labelsize=tick_fs)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.grid(axis="x", color="0.9", lw=0.6)
    ax.set_axisbelow(True)
