"""``pl.dotplot``: colour = mean attribution, size = how many cells agree; drawn by scanpy's :class:`~scanpy.pl.DotPlot`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cache
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
from anndata import AnnData

from ._groupplot import (
    LEGENDS_WIDTH,
    GroupPlotMixin,
    Selection,
    add_dendrogram,
    colors_and_limits,
    default_title,
    finish_plot,
    scale,
    select,
)
from ._groupplot import colorbar_title as default_colorbar_title
from ._marks import Marks, resolve_marks
from ._utils import StoredResult, check_choice, get_result

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.colors import Colormap
    from scanpy.pl import DotPlot

__all__ = ["dotplot", "plot_class"]


@cache
def plot_class() -> type:
    """:class:`AttributionDotPlot`, defined on first use so that ``import scexplain`` does not import scanpy."""
    from scanpy.pl import DotPlot

    class AttributionDotPlot(GroupPlotMixin, DotPlot):
        """scanpy's :class:`~scanpy.pl.DotPlot` of stored attributions, with scexplain's marks and their legend.

        Made by :func:`scexplain.pl.dotplot` (``return_fig=True`` returns it); styled like any DotPlot
        (``.style()``, ``.legend()``, ``.swap_axes()``, ``.show()``, ``.savefig()``). ``size_unit``: the dot sizes
        are fractions of this value (``None``: fractions of cells, shown in % as scanpy does); the size legend
        shows the values.
        """

        legend_rows = ("size", "color")

        def __init__(self, adata: AnnData, var_names, groupby: str, *, marks: Marks, size_unit: float | None = None,
                     **kwargs: Any):
            super().__init__(adata, var_names, groupby, **kwargs)
            self.marks = marks
            self.size_unit = size_unit

        def _mainplot(self, ax: Axes):
            normalize = super()._mainplot(ax)
            self._draw_cell_marks(ax, None, dots=ax.collections[-1])  # the dots scanpy just drew, row by row
            return normalize

        def _plot_size_legend(self, size_legend_ax: Axes):
            super()._plot_size_legend(size_legend_ax)
            if self.size_unit is not None:  # scanpy labels fractions in %: show the values they stand for
                labels = [float(t.get_text()) / 100 * self.size_unit for t in size_legend_ax.get_xticklabels()]
                size_legend_ax.set_xticklabels([f"{v:.2g}" for v in labels], fontsize="small")

    return AttributionDotPlot


def _nice_ceiling(x: float) -> float:
    """The smallest of 1, 2, 5 × 10^k not below ``x``.

    In that unit scanpy's size legend (steps of its fractions) reads in round values.
    """
    if not np.isfinite(x) or x <= 0:
        return 1.0
    k = np.floor(np.log10(x))
    return float(next(m * 10**k for m in (1, 2, 5, 10) if m * 10**k >= x * (1 - 1e-12)))


def _fraction_positive(res: StoredResult, groupby: str, sel: Selection) -> pd.DataFrame:
    """``groups × features`` fraction of each group's cells whose attribution is > 0."""
    x = res.cell_values()
    cats = res.groups(groupby)
    codes = np.asarray(cats.codes)
    cols = pd.Index(res.feature_names).get_indexer(sel.features)
    out = np.zeros((len(sel.groups), len(cols)))
    for i, g in enumerate(sel.groups):
        rows = codes == list(cats.categories).index(g)
        out[i] = (x[np.ix_(rows, cols)] > 0).mean(axis=0) if rows.any() else 0.0
    return pd.DataFrame(out, index=sel.groups, columns=sel.features)


