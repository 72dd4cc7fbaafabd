"""``pl.heatmap``: cell types × top genes of mean attributions, drawn by scanpy's :class:`~scanpy.pl.MatrixPlot`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from anndata import AnnData

from ._groupplot import (
    LEGENDS_WIDTH,
    GroupPlotMixin,
    add_dendrogram,
    colors_and_limits,
    default_title,
    finish_plot,
    scale,
    select,
)
from ._groupplot import colorbar_title as default_colorbar_title
from ._marks import Marks, resolve_marks
from ._utils import check_choice, get_result

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.colors import Colormap
    from scanpy.pl import MatrixPlot

__all__ = ["heatmap", "plot_class", "save_heatmap"]


@cache
def plot_class() -> type:
    """:class:`AttributionMatrixPlot`, defined on first use so that ``import scexplain`` does not import scanpy."""
    from matplotlib import colormaps
    from scanpy.pl import MatrixPlot

    class AttributionMatrixPlot(GroupPlotMixin, MatrixPlot):
        """scanpy's :class:`~scanpy.pl.MatrixPlot` of stored attributions, with scexplain's marks and their legend.

        Made by :func:`scexplain.pl.heatmap` (``return_fig=True`` returns it); styled like any MatrixPlot
        (``.style()``, ``.legend()``, ``.swap_axes()``, ``.add_totals()``, ``.show()``, ``.savefig()``).
        """

        def __init__(self, adata: AnnData, var_names, groupby: str, *, marks: Marks, **kwargs: Any):
            super().__init__(adata, var_names, groupby, **kwargs)
            self.marks = marks

        def _mainplot(self, ax: Axes):
            normalize = super()._mainplot(ax)
            values = self._displayed(self.values_df).to_numpy(dtype=float)
            self._draw_cell_marks(ax, colormaps.get_cmap(self.cmap)(normalize(values)))
            return normalize

    return AttributionMatrixPlot


def heatmap(
    adata: AnnData,
    key: str,
    *,
    groupby: str | None = None,
    n_genes: int = 10,
    genes: Sequence[str] | Mapping[str, Sequence[str]] | None = None,
    groups: Sequence[str] | None = None,
    values: Literal["mean", "mean_abs"] = "mean",
    latent: bool = False,
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
    figsize: tuple[float, float] | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> MatrixPlot | dict[str, Axes] | None:
    """Heatmap of mean attributions: cell types × the top genes of each cell type, in scanpy's MatrixPlot.

    Reads the ``genes × groups`` table a ``scexplain.tl`` function stored (for tree models on an embedding, whose
    features are embedding dimensions, the ``dimensions × groups`` one), picks the top ``n_genes`` of every group
    and shows them as one block per group (scanpy's gene-group brackets), in the order of the groups, so that each
    group's own block lies on the diagonal. Signed values get a diverging colour map centred at 0 with symmetric
    limits; unsigned ones (``values="mean_abs"``, ``standard_scale``, VarGrad) a sequential one.

    Two marks (see :doc:`/plotting`), on the genes a result ranks among a group's top ``n_top`` (the result's
    bootstrap ``n_top``, else 20), explained in a legend above the colour bar:

    - hatched ``////``: the score comes mostly from **absence** — from the group's cells having *less* of the gene
      than the reference (``|absence part| > |presence part|`` of the group's mean). A gene a cell type lacks can
      push the model toward it ("CST3 for B cells"); the hatch keeps that from being read as "a B-cell gene". A
      hatch was chosen because the colour already carries the value: the value stays readable beneath it, and
      it survives greyscale and colour-blind viewing.
    - ``?`` in the corner: the rank is **unstable** — the gene is among the group's top ``n_top`` in fewer than
      ``stability_threshold`` of the bootstrap replicates (``tl.deep_shap(..., n_bootstrap=...)``).

    Parameters
    ----------
    adata
        AnnData holding a result of a ``scexplain.tl`` function.
    key
        The result's key (the method name, e.g. ``"deep_shap"``, unless ``key_added`` was given).
    groupby
        Column of ``adata.obs`` to group cells by; default: the ``groupby`` the result was computed with. Another
        column is summarised from the per-cell attributions ``layers[key]`` (or ``obsm[key]``), without marks.
    n_genes
        Top genes (features) per group, highest mean attribution first (highest ``|value|`` for ``latent=True``).
    genes
        Genes to show instead of the top ones: a list, or a mapping ``{label: genes}`` shown as blocks.
    groups
        Subset (and order) of the groups; default: all, in category order.
    values
        ``"mean"``: mean attribution (signed); ``"mean_abs"``: mean absolute attribution.
    latent
        Show ``varm[key + "_latent"]`` (genes × latent dimensions of an encoder explanation) instead: latent
        dimensions take the place of groups.
    standard_scale
        Min–max scale each gene (``"var"``) or each group (``"group"``) to [0, 1], as scanpy does.
    dendrogram
        Order the groups by scanpy's dendrogram (:func:`scanpy.tl.dendrogram`: correlation distance, complete
        linkage) of their attribution profiles over the shown genes, drawn beside the plot; the gene blocks follow.
    swap_axes
        Genes as rows and groups as columns.
    mark_absence
        Hatch scores that come mostly from absence. ``None``: when the result stores the presence/absence split;
        ``True``: require it; ``False``: off.
    mark_unstable
        Mark unstable ranks with ``?``. ``None``: when the result stores bootstrap rank stabilities; ``True``:
        require them; ``False``: off.
    stability_threshold
        Ranks with a ``rank_stability`` below this fraction are unstable.
    cmap
        Colour map; default ``"RdBu_r"`` for signed values, ``"Reds"`` otherwise.
    vmin, vmax
        Colour limits; default symmetric around 0 (``±max|value|``) for signed values. Giving one of them for
        signed values mirrors it.
    title
        Figure title; default names the method and the selection.
    colorbar_title
        Colour bar title; default names the method and what a value means.
    figsize
        Figure size in inches (scanpy's meaning); default: scanpy's, from the number of groups and genes.
    ax
        Draw into this axes (scanpy divides it into the plot and its legends).
    show
        Show the figure; default: only when nothing is returned and no ``ax`` is given.
    return_fig
        Return the plot object, a :class:`scanpy.pl.MatrixPlot` (scexplain's subclass that adds the marks), not
        yet drawn: style it and call ``.show()``, ``.savefig()`` or ``.make_figure()``.

    Returns
    -------
    The plot object if ``return_fig``; else, when not shown, scanpy's dict of axes (``"mainplot_ax"``,
    ``"color_legend_ax"``, ``"gene_group_ax"``, with a dendrogram ``"group_extra_ax"``, with marks
    ``"marks_legend_ax"``); else ``None``.

    Examples
    --------
    >>> import scexplain as sx
    >>> sx.tl.deep_shap(adata, model, groupby="cell_type")  # doctest: +SKIP
    >>> sx.pl.heatmap(adata, "deep_shap", n_genes=5)  # doctest: +SKIP
    >>> mp = sx.pl.heatmap(adata, "deep_shap", dendrogram=True, return_fig=True)  # doctest: +SKIP
    >>> mp.style(edge_color="none").swap_axes().savefig("heatmap.pdf")  # doctest: +SKIP
    """
    check_choice("values", values, ("mean", "mean_abs"))
    check_choice("standard_scale", standard_scale, (None, "var", "group"))
    if not isinstance(dendrogram, bool):
        raise TypeError(f"`dendrogram` must be True or False, got {dendrogram!r}.")
    res = get_result(adata, key)
    if latent:
        gb, table, what = "latent dimension", res.latent_table(), "latent dimension"
    else:
        gb = res.groupby(groupby)
        table, what = res.group_table(gb, values), gb
    sel = select(table, n_genes=n_genes, genes=genes, groups=groups, by_abs=latent, kind=res.feature_kind,
                 group_what="Latent dimensions" if latent else f"Groups of {gb!r}")
    marks = resolve_marks(res, gb, applicable=values == "mean" and not latent, mark_absence=mark_absence,
                          mark_unstable=mark_unstable, stability_threshold=stability_threshold)
    marks = marks.on(sel.frame)
    frame = scale(sel.frame(), standard_scale)
    cmap, lo, hi = colors_and_limits(frame, standard_scale=standard_scale, cmap=cmap, vmin=vmin, vmax=vmax)
    proxy = sel.proxy(gb)
    plot = plot_class()(
        proxy, sel.var_names, gb, marks=marks, values_df=frame, vmin=lo, vmax=hi, figsize=figsize, ax=ax,
        title=title if title is not None else default_title(res, what, n_genes, genes),
    )
    if dendrogram:
        add_dendrogram(plot, proxy, gb)
    if swap_axes:
        plot.swap_axes()
    if colorbar_title is None:
        colorbar_title = default_colorbar_title(res, gb, values=values, standard_scale=standard_scale, latent=latent)
    plot.style(cmap=cmap).legend(title=colorbar_title, width=LEGENDS_WIDTH)
    return finish_plot(plot, ax_given=ax is not None, show=show, return_fig=return_fig)


def save_heatmap(
    adata: AnnData,
    path: str | Path,
    key: str = "deep_shap",
    *,
    n_genes: int = 5,
    dpi: int = 150,
    **kwargs: Any,
) -> Path:
    """Draw :func:`heatmap` and save it as an image (PNG by default), closing the figure afterwards.

    Meant for scripts and the ``scexplain demo`` command; interactive users call :func:`heatmap` with
    ``return_fig=True`` and save the plot object themselves.

    Parameters
    ----------
    adata
        AnnData holding a result of a ``scexplain.tl`` function.
    path
        Output file; the format follows its suffix (``.png``, ``.pdf``, ``.svg``).
    key
        The result's key.
    n_genes
        Top genes per group.
    dpi
        Resolution of raster formats.
    **kwargs
        Further keyword arguments of :func:`heatmap` (not ``ax``, ``show``, ``return_fig``).

    Returns
    -------
    The path written.

    Examples
    --------
    >>> import scexplain as sx
    >>> sx.pl.save_heatmap(adata, "heatmap.png", "deep_shap", n_genes=5)  # doctest: +SKIP
    """
    import matplotlib.pyplot as plt

    for bad in ("ax", "show", "return_fig"):
        if bad in kwargs:
            raise TypeError(f"save_heatmap() does not take `{bad}`.")
    plot = heatmap(adata, key, n_genes=n_genes, return_fig=True, **kwargs)
    plot.make_figure()
    try:
        path = Path(path)
        plot.fig.savefig(path, dpi=dpi, bbox_inches="tight", pad_inches=0.1)
    finally:
        plt.close(plot.fig)
    return path