def dotplot(
    adata: AnnData,
    key: str,
    *,
    groupby: str | None = None,
    n_genes: int = 5,
    genes: Sequence[str] | Mapping[str, Sequence[str]] | None = None,
    groups: Sequence[str] | None = None,
    size: Literal["fraction_positive", "mean_abs"] = "fraction_positive",
    standard_scale: Literal["var", "group"] | None = None,
    dendrogram: bool = False,
    swap_axes: bool = False,
    mark_absence: bool | None = None,
    mark_unstable: bool | None = None,
    stability_threshold: float = 0.5,
    cmap: str | Colormap | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    title: str | None = None,
    colorbar_title: str | None = None,
    size_title: str | None = None,
    figsize: tuple[float, float] | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> DotPlot | dict[str, Axes] | None:
    """Dot plot of attributions in scanpy's DotPlot: cell types × top genes, colour = mean, size = agreement.

    The colour of a dot is the mean attribution of the group's cells toward their group (as in
    :func:`~scexplain.pl.heatmap`, diverging and centred at 0 for signed values); its area is the fraction of the
    group's cells with a positive attribution for that gene (do most cells rely on it, or a few strongly?) or the
    mean absolute attribution. Top genes come in one block per group, and the marks of
    :func:`~scexplain.pl.heatmap` are drawn the same way: a hatched dot when the score comes mostly from absence,
    a ``?`` beside it when the gene's rank is unstable (see :doc:`/plotting`).

    Parameters
    ----------
    adata
        AnnData holding a result of a ``scexplain.tl`` function.
    key
        The result's key (e.g. ``"deep_shap"``).
    groupby
        Column of ``adata.obs``; default: the result's ``groupby``.
    n_genes
        Top genes per group (highest mean attribution).
    genes
        Genes to show instead: a list, or ``{label: genes}`` shown as blocks.
    groups
        Subset (and order) of the groups.
    size
        ``"fraction_positive"``: fraction of the group's cells with attribution > 0 (needs the per-cell
        attributions ``layers[key]``/``obsm[key]``); ``"mean_abs"``: mean |attribution| of the group's cells
        (dots scaled to the largest shown value).
    standard_scale
        Min–max scale the colour per gene (``"var"``) or per group (``"group"``), as scanpy does.
    dendrogram
        Order the groups by scanpy's dendrogram of their attribution profiles (see :func:`heatmap`).
    swap_axes
        Genes as rows and groups as columns.
    mark_absence, mark_unstable, stability_threshold
        The marks (see :func:`heatmap`): ``None`` draws each when the result stores what it needs.
    cmap
        Colour map; default ``"RdBu_r"`` (signed) or ``"Reds"``.
    vmin, vmax
        Colour limits; default symmetric around 0 for signed values.
    title, colorbar_title, size_title
        Figure title, colour bar title and size legend title; defaults describe the method and the values.
    figsize
        Figure size in inches (scanpy's meaning).
    ax
        Draw into this axes (scanpy divides it into the plot and its legends).
    show
        Show the figure; default: only when nothing is returned and no ``ax`` is given.
    return_fig
        Return the plot object, a :class:`scanpy.pl.DotPlot` (scexplain's subclass that adds the marks), not yet
        drawn; e.g. ``.style(dot_max=0.8, largest_dot=300)`` then ``.show()``.

    Returns
    -------
    The plot object if ``return_fig``; else, when not shown, scanpy's dict of axes (``"mainplot_ax"``,
    ``"size_legend_ax"``, ``"color_legend_ax"``, ...); else ``None``.

    Examples
    --------
    >>> import scexplain as sx
    >>> sx.pl.dotplot(adata, "deep_shap", n_genes=3)  # doctest: +SKIP
    >>> sx.pl.dotplot(adata, "vargrad", size="mean_abs", dendrogram=True)  # doctest: +SKIP
    >>> sx.pl.dotplot(adata, "deep_shap", return_fig=True).style(grid=True).show()  # doctest: +SKIP
    """
    check_choice("size", size, ("fraction_positive", "mean_abs"))
    check_choice("standard_scale", standard_scale, (None, "var", "group"))
    if not isinstance(dendrogram, bool):
        raise TypeError(f"`dendrogram` must be True or False, got {dendrogram!r}.")
    res = get_result(adata, key)
    gb = res.groupby(groupby)
    sel = select(res.group_table(gb, "mean"), n_genes=n_genes, genes=genes, groups=groups, by_abs=False,
                 kind=res.feature_kind, group_what=f"Groups of {gb!r}")
    marks = resolve_marks(res, gb, applicable=True, mark_absence=mark_absence, mark_unstable=mark_unstable,
                          stability_threshold=stability_threshold).on(sel.frame)
    color = scale(sel.frame(), standard_scale)
    if size == "fraction_positive":
        sizes, unit = _fraction_positive(res, gb, sel), None
        size_title = size_title if size_title is not None else "fraction of cells\nwith φ > 0 (%)"
    else:
        sizes = sel.frame(res.group_table(gb, "mean_abs"))
        unit = _nice_ceiling(float(np.nanmax(sizes.to_numpy())))
        sizes = sizes / unit
        size_title = size_title if size_title is not None else "mean |φ| in group"
    cmap, lo, hi = colors_and_limits(color, standard_scale=standard_scale, cmap=cmap, vmin=vmin, vmax=vmax)
    proxy = sel.proxy(gb)
    plot = plot_class()(
        proxy, sel.var_names, gb, marks=marks, size_unit=unit, dot_color_df=color, dot_size_df=sizes, vmin=lo,
        vmax=hi, figsize=figsize, ax=ax, title=title if title is not None else default_title(res, gb, n_genes, genes),
    )
    if dendrogram:
        add_dendrogram(plot, proxy, gb)
    if swap_axes:
        plot.swap_axes()
    if colorbar_title is None:
        colorbar_title = default_colorbar_title(res, gb, values="mean", standard_scale=standard_scale, latent=False)
    plot.style(cmap=cmap).legend(colorbar_title=colorbar_title, size_title=size_title, width=LEGENDS_WIDTH)
    return finish_plot(plot, ax_given=ax is not None, show=show, return_fig=return_fig)
